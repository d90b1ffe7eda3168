/**
 * cgroup v2 files: enabling controllers, limits, statistics, freezing.
 * @module
 * @internal
 */
import { join } from 'node:path';
import { InvalidArgumentError, TimeoutError } from '../../errors';
import { isErrno, parseKeyed, parseNumber, readCgroupFile, readOptional, readOptionalSync, sleep, writeCgroupFile } from './files';
import { type CgroupCpuStats, type CgroupLimits, type CgroupMemoryStats, sharesToWeight } from './limits';

/** The controllers nacelle uses in the v2 hierarchy. */
export const V2_CONTROLLERS = ['cpu', 'cpuset', 'memory', 'pids'] as const;

/** The words of a space-separated list file such as cgroup.controllers. */
export async function readControllers(dir: string, file: 'cgroup.controllers' | 'cgroup.subtree_control'): Promise<Set<string>> {
  const text = await readOptional(join(dir, file));
  return new Set((text ?? '').split(/\s+/).filter((w) => w.length > 0));
}

/**
 * Enables `wanted` controllers for the children of `dir` through its
 * cgroup.subtree_control, one at a time so one refusal does not block the
 * others. Returns why each controller that is not enabled afterwards is not.
 *
 * The usual refusal is EBUSY from the "no internal processes" rule: a
 * non-root v2 cgroup that holds processes cannot hand domain controllers to
 * children. nacelle never moves the caller out of its own cgroup to get
 * around it; the controller is reported as unavailable instead.
 */
export async function enableControllers(dir: string, wanted: readonly string[]): Promise<Map<string, string>> {
  const failures = new Map<string, string>();
  const available = await readControllers(dir, 'cgroup.controllers');
  const enabled = await readControllers(dir, 'cgroup.subtree_control');
  for (const controller of wanted) {
    if (enabled.has(controller)) continue;
    if (!available.has(controller)) {
      failures.set(controller, `the ${controller} controller is not in ${join(dir, 'cgroup.controllers')} (not delegated to this cgroup)`);
      continue;
    }
    try {
      await writeCgroupFile(join(dir, 'cgroup.subtree_control'), `+${controller}`);
    } catch (err) {
      const why = isErrno(err, 'EBUSY')
        ? ` (${dir} holds processes, and cgroup v2 enables controllers only below cgroups without processes; ` +
          'run this process in a leaf cgroup of its own with delegation, e.g. systemd-run --scope -p Delegate=yes)'
        : '';
      failures.set(controller, `${(err as Error).message}${why}`);
    }
  }
  return failures;
}

/** memory.max and memory.swap.max (= memorySwap − memory). */
export async function applyMemoryV2(dir: string, limits: CgroupLimits): Promise<void> {
  if (limits.memory !== undefined) {
    await writeCgroupFile(join(dir, 'memory.max'), limits.memory === -1 ? 'max' : String(limits.memory));
  }
  if (limits.memorySwap === undefined) return;
  const swapFile = join(dir, 'memory.swap.max');
  if ((await readOptional(swapFile)) === null) return; // no swap accounting in this kernel
  if (limits.memorySwap === -1) {
    await writeCgroupFile(swapFile, 'max');
    return;
  }
  const memory = limits.memory ?? parseNumber(await readCgroupFile(join(dir, 'memory.max')));
  if (memory === null || memory === -1) {
    throw new InvalidArgumentError(`memorySwap ${limits.memorySwap} needs a memory limit too (it counts memory plus swap), for ${dir}`);
  }
  if (limits.memorySwap < memory) {
    throw new InvalidArgumentError(`memorySwap (${limits.memorySwap}) must be at least memory (${memory}), for ${dir}`);
  }
  await writeCgroupFile(swapFile, String(limits.memorySwap - memory));
}

/** cpu.weight (from shares) and cpu.max ("quota period"). Omitted halves of cpu.max keep their current value. */
export async function applyCpuV2(dir: string, limits: CgroupLimits): Promise<void> {
  if (limits.cpuShares !== undefined) {
    await writeCgroupFile(join(dir, 'cpu.weight'), String(sharesToWeight(limits.cpuShares)));
  }
  if (limits.cpuQuota === undefined && limits.cpuPeriod === undefined) return;
  const file = join(dir, 'cpu.max');
  const [curQuota, curPeriod] = (await readCgroupFile(file)).split(/\s+/);
  const quota = limits.cpuQuota === undefined ? (curQuota ?? 'max') : limits.cpuQuota === -1 ? 'max' : String(limits.cpuQuota);
  const period = limits.cpuPeriod === undefined ? (curPeriod ?? '100000') : String(limits.cpuPeriod);
  await writeCgroupFile(file, `${quota} ${period}`);
}

/** memory.current, memory.max, memory.peak and the oom_kill count of memory.events. */
export async function readMemoryV2(dir: string): Promise<CgroupMemoryStats> {
  const [current, max, peak, events] = await Promise.all([
    readOptional(join(dir, 'memory.current')),
    readOptional(join(dir, 'memory.max')),
    readOptional(join(dir, 'memory.peak')),
    readOptional(join(dir, 'memory.events')),
  ]);
  return {
    usage: parseNumber(current) ?? 0,
    limit: parseNumber(max),
    peak: parseNumber(peak),
    oomKills: parseKeyed(events).get('oom_kill') ?? 0,
  };
}

/** The oom_kill count of memory.events. */
export async function readOomKillsV2(dir: string): Promise<number> {
  return parseKeyed(readOptionalSync(join(dir, 'memory.events'))).get('oom_kill') ?? 0;
}

/** cpu.stat usage_usec, user_usec and system_usec, in ns (present without the cpu controller too). */
export async function readCpuV2(dir: string): Promise<CgroupCpuStats> {
  const stat = parseKeyed(await readOptional(join(dir, 'cpu.stat')));
  return {
    usageNs: (stat.get('usage_usec') ?? 0) * 1000,
    userNs: (stat.get('user_usec') ?? 0) * 1000,
    systemNs: (stat.get('system_usec') ?? 0) * 1000,
  };
}

/** Whether cgroup.events says `frozen 1`. */
export async function isFrozenV2(dir: string): Promise<boolean> {
  return parseKeyed(await readOptional(join(dir, 'cgroup.events'))).get('frozen') === 1;
}

/** Writes cgroup.freeze and waits for cgroup.events to report the new state. */
export async function setFreezeV2(dir: string, frozen: boolean, timeoutMs: number): Promise<void> {
  const file = join(dir, 'cgroup.freeze');
  const deadline = Date.now() + timeoutMs;
  await writeCgroupFile(file, frozen ? '1' : '0');
  for (let round = 1; ; round++) {
    if ((await isFrozenV2(dir)) === frozen) return;
    if (Date.now() > deadline) {
      if (frozen) await writeCgroupFile(file, '0').catch(() => undefined);
      throw new TimeoutError(`${join(dir, 'cgroup.events')} does not report frozen ${frozen ? 1 : 0} after ${timeoutMs} ms`);
    }
    await sleep(Math.min(2 * round, 20));
  }
}
