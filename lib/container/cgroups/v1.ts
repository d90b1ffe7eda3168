/**
 * cgroup v1 controller files: limits, statistics, cpuset setup and the freezer.
 * Each function takes the directory of one controller's hierarchy.
 * @module
 * @internal
 */
import { join } from 'node:path';
import { TimeoutError } from '../../errors';
import { parseKeyed, parseNumber, readCgroupFile, readOptional, readOptionalSync, sleep, writeCgroupFile } from './files';
import type { CgroupCpuStats, CgroupLimits, CgroupMemoryStats } from './limits';

/** v1 reports "no limit" as the largest page-aligned long; anything this big is unlimited. */
const V1_UNLIMITED = 2 ** 62;

/** USER_HZ: the unit of cpuacct.stat, fixed at 100 on every Linux ABI. */
const USER_HZ = 100;

/** memory.limit_in_bytes and memory.memsw.limit_in_bytes, in the order the kernel accepts (memsw ≥ memory at all times). */
export async function applyMemoryV1(dir: string, limits: CgroupLimits): Promise<void> {
  const memFile = join(dir, 'memory.limit_in_bytes');
  const swapFile = join(dir, 'memory.memsw.limit_in_bytes');
  const hasSwapFile = limits.memorySwap !== undefined && (await readOptional(swapFile)) !== null;
  if (!hasSwapFile || limits.memorySwap === undefined) {
    if (limits.memory !== undefined) await writeCgroupFile(memFile, String(limits.memory));
    return;
  }
  if (limits.memory === undefined) {
    await writeCgroupFile(swapFile, String(limits.memorySwap));
    return;
  }
  // Raising: memsw first, so it is never below the memory limit; lowering: memory first.
  const current = parseNumber(await readCgroupFile(memFile)) ?? Number.MAX_SAFE_INTEGER;
  const newSwap = limits.memorySwap === -1 ? Number.POSITIVE_INFINITY : limits.memorySwap;
  if (newSwap >= current) {
    await writeCgroupFile(swapFile, String(limits.memorySwap));
    await writeCgroupFile(memFile, String(limits.memory));
  } else {
    await writeCgroupFile(memFile, String(limits.memory));
    await writeCgroupFile(swapFile, String(limits.memorySwap));
  }
}

/** cpu.shares, cpu.cfs_period_us and cpu.cfs_quota_us. */
export async function applyCpuV1(dir: string, limits: CgroupLimits): Promise<void> {
  if (limits.cpuShares !== undefined) await writeCgroupFile(join(dir, 'cpu.shares'), String(limits.cpuShares));
  if (limits.cpuPeriod !== undefined) await writeCgroupFile(join(dir, 'cpu.cfs_period_us'), String(limits.cpuPeriod));
  if (limits.cpuQuota !== undefined) await writeCgroupFile(join(dir, 'cpu.cfs_quota_us'), String(limits.cpuQuota));
}

/**
 * Gives a new v1 cpuset cgroup the CPUs and memory nodes of its parent. A v1
 * cpuset starts empty unless the parent's cgroup.clone_children is 1, and a
 * process cannot join an empty one (ENOSPC).
 */
export async function inheritCpusetV1(parentDir: string, dir: string): Promise<void> {
  for (const file of ['cpuset.cpus', 'cpuset.mems']) {
    const mine = await readCgroupFile(join(dir, file));
    if (mine !== '') continue;
    const parent = await readCgroupFile(join(parentDir, file));
    await writeCgroupFile(join(dir, file), parent);
  }
}

/** memory.* usage, limit, peak and OOM kills. */
export async function readMemoryV1(dir: string): Promise<CgroupMemoryStats> {
  const [usage, limit, peak, oom] = await Promise.all([
    readOptional(join(dir, 'memory.usage_in_bytes')),
    readOptional(join(dir, 'memory.limit_in_bytes')),
    readOptional(join(dir, 'memory.max_usage_in_bytes')),
    readOptional(join(dir, 'memory.oom_control')),
  ]);
  const limitBytes = parseNumber(limit);
  return {
    usage: parseNumber(usage) ?? 0,
    limit: limitBytes === null || limitBytes >= V1_UNLIMITED ? null : limitBytes,
    peak: parseNumber(peak),
    oomKills: parseKeyed(oom).get('oom_kill') ?? 0,
  };
}

/** The OOM kill count from memory.oom_control (kernel 4.13+). */
export async function readOomKillsV1(dir: string): Promise<number> {
  return parseKeyed(readOptionalSync(join(dir, 'memory.oom_control'))).get('oom_kill') ?? 0;
}

/** cpuacct.usage (ns) and cpuacct.stat (USER_HZ ticks). */
export async function readCpuV1(dir: string): Promise<CgroupCpuStats> {
  const [usage, stat] = await Promise.all([readOptional(join(dir, 'cpuacct.usage')), readOptional(join(dir, 'cpuacct.stat'))]);
  const ticks = parseKeyed(stat);
  const nsPerTick = 1e9 / USER_HZ;
  return {
    usageNs: parseNumber(usage) ?? 0,
    userNs: (ticks.get('user') ?? 0) * nsPerTick,
    systemNs: (ticks.get('system') ?? 0) * nsPerTick,
  };
}

/** freezer.state: THAWED, FREEZING or FROZEN. */
export async function freezerStateV1(dir: string): Promise<string> {
  return readCgroupFile(join(dir, 'freezer.state'));
}

/**
 * Writes `state` to freezer.state and polls until it reads back. FREEZING
 * can stall while a task is in an uninterruptible sleep, so the write is
 * repeated now and then, as runc does; on timeout the cgroup is thawed again
 * so it is not left half frozen.
 */
export async function setFreezerV1(dir: string, state: 'FROZEN' | 'THAWED', timeoutMs: number): Promise<void> {
  const file = join(dir, 'freezer.state');
  const deadline = Date.now() + timeoutMs;
  await writeCgroupFile(file, state);
  for (let round = 1; ; round++) {
    const now = await readCgroupFile(file);
    if (now === state) return;
    if (Date.now() > deadline) {
      if (state === 'FROZEN') await writeCgroupFile(file, 'THAWED').catch(() => undefined);
      throw new TimeoutError(`${file} still reads ${now}, not ${state}, after ${timeoutMs} ms`);
    }
    await sleep(Math.min(2 * round, 20));
    if (round % 25 === 0) await writeCgroupFile(file, state);
  }
}
