/**
 * Finding the cgroup hierarchies of this host and this process's place in
 * each, from /proc/self/mountinfo and /proc/self/cgroup alone.
 * @module
 */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { UnsupportedError } from '../../errors';

/**
 * How the host mounts cgroups: `v1` (one hierarchy per controller or group of
 * controllers), `v2` (one unified hierarchy holding every controller), or
 * `hybrid` (v1 controller hierarchies plus a cgroup2 mount, usually at
 * /sys/fs/cgroup/unified, that holds few or no controllers).
 */
export type CgroupLayout = 'v1' | 'v2' | 'hybrid';

/** The cgroup hierarchies of the host and where the calling process sits in each. */
export interface CgroupHost {
  /** Which of the three layouts the host uses. */
  layout: CgroupLayout;
  /** Where the cgroup2 hierarchy is mounted; absent on pure v1 hosts. */
  v2Mount?: string;
  /**
   * v1 hierarchies by controller (`memory`, `cpu`, …) or named hierarchy
   * (`name=systemd`), each to its mount point. Co-mounted controllers
   * (`cpu,cpuacct`) map to the same mount point.
   */
  v1: Map<string, string>;
  /**
   * The calling process's own cgroup path in each hierarchy, keyed like
   * {@link CgroupHost.v1} plus `''` for the cgroup2 hierarchy. Paths are
   * relative to the mount point (so `mount + own` is the directory), which
   * is the path /proc/self/cgroup shows whenever the mount exposes the
   * hierarchy's root.
   */
  own: Map<string, string>;
}

interface CgroupMount {
  fstype: 'cgroup' | 'cgroup2';
  root: string;
  mountPoint: string;
  superOptions: string[];
}

/** Undoes the octal escapes (`\040` for a space) mountinfo uses in paths. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

function parseMountinfo(text: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    // id parent major:minor root mount-point options [optional fields...] - fstype source super-options
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const before = line.slice(0, sep).split(' ');
    const after = line.slice(sep + 3).split(' ');
    const fstype = after[0];
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const root = before[3];
    const mountPoint = before[4];
    if (root === undefined || mountPoint === undefined) continue;
    mounts.push({
      fstype,
      root: unescapeMountPath(root),
      mountPoint: unescapeMountPath(mountPoint),
      superOptions: (after[2] ?? '').split(','),
    });
  }
  return mounts;
}

/** `controllers` → own path, from /proc/self/cgroup; `''` is the cgroup2 hierarchy. */
function parseSelfCgroup(text: string): Map<string, string> {
  const own = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    // hierarchy-id:controller-list:path — the path itself may contain ':'.
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const controllers = line.slice(first + 1, second);
    const path = line.slice(second + 1);
    own.set(controllers, path);
  }
  return own;
}

/** `path` relative to a mount's `root`, or null when the mount does not show it. */
function underRoot(path: string, root: string): string | null {
  if (root === '/') return path;
  if (path === root) return '/';
  if (path.startsWith(`${root}/`)) return path.slice(root.length);
  return null;
}

/**
 * Picks, among mounts of one hierarchy, the one that shows the process's own
 * cgroup (preferring the hierarchy root, then the shortest mount point), and
 * returns it with the own path relative to it.
 */
function pickMount(candidates: CgroupMount[], ownPath: string): { mount: CgroupMount; own: string } | null {
  let best: { mount: CgroupMount; own: string } | null = null;
  for (const mount of candidates) {
    const own = underRoot(ownPath, mount.root);
    if (own === null) continue;
    if (
      best === null ||
      (mount.root === '/' && best.mount.root !== '/') ||
      (mount.root === best.mount.root && mount.mountPoint.length < best.mount.mountPoint.length)
    ) {
      best = { mount, own };
    }
  }
  return best;
}

/**
 * Builds a {@link CgroupHost} from the text of /proc/self/mountinfo and
 * /proc/self/cgroup. Pure: exported so every layout can be tested on any host.
 * @throws UnsupportedError when no cgroup hierarchy this process belongs to is mounted
 */
export function parseCgroupHost(mountinfo: string, selfCgroup: string): CgroupHost {
  const mounts = parseMountinfo(mountinfo);
  const ownByList = parseSelfCgroup(selfCgroup);
  const host: CgroupHost = { layout: 'v2', v1: new Map(), own: new Map() };

  const v2Own = ownByList.get('');
  if (v2Own !== undefined) {
    const picked = pickMount(
      mounts.filter((m) => m.fstype === 'cgroup2'),
      v2Own,
    );
    if (picked) {
      host.v2Mount = picked.mount.mountPoint;
      host.own.set('', picked.own);
    }
  }

  let v1Controllers = 0;
  for (const [list, ownPath] of ownByList) {
    if (list === '') continue;
    const keys = list.split(',').filter((k) => k.length > 0);
    if (keys.length === 0) continue;
    // The mount of this hierarchy carries every one of its controllers (and
    // its name=) among its super options.
    const candidates = mounts.filter((m) => m.fstype === 'cgroup' && keys.every((k) => m.superOptions.includes(k)));
    const picked = pickMount(candidates, ownPath);
    if (!picked) continue;
    for (const key of keys) {
      host.v1.set(key, picked.mount.mountPoint);
      host.own.set(key, picked.own);
      if (!key.startsWith('name=')) v1Controllers++;
    }
  }

  if (host.v2Mount === undefined && host.v1.size === 0) {
    throw new UnsupportedError('no cgroup hierarchy of this process is mounted (checked /proc/self/mountinfo against /proc/self/cgroup)');
  }
  if (host.v2Mount === undefined) host.layout = 'v1';
  else host.layout = v1Controllers > 0 ? 'hybrid' : 'v2';
  return host;
}

let cached: CgroupHost | undefined;

/**
 * The cgroup layout of this host and this process's own cgroups, read once
 * from /proc/self/mountinfo and /proc/self/cgroup and then cached.
 * @throws UnsupportedError when no cgroup hierarchy is mounted
 */
export function detectCgroups(): CgroupHost {
  cached ??= parseCgroupHost(readFileSync('/proc/self/mountinfo', 'utf8'), readFileSync('/proc/self/cgroup', 'utf8'));
  return cached;
}

/** The directory of the process's own cgroup in the hierarchy `key` (`''` for v2), or undefined. @internal */
export function ownDirectory(host: CgroupHost, key: string): string | undefined {
  const mount = key === '' ? host.v2Mount : host.v1.get(key);
  const own = host.own.get(key);
  if (mount === undefined || own === undefined) return undefined;
  return posix.join(mount, own);
}
