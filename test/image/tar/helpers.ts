/** Fixtures and comparisons for the layer tar tests. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { native } from '../../../lib/native';

/** Collects what is written into one Buffer. */
export class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(chunk);
    cb();
  }
  /** Everything written so far. */
  get buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** A stream that yields `data` in chunks whose sizes cycle through `sizes`. */
export function chunked(data: Buffer, sizes: readonly number[] = [data.length || 1]): Readable {
  let off = 0;
  let i = 0;
  return new Readable({
    read() {
      if (off >= data.length) {
        this.push(null);
        return;
      }
      const n = sizes[i++ % sizes.length] ?? 1;
      this.push(data.subarray(off, off + n));
      off += n;
    },
  });
}

/** sha256:hex of bytes. */
export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** The uncompressed tar of a blob (gunzips when it is gzip). */
export function tarOf(blob: Buffer): Buffer {
  return blob[0] === 0x1f && blob[1] === 0x8b ? gunzipSync(blob) : blob;
}

/** Runs a program, returning stdout; throws with stderr on failure. */
export function run(file: string, args: readonly string[], input?: Buffer): string {
  return execFileSync(file, args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
}

/** Entry description for {@link makeTar}. */
export interface TarSpec {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  devmajor?: number;
  devminor?: number;
}

/** A plain tar built with tar-stream (an independent writer), entries in the order given. */
export async function makeTar(entries: readonly TarSpec[]): Promise<Buffer> {
  const pack = tar.pack();
  const out = new Collector();
  const done = new Promise<void>((resolve, reject) => {
    out.on('finish', resolve);
    out.on('error', reject);
    pack.on('error', reject);
  });
  pack.pipe(out);
  for (const e of entries) {
    const type = e.type ?? (e.name.endsWith('/') ? 'directory' : 'file');
    const header: Partial<tar.Header> & { name: string } = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o40755 : 0o100644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date((e.mtime ?? 1_600_000_000) * 1000),
      ...(e.linkname === undefined ? {} : { linkname: e.linkname }),
      ...(e.devmajor === undefined ? {} : { devmajor: e.devmajor, devminor: e.devminor ?? 0 }),
    };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, Buffer.from(e.data ?? ''), cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await done;
  return out.buffer;
}

/** One path of a {@link snapshot}. */
export interface SnapEntry {
  path: string;
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtime?: number;
  size?: number;
  content?: string;
  link?: string;
  rdev?: number;
  xattrs?: Record<string, string>;
  hardlinkOf?: string;
}

function typeOf(st: Stats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'other';
}

/**
 * Everything a layer preserves about a tree, path by path (the root itself left out):
 * type, mode, owner, mtime in whole seconds (directories' too unless `dirMtimes` is false),
 * content hash, link target, device number, xattrs (host-specific ones left out) and which
 * paths are hardlinks of an earlier one.
 */
export function snapshot(root: string, options: { dirMtimes?: boolean; mtimes?: boolean } = {}): SnapEntry[] {
  const out: SnapEntry[] = [];
  const inodes = new Map<string, string>();
  const n = native();
  const walk = (rel: string): void => {
    const names = readdirSync(rel === '' ? root : join(root, rel)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const name of names) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const abs = join(root, path);
      const st = lstatSync(abs);
      const e: SnapEntry = { path, type: typeOf(st), mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
      if (options.mtimes !== false && (!st.isDirectory() || options.dirMtimes !== false)) e.mtime = Math.floor(st.mtimeMs / 1000);
      if (!st.isDirectory() && st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        const first = inodes.get(key);
        if (first) e.hardlinkOf = first;
        else inodes.set(key, path);
      }
      if (st.isFile()) {
        e.size = st.size;
        e.content = createHash('sha256').update(readFileSync(abs)).digest('hex').slice(0, 16);
      }
      if (st.isSymbolicLink()) e.link = readlinkSync(abs);
      if (st.isCharacterDevice() || st.isBlockDevice()) e.rdev = st.rdev;
      const names2 = n.llistxattr(abs).filter((x) => !x.startsWith('trusted.overlay.') && x !== 'security.selinux').sort();
      if (names2.length > 0) {
        e.xattrs = {};
        for (const x of names2) e.xattrs[x] = (n.lgetxattr(abs, x) ?? Buffer.alloc(0)).toString('hex');
      }
      out.push(e);
      if (st.isDirectory()) walk(path);
    }
  };
  walk('');
  return out;
}

/**
 * A tree with one of everything a layer holds: directories with odd modes and owners,
 * set-id and sticky bits, xattrs (binary values too), hardlinks, symlinks (relative,
 * absolute, dangling, long), devices, a fifo, a socket, long and non-ASCII names, an empty
 * file and a file big enough to be streamed in several chunks. Needs root.
 */
export function buildFixture(root: string, options: { bigFile?: number } = {}): void {
  const n = native();
  const T = 1_500_000_000;
  const dirs: Array<[string, number, number, number, number]> = [
    ['etc', 0o755, 0, 0, T + 1],
    ['etc/ssl', 0o700, 0, 0, T + 2],
    ['home', 0o755, 0, 0, T + 3],
    ['home/user', 0o750, 1000, 1000, T + 4],
    ['tmp', 0o1777, 0, 0, T + 5],
    ['srv', 0o2775, 0, 50, T + 6],
    ['dev', 0o755, 0, 0, T + 7],
    ['a', 0o755, 0, 0, T + 8],
    ['a-b', 0o755, 0, 0, T + 9],
    ['a/b', 0o755, 0, 0, T + 10],
    ['empty', 0o555, 0, 0, T + 11],
  ];
  for (const [d, mode] of dirs) {
    mkdirSync(join(root, d));
    chmodSync(join(root, d), mode);
  }
  const files: Array<[string, string | Buffer, number, number, number]> = [
    ['etc/hosts', '127.0.0.1 localhost\n', 0o644, 0, 0],
    ['etc/shadow', 'root:*:1::::::\n', 0o640, 0, 42],
    ['etc/ssl/key.pem', 'secret\n', 0o600, 0, 0],
    ['home/user/.profile', 'export PS1=x\n', 0o644, 1000, 1000],
    ['home/user/nobody', 'n', 0o644, 65534, 65534],
    ['home/user/bigid', 'b', 0o644, 3_000_000, 3_000_001],
    ['srv/suid', '#!/bin/sh\n', 0o4755, 0, 0],
    ['srv/sgid', '#!/bin/sh\n', 0o2755, 0, 50],
    ['srv/none', '', 0o000, 0, 0],
    ['a/b/c.txt', 'c', 0o644, 0, 0],
    ['a-b/d.txt', 'd', 0o644, 0, 0],
    ['a/z', 'z', 0o644, 0, 0],
    ['héllo wörld ✓.txt', 'unicode\n', 0o644, 0, 0],
    [`long-${'n'.repeat(120)}`, 'long name\n', 0o644, 0, 0],
  ];
  const deep = `${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(60)}/${'g'.repeat(60)}/${'h'.repeat(60)}`;
  mkdirSync(join(root, deep), { recursive: true });
  files.push([`${deep}/${'i'.repeat(90)}.txt`, 'deep\n', 0o644, 0, 0]);
  const big = options.bigFile ?? 3 * 1024 * 1024 + 123;
  const bigData = Buffer.alloc(big);
  for (let i = 0; i < big; i += 4) bigData.writeUInt32LE((i * 2654435761) >>> 0, Math.min(i, big - 4));
  files.push(['srv/big.bin', bigData, 0o644, 0, 0]);
  for (const [f, data, mode, uid, gid] of files) {
    writeFileSync(join(root, f), data);
    lchownSync(join(root, f), uid, gid);
    chmodSync(join(root, f), mode);
  }
  for (const [d, , uid, gid] of dirs) lchownSync(join(root, d), uid, gid);
  linkSync(join(root, 'etc/hosts'), join(root, 'a/hosts-link'));
  linkSync(join(root, 'etc/hosts'), join(root, 'srv/hosts-link2'));
  symlinkSync('../etc/hosts', join(root, 'a/rel-link'));
  symlinkSync('/etc/passwd', join(root, 'a/abs-link'));
  symlinkSync('does/not/exist', join(root, 'a/dangling'));
  symlinkSync(`/${'t'.repeat(150)}/target`, join(root, 'a/long-link'));
  lchownSync(join(root, 'a/rel-link'), 1000, 1000);
  n.mknod(join(root, 'dev/null'), 0o020666, 1, 3);
  chmodSync(join(root, 'dev/null'), 0o666);
  n.mknod(join(root, 'dev/loop9'), 0o060660, 7, 9);
  n.mknod(join(root, 'dev/fifo'), 0o010644, 0, 0);
  n.lsetxattr(join(root, 'etc/hosts'), 'user.comment', Buffer.from('hello'));
  n.lsetxattr(join(root, 'etc/hosts'), 'user.binary', Buffer.from([0xff, 0x00, 0x80, 0x0a, 0x3d]));
  n.lsetxattr(join(root, 'etc'), 'user.dir', Buffer.from('d'));
  n.lsetxattr(join(root, 'srv/suid'), 'trusted.nacelle', Buffer.from('t'));
  // a socket, which a layer leaves out
  execFileSync('python3', ['-c', `import socket; s=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(join(root, 'dev/sock'))})`]);
  // mtimes last, deepest first
  const all: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel))) {
      const p = rel === '' ? name : `${rel}/${name}`;
      all.push(p);
      if (lstatSync(join(root, p)).isDirectory()) walk(p);
    }
  };
  walk('');
  all.sort((x, y) => y.split('/').length - x.split('/').length);
  let t = T + 100;
  for (const p of all) lutimesSync(join(root, p), t, t++);
}
