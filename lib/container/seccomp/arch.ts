/**
 * The architectures nacelle compiles seccomp filters for, and their syscall
 * tables.
 * @module
 */
import { InvalidArgumentError, UnsupportedError } from '../../errors';
import { AARCH64_SYSCALLS, X86_64_SYSCALLS } from './syscalls';
import type { SeccompArchitecture } from './types';

/** A target architecture, in Node's spelling (`process.arch`). */
export type SeccompTargetArch = 'x64' | 'arm64';

/** Per-architecture facts the compiler needs. */
interface ArchInfo {
  table: Readonly<Record<string, number>>;
  /** AUDIT_ARCH_* value the kernel puts in seccomp_data.arch for the native ABI. */
  auditArch: number;
  /** The runtime spec's name for the architecture. */
  specName: SeccompArchitecture;
}

const ARCHES: Readonly<Record<SeccompTargetArch, ArchInfo>> = {
  x64: { table: X86_64_SYSCALLS, auditArch: 0xc000003e, specName: 'SCMP_ARCH_X86_64' },
  arm64: { table: AARCH64_SYSCALLS, auditArch: 0xc00000b7, specName: 'SCMP_ARCH_AARCH64' },
};

/** The architecture this process runs on; throws UnsupportedError elsewhere than x64 and arm64. */
export function hostSeccompArch(): SeccompTargetArch {
  const arch = process.arch;
  if (arch === 'x64' || arch === 'arm64') return arch;
  throw new UnsupportedError(`seccomp filters are compiled for x64 and arm64 only, not ${arch}`);
}

/** @internal */
export function archInfo(arch: SeccompTargetArch | undefined): ArchInfo {
  const name = arch ?? hostSeccompArch();
  const info = (ARCHES as Partial<Record<string, ArchInfo>>)[name];
  if (!info) throw new InvalidArgumentError(`unknown seccomp architecture '${String(name)}' (expected 'x64' or 'arm64')`);
  return info;
}

/**
 * The number of a syscall on an architecture (default: this one), or
 * undefined when the architecture has no such syscall (`open` on arm64).
 *
 * @example
 * syscallNumber('keyctl', 'x64')    // 250
 * syscallNumber('keyctl', 'arm64')  // 219
 */
export function syscallNumber(name: string, arch?: SeccompTargetArch): number | undefined {
  const table = archInfo(arch).table;
  return Object.hasOwn(table, name) ? table[name] : undefined;
}

/** Every syscall name of an architecture (default: this one), in number order. */
export function syscallNames(arch?: SeccompTargetArch): string[] {
  return Object.keys(archInfo(arch).table);
}
