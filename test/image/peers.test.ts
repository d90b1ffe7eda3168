/**
 * nacelle's layouts and archives against the real tools: oci-image-tool,
 * umoci and skopeo (Debian packages installed by .ci/run).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Image } from '../../lib/image/image';
import { Layer } from '../../lib/image/layer';
import { Runtime } from '../../lib/runtime';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree, makeFixtureTree } from '../helpers/tree';

const CREATED = '2024-05-06T07:08:09Z';

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

describeRoot('OCI peers: oci-image-tool, umoci, skopeo', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  beforeEach(async () => {
    dir = makeTempDir('peers');
    rt = await Runtime.open({ root: join(dir, 'root') });
    const src = join(dir, 'src');
    mkdirSync(src);
    makeFixtureTree(src);
    const base = await rt.images.fromDirectory(src, { created: CREATED, config: { Cmd: ['/bin/tool'], Env: ['A=1'] } });
    const top = join(dir, 'top');
    mkdirSync(join(top, 'etc'), { recursive: true });
    writeFileSync(join(top, 'etc/hostname'), 'changed\n');
    writeFileSync(join(top, '.wh.dangling'), ''); // a whiteout deleting a base entry
    img = await base.withLayer(await Layer.fromTar(await tarOf(top)), { createdBy: 'change', created: CREATED });
    img = await rt.images.tag(img, 'fixture:v1');
  });
  afterEach(() => removeTempDir(dir));

  async function tarOf(tree: string): Promise<string> {
    const out = join(dir, `layer-${Math.random().toString(16).slice(2)}.tar`);
    run('tar', ['--sort=name', '--numeric-owner', '-C', tree, '-cf', out, '.']);
    return out;
  }

  it('exports a layout that oci-image-tool validates', async () => {
    const layout = join(dir, 'layout');
    await img.export(layout);
    const out = run('oci-image-tool', ['validate', '--type', 'image', '--ref', 'name=v1', layout]);
    expect(out).toMatch(/success|valid/i);
  });

  it('unpacks to the same tree as umoci unpack of our layout', async () => {
    const layout = join(dir, 'layout');
    await img.export(layout);
    const bundle = join(dir, 'bundle');
    run('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
    const ours = join(dir, 'ours');
    await img.unpack(ours);
    expect(describeTree(ours, { mtimes: true })).toEqual(describeTree(join(bundle, 'rootfs'), { mtimes: true }));
    expect(describeTree(ours)).not.toContain('dangling');
  });

  it('imports a layout made by umoci and unpacks it as umoci does', async () => {
    const layout = join(dir, 'umoci-layout');
    const bundle = join(dir, 'umoci-bundle');
    run('umoci', ['init', '--layout', layout]);
    run('umoci', ['new', '--image', `${layout}:made`]);
    run('umoci', ['unpack', '--image', `${layout}:made`, bundle]);
    makeFixtureTree(join(bundle, 'rootfs'));
    run('umoci', ['repack', '--image', `${layout}:made`, bundle]);
    run('umoci', ['config', '--image', `${layout}:made`, '--config.cmd', '/bin/tool']);
    const theirs = join(dir, 'theirs');
    run('umoci', ['unpack', '--image', `${layout}:made`, theirs]);

    const [imported, ...rest] = await rt.images.import(layout, { repository: 'umoci/made' });
    expect(rest).toEqual([]);
    expect(imported!.tags).toEqual(['docker.io/umoci/made:made']);
    expect(imported!.config.Cmd).toEqual(['/bin/tool']);
    const ours = join(dir, 'ours');
    await imported!.unpack(ours);
    expect(describeTree(ours, { mtimes: true })).toEqual(describeTree(join(theirs, 'rootfs'), { mtimes: true }));
  });

  it('imports layouts made by skopeo from our archives, with identical digests and trees', async () => {
    const ociArchive = join(dir, 'img.oci.tar');
    const dockerArchive = join(dir, 'img.docker.tar');
    await img.export(ociArchive, { format: 'oci-archive' });
    await img.export(dockerArchive, { format: 'docker-archive' });
    const fromOci = join(dir, 'skopeo-from-oci');
    const fromDocker = join(dir, 'skopeo-from-docker');
    run('skopeo', ['copy', '--quiet', `oci-archive:${ociArchive}:v1`, `oci:${fromOci}:copied`]);
    run('skopeo', ['copy', '--quiet', `docker-archive:${dockerArchive}`, `oci:${fromDocker}:copied`]);
    const expected = join(dir, 'expected');
    await img.unpack(expected);
    for (const layout of [fromOci, fromDocker]) {
      const other = await Runtime.open({ root: join(dir, `root-${layout.split('/').pop()}`) });
      const [imported] = await other.images.import(layout, { repository: 'copied' });
      expect(imported!.layers.map((l) => l.diffId)).toEqual(img.layers.map((l) => l.diffId));
      // skopeo gzips our uncompressed top layer (new layer digest, new manifest), and
      // from a docker-archive it re-encodes the config; every diffID must survive.
      if (layout === fromOci) {
        expect(imported!.id, layout).toBe(img.id);
        expect(imported!.layers[0]!.digest).toBe(img.layers[0]!.digest);
      }
      const out = join(dir, `out-${layout.split('/').pop()}`);
      await imported!.unpack(out);
      expect(describeTree(out, { mtimes: true })).toEqual(describeTree(expected, { mtimes: true }));
    }
  });

  it('writes archives skopeo inspects: docker-archive and oci-archive', async () => {
    const ociArchive = join(dir, 'img.oci.tar');
    const dockerArchive = join(dir, 'img.docker.tar');
    await img.export(ociArchive, { format: 'oci-archive' });
    await img.export(dockerArchive, { format: 'docker-archive' });
    const fromOci = JSON.parse(run('skopeo', ['inspect', `oci-archive:${ociArchive}:v1`])) as { Digest: string; Layers: string[]; Env: string[] };
    expect(fromOci.Digest).toBe(img.digest);
    expect(fromOci.Layers).toEqual(img.layers.map((l) => l.digest));
    expect(fromOci.Env).toEqual(['A=1']);
    const fromDocker = JSON.parse(run('skopeo', ['inspect', `docker-archive:${dockerArchive}`])) as { Layers: string[]; RepoTags: string[] };
    expect(fromDocker.Layers).toEqual(img.layers.map((l) => l.diffId));
    const raw = JSON.parse(run('skopeo', ['inspect', '--config', '--raw', `docker-archive:${dockerArchive}`])) as { rootfs: { diff_ids: string[] } };
    expect(raw.rootfs.diff_ids).toEqual(img.layers.map((l) => l.diffId));
    cpSync(dockerArchive, join(dir, 'copy.tar'));
  });
});
