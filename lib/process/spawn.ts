/**
 * The spawn primitive: start one process in new namespaces, from a
 * description computed here in full, and wait for it through a pidfd.
 * @module
 */
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { InvalidArgumentError, NacelleError, SpawnError, StateError, SystemCallError, UnsupportedError, fromNativeError } from '../errors';
import { type MountFlag, mountFlags } from '../host/mount';
import { type NamespaceName, namespaceFlag } from '../host/namespace';
import { type NativeSpawnDescription, type NativeSpawnOp, type NativeSpawnResult, helperProgram, native } from '../native';

/** One line of a uid_map or gid_map: `size` ids from `containerId` map to `hostId` on. */
export interface IdMapping {
  /** First id inside the user namespace. */
  containerId: number;
  /** First id outside it. */
  hostId: number;
  /** How many consecutive ids. */
  size: number;
}

/** Fields every {@link SpawnMountOperation} has. */
export interface SpawnOperationBase {
  /** The path the operation acts on, as seen before pivot_root. */
  target: string;
  /** Skip the operation when the target (or its parent) does not exist (ENOENT), as for masked paths. */
  optional?: boolean;
}

/** mount(2) in the child. */
export interface SpawnMountOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'mount';
  /** Device, directory (for `bind`) or a label. */
  source?: string;
  /** Filesystem type; omit for bind mounts and propagation changes. */
  fstype?: string;
  /** Flag names or raw MS_* bits. */
  flags?: readonly MountFlag[] | number;
  /** Filesystem-specific options. */
  data?: string;
}

/** umount2(2) in the child. */
export interface SpawnUmountOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'umount';
  /** MNT_DETACH. */
  detach?: boolean;
}

/** mkdir(2) in the child; an existing directory is fine. */
export interface SpawnMkdirOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'mkdir';
  /** Permission bits, default 0o755. */
  mode?: number;
}

/** symlink(2) in the child: `target` becomes a link to `linkTo`. */
export interface SpawnSymlinkOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'symlink';
  /** The link's contents. */
  linkTo: string;
}

/** mknod(2) in the child. */
export interface SpawnMknodOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'mknod';
  /** Device kind, or a FIFO. */
  type: 'char' | 'block' | 'fifo';
  /** Device major number. */
  major?: number;
  /** Device minor number. */
  minor?: number;
  /** Permission bits, default 0o666. */
  mode?: number;
}

/** chmod(2) in the child. */
export interface SpawnChmodOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'chmod';
  /** Permission bits. */
  mode: number;
}

/** Creates an empty file (a bind-mount target); an existing file is fine. */
export interface SpawnFileOp extends SpawnOperationBase {
  /** Discriminant. */
  kind: 'file';
  /** Permission bits, default 0o644. */
  mode?: number;
}

/**
 * A filesystem operation the child runs, in order, after joining its
 * namespaces and before pivot_root.
 */
export type SpawnMountOperation =
  | SpawnMountOp
  | SpawnUmountOp
  | SpawnMkdirOp
  | SpawnSymlinkOp
  | SpawnMknodOp
  | SpawnChmodOp
  | SpawnFileOp;

/** The identity a process runs as. */
export interface ProcessUser {
  /** User id. */
  uid: number;
  /** Primary group id. */
  gid: number;
  /** Supplementary group ids (default none). */
  groups?: readonly number[];
}

/**
 * Where a standard stream goes: `'pipe'` gives a Node stream on the
 * {@link Process}, `'ignore'` is /dev/null, `'inherit'` shares this process's
 * stream, and a number is an fd to hand over as it is.
 */
export type StdioOption = 'pipe' | 'ignore' | 'inherit' | number;

/** Everything about the process to start. */
export interface SpawnOptions {
  /** argv, with argv[0] the program unless {@link SpawnOptions.file} is given. */
  argv: readonly string[];
  /** The program; searched in the env's PATH when it has no `/`. Default argv[0]. */
  file?: string;
  /** The environment, as a record or as `KEY=value` strings. Default: empty (nothing of the host leaks in). */
  env?: Readonly<Record<string, string>> | readonly string[];
  /** Working directory, resolved after pivot_root. Default: inherited. */
  cwd?: string;
  /** Namespaces to create. */
  namespaces?: readonly NamespaceName[];
  /**
   * uid, gid and supplementary groups to switch to (inside the user namespace,
   * if any). Default: unchanged, or 0:0 (the namespace's root) in a new user namespace.
   */
  user?: ProcessUser;
  /** uid_map lines, written by the parent before the child runs (needs `user` namespace). */
  uidMap?: readonly IdMapping[];
  /** gid_map lines, likewise. */
  gidMap?: readonly IdMapping[];
  /** Written to /proc/<pid>/setgroups before gid_map. Default `deny` when not root and a gidMap is given. */
  setgroups?: 'allow' | 'deny';
  /** stdin, stdout, stderr. Default `['ignore', 'pipe', 'pipe']`. */
  stdio?: readonly [StdioOption, StdioOption, StdioOption];
  /** Hostname in the new UTS namespace (needs `uts`). */
  hostname?: string;
  /** Filesystem operations run in the child, in order. */
  mounts?: readonly SpawnMountOperation[];
  /**
   * Propagation of `/` in a new mount namespace, set before `mounts` run.
   * Default `private`, so nothing the child mounts reaches the host.
   */
  rootPropagation?: 'private' | 'slave' | 'unchanged';
  /** Directory (a mount point) to pivot_root into after the operations. */
  pivotRoot?: string;
  /** Namespace fds (/proc/<pid>/ns/* or pidfds) the child joins first, in order. */
  joinNamespaces?: readonly number[];
  /**
   * cgroup.procs files the parent writes the child's pid to before it runs.
   * Until execve the child shares this process's memory (CLONE_VM), so a
   * memory cgroup it joins must not have a limit yet: set the limit after
   * spawn resolves (as containers do), or an OOM kill during execve would kill
   * this Node process too. Or pass `ownMemory`.
   */
  cgroupProcs?: readonly string[];
  /** Give the child its own copy of this process's memory (fork) rather than sharing it until exec. Slower. */
  ownMemory?: boolean;
  /**
   * Give the child a terminal allocated in its own root's /dev/pts (after
   * pivot_root or joining a container's mount namespace, so `tty` inside
   * names it) as stdin, stdout and stderr; the master is
   * {@link Process.terminalFd}. Replaces `stdio`.
   */
  terminal?: TerminalSize;
  /** Outlive this Node process: no death signal, own session. Default false. */
  detached?: boolean;
  /**
   * With `detached`: start the process through nacelle-monitor, a small
   * program that stays its parent after this Node process exits, reaps it and
   * writes its exit status to this file (read it with {@link readExitStatusFile}),
   * so the exit code is never lost. {@link Process.wait} then waits for the
   * monitor and reads the file.
   */
  exitStatusFile?: string;
  /** Signal the child gets when the spawning thread dies. Default SIGKILL. */
  deathSignal?: NodeJS.Signals;
  /** Start in this pid namespace (an fd of /proc/<pid>/ns/pid): for exec into a container. */
  joinPidNamespace?: number;
  /** Capability sets; default: unchanged. */
  capabilities?: CapabilitySets;
  /** Resource limits set in the child before it runs. */
  rlimits?: readonly ResourceLimit[];
  /** Set no_new_privs (setuid binaries and file capabilities grant nothing). Implied by `seccomp`. */
  noNewPrivs?: boolean;
  /** A compiled seccomp BPF program (struct sock_filter[]), installed right before exec. */
  seccomp?: Buffer;
  /** Make stdin (a pty) the controlling terminal of the child's own session. */
  controllingTerminal?: boolean;
  /** Bring up the loopback interface; default true with a new `net` namespace. */
  loopback?: boolean;
}

let lastCapCache: number | undefined;
function lastCap(): number {
  if (lastCapCache === undefined) {
    try {
      lastCapCache = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
    } catch {
      lastCapCache = CAPABILITY_NAMES.length - 1;
    }
  }
  return lastCapCache;
}

function nativeCaps(sets: CapabilitySets | undefined): NativeSpawnDescription['capabilities'] {
  if (!sets) return null;
  const nums = (names: readonly string[] | undefined) => (names ?? []).map(capabilityNumber);
  return {
    bounding: nums(sets.bounding),
    effective: nums(sets.effective),
    permitted: nums(sets.permitted),
    inheritable: nums(sets.inheritable),
    ambient: nums(sets.ambient),
    lastCap: lastCap(),
  };
}

function nativeRlimits(limits: readonly ResourceLimit[] | undefined): { resource: number; soft: number; hard: number }[] {
  const c = native().constants as unknown as Record<string, number | undefined>;
  return (limits ?? []).map((l) => {
    const key = l.type.toUpperCase().startsWith('RLIMIT_') ? l.type.toUpperCase() : `RLIMIT_${l.type.toUpperCase()}`;
    const resource = c[key];
    if (resource === undefined) throw new InvalidArgumentError(`unknown resource limit '${l.type}'`);
    const value = (v: number) => (v === Infinity || v < 0 ? -1 : v);
    if (value(l.soft) !== -1 && (value(l.hard) !== -1 && l.soft > l.hard)) {
      throw new InvalidArgumentError(`rlimit ${l.type}: soft ${l.soft} exceeds hard ${l.hard}`);
    }
    return { resource, soft: value(l.soft), hard: value(l.hard) };
  });
}

/** Linux capability names as in capabilities(7), with or without the `CAP_` prefix. */
export const CAPABILITY_NAMES = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER',
  'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE',
  'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP',
  'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF',
  'CHECKPOINT_RESTORE',
] as const;

/** The number of a capability given by name (`CAP_NET_ADMIN` or `NET_ADMIN`). */
export function capabilityNumber(name: string): number {
  const n = CAPABILITY_NAMES.indexOf(name.toUpperCase().replace(/^CAP_/, '') as (typeof CAPABILITY_NAMES)[number]);
  if (n < 0) throw new InvalidArgumentError(`unknown capability '${name}'`);
  return n;
}

/** The capability sets a process gets, by name; sets not given are empty. */
export interface CapabilitySets {
  /** Bounding set: the most the process (and anything it execs) can ever hold. */
  bounding?: readonly string[];
  /** Effective set. */
  effective?: readonly string[];
  /** Permitted set. */
  permitted?: readonly string[];
  /** Inheritable set. */
  inheritable?: readonly string[];
  /** Ambient set (kept across exec by non-root users); each must be permitted and inheritable. */
  ambient?: readonly string[];
}

/** A resource limit: `RLIMIT_NOFILE` or `nofile`, soft and hard values (-1 or Infinity: unlimited). */
export interface ResourceLimit {
  /** Resource name, e.g. `RLIMIT_NOFILE` or `nofile`. */
  type: string;
  /** Soft limit. */
  soft: number;
  /** Hard limit (cannot exceed the caller's unless it has CAP_SYS_RESOURCE). */
  hard: number;
}

/** A terminal's size in characters. */
export interface TerminalSize {
  /** Columns. */
  cols: number;
  /** Rows. */
  rows: number;
}

/** How a process ended. Exactly one of `exitCode` and `signal` is non-null. */
export interface ExitStatus {
  /** The exit code, or null when a signal ended it. */
  exitCode: number | null;
  /** The signal that ended it, or null when it exited. */
  signal: NodeJS.Signals | null;
  /** Whether it dumped core. */
  coreDumped: boolean;
}

/**
 * The exit status nacelle-monitor wrote (see {@link SpawnOptions.exitStatusFile}),
 * or undefined when it has not written one (still running, or the monitor was killed).
 */
export function readExitStatusFile(path: string): ExitStatus | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const raw = JSON.parse(text) as { exitCode: number | null; signal: number; coreDumped: boolean };
  return {
    exitCode: raw.signal ? null : raw.exitCode,
    signal: raw.signal ? (SIGNAL_NAMES.get(raw.signal) ?? (`SIG${raw.signal}` as NodeJS.Signals)) : null,
    coreDumped: raw.coreDumped === true,
  };
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(osConstants.signals).map(([name, num]) => [num, name as NodeJS.Signals]),
);

/** The number of a signal given by name or number. */
export function signalNumber(signal: NodeJS.Signals | number): number {
  if (typeof signal === 'number') {
    if (!Number.isInteger(signal) || signal < 0 || signal > 64) throw new InvalidArgumentError(`bad signal number ${signal}`);
    return signal;
  }
  const num = (osConstants.signals as Record<string, number | undefined>)[signal];
  if (num === undefined) throw new InvalidArgumentError(`unknown signal '${signal}'`);
  return num;
}

/** A started process. Wait for it (once is enough; the result is kept) or it stays a zombie. */
export class Process {
  /** The pid, as seen from this process's pid namespace. */
  readonly pid: number;
  /** The child's stdin, when spawned with `'pipe'`. */
  readonly stdin: Writable | null;
  /** The child's stdout, when spawned with `'pipe'`. */
  readonly stdout: Readable | null;
  /** The child's stderr, when spawned with `'pipe'`. */
  readonly stderr: Readable | null;
  /** The master side of the child's terminal (`terminal` option), owned by the caller; else null. */
  readonly terminalFd: number | null;
  /** The nacelle-monitor process that is this process's parent, for monitored spawns; else null. */
  readonly monitorPid: number | null;
  #pidfd: number;
  #monitor: { pidfd: number; statusFile: string } | null;
  #waiting: Promise<ExitStatus>;
  #status: ExitStatus | undefined;

  /** @internal */
  constructor(
    pid: number,
    pidfd: number,
    stdio: [Writable | null, Readable | null, Readable | null],
    keepAlive = true,
    terminalFd: number | null = null,
    monitor: { pid: number; pidfd: number; statusFile: string } | null = null,
  ) {
    this.pid = pid;
    this.terminalFd = terminalFd;
    this.#pidfd = pidfd;
    this.monitorPid = monitor?.pid ?? null;
    this.#monitor = monitor ? { pidfd: monitor.pidfd, statusFile: monitor.statusFile } : null;
    [this.stdin, this.stdout, this.stderr] = stdio;
    // Reap as soon as it exits, whether or not anyone waits: a zombie here
    // would also hold up the teardown of a pid namespace it was exec'd into.
    this.#waiting = this.#wait(keepAlive);
    this.#waiting.catch(() => undefined);
  }

  /** The exit status once {@link Process.wait} has seen it, otherwise undefined. */
  get status(): ExitStatus | undefined {
    return this.#status;
  }

  /**
   * Resolves when the process exits, with its code or signal. Waiting goes
   * through the process's pidfd, polled by libuv: no thread blocks, no SIGCHLD
   * handler is installed, and no other child is reaped. The process is reaped
   * when it exits even if nobody calls this; a running non-detached process
   * keeps the event loop alive, as child_process does.
   */
  wait(): Promise<ExitStatus> {
    return this.#waiting;
  }

  async #wait(keepAlive: boolean): Promise<ExitStatus> {
    if (this.#monitor) return this.#waitMonitor(this.#monitor, keepAlive);
    try {
      const r = await native().waitPidfd(this.#pidfd, keepAlive);
      this.#status = {
        exitCode: r.signal ? null : r.exitCode,
        signal: r.signal ? (SIGNAL_NAMES.get(r.signal) ?? (`SIG${r.signal}` as NodeJS.Signals)) : null,
        coreDumped: r.coreDumped,
      };
      return this.#status;
    } catch (err) {
      throw fromNativeError(err);
    } finally {
      const fd = this.#pidfd;
      this.#pidfd = -1;
      native().close(fd);
    }
  }

  /** The process is the monitor's child: the monitor ends after recording its status. */
  async #waitMonitor(monitor: { pidfd: number; statusFile: string }, keepAlive: boolean): Promise<ExitStatus> {
    try {
      const m = await native().waitPidfd(monitor.pidfd, keepAlive);
      const recorded = readExitStatusFile(monitor.statusFile);
      if (!recorded) {
        const how = m.signal ? `was killed by ${SIGNAL_NAMES.get(m.signal) ?? m.signal}` : `exited ${m.exitCode}`;
        throw new StateError(`the monitor of process ${this.pid} ${how} without recording its exit status (${monitor.statusFile})`);
      }
      this.#status = recorded;
      return recorded;
    } catch (err) {
      throw err instanceof NacelleError ? err : fromNativeError(err);
    } finally {
      native().close(monitor.pidfd);
      const fd = this.#pidfd;
      this.#pidfd = -1;
      native().close(fd);
    }
  }

  /**
   * Sends a signal through the pidfd, so a recycled pid is never hit.
   * @returns false when the process has already been reaped
   */
  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    if (this.#pidfd < 0 || this.#status) return false;
    try {
      native().pidfdSendSignal(this.#pidfd, signalNumber(signal));
      return true;
    } catch (err) {
      const e = fromNativeError(err);
      if (e instanceof SystemCallError && e.code === 'ESRCH') return false;
      throw e;
    }
  }
}

function envList(env: SpawnOptions['env']): string[] {
  if (env === undefined) return [];
  if (Array.isArray(env)) return [...(env as readonly string[])];
  return Object.entries(env as Record<string, string>).map(([k, v]) => {
    if (k.includes('=') || k.length === 0) throw new InvalidArgumentError(`bad environment variable name '${k}'`);
    return `${k}=${v}`;
  });
}

function idMapText(kind: string, maps: readonly IdMapping[] | undefined): string | null {
  if (!maps || maps.length === 0) return null;
  return maps
    .map((m) => {
      for (const [field, value] of Object.entries(m)) {
        if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 0xffffffff) {
          throw new SpawnError(`EINVAL: ${kind} ${field} must be an unsigned 32-bit integer, got ${String(value)}`, {
            code: 'EINVAL',
            errno: -22,
            syscall: `write ${kind}`,
            step: `write ${kind}`,
          });
        }
      }
      return `${m.containerId} ${m.hostId} ${m.size}\n`;
    })
    .join('');
}

function nativeOps(options: SpawnOptions, flags: number): NativeSpawnOp[] {
  const c = native().constants;
  const ops: NativeSpawnOp[] = [];
  const propagation = options.rootPropagation ?? 'private';
  if (flags & c.CLONE_NEWNS && propagation !== 'unchanged') {
    ops.push({ kind: c.SPAWN_OP_MOUNT, target: '/', flags: c.MS_REC | (propagation === 'slave' ? c.MS_SLAVE : c.MS_PRIVATE) });
  }
  for (const m of options.mounts ?? []) {
    const opFlags = m.optional ? c.SPAWN_OP_OPTIONAL : 0;
    switch (m.kind) {
      case 'mount':
        ops.push({
          kind: c.SPAWN_OP_MOUNT,
          opFlags,
          source: m.source ?? null,
          target: m.target,
          fstype: m.fstype ?? null,
          flags: mountFlags(m.flags),
          data: m.data ?? null,
        });
        break;
      case 'umount':
        ops.push({ kind: c.SPAWN_OP_UMOUNT, opFlags, target: m.target, flags: m.detach ? c.MNT_DETACH : 0 });
        break;
      case 'mkdir':
        ops.push({ kind: c.SPAWN_OP_MKDIR, opFlags, target: m.target, mode: m.mode ?? 0o755 });
        break;
      case 'symlink':
        ops.push({ kind: c.SPAWN_OP_SYMLINK, opFlags, target: m.target, source: m.linkTo });
        break;
      case 'mknod': {
        const typeBits = m.type === 'char' ? 0o020000 : m.type === 'block' ? 0o060000 : 0o010000;
        const major = m.major ?? 0;
        const minor = m.minor ?? 0;
        // Linux's new_encode_dev layout, as makedev() computes it.
        const dev = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
        ops.push({ kind: c.SPAWN_OP_MKNOD, opFlags, target: m.target, mode: typeBits | (m.mode ?? 0o666), dev });
        break;
      }
      case 'chmod':
        ops.push({ kind: c.SPAWN_OP_CHMOD, opFlags, target: m.target, mode: m.mode });
        break;
      case 'file':
        ops.push({ kind: c.SPAWN_OP_CREATE, opFlags, target: m.target, mode: m.mode ?? 0o644 });
        break;
      default:
        throw new InvalidArgumentError(`unknown mount operation '${(m as { kind: string }).kind}'`);
    }
  }
  return ops;
}

function spawnErrorFrom(err: unknown): unknown {
  const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown; message?: unknown };
  if (!(err instanceof Error) || typeof e.code !== 'string' || typeof e.errno !== 'number' || typeof e.syscall !== 'string') {
    return err;
  }
  return new SpawnError(String(e.message), {
    code: e.code,
    errno: e.errno,
    syscall: e.syscall,
    step: e.syscall,
    ...(typeof e.path === 'string' ? { path: e.path } : {}),
    cause: err,
  });
}

/**
 * Starts a process in new namespaces. Resolves once the program has been
 * exec'd; if any step before that fails (a mount, chdir, a missing binary),
 * rejects with a {@link SpawnError} naming the step and errno, and leaves no
 * process, zombie or fd behind.
 *
 * @example
 * const p = await spawn({ argv: ['sh', '-c', 'echo $$ $(hostname)'], env: { PATH: '/bin' },
 *   namespaces: ['pid', 'uts', 'mount'], hostname: 'box' })
 * await p.wait()   // stdout: "1 box"
 */
export async function spawn(options: SpawnOptions): Promise<Process> {
  if (!options.argv || options.argv.length === 0) throw new InvalidArgumentError('spawn needs a non-empty argv');
  const file = options.file ?? options.argv[0]!;
  let flags = 0;
  for (const ns of options.namespaces ?? []) {
    try {
      flags |= namespaceFlag(ns);
    } catch (err) {
      throw new SpawnError(`EINVAL: unknown namespace '${ns}'`, {
        code: 'EINVAL',
        errno: -22,
        syscall: 'clone',
        step: 'namespaces',
        cause: err,
      });
    }
  }
  const c = native().constants;
  if (options.hostname !== undefined && !(flags & c.CLONE_NEWUTS)) {
    throw new InvalidArgumentError('a hostname needs a new uts namespace (namespaces: [..., "uts"])');
  }
  if ((options.uidMap || options.gidMap) && !(flags & c.CLONE_NEWUSER)) {
    throw new InvalidArgumentError('uid/gid maps need a new user namespace (namespaces: [..., "user"])');
  }
  if (options.pivotRoot !== undefined && !(flags & c.CLONE_NEWNS)) {
    throw new InvalidArgumentError('pivotRoot needs a new mount namespace (namespaces: [..., "mount"])');
  }
  if (options.mounts?.length && !(flags & c.CLONE_NEWNS)) {
    throw new InvalidArgumentError('mount operations need a new mount namespace (namespaces: [..., "mount"])');
  }

  const uidMap = idMapText('uid_map', options.uidMap);
  const gidMap = idMapText('gid_map', options.gidMap);
  const setgroups = options.setgroups ?? (gidMap && process.geteuid?.() !== 0 ? 'deny' : null);
  const ops = nativeOps(options, flags);
  // In a new user namespace the child still holds its host ids, which are
  // unmapped there; by default it becomes the namespace's root (uid 0 inside).
  const user: ProcessUser | undefined = options.user ?? (flags & c.CLONE_NEWUSER ? { uid: 0, gid: 0 } : undefined);
  if (setgroups === 'deny' && user?.groups?.length) {
    throw new InvalidArgumentError('supplementary groups cannot be set when setgroups is "deny"');
  }
  // Drop the caller's supplementary groups whenever ids change, unless setgroups(2) is denied.
  const groups = user && setgroups !== 'deny' ? [...(user.groups ?? [])] : null;

  const stdioOptions = options.terminal ? (['ignore', 'ignore', 'ignore'] as const) : (options.stdio ?? ['ignore', 'pipe', 'pipe']);
  if (options.terminal && options.pivotRoot === undefined && !options.joinNamespaces?.length) {
    throw new InvalidArgumentError('terminal needs a root with devpts at /dev/pts: pivotRoot into one, or join a container\'s mount namespace');
  }
  const childFds: [number, number, number] = [-1, -1, -1];
  const parentFds: number[] = [];
  const closeAfterSpawn: number[] = [];
  try {
    stdioOptions.forEach((opt, i) => {
      if (opt === 'pipe') {
        const [r, w] = native().pipe();
        childFds[i] = i === 0 ? r : w;
        parentFds[i] = i === 0 ? w : r;
        closeAfterSpawn.push(childFds[i]);
      } else if (opt === 'inherit') {
        childFds[i] = i;
      } else if (typeof opt === 'number') {
        childFds[i] = opt;
      } else if (opt !== 'ignore') {
        throw new InvalidArgumentError(`bad stdio option '${String(opt)}'`);
      }
    });

    const desc: NativeSpawnDescription = {
      file,
      argv: [...options.argv],
      env: envList(options.env),
      cwd: options.cwd ?? null,
      cloneFlags: flags,
      uid: user?.uid ?? -1,
      gid: user?.gid ?? -1,
      groups,
      uidMap,
      gidMap,
      setgroups,
      stdio: childFds,
      hostname: options.hostname ?? null,
      ops,
      pivotRoot: options.pivotRoot ?? null,
      joinFds: [...(options.joinNamespaces ?? [])],
      cgroupProcs: [...(options.cgroupProcs ?? [])],
      detached: options.detached ?? false,
      deathSignal: options.deathSignal ? signalNumber(options.deathSignal) : 0,
      pidNsFd: options.joinPidNamespace ?? -1,
      capabilities: nativeCaps(options.capabilities),
      rlimits: nativeRlimits(options.rlimits),
      noNewPrivs: options.noNewPrivs ?? false,
      seccomp: options.seccomp ?? null,
      ctty: options.controllingTerminal ?? false,
      loopbackUp: options.loopback ?? Boolean(flags & c.CLONE_NEWNET),
      ownMm: options.ownMemory ?? false,
      pty: options.terminal !== undefined,
      ptyCols: options.terminal?.cols ?? 80,
      ptyRows: options.terminal?.rows ?? 24,
    };
    if (options.exitStatusFile !== undefined) {
      if (!options.detached) throw new InvalidArgumentError('exitStatusFile needs detached: true (a foreground process is waited on by its creator)');
      const program = helperProgram('nacelle-monitor');
      if (!program) throw new UnsupportedError('nacelle-monitor is not built (npm run build:native builds it beside the addon)');
      desc.monitorProgram = program;
      desc.statusFile = options.exitStatusFile;
    }

    let started: NativeSpawnResult;
    try {
      started = await native().spawn(desc);
    } catch (err) {
      throw spawnErrorFrom(err);
    }
    for (const fd of closeAfterSpawn.splice(0)) native().close(fd);
    const streams: [Writable | null, Readable | null, Readable | null] = [null, null, null];
    for (let i = 0; i < 3; i++) {
      const fd = parentFds[i];
      if (fd === undefined) continue;
      const socket = new Socket({ fd, readable: i !== 0, writable: i === 0 });
      if (i === 0) streams[0] = socket;
      else streams[i as 1 | 2] = socket;
    }
    parentFds.length = 0;
    const monitor =
      started.monitorPid !== undefined && started.monitorPidfd !== undefined && options.exitStatusFile !== undefined
        ? { pid: started.monitorPid, pidfd: started.monitorPidfd, statusFile: options.exitStatusFile }
        : null;
    return new Process(started.pid, started.pidfd, streams, !(options.detached ?? false), started.ptyMaster >= 0 ? started.ptyMaster : null, monitor);
  } catch (err) {
    for (const fd of [...closeAfterSpawn, ...parentFds.filter((fd) => fd !== undefined)]) {
      try {
        native().close(fd);
      } catch {
        // already closed
      }
    }
    if (err instanceof NacelleError) throw err;
    throw fromNativeError(err);
  }
}
