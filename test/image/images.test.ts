import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DigestMismatchError, NotFoundError, UnsupportedError } from '../../lib/errors';
import { umount, mount } from '../../lib/host/mount';
import { Layer } from '../../lib/image/layer';
import { Runtime, defaultRoot } from '../../lib/runtime';
import { diskUsage } from '../../lib/store/du';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree, makeFixtureTree } from '../helpers/tree';

const CREATED = '2024-05-06T07:08:09Z';

describeRoot('images in a runtime', () => {
  let dir: string;
  let rt: Runtime;
  beforeEach(async () => {
    dir = makeTempDir('images');
    rt = await Runtime.open({ root: join(dir, 'root') });
  });
  afterEach(() => removeTempDir(dir));

  function tree(name: string, files: Record<string, string>): string {
    const root = join(dir, name);
    for (const [path, content] of Object.entries(files)) {
      mkdirSync(join(root, path, '..'), { recursive: true });
      writeFileSync(join(root, path), content);
    }
    return root;
  }

  it('picks the default root like the issue says', () => {
    const saved = process.env.NACELLE_ROOT;
    try {
      process.env.NACELLE_ROOT = '/tmp/somewhere';
      expect(defaultRoot()).toBe('/tmp/somewhere');
      delete process.env.NACELLE_ROOT;
      expect(defaultRoot()).toBe('/var/lib/nacelle'); // these tests run as root
    } finally {
      if (saved === undefined) delete process.env.NACELLE_ROOT;
      else process.env.NACELLE_ROOT = saved;
    }
  });

  it('makes an image from a directory with config, history and a normalized tag', async () => {
    const base = tree('base', { 'etc/os-release': 'ID=fixture\n', 'bin/app': 'app' });
    const img = await rt.images.fromDirectory(base, {
      tag: 'app:dev',
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/app'], WorkingDir: '/' },
      created: CREATED,
    });
    expect(img.tags).toEqual(['docker.io/library/app:dev']);
    expect(img.config).toEqual({ Env: ['PATH=/bin'], Cmd: ['/bin/app'], WorkingDir: '/' });
    expect(img.layers).toHaveLength(1);
    expect(img.history).toHaveLength(1);
    expect(img.history[0]).toMatchObject({ created: CREATED });
    expect(img.os).toBe('linux');
    expect(img.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    // the same tree and config give the same image
    const again = await rt.images.fromDirectory(base, {
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/app'], WorkingDir: '/' },
      created: CREATED,
      history: { createdBy: `nacelle fromDirectory ${base}` },
    });
    expect(again.digest).toBe(img.digest);
    expect((await rt.images.get('app:dev')).digest).toBe(img.digest);
    expect((await rt.images.get('docker.io/library/app:dev')).digest).toBe(img.digest);
    expect((await rt.images.get(img.digest)).digest).toBe(img.digest);
    expect((await rt.images.get(img.id)).digest).toBe(img.digest);
    await expect(rt.images.get('app:missing')).rejects.toBeInstanceOf(NotFoundError);
    await expect(rt.images.get('Not A Ref')).rejects.toMatchObject({ code: 'ERR_INVALID_REFERENCE' });
  });

  it('stacks layers immutably and shares the base layer blob', async () => {
    const base = await rt.images.fromDirectory(tree('base', { 'a.txt': 'a' }), { tag: 'base', created: CREATED });
    const layer = await Layer.fromDirectory(tree('top', { 'b.txt': 'b' }));
    const next = await base.withLayer(layer, { createdBy: 'add b.txt', created: CREATED });
    expect(next.digest).not.toBe(base.digest);
    expect(next.layers.map((l) => l.digest)).toEqual([base.layers[0]!.digest, layer.digest]);
    expect(next.history.map((h) => h.created_by)).toEqual([base.history[0]!.created_by, 'add b.txt']);
    expect(base.layers).toHaveLength(1); // unchanged
    const configured = await next.withConfig({ Cmd: ['/bin/sh'] }, { createdBy: 'CMD ["/bin/sh"]', created: CREATED });
    expect(configured.layers.map((l) => l.digest)).toEqual(next.layers.map((l) => l.digest));
    expect(configured.history.at(-1)).toMatchObject({ created_by: 'CMD ["/bin/sh"]', empty_layer: true });
    expect(configured.config.Cmd).toEqual(['/bin/sh']);
    // the layer blob exists once in the store
    const blobs = readdirSync(join(rt.store.root, 'blobs/sha256'));
    expect(blobs.filter((b) => b === base.layers[0]!.digest.slice(7))).toHaveLength(1);

    const out = join(dir, 'unpacked');
    await configured.unpack(out);
    expect(readFileSync(join(out, 'a.txt'), 'utf8')).toBe('a');
    expect(readFileSync(join(out, 'b.txt'), 'utf8')).toBe('b');
  });

  it('tags, moves tags, untags and removes', async () => {
    const one = await rt.images.fromDirectory(tree('one', { f: '1' }), { tag: 'x:1', created: CREATED });
    const two = await rt.images.fromDirectory(tree('two', { f: '2' }), { created: CREATED });
    expect(two.tags).toEqual([]);
    await rt.images.tag(one, 'x:latest');
    expect((await rt.images.get('x')).digest).toBe(one.digest);
    await rt.images.tag(two.digest, 'x:latest'); // moves
    expect((await rt.images.get('x')).digest).toBe(two.digest);
    expect((await rt.images.get(one.digest)).tags).toEqual(['docker.io/library/x:1']);
    await rt.images.untag('x:1');
    const untagged = await rt.images.get(one.digest); // still there, dangling
    expect(untagged.tags).toEqual([]);
    expect((await rt.images.list()).map((i) => i.digest).sort()).toEqual([one.digest, two.digest].sort());
    await rt.images.tag(two, 'y:1');
    await rt.images.remove('y:1'); // two has another tag: only the tag goes
    expect((await rt.images.get(two.digest)).tags).toEqual(['docker.io/library/x:latest']);
    await rt.images.remove(one.digest);
    await expect(rt.images.get(one.digest)).rejects.toBeInstanceOf(NotFoundError);
    await expect(rt.images.untag('nope:1')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('unpacks each layer once into a snapshot and yields overlay lowerdirs, top first', async () => {
    const base = await rt.images.fromDirectory(tree('base', { 'keep.txt': 'keep', 'gone.txt': 'gone', 'd/inner': 'x' }), {
      created: CREATED,
    });
    const upper = join(dir, 'upper');
    mkdirSync(upper);
    writeFileSync(join(upper, 'new.txt'), 'new');
    const mid = await base.withLayer(await Layer.fromDirectory(upper), { created: CREATED });
    const lowers = await mid.lowerDirs();
    expect(lowers).toEqual([rt.snapshots.path(mid.layers[1]!.diffId), rt.snapshots.path(mid.layers[0]!.diffId)]);
    const snaps = await rt.snapshots.list();
    expect(snaps.map((s) => s.diffId).sort()).toEqual(mid.layers.map((l) => l.diffId).sort());
    // a second image on the same base reuses the base snapshot (no second unpack)
    const marker = join(lowers[1]!, 'keep.txt');
    const before = readFileSync(marker, 'utf8');
    const other = await base.withLayer(await Layer.fromDirectory(tree('other', { 'o.txt': 'o' })), { created: CREATED });
    const otherLowers = await other.lowerDirs();
    expect(otherLowers[1]).toBe(lowers[1]);
    expect(readFileSync(marker, 'utf8')).toBe(before);

    const merged = join(dir, 'merged');
    mkdirSync(merged);
    await mount({ source: 'overlay', target: merged, fstype: 'overlay', flags: ['rdonly'], data: `lowerdir=${lowers.join(':')}` });
    try {
      expect(readdirSync(merged).sort()).toEqual(['d', 'gone.txt', 'keep.txt', 'new.txt']);
    } finally {
      await umount(merged);
    }
  });

  it('prunes blobs and snapshots no image references, and reports what it freed', async () => {
    const base = await rt.images.fromDirectory(tree('base', { 'shared.txt': 'shared'.repeat(100) }), { tag: 'base', created: CREATED });
    const child = await base.withLayer(await Layer.fromDirectory(tree('child', { 'own.txt': 'own'.repeat(1000) })), {
      created: CREATED,
    });
    await rt.images.tag(child, 'child');
    await child.lowerDirs();
    expect(await rt.prune()).toMatchObject({ blobs: { count: 0, bytes: 0 }, snapshots: { count: 0 } });

    await rt.images.remove('child');
    const childSnapshotBytes = await diskUsage(rt.snapshots.path(child.layers[1]!.diffId));
    const freed = await rt.prune();
    // the child's layer, config and manifest go; the shared base stays
    expect(freed.blobs.count).toBe(3);
    expect(freed.blobs.bytes).toBe(child.layers[1]!.size + child.manifest.config.size + Buffer.byteLength(JSON.stringify(child.manifest)));
    expect(freed.snapshots.count).toBe(1);
    expect(freed.snapshots.bytes).toBe(childSnapshotBytes);
    expect(childSnapshotBytes).toBeGreaterThanOrEqual(3000);
    expect((await rt.images.get('base')).digest).toBe(base.digest);
    expect(await rt.snapshots.has(base.layers[0]!.diffId)).toBe(true);
    expect(await rt.snapshots.has(child.layers[1]!.diffId)).toBe(false);
    const out = join(dir, 'check');
    await (await rt.images.get('base')).unpack(out);
    expect(readFileSync(join(out, 'shared.txt'), 'utf8')).toBe('shared'.repeat(100));
  });

  it('refuses a layer whose blob was corrupted in the store', async () => {
    const img = await rt.images.fromDirectory(tree('base', { f: 'content' }), { created: CREATED });
    const blob = rt.store.blobPath(img.layers[0]!.digest);
    const bytes = readFileSync(blob);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 9) ^ 0xff, bytes.length - 9); // the gzip trailer CRC
    writeFileSync(blob, bytes);
    await expect(img.unpack(join(dir, 'out'))).rejects.toBeInstanceOf(Error);
    const err = await img.unpack(join(dir, 'out2')).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toMatch(/ERR_DIGEST_MISMATCH|Z_DATA_ERROR|ERR_LAYER/);
    expect(await rt.snapshots.list()).toEqual([]);
    await expect(img.lowerDirs()).rejects.toBeDefined();
    expect(readdirSync(rt.snapshots.root).filter((n) => n.startsWith('tmp-'))).toEqual([]);
  });

  it('refuses zstd layer files clearly', async () => {
    const f = join(dir, 'layer.tar.zst');
    writeFileSync(f, Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]));
    await expect(Layer.fromTar(f)).rejects.toBeInstanceOf(UnsupportedError);
    rmSync(f);
    await expect(Layer.fromTar(f)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('keeps every kind of entry through a Layer.fromDirectory round trip', async () => {
    const src = join(dir, 'fixture');
    mkdirSync(src);
    makeFixtureTree(src);
    const img = await rt.images.fromDirectory(src, { created: CREATED });
    const out = join(dir, 'out');
    await img.unpack(out);
    expect(describeTree(out, { mtimes: true })).toEqual(describeTree(src, { mtimes: true }));
    expect(DigestMismatchError).toBeDefined();
  });
});
