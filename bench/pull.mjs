// bench/pull: `rt.images.pull()` of a multi-layer image from a loopback
// docker-registry into an empty store, vs `skopeo copy docker://… oci:…` of the
// same image into an empty OCI layout. Both fetch every blob over plain HTTP
// and verify digests; nacelle also records the image in its store.
// Median of N rounds, each into a fresh directory.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Layer, Runtime, writeBusyboxRootfs } from 'nacelle';

const N = Number(process.env.BENCH_N ?? 7);
const LAYERS = Number(process.env.BENCH_LAYERS ?? 4);
const LAYER_MB = Number(process.env.BENCH_LAYER_MB ?? 8);
const REGISTRY = process.env.NACELLE_DOCKER_REGISTRY ?? '/usr/bin/docker-registry';

for (const [bin, pkg] of [[REGISTRY, 'docker-registry'], ['skopeo', 'skopeo']]) {
  try {
    execFileSync(bin, ['--version'], { stdio: 'ignore' });
  } catch {
    console.log(`skipped: needs ${pkg} (apt-get install ${pkg})`);
    process.exit(0);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'nacelle-bench-pull-'));
let registry;
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (registry && registry.exitCode === null) {
    const exited = new Promise((r) => registry.once('exit', r));
    registry.kill('SIGTERM');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => cleanup().finally(() => process.exit(130)));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRegistry() {
  const port = await freePort();
  const config = join(dir, 'registry.yml');
  writeFileSync(
    config,
    ['version: 0.1', 'log:', '  level: error', '  accesslog:', '    disabled: true', 'storage:', '  filesystem:', `    rootdirectory: ${join(dir, 'registry')}`, 'http:', `  addr: 127.0.0.1:${port}`, `  secret: ${randomBytes(8).toString('hex')}`, ''].join('\n'),
  );
  registry = spawn(REGISTRY, ['serve', config], { stdio: 'ignore' });
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise((resolve) => {
      const req = http.get(`http://127.0.0.1:${port}/v2/`, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
    });
    if (ok) return `127.0.0.1:${port}`;
    await sleep(50);
  }
  throw new Error('docker-registry did not start');
}

/** Incompressible-ish content: a hash chain, so gzip cannot shrink it to nothing. */
function pseudoRandom(bytes, seed) {
  const out = Buffer.alloc(bytes);
  let h = createHash('sha256').update(seed).digest();
  for (let off = 0; off < bytes; off += 32) {
    h.copy(out, off);
    h = createHash('sha256').update(h).digest();
  }
  return out;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

try {
  const host = await startRegistry();
  const rt = await Runtime.open({ root: join(dir, 'src-root') });
  const rootfs = join(dir, 'busybox');
  mkdirSync(rootfs);
  writeBusyboxRootfs(rootfs);
  let img = await rt.images.fromDirectory(rootfs, { config: { Cmd: ['sh'] } });
  for (let i = 0; i < LAYERS; i++) {
    const d = join(dir, `layer-${i}`);
    mkdirSync(d);
    writeFileSync(join(d, `data-${i}.bin`), pseudoRandom(LAYER_MB * 1024 * 1024, `layer ${i}`));
    img = await img.withLayer(await Layer.fromDirectory(d, { gzipLevel: 1 }));
  }
  const ref = `${host}/bench/pull:v1`;
  await rt.images.push(img, ref);
  const mb = (img.size + img.manifest.config.size) / 1024 / 1024;

  const ours = [];
  const peer = [];
  for (let i = 0; i < N + 1; i++) {
    const root = join(dir, `pull-${i}`);
    let t = process.hrtime.bigint();
    const pulled = await (await Runtime.open({ root })).images.pull(ref);
    const oursMs = Number(process.hrtime.bigint() - t) / 1e6;
    if (pulled.digest !== img.digest) throw new Error(`pulled ${pulled.digest}, pushed ${img.digest}`);
    rmSync(root, { recursive: true, force: true });

    const layout = join(dir, `skopeo-${i}`);
    t = process.hrtime.bigint();
    execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${layout}:v1`], { stdio: 'ignore' });
    const peerMs = Number(process.hrtime.bigint() - t) / 1e6;
    rmSync(layout, { recursive: true, force: true });
    if (i === 0) continue; // warm-up (page cache, registry)
    ours.push(oursMs);
    peer.push(peerMs);
  }
  const a = median(ours);
  const b = median(peer);
  const fmt = (ms) => `${ms.toFixed(1).padStart(8)} ms`;
  console.log(`pull of a ${img.layers.length}-layer image (${mb.toFixed(1)} MiB of blobs) from a loopback docker-registry into an empty store;`);
  console.log(`median of ${N} after 1 warm-up, ${cpus().length} CPUs:`);
  console.log('                      nacelle      skopeo copy   nacelle/skopeo');
  console.log(`  full pull       ${fmt(a)}  ${fmt(b)}      ${(a / b).toFixed(2)}x`);
  console.log(`  throughput      ${(mb / (a / 1000)).toFixed(0).padStart(6)} MiB/s  ${(mb / (b / 1000)).toFixed(0).padStart(6)} MiB/s`);
} finally {
  await cleanup();
}
