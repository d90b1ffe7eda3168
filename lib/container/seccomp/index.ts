/**
 * seccomp for containers: the OCI profile format, a compiler from profiles
 * to classic BPF (no libseccomp), and a default profile equal in effect to
 * Docker's.
 *
 * @example
 * import { compileSeccomp, defaultSeccompProfile, DOCKER_DEFAULT_CAPABILITIES } from './container/seccomp'
 * const seccomp = compileSeccomp(defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES }))
 * await spawn({ argv: ['sh'], env: { PATH: '/usr/bin:/bin' }, seccomp })
 * @module
 */
export { compileSeccomp, SECCOMP_MAX_INSTRUCTIONS } from './compile';
export type { CompileSeccompOptions } from './compile';
export { defaultSeccompProfile, DOCKER_DEFAULT_CAPABILITIES } from './default-profile';
export type { DefaultSeccompProfileOptions } from './default-profile';
export { syscallNumber, syscallNames, hostSeccompArch } from './arch';
export type { SeccompTargetArch } from './arch';
export type {
  LinuxSeccomp,
  LinuxSyscall,
  LinuxSeccompArg,
  SeccompAction,
  SeccompOperator,
  SeccompArchitecture,
  SeccompFilterFlag,
} from './types';
