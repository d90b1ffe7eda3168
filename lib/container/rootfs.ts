/**
 * The container's root filesystem, as the list of operations the spawned
 * child runs in its own mount namespace before pivot_root: overlayfs over the
 * image's snapshots, then /proc, /dev (tmpfs with the OCI default devices),
 * /dev/pts, /dev/shm, /dev/mqueue, /sys, the managed /etc files, volumes,
 * tmpfs mounts, masked and read-only paths. Every mount lives and dies with
 * the container's mount namespace: nothing is mounted on the host.
 * @module
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { InvalidArgumentError } from '../errors';
import type { MountFlag } from '../host/mount';
import type { RuntimeMount, RuntimeSpec } from '../oci/runtime-spec';
import type { SpawnMountOperation } from '../process/spawn';

/** The OCI default devices (runtime-spec "Default Devices"). */
export const DEFAULT_DEVICES = [
  { path: '/dev/null', major: 1, minor: 3 },
  { path: '/dev/zero', major: 1, minor: 5 },
  { path: '/dev/full', major: 1, minor: 7 },
  { path: '/dev/random', major: 1, minor: 8 },
  { path: '/dev/urandom', major: 1, minor: 9 },
  { path: '/dev/tty', major: 5, minor: 0 },
];

const FLAG_OPTIONS: Record<string, MountFlag> = {
  ro: 'rdonly',
  nosuid: 'nosuid',
  nodev: 'nodev',
  noexec: 'noexec',
  sync: 'synchronous',
  dirsync: 'dirsync',
  noatime: 'noatime',
  nodiratime: 'nodiratime',
  relatime: 'relatime',
  strictatime: 'strictatime',
};
const IGNORED_OPTIONS = new Set(['rw', 'suid', 'dev', 'exec', 'async', 'atime', 'diratime', 'rprivate', 'private', 'rslave', 'slave', 'rshared', 'shared']);

/** Splits mount(8)-style options into flags and filesystem data. */
export function splitMountOptions(options: readonly string[]): { flags: MountFlag[]; data: string[]; bind: boolean; recursive: boolean; readonly: boolean } {
  const flags: MountFlag[] = [];
  const data: string[] = [];
  let bind = false;
  let recursive = false;
  for (const o of options) {
    if (o === 'bind' || o === 'rbind') {
      bind = true;
      recursive ||= o === 'rbind';
    } else if (FLAG_OPTIONS[o]) flags.push(FLAG_OPTIONS[o]);
    else if (!IGNORED_OPTIONS.has(o)) data.push(o);
  }
  return { flags, data, bind, recursive, readonly: flags.includes('rdonly') };
}

/** Host paths the rootfs is assembled from. */
export interface RootfsPaths {
  /** Mount point of the container's root (a directory in its state dir). */
  rootfs: string;
  /** Overlay lowerdirs, top first (the image's snapshots and the init layer). */
  lowerDirs: readonly string[];
  /** The writable layer. */
  upper: string;
  /** overlayfs work dir (same filesystem as upper). */
  work: string;
}

/**
 * The init layer: empty mount points and files every container needs, kept
 * as a read-only lowerdir (as Docker's "-init" layer) so creating them never
 * shows up in the container's diff.
 */
export async function ensureInitLayer(dir: string): Promise<string> {
  const fs = join(dir, 'fs');
  for (const d of ['proc', 'sys', 'dev', 'dev/pts', 'dev/shm', 'dev/mqueue', 'etc']) await mkdir(join(fs, d), { recursive: true, mode: 0o755 });
  for (const f of ['etc/hosts', 'etc/hostname', 'etc/resolv.conf']) await writeFile(join(fs, f), '', { flag: 'a', mode: 0o644 });
  return fs;
}

function inRoot(rootfs: string, path: string): string {
  const normal = posix.normalize(path);
  if (!posix.isAbsolute(normal) || normal.split('/').includes('..')) throw new InvalidArgumentError(`container path '${path}' must be absolute and stay inside the container`);
  return normal === '/' ? rootfs : join(rootfs, normal);
}

/** mkdir -p of a container path, as child operations. */
function mkdirs(rootfs: string, path: string): SpawnMountOperation[] {
  const ops: SpawnMountOperation[] = [];
  let current = '';
  for (const part of posix.normalize(path).split('/').filter(Boolean)) {
    current += `/${part}`;
    ops.push({ kind: 'mkdir', target: join(rootfs, current), mode: 0o755 });
  }
  return ops;
}

/** How {@link rootfsOperations} learns about host paths. */
export interface RootfsHostView {
  /** Whether the container has a terminal (adds /dev/console). */
  tty: boolean;
  /** Whether the container has its own user namespace (devices are bind-mounted, not made). */
  userns: boolean;
  /** Whether a bind source is a directory (else a file target is created). */
  isDirectorySource: (path: string) => boolean;
  /** What a path like /proc/kcore is on the host. */
  hostPathKind: (path: string) => 'file' | 'dir' | 'missing';
}

/** The operations that build the rootfs of `spec` at `paths.rootfs`. */
export function rootfsOperations(spec: RuntimeSpec, paths: RootfsPaths, options: RootfsHostView): SpawnMountOperation[] {
  const { rootfs } = paths;
  const ops: SpawnMountOperation[] = [];
  const lower = paths.lowerDirs.join(':');
  const overlayData = `lowerdir=${lower},upperdir=${paths.upper},workdir=${paths.work}`;
  if (overlayData.length > 4000) {
    throw new InvalidArgumentError(`the image has too many layers for one overlay mount (${paths.lowerDirs.length}); the mount options would exceed a page`);
  }
  ops.push({ kind: 'mount', source: 'overlay', target: rootfs, fstype: 'overlay', data: overlayData });

  const devTarget = inRoot(rootfs, '/dev');
  for (const m of spec.mounts ?? []) {
    const target = inRoot(rootfs, m.destination);
    ops.push(...mountOps(m, target, rootfs, options.isDirectorySource));
    if (target === devTarget) ops.push(...deviceOps(rootfs, options));
  }

  for (const path of spec.linux?.maskedPaths ?? []) {
    const target = inRoot(rootfs, path);
    // /dev/null over files, an empty read-only tmpfs over directories. The
    // container's /proc and /sys have the host's shape, so the host tells which.
    const kind = options.hostPathKind(path);
    if (kind === 'missing') continue;
    if (kind === 'dir') ops.push({ kind: 'mount', source: 'tmpfs', target, fstype: 'tmpfs', flags: ['rdonly'], optional: true });
    else ops.push({ kind: 'mount', source: join(rootfs, 'dev/null'), target, flags: ['bind'], optional: true });
  }
  for (const path of spec.linux?.readonlyPaths ?? []) {
    const target = inRoot(rootfs, path);
    ops.push({ kind: 'mount', source: target, target, flags: ['bind', 'rec'], optional: true });
    ops.push({ kind: 'mount', target, flags: ['bind', 'remount', 'rdonly', 'nosuid', 'nodev', 'noexec'], optional: true });
  }
  if (spec.root?.readonly) ops.push({ kind: 'mount', target: rootfs, flags: ['bind', 'remount', 'rdonly'] });
  const cwd = spec.process?.cwd ?? '/';
  if (cwd !== '/' && !spec.root?.readonly) ops.push(...mkdirs(rootfs, cwd));
  return ops;
}

function mountOps(m: RuntimeMount, target: string, rootfs: string, isDirectorySource: (path: string) => boolean): SpawnMountOperation[] {
  const opts = splitMountOptions(m.options ?? []);
  const ops: SpawnMountOperation[] = [];
  if (m.type === 'bind' || opts.bind) {
    const source = m.source ?? '';
    if (isDirectorySource(source)) ops.push(...mkdirs(rootfs, target.slice(rootfs.length) || '/'));
    else {
      ops.push(...mkdirs(rootfs, posix.dirname(target.slice(rootfs.length)) || '/'));
      ops.push({ kind: 'file', target });
    }
    ops.push({ kind: 'mount', source, target, flags: opts.recursive ? ['bind', 'rec'] : ['bind'] });
    const extra = opts.flags.filter((f) => f !== 'rdonly');
    if (opts.readonly || extra.length) {
      ops.push({ kind: 'mount', target, flags: ['bind', 'remount', ...(opts.readonly ? (['rdonly'] as MountFlag[]) : []), ...extra] });
    }
    return ops;
  }
  ops.push(...mkdirs(rootfs, target.slice(rootfs.length) || '/'));
  const mount: SpawnMountOperation = { kind: 'mount', source: m.source ?? m.type ?? 'none', target, fstype: m.type ?? 'none', flags: opts.flags };
  if (opts.data.length) mount.data = opts.data.join(',');
  ops.push(mount);
  return ops;
}

function deviceOps(rootfs: string, options: { tty: boolean; userns: boolean }): SpawnMountOperation[] {
  const ops: SpawnMountOperation[] = [];
  for (const d of DEFAULT_DEVICES) {
    const target = join(rootfs, d.path);
    if (options.userns) {
      // mknod is not allowed in a user namespace: bind the host's device instead.
      ops.push({ kind: 'file', target, mode: 0o666 });
      ops.push({ kind: 'mount', source: d.path, target, flags: ['bind'] });
    } else {
      ops.push({ kind: 'mknod', target, type: 'char', major: d.major, minor: d.minor, mode: 0o666 });
      ops.push({ kind: 'chmod', target, mode: 0o666 }); // mknod honours the umask
    }
  }
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/fd'), linkTo: '/proc/self/fd' });
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/stdin'), linkTo: '/proc/self/fd/0' });
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/stdout'), linkTo: '/proc/self/fd/1' });
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/stderr'), linkTo: '/proc/self/fd/2' });
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/ptmx'), linkTo: 'pts/ptmx' });
  ops.push({ kind: 'symlink', target: join(rootfs, 'dev/core'), linkTo: '/proc/kcore' });
  for (const d of ['pts', 'shm', 'mqueue']) ops.push({ kind: 'mkdir', target: join(rootfs, 'dev', d), mode: 0o755 });
  if (options.tty) ops.push({ kind: 'file', target: join(rootfs, 'dev/console'), mode: 0o620 });
  return ops;
}
