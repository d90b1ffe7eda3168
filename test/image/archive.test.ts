import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DigestMismatchError, NotFoundError, UnsupportedError } from '../../lib/errors';
import { Layer } from '../../lib/image/layer';
import type { Image } from '../../lib/image/image';
import { Runtime } from '../../lib/runtime';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree, makeFixtureTree } from '../helpers/tree';

const CREATED = '2024-05-06T07:08:09Z';

describeRoot('import and export', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  beforeEach(async () => {
    dir = makeTempDir('archive');
    rt = await Runtime.open({ root: join(dir, 'root') });
    const src = join(dir, 'src');
    mkdirSync(src);
    makeFixtureTree(src);
    const base = await rt.images.fromDirectory(src, { tag: 'fixture:base', created: CREATED, config: { Cmd: ['/bin/tool'] } });
    const top = join(dir, 'top');
    mkdirSync(top);
    writeFileSync(join(top, 'added.txt'), 'added');
    img = await base.withLayer(await Layer.fromDirectory(top), { createdBy: 'add', created: CREATED });
    img = await rt.images.tag(img, 'fixture:v2');
  });
  afterEach(() => removeTempDir(dir));

  async function roundTrip(format: 'oci-layout' | 'oci-archive' | 'docker-archive') {
    const path = join(dir, `out.${format}`);
    await img.export(path, { format });
    const other = await Runtime.open({ root: join(dir, `root-${format}`) });
    const [imported, ...rest] = await other.images.import(path);
    expect(rest).toEqual([]);
    const a = join(dir, `a-${format}`);
    const b = join(dir, `b-${format}`);
    await img.unpack(a);
    await imported!.unpack(b);
    expect(describeTree(b, { mtimes: true })).toEqual(describeTree(a, { mtimes: true }));
    return { imported: imported!, other };
  }

  it('round-trips through an OCI layout with the same digests and tag', async () => {
    const { imported } = await roundTrip('oci-layout');
    expect(imported.digest).toBe(img.digest);
    expect(imported.tags).toEqual(['docker.io/library/fixture:v2']);
    const index = JSON.parse(readFileSync(join(dir, 'out.oci-layout', 'index.json'), 'utf8'));
    expect(index.manifests[0].annotations['org.opencontainers.image.ref.name']).toBe('v2');
  });

  it('round-trips through an OCI archive with the same digests', async () => {
    const { imported } = await roundTrip('oci-archive');
    expect(imported.digest).toBe(img.digest);
    expect(imported.tags).toEqual(['docker.io/library/fixture:v2']);
  });

  it('round-trips through a docker-archive: same config (image ID) and diffIDs, uncompressed layers', async () => {
    const { imported } = await roundTrip('docker-archive');
    expect(imported.id).toBe(img.id);
    expect(imported.layers.map((l) => l.diffId)).toEqual(img.layers.map((l) => l.diffId));
    expect(imported.layers.map((l) => l.digest)).toEqual(img.layers.map((l) => l.diffId));
    expect(imported.tags).toEqual(['docker.io/library/fixture:v2']);
    const listing = execFileSync('tar', ['-tf', join(dir, 'out.docker-archive')], { encoding: 'utf8' });
    expect(listing).toContain('manifest.json');
    expect(listing).toContain('repositories');
    const manifest = JSON.parse(execFileSync('tar', ['-xOf', join(dir, 'out.docker-archive'), 'manifest.json'], { encoding: 'utf8' }));
    expect(manifest).toEqual([{ Config: `${img.id.slice(7)}.json`, RepoTags: ['fixture:v2'], Layers: img.layers.map((l) => `${l.diffId.slice(7)}/layer.tar`) }]);
  });

  it('writes several tags and images into one archive', async () => {
    const base = await rt.images.get('fixture:base');
    await rt.images.tag(img, 'other/name:extra');
    const both = [await rt.images.get(img.digest), base];
    for (const format of ['oci-archive', 'docker-archive', 'oci-layout'] as const) {
      const path = join(dir, `multi.${format}`);
      await rt.images.export(both, path, { format });
      const other = await Runtime.open({ root: join(dir, `multi-root-${format}`) });
      const imported = await other.images.import(path);
      const tags = imported.flatMap((i) => i.tags).sort();
      expect(tags, format).toEqual(['docker.io/library/fixture:base', 'docker.io/library/fixture:v2', 'docker.io/other/name:extra']);
    }
  });

  it('refuses a corrupt blob in a layout and leaves nothing partial in the store', async () => {
    const path = join(dir, 'layout');
    await img.export(path);
    const layerHex = img.layers[1]!.digest.slice(7);
    const blob = join(path, 'blobs/sha256', layerHex);
    const bytes = readFileSync(blob);
    bytes.writeUInt8(bytes.readUInt8(20) ^ 0xff, 20);
    writeFileSync(blob, bytes);
    const other = await Runtime.open({ root: join(dir, 'victim') });
    await expect(other.images.import(path)).rejects.toBeInstanceOf(DigestMismatchError);
    expect(readdirSync(join(other.store.root, 'ingest'))).toEqual([]);
    expect(readdirSync(join(other.store.root, 'blobs/sha256'))).not.toContain(layerHex);
    expect(await other.images.list()).toEqual([]);
  });

  it('refuses a manifest naming a missing blob, unknown media types, and truncated archives', async () => {
    const path = join(dir, 'layout');
    await img.export(path);
    const other = await Runtime.open({ root: join(dir, 'victim') });
    const missing = join(dir, 'missing');
    execFileSync('cp', ['-a', path, missing]);
    execFileSync('rm', [join(missing, 'blobs/sha256', img.layers[0]!.digest.slice(7))]);
    const err = await other.images.import(missing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as Error).message).toContain(img.layers[0]!.digest);

    const weird = join(dir, 'weird');
    execFileSync('cp', ['-a', path, weird]);
    const index = JSON.parse(readFileSync(join(weird, 'index.json'), 'utf8'));
    index.manifests[0].mediaType = 'application/x-not-a-manifest';
    writeFileSync(join(weird, 'index.json'), JSON.stringify(index));
    await expect(other.images.import(weird)).rejects.toBeInstanceOf(UnsupportedError);

    const archive = join(dir, 'archive.tar');
    await img.export(archive, { format: 'oci-archive' });
    truncateSync(archive, Math.floor(statSync(archive).size / 2));
    await expect(other.images.import(archive)).rejects.toMatchObject({ code: expect.stringMatching(/ERR_INVALID_ARCHIVE|ERR_NOT_FOUND|ERR_DIGEST_MISMATCH/) });
    expect(readdirSync(join(other.store.root, 'ingest'))).toEqual([]);
    await expect(other.images.import(join(dir, 'nothing-here'))).rejects.toBeInstanceOf(NotFoundError);
  });
});
