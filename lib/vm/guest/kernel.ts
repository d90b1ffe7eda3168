/**
 * Finding a guest kernel: the caller's option, `$NACELLE_KERNEL`, the host's
 * own `/boot/vmlinuz-$(uname -r)`, or a Debian cloud kernel fetched into a
 * cache with {@link fetchDebianCloudKernel} (`apt-get download` + `dpkg-deb
 * -x`). Only x86 bzImages are accepted (the setup header's "HdrS" magic).
 * @module
 */
import { execFile } from 'node:child_process';
import { open, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { homedir, release as osRelease } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../../errors';

const run = promisify(execFile);

/** A kernel to boot and where its modules are. */
export interface KernelInfo {
  /** The bzImage. */
  kernel: string;
  /** `.../lib/modules/<release>`, when the kernel has modules. */
  modulesDir?: string;
  /** The kernel release (`6.1.0-56-cloud-amd64`), read from the bzImage's header. */
  release?: string;
  /** Where it was found. */
  source: 'option' | 'env' | 'host' | 'cache';
}

/** Options of {@link findKernel}. */
export interface FindKernelOptions {
  /** A bzImage path; wins over everything else. */
  kernel?: string;
  /** Its modules directory (`.../lib/modules/<release>`). */
  modulesDir?: string;
  /** The cache to look in last; default {@link defaultKernelCache}. */
  cacheDir?: string;
}

/** The setup header's magic, "HdrS" at 0x202. */
const HDRS_OFFSET = 0x202;
/** The setup header's kernel_version field: a pointer (minus 0x200) to a NUL-terminated string. */
const KERNEL_VERSION_FIELD = 0x20e;

/** The Debian package whose dependency is the current cloud kernel. */
export const DEBIAN_CLOUD_KERNEL_PACKAGE = 'linux-image-cloud-amd64';

/**
 * Where fetched kernels are kept: `$NACELLE_KERNEL_CACHE`, else
 * `/var/cache/nacelle/kernels` for root, else `$XDG_CACHE_HOME/nacelle/kernels`
 * (`~/.cache/nacelle/kernels`).
 */
export function defaultKernelCache(): string {
  const env = process.env.NACELLE_KERNEL_CACHE;
  if (env) return env;
  if (process.geteuid?.() === 0) return '/var/cache/nacelle/kernels';
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'nacelle', 'kernels');
}

/**
 * Checks that `path` is an x86 bzImage and returns its release string
 * (the first word of the header's kernel version), or undefined when the
 * header has none.
 * @throws InvalidArgumentError naming the path when it is not a bzImage
 */
export async function readKernelRelease(path: string): Promise<string | undefined> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`kernel ${path} does not exist`, { cause: err });
    throw new InvalidArgumentError(`kernel ${path} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  try {
    const head = Buffer.alloc(0x400);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (bytesRead < 0x210 || head.toString('latin1', HDRS_OFFSET, HDRS_OFFSET + 4) !== 'HdrS')
      throw new InvalidArgumentError(`${path} is not a kernel: no bzImage header ("HdrS" at 0x202)`);
    const ptr = head.readUInt16LE(KERNEL_VERSION_FIELD);
    if (ptr === 0) return undefined;
    const text = Buffer.alloc(256);
    const got = await fh.read(text, 0, text.length, ptr + 0x200);
    const s = text.subarray(0, got.bytesRead);
    const end = s.indexOf(0);
    const version = s.toString('latin1', 0, end < 0 ? s.length : end);
    return version.split(' ')[0] || undefined;
  } finally {
    await fh.close();
  }
}

async function isDir(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function info(kernel: string, modulesDir: string | undefined, source: KernelInfo['source']): Promise<KernelInfo> {
  const release = await readKernelRelease(kernel);
  if (modulesDir !== undefined && !(await isDir(modulesDir)))
    throw new NotFoundError(`kernel modules directory ${modulesDir} does not exist (for kernel ${kernel})`);
  return { kernel, ...(modulesDir ? { modulesDir } : {}), ...(release ? { release } : {}), source };
}

/** Compares Debian-style kernel releases (`6.1.0-56-cloud-amd64`) numerically, part by part. */
function compareReleases(a: string, b: string): number {
  const pa = a.split(/[.-]/);
  const pb = b.split(/[.-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = Number(x);
    const ny = Number(y);
    const c = Number.isInteger(nx) && Number.isInteger(ny) && x !== '' && y !== '' ? nx - ny : x.localeCompare(y);
    if (c !== 0) return c;
  }
  return 0;
}

/** The newest kernel in a cache made by {@link fetchDebianCloudKernel}, if any. */
export async function cachedKernel(cacheDir = defaultKernelCache()): Promise<KernelInfo | undefined> {
  const names = await readdir(cacheDir).catch(() => [] as string[]);
  const releases = names.filter((n) => !n.startsWith('tmp-')).sort(compareReleases).reverse();
  for (const release of releases) {
    const kernel = join(cacheDir, release, 'boot', `vmlinuz-${release}`);
    const modulesDir = join(cacheDir, release, 'lib', 'modules', release);
    if ((await exists(kernel)) && (await isDir(modulesDir))) return info(kernel, modulesDir, 'cache');
  }
  return undefined;
}

/**
 * Finds a kernel to boot, in this order: `opts.kernel` (+ `opts.modulesDir`),
 * `$NACELLE_KERNEL` (+ `$NACELLE_KERNEL_MODULES`), the host's
 * `/boot/vmlinuz-$(uname -r)` with `/lib/modules/$(uname -r)`, then the cache.
 * @throws InvalidArgumentError when the chosen file is not a bzImage
 * @throws NotFoundError listing what was tried when there is no kernel
 */
export async function findKernel(opts: FindKernelOptions = {}): Promise<KernelInfo> {
  if (opts.kernel) return info(opts.kernel, opts.modulesDir, 'option');
  const env = process.env.NACELLE_KERNEL;
  if (env) return info(env, process.env.NACELLE_KERNEL_MODULES || undefined, 'env');
  const tried: string[] = ['the kernel option', '$NACELLE_KERNEL'];
  const rel = osRelease();
  const hostKernel = `/boot/vmlinuz-${rel}`;
  tried.push(hostKernel);
  if (await exists(hostKernel)) {
    const modulesDir = `/lib/modules/${rel}`;
    try {
      return await info(hostKernel, (await isDir(modulesDir)) ? modulesDir : undefined, 'host');
    } catch (err) {
      // unreadable (e.g. 0600 for non-root) or not a bzImage: fall through to the cache
      tried[tried.length - 1] += ` (${(err as Error).message})`;
    }
  }
  const cacheDir = opts.cacheDir ?? defaultKernelCache();
  tried.push(`the kernel cache ${cacheDir}`);
  const cached = await cachedKernel(cacheDir);
  if (cached) return cached;
  throw new NotFoundError(
    `no guest kernel found; tried ${tried.join(', ')}. Pass { kernel }, set NACELLE_KERNEL=/path/to/bzImage, ` +
      `or fetch Debian's cloud kernel into the cache with fetchDebianCloudKernel()`,
    { code: 'ERR_NO_KERNEL' },
  );
}

async function tool(cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { cwd, maxBuffer: 16 << 20, env: { ...process.env, LC_ALL: 'C' } });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new UnsupportedError(`${cmd} is not installed: fetching a Debian kernel needs apt and dpkg`, { cause: err });
    const detail = (e.stderr ?? '').trim().split('\n').slice(-3).join(' | ');
    throw new NotFoundError(`${cmd} ${args.join(' ')} failed: ${detail || e.message}`, { cause: err, code: 'ERR_KERNEL_FETCH' });
  }
}

/** The versioned package the `linux-image-cloud-amd64` metapackage depends on now. */
async function cloudKernelPackage(): Promise<string> {
  const out = await tool('apt-cache', ['depends', '--no-recommends', '--no-suggests', DEBIAN_CLOUD_KERNEL_PACKAGE]);
  const pkg = /Depends:\s*(linux-image-[^\s<>]+)/.exec(out)?.[1];
  if (!pkg) throw new NotFoundError(`apt-cache depends ${DEBIAN_CLOUD_KERNEL_PACKAGE}: no linux-image dependency in:\n${out}`, { code: 'ERR_KERNEL_FETCH' });
  return pkg;
}

/**
 * Downloads Debian's cloud kernel (the package `linux-image-cloud-amd64`
 * depends on) with `apt-get download` and unpacks it with `dpkg-deb -x` into
 * `<cacheDir>/<release>/` (boot/vmlinuz-<release>, lib/modules/<release>).
 * Idempotent: an already unpacked release is returned as is. The unpack goes
 * to a temporary directory renamed into place, so a reader never sees half a
 * kernel. Runs `apt-get update` once (as root) when the package is unknown.
 */
export async function fetchDebianCloudKernel(cacheDir: string = defaultKernelCache()): Promise<KernelInfo> {
  if (process.arch !== 'x64') throw new UnsupportedError(`fetchDebianCloudKernel: only x86-64 kernels are supported (this is ${process.arch})`);
  let pkg: string;
  try {
    pkg = await cloudKernelPackage();
  } catch (err) {
    if (process.geteuid?.() !== 0) throw err;
    await tool('apt-get', ['update', '-qq']);
    pkg = await cloudKernelPackage();
  }
  const release = pkg.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
  const final = join(cacheDir, release);
  const kernel = join(final, 'boot', `vmlinuz-${release}`);
  const modulesDir = join(final, 'lib', 'modules', release);
  if ((await exists(kernel)) && (await isDir(modulesDir))) return info(kernel, modulesDir, 'cache');
  await mkdir(cacheDir, { recursive: true });
  const tmp = join(cacheDir, `tmp-${process.pid}-${Date.now()}`);
  try {
    await mkdir(join(tmp, 'deb'), { recursive: true });
    await tool('apt-get', ['download', '-qq', pkg], join(tmp, 'deb'));
    const debs = (await readdir(join(tmp, 'deb'))).filter((n) => n.endsWith('.deb'));
    const deb = debs[0];
    if (!deb) throw new NotFoundError(`apt-get download ${pkg} left no .deb in ${join(tmp, 'deb')}`, { code: 'ERR_KERNEL_FETCH' });
    await tool('dpkg-deb', ['-x', join(tmp, 'deb', deb), join(tmp, 'root')]);
    if (!(await exists(join(tmp, 'root', 'boot', `vmlinuz-${release}`))))
      throw new NotFoundError(`${deb} has no boot/vmlinuz-${release}`, { code: 'ERR_KERNEL_FETCH' });
    try {
      await rename(join(tmp, 'root'), final);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err; // someone else finished first
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return info(kernel, modulesDir, 'cache');
}
