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
export { spawn, Process, signalNumber, capabilityNumber, CAPABILITY_NAMES } from './process/spawn';
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
  CapabilitySets,
  TerminalSize,
  ResourceLimit,
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
export { Runtime, defaultRoot } from './runtime';
export type { RuntimeOptions, PruneResult, PruneCount } from './runtime';
export { Image } from './image/image';
export type { HistoryInput } from './image/image';
export { Layer } from './image/layer';
export { ImageService, hostArchitecture, ANNOTATION_INTERMEDIATE } from './image/images';
export type { FromDirectoryOptions, RemoveImageOptions, ListImagesOptions } from './image/images';
export { Snapshotter } from './image/snapshots';
export type { SnapshotInfo } from './image/snapshots';
export type { ArchiveFormat, ExportOptions, ImportOptions } from './image/archive';
export { ContentStore } from './store/content-store';
export { FileLock } from './store/lock';
export type { LockMode } from './store/lock';
export type { ExpectedContent, StoredBlob } from './store/content-store';
export * from './oci/index';
export * from './container/cgroups/index';
export { Container, applyChanges } from './container/container';
export type { ContainerExit, ExecOptions, ExecProcess, CommitOptions, ContainerLogs, AttachedStreams } from './container/container';
export { ContainerService } from './container/containers';
export type { ListContainersOptions } from './container/containers';
export type { ContainerOptions, VolumeOption, TmpfsOption, UlimitOption, UsernsOption } from './container/options';
export { parseBytes } from './container/options';
export type { ContainerState, ContainerStatus } from './container/state';
export * from './container/seccomp/index';
export type * from './oci/runtime-spec';
export { RUNTIME_SPEC_VERSION } from './oci/runtime-spec';
export type { Change, PackOptions, PackResult, ApplyOptions, ApplyResult } from './image/tar/index';
export { packDirectory, applyLayer, diffOverlayUpper, diffTrees, packChanges, LayerError } from './image/tar/index';
export type { LayerErrorCode, LayerErrorOptions } from './image/tar/index';
export { writeBusyboxRootfs, isStaticElf, BUSYBOX_STATIC } from './image/busybox';
export * from './registry/index';
export { DockerfileError, BuildStepError } from './build/types';
export type { BuildOptions, BuildProgress, BuildStepInfo, Instruction, Dockerfile, DockerfileErrorOptions, BuildStepErrorOptions } from './build/types';
export { parseDockerfile, splitStages } from './build/parser';
export type { Stage, StagedDockerfile } from './build/parser';
export { IgnoreMatcher } from './build/dockerignore';
export { findKernel, defaultKernelCache, fetchDebianCloudKernel, readKernelRelease, cachedKernel, type KernelInfo, type FindKernelOptions } from './vm/guest/kernel';
export { buildInitramfs, guestInitPath, resolveGuestUser, encodeGuestConfig, type GuestUser, type GuestConfig, type GuestBootConfig, type InitramfsResult, type BuildInitramfsOptions } from './vm/guest/initramfs';
export { buildDiskBoot, writeErofsImage, type BuildDiskBootOptions, type DiskBootResult, type ErofsResult } from './vm/guest/disk';
export { resolveModules, DEFAULT_GUEST_MODULES, DISK_GUEST_MODULES, type ResolvedModule, type ResolveModulesOptions } from './vm/guest/modules';
export { readExitStatusFile } from './process/spawn';
export { parseDeviceRule, compileDeviceFilter, attachDeviceFilter, deviceFiltersAttached } from './container/cgroups/devices';
export type { DeviceRule } from './container/cgroups/devices';
export { VmService, DISK_THRESHOLD_BYTES } from './vm/vms';
export type { VmRunOptions, VmStateFile } from './vm/vms';
export { VmWorkload, VmFailedError, VmTimeoutError } from './vm/workload';
export type { VmExit, VmExitReason, VmStats, VmStatus, VmTimings } from './vm/workload';
export { QemuMachine, qemuArgs, defaultCmdline, GUEST_CHANNEL_DEVICE } from './vm/qemu';
export type { QemuMachineOptions, QemuDisk, QemuMemory, QemuCpuTime } from './vm/qemu';
export { chooseBackend, findQemu, qemuBinaryName, monitorAvailability, hardwareKvmMissing } from './vm/backend';
export type { VmBackendName, VmBackendChoice, QemuAccel, BackendSelection } from './vm/backend';
export { FrameType, FrameDecoder, encodeFrame, encodeStdin, encodeSignal, decodeExit, encodeExit, PROTOCOL_VERSION, FRAME_HEADER_BYTES, MAX_FRAME_PAYLOAD } from './vm/protocol';
export type { Frame, GuestExit, FrameTypeNumber } from './vm/protocol';
export { writeRootfsArchive } from './vm/guest/initramfs';
export { VirtualMachine, VM_MEMORY_MIN_MIB, VM_MEMORY_MAX_MIB } from './vm/machine';
export type {
  VirtualMachineOptions,
  VirtualMachineExit,
  VirtualMachineEndReason,
  VirtualMachineState,
  VirtualMachineStats,
  VmDiskOptions,
  StopVmOptions,
  RestoreVmOptions,
} from './vm/machine';
export { extractVmlinux, vmlinuxFromBzImage, decodeLz4Legacy } from './vm/guest/vmlinux';
export { KvmMachine, kvmCmdline, kvmKernelImage, KVM_GUEST_CHANNEL_DEVICE, KVM_MACHINE_BINARY } from './vm/kvm-machine';
export type { KvmMachineOptions } from './vm/kvm-machine';
export type { VmMachine, VmMachineEnd, VmMachineMemory, VmMachineCpuTime, VmBootOptions } from './vm/machine-types';
