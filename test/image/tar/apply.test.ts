import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, writeFileSync, linkSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UnsupportedError } from '../../../lib/errors';
import { mount, umount } from '../../../lib/host/mount';
import { applyLayer } from '../../../lib/image/tar';
import { native } from '../../../lib/native';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { chunked, makeTar, type TarSpec } from './helpers';

async function applySpecs(target: string, specs: readonly TarSpec[], options?: Parameters<typeof applyLayer>[2]): Promise<Awaited<ReturnType<typeof applyLayer>>> {
  return applyLayer(chunked(gzipSync(await makeTar(specs)), [777]), target, options);
}

/** Every path under root, sorted, directories marked with a trailing slash. */
function tree(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(root, rel)).sort()) {
    const p = rel ? `${rel}/${name}` : name;
    const dir = lstatSync(join(root, p)).isDirectory();
    out.push(dir ? `${p}/` : p);
    if (dir) out.push(...tree(root, p));
  }
  return out;
}

function write(root: string, files: Record<string, string>): void {
  for (const [p, data] of Object.entries(files)) {
    mkdirSync(join(root, p, '..'), { recursive: true });
    if (p.endsWith('/')) mkdirSync(join(root, p), { recursive: true });
    else writeFileSync(join(root, p), data);
  }
}

describe('applyLayer: the OCI layer rules', () => {
  let target: string;
  beforeEach(() => {
    target = makeTempDir('tar-apply');
  });
  afterEach(() => removeTempDir(target));

  it('fails (never waits forever) on a stream that failed or ended before applyLayer was called', async () => {
    const failed = new PassThrough();
    failed.on('error', () => undefined); // the caller saw the error: nobody else is left to hear it
    failed.destroy(new Error('digest mismatch, reported before anyone read'));
    await new Promise((r) => setImmediate(r));
    await expect(applyLayer(failed, target)).rejects.toThrow(/digest mismatch, reported before anyone read/);
    const closed = new PassThrough();
    closed.destroy();
    await new Promise((r) => setImmediate(r));
    await expect(applyLayer(closed, target)).rejects.toThrow(/closed before it was read/);
  });

  it('deletes what .wh. names (files and whole directories) and never creates the whiteout', async () => {
    write(target, { 'etc/a': 'a', 'etc/b': 'b', 'etc/sub/c': 'c', 'keep/x': 'x', 'top': 't' });
    const r = await applySpecs(target, [
      { name: 'etc/' },
      { name: 'etc/.wh.a' },
      { name: 'etc/.wh.sub' },
      { name: 'etc/.wh.missing' },
      { name: 'etc/new', data: 'new' },
      { name: '.wh.top' },
      { name: 'nothere/.wh.x' },
    ]);
    expect(r.entries).toBe(7);
    expect(tree(target)).toEqual(['etc/', 'etc/b', 'etc/new', 'keep/', 'keep/x']);
  });

  it('a whiteout hides lower layers only, not an entry of the same layer', async () => {
    write(target, { 'lower': 'l' });
    await applySpecs(target, [{ name: 'x', data: 'same layer' }, { name: '.wh.x' }, { name: '.wh.lower' }]);
    expect(tree(target)).toEqual(['x']);
  });

  it('an opaque directory loses what lower layers put there and keeps this layer, in any order', async () => {
    write(target, { 'd/old': 'o', 'd/olddir/x': 'x', 'd/keepdir/lower-only': 'l', 'd/sub/lower': 'l', 'other/y': 'y' });
    await applySpecs(target, [
      { name: 'd/' },
      { name: 'd/+first', data: 'before the marker' },
      { name: 'd/sub/mine', data: 'mine' }, // d/sub exists below, this layer only adds to it
      { name: 'd/.wh..wh..opq' },
      { name: 'd/keepdir/new', data: 'after the marker' },
      { name: 'd/zz', data: 'z' },
    ]);
    expect(tree(target)).toEqual(['d/', 'd/+first', 'd/keepdir/', 'd/keepdir/new', 'd/sub/', 'd/sub/mine', 'd/zz', 'other/', 'other/y']);
  });

  it('an opaque marker at the end of an unsorted archive keeps everything this layer added', async () => {
    write(target, { 'd/lower': 'l', 'd/a': 'lower a' });
    await applySpecs(target, [{ name: 'd/a', data: 'mine' }, { name: 'd/n/b', data: 'b' }, { name: 'd/.wh..wh..opq' }]);
    expect(tree(target)).toEqual(['d/', 'd/a', 'd/n/', 'd/n/b']);
    expect(readFileSync(join(target, 'd/a'), 'utf8')).toBe('mine');
  });

  it('replaces files (without writing through hardlinks), directories and symlinks; merges directories', async () => {
    write(target, { 'f': 'old', 'dir/child/x': 'x', 'file2': 'f', 'pointed/inside': 'i', 'merge/old': 'o' });
    linkSync(join(target, 'f'), join(target, 'g'));
    symlinkSync('pointed', join(target, 'ln'));
    await applySpecs(target, [
      { name: 'dir', data: 'now a file' },
      { name: 'f', data: 'new' },
      { name: 'file2/', mode: 0o40700 },
      { name: 'ln/', mode: 0o40700 },
      { name: 'ln/x', data: 'in the new dir' },
      { name: 'merge/', mode: 0o40711, uid: 12, gid: 34, mtime: 1_234_567_890 },
      { name: 'merge/new', data: 'n' },
    ]);
    expect(readFileSync(join(target, 'dir'), 'utf8')).toBe('now a file');
    expect(readFileSync(join(target, 'f'), 'utf8')).toBe('new');
    expect(readFileSync(join(target, 'g'), 'utf8')).toBe('old');
    expect(lstatSync(join(target, 'file2')).isDirectory()).toBe(true);
    expect(lstatSync(join(target, 'ln')).isDirectory()).toBe(true);
    expect(readdirSync(join(target, 'pointed'))).toEqual(['inside']);
    expect(readdirSync(join(target, 'merge')).sort()).toEqual(['new', 'old']);
    const st = lstatSync(join(target, 'merge'));
    expect(st.mode & 0o7777).toBe(0o711);
    expect(st.mtimeMs).toBe(1_234_567_890_000);
    if (process.geteuid?.() === 0) expect([st.uid, st.gid]).toEqual([12, 34]);
  });

  it('sets directory times after their contents, and creates missing parents', async () => {
    await applySpecs(target, [
      { name: 'a/', mtime: 1000 },
      { name: 'a/b/', mtime: 2000 },
      { name: 'a/b/c', data: 'c', mtime: 3000 },
      { name: 'x/y/z', data: 'z', mtime: 4000 },
    ]);
    expect(lstatSync(join(target, 'a')).mtimeMs).toBe(1_000_000);
    expect(lstatSync(join(target, 'a/b')).mtimeMs).toBe(2_000_000);
    expect(lstatSync(join(target, 'a/b/c')).mtimeMs).toBe(3_000_000);
    expect(lstatSync(join(target, 'x/y')).isDirectory()).toBe(true);
  });

  it('applies the root entry ./ to the target itself and accepts ./ prefixes', async () => {
    await applySpecs(target, [{ name: './', mode: 0o40750, mtime: 5000 }, { name: './etc/', mtime: 6000 }, { name: './etc/x', data: 'x' }]);
    expect(lstatSync(target).mode & 0o7777).toBe(0o750);
    expect(lstatSync(target).mtimeMs).toBe(5_000_000);
    expect(tree(target)).toEqual(['etc/', 'etc/x']);
  });

  it('links hardlinks to an entry created before, or to one a lower layer left', async () => {
    write(target, { 'lower/file': 'from below' });
    await applySpecs(target, [
      { name: 'a', data: 'A' },
      { name: 'b', type: 'link', linkname: 'a' },
      { name: 'c', type: 'link', linkname: './lower/file' },
    ]);
    expect(lstatSync(join(target, 'b')).ino).toBe(lstatSync(join(target, 'a')).ino);
    expect(lstatSync(join(target, 'c')).ino).toBe(lstatSync(join(target, 'lower/file')).ino);
  });

  it('refuses zstd with UnsupportedError and reads plain tar as well as gzip', async () => {
    const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100)]);
    await expect(applyLayer(chunked(zstd, [2]), target)).rejects.toBeInstanceOf(UnsupportedError);
    const r = await applyLayer(chunked(await makeTar([{ name: 'p', data: 'plain' }])), target);
    expect(r.entries).toBe(1);
    expect(readFileSync(join(target, 'p'), 'utf8')).toBe('plain');
  });
});

describeRoot('applyLayer as root', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-apply');
  });
  afterEach(async () => {
    const merged = join(dir, 'merged');
    while (readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === merged)) {
      await umount(merged, { detach: true });
    }
    removeTempDir(dir);
  });

  it('sets owners only with sameOwner, and devices only when allowed', async () => {
    const t1 = join(dir, 't1');
    mkdirSync(t1);
    await applySpecs(t1, [{ name: 'f', data: 'x', uid: 1234, gid: 5678 }, { name: 'null', type: 'character-device', devmajor: 1, devminor: 3 }]);
    expect(lstatSync(join(t1, 'f'))).toMatchObject({ uid: 1234, gid: 5678 });
    expect(lstatSync(join(t1, 'null')).isCharacterDevice()).toBe(true);
    const t2 = join(dir, 't2');
    mkdirSync(t2);
    await applySpecs(t2, [{ name: 'f', data: 'x', uid: 1234, gid: 5678, mode: 0o104755 }], { sameOwner: false });
    expect(lstatSync(join(t2, 'f'))).toMatchObject({ uid: 0, gid: 0 });
    expect(lstatSync(join(t2, 'f')).mode & 0o7777).toBe(0o4755);
  });

  it("writes overlayfs whiteouts in 'overlay' mode, which overlayfs then honors as a lowerdir", async () => {
    const base = join(dir, 'base');
    const top = join(dir, 'top');
    mkdirSync(base);
    mkdirSync(top);
    await applySpecs(base, [
      { name: 'etc/' },
      { name: 'etc/a', data: 'a' },
      { name: 'etc/b', data: 'b' },
      { name: 'd/' },
      { name: 'd/old', data: 'old' },
      { name: 'd/olddir/x', data: 'x' },
    ]);
    const r = await applySpecs(
      top,
      [{ name: 'd/' }, { name: 'd/.wh..wh..opq' }, { name: 'd/new', data: 'new' }, { name: 'etc/' }, { name: 'etc/.wh.a' }, { name: 'etc/c', data: 'c' }],
      { whiteouts: 'overlay' },
    );
    expect(r.entries).toBe(6);
    const wh = lstatSync(join(top, 'etc/a'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect(wh.rdev).toBe(0);
    expect(native().lgetxattr(join(top, 'd'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    expect(native().lgetxattr(join(top, 'etc'), 'trusted.overlay.opaque')).toBeNull();
    expect(tree(top)).toEqual(['d/', 'd/new', 'etc/', 'etc/a', 'etc/c']);
    // the snapshot works as overlayfs lowerdirs
    const merged = join(dir, 'merged');
    mkdirSync(merged);
    await mount({ source: 'overlay', target: merged, fstype: 'overlay', data: `lowerdir=${top}:${base}` });
    try {
      expect(tree(merged)).toEqual(['d/', 'd/new', 'etc/', 'etc/b', 'etc/c']);
    } finally {
      await umount(merged);
    }
    expect(existsSync(join(base, 'etc/a'))).toBe(true);
  });

  it('applies a symlink without following it for times or modes', async () => {
    const t = join(dir, 't');
    const outside = join(dir, 'outside');
    mkdirSync(t);
    writeFileSync(outside, 'o');
    utimesSync(outside, 1000, 1000);
    await applySpecs(t, [{ name: 'ln', type: 'symlink', linkname: outside, mode: 0o120777, uid: 7, gid: 7, mtime: 99 }]);
    expect(readlinkSync(join(t, 'ln'))).toBe(outside);
    expect(lstatSync(join(t, 'ln'))).toMatchObject({ uid: 7, gid: 7, mtimeMs: 99_000 });
    expect(lstatSync(outside)).toMatchObject({ uid: 0, mtimeMs: 1_000_000, mode: 0o100644 });
  });
});
