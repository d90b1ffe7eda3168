/**
 * The initramfs builder: the cpio newc writer checked by GNU cpio and by our
 * own reader, the overlay merge of snapshot layers (whiteouts, opaque
 * directories), the per-image cache, and the config records.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../lib/errors';
import { native } from '../../../lib/native';
import { CPIO_TYPE, cpioEntry, cpioTrailer, readCpio } from '../../../lib/vm/guest/cpio';
import { buildInitramfs, encodeGuestConfig, resolveGuestUser, writeRootfsArchive } from '../../../lib/vm/guest/initramfs';
import type { KernelInfo } from '../../../lib/vm/guest/kernel';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { initFixture } from './fixtures';

/** Gunzips every gzip member of a file (Node's gunzip reads concatenated members). */
function unpackArchive(path: string): Buffer {
  return gunzipSync(readFileSync(path));
}

function cpio(args: string[], input: Buffer, cwd?: string): string {
  return execFileSync('cpio', args, { input, cwd, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

describe('cpio newc', () => {
  it('writes what GNU cpio and our reader read back: names, modes, owners, mtime, data, symlinks, devices', () => {
    const archive = Buffer.concat([
      cpioEntry({ name: 'dir', mode: CPIO_TYPE.directory | 0o750, uid: 5, gid: 6, mtime: 1_700_000_000, ino: 1, nlink: 2 }),
      cpioEntry({ name: 'dir/file', mode: CPIO_TYPE.file | 0o640, uid: 1000, gid: 1001, mtime: 1_700_000_001, ino: 2, nlink: 1 }, Buffer.from('hello\n')),
      cpioEntry({ name: 'dir/odd', mode: CPIO_TYPE.file | 0o600, uid: 0, gid: 0, mtime: 0, ino: 3, nlink: 1 }, Buffer.from('abc')),
      cpioEntry({ name: 'link', mode: CPIO_TYPE.symlink | 0o777, uid: 0, gid: 0, mtime: 0, ino: 4, nlink: 1 }, Buffer.from('dir/file')),
      cpioEntry({ name: 'console', mode: CPIO_TYPE.charDevice | 0o600, uid: 0, gid: 0, mtime: 0, ino: 5, nlink: 1, rdevMajor: 5, rdevMinor: 1 }),
      cpioTrailer(),
    ]);
    expect(archive.length % 4).toBe(0);
    const listing = cpio(['-t', '-v', '-n', '--quiet'], archive).trim().split('\n');
    expect(listing).toHaveLength(5);
    expect(listing[0]).toMatch(/^drwxr-x---\s+2\s+5\s+6\s+0 .* dir$/);
    expect(listing[1]).toMatch(/^-rw-r-----\s+1\s+1000\s+1001\s+6 .* dir\/file$/);
    expect(listing[3]).toMatch(/^lrwxrwxrwx .* link -> dir\/file$/);
    expect(listing[4]).toMatch(/^crw-------\s+1\s+0\s+0\s+5,\s+1 .* console$/);
    const ours = readCpio(archive);
    expect(ours.map((e) => [e.name, e.mode, e.uid, e.gid, e.mtime, e.data.toString()])).toEqual([
      ['dir', CPIO_TYPE.directory | 0o750, 5, 6, 1_700_000_000, ''],
      ['dir/file', CPIO_TYPE.file | 0o640, 1000, 1001, 1_700_000_001, 'hello\n'],
      ['dir/odd', CPIO_TYPE.file | 0o600, 0, 0, 0, 'abc'],
      ['link', CPIO_TYPE.symlink | 0o777, 0, 0, 0, 'dir/file'],
      ['console', CPIO_TYPE.charDevice | 0o600, 0, 0, 0, ''],
    ]);
    expect(ours[4]).toMatchObject({ rdevMajor: 5, rdevMinor: 1 });
  });

  it('rejects values that do not fit the format', () => {
    expect(() => cpioEntry({ name: 'x', mode: 0o100644, uid: -1, gid: 0, mtime: 0, ino: 1, nlink: 1 })).toThrow(InvalidArgumentError);
    expect(() => readCpio(Buffer.from('070702garbage'))).toThrow(/bad magic/);
  });
});

describe('guest config records', () => {
  it('encodes key=value\\0 records in order, values with any byte but NUL', () => {
    const buf = encodeGuestConfig(
      { argv: ['sh', '-c', 'echo "a=b"\nline2'], env: ['PATH=/bin', 'EMPTY='], workdir: '/w', uid: 7, gid: 8, groups: [9, 10], hostname: 'h', stdin: true },
      { modules: ['/.nacelle/modules/virtio.ko'], channel: '/dev/hvc0', root: '/dev/vda', rootfstype: 'erofs' },
    );
    expect(buf.toString().split('\0')).toEqual([
      'arg=sh', 'arg=-c', 'arg=echo "a=b"\nline2', 'env=PATH=/bin', 'env=EMPTY=', 'workdir=/w', 'uid=7', 'gid=8', 'group=9', 'group=10',
      'hostname=h', 'stdin=1', 'module=/.nacelle/modules/virtio.ko', 'channel=/dev/hvc0', 'root=/dev/vda', 'rootfstype=erofs', '',
    ]);
  });

  it('refuses an empty command, NUL bytes, bad env entries, ids and relative workdirs', () => {
    const base = { argv: ['true'], env: [], workdir: '/', uid: 0, gid: 0, hostname: 'h' };
    expect(() => encodeGuestConfig({ ...base, argv: [] })).toThrow(/no command/);
    expect(() => encodeGuestConfig({ ...base, argv: ['a\0b'] })).toThrow(/NUL/);
    expect(() => encodeGuestConfig({ ...base, env: ['NOEQUALS'] })).toThrow(/NAME=VALUE/);
    expect(() => encodeGuestConfig({ ...base, uid: -1 })).toThrow(/uid/);
    expect(() => encodeGuestConfig({ ...base, workdir: 'rel' })).toThrow(/not absolute/);
  });
});

describeRoot('initramfs from snapshot layers', () => {
  let dir: string;
  let lower: string;
  let upper: string;
  let init: { path: string; cleanup: () => void };
  const noModules: KernelInfo = { kernel: '/nonexistent', source: 'option' };
  const config = { argv: ['/bin/true'], env: ['PATH=/bin'], workdir: '/', uid: 0, gid: 0, hostname: 'box' };
  const t = new Date('2024-01-02T03:04:05Z');

  beforeAll(() => {
    dir = makeTempDir('initramfs');
    init = initFixture();
    // the lower layer: files, a hard link, a symlink, an owner, a setuid mode, a directory that gets replaced
    lower = join(dir, 'lower');
    mkdirSync(join(lower, 'etc'), { recursive: true });
    mkdirSync(join(lower, 'opaque/old'), { recursive: true });
    mkdirSync(join(lower, 'merged'), { recursive: true });
    writeFileSync(join(lower, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n');
    writeFileSync(join(lower, 'etc/group'), 'root:x:0:\napp:x:1000:\nstaff:x:50:app\n');
    writeFileSync(join(lower, 'etc/deleted'), 'gone\n');
    writeFileSync(join(lower, 'opaque/old/file'), 'hidden\n');
    writeFileSync(join(lower, 'merged/from-lower'), 'lower\n');
    writeFileSync(join(lower, 'tool'), 'binary');
    chownSync(join(lower, 'tool'), 1000, 1000); // chown before chmod: chown clears set-id bits
    chmodSync(join(lower, 'tool'), 0o4755);
    linkSync(join(lower, 'tool'), join(lower, 'tool-link'));
    symlinkSync('etc/passwd', join(lower, 'passwd-link'));
    writeFileSync(join(lower, 'big'), Buffer.alloc(3 << 20, 0x5a));
    utimesSync(join(lower, 'tool'), t, t);
    // the upper layer: a whiteout, an opaque directory, a merged directory, a replaced file
    upper = join(dir, 'upper');
    mkdirSync(join(upper, 'etc'), { recursive: true });
    mkdirSync(join(upper, 'opaque'), { recursive: true });
    mkdirSync(join(upper, 'merged'), { recursive: true });
    native().mknod(join(upper, 'etc/deleted'), 0o020000, 0, 0);
    native().lsetxattr(join(upper, 'opaque'), 'trusted.overlay.opaque', Buffer.from('y'));
    writeFileSync(join(upper, 'opaque/new'), 'new\n');
    writeFileSync(join(upper, 'merged/from-upper'), 'upper\n');
    writeFileSync(join(upper, 'passwd-link'), 'now a file\n');
  });
  afterAll(() => {
    init.cleanup();
    removeTempDir(dir);
  });

  it('merges the layers as overlayfs shows them, and cpio -i unpacks the same tree', async () => {
    const out = join(dir, 'rootfs.cpio.gz');
    const bytes = await writeRootfsArchive(out, [lower, upper], []);
    expect(bytes).toBe(lstatSync(out).size);
    expect(bytes).toBeLessThan(1 << 20); // 3 MiB of one byte compresses
    const raw = unpackArchive(out);
    const names = readCpio(raw).map((e) => e.name);
    expect(names).toEqual([
      '.', 'big', 'etc', 'etc/group', 'etc/passwd', 'merged', 'merged/from-lower', 'merged/from-upper', 'opaque', 'opaque/new', 'passwd-link', 'tool', 'tool-link',
      '.nacelle', '.nacelle/modules',
    ]);
    const x = join(dir, 'x');
    mkdirSync(x);
    cpio(['-i', '-d', '-m', '--quiet', '--no-absolute-filenames'], raw, x);
    expect(readFileSync(join(x, 'merged/from-lower'), 'utf8')).toBe('lower\n');
    expect(readFileSync(join(x, 'opaque/new'), 'utf8')).toBe('new\n');
    expect(readFileSync(join(x, 'passwd-link'), 'utf8')).toBe('now a file\n');
    expect(readFileSync(join(x, 'big')).equals(Buffer.alloc(3 << 20, 0x5a))).toBe(true);
    const tool = lstatSync(join(x, 'tool'));
    expect(tool.mode & 0o7777).toBe(0o4755);
    expect([tool.uid, tool.gid]).toEqual([1000, 1000]);
    expect(tool.mtimeMs).toBe(t.getTime());
    // a hard link stays one file: its data is in the archive once
    expect(readFileSync(join(x, 'tool-link'), 'utf8')).toBe('binary');
    expect(lstatSync(join(x, 'tool-link')).ino).toBe(tool.ino);
    const entries = readCpio(raw);
    const [a, b] = ['tool', 'tool-link'].map((n) => entries.find((e) => e.name === n)!);
    expect(a!.ino).toBe(b!.ino);
    expect(a!.nlink).toBe(2);
    expect([a!.size, b!.size]).toEqual([6, 0]); // the kernel links later names to the first (init/initramfs.c)
  });

  it('keeps symlinks as symlinks', async () => {
    const out = join(dir, 'lower.cpio.gz');
    await writeRootfsArchive(out, lower, []);
    const entries = readCpio(unpackArchive(out));
    const link = entries.find((e) => e.name === 'passwd-link');
    expect(link && (link.mode & 0o170000)).toBe(CPIO_TYPE.symlink);
    expect(link?.data.toString()).toBe('etc/passwd');
    expect(entries.some((e) => e.name === 'opaque/old/file')).toBe(true);
    const x = join(dir, 'x-lower');
    mkdirSync(x);
    cpio(['-i', '-d', '--quiet'], unpackArchive(out), x);
    expect(readlinkSync(join(x, 'passwd-link'))).toBe('etc/passwd');
  });

  it('builds rootfs + init + config as two archives, and reuses the cached rootfs part', async () => {
    const cache = { dir: join(dir, 'cache'), key: 'sha256:test-image' };
    const first = await buildInitramfs({ rootfs: [lower, upper], kernel: noModules, config, out: join(dir, 'a.img'), cache, init: init.path });
    expect(first).toMatchObject({ cached: false, modules: [] });
    expect(first.bytes).toBe(first.rootfsBytes + first.runBytes);
    const second = await buildInitramfs({ rootfs: [lower, upper], kernel: noModules, config: { ...config, hostname: 'other' }, out: join(dir, 'b.img'), cache, init: init.path });
    expect(second.cached).toBe(true);
    expect(second.cachePath).toBe(first.cachePath);
    expect(second.rootfsBytes).toBe(first.rootfsBytes);
    const entries = readCpio(unpackArchive(second.path));
    const initEntry = entries.find((e) => e.name === 'init');
    expect(initEntry?.data.equals(readFileSync(init.path))).toBe(true);
    expect((initEntry?.mode ?? 0) & 0o777).toBe(0o755);
    const cfg = entries.find((e) => e.name === '.nacelle/config');
    expect(cfg?.data.toString()).toContain('hostname=other\0');
    expect(entries.find((e) => e.name === 'dev/console')).toMatchObject({ rdevMajor: 5, rdevMinor: 1 });
    // the run part comes after the rootfs, so its entries win when the kernel unpacks both
    expect(entries.findIndex((e) => e.name === 'init')).toBeGreaterThan(entries.findIndex((e) => e.name === 'tool'));
  });

  it('resolves users from the merged layers', async () => {
    expect(await resolveGuestUser([lower, upper], 'app')).toEqual({ uid: 1000, gid: 1000, groups: [50], home: '/home/app' });
    expect(await resolveGuestUser([lower, upper])).toMatchObject({ uid: 0, gid: 0, groups: [] });
    await expect(resolveGuestUser([lower, upper], 'nobody-here')).rejects.toThrow(/not in the image/);
  });

  it('refuses a rootfs that is not a directory', async () => {
    await expect(writeRootfsArchive(join(dir, 'bad.gz'), join(dir, 'missing'), [])).rejects.toThrow(InvalidArgumentError);
  });
});
