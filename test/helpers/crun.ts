/**
 * crun as a reference runtime: an OCI bundle equivalent to a nacelle
 * container (nacelle's own config.json, changed only where a bundle must
 * differ), and a runner for it.
 *
 * crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not
 * supported"), so every crun command runs in a private mount namespace where
 * the cgroup2 mount at /sys/fs/cgroup/unified is unmounted, and where each
 * cgroup hierarchy in which this process is not at the root (here: memory, at
 * /process_api/<hash>) has this process's own cgroup bind-mounted over its
 * mount point. A relative cgroupsPath `nacelle-crun/<id>` then lands at
 * `<own cgroup>/nacelle-crun/<id>` in every hierarchy: the same place
 * nacelle puts its `<own cgroup>/nacelle/<id>`.
 */
import { spawn as spawnChild, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmdirSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { describe, it } from 'vitest';
import type { Container } from '../../lib/container/container';
import type { Image } from '../../lib/image/image';
import type { RuntimeSpec } from '../../lib/oci/runtime-spec';
import { describeRoot, missingRoot } from './gate';

/** The crun binary used (`$NACELLE_CRUN` or the first found of the usual places). */
export const CRUN = process.env.NACELLE_CRUN ?? ['/usr/bin/crun', '/usr/local/bin/crun', '/usr/sbin/crun'].find((p) => existsSync(p)) ?? 'crun';

/** Parent of every cgroup made for crun containers, below this process's own cgroup. */
export const CRUN_CGROUP_PARENT = 'nacelle-crun';

/** Why crun cannot be used as a reference here, or null when it can. */
export function missingCrun(): string | null {
  const version = spawnSync(CRUN, ['--version'], { encoding: 'utf8' });
  if (version.error || version.status !== 0) return `needs crun (apt-get install crun): '${CRUN} --version' failed`;
  const unshare = spawnSync('unshare', ['--version'], { encoding: 'utf8' });
  if (unshare.error || unshare.status !== 0) return 'needs unshare(1) from util-linux';
  return null;
}

/** Whether crun can be compared against on this host. */
export function crunAvailable(): boolean {
  return missingCrun() === null;
}

/**
 * A describe() that needs root and crun. Without root it behaves as
 * describeRoot. Without crun it fails under NACELLE_REQUIRE_ROOT=1 (a root CI
 * host installs crun) and is skipped loudly otherwise.
 */
export function describeCrun(name: string, fn: () => void): void {
  const reason = missingRoot() === null ? missingCrun() : null;
  if (reason === null) {
    describeRoot(name, fn);
    return;
  }
  if (process.env.NACELLE_REQUIRE_ROOT === '1') {
    describe(name, () => {
      it(`requires: ${reason}`, () => {
        throw new Error(`${name}: ${reason}, and NACELLE_REQUIRE_ROOT=1 says this host must have it`);
      });
    });
    return;
  }
  console.warn(`[skip] ${name}: ${reason} (set NACELLE_REQUIRE_ROOT=1 to make this a failure)`);
  describe.skip(name, fn);
}

/** One cgroup hierarchy: where it is mounted and this process's cgroup in it. */
interface Hierarchy {
  /** The mount point (`/sys/fs/cgroup/memory`). */
  mountPoint: string;
  /** `cgroup` or `cgroup2`. */
  fstype: string;
  /** The controllers (v1 super options) or `''` for cgroup2. */
  key: string;
  /** This process's cgroup relative to the mount (`/` or `/process_api/<hash>`). */
  own: string;
}

function hierarchies(): Hierarchy[] {
  const own = new Map<string, string>();
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m) own.set(m[1]!, m[2]!);
  }
  const out: Hierarchy[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const before = line.slice(0, sep).split(' ');
    const [fstype, , superOptions = ''] = line.slice(sep + 3).split(' ');
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const root = before[3]!;
    const mountPoint = before[4]!;
    const key = fstype === 'cgroup2' ? '' : superOptions.split(',').filter((o) => o !== 'rw' && o !== 'ro' && !o.startsWith('release_agent') && o !== 'clone_children' && o !== 'noprefix' && !o.startsWith('xattr')).join(',');
    const path = own.get(key);
    if (path === undefined) continue;
    const rel = root === '/' ? path : path === root ? '/' : path.startsWith(`${root}/`) ? path.slice(root.length) : null;
    if (rel === null) continue;
    out.push({ mountPoint, fstype, key, own: rel });
  }
  return out;
}

function isHybrid(hs: readonly Hierarchy[]): boolean {
  return hs.some((h) => h.fstype === 'cgroup') && hs.some((h) => h.fstype === 'cgroup2');
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The shell lines that prepare a private mount namespace for crun: the
 * hybrid cgroup2 mount unmounted, own cgroups bound over their hierarchies.
 */
export function crunCgroupSetup(): string {
  const hs = hierarchies();
  const hybrid = isHybrid(hs);
  const lines: string[] = [];
  for (const h of hs) {
    if (hybrid && h.fstype === 'cgroup2') lines.push(`umount ${shellQuote(h.mountPoint)}`);
    else if (h.own !== '/') lines.push(`mount --bind ${shellQuote(h.mountPoint + h.own)} ${shellQuote(h.mountPoint)}`);
  }
  return lines.join(' && ') || 'true';
}

/** Host directories of a crun container's cgroups, by hierarchy key (`memory`, `pids`, …). */
export function crunCgroupDirs(id: string): Map<string, string> {
  const hs = hierarchies();
  const hybrid = isHybrid(hs);
  const dirs = new Map<string, string>();
  for (const h of hs) {
    if (hybrid && h.fstype === 'cgroup2') continue;
    dirs.set(h.key, join(h.mountPoint, h.own, CRUN_CGROUP_PARENT, id));
  }
  return dirs;
}

/** Removes the (empty) `nacelle-crun` parents crun's containers left (crun removes only its own leaves). */
export function removeCrunCgroupParents(): void {
  for (const dir of crunCgroupDirs('x').values()) {
    const parent = join(dir, '..');
    try {
      rmdirSync(parent);
    } catch {
      // absent, or still in use by a crun container of another test file
    }
  }
}

/** A crun bundle built from a nacelle container. */
export interface CrunBundle {
  /** crun's container id. */
  id: string;
  /** The bundle directory (config.json, etc/, rootfs/ unless shared). */
  dir: string;
  /** crun's state root (`crun --root`). */
  stateRoot: string;
  /** The config.json written. */
  spec: RuntimeSpec;
}

/** Options of {@link crunBundle}. */
export interface CrunBundleOptions {
  /** An already unpacked rootfs to use (else the image is unpacked into `<dir>/rootfs`). */
  rootfs?: string;
  /** crun's state root (default `<dir>/../crun-state`). */
  stateRoot?: string;
  /** A last change to the spec (for example, deleting `linux.seccomp`). */
  edit?: (spec: RuntimeSpec) => void;
}

/**
 * Writes a bundle for crun in `dir` equivalent to `container`: nacelle's
 * config.json with only these changes: `root.path` is a plain unpacked copy
 * of the image (crun does not mount overlays), the managed /etc files are
 * copies inside the bundle, `process.terminal` is false, and `cgroupsPath`
 * is `nacelle-crun/<id>` (see the module comment).
 */
export async function crunBundle(container: Container, image: Image, dir: string, options: CrunBundleOptions = {}): Promise<CrunBundle> {
  const spec = await container.spec();
  const id = `nc-${container.id.slice(0, 12)}-${randomBytes(3).toString('hex')}`;
  await mkdir(join(dir, 'etc'), { recursive: true });
  let rootfs = options.rootfs;
  if (rootfs === undefined) {
    rootfs = join(dir, 'rootfs');
    await image.unpack(rootfs);
  }
  for (const m of spec.mounts ?? []) {
    if (m.type === 'bind' && m.source !== undefined && m.source.startsWith(`${container.dir}/`)) {
      const copy = join(dir, 'etc', basename(m.source));
      await copyFile(m.source, copy);
      m.source = copy;
    }
  }
  spec.root = { ...spec.root, path: rootfs };
  spec.process = { ...spec.process!, terminal: false };
  spec.linux = { ...spec.linux, cgroupsPath: `${CRUN_CGROUP_PARENT}/${id}` };
  options.edit?.(spec);
  await writeFile(join(dir, 'config.json'), JSON.stringify(spec, null, 2));
  return { id, dir, stateRoot: options.stateRoot ?? join(dir, '..', 'crun-state'), spec };
}

/** How a crun run ended, with its output. */
export interface CrunResult {
  /** Container's stdout (and crun's own, which is silent on success). */
  stdout: string;
  /** Container's stderr and crun's error messages. */
  stderr: string;
  /** crun's exit status: the container's exit code, or 128 + n when signal n ended it. */
  exitCode: number | null;
  /** The signal that ended crun itself (only on a timeout). */
  signal: NodeJS.Signals | null;
}

/**
 * Runs `crun <args>` in the prepared mount namespace and collects its output.
 * crun's stdout and stderr are pipes, as nacelle's containers get, not the
 * socketpairs Node's child_process makes: a `cat` sits behind each. The
 * exit status travels through a file, since a pipeline reports its last
 * command's.
 */
export async function crunCommand(stateRoot: string, args: readonly string[], options: { timeoutMs?: number } = {}): Promise<CrunResult> {
  await mkdir(stateRoot, { recursive: true });
  const statusFile = join(stateRoot, `.status-${randomBytes(6).toString('hex')}`);
  const crun = [CRUN, `--root=${stateRoot}`, '--cgroup-manager=cgroupfs', ...args].map(shellQuote).join(' ');
  // fd 3 carries the outer pipe (to `cat` → our stdout) past the inner one
  // (crun's stderr → `cat` → our stderr).
  const script = `${crunCgroupSetup()} || exit 125
{ { ${crun}; echo $? > ${shellQuote(statusFile)}; } 2>&1 1>&3 3>&- | cat >&2 3>&-; } 3>&1 | cat`;
  const result = await new Promise<CrunResult>((resolve, reject) => {
    const child = spawnChild('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (exitCode, signal) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, exitCode, signal });
    });
  });
  try {
    const status = (await readFile(statusFile, 'utf8')).trim();
    if (/^\d+$/.test(status)) result.exitCode = Number(status);
    else result.exitCode = null;
  } catch {
    if (result.exitCode === 0) result.exitCode = null; // crun never finished
  } finally {
    await rm(statusFile, { force: true });
  }
  return result;
}

/** Runs the bundle in the foreground (`crun run`), then makes sure nothing of it is left. */
export async function runCrun(bundle: CrunBundle, options: { timeoutMs?: number } = {}): Promise<CrunResult> {
  try {
    return await crunCommand(bundle.stateRoot, ['run', '-b', bundle.dir, bundle.id], options);
  } finally {
    await deleteCrun(bundle);
  }
}

/** `crun delete -f`: kills and removes the container (and its cgroup) if it still exists. */
export async function deleteCrun(bundle: CrunBundle): Promise<void> {
  if (!existsSync(join(bundle.stateRoot, bundle.id))) return;
  const r = await crunCommand(bundle.stateRoot, ['delete', '-f', bundle.id]);
  if (r.exitCode !== 0 && existsSync(join(bundle.stateRoot, bundle.id))) {
    throw new Error(`crun delete -f ${bundle.id} failed (${r.exitCode}): ${r.stderr}`);
  }
}
