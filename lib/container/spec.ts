/**
 * From an image and {@link ContainerOptions} to an OCI runtime spec with
 * Docker's defaults: namespaces, mounts, default devices, masked and
 * read-only paths, the default capability set, no_new_privs, the default
 * seccomp profile, and cgroup limits.
 * @module
 */
import { readFileSync } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import { isAbsolute, join, posix } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors';
import type { Image } from '../image/image';
import { RUNTIME_SPEC_VERSION, type RuntimeMount, type RuntimeNamespace, type RuntimeSpec } from '../oci/runtime-spec';
import { CAPABILITY_NAMES } from '../process/spawn';
import { type ContainerOptions, parseBytes } from './options';
import { DOCKER_DEFAULT_CAPABILITIES, defaultSeccompProfile } from './seccomp/index';

/** Paths Docker hides from containers (bind /dev/null or an empty read-only tmpfs over them). */
export const DEFAULT_MASKED_PATHS = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/interrupts',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

/** Paths Docker makes read-only. */
export const DEFAULT_READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** The default PATH when the image sets none (Docker's). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function capName(name: string): string {
  const upper = name.toUpperCase();
  if (upper === 'ALL') return upper;
  const bare = upper.replace(/^CAP_/, '');
  if (!(CAPABILITY_NAMES as readonly string[]).includes(bare)) throw new InvalidArgumentError(`unknown capability '${name}'`);
  return `CAP_${bare}`;
}

/**
 * The most a container can get: the capabilities this process holds (its
 * permitted set), or with a new user namespace, whatever its bounding set
 * allows (a new user namespace grants every capability inside it).
 */
export function heldCapabilities(inUserNamespace = false): string[] {
  const status = readFileSync('/proc/self/status', 'utf8');
  const field = inUserNamespace ? 'CapBnd' : 'CapPrm';
  const hex = new RegExp(`^${field}:\\s+([0-9a-f]+)$`, 'm').exec(status)?.[1] ?? '0';
  const mask = BigInt(`0x${hex}`);
  return CAPABILITY_NAMES.filter((_, i) => (mask >> BigInt(i)) & 1n).map((c) => `CAP_${c}`);
}

/**
 * The capability set after Docker's `--cap-add` / `--cap-drop` rules.
 * `privileged` and `ALL` mean every capability this process holds (a host
 * without CAP_SYS_RESOURCE cannot grant it); adding one it lacks is an error.
 */
export function containerCapabilities(options: ContainerOptions): string[] {
  const held = heldCapabilities(options.userns !== undefined);
  const all = held;
  if (options.privileged) return all;
  for (const c of (options.capAdd ?? []).map(capName)) {
    if (c !== 'ALL' && !held.includes(c)) {
      throw new InvalidArgumentError(`cannot add ${c}: this process does not hold it, so no container it starts can`, { code: 'EPERM' });
    }
  }
  const add = (options.capAdd ?? []).map(capName);
  const drop = (options.capDrop ?? []).map(capName);
  let caps = drop.includes('ALL') ? [] : DOCKER_DEFAULT_CAPABILITIES.map((c) => `CAP_${c.replace(/^CAP_/, '')}`);
  caps = caps.filter((c) => !drop.includes(c));
  if (add.includes('ALL')) caps = all.filter((c) => !drop.includes(c));
  for (const c of add) if (c !== 'ALL' && !caps.includes(c)) caps.push(c);
  return caps.sort((a, b) => CAPABILITY_NAMES.indexOf(a.slice(4) as never) - CAPABILITY_NAMES.indexOf(b.slice(4) as never));
}

function envRecord(list: readonly string[] | undefined): Map<string, string> {
  const map = new Map<string, string>();
  for (const entry of list ?? []) {
    const eq = entry.indexOf('=');
    if (eq > 0) map.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return map;
}

/** Reads a file from an image's layers (top first), without unpacking it anywhere. */
export async function readImageFile(lowerDirs: readonly string[], path: string): Promise<string | undefined> {
  for (const dir of lowerDirs) {
    const full = join(dir, path);
    const st = await lstat(full).catch(() => undefined);
    if (!st) continue;
    if (st.isCharacterDevice() && st.rdev === 0) return undefined; // an overlay whiteout: deleted above
    if (st.isFile()) return readFile(full, 'utf8');
    return undefined;
  }
  return undefined;
}

/** The uid, gid and supplementary groups for a Docker `--user` value in an image. */
export async function resolveUser(
  spec: string | undefined,
  lowerDirs: readonly string[],
): Promise<{ uid: number; gid: number; additionalGids: number[]; home?: string }> {
  const value = spec && spec.length > 0 ? spec : '0';
  const [userPart, groupPart] = value.split(':', 2) as [string, string | undefined];
  const passwd = (await readImageFile(lowerDirs, 'etc/passwd')) ?? '';
  const group = (await readImageFile(lowerDirs, 'etc/group')) ?? '';
  const users = passwd
    .split('\n')
    .map((l) => l.split(':'))
    .filter((f) => f.length >= 7);
  const groups = group
    .split('\n')
    .map((l) => l.split(':'))
    .filter((f) => f.length >= 4);
  let uid: number;
  let gid: number | undefined;
  let name: string | undefined;
  let home: string | undefined;
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart);
    const entry = users.find((f) => Number(f[2]) === uid);
    if (entry) {
      gid = Number(entry[3]);
      name = entry[0];
      home = entry[5];
    }
  } else {
    const entry = users.find((f) => f[0] === userPart);
    if (!entry) throw new NotFoundError(`user '${userPart}' is not in the image's /etc/passwd`, { code: 'ERR_NO_SUCH_USER' });
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    name = userPart;
    home = entry[5];
  }
  if (groupPart !== undefined) {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart);
    else {
      const g = groups.find((f) => f[0] === groupPart);
      if (!g) throw new NotFoundError(`group '${groupPart}' is not in the image's /etc/group`, { code: 'ERR_NO_SUCH_GROUP' });
      gid = Number(g[2]);
    }
  }
  gid ??= 0;
  const additionalGids =
    name === undefined
      ? []
      : groups.filter((g) => (g[3] ?? '').split(',').includes(name) && Number(g[2]) !== gid).map((g) => Number(g[2]));
  return { uid, gid, additionalGids, ...(home ? { home } : {}) };
}

/** What the spec builder needs besides the image and options. */
export interface SpecContext {
  /** The container id. */
  id: string;
  /** The image's overlay lowerdirs, top first (for /etc/passwd lookups). */
  lowerDirs: readonly string[];
  /** Host paths of the managed /etc/hosts, /etc/hostname and /etc/resolv.conf. */
  etcFiles: { hosts: string; hostname: string; resolvConf: string };
}

/** Builds the runtime spec of a container. */
export async function buildSpec(image: Image, options: ContainerOptions, ctx: SpecContext): Promise<RuntimeSpec> {
  const config = image.config;
  let entrypoint: string[] = config.Entrypoint ? [...config.Entrypoint] : [];
  let cmd: string[] = config.Cmd ? [...config.Cmd] : [];
  if (options.entrypoint !== undefined) {
    entrypoint = typeof options.entrypoint === 'string' ? [options.entrypoint] : [...options.entrypoint];
    cmd = [];
  }
  if (options.cmd !== undefined) cmd = [...options.cmd];
  const args = [...entrypoint, ...cmd];
  if (args.length === 0) {
    throw new InvalidArgumentError(`image ${image.tags[0] ?? image.digest} has no command: give cmd or entrypoint`, { code: 'ERR_NO_COMMAND' });
  }

  const hostname = options.hostname ?? ctx.id.slice(0, 12);
  const env = envRecord(config.Env);
  const extra = options.env === undefined ? [] : Array.isArray(options.env) ? (options.env as readonly string[]) : Object.entries(options.env).map(([k, v]) => `${k}=${v}`);
  for (const [k, v] of envRecord(extra)) env.set(k, v);
  if (!env.has('PATH')) env.set('PATH', DEFAULT_PATH);
  env.set('HOSTNAME', hostname);
  if (options.tty && !env.has('TERM')) env.set('TERM', 'xterm');

  const user = await resolveUser(options.user ?? config.User, ctx.lowerDirs);
  if (!env.has('HOME')) env.set('HOME', user.home ?? '/');
  const cwd = options.workdir ?? (config.WorkingDir || '/');
  if (!posix.isAbsolute(cwd)) throw new InvalidArgumentError(`workdir '${cwd}' must be absolute`);

  const privileged = options.privileged ?? false;
  const caps = containerCapabilities(options);
  const namespaces: RuntimeNamespace[] = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'cgroup' }];
  if ((options.network ?? 'none') === 'none') namespaces.push({ type: 'network' });
  if (options.userns) namespaces.push({ type: 'user' });

  const mounts: RuntimeMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', ...(options.userns ? [] : ['gid=5'])] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', privileged ? 'rw' : 'ro'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/etc/hosts', type: 'bind', source: ctx.etcFiles.hosts, options: ['rbind', 'rprivate'] },
    { destination: '/etc/hostname', type: 'bind', source: ctx.etcFiles.hostname, options: ['rbind', 'rprivate'] },
    { destination: '/etc/resolv.conf', type: 'bind', source: ctx.etcFiles.resolvConf, options: ['rbind', 'rprivate'] },
  ];
  for (const v of options.volumes ?? []) {
    if (!isAbsolute(v.host)) throw new InvalidArgumentError(`volume source '${v.host}' must be an absolute host path`);
    if (!posix.isAbsolute(v.container)) throw new InvalidArgumentError(`volume target '${v.container}' must be absolute`);
    const st = await lstat(v.host).catch(() => undefined);
    if (!st) throw new NotFoundError(`volume source ${v.host} does not exist`, { code: 'ENOENT' });
    mounts.push({ destination: v.container, type: 'bind', source: v.host, options: ['rbind', 'rprivate', ...(v.readonly ? ['ro'] : [])] });
  }
  for (const t of options.tmpfs ?? []) {
    if (!posix.isAbsolute(t.container)) throw new InvalidArgumentError(`tmpfs target '${t.container}' must be absolute`);
    const size = t.size === undefined ? 64 * 1024 * 1024 : parseBytes(t.size, `tmpfs ${t.container} size`);
    mounts.push({
      destination: t.container,
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'nodev', `size=${size}`, `mode=${(t.mode ?? 0o1777).toString(8)}`, ...(t.readonly ? ['ro'] : [])],
    });
  }

  const resources: NonNullable<RuntimeSpec['linux']>['resources'] = {};
  if (options.memory !== undefined) {
    resources.memory = { limit: parseBytes(options.memory, 'memory') };
    if (options.memorySwap !== undefined) {
      resources.memory.swap = options.memorySwap === -1 || options.memorySwap === '-1' ? -1 : parseBytes(options.memorySwap, 'memorySwap');
    }
  }
  if (options.cpuShares !== undefined || options.cpuQuota !== undefined || options.cpus !== undefined) {
    const period = options.cpuPeriod ?? 100_000;
    resources.cpu = { period };
    if (options.cpuShares !== undefined) resources.cpu.shares = options.cpuShares;
    if (options.cpuQuota !== undefined) resources.cpu.quota = options.cpuQuota;
    if (options.cpus !== undefined) resources.cpu.quota = Math.round(options.cpus * period);
  }
  if (options.pids !== undefined) resources.pids = { limit: options.pids };

  const seccomp =
    privileged || options.seccomp === 'unconfined'
      ? undefined
      : (options.seccomp ?? defaultSeccompProfile({ capabilities: caps }));

  const spec: RuntimeSpec = {
    ociVersion: RUNTIME_SPEC_VERSION,
    process: {
      terminal: options.tty ?? false,
      user: { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids },
      args,
      env: [...env].map(([k, v]) => `${k}=${v}`),
      cwd,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
      rlimits: (options.ulimits ?? [{ type: 'nofile', soft: 1024, hard: 1024 }]).map((u) => ({
        type: u.type.toUpperCase().startsWith('RLIMIT_') ? u.type.toUpperCase() : `RLIMIT_${u.type.toUpperCase()}`,
        soft: u.soft,
        hard: u.hard,
      })),
      noNewPrivileges: !privileged,
    },
    root: { path: 'rootfs', readonly: options.readonlyRootfs ?? false },
    hostname,
    mounts,
    linux: {
      namespaces,
      cgroupsPath: ctx.id,
      resources,
      maskedPaths: privileged ? [] : DEFAULT_MASKED_PATHS,
      readonlyPaths: privileged ? [] : DEFAULT_READONLY_PATHS,
      devices: [],
      ...(seccomp ? { seccomp } : {}),
      ...(options.userns
        ? {
            uidMappings: options.userns.uidMap.map((m) => ({ containerID: m.containerId, hostID: m.hostId, size: m.size })),
            gidMappings: options.userns.gidMap.map((m) => ({ containerID: m.containerId, hostID: m.hostId, size: m.size })),
          }
        : {}),
    },
    annotations: { 'org.opencontainers.image.ref.name': image.tags[0] ?? image.digest, 'io.nacelle.image.digest': image.digest },
  };
  return spec;
}
