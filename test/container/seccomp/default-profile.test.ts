import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../lib/errors';
import {
  DOCKER_DEFAULT_CAPABILITIES,
  compileSeccomp,
  defaultSeccompProfile,
  syscallNames,
  syscallNumber,
  type SeccompTargetArch,
} from '../../../lib/container/seccomp';
import { AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64, RET, describeRet, errnoRet, runProgram } from './bpf';

const AUDIT: Record<SeccompTargetArch, number> = { x64: AUDIT_ARCH_X86_64, arm64: AUDIT_ARCH_AARCH64 };
const WITH_SYS_ADMIN = [...DOCKER_DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN'];

/** Our decision for a syscall by name, through the compiled program. */
function ours(caps: readonly string[], arch: SeccompTargetArch, name: string, args: readonly (number | bigint)[] = []): number {
  const nr = syscallNumber(name, arch);
  if (nr === undefined) throw new Error(`${name} not on ${arch}`);
  const buf = compileSeccomp(defaultSeccompProfile({ capabilities: caps, arch }), { arch });
  return runProgram(buf, { nr, arch: AUDIT[arch], args }).ret;
}

describe('defaultSeccompProfile', () => {
  it('denies with EPERM by default and allows ordinary syscalls', () => {
    const profile = defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES, arch: 'x64' });
    expect(profile).toMatchObject({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 1, architectures: ['SCMP_ARCH_X86_64'] });
    expect(Object.isFrozen(profile) && Object.isFrozen(profile.syscalls)).toBe(true);
    for (const arch of ['x64', 'arm64'] as const) {
      for (const name of ['read', 'write', 'openat', 'close', 'mmap', 'execve', 'exit_group', 'futex', 'rt_sigaction', 'wait4', 'getdents64', 'chroot', 'statx', 'rseq', 'mseal', 'ptrace']) {
        expect([arch, name, describeRet(ours(DOCKER_DEFAULT_CAPABILITIES, arch, name))]).toEqual([arch, name, 'allow']);
      }
    }
  });

  it('denies what a default container must not do, on both architectures', () => {
    const denied = ['keyctl', 'add_key', 'request_key', 'kexec_load', 'kexec_file_load', 'mount', 'umount2', 'unshare', 'setns',
      'pivot_root', 'bpf', 'open_by_handle_at', 'swapon', 'swapoff', 'reboot', 'init_module', 'finit_module', 'delete_module',
      'userfaultfd', 'io_uring_setup', 'perf_event_open', 'fsopen', 'move_mount', 'open_tree', 'settimeofday', 'clock_settime',
      'acct', 'vhangup', 'mbind', 'set_mempolicy', 'syslog', 'kcmp', 'pidfd_getfd', 'lsm_set_self_attr', 'sethostname',
      'quotactl', 'lookup_dcookie', 'move_pages', 'migrate_pages', 'open_tree_attr', 'listns', 'file_setattr'];
    for (const arch of ['x64', 'arm64'] as const) {
      for (const name of denied) expect([arch, name, describeRet(ours(DOCKER_DEFAULT_CAPABILITIES, arch, name))]).toEqual([arch, name, 'errno 1']);
    }
    for (const name of ['iopl', 'ioperm', 'modify_ldt']) {
      expect([name, describeRet(ours(DOCKER_DEFAULT_CAPABILITIES, 'x64', name))]).toEqual([name, name === 'modify_ldt' ? 'allow' : 'errno 1']);
    }
  });

  it('checks personality, socket and clone arguments; clone3 gets ENOSYS so libc falls back to clone', () => {
    const caps = DOCKER_DEFAULT_CAPABILITIES;
    for (const arch of ['x64', 'arm64'] as const) {
      for (const persona of [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]) expect(ours(caps, arch, 'personality', [persona])).toBe(RET.ALLOW);
      for (const persona of [0x0040000 /* ADDR_NO_RANDOMIZE */, 0x1, 0xffffffff00000000n, 0x1_0000_0000n]) {
        expect(ours(caps, arch, 'personality', [persona])).toBe(errnoRet(1));
      }
      expect(ours(caps, arch, 'socket', [2 /* AF_INET */, 1])).toBe(RET.ALLOW);
      expect(ours(caps, arch, 'socket', [40 /* AF_VSOCK */, 1])).toBe(errnoRet(1));
      const SIGCHLD = 17;
      const CLONE_THREAD_FLAGS = 0x3d0f00; // what pthread_create passes
      expect(ours(caps, arch, 'clone', [SIGCHLD])).toBe(RET.ALLOW);
      expect(ours(caps, arch, 'clone', [CLONE_THREAD_FLAGS])).toBe(RET.ALLOW);
      expect(ours(caps, arch, 'clone', [0xffffffff00000000n | BigInt(SIGCHLD)])).toBe(RET.ALLOW); // the high word is not flags
      for (const ns of [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]) {
        expect(ours(caps, arch, 'clone', [ns | SIGCHLD])).toBe(errnoRet(1));
      }
      expect(ours(caps, arch, 'clone', [0x80000000 /* CLONE_IO */ | SIGCHLD])).toBe(RET.ALLOW);
      expect(ours(caps, arch, 'clone3', [0, 88])).toBe(errnoRet(38));
      // With CAP_SYS_ADMIN: any flags, clone3 itself, and the mount and namespace calls.
      expect(ours(WITH_SYS_ADMIN, arch, 'clone', [0x10000000 | SIGCHLD])).toBe(RET.ALLOW);
      for (const name of ['clone3', 'mount', 'umount2', 'unshare', 'setns', 'bpf', 'fsopen', 'sethostname', 'syslog', 'quotactl_fd', 'lsm_get_self_attr']) {
        expect([name, describeRet(ours(WITH_SYS_ADMIN, arch, name))]).toEqual([name, 'allow']);
      }
      for (const name of ['keyctl', 'pivot_root', 'kexec_load', 'reboot']) expect(ours(WITH_SYS_ADMIN, arch, name)).toBe(errnoRet(1));
    }
  });

  it('unlocks what each capability governs', () => {
    const grants: Record<string, string[]> = {
      CAP_SYS_BOOT: ['reboot'],
      CAP_SYS_MODULE: ['init_module', 'finit_module', 'delete_module'],
      CAP_SYS_PACCT: ['acct'],
      CAP_SYS_PTRACE: ['kcmp', 'pidfd_getfd', 'process_madvise', 'process_vm_readv', 'ptrace'],
      CAP_SYS_RAWIO: ['iopl', 'ioperm'],
      CAP_SYS_TIME: ['settimeofday', 'clock_settime'],
      CAP_SYS_TTY_CONFIG: ['vhangup'],
      CAP_SYS_NICE: ['get_mempolicy', 'mbind', 'set_mempolicy', 'set_mempolicy_home_node'],
      CAP_SYSLOG: ['syslog'],
      CAP_BPF: ['bpf'],
      PERFMON: ['perf_event_open'],
      dac_read_search: ['open_by_handle_at'],
    };
    for (const [cap, names] of Object.entries(grants)) {
      for (const name of names) {
        expect([cap, name, describeRet(ours([cap], 'x64', name))]).toEqual([cap, name, 'allow']);
      }
    }
    expect(ours([], 'x64', 'chroot')).toBe(errnoRet(1));
    expect(() => defaultSeccompProfile({ capabilities: ['CAP_TELEPORT'] })).toThrow(InvalidArgumentError);
  });
});

// ---------------------------------------------------------------------------
// Peer comparison: podman's default profile (containers-common), evaluated
// from its own Docker-format JSON, against ours for every x86_64 syscall.

interface DockerFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}
interface DockerRule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[] | null;
  includes?: DockerFilter;
  excludes?: DockerFilter;
}
interface DockerProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  syscalls: DockerRule[];
}

const PODMAN_PROFILE = '/usr/share/containers/seccomp.json';

function kernelAtLeast(version: string): boolean {
  const [a = 0, b = 0] = release().split('.').map((x) => parseInt(x, 10));
  const [c = 0, d = 0] = version.split('.').map((x) => parseInt(x, 10));
  return a > c || (a === c && b >= d);
}

/**
 * The decision of a Docker-format profile, as moby/containers-common resolve
 * it for a container: a rule applies when every `includes` cap is held, no
 * `excludes` cap is, the arch filters admit amd64 and minKernel is met; the
 * first applying rule naming the syscall whose arguments match decides.
 */
function dockerDecision(profile: DockerProfile, caps: ReadonlySet<string>, name: string, args: readonly number[]): number {
  const value = (action: string, errno: number | undefined) =>
    action === 'SCMP_ACT_ALLOW' ? RET.ALLOW : action === 'SCMP_ACT_ERRNO' ? errnoRet(errno ?? profile.defaultErrnoRet ?? 1) : -1;
  for (const rule of profile.syscalls) {
    if (!rule.names.includes(name)) continue;
    const inc = rule.includes ?? {};
    const exc = rule.excludes ?? {};
    if (inc.caps?.some((c) => !caps.has(c))) continue;
    if (exc.caps?.some((c) => caps.has(c))) continue;
    if (inc.arches?.length && !inc.arches.includes('amd64')) continue;
    if (exc.arches?.includes('amd64')) continue;
    if (inc.minKernel && !kernelAtLeast(inc.minKernel)) continue;
    const holds = (rule.args ?? []).every((c) => {
      const a = BigInt(args[c.index] ?? 0);
      const v = BigInt(c.value);
      const ops: Record<string, boolean> = {
        SCMP_CMP_EQ: a === v, SCMP_CMP_NE: a !== v, SCMP_CMP_LT: a < v, SCMP_CMP_LE: a <= v, SCMP_CMP_GT: a > v, SCMP_CMP_GE: a >= v,
        SCMP_CMP_MASKED_EQ: (a & v) === BigInt(c.valueTwo ?? 0),
      };
      return ops[c.op] ?? false;
    });
    if (holds) return value(rule.action, rule.errnoRet);
  }
  return value(profile.defaultAction, undefined);
}

/**
 * Where we and podman's profile (containers-common 0.50, late 2022) decide
 * differently, and why. Ours follows Docker's current profile; podman's file
 * deliberately allows more (it relies on user namespaces and capabilities
 * rather than seccomp for mount/unshare), and predates syscalls from 2023 on.
 */
const EXPLAINED: Record<string, { names: string[]; reason: string; sets: readonly ('default' | 'sysadmin')[] }> = {
  podmanAllowsNamespaceAndMountCalls: {
    names: ['clone3', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'mount', 'mount_setattr', 'move_mount', 'open_tree', 'umount2', 'unshare', 'syslog'],
    reason: 'podman allows the mount API, unshare, clone3 and syslog to every container; Docker (and we) only with CAP_SYS_ADMIN (syslog also with CAP_SYSLOG), and clone3 gets ENOSYS so that namespace flags are checked on clone',
    sets: ['default'],
  },
  podmanShadowsItsOwnSetnsRule: {
    names: ['setns'],
    reason: 'podman lists setns in its allowlist and again, later, as EPERM without CAP_SYS_ADMIN; the first (allow) wins, read in order as here and in libseccomp, which keeps the first unconditional rule for a syscall',
    sets: ['default'],
  },
  podmanAllowsMore: {
    names: ['keyctl', 'pivot_root', 'reboot', 'pidfd_getfd', 'get_mempolicy', 'mbind', 'set_mempolicy'],
    reason: 'podman allows these unconditionally; Docker denies keyctl and pivot_root outright and gates the rest on CAP_SYS_BOOT, CAP_SYS_PTRACE and CAP_SYS_NICE',
    sets: ['default', 'sysadmin'],
  },
  podmanDeniesExplicitly: {
    names: ['io_pgetevents', 'vmsplice'],
    reason: 'podman lists them among its EPERM syscalls; Docker allows both (vmsplice like splice and tee, io_pgetevents like io_getevents)',
    sets: ['default', 'sysadmin'],
  },
  newerThanPodmansFile: {
    names: ['futex_waitv', 'cachestat', 'fchmodat2', 'map_shadow_stack', 'futex_wake', 'futex_wait', 'futex_requeue', 'statmount',
      'listmount', 'mseal', 'setxattrat', 'getxattrat', 'listxattrat', 'removexattrat', 'uretprobe'],
    reason: "added to Docker's allowlist after podman's 2022 file was written (kernels 5.16 to 6.13)",
    sets: ['default', 'sysadmin'],
  },
  newerSysAdminCalls: {
    names: ['quotactl_fd', 'lsm_get_self_attr', 'lsm_set_self_attr', 'lsm_list_modules'],
    reason: "Docker allows these with CAP_SYS_ADMIN; podman's file does not list them",
    sets: ['sysadmin'],
  },
};

describe('peer comparison with podman\'s default profile', () => {
  it.skipIf(!existsSync(PODMAN_PROFILE))('agrees on every x86_64 syscall except a few explained differences', () => {
    const podman = JSON.parse(readFileSync(PODMAN_PROFILE, 'utf8')) as DockerProfile;
    const names = syscallNames('x64');
    const table: string[] = [];
    const sets = [['default', 'default caps', DOCKER_DEFAULT_CAPABILITIES], ['sysadmin', 'default caps + SYS_ADMIN', WITH_SYS_ADMIN]] as const;
    for (const [set, label, caps] of sets) {
      const capSet = new Set(caps);
      const disagree: string[] = [];
      const byKind = new Map<string, string[]>();
      let errnoOnly = 0;
      for (const name of names) {
        const theirs = dockerDecision(podman, capSet, name, [0, 0, 0, 0, 0, 0]);
        const mine = ours(caps, 'x64', name, [0, 0, 0, 0, 0, 0]);
        if ((theirs === RET.ALLOW) !== (mine === RET.ALLOW)) {
          disagree.push(name);
          const key = `  ${label}: podman ${describeRet(theirs)}, ours ${describeRet(mine)}:`;
          byKind.set(key, [...(byKind.get(key) ?? []), name]);
        } else if (theirs !== mine) {
          errnoOnly++; // both deny; podman's default errno is ENOSYS, Docker's (and ours) EPERM
          expect([name, describeRet(theirs), describeRet(mine)]).toEqual([name, 'errno 38', 'errno 1']);
        }
      }
      const expected = Object.values(EXPLAINED)
        .filter((e) => e.sets.includes(set))
        .flatMap((e) => e.names);
      expect([label, disagree.sort()]).toEqual([label, expected.sort()]);
      table.push(`${label}: ${disagree.length} allow/deny differences, ${errnoOnly} denied by both (ENOSYS there, EPERM here)`);
      for (const [key, list] of byKind) table.push(`${key} ${list.join(' ')}`);
    }
    console.log(`[seccomp] podman (${PODMAN_PROFILE}) vs ours, x86_64:\n${table.join('\n')}`);
  });
});
