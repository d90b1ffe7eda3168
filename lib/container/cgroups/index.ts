/**
 * cgroups for containers, over cgroupfs: v1, v2 and hybrid hosts.
 * @module
 */
export { detectCgroups, parseCgroupHost } from './detect';
export type { CgroupHost, CgroupLayout } from './detect';
export { Cgroup, listCgroups, removeEmptyCgroupParents, CGROUP_PARENT } from './cgroup';
export type { CgroupOptions, CgroupDestroyOptions, CgroupFreezeOptions } from './cgroup';
export type { CgroupLimits, CgroupStats, CgroupMemoryStats, CgroupCpuStats, CgroupPidsStats } from './limits';
