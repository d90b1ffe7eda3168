/**
 * Loads the native addon (node-gyp-build: build/Release when compiled here,
 * prebuilds/<platform>-<arch> otherwise) and types every native function.
 * The addon is loaded on first use, so importing nacelle never fails on a
 * machine that only reads images.
 * @module
 * @internal
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import nodeGypBuild from 'node-gyp-build';

/** What `spawn` resolves with. */
export interface NativeSpawnResult {
  pid: number;
  pidfd: number;
  ptyMaster: number;
  /** Monitored spawns: the nacelle-monitor process (our child) and its pidfd. */
  monitorPid?: number;
  monitorPidfd?: number;
}

/** One filesystem operation the spawned child runs before pivot_root. */
export interface NativeSpawnOp {
  kind: number;
  opFlags?: number;
  source?: string | null;
  target: string;
  fstype?: string | null;
  data?: string | null;
  flags?: number;
  mode?: number;
  dev?: number;
}

/** The flat description `spawn` takes; every field is precomputed in TypeScript. */
export interface NativeSpawnDescription {
  file: string;
  argv: string[];
  env: string[];
  cwd?: string | null;
  cloneFlags?: number;
  uid?: number;
  gid?: number;
  groups?: number[] | null;
  uidMap?: string | null;
  gidMap?: string | null;
  setgroups?: 'allow' | 'deny' | null;
  stdio?: [number, number, number];
  hostname?: string | null;
  ops?: NativeSpawnOp[];
  pivotRoot?: string | null;
  joinFds?: number[];
  cgroupProcs?: string[];
  detached?: boolean;
  deathSignal?: number;
  /** An fd of a pid namespace the child starts in (exec into a container). */
  pidNsFd?: number;
  /** Capability numbers per set; sets not given are empty. */
  capabilities?: {
    bounding: number[];
    effective: number[];
    permitted: number[];
    inheritable: number[];
    ambient: number[];
    lastCap: number;
  } | null;
  /** RLIMIT_* resources with soft/hard values (-1 = unlimited). */
  rlimits?: { resource: number; soft: number; hard: number }[];
  noNewPrivs?: boolean;
  /** A classic BPF program (struct sock_filter[]) installed with seccomp(2) right before exec. */
  seccomp?: Buffer | null;
  /** Make fd 0 (a tty) the child's controlling terminal in a new session. */
  ctty?: boolean;
  /** Bring up the loopback interface (in a new network namespace). */
  loopbackUp?: boolean;
  /** Fork a copy of the parent's memory instead of sharing it until exec (CLONE_VM). */
  ownMm?: boolean;
  /** After pivot_root, open a pty in the new root's /dev/pts as stdio; its master comes back. */
  pty?: boolean;
  /** Terminal width for `pty`. */
  ptyCols?: number;
  /** Terminal height for `pty`. */
  ptyRows?: number;
  /** Detached spawns: start through this nacelle-monitor program, which stays the parent and records the exit. */
  monitorProgram?: string | null;
  /** Where the monitor writes the exit status (JSON). */
  statusFile?: string | null;
}

/** How a reaped process ended, as the kernel reported it. */
export interface NativeExitStatus {
  /** Exit code, or -1 when killed by a signal. */
  exitCode: number;
  /** Signal number, or 0 when it exited. */
  signal: number;
  coreDumped: boolean;
}

/** What `/dev/kvm` reports. */
export interface NativeKvmProbe {
  apiVersion: number;
  maxVcpus: number;
  recommendedVcpus: number;
  irqchip: boolean;
  userMemory: boolean;
  immediateExit: boolean;
}

/** An opaque handle on a VM of the built-in monitor (binding/kvm). */
export interface NativeVmHandle {
  readonly __nativeVm: unique symbol;
}

/** What `kvmCreate` takes: a fresh boot, or a snapshot directory to restore. */
export interface NativeVmConfig {
  kernel?: string;
  initrd?: string | null;
  cmdline?: string;
  restoreDir?: string;
  cpus: number;
  memoryMiB: number;
  disks?: { path: string; readonly?: boolean; id?: string | null }[];
  channel?: boolean;
}

/** What `kvmCreate` resolves with; the fds are socketpair ends JS owns. */
export interface NativeVmCreated {
  handle: NativeVmHandle;
  consoleFd: number;
  /** -1 without a channel. */
  channelFd: number;
  cpus: number;
  memoryMiB: number;
}

/** How a VM ended, as the last vCPU thread saw it. */
export interface NativeVmExit {
  reason: 'poweroff' | 'reset' | 'crash' | 'killed';
  detail: string;
}

/** `kvmStats`. */
export interface NativeVmStats {
  state: 'created' | 'running' | 'paused' | 'exited';
  exits: Record<string, number>;
  vcpus: { exits: number; tid: number }[];
  ioTid: number;
  memoryBytes: number;
  residentBytes: number;
  deviceErrors: number;
  lastDeviceError?: string;
}

/** Numeric constants exported by the addon (CLONE_*, MS_*, MNT_*, SPAWN_OP_*). */
export interface NativeConstants {
  readonly CLONE_NEWNS: number;
  readonly CLONE_NEWUTS: number;
  readonly CLONE_NEWIPC: number;
  readonly CLONE_NEWUSER: number;
  readonly CLONE_NEWPID: number;
  readonly CLONE_NEWNET: number;
  readonly CLONE_NEWCGROUP: number;
  readonly MS_RDONLY: number;
  readonly MS_NOSUID: number;
  readonly MS_NODEV: number;
  readonly MS_NOEXEC: number;
  readonly MS_SYNCHRONOUS: number;
  readonly MS_REMOUNT: number;
  readonly MS_MANDLOCK: number;
  readonly MS_DIRSYNC: number;
  readonly MS_NOATIME: number;
  readonly MS_NODIRATIME: number;
  readonly MS_BIND: number;
  readonly MS_MOVE: number;
  readonly MS_REC: number;
  readonly MS_SILENT: number;
  readonly MS_UNBINDABLE: number;
  readonly MS_PRIVATE: number;
  readonly MS_SLAVE: number;
  readonly MS_SHARED: number;
  readonly MS_RELATIME: number;
  readonly MS_STRICTATIME: number;
  readonly MNT_FORCE: number;
  readonly MNT_DETACH: number;
  readonly MNT_EXPIRE: number;
  readonly UMOUNT_NOFOLLOW: number;
  readonly SPAWN_OP_MOUNT: number;
  readonly SPAWN_OP_UMOUNT: number;
  readonly SPAWN_OP_MKDIR: number;
  readonly SPAWN_OP_SYMLINK: number;
  readonly SPAWN_OP_MKNOD: number;
  readonly SPAWN_OP_CHMOD: number;
  readonly SPAWN_OP_CREATE: number;
  readonly SPAWN_OP_OPTIONAL: number;
  readonly LOCK_SH: number;
  readonly LOCK_EX: number;
  readonly LOCK_UN: number;
  readonly RLIMIT_CPU: number;
  readonly RLIMIT_FSIZE: number;
  readonly RLIMIT_DATA: number;
  readonly RLIMIT_STACK: number;
  readonly RLIMIT_CORE: number;
  readonly RLIMIT_RSS: number;
  readonly RLIMIT_NPROC: number;
  readonly RLIMIT_NOFILE: number;
  readonly RLIMIT_MEMLOCK: number;
  readonly RLIMIT_AS: number;
  readonly RLIMIT_LOCKS: number;
  readonly RLIMIT_SIGPENDING: number;
  readonly RLIMIT_MSGQUEUE: number;
  readonly RLIMIT_NICE: number;
  readonly RLIMIT_RTPRIO: number;
  readonly RLIMIT_RTTIME: number;
}

/** Every function the addon exports. Errors carry `code` (errno name), `errno`, `syscall`, `path`. */
export interface NativeBinding {
  /** Starts a process; resolves once it has exec'd (or rejects with the failing step). */
  spawn(desc: NativeSpawnDescription): Promise<NativeSpawnResult>;
  /**
   * Resolves when the process behind `pidfd` exits, reaping it. Never reaps
   * anything else. With `keepAlive` false the wait does not hold the event loop open.
   */
  waitPidfd(pidfd: number, keepAlive?: boolean): Promise<NativeExitStatus>;
  /** Reaps the process if it has exited; null while it runs. */
  reapPidfd(pidfd: number): NativeExitStatus | null;
  pidfdOpen(pid: number): number;
  pidfdSendSignal(pidfd: number, signal: number): void;
  /** A pipe, both ends O_CLOEXEC: [read, write]. */
  pipe(): [number, number];
  close(fd: number): void;
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): Promise<void>;
  umount(target: string, flags: number): Promise<void>;
  pivotRoot(newRoot: string, putOld: string): void;
  setns(fd: number, nstype: number): void;
  sethostname(name: string): void;
  kvmProbe(device: string): NativeKvmProbe;
  /** Creates a VM (kernel loaded, or state restored) on the pool; onExit is called once when it ends. */
  kvmCreate(config: NativeVmConfig, onExit: (exit: NativeVmExit) => void): Promise<NativeVmCreated>;
  /** With paused, the vCPUs park before their first instruction. */
  kvmStart(handle: NativeVmHandle, paused?: boolean): void;
  /** Resolves when every vCPU is parked outside KVM_RUN. */
  kvmPause(handle: NativeVmHandle): Promise<void>;
  kvmResume(handle: NativeVmHandle): void;
  /** Ends the VM with 'killed'; onExit follows. */
  kvmKill(handle: NativeVmHandle): void;
  /** Types Ctrl-Alt-Del on the i8042 keyboard. */
  kvmCtrlAltDel(handle: NativeVmHandle): void;
  kvmStats(handle: NativeVmHandle): NativeVmStats;
  /** Writes vm.state and memory into dir (the VM must be paused). */
  kvmSnapshot(handle: NativeVmHandle, dir: string): Promise<void>;
  /** Kills if needed, joins the threads and frees everything. */
  kvmDestroy(handle: NativeVmHandle): Promise<void>;
  /** Loads a BPF_PROG_TYPE_CGROUP_DEVICE program (8-byte instructions); an error carries `verifierLog`. */
  bpfLoadDeviceFilter(insns: Buffer): number;
  /** Attaches a device program to a cgroup v2 directory (BPF_F_ALLOW_MULTI). */
  bpfAttachDeviceFilter(cgroupDir: string, progFd: number): void;
  /** How many device programs are attached to this cgroup v2 directory itself. */
  bpfQueryDeviceFilters(cgroupDir: string): number;
  /** mkdir(2) (or rmdir(2) with `remove`) of each path in one trip to the thread pool; errno names per path, null for success. */
  dirs(remove: boolean, paths: readonly string[], mode: number): Promise<(string | null)[]>;
  /** mknod(2); `mode` includes the file type bits (S_IFCHR, S_IFBLK, S_IFIFO). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** lsetxattr(2): sets an extended attribute without following a symlink. */
  lsetxattr(path: string, name: string, value: Buffer): void;
  /** lgetxattr(2); null when the attribute is absent (ENODATA). */
  lgetxattr(path: string, name: string): Buffer | null;
  /** llistxattr(2): attribute names. */
  llistxattr(path: string): string[];
  /** flock(2), waiting on the libuv pool; `op` is LOCK_SH, LOCK_EX or LOCK_UN. */
  flock(fd: number, op: number): Promise<void>;
  /** TIOCSWINSZ on a pty fd. */
  resizePty(fd: number, cols: number, rows: number): void;
  readonly constants: NativeConstants;
}

/** The directory holding package.json: one level above both lib/ and dist/. */
export function packageRoot(): string {
  return dirname(dirname(fileURLToPath(import.meta.url)));
}

/**
 * A helper program built beside the addon (build/Release, else
 * prebuilds/<platform>-<arch>, the order node-gyp-build loads the addon in),
 * or undefined when neither has it.
 */
export function helperProgram(name: string): string | undefined {
  const root = packageRoot();
  for (const dir of [join(root, 'build', 'Release'), join(root, 'prebuilds', `${process.platform}-${process.arch}`)]) {
    const path = join(dir, name);
    if (existsSync(path)) return path;
  }
  return undefined;
}

let loaded: NativeBinding | undefined;

/** The addon, loaded on first call. */
export function native(): NativeBinding {
  if (!loaded) {
    const root = packageRoot();
    loaded = nodeGypBuild(root) as NativeBinding;
    if (typeof loaded.spawn !== 'function') {
      throw new Error(`nacelle: the addon under ${join(root, 'build')} or ${join(root, 'prebuilds')} is not nacelle's`);
    }
  }
  return loaded;
}
