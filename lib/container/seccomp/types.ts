/**
 * The seccomp section of the OCI runtime spec (config.json `linux.seccomp`),
 * as TypeScript types. Field names and string values are the spec's, so a
 * profile read from JSON can be used as it is.
 * @module
 */

/**
 * What the kernel does with a matching syscall.
 * `SCMP_ACT_KILL` is the spec's old name for `SCMP_ACT_KILL_THREAD`.
 */
export type SeccompAction =
  | 'SCMP_ACT_KILL'
  | 'SCMP_ACT_KILL_PROCESS'
  | 'SCMP_ACT_KILL_THREAD'
  | 'SCMP_ACT_TRAP'
  | 'SCMP_ACT_ERRNO'
  | 'SCMP_ACT_TRACE'
  | 'SCMP_ACT_ALLOW'
  | 'SCMP_ACT_LOG'
  | 'SCMP_ACT_NOTIFY';

/**
 * How a syscall argument is compared with {@link LinuxSeccompArg.value}, as
 * unsigned 64-bit integers. `SCMP_CMP_MASKED_EQ` is `(arg & value) == valueTwo`.
 */
export type SeccompOperator =
  | 'SCMP_CMP_NE'
  | 'SCMP_CMP_LT'
  | 'SCMP_CMP_LE'
  | 'SCMP_CMP_EQ'
  | 'SCMP_CMP_GE'
  | 'SCMP_CMP_GT'
  | 'SCMP_CMP_MASKED_EQ';

/** An architecture name as the runtime spec spells it (libseccomp's `SCMP_ARCH_*`). */
export type SeccompArchitecture =
  | 'SCMP_ARCH_X86'
  | 'SCMP_ARCH_X86_64'
  | 'SCMP_ARCH_X32'
  | 'SCMP_ARCH_ARM'
  | 'SCMP_ARCH_AARCH64'
  | 'SCMP_ARCH_MIPS'
  | 'SCMP_ARCH_MIPS64'
  | 'SCMP_ARCH_MIPS64N32'
  | 'SCMP_ARCH_MIPSEL'
  | 'SCMP_ARCH_MIPSEL64'
  | 'SCMP_ARCH_MIPSEL64N32'
  | 'SCMP_ARCH_PPC'
  | 'SCMP_ARCH_PPC64'
  | 'SCMP_ARCH_PPC64LE'
  | 'SCMP_ARCH_S390'
  | 'SCMP_ARCH_S390X'
  | 'SCMP_ARCH_PARISC'
  | 'SCMP_ARCH_PARISC64'
  | 'SCMP_ARCH_RISCV64'
  | 'SCMP_ARCH_LOONGARCH64'
  | 'SCMP_ARCH_M68K'
  | 'SCMP_ARCH_SH'
  | 'SCMP_ARCH_SHEB';

/** A flag for seccomp(SECCOMP_SET_MODE_FILTER), by its kernel name. */
export type SeccompFilterFlag =
  | 'SECCOMP_FILTER_FLAG_TSYNC'
  | 'SECCOMP_FILTER_FLAG_LOG'
  | 'SECCOMP_FILTER_FLAG_SPEC_ALLOW'
  | 'SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV';

/** One condition on a syscall argument; all conditions of a rule must hold. */
export interface LinuxSeccompArg {
  /** Which argument, 0 to 5. */
  index: number;
  /** The value compared against (a mask for `SCMP_CMP_MASKED_EQ`); an unsigned 64-bit integer. */
  value: number | bigint;
  /** For `SCMP_CMP_MASKED_EQ` only: what the masked argument must equal. Default 0. */
  valueTwo?: number | bigint;
  /** The comparison. */
  op: SeccompOperator;
}

/** A rule: what to do with some syscalls, optionally only when their arguments match. */
export interface LinuxSyscall {
  /** Syscall names; names the target architecture does not have are skipped. */
  names: readonly string[];
  /** The action when the rule matches. */
  action: SeccompAction;
  /** The errno for `SCMP_ACT_ERRNO` (or the tracer's data for `SCMP_ACT_TRACE`); default: the profile's `defaultErrnoRet`, else EPERM. */
  errnoRet?: number;
  /** Conditions on the arguments, ANDed; none means the rule always matches. */
  args?: readonly LinuxSeccompArg[];
}

/** A seccomp profile: the `linux.seccomp` object of an OCI runtime config. */
export interface LinuxSeccomp {
  /** The action for syscalls no rule matches. */
  defaultAction: SeccompAction;
  /** The errno for a `SCMP_ACT_ERRNO` default action (and for rules without their own). Default EPERM. */
  defaultErrnoRet?: number;
  /** Architectures the profile is meant for; nacelle filters the native one and kills the process on any other. */
  architectures?: readonly SeccompArchitecture[];
  /** Filter flags. nacelle's compiler records them but installs every filter without flags. */
  flags?: readonly SeccompFilterFlag[];
  /** Unix socket a runtime would send the `SCMP_ACT_NOTIFY` listener fd to (not used by nacelle). */
  listenerPath?: string;
  /** Opaque data sent along with the listener fd (not used by nacelle). */
  listenerMetadata?: string;
  /** The rules, tried in order for each syscall: the first one that matches decides. */
  syscalls?: readonly LinuxSyscall[];
}
