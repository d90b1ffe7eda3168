/**
 * Mounts in the calling process's own mount namespace, through the addon
 * (never the `mount` program). The calls run on the libuv pool.
 * @module
 */
import { fromNativeError, InvalidArgumentError } from '../errors';
import { native } from '../native';

/** A mount(2) flag by name: `bind` is MS_BIND, `rec` MS_REC, and so on. */
export type MountFlag =
  | 'rdonly'
  | 'nosuid'
  | 'nodev'
  | 'noexec'
  | 'synchronous'
  | 'remount'
  | 'dirsync'
  | 'noatime'
  | 'nodiratime'
  | 'bind'
  | 'move'
  | 'rec'
  | 'silent'
  | 'unbindable'
  | 'private'
  | 'slave'
  | 'shared'
  | 'relatime'
  | 'strictatime';

const FLAG_CONSTANT: Record<MountFlag, keyof ReturnType<typeof native>['constants']> = {
  rdonly: 'MS_RDONLY',
  nosuid: 'MS_NOSUID',
  nodev: 'MS_NODEV',
  noexec: 'MS_NOEXEC',
  synchronous: 'MS_SYNCHRONOUS',
  remount: 'MS_REMOUNT',
  dirsync: 'MS_DIRSYNC',
  noatime: 'MS_NOATIME',
  nodiratime: 'MS_NODIRATIME',
  bind: 'MS_BIND',
  move: 'MS_MOVE',
  rec: 'MS_REC',
  silent: 'MS_SILENT',
  unbindable: 'MS_UNBINDABLE',
  private: 'MS_PRIVATE',
  slave: 'MS_SLAVE',
  shared: 'MS_SHARED',
  relatime: 'MS_RELATIME',
  strictatime: 'MS_STRICTATIME',
};

/**
 * Turns flag names into the mount(2) bit mask. A number passes through
 * unchanged, so callers can hand raw bits to the kernel (and get its EINVAL).
 */
export function mountFlags(flags: readonly MountFlag[] | number | undefined): number {
  if (flags === undefined) return 0;
  if (typeof flags === 'number') return flags;
  const c = native().constants;
  let bits = 0;
  for (const name of flags) {
    const key = FLAG_CONSTANT[name];
    if (!key) throw new InvalidArgumentError(`unknown mount flag '${String(name)}' (known: ${Object.keys(FLAG_CONSTANT).join(', ')})`);
    bits |= c[key];
  }
  return bits;
}

/** What to mount where: the arguments of mount(2). */
export interface MountOptions {
  /** Device, directory (for `bind`), or a label for virtual filesystems. */
  source?: string;
  /** Mount point; must exist. */
  target: string;
  /** Filesystem type: `tmpfs`, `overlay`, `proc`, …; omit for bind and propagation changes. */
  fstype?: string;
  /** Flag names or raw MS_* bits. */
  flags?: readonly MountFlag[] | number;
  /** Filesystem-specific options, e.g. `size=1m` or overlay's `lowerdir=…`. */
  data?: string;
}

/**
 * mount(2) in this process's mount namespace.
 * @throws {@link SystemCallError} with the errno name as `code` (`ENOENT` for a missing mount point)
 */
export async function mount(options: MountOptions): Promise<void> {
  try {
    await native().mount(options.source ?? null, options.target, options.fstype ?? null, mountFlags(options.flags), options.data ?? null);
  } catch (err) {
    throw fromNativeError(err);
  }
}

/** How to unmount. */
export interface UmountOptions {
  /** MNT_DETACH: lazy unmount, succeeds while the mount is busy. */
  detach?: boolean;
  /** MNT_FORCE. */
  force?: boolean;
  /** Raw umount2 flags, ORed with the above (invalid bits give EINVAL). */
  flags?: number;
}

/**
 * umount2(2) in this process's mount namespace.
 * @throws {@link SystemCallError} (`EINVAL` when the target is not a mount point or the flags are bad)
 */
export async function umount(target: string, options: UmountOptions = {}): Promise<void> {
  const c = native().constants;
  const flags = (options.flags ?? 0) | (options.detach ? c.MNT_DETACH : 0) | (options.force ? c.MNT_FORCE : 0);
  try {
    await native().umount(target, flags);
  } catch (err) {
    throw fromNativeError(err);
  }
}

/**
 * pivot_root(2) for the calling process. Rarely right in a Node process (it
 * changes the root of every thread); containers pivot inside their own child.
 */
export function pivotRoot(newRoot: string, putOld: string): void {
  try {
    native().pivotRoot(newRoot, putOld);
  } catch (err) {
    throw fromNativeError(err);
  }
}
