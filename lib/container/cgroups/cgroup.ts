/**
 * A cgroup made for one workload, present in every hierarchy of the host, at
 * `<own cgroup>/nacelle/<id>` where `<own cgroup>` is the calling process's
 * cgroup in that hierarchy. nacelle creates cgroups only below its own and
 * never writes to, or moves processes out of, anything above it.
 * @module
 */
import { rmdirSync } from 'node:fs';
import { mkdir, readdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, InvalidArgumentError, NotFoundError, StateError, TimeoutError, UnsupportedError } from '../../errors';
import { native } from '../../native';
import { type CgroupHost, detectCgroups, ownDirectory } from './detect';
import { fileExists, isErrno, parseNumber, readOptional, sleep, wrapFsError, writeCgroupFile } from './files';
import { type CgroupLimits, type CgroupStats, controllersFor, validateLimits } from './limits';
import { applyCpuV1, applyMemoryV1, freezerStateV1, inheritCpusetV1, readCpuV1, readMemoryV1, readOomKillsV1, setFreezerV1 } from './v1';
import {
  V2_CONTROLLERS,
  applyCpuV2,
  applyMemoryV2,
  enableControllers,
  isFrozenV2,
  readControllers,
  readCpuV2,
  readMemoryV2,
  readOomKillsV2,
  setFreezeV2,
} from './v2';

/** The directory, below each own cgroup, that holds every cgroup nacelle makes. */
export const CGROUP_PARENT = 'nacelle';

/** Options shared by {@link Cgroup.create}, {@link Cgroup.open} and {@link listCgroups}. */
export interface CgroupOptions {
  /** The host layout to use instead of {@link detectCgroups}'s (tests, or a process that knows better). */
  host?: CgroupHost;
}

/** Options of {@link Cgroup.destroy}. */
export interface CgroupDestroyOptions {
  /** How long to retry while the cgroup still has processes (EBUSY), in ms. Default 5000. */
  timeoutMs?: number;
}

/** Options of {@link Cgroup.freeze} and {@link Cgroup.thaw}. */
export interface CgroupFreezeOptions {
  /** How long to wait for the kernel to report the new state, in ms. Default 5000. */
  timeoutMs?: number;
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function checkId(id: string): void {
  if (typeof id !== 'string' || !ID_PATTERN.test(id) || id.startsWith('cgroup.')) {
    throw new InvalidArgumentError(`bad cgroup id '${String(id)}': use letters, digits, '_', '.' and '-' (at most 128, not starting with 'cgroup.')`);
  }
}

/** One hierarchy as nacelle uses it: the keys it serves and the caller's own cgroup directory there. */
interface Hierarchy {
  keys: string[];
  version: 1 | 2;
  ownDir: string;
}

function hierarchiesOf(host: CgroupHost): Hierarchy[] {
  const byDir = new Map<string, Hierarchy>();
  const keys = [...host.v1.keys()];
  if (host.v2Mount !== undefined) keys.push('');
  for (const key of keys) {
    const ownDir = ownDirectory(host, key);
    if (ownDir === undefined) continue;
    const found = byDir.get(ownDir);
    if (found) found.keys.push(key);
    else byDir.set(ownDir, { keys: [key], version: key === '' ? 2 : 1, ownDir });
  }
  return [...byDir.values()];
}

/** The hierarchy whose directory listing names every cgroup: memory, else v2, else the first v1 one. */
function primaryKey(host: CgroupHost): string | undefined {
  if (host.v1.has('memory') && host.own.has('memory')) return 'memory';
  if (host.v2Mount !== undefined && host.own.has('')) return '';
  return [...host.v1.keys()].find((k) => host.own.has(k));
}

async function mkdirOnce(path: string): Promise<boolean> {
  try {
    await mkdir(path);
    return true;
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return false;
    throw wrapFsError(err, 'mkdir', path);
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return false;
    throw wrapFsError(err, 'stat', path);
  }
}

async function subdirectories(path: string): Promise<string[]> {
  try {
    return (await readdir(path, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => join(path, e.name));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw wrapFsError(err, 'readdir', path);
  }
}

/** Pids in cgroup.procs of `dir` and of every cgroup below it. */
async function procsBelow(dir: string, into: Set<number>): Promise<void> {
  const text = await readOptional(join(dir, 'cgroup.procs'));
  for (const word of (text ?? '').split('\n')) if (word.length > 0) into.add(Number(word));
  for (const sub of await subdirectories(dir)) await procsBelow(sub, into);
}

/** rmdir of a cgroup and, first, of every cgroup below it. ENOENT counts as done. */
async function removeTree(dir: string): Promise<void> {
  for (const sub of await subdirectories(dir)) await removeTree(sub);
  try {
    await rmdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw wrapFsError(err, 'rmdir', dir);
  }
}

/** Sends a signal by pid, ignoring processes that are already gone. */
function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if (!isErrno(err, 'ESRCH')) throw wrapFsError(err, `kill(${signal})`, `pid ${pid}`);
  }
}

/**
 * A cgroup in every hierarchy of the host. Make one with {@link Cgroup.create},
 * put processes in it by handing {@link Cgroup.procsFiles} to `spawn`'s
 * `cgroupProcs`, and remove it with {@link Cgroup.destroy}.
 *
 * On a pure v2 host whose own cgroup holds processes (the usual case outside
 * a delegated systemd scope), the kernel refuses to enable controllers for
 * child cgroups (EBUSY, the "no internal processes" rule). nacelle does not
 * move the caller to get around it: the cgroup is still created, the
 * controllers that could not be enabled are listed in
 * {@link Cgroup.unavailableControllers}, and asking for a limit that needs one
 * of them throws {@link UnsupportedError}.
 */
export class Cgroup {
  /** The name of the cgroup directory in each hierarchy. */
  readonly id: string;
  /** The cgroup's directory by hierarchy key: v1 controller or `name=…`, and `''` for cgroup v2. */
  readonly paths: ReadonlyMap<string, string>;
  /** The host layout the cgroup lives in. */
  readonly host: CgroupHost;
  /**
   * Controllers (`cpu`, `cpuset`, `memory`, `pids`) this cgroup cannot use,
   * each with the reason (not mounted, not delegated, or refused with EBUSY).
   */
  readonly unavailableControllers: ReadonlyMap<string, string>;
  readonly #v2Controllers: ReadonlySet<string>;
  #destroyed = false;

  /** @internal Use {@link Cgroup.create} or {@link Cgroup.open}. */
  constructor(id: string, host: CgroupHost, paths: Map<string, string>, v2Controllers: Set<string>, enableFailures: Map<string, string>) {
    this.id = id;
    this.host = host;
    this.paths = paths;
    this.#v2Controllers = v2Controllers;
    const unavailable = new Map<string, string>();
    const v2Dir = paths.get('');
    for (const controller of V2_CONTROLLERS) {
      if (paths.has(controller) || v2Controllers.has(controller)) continue;
      unavailable.set(
        controller,
        enableFailures.get(controller) ??
          (v2Dir === undefined
            ? `no ${controller} hierarchy is mounted for this process`
            : `the ${controller} controller is neither a mounted v1 hierarchy nor enabled in ${join(v2Dir, 'cgroup.controllers')}`),
      );
    }
    this.unavailableControllers = unavailable;
  }

  /**
   * Creates `<own>/nacelle/<id>` in every hierarchy (each v1 controller, named
   * v1 hierarchies such as name=systemd, and cgroup v2), enables the v2
   * controllers it needs, gives a v1 cpuset its parent's CPUs and memory
   * nodes, and applies `limits`. On any failure, removes what it created and
   * throws.
   * @throws ConflictError when a cgroup with this id exists
   * @throws UnsupportedError when a limit needs a controller this host cannot give it
   * @throws SystemCallError (`code` the errno) when the kernel refuses a directory or a limit
   */
  static async create(id: string, limits: CgroupLimits = {}, options: CgroupOptions = {}): Promise<Cgroup> {
    checkId(id);
    validateLimits(limits);
    const host = options.host ?? detectCgroups();
    const created: string[] = [];
    const paths = new Map<string, string>();
    const failures = new Map<string, string>();
    try {
      const hierarchies = hierarchiesOf(host);
      if (!(await Cgroup.#createFast(hierarchies, id, host, created, failures, paths))) {
        for (const h of hierarchies) {
          const dir = await Cgroup.#createIn(h, id, host, created, failures);
          for (const key of h.keys) paths.set(key, dir);
        }
      }
      const v2Dir = paths.get('');
      const v2Controllers = v2Dir === undefined ? new Set<string>() : await readControllers(v2Dir, 'cgroup.controllers');
      const cgroup = new Cgroup(id, host, paths, v2Controllers, failures);
      await cgroup.update(limits);
      return cgroup;
    } catch (err) {
      for (const dir of created.reverse()) await rmdir(dir).catch(() => undefined);
      throw err;
    }
  }

  /**
   * When this process has every nacelle/ parent ready: all the mkdirs in one
   * trip to the thread pool. Returns false (having undone what it made) when
   * the slow path must run: a parent is missing or was removed meanwhile.
   */
  static async #createFast(hierarchies: Hierarchy[], id: string, host: CgroupHost, created: string[], failures: Map<string, string>, paths: Map<string, string>): Promise<boolean> {
    const parents = hierarchies.map((h) => join(h.ownDir, CGROUP_PARENT));
    const keys = hierarchies.map((h, i) => parentKey(parents[i]!, wantedV2(h, host)));
    if (!keys.every((k) => readyParents.has(k))) return false;
    const dirs = parents.map((p) => join(p, id));
    const errs = await native().dirs(false, dirs, 0o755);
    if (errs.some((e) => e !== null)) {
      await native().dirs(true, dirs.filter((_, i) => errs[i] === null), 0);
      const taken = errs.indexOf('EEXIST');
      if (taken >= 0) throw new ConflictError(`cgroup '${id}' already exists: ${dirs[taken]}`);
      keys.forEach((k, i) => {
        if (errs[i] !== null) readyParents.delete(k);
      });
      return false;
    }
    created.push(...dirs);
    for (const [i, h] of hierarchies.entries()) {
      for (const [c, why] of readyParents.get(keys[i]!) ?? []) failures.set(c, why);
      for (const key of h.keys) paths.set(key, dirs[i]!);
      if (h.keys.includes('cpuset') && !cpusetCloned.has(parents[i]!)) await inheritCpusetV1(parents[i]!, dirs[i]!);
    }
    return true;
  }

  static async #createIn(h: Hierarchy, id: string, host: CgroupHost, created: string[], failures: Map<string, string>): Promise<string> {
    const parent = join(h.ownDir, CGROUP_PARENT);
    const dir = join(parent, id);
    const wanted = wantedV2(h, host);
    const key = parentKey(parent, wanted);
    if (wanted.length > 0) for (const [c, why] of await enableControllers(h.ownDir, wanted)) failures.set(c, why);
    // The nacelle/ parent is prepared once per process (made, controllers
    // enabled, cpuset filled in) and kept while the process lives: every cgroup
    // mkdir and rmdir takes the kernel's cgroup_mutex, and redoing the parent
    // for each container doubled the cost of a short one. Another process may
    // remove an empty nacelle/ between our mkdirs (ENOENT): prepare it again then.
    for (let attempt = 1; ; attempt++) {
      const fresh = !readyParents.has(key);
      if (fresh) {
        if (await mkdirOnce(parent)) created.push(parent);
        if (wanted.length > 0) {
          const usable = wanted.filter((c) => !failures.has(c));
          for (const [c, why] of await enableControllers(parent, usable)) failures.set(c, why);
        }
        if (h.keys.includes('cpuset')) {
          await inheritCpusetV1(h.ownDir, parent);
          // children then start with the parent's cpus and mems, no per-container copy
          await writeCgroupFile(join(parent, 'cgroup.clone_children'), '1').then(
            () => cpusetCloned.add(parent),
            () => cpusetCloned.delete(parent),
          );
        }
      } else {
        for (const [c, why] of readyParents.get(key)!) failures.set(c, why);
      }
      try {
        await mkdir(dir);
      } catch (err) {
        if (isErrno(err, 'ENOENT') && attempt < 5) {
          readyParents.delete(key);
          continue;
        }
        if (isErrno(err, 'EEXIST')) throw new ConflictError(`cgroup '${id}' already exists: ${dir}`, { cause: err });
        throw wrapFsError(err, 'mkdir', dir);
      }
      created.push(dir);
      if (fresh) rememberParent(key, wanted.length > 0 ? new Map([...failures].filter(([c]) => (wanted as readonly string[]).includes(c))) : new Map());
      if (h.keys.includes('cpuset') && !cpusetCloned.has(parent)) await inheritCpusetV1(parent, dir);
      return dir;
    }
  }

  /**
   * Opens a cgroup that exists already (made by this or another process with
   * the same own cgroups).
   * @throws NotFoundError when it does not exist
   */
  static async open(id: string, options: CgroupOptions = {}): Promise<Cgroup> {
    checkId(id);
    const host = options.host ?? detectCgroups();
    const paths = new Map<string, string>();
    for (const h of hierarchiesOf(host)) {
      const dir = join(h.ownDir, CGROUP_PARENT, id);
      if (await isDirectory(dir)) for (const key of h.keys) paths.set(key, dir);
    }
    const primary = primaryKey(host);
    if (paths.size === 0 || (primary !== undefined && !paths.has(primary))) {
      const where = primary === undefined ? CGROUP_PARENT : join(ownDirectory(host, primary) ?? '', CGROUP_PARENT, id);
      throw new NotFoundError(`no cgroup '${id}' (looked for ${where})`);
    }
    const v2Dir = paths.get('');
    const v2Controllers = v2Dir === undefined ? new Set<string>() : await readControllers(v2Dir, 'cgroup.controllers');
    return new Cgroup(id, host, paths, v2Controllers, new Map());
  }

  /** The distinct cgroup directories (co-mounted controllers share one). */
  #dirs(): string[] {
    return [...new Set(this.paths.values())];
  }

  #check(): void {
    if (this.#destroyed) throw new StateError(`cgroup '${this.id}' has been destroyed`);
  }

  /** The directory serving `controller` and its version, or null when no hierarchy does. */
  #controller(controller: string): { version: 1 | 2; dir: string } | null {
    if (this.host.v1.has(controller)) {
      const dir = this.paths.get(controller);
      return dir === undefined ? null : { version: 1, dir };
    }
    const v2 = this.paths.get('');
    if (v2 !== undefined && this.#v2Controllers.has(controller)) return { version: 2, dir: v2 };
    return null;
  }

  /** The freezer: v1 freezer.state, else v2 cgroup.freeze (a core v2 feature, no controller needed). */
  #freezer(): { version: 1 | 2; dir: string } | null {
    const v1 = this.host.v1.has('freezer') ? this.paths.get('freezer') : undefined;
    if (v1 !== undefined) return { version: 1, dir: v1 };
    const v2 = this.paths.get('');
    return v2 === undefined ? null : { version: 2, dir: v2 };
  }

  /**
   * Every cgroup.procs file of this cgroup, one per hierarchy. Pass them as
   * `spawn`'s `cgroupProcs`: the parent writes the child's pid to each before
   * the child runs.
   */
  procsFiles(): string[] {
    this.#check();
    return this.#dirs().map((dir) => join(dir, 'cgroup.procs'));
  }

  /**
   * Sets limits; omitted fields stay as they are. Limits needing a controller
   * in {@link Cgroup.unavailableControllers} throw before anything is written.
   * @throws InvalidArgumentError for values out of range
   * @throws UnsupportedError when a needed controller is unavailable
   * @throws SystemCallError when the kernel refuses a value; `code` is the
   *   errno (EINVAL for a bad value, EBUSY for memory below current usage on
   *   v1) and the message names the file and the value
   */
  async update(limits: CgroupLimits): Promise<void> {
    this.#check();
    validateLimits(limits);
    for (const [controller, field] of controllersFor(limits)) {
      const why = this.unavailableControllers.get(controller);
      if (why !== undefined) throw new UnsupportedError(`cannot set ${field} on cgroup '${this.id}': ${why}`);
    }
    const memory = this.#controller('memory');
    if (memory && (limits.memory !== undefined || limits.memorySwap !== undefined)) {
      await (memory.version === 1 ? applyMemoryV1(memory.dir, limits) : applyMemoryV2(memory.dir, limits));
    }
    const cpu = this.#controller('cpu');
    if (cpu) await (cpu.version === 1 ? applyCpuV1(cpu.dir, limits) : applyCpuV2(cpu.dir, limits));
    const cpuset = this.#controller('cpuset');
    if (cpuset && limits.cpusetCpus !== undefined) await writeCgroupFile(join(cpuset.dir, 'cpuset.cpus'), limits.cpusetCpus);
    const pids = this.#controller('pids');
    if (pids && limits.pids !== undefined) {
      await writeCgroupFile(join(pids.dir, 'pids.max'), limits.pids > 0 ? String(limits.pids) : 'max');
    }
  }

  /** Memory, CPU and process figures. What a host cannot report reads as 0 or null. */
  async stats(): Promise<CgroupStats> {
    this.#check();
    const memory = this.#controller('memory');
    const cpuacct = this.host.v1.has('cpuacct') ? this.paths.get('cpuacct') : undefined;
    const v2 = this.paths.get('');
    const pids = this.#controller('pids');
    const [mem, cpu, pidsCurrent, pidsMax] = await Promise.all([
      memory === null
        ? { usage: 0, limit: null, peak: null, oomKills: 0 }
        : memory.version === 1
          ? readMemoryV1(memory.dir)
          : readMemoryV2(memory.dir),
      cpuacct !== undefined
        ? readCpuV1(cpuacct)
        : v2 !== undefined
          ? readCpuV2(v2)
          : { usageNs: 0, userNs: 0, systemNs: 0 },
      pids === null ? null : readOptional(join(pids.dir, 'pids.current')),
      pids === null ? null : readOptional(join(pids.dir, 'pids.max')),
    ]);
    return {
      memory: mem,
      cpu,
      pids: {
        current: parseNumber(pidsCurrent) ?? (pids === null ? (await this.pids()).length : 0),
        limit: parseNumber(pidsMax),
      },
    };
  }

  /** Pids of the processes in this cgroup and in any cgroup below it, in every hierarchy, sorted. */
  async pids(): Promise<number[]> {
    this.#check();
    const found = new Set<number>();
    for (const dir of this.#dirs()) await procsBelow(dir, found);
    return [...found].sort((a, b) => a - b);
  }

  /**
   * Freezes every process (v1 freezer.state FROZEN, else v2 cgroup.freeze)
   * and waits until the kernel reports them frozen.
   * @throws TimeoutError after `timeoutMs` (the cgroup is thawed again)
   * @throws UnsupportedError without a freezer
   */
  async freeze(options: CgroupFreezeOptions = {}): Promise<void> {
    this.#check();
    const freezer = this.#freezer();
    if (!freezer) throw new UnsupportedError(`cgroup '${this.id}' has no freezer (no v1 freezer hierarchy and no cgroup v2)`);
    const timeoutMs = options.timeoutMs ?? 5000;
    await (freezer.version === 1 ? setFreezerV1(freezer.dir, 'FROZEN', timeoutMs) : setFreezeV2(freezer.dir, true, timeoutMs));
  }

  /**
   * Thaws the processes and waits until the kernel reports them running.
   * @throws TimeoutError after `timeoutMs`
   */
  async thaw(options: CgroupFreezeOptions = {}): Promise<void> {
    this.#check();
    const freezer = this.#freezer();
    if (!freezer) return;
    const timeoutMs = options.timeoutMs ?? 5000;
    await (freezer.version === 1 ? setFreezerV1(freezer.dir, 'THAWED', timeoutMs) : setFreezeV2(freezer.dir, false, timeoutMs));
  }

  /** Whether the cgroup is frozen (v1: FROZEN, not FREEZING). */
  async frozen(): Promise<boolean> {
    this.#check();
    const freezer = this.#freezer();
    if (!freezer) return false;
    return freezer.version === 1 ? (await freezerStateV1(freezer.dir)) === 'FROZEN' : isFrozenV2(freezer.dir);
  }

  /** How many processes the OOM killer has killed in this cgroup (v1 memory.oom_control, v2 memory.events). */
  async oomKilled(): Promise<number> {
    this.#check();
    const memory = this.#controller('memory');
    if (!memory) return 0;
    return memory.version === 1 ? readOomKillsV1(memory.dir) : readOomKillsV2(memory.dir);
  }

  /**
   * Signals every process in the cgroup. A frozen cgroup is thawed first so
   * the signal is acted on. SIGKILL uses v2 cgroup.kill where the kernel has
   * it (5.14+), which leaves no window for a fork to escape; otherwise the
   * cgroup is frozen while the pids are listed and signalled, as runc does,
   * then thawed. Resolves once the signals are sent, not when the processes
   * are gone ({@link Cgroup.destroy} waits for that).
   */
  async killAll(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    this.#check();
    if (await this.frozen()) await this.thaw();
    const v2 = this.paths.get('');
    if (signal === 'SIGKILL' && v2 !== undefined && (await fileExists(join(v2, 'cgroup.kill')))) {
      await writeCgroupFile(join(v2, 'cgroup.kill'), '1');
      // On hybrid hosts a process could be in the v1 hierarchies only: signal what remains.
      for (const pid of await this.pids()) signalPid(pid, signal);
      return;
    }
    let froze = false;
    if (signal === 'SIGKILL' && this.#freezer()) {
      froze = await this.freeze({ timeoutMs: 2000 }).then(
        () => true,
        () => false,
      );
    }
    try {
      const signalled = new Set<number>();
      for (let round = 0; round < 10; round++) {
        const pids = (await this.pids()).filter((pid) => !signalled.has(pid));
        if (pids.length === 0) break;
        for (const pid of pids) {
          signalPid(pid, signal);
          signalled.add(pid);
        }
        if (froze || signal !== 'SIGKILL') break;
      }
    } finally {
      if (froze) await this.thaw();
    }
  }

  /**
   * Removes the cgroup from every hierarchy (cgroups below it first), retrying
   * while exiting processes keep it busy, then the `nacelle/` parents where
   * they are empty. Idempotent. Does not kill anything: call
   * {@link Cgroup.killAll} first.
   * @throws TimeoutError when processes remain after `timeoutMs` (the cgroup is left in place)
   */
  async destroy(options: CgroupDestroyOptions = {}): Promise<void> {
    if (this.#destroyed) return;
    const timeoutMs = options.timeoutMs ?? 5000;
    const deadline = Date.now() + timeoutMs;
    // Usually every directory is empty and idle: one trip for all the rmdirs.
    const all = this.#dirs();
    const first = await native().dirs(true, all, 0);
    for (const dir of all.filter((_, i) => first[i] !== null && first[i] !== 'ENOENT')) {
      for (let round = 1; ; round++) {
        try {
          await removeTree(dir);
          break;
        } catch (err) {
          if (!isErrno(err, 'EBUSY')) throw err;
          if (Date.now() > deadline) {
            const pids = await this.pids().catch(() => []);
            throw new TimeoutError(
              `cgroup '${this.id}' still busy after ${timeoutMs} ms (${dir}; pids ${pids.join(' ') || 'none listed'}); kill its processes first`,
              { cause: err },
            );
          }
          await sleep(Math.min(5 * round, 50));
        }
      }
    }
    // (the nacelle/ parents stay for the next container: see removeEmptyCgroupParents;
    // this process removes them when it exits, if empty, also when another made them)
    for (const dir of this.#dirs()) cleanAtExit(join(dir, '..'));
    this.#destroyed = true;
  }
}

/**
 * nacelle/ parents this process prepared (keyed by {@link parentKey}: the
 * directory and the v2 controllers asked for there), with the v2 controllers
 * it could not enable there.
 */
const readyParents = new Map<string, Map<string, string>>();

function parentKey(parent: string, wanted: readonly string[]): string {
  return `${parent}\0${wanted.join(',')}`;
}

/** The v2 controllers a cgroup in this hierarchy should get (those no v1 hierarchy has). */
function wantedV2(h: Hierarchy, host: CgroupHost): readonly string[] {
  return h.version === 2 ? V2_CONTROLLERS.filter((c) => !host.v1.has(c)) : [];
}
let exitHookInstalled = false;

/** v1 cpuset parents with cgroup.clone_children set (new children inherit cpus and mems). */
const cpusetCloned = new Set<string>();

/** nacelle/ parents to remove, when empty, as this process exits. */
const exitCleanup = new Set<string>();

function rememberParent(key: string, failures: Map<string, string>): void {
  readyParents.set(key, failures);
  cleanAtExit(key.slice(0, key.indexOf('\0')));
}

function cleanAtExit(parent: string): void {
  exitCleanup.add(parent);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Leave no empty nacelle/ behind: removed when this process exits (rmdir
  // fails harmlessly while another process's container is still in one).
  process.on('exit', () => {
    for (const dir of exitCleanup) {
      try {
        rmdirSync(dir);
      } catch {
        // busy or not empty: someone else's containers live there
      }
    }
  });
}

/**
 * Removes the `<own>/nacelle` parent cgroups that hold no container (they are
 * otherwise kept while this process lives, and removed when it exits).
 * Returns the directories removed.
 */
export async function removeEmptyCgroupParents(options: CgroupOptions = {}): Promise<string[]> {
  const host = options.host ?? detectCgroups();
  const removed: string[] = [];
  for (const h of hierarchiesOf(host)) {
    const parent = join(h.ownDir, CGROUP_PARENT);
    for (const key of [...readyParents.keys()]) if (key.startsWith(`${parent}\0`)) readyParents.delete(key);
    cpusetCloned.delete(parent);
    try {
      await rmdir(parent);
      removed.push(parent);
    } catch (err) {
      if (!isErrno(err, 'ENOTEMPTY', 'EBUSY', 'ENOENT', 'EEXIST')) throw wrapFsError(err, 'rmdir', parent);
    }
  }
  return removed;
}

/**
 * The ids of the cgroups under `<own>/nacelle` in the memory hierarchy (or
 * the v2 one, or the first v1 one), for listing and garbage collection.
 */
export async function listCgroups(options: CgroupOptions = {}): Promise<string[]> {
  const host = options.host ?? detectCgroups();
  const key = primaryKey(host);
  const own = key === undefined ? undefined : ownDirectory(host, key);
  if (own === undefined) return [];
  const dirs = await subdirectories(join(own, CGROUP_PARENT));
  return dirs.map((d) => d.slice(d.lastIndexOf('/') + 1)).sort();
}
