/**
 * nacelle: containers and virtual machines from a Node program, with no daemon.
 * @packageDocumentation
 */
export {
  NacelleError,
  SystemCallError,
  SpawnError,
  InvalidArgumentError,
  NotFoundError,
  ConflictError,
  StateError,
  DigestMismatchError,
  UnsupportedError,
  TimeoutError,
} from './errors';
export type { NacelleErrorOptions, SystemCallErrorOptions } from './errors';
export { spawn, Process, signalNumber } from './process/spawn';
export type {
  SpawnOptions,
  SpawnMountOperation,
  SpawnOperationBase,
  SpawnMountOp,
  SpawnUmountOp,
  SpawnMkdirOp,
  SpawnSymlinkOp,
  SpawnMknodOp,
  SpawnChmodOp,
  SpawnFileOp,
  ProcessUser,
  StdioOption,
  IdMapping,
  ExitStatus,
} from './process/spawn';
export { mount, umount, pivotRoot, mountFlags } from './host/mount';
export type { MountFlag, MountOptions, UmountOptions } from './host/mount';
export { setns, sethostname, namespaceFlag, NAMESPACE_NAMES } from './host/namespace';
export type { NamespaceName } from './host/namespace';
export { probeKvm } from './vm/kvm';
export type { KvmProbe, KvmModules } from './vm/kvm';
