/**
 * The resource limits and statistics of a cgroup, independent of cgroup
 * version, and the checks done before anything is written.
 * @module
 */
import { InvalidArgumentError } from '../../errors';

/**
 * Resource limits. Omitted fields are left as they are (a new cgroup
 * inherits no limits: unlimited memory and pids, the default CPU share and
 * period). `-1` means unlimited wherever a number can be.
 */
export interface CgroupLimits {
  /** Memory limit in bytes (v1 memory.limit_in_bytes, v2 memory.max); -1 unlimited. */
  memory?: number;
  /**
   * Memory plus swap in bytes, as Docker's `--memory-swap`; -1 unlimited.
   * Must be at least {@link CgroupLimits.memory}; equal means no swap.
   * Ignored where the kernel has no swap accounting (no memsw/swap.max file).
   */
  memorySwap?: number;
  /** Relative CPU weight, 2–262144 (v1 cpu.shares; converted to v2 cpu.weight as runc does). */
  cpuShares?: number;
  /** CPU time allowed per period, in µs (cfs quota); -1 unlimited. */
  cpuQuota?: number;
  /** Length of the CPU period in µs; the kernel's default (and a new cgroup's) is 100000. */
  cpuPeriod?: number;
  /** CPUs the processes may run on, in the kernel's list format (`0-2,4`). */
  cpusetCpus?: string;
  /** Most processes and threads at once (pids.max); -1 (or 0, as Docker) unlimited. */
  pids?: number;
}

/** Memory figures of a cgroup. */
export interface CgroupMemoryStats {
  /** Bytes charged now, page cache included. */
  usage: number;
  /** The limit in bytes, or null when unlimited. */
  limit: number | null;
  /** The highest usage seen, or null when the kernel does not track it. */
  peak: number | null;
  /** How many processes the OOM killer killed in this cgroup. */
  oomKills: number;
}

/** CPU time used by a cgroup's processes, alive and exited. */
export interface CgroupCpuStats {
  /** Total CPU time in ns. */
  usageNs: number;
  /** CPU time in user mode, in ns (v1: 10 ms resolution). */
  userNs: number;
  /** CPU time in kernel mode, in ns (v1: 10 ms resolution). */
  systemNs: number;
}

/** Process counts of a cgroup. */
export interface CgroupPidsStats {
  /** Processes and threads now. */
  current: number;
  /** pids.max, or null when unlimited. */
  limit: number | null;
}

/** A snapshot of a cgroup's resource use. Figures a host cannot provide read as 0 or null. */
export interface CgroupStats {
  /** Memory use and limit. */
  memory: CgroupMemoryStats;
  /** CPU time used. */
  cpu: CgroupCpuStats;
  /** Process count and limit. */
  pids: CgroupPidsStats;
}

function checkInteger(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER, allowMinusOne = false): void {
  if (!Number.isSafeInteger(value) || ((value < min || value > max) && !(allowMinusOne && value === -1))) {
    const range = `${allowMinusOne ? '-1 or ' : ''}an integer from ${min}${max === Number.MAX_SAFE_INTEGER ? '' : ` to ${max}`}`;
    throw new InvalidArgumentError(`cgroup limit ${name} must be ${range}, got ${String(value)}`);
  }
}

/**
 * Checks limits before anything is written: types, ranges and the
 * memory/memorySwap relation. Values the kernel judges (a cpuset outside the
 * parent's, a quota under 1 ms) are left to the kernel.
 * @throws InvalidArgumentError naming the field
 * @internal
 */
export function validateLimits(limits: CgroupLimits): void {
  if (limits.memory !== undefined) checkInteger('memory', limits.memory, 1, Number.MAX_SAFE_INTEGER, true);
  if (limits.memorySwap !== undefined) {
    checkInteger('memorySwap', limits.memorySwap, 1, Number.MAX_SAFE_INTEGER, true);
    if (limits.memory !== undefined && limits.memorySwap !== -1 && (limits.memory === -1 || limits.memorySwap < limits.memory)) {
      throw new InvalidArgumentError(
        `cgroup limit memorySwap (${limits.memorySwap}) must be -1 or at least memory (${limits.memory}): it counts memory plus swap`,
      );
    }
  }
  if (limits.cpuShares !== undefined) checkInteger('cpuShares', limits.cpuShares, 2, 262144);
  if (limits.cpuQuota !== undefined) checkInteger('cpuQuota', limits.cpuQuota, 1, Number.MAX_SAFE_INTEGER, true);
  if (limits.cpuPeriod !== undefined) checkInteger('cpuPeriod', limits.cpuPeriod, 1);
  if (limits.cpusetCpus !== undefined && (typeof limits.cpusetCpus !== 'string' || !/^[0-9,\-\s]*$/.test(limits.cpusetCpus))) {
    throw new InvalidArgumentError(`cgroup limit cpusetCpus must be a CPU list such as '0-2,4', got '${String(limits.cpusetCpus)}'`);
  }
  if (limits.pids !== undefined) checkInteger('pids', limits.pids, 0, Number.MAX_SAFE_INTEGER, true);
}

/** The controller each limit needs. @internal */
export function controllersFor(limits: CgroupLimits): Map<string, string> {
  const needed = new Map<string, string>();
  if (limits.memory !== undefined) needed.set('memory', 'memory');
  if (limits.memorySwap !== undefined) needed.set('memory', 'memory');
  if (limits.cpuShares !== undefined) needed.set('cpu', 'cpuShares');
  if (limits.cpuQuota !== undefined || limits.cpuPeriod !== undefined) needed.set('cpu', 'cpuQuota/cpuPeriod');
  if (limits.cpusetCpus !== undefined) needed.set('cpuset', 'cpusetCpus');
  if (limits.pids !== undefined) needed.set('pids', 'pids');
  return needed;
}

/** runc's mapping of v1 cpu.shares (2–262144) onto v2 cpu.weight (1–10000). @internal */
export function sharesToWeight(shares: number): number {
  return Math.floor(1 + ((shares - 2) * 9999) / 262142);
}
