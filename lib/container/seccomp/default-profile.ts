/**
 * nacelle's default seccomp profile: equal in effect to Docker's (moby
 * profiles/seccomp, as of Docker 28.2, kernel 6.13 syscalls), written here as
 * our own data.
 *
 * - Default action: ERRNO(EPERM).
 * - Allowed: the ordinary syscalls below, grouped by what they are for.
 * - `personality` only for the usual personas; `socket` for any family but
 *   AF_VSOCK (a container must not reach the host's vsock services).
 * - Without CAP_SYS_ADMIN, `clone` only without namespace flags, and `clone3`
 *   fails with ENOSYS (its flags sit in memory seccomp cannot read), so libc
 *   falls back to `clone`, whose flags the filter can check.
 * - Capabilities unlock the syscalls they are about (table below).
 * - Not allowed at all: keyctl, add_key, request_key, kexec_*, swapon/off,
 *   pivot_root, userfaultfd, io_uring_*, move_pages, migrate_pages, …: they
 *   are in no list, so they get the default action.
 * - Syscalls newer than Docker's table (open_tree_attr, file_getattr,
 *   file_setattr, listns) are not listed, as in Docker.
 * - Only native 64-bit names are listed (Docker's list also carries i386 and
 *   arm names such as chown32); the compiler kills foreign ABIs outright.
 * @module
 */
import { InvalidArgumentError } from '../../errors';
import { CAPABILITY_NAMES } from '../../process/spawn';
import { type SeccompTargetArch, archInfo, hostSeccompArch } from './arch';
import { internProfile } from './compile';
import type { LinuxSeccomp, LinuxSyscall } from './types';

/** Options for {@link defaultSeccompProfile}. */
export interface DefaultSeccompProfileOptions {
  /**
   * The container's capabilities (its bounding set), as `CAP_SYS_ADMIN` or
   * `SYS_ADMIN`: each unlocks the syscalls it governs.
   */
  capabilities: readonly string[];
  /** The architecture the profile is for. Default: this process's. */
  arch?: SeccompTargetArch;
}

/** The 14 capabilities Docker gives a container by default. */
export const DOCKER_DEFAULT_CAPABILITIES: readonly string[] = Object.freeze([
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
]);

/** Syscalls every container may make (on either architecture; each profile keeps its own). */
const ALLOWED: Readonly<Record<string, string>> = {
  files: `access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat fchmodat2 chown fchown
    fchownat lchown umask creat open openat openat2 name_to_handle_at close close_range dup dup2 dup3
    fcntl flock pipe pipe2 read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
    lseek sendfile splice tee vmsplice copy_file_range fsync fdatasync sync syncfs sync_file_range
    fallocate fadvise64 readahead cachestat truncate ftruncate stat fstat lstat newfstatat statx
    statfs fstatfs getdents getdents64 mkdir mkdirat mknod mknodat rmdir rename renameat renameat2
    link linkat symlink symlinkat unlink unlinkat readlink readlinkat utime utimes utimensat
    futimesat ioctl statmount listmount`,
  xattrs: `getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat listxattr
    llistxattr flistxattr listxattrat removexattr lremovexattr fremovexattr removexattrat`,
  events: `select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait
    epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 timerfd_create
    timerfd_settime timerfd_gettime inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
    fanotify_mark io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents`,
  memory: `brk mmap munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall munlock
    munlockall membarrier memfd_create memfd_secret remap_file_pages pkey_alloc pkey_free
    pkey_mprotect mseal map_shadow_stack`,
  processes: `fork vfork execve execveat exit exit_group wait4 waitid kill tkill tgkill getpid getppid
    gettid getpgid setpgid getpgrp getsid setsid set_tid_address set_robust_list get_robust_list rseq
    prctl get_thread_area set_thread_area seccomp capget capset restart_syscall pidfd_open
    pidfd_send_signal process_mrelease ptrace process_vm_readv process_vm_writev landlock_create_ruleset
    landlock_add_rule landlock_restrict_self futex futex_waitv futex_wake futex_wait futex_requeue`,
  scheduling: `getcpu getpriority setpriority ioprio_get ioprio_set sched_yield sched_getaffinity
    sched_setaffinity sched_getattr sched_setattr sched_getparam sched_setparam sched_getscheduler
    sched_setscheduler sched_get_priority_max sched_get_priority_min sched_rr_get_interval`,
  limits: `getrlimit setrlimit prlimit64 getrusage sysinfo uname getrandom`,
  credentials: `getuid geteuid getgid getegid getresuid getresgid getgroups setuid setgid setreuid
    setregid setresuid setresgid setfsuid setfsgid setgroups`,
  signals: `rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend rt_sigtimedwait
    rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack pause alarm`,
  time: `time gettimeofday clock_gettime clock_getres clock_nanosleep nanosleep clock_adjtime adjtimex
    getitimer setitimer timer_create timer_delete timer_gettime timer_settime timer_getoverrun times`,
  ipc: `msgget msgsnd msgrcv msgctl semget semop semtimedop semctl shmget shmat shmdt shmctl mq_open
    mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr`,
  network: `socketpair bind connect listen accept accept4 getsockname getpeername getsockopt setsockopt
    sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown`,
};

/** Allowed on one architecture only. */
const ALLOWED_ON: Readonly<Record<SeccompTargetArch, string>> = {
  x64: 'arch_prctl modify_ldt uretprobe',
  arm64: '',
};

/** What each capability unlocks. */
const BY_CAPABILITY: Readonly<Record<string, string>> = {
  SYS_ADMIN: `bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
    lsm_get_self_attr lsm_set_self_attr lsm_list_modules mount mount_setattr move_mount open_tree
    perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog umount2 unshare`,
  DAC_READ_SEARCH: 'open_by_handle_at',
  SYS_BOOT: 'reboot',
  SYS_CHROOT: 'chroot',
  SYS_MODULE: 'init_module finit_module delete_module',
  SYS_PACCT: 'acct',
  SYS_PTRACE: 'kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace',
  SYS_RAWIO: 'iopl ioperm',
  SYS_TIME: 'settimeofday clock_settime',
  SYS_TTY_CONFIG: 'vhangup',
  SYS_NICE: 'get_mempolicy mbind set_mempolicy set_mempolicy_home_node',
  SYSLOG: 'syslog',
  BPF: 'bpf',
  PERFMON: 'perf_event_open',
};

/** personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (a query). */
const PERSONAS = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];
const AF_VSOCK = 40;
/** CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET. */
const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
const ENOSYS = 38;
const EPERM = 1;

const words = (text: string) => text.split(/\s+/).filter(Boolean);

function normalizeCapability(name: string): string {
  const bare = String(name).toUpperCase().replace(/^CAP_/, '');
  if (!(CAPABILITY_NAMES as readonly string[]).includes(bare)) throw new InvalidArgumentError(`unknown capability '${name}'`);
  return bare;
}

function build(arch: SeccompTargetArch, caps: ReadonlySet<string>): LinuxSeccomp {
  const table = archInfo(arch).table;
  const here = (names: Iterable<string>) => [...new Set(names)].filter((n) => Object.hasOwn(table, n)).sort();
  const syscalls: LinuxSyscall[] = [];
  const allow = (names: Iterable<string>) => {
    const list = here(names);
    if (list.length > 0) syscalls.push({ names: list, action: 'SCMP_ACT_ALLOW' });
  };
  allow([...Object.values(ALLOWED).flatMap(words), ...words(ALLOWED_ON[arch])]);
  for (const value of PERSONAS) {
    syscalls.push({ names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }] });
  }
  syscalls.push({ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: AF_VSOCK, op: 'SCMP_CMP_NE' }] });
  for (const [cap, names] of Object.entries(BY_CAPABILITY)) if (caps.has(cap)) allow(words(names));
  if (!caps.has('SYS_ADMIN')) {
    // clone(flags, ...) takes its flags first on x86_64 and arm64 (s390 would be index 1).
    syscalls.push({
      names: ['clone'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
    });
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  }
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures: [archInfo(arch).specName],
    syscalls,
  };
}

const profiles = new Map<string, LinuxSeccomp>();

/**
 * The default seccomp profile for a container with the given capabilities,
 * equal in effect to Docker's default profile: an allowlist with ERRNO(EPERM)
 * for everything else, where capabilities unlock the syscalls they govern.
 *
 * Equal inputs return the same deep-frozen object, so compiling it again
 * with {@link compileSeccomp} is a cache lookup.
 *
 * @example
 * const profile = defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES })
 * await spawn({ argv: ['sh'], seccomp: compileSeccomp(profile) })
 */
export function defaultSeccompProfile(options: DefaultSeccompProfileOptions): LinuxSeccomp {
  if (!options || !Array.isArray(options.capabilities)) {
    throw new InvalidArgumentError('defaultSeccompProfile needs capabilities: an array of capability names');
  }
  const arch = options.arch ?? hostSeccompArch();
  archInfo(arch); // validates
  // Only the capabilities that unlock something tell profiles apart.
  const caps = new Set(options.capabilities.map(normalizeCapability).filter((c) => Object.hasOwn(BY_CAPABILITY, c)));
  const key = `${arch}:${[...caps].sort().join(',')}`;
  let profile = profiles.get(key);
  if (!profile) {
    profile = internProfile(build(arch, caps));
    profiles.set(key, profile);
  }
  return profile;
}
