/**
 * The guest's initramfs: a gzip-compressed cpio newc archive holding the
 * image's root filesystem, the kernel modules the guest needs, the static
 * guest init as `/init` and its config at `/.nacelle/config`.
 *
 * It is two archives back to back, which the kernel unpacks in order: the
 * rootfs + modules part depends only on the image and the kernel, so it can be
 * cached (pass `cache`) and reused by every VM of that image; the per-run part
 * (init, config, /dev/console) is a few hundred KiB.
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rename, rm, stat } from 'node:fs/promises';
import { arch } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGzip } from 'node:zlib';
import { InvalidArgumentError, NotFoundError } from '../../errors';
import { resolveUser } from '../../container/spec';
import { splitRdev } from '../../image/tar/common';
import { CPIO_TYPE, cpioEntry, cpioPadding, cpioTrailer, encodeCpioHeader } from './cpio';
import type { KernelInfo } from './kernel';
import { DEFAULT_GUEST_MODULES, type ResolvedModule, readModuleFile, resolveModules } from './modules';
import { layersTopFirst, walkRootfs } from './rootfs';

/** What the guest init runs, and as whom (the host fills it from the image and the run options). */
export interface GuestConfig {
  /** The command and its arguments; argv[0] is searched in the env's PATH when it has no slash. */
  argv: string[];
  /** The exact environment, `NAME=VALUE` entries. */
  env: string[];
  /** Working directory inside the guest. */
  workdir: string;
  /** User id the command runs as. */
  uid: number;
  /** Group id the command runs as. */
  gid: number;
  /** Supplementary group ids. */
  groups?: number[];
  /** The guest's hostname. */
  hostname: string;
  /** Forward the host's stdin (STDIN frames) to the command; otherwise it reads /dev/null. */
  stdin?: boolean;
}

/** Settings of the guest init that the host's boot setup decides (not the workload). */
export interface GuestBootConfig {
  /** Paths inside the initramfs of modules to load, in order. */
  modules?: string[];
  /** The channel device; the init defaults to /dev/hvc0. */
  channel?: string;
  /** A block device to mount as the root (the disk path), e.g. /dev/vda. */
  root?: string;
  /** Its filesystem type, e.g. erofs. */
  rootfstype?: string;
}

/** The result of {@link buildInitramfs}. */
export interface InitramfsResult {
  /** The initramfs file (`opts.out`). */
  path: string;
  /** Its size in bytes. */
  bytes: number;
  /** Names of the modules it loads, in load order. */
  modules: string[];
  /** Bytes of the rootfs + modules part (shared between runs when cached). */
  rootfsBytes: number;
  /** Bytes of the per-run part (init + config). */
  runBytes: number;
  /** Whether the rootfs part came from the cache. */
  cached: boolean;
  /** The cached rootfs archive, when `cache` was given. */
  cachePath?: string;
}

/** Options of {@link buildInitramfs}. */
export interface BuildInitramfsOptions {
  /** The image's root filesystem: one unpacked directory, or overlay lowerdirs with the top layer LAST. */
  rootfs: string | readonly string[];
  /** The kernel the initramfs is for (modules are taken from its modulesDir). */
  kernel: KernelInfo;
  /** What to run. */
  config: GuestConfig;
  /** Where to write the initramfs. */
  out: string;
  /** Module names to load when not built in; default {@link DEFAULT_GUEST_MODULES}. */
  modules?: readonly string[];
  /** Channel device for the init (default /dev/hvc0). */
  channel?: string;
  /**
   * Keep the rootfs + modules archive in `dir` under a name derived from `key`
   * (e.g. the image's manifest digest) and the kernel release, and reuse it.
   */
  cache?: {
    /** The cache directory (one archive per key, kernel release and module set). */
    dir: string;
    /** What identifies the rootfs, e.g. the image's manifest digest; it starts the file's name. */
    key: string;
  };
  /** The guest init binary; default {@link guestInitPath}. */
  init?: string;
}

/** The directory holding package.json: the repository or the installed package. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'nacelle') return dir;
      } catch {
        // not ours
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new NotFoundError(`cannot find nacelle's package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/**
 * The static guest init binary: `$NACELLE_GUEST_INIT`, else
 * `prebuilds/guest/linux-<arch>/nacelle-init` (the published package), else
 * `build/guest/nacelle-init` (a checkout, made by `npm run build:guest`).
 * @throws NotFoundError naming the places looked at and the build command
 */
export function guestInitPath(): string {
  const env = process.env.NACELLE_GUEST_INIT;
  if (env) {
    if (!existsSync(env)) throw new NotFoundError(`NACELLE_GUEST_INIT=${env}: no such file`, { code: 'ERR_NO_GUEST_INIT' });
    return env;
  }
  const root = packageRoot();
  const candidates = [join(root, 'prebuilds', 'guest', `linux-${arch()}`, 'nacelle-init'), join(root, 'build', 'guest', 'nacelle-init')];
  for (const c of candidates) if (existsSync(c)) return c;
  throw new NotFoundError(
    `the guest init is not built (looked for ${candidates.join(' and ')}); ` +
      `build it with \`node ${join(root, 'binding', 'guest', 'build.mjs')}\` (npm run build:guest; needs gcc and static glibc)`,
    { code: 'ERR_NO_GUEST_INIT' },
  );
}

/** A user as the guest init sets it. */
export interface GuestUser {
  /** The uid. */
  uid: number;
  /** The primary gid. */
  gid: number;
  /** Supplementary gids. */
  groups: number[];
  /** The home directory from /etc/passwd, when the user is listed there. */
  home?: string;
}

/**
 * The uid, gid and supplementary groups of a Docker-style `user` (`name`,
 * `uid`, `uid:gid`, `name:group`) in the image's /etc/passwd and /etc/group.
 * @param rootfs - one unpacked directory, or lowerdirs with the top layer last
 */
export async function resolveGuestUser(
  rootfs: string | readonly string[],
  user?: string,
): Promise<GuestUser> {
  const r = await resolveUser(user, layersTopFirst(rootfs));
  return { uid: r.uid, gid: r.gid, groups: r.additionalGids, ...(r.home ? { home: r.home } : {}) };
}

function checkValue(what: string, v: string): string {
  if (v.includes('\0')) throw new InvalidArgumentError(`guest config: ${what} holds a NUL byte: ${JSON.stringify(v)}`);
  return v;
}

function checkId(what: string, n: number): number {
  if (!Number.isInteger(n) || n < 0 || n > 0xfffffffe) throw new InvalidArgumentError(`guest config: ${what} ${n} is not a valid id`);
  return n;
}

/** Encodes the init's config: `key=value\0` records (see binding/guest/protocol.h). */
export function encodeGuestConfig(config: GuestConfig, boot: GuestBootConfig = {}): Buffer {
  if (!Array.isArray(config.argv) || config.argv.length === 0 || config.argv[0] === '')
    throw new InvalidArgumentError('guest config: no command (argv is empty)');
  const recs: string[] = [];
  for (const a of config.argv) recs.push(`arg=${checkValue('an argument', a)}`);
  for (const e of config.env) {
    if (e.indexOf('=') <= 0) throw new InvalidArgumentError(`guest config: env entry ${JSON.stringify(e)} is not NAME=VALUE`);
    recs.push(`env=${checkValue('an env entry', e)}`);
  }
  if (!config.workdir.startsWith('/')) throw new InvalidArgumentError(`guest config: workdir ${config.workdir} is not absolute`);
  recs.push(`workdir=${checkValue('workdir', config.workdir)}`);
  recs.push(`uid=${checkId('uid', config.uid)}`, `gid=${checkId('gid', config.gid)}`);
  for (const g of config.groups ?? []) recs.push(`group=${checkId('group', g)}`);
  recs.push(`hostname=${checkValue('hostname', config.hostname)}`);
  if (config.stdin) recs.push('stdin=1');
  for (const m of boot.modules ?? []) recs.push(`module=${checkValue('module path', m)}`);
  if (boot.channel) recs.push(`channel=${checkValue('channel', boot.channel)}`);
  if (boot.root) recs.push(`root=${checkValue('root', boot.root)}`);
  if (boot.rootfstype) recs.push(`rootfstype=${checkValue('rootfstype', boot.rootfstype)}`);
  return Buffer.from(recs.map((r) => `${r}\0`).join(''), 'utf8');
}

/** Inode numbers for one archive; hard-linked files of the rootfs share one. */
class Inodes {
  #next = 1;
  #linked = new Map<string, number>();
  /** A fresh inode number. */
  next(): number {
    return this.#next++;
  }
  /** The archive inode of a host file with several links, and whether it was seen before. */
  linked(dev: number, ino: number): { ino: number; seen: boolean } {
    const key = `${dev}:${ino}`;
    const have = this.#linked.get(key);
    if (have !== undefined) return { ino: have, seen: true };
    const fresh = this.next();
    this.#linked.set(key, fresh);
    return { ino: fresh, seen: false };
  }
}

/** Streams one file's bytes, failing if it changed size since it was stat'ed. */
async function* fileData(path: string, size: number): AsyncGenerator<Buffer> {
  let seen = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    const b = chunk as Buffer;
    seen += b.length;
    if (seen > size) break;
    yield b;
  }
  if (seen !== size) throw new InvalidArgumentError(`rootfs: ${path} changed size while being archived (${size} -> ${seen} bytes)`);
}

/** The cpio entries of the merged rootfs. */
async function* rootfsEntries(rootfs: string | readonly string[], inodes: Inodes): AsyncGenerator<Buffer> {
  for await (const e of walkRootfs(rootfs)) {
    const st = e.stat;
    const base = { name: e.path === '' ? '.' : e.path, uid: st.uid, gid: st.gid, mtime: Math.floor(st.mtimeMs / 1000), ino: inodes.next() };
    if (st.isDirectory()) yield cpioEntry({ ...base, mode: st.mode, nlink: 2 });
    else if (st.isSymbolicLink()) yield cpioEntry({ ...base, mode: st.mode, nlink: 1 }, Buffer.from(e.linkTarget ?? '', 'utf8'));
    else if (st.isFile() && st.nlink > 1) {
      // Hard links (busybox images link every applet to one binary): the first
      // name carries the data; the kernel links each later entry with the same
      // inode and nlink >= 2 to it (init/initramfs.c, maybe_link) without data.
      const link = inodes.linked(st.dev, st.ino);
      if (link.seen) {
        yield cpioEntry({ ...base, ino: link.ino, mode: st.mode, nlink: st.nlink });
      } else {
        yield encodeCpioHeader({ ...base, ino: link.ino, mode: st.mode, nlink: st.nlink, size: st.size });
        yield* fileData(e.source, st.size);
        yield cpioPadding(st.size);
      }
    } else if (st.isFile()) {
      yield encodeCpioHeader({ ...base, mode: st.mode, nlink: 1, size: st.size });
      yield* fileData(e.source, st.size);
      yield cpioPadding(st.size);
    } else if (st.isCharacterDevice() || st.isBlockDevice() || st.isFIFO()) {
      const { major, minor } = splitRdev(st.rdev);
      yield cpioEntry({ ...base, mode: st.mode, nlink: 1, rdevMajor: major, rdevMinor: minor });
    }
  }
}

const NACELLE_DIR = '.nacelle';
const MODULES_DIR = `${NACELLE_DIR}/modules`;

/** In-guest path of a module file. */
function guestModulePath(m: ResolvedModule): string {
  return `/${MODULES_DIR}/${m.name}.ko`;
}

async function* moduleEntries(modules: readonly ResolvedModule[], inodes: Inodes): AsyncGenerator<Buffer> {
  const dir = { uid: 0, gid: 0, mtime: 0, nlink: 2, mode: CPIO_TYPE.directory | 0o755 };
  yield cpioEntry({ ...dir, name: NACELLE_DIR, ino: inodes.next() });
  yield cpioEntry({ ...dir, name: MODULES_DIR, ino: inodes.next() });
  for (const m of modules) {
    const data = await readModuleFile(m.path);
    yield cpioEntry({ name: guestModulePath(m).slice(1), mode: CPIO_TYPE.file | 0o644, uid: 0, gid: 0, mtime: 0, nlink: 1, ino: inodes.next() }, data);
  }
}

/** Writes chunks through gzip to `out` (a temporary name renamed into place); returns the bytes written. */
async function writeGzip(out: string, chunks: AsyncIterable<Buffer>): Promise<number> {
  await mkdir(dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await pipeline(Readable.from(chunks, { objectMode: false }), createGzip({ level: 6 }), createWriteStream(tmp, { mode: 0o644 }));
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return (await stat(out)).size;
}

/**
 * Writes the cacheable part of an initramfs: the merged rootfs plus the
 * modules under /.nacelle/modules, one gzip-compressed newc archive.
 */
export async function writeRootfsArchive(out: string, rootfs: string | readonly string[], modules: readonly ResolvedModule[]): Promise<number> {
  const inodes = new Inodes();
  async function* all(): AsyncGenerator<Buffer> {
    yield* rootfsEntries(rootfs, inodes);
    yield* moduleEntries(modules, inodes);
    yield cpioTrailer();
  }
  return writeGzip(out, all());
}

/** The per-run part: /init, /.nacelle/config, and the directories and /dev/console the init relies on. */
async function* runEntries(init: string, config: Buffer, withModulesDir: boolean): AsyncGenerator<Buffer> {
  let ino = 1;
  const dir = { uid: 0, gid: 0, mtime: 0, nlink: 2, mode: CPIO_TYPE.directory | 0o755 };
  for (const name of ['dev', 'proc', 'sys', NACELLE_DIR]) yield cpioEntry({ ...dir, name, ino: ino++ });
  if (withModulesDir) yield cpioEntry({ ...dir, name: MODULES_DIR, ino: ino++ });
  // the kernel opens /dev/console for init's stdio before devtmpfs is mounted
  yield cpioEntry({ name: 'dev/console', mode: CPIO_TYPE.charDevice | 0o600, uid: 0, gid: 0, mtime: 0, nlink: 1, ino: ino++, rdevMajor: 5, rdevMinor: 1 });
  const initData = readFileSync(init);
  yield cpioEntry({ name: 'init', mode: CPIO_TYPE.file | 0o755, uid: 0, gid: 0, mtime: 0, nlink: 1, ino: ino++ }, initData);
  yield cpioEntry({ name: `${NACELLE_DIR}/config`, mode: CPIO_TYPE.file | 0o644, uid: 0, gid: 0, mtime: 0, nlink: 1, ino: ino++ }, config);
  yield cpioTrailer();
}

/** The modules to put in an initramfs for `kernel` (empty when it has no modules directory). */
export async function guestModules(kernel: KernelInfo, names: readonly string[] = DEFAULT_GUEST_MODULES): Promise<ResolvedModule[]> {
  if (!kernel.modulesDir || names.length === 0) return [];
  return resolveModules({ modulesDir: kernel.modulesDir, names, ...(kernel.release ? { release: kernel.release } : {}) });
}

/**
 * Writes the per-run archive for a boot whose rootfs part is elsewhere (a
 * cached archive, or a disk): init, config, and optionally the modules.
 * @returns its size in bytes
 */
export async function writeRunArchive(
  out: string,
  opts: { config: GuestConfig; boot: GuestBootConfig; init?: string; modules?: readonly ResolvedModule[] },
): Promise<number> {
  const init = opts.init ?? guestInitPath();
  const mods = opts.modules ?? [];
  const cfg = encodeGuestConfig(opts.config, { ...opts.boot, modules: [...(opts.boot.modules ?? []), ...mods.map(guestModulePath)] });
  async function* all(): AsyncGenerator<Buffer> {
    if (mods.length > 0) {
      const inodes = new Inodes();
      for await (const b of moduleEntries(mods, inodes)) yield b;
    }
    // a separate newc archive inside the same gzip member would need a trailer in between; keep one archive
    for await (const b of runEntries(init, cfg, false)) yield b;
  }
  return writeGzip(out, all());
}

async function appendFile(target: string, source: string): Promise<void> {
  await pipeline(createReadStream(source), createWriteStream(target, { flags: 'a' }));
}

/**
 * Builds the initramfs for one run: the image's rootfs (cached per image and
 * kernel when `cache` is given), the modules the kernel needs (dependencies
 * resolved, built-ins skipped, vermagic checked), the guest init and its config.
 */
export async function buildInitramfs(opts: BuildInitramfsOptions): Promise<InitramfsResult> {
  const init = opts.init ?? guestInitPath();
  const config = opts.config;
  const modules = await guestModules(opts.kernel, opts.modules ?? DEFAULT_GUEST_MODULES);
  const cfg = encodeGuestConfig(config, { modules: modules.map(guestModulePath), ...(opts.channel ? { channel: opts.channel } : {}) });
  const layers = layersTopFirst(opts.rootfs);
  await mkdir(dirname(opts.out), { recursive: true });
  const runPart = `${opts.out}.run-${process.pid}`;
  let rootPart: string;
  let cached = false;
  let rootfsBytes: number;
  let cachePath: string | undefined;
  try {
    if (opts.cache) {
      const key = createHash('sha256')
        .update(JSON.stringify({ v: 1, key: opts.cache.key, release: opts.kernel.release ?? opts.kernel.kernel, modules: modules.map((m) => m.name) }))
        .digest('hex');
      // named after the cache key first, so a prune can tell whose it is
      cachePath = join(opts.cache.dir, `${opts.cache.key.replace(/[^A-Za-z0-9_.-]/g, '-')}.${key.slice(0, 16)}.cpio.gz`);
      const st = await stat(cachePath).catch(() => undefined);
      if (st) {
        cached = true;
        rootfsBytes = st.size;
      } else {
        // written aside and renamed: VMs of one image starting together never read half an archive
        await mkdir(opts.cache.dir, { recursive: true });
        const tmp = `${cachePath}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
        try {
          rootfsBytes = await writeRootfsArchive(tmp, [...layers].reverse(), modules);
          await rename(tmp, cachePath);
        } finally {
          await rm(tmp, { force: true });
        }
      }
      rootPart = cachePath;
    } else {
      rootPart = `${opts.out}.rootfs-${process.pid}`;
      rootfsBytes = await writeRootfsArchive(rootPart, [...layers].reverse(), modules);
    }
    const runBytes = await writeGzip(runPart, runEntries(init, cfg, modules.length > 0));
    const tmpOut = `${opts.out}.tmp-${process.pid}`;
    try {
      await copyFile(rootPart, tmpOut);
      await appendFile(tmpOut, runPart);
      await rename(tmpOut, opts.out);
    } catch (err) {
      await rm(tmpOut, { force: true });
      throw err;
    }
    const bytes = (await stat(opts.out)).size;
    return {
      path: opts.out,
      bytes,
      modules: modules.map((m) => m.name),
      rootfsBytes,
      runBytes,
      cached,
      ...(cachePath ? { cachePath } : {}),
    };
  } finally {
    await rm(runPart, { force: true });
    if (!opts.cache) await rm(`${opts.out}.rootfs-${process.pid}`, { force: true });
  }
}
