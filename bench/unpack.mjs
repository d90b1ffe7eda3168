// bench/unpack: unpack a typical layer and a ≥100 MB incompressible gzip layer with nacelle (Layer.apply) vs GNU `tar -xzf`
// vs `umoci unpack` of the same layer in an OCI layout, side by side in one run.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Layer, Runtime } from 'nacelle';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
async function scenario(label, incompressible) {
const work = mkdtempSync(join(tmpdir(), 'nacelle-bench-unpack-'));
try {
  // A tree like a real base image: many small files, some large ones, half compressible.
  const tree = join(work, 'tree');
  for (let d = 0; d < 40; d++) {
    mkdirSync(join(tree, `dir${d}`), { recursive: true });
    for (let f = 0; f < 100; f++) {
      const small = f % 10 !== 0;
      const size = small ? 2048 + ((d * 100 + f) % 7) * 1024 : 450_000;
      // half the small files random; in the incompressible scenario the large ones too (a ≥ 100 MB gzip layer)
      const data = (incompressible && !small) || f % 2 ? randomBytes(size) : Buffer.alloc(size, `line ${d} ${f}\n`);
      writeFileSync(join(tree, `dir${d}`, `file${f}`), data);
    }
  }
  const rawBytes = Number(execFileSync('du', ['-sb', tree], { encoding: 'utf8' }).split('\t')[0]);
  const layerFile = join(work, 'layer.tar.gz');
  execFileSync('tar', ['--sort=name', '--numeric-owner', '-C', tree, '-czf', layerFile, '.']);
  const mb = statSync(layerFile).size / 1e6;

  const rt = await Runtime.open({ root: join(work, 'root') });
  const layer = await Layer.fromTar(layerFile);
  mkdirSync(join(work, 'empty'));
  const empty = await rt.images.fromDirectory(join(work, 'empty'), { created: '2024-01-01T00:00:00Z' });
  const img = await empty.withLayer(layer, { created: '2024-01-01T00:00:00Z' });
  const layout = join(work, 'layout');
  await img.export(layout, { tags: ['bench:latest'] });

  const outputs = [];
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  async function time(label, fn) {
    const samples = [];
    for (let i = 0; i < RUNS; i++) {
      const out = join(work, `${label}-${i}`);
      mkdirSync(out);
      execFileSync('sync');
      const t = process.hrtime.bigint();
      await fn(out);
      samples.push(Number(process.hrtime.bigint() - t) / 1e9);
      outputs.push(out); // removed at the end: deleting between runs slows the next run's inode allocation
    }
    return median(samples);
  }
  const ours = await time('nacelle', (out) => layer.apply(out));
  const tar = await time('tar', (out) => execFileSync('tar', ['-xzf', layerFile, '-C', out]));
  const umoci = await time('umoci', (out) => {
    rmSync(out, { recursive: true });
    execFileSync('umoci', ['unpack', '--image', `${layout}:latest`, out], { stdio: 'ignore' });
  });
  console.log(`${label}: unpack of a ${mb.toFixed(0)} MB gzip layer (4000 files, ${(rawBytes / 1e6).toFixed(0)} MB unpacked), median of ${RUNS}:`);
  console.log(`  nacelle Layer.apply  ${ours.toFixed(2)} s  (${(rawBytes / 1e6 / ours).toFixed(0)} MB/s unpacked)`);
  console.log(`  tar -xzf             ${tar.toFixed(2)} s`);
  console.log(`  umoci unpack         ${umoci.toFixed(2)} s  (includes both layers and its mtree manifest)`);
  console.log(`  ratio nacelle/tar    ${(ours / tar).toFixed(2)}x`);
  console.log(`  ratio nacelle/umoci  ${(ours / umoci).toFixed(2)}x`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
}

await scenario('typical layer (compressible text and binaries)', false);
await scenario('incompressible layer', true);
