/**
 * Test helper: the meaning of an OCI seccomp profile, computed directly
 * (no BPF), to judge compiled programs against.
 */
import { syscallNumber, type LinuxSeccomp, type SeccompAction, type SeccompTargetArch } from '../../../lib/container/seccomp';
import { AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64, RET, type SeccompData } from './bpf';

export function retFor(action: SeccompAction, errno: number | undefined): number {
  switch (action) {
    case 'SCMP_ACT_ALLOW':
      return RET.ALLOW;
    case 'SCMP_ACT_ERRNO':
      return (RET.ERRNO | (errno ?? 1)) >>> 0;
    case 'SCMP_ACT_TRACE':
      return (RET.TRACE | (errno ?? 1)) >>> 0;
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD':
      return RET.KILL_THREAD;
    case 'SCMP_ACT_KILL_PROCESS':
      return RET.KILL_PROCESS;
    case 'SCMP_ACT_TRAP':
      return RET.TRAP;
    case 'SCMP_ACT_LOG':
      return RET.LOG;
    case 'SCMP_ACT_NOTIFY':
      return RET.USER_NOTIF;
  }
}

const big = (v: number | bigint | undefined) => BigInt(v ?? 0);

/** First rule (in profile order) naming the syscall whose conditions all hold decides; else the default. */
export function referenceDecision(profile: LinuxSeccomp, arch: SeccompTargetArch, data: SeccompData): number {
  const audit = arch === 'x64' ? AUDIT_ARCH_X86_64 : AUDIT_ARCH_AARCH64;
  const fallback = retFor(profile.defaultAction, profile.defaultErrnoRet);
  if (data.arch >>> 0 !== audit) return RET.KILL_PROCESS;
  if (arch === 'x64' && data.nr & 0x40000000) return fallback;
  const args = [0, 1, 2, 3, 4, 5].map((i) => BigInt.asUintN(64, BigInt(data.args?.[i] ?? 0)));
  for (const rule of profile.syscalls ?? []) {
    if (!rule.names.some((n) => syscallNumber(n, arch) === data.nr >>> 0)) continue;
    const holds = (rule.args ?? []).every((c) => {
      const a = args[c.index]!;
      const v = big(c.value);
      switch (c.op) {
        case 'SCMP_CMP_EQ':
          return a === v;
        case 'SCMP_CMP_NE':
          return a !== v;
        case 'SCMP_CMP_LT':
          return a < v;
        case 'SCMP_CMP_LE':
          return a <= v;
        case 'SCMP_CMP_GT':
          return a > v;
        case 'SCMP_CMP_GE':
          return a >= v;
        case 'SCMP_CMP_MASKED_EQ':
          return (a & v) === big(c.valueTwo);
      }
    });
    if (holds) return retFor(rule.action, rule.errnoRet ?? profile.defaultErrnoRet);
  }
  return fallback;
}
