/**
 * Container: a process isolated by namespaces, limited by cgroups, on an
 * overlayfs of its image's layers with a private writable layer on top.
 * @module
 */
import { closeSync, constants, createWriteStream, type WriteStream, lstatSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { type FileHandle, open, readFile, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Socket } from 'node:net';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { ReadStream as TtyReadStream } from 'node:tty';
import { ConflictError, NacelleError, SpawnError, StateError, TimeoutError, UnsupportedError, fromNativeError } from '../errors';
import type { Image } from '../image/image';
import { Layer } from '../image/layer';
import { type Change, diffOverlayUpper, packChanges } from '../image/tar/index';
import { native } from '../native';
import type { ContainerConfig } from '../oci/types';
import type { RuntimeSpec } from '../oci/runtime-spec';
import { type ExitStatus, Process, type SpawnOptions, readExitStatusFile, signalNumber, spawn } from '../process/spawn';
import { Cgroup } from './cgroups/index';
import type { CgroupLimits, CgroupStats } from './cgroups/index';
import type { ContainerService } from './containers';
import { rootfsOperations } from './rootfs';
import { compileSeccomp } from './seccomp/index';
import { type DeviceRule, attachDeviceFilter, parseDeviceRule } from './cgroups/devices';
import { type ContainerState, type ContainerStatus, creatorRunning, monitorRunning, processStartTime, readState, statePaths, stillRunning, writeState } from './state';

/** How a container ended. */
export interface ContainerExit {
  /** Exit code; 128 + n when signal n ended it (as Docker reports); null when unknown. */
  exitCode: number | null;
  /** The signal that ended it, if one did. */
  signal: NodeJS.Signals | null;
  /** Whether the kernel's OOM killer ended it (cgroup memory limit). */
  oomKilled: boolean;
}

/** A container's output so far, by stream. */
export interface ContainerLogs {
  /** Everything written to stdout (the terminal's output with `tty`). */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
}

/** Live output streams of a container, from any process. */
export interface AttachedStreams {
  /** stdout, from the start, ending when the container exits. */
  stdout: Readable;
  /** stderr, likewise. */
  stderr: Readable;
  /**
   * The container's stdin when it was created with `stdin: true` (for a
   * detached container, from any process); null otherwise. Ending it
   * detaches: the container's stdin stays open, as with `docker run -di`.
   */
  stdin: Writable | null;
}

/** Options of {@link Container.exec}. */
export interface ExecOptions {
  /** Extra environment for this process. */
  env?: Readonly<Record<string, string>>;
  /** Working directory inside the container (default the container's). */
  workdir?: string;
  /** `uid[:gid]` (default the container's user). */
  user?: string;
  /** Keep stdin open as a writable stream. */
  stdin?: boolean;
  /** Allocate a pseudo-terminal. */
  tty?: boolean;
}

/** A process started in a running container by {@link Container.exec}. */
export interface ExecProcess {
  /** Host pid. */
  readonly pid: number;
  /** stdin, when asked for. */
  readonly stdin: Writable | null;
  /** stdout (the pty's output with `tty`). */
  readonly stdout: Readable;
  /** stderr (empty with `tty`). */
  readonly stderr: Readable;
  /** Resolves with the exit status. */
  wait(): Promise<ExitStatus>;
  /** Signals the process. */
  kill(signal?: NodeJS.Signals): boolean;
}

/** What `commit` records. */
export interface CommitOptions {
  /** Tag for the new image. */
  tag?: string;
  /** History comment (Docker's `--message`). */
  message?: string;
  /** Author recorded in history. */
  author?: string;
  /** Dockerfile instructions applied to the config: `CMD ["sh"]`, `ENV A=1`, `WORKDIR /x`, `USER 1000`, `LABEL a=b`, `ENTRYPOINT …`, `EXPOSE 80`, `STOPSIGNAL SIGINT`. */
  changes?: readonly string[];
  /** Pause the container while committing (default true, as Docker). */
  pause?: boolean;
}

/** Exit code Docker reports for a process killed by a signal. */
function exitCodeOf(status: ExitStatus): number | null {
  if (status.exitCode !== null) return status.exitCode;
  return status.signal ? 128 + signalNumber(status.signal) : null;
}

/** A container. Get one from `rt.containers.create`, `run`, `get` or `list`. */
export class Container {
  /** 64 hex characters. */
  readonly id: string;
  /** The service that owns it. @internal */
  readonly service: ContainerService;
  #state: ContainerState;
  #process: Process | undefined;
  #cgroup: Cgroup | undefined;
  #exit: Promise<ContainerExit> | undefined;
  #stdout = new PassThrough();
  #stderr = new PassThrough();
  #stdin: Writable | null = null;
  #ttyMaster: number | undefined;
  #ttyStream: TtyReadStream | undefined;

  /** What `create` computed in this process (spec, image, lowerdirs), so `start` need not read it back. */
  #prepared: { spec: RuntimeSpec; image: Image; lowerDirs: string[] } | undefined;

  /** @internal */
  constructor(service: ContainerService, state: ContainerState, prepared?: { spec: RuntimeSpec; image: Image; lowerDirs: string[] }) {
    this.service = service;
    this.id = state.id;
    this.#state = state;
    this.#prepared = prepared;
  }

  /** The state directory. */
  get dir(): string {
    return join(this.service.root, this.id);
  }

  /** The name, if it has one. */
  get name(): string | undefined {
    return this.#state.name;
  }

  /** Status as last read (see {@link Container.refresh}). */
  get status(): ContainerStatus {
    return this.#state.status;
  }

  /** Host pid of the container's init while it runs. */
  get pid(): number | undefined {
    return this.#state.status === 'running' || this.#state.status === 'paused' ? this.#state.pid : undefined;
  }

  /** A copy of the state file. */
  get state(): Readonly<ContainerState> {
    return { ...this.#state };
  }

  /** The container's stdout (its terminal output with `tty`), while this process started it. */
  get stdout(): Readable {
    return this.#stdout;
  }

  /** The container's stderr. */
  get stderr(): Readable {
    return this.#stderr;
  }

  /** The container's stdin when created with `stdin: true` (and started here). */
  get stdin(): Writable | null {
    return this.#stdin;
  }

  /** The runtime spec (config.json). */
  async spec(): Promise<RuntimeSpec> {
    return JSON.parse(await readFile(statePaths(this.dir).config, 'utf8')) as RuntimeSpec;
  }

  /** Re-reads the state file and checks the process table, fixing a stale `running`. */
  async refresh(): Promise<ContainerState> {
    const state = await readState(this.dir);
    if ((state.status === 'running' || state.status === 'paused') && !this.#process && !(await stillRunning(state))) {
      // Its creator is gone without recording the end. A foreground container
      // was killed with it; a detached one's monitor records its exit.
      const recorded = state.detached ? readExitStatusFile(statePaths(this.dir).exitStatus) : undefined;
      if (!recorded && (state.detached ? await monitorRunning(state) : await creatorRunning(state))) {
        // exited a moment ago: its monitor, or its creator, is recording the end
        this.#state = state;
        return state;
      }
      state.status = 'exited';
      state.finishedAt ??= new Date().toISOString();
      if (state.exitCode === undefined) {
        if (recorded) {
          state.exitCode = exitCodeOf(recorded);
          state.signal = recorded.signal;
          state.oomKilled = await this.#oomKilledAfterTheFact(recorded);
        } else {
          // (a detached container whose monitor was killed: the code is lost)
          state.exitCode = state.detached ? null : 137;
          state.signal = state.detached ? null : 'SIGKILL';
        }
      }
      await writeState(this.dir, state);
    }
    this.#state = state;
    return state;
  }

  /** For an exit seen by another process: did the OOM killer do it? (Its cgroup stays until remove.) */
  async #oomKilledAfterTheFact(status: ExitStatus): Promise<boolean> {
    if (status.signal !== 'SIGKILL' || process.geteuid?.() !== 0) return false;
    const cg = await Cgroup.open(this.id).catch(() => undefined);
    return ((await cg?.oomKilled().catch(() => 0)) ?? 0) > 0;
  }

  async #update(change: Partial<ContainerState>): Promise<void> {
    const current = await readState(this.dir).catch(() => undefined);
    this.#state = { ...(current ?? this.#state), ...change };
    if (!current) return; // removed meanwhile (by another handle or process): nothing to record
    await writeState(this.dir, this.#state).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** Starts the container's process. */
  async start(): Promise<void> {
    await this.refresh();
    if (this.#state.status !== 'created') {
      throw new StateError(`container ${this.id.slice(0, 12)} is ${this.#state.status}; only a created container starts`);
    }
    const prepared = this.#prepared;
    this.#prepared = undefined;
    const spec = prepared?.spec ?? (await this.spec());
    const paths = statePaths(this.dir);
    const lowerDirs =
      prepared?.lowerDirs ?? [await this.service.initLayer(), ...(await (await this.service.images.get(this.#state.image)).lowerDirs())];
    const limits = cgroupLimits(spec);
    // Memory limits are set once the process has exec'd: before that it shares
    // this Node process's memory (see SpawnOptions.cgroupProcs).
    const { memory, memorySwap, ...early } = limits;
    const rootless = process.geteuid?.() !== 0;
    if (rootless && Object.keys(limits).length > 0) {
      throw new UnsupportedError(
        `container ${this.id.slice(0, 12)}: cgroup limits (${Object.keys(limits).join(', ')}) need root or a delegated cgroup; run without limits when rootless`,
      );
    }
    // Rootless containers get no cgroup: this user cannot create one under its own.
    const cgroup = rootless ? undefined : await Cgroup.create(this.id, early);
    this.#cgroup = cgroup;
    try {
      if (cgroup) await restrictDevices(cgroup, spec);
    } catch (err) {
      await cgroup?.destroy().catch(() => undefined);
      this.#cgroup = undefined;
      throw err;
    }
    const proc = spec.process!;
    const detached = this.#state.detached;
    const tty = proc.terminal ?? false;
    const closeAfter: number[] = [];
    let stdio: SpawnOptions['stdio'];
    let logs: { out: LazyLog; err: LazyLog } | undefined;
    try {
      if (tty) {
        stdio = ['ignore', 'ignore', 'ignore']; // the child opens a pty in its own /dev/pts
      } else if (detached) {
        const out = await open(paths.stdoutLog, 'a');
        const err = await open(paths.stderrLog, 'a');
        let input: FileHandle | undefined;
        if (this.#state.openStdin) {
          // A FIFO any process can attach to. The container holds it open for
          // writing too, so it never sees EOF when an attached writer leaves.
          await rm(paths.stdinFifo, { force: true });
          native().mknod(paths.stdinFifo, constants.S_IFIFO | 0o600, 0, 0);
          input = await open(paths.stdinFifo, constants.O_RDWR);
        }
        // (the child hands fds 0-2 to the container user before exec)
        stdio = [input ? input.fd : 'ignore', out.fd, err.fd];
        this.#detachedHandles = input ? [out, err, input] : [out, err];
      } else {
        stdio = [this.service.keepStdin(this.id) ? 'pipe' : 'ignore', 'pipe', 'pipe'];
      }
      const userns = spec.linux?.namespaces?.some((n) => n.type === 'user') ?? false;
      const ops = rootfsOperations(
        spec,
        { rootfs: paths.rootfs, lowerDirs, upper: paths.upper, work: paths.work },
        {
          tty,
          userns,
          isDirectorySource: (p) => {
            try {
              return lstatSync(p).isDirectory();
            } catch {
              return false;
            }
          },
          hostPathKind: (p) => {
            try {
              return lstatSync(p).isDirectory() ? 'dir' : 'file';
            } catch {
              return 'missing';
            }
          },
        },
      );
      const namespaces = (spec.linux?.namespaces ?? []).map((n) => (n.type === 'network' ? 'net' : n.type)) as SpawnOptions['namespaces'];
      this.#process = await spawn({
        argv: proc.args,
        env: proc.env ?? [],
        cwd: proc.cwd,
        namespaces,
        ...(spec.hostname ? { hostname: spec.hostname } : {}),
        mounts: ops,
        pivotRoot: paths.rootfs,
        user: { uid: proc.user.uid, gid: proc.user.gid, groups: proc.user.additionalGids ?? [] },
        ...(userns
          ? {
              uidMap: (spec.linux?.uidMappings ?? []).map((m) => ({ containerId: m.containerID, hostId: m.hostID, size: m.size })),
              gidMap: (spec.linux?.gidMappings ?? []).map((m) => ({ containerId: m.containerID, hostId: m.hostID, size: m.size })),
            }
          : {}),
        ...securityOf(spec),
        rlimits: (proc.rlimits ?? []).map((r) => ({ type: r.type, soft: r.soft, hard: r.hard })),
        cgroupProcs: cgroup?.procsFiles() ?? [],
        detached,
        ...(detached ? { exitStatusFile: paths.exitStatus } : {}),
        stdio,
        ...(tty ? { terminal: { cols: proc.consoleSize?.width ?? 80, rows: proc.consoleSize?.height ?? 24 } } : {}),
        controllingTerminal: tty,
      });
      if (tty) this.#ttyMaster = this.#process.terminalFd ?? undefined;
    } catch (err) {
      for (const fd of closeAfter) this.#closeFd(fd);
      await this.#closeDetachedHandles();
      if (this.#ttyMaster !== undefined) this.#closeFd(this.#ttyMaster);
      this.#ttyMaster = undefined;
      await cgroup?.destroy().catch(() => undefined);
      this.#cgroup = undefined;
      if (err instanceof SpawnError && err.step === 'execve') {
        // Docker semantics: the command could not run; the container exits 127 (126 when not executable).
        const code = err.code === 'EACCES' ? 126 : 127;
        await this.#update({ status: 'exited', exitCode: code, signal: null, finishedAt: new Date().toISOString() });
        throw new SpawnError(`container ${this.id.slice(0, 12)}: cannot run '${err.path ?? proc.args[0]}': ${err.message}`, {
          code: err.code,
          errno: err.errno,
          syscall: err.syscall,
          step: err.step,
          ...(err.path !== undefined ? { path: err.path } : {}),
          cause: err,
        });
      }
      await this.#update({ status: 'created' });
      throw err;
    }
    for (const fd of closeAfter) this.#closeFd(fd);
    await this.#closeDetachedHandles();
    const p = this.#process;
    if (cgroup && (memory !== undefined || memorySwap !== undefined)) {
      try {
        await cgroup.update({ ...(memory !== undefined ? { memory } : {}), ...(memorySwap !== undefined ? { memorySwap } : {}) });
      } catch (err) {
        // The kernel refused the limit (below what the program already uses, or invalid).
        p.kill('SIGKILL');
        await p.wait();
        await cgroup.destroy().catch(() => undefined);
        this.#cgroup = undefined;
        if (this.#ttyMaster !== undefined) this.#closeFd(this.#ttyMaster);
        this.#ttyMaster = undefined;
        await this.#update({ status: 'created' });
        throw err;
      }
    }
    const pidStart = await processStartTime(p.pid);
    const monitorStart = p.monitorPid !== null ? await processStartTime(p.monitorPid) : undefined;
    creatorStart ??= await processStartTime(process.pid);
    await this.#update({
      status: 'running',
      pid: p.pid,
      ...(pidStart ? { pidStart } : {}),
      ...(p.monitorPid !== null && monitorStart ? { monitorPid: p.monitorPid, monitorStart } : {}),
      parentPid: process.pid,
      ...(creatorStart ? { parentStart: creatorStart } : {}),
      startedAt: new Date().toISOString(),
    });
    if (tty && this.#ttyMaster !== undefined) {
      const stream = new TtyReadStream(this.#ttyMaster);
      this.#ttyStream = stream;
      logs = { out: new LazyLog(paths.stdoutLog), err: new LazyLog(paths.stderrLog) };
      this.#tee(stream, this.#stdout, logs.out);
      this.#stdin = stream;
      this.#stderr.end();
    } else if (!detached) {
      logs = { out: new LazyLog(paths.stdoutLog), err: new LazyLog(paths.stderrLog) };
      this.#tee(p.stdout!, this.#stdout, logs.out);
      this.#tee(p.stderr!, this.#stderr, logs.err);
      this.#stdin = p.stdin;
    } else {
      this.#stdout.end();
      this.#stderr.end();
    }
    this.#exit = this.#watch(p, cgroup, logs);
    this.#exit.catch(() => undefined);
  }

  #detachedHandles: FileHandle[] = [];
  /** Set once #watch removed the container's cgroup. */
  #cgroupRemoved = false;

  async #closeDetachedHandles(): Promise<void> {
    const handles = this.#detachedHandles;
    this.#detachedHandles = [];
    for (const h of handles) await h.close().catch(() => undefined);
  }

  #closeFd(fd: number): void {
    try {
      native().close(fd);
    } catch {
      // already closed
    }
  }

  /** Copies a stream to the container's public stream and its log file. */
  #tee(source: Readable, target: PassThrough, log: LazyLog): void {
    source.on('data', (chunk: Buffer) => {
      log.write(chunk);
      // Nobody may be reading: keep at most 8 MiB buffered (logs() has all of it).
      if (target.readableLength < 8 * 1024 * 1024) target.write(chunk);
    });
    const end = () => {
      if (!target.writableEnded) target.end();
    };
    source.on('end', end);
    source.on('close', end);
    // A pipe with nothing in it can reach EOF (and emit 'end') before we get here.
    if (source.readableEnded || source.destroyed) end();
    source.on('error', (err: NodeJS.ErrnoException) => {
      // EIO is how a pty master reports that the last slave fd closed.
      if (err.code !== 'EIO') target.destroy(err);
      end();
    });
  }

  async #watch(p: Process, cgroup: Cgroup | undefined, logs: { out: LazyLog; err: LazyLog } | undefined): Promise<ContainerExit> {
    const status = await p.wait();
    const oomKilled = ((await cgroup?.oomKilled().catch(() => 0)) ?? 0) > 0;
    await cgroup?.destroy().catch(() => undefined);
    this.#cgroup = undefined;
    this.#cgroupRemoved = cgroup !== undefined;
    // The pty master belongs to its TTY stream, which closes it.
    this.#ttyStream?.destroy();
    this.#ttyStream = undefined;
    this.#ttyMaster = undefined;
    if (logs) {
      await Promise.all([logs.out.end(), logs.err.end()]);
    }
    const exit: ContainerExit = { exitCode: exitCodeOf(status), signal: status.signal, oomKilled };
    await this.#update({ status: 'exited', exitCode: exit.exitCode, signal: exit.signal, oomKilled, finishedAt: new Date().toISOString() });
    if (this.#state.autoRemove) await this.remove({ force: true }).catch(() => undefined);
    return exit;
  }

  /**
   * Resolves when the container exits: `{ exitCode, signal, oomKilled }`.
   * Works from any process; only the one that started it sees exit codes of
   * detached containers it outlived.
   */
  async wait(options: { timeoutMs?: number } = {}): Promise<ContainerExit> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    if (this.#exit) {
      // A detached container's waiter does not hold the event loop open; a
      // caller awaiting its end does.
      const keepAlive = setInterval(() => undefined, 1 << 30);
      let timer: NodeJS.Timeout | undefined;
      try {
        if (deadline === Infinity) return await this.#exit;
        return await Promise.race([
          this.#exit,
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new TimeoutError(`container ${this.id.slice(0, 12)} still running after ${options.timeoutMs} ms`)), options.timeoutMs);
          }),
        ]);
      } finally {
        clearInterval(keepAlive);
        if (timer) clearTimeout(timer);
      }
    }
    for (;;) {
      const state = await this.refresh();
      if (state.status === 'exited') return { exitCode: state.exitCode ?? null, signal: state.signal ?? null, oomKilled: state.oomKilled ?? false };
      if (state.status === 'created') throw new StateError(`container ${this.id.slice(0, 12)} has not been started`);
      if (Date.now() > deadline) throw new TimeoutError(`container ${this.id.slice(0, 12)} still running after ${options.timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async #requireRunning(what: string): Promise<ContainerState> {
    const state = await this.refresh();
    if (state.status !== 'running' && state.status !== 'paused') {
      throw new StateError(`cannot ${what} container ${this.id.slice(0, 12)}: it is ${state.status}`);
    }
    return state;
  }

  /** Sends a signal to the container's init (default SIGKILL). */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const state = await this.#requireRunning('kill');
    if (this.#process) {
      this.#process.kill(signal);
      return;
    }
    const fd = native().pidfdOpen(state.pid!);
    try {
      if ((await processStartTime(state.pid!)) !== state.pidStart) return; // gone in between
      native().pidfdSendSignal(fd, signalNumber(signal));
    } catch (err) {
      throw fromNativeError(err);
    } finally {
      native().close(fd);
    }
  }

  /** Sends the stop signal, waits up to `timeout` seconds (default 10), then SIGKILL. */
  async stop(options: { timeout?: number } = {}): Promise<ContainerExit> {
    const state = await this.#requireRunning('stop');
    if (state.status === 'paused') await this.resume();
    await this.kill(state.stopSignal);
    try {
      return await this.wait({ timeoutMs: (options.timeout ?? 10) * 1000 });
    } catch (err) {
      if (!(err instanceof TimeoutError)) throw err;
      await this.kill('SIGKILL').catch(() => undefined);
      return this.wait();
    }
  }

  /** Freezes every process of the container (cgroup freezer). */
  async pause(): Promise<void> {
    const state = await this.#requireRunning('pause');
    if (state.status === 'paused') throw new StateError(`container ${this.id.slice(0, 12)} is already paused`);
    await (await this.#cgroupHandle()).freeze();
    await this.#update({ status: 'paused' });
  }

  /** Thaws a paused container. */
  async resume(): Promise<void> {
    const state = await this.#requireRunning('resume');
    if (state.status !== 'paused') throw new StateError(`container ${this.id.slice(0, 12)} is not paused`);
    await (await this.#cgroupHandle()).thaw();
    await this.#update({ status: 'running' });
  }

  async #cgroupHandle(): Promise<Cgroup> {
    if (process.geteuid?.() !== 0) throw new UnsupportedError(`container ${this.id.slice(0, 12)} is rootless: it has no cgroup (no stats, pause or limits)`);
    this.#cgroup ??= await Cgroup.open(this.id);
    return this.#cgroup;
  }

  /** Memory, CPU and pid usage from the container's cgroup. */
  async stats(): Promise<CgroupStats> {
    await this.#requireRunning('read stats of');
    return (await this.#cgroupHandle()).stats();
  }

  /** Resizes the container's terminal (containers created with `tty: true`). */
  resize(cols: number, rows: number): void {
    if (this.#ttyMaster === undefined) throw new StateError(`container ${this.id.slice(0, 12)} has no terminal here`);
    native().resizePty(this.#ttyMaster, cols, rows);
  }

  /** What the container wrote so far (both streams, from its log files). */
  async logs(): Promise<ContainerLogs> {
    const paths = statePaths(this.dir);
    const read = (p: string) => readFile(p, 'utf8').catch(() => '');
    return { stdout: await read(paths.stdoutLog), stderr: await read(paths.stderrLog) };
  }

  /**
   * Follows the container's output from its log files, from the start, until
   * it exits: works from any process, like `docker attach` for output.
   */
  attach(): AttachedStreams {
    const paths = statePaths(this.dir);
    const follow = (file: string): Readable => {
      const out = new PassThrough();
      let offset = 0;
      const pump = async (): Promise<void> => {
        for (;;) {
          const data = await readFile(file).catch(() => Buffer.alloc(0));
          if (data.length > offset) {
            out.write(data.subarray(offset));
            offset = data.length;
          }
          const state = await this.refresh().catch(() => undefined);
          if (!state || state.status === 'exited') {
            const rest = await readFile(file).catch(() => Buffer.alloc(0));
            if (rest.length > offset) out.write(rest.subarray(offset));
            out.end();
            return;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      pump().catch((err: unknown) => out.destroy(err as Error));
      return out;
    };
    let stdin: Writable | null = null;
    if (this.#stdin) {
      stdin = this.#stdin; // started here: the container's own stdin pipe
    } else if (this.#state.openStdin && this.#state.detached && this.#state.status !== 'exited') {
      let fd: number | undefined;
      try {
        // Non-blocking: ENXIO, not a hang, when the container (the reader) is gone.
        fd = openSync(paths.stdinFifo, constants.O_WRONLY | constants.O_NONBLOCK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENXIO' && code !== 'ENOENT') throw err;
      }
      if (fd !== undefined) {
        const socket = new Socket({ fd, readable: false, writable: true }); // libuv drives the FIFO with backpressure
        socket.on('error', () => undefined); // EPIPE once the container has exited
        stdin = socket;
      }
    }
    return { stdout: follow(paths.stdoutLog), stderr: follow(paths.stderrLog), stdin };
  }

  /** Runs another process in the running container's namespaces and cgroup. */
  async exec(cmd: readonly string[], options: ExecOptions = {}): Promise<ExecProcess> {
    const state = await this.#requireRunning('exec in');
    if (state.status === 'paused') throw new StateError(`container ${this.id.slice(0, 12)} is paused`);
    const spec = await this.spec();
    const proc = spec.process!;
    const pid = state.pid!;
    const kinds = (spec.linux?.namespaces ?? []).map((n) => n.type);
    const order: [string, string][] = [
      ['user', 'user'],
      ['mount', 'mnt'],
      ['ipc', 'ipc'],
      ['uts', 'uts'],
      ['network', 'net'],
      ['cgroup', 'cgroup'],
    ];
    const fds: number[] = [];
    let pidNs: number | undefined;
    try {
      for (const [kind, file] of order) {
        if (kinds.includes(kind as never)) fds.push(openSync(`/proc/${pid}/ns/${file}`, 'r'));
      }
      pidNs = openSync(`/proc/${pid}/ns/pid`, 'r');
      if ((await processStartTime(pid)) !== state.pidStart) throw new StateError(`container ${this.id.slice(0, 12)} exited`);
      const env = new Map((proc.env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)] as [string, string]));
      for (const [k, v] of Object.entries(options.env ?? {})) env.set(k, v);
      let user = { uid: proc.user.uid, gid: proc.user.gid, groups: proc.user.additionalGids ?? [] };
      if (options.user) {
        const [u, g] = options.user.split(':');
        if (!/^\d+$/.test(u ?? '') || (g !== undefined && !/^\d+$/.test(g))) {
          throw new NacelleError(`exec user must be numeric uid[:gid], got '${options.user}'`, { code: 'ERR_INVALID_ARG' });
        }
        user = { uid: Number(u), gid: g === undefined ? Number(u) : Number(g), groups: [] };
      }
      const p = await spawn({
        argv: cmd,
        env: [...env].map(([k, v]) => `${k}=${v}`),
        cwd: options.workdir ?? proc.cwd,
        joinNamespaces: fds,
        joinPidNamespace: pidNs,
        user,
        ...securityOf(spec),
        cgroupProcs: process.geteuid?.() === 0 ? (await this.#cgroupHandle()).procsFiles() : [],
        // The container's memory cgroup is already limited: the new process must
        // not share this Node process's memory while it execs (see spawn's docs).
        ownMemory: spec.linux?.resources?.memory?.limit !== undefined,
        stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
        // a terminal from the container's own /dev/pts (the child has joined its mount namespace)
        ...(options.tty ? { terminal: { cols: 80, rows: 24 } } : {}),
        controllingTerminal: Boolean(options.tty),
      });
      if (options.tty && p.terminalFd !== null) {
        const stream = new TtyReadStream(p.terminalFd);
        const out = new PassThrough();
        stream.on('data', (c: Buffer) => out.write(c));
        // The master reads EIO once the last holder of the slave is gone and the
        // output is drained: that, not the process's exit, ends the output.
        const drained = new Promise<void>((resolve) => {
          stream.on('error', () => resolve());
          stream.on('close', () => resolve());
          stream.on('end', () => resolve());
        });
        void drained.then(() => out.end());
        const stderr = new PassThrough();
        stderr.end();
        const waitP = p.wait().then(async (status) => {
          // (a background child may still hold the slave: give the output a moment, then stop reading)
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, 1000)))]);
          clearTimeout(timer);
          stream.destroy();
          return status;
        });
        return { pid: p.pid, stdin: stream, stdout: out, stderr, wait: () => waitP, kill: (s) => p.kill(s) };
      }
      return { pid: p.pid, stdin: p.stdin, stdout: p.stdout!, stderr: p.stderr!, wait: () => p.wait(), kill: (s) => p.kill(s) };
    } finally {
      for (const fd of fds) closeSync(fd);
      if (pidNs !== undefined) closeSync(pidNs);
    }
  }

  /** What changed in the container's filesystem, like `docker diff`. */
  async diff(): Promise<Change[]> {
    const image = await this.service.images.get(this.#state.image);
    const lowerDirs = [await this.service.initLayer(), ...(await image.lowerDirs())];
    return diffOverlayUpper(statePaths(this.dir).upper, lowerDirs);
  }

  /** A new image: the container's image plus one layer holding its changes. */
  async commit(options: CommitOptions = {}): Promise<Image> {
    const state = await this.refresh();
    const pause = (options.pause ?? true) && state.status === 'running';
    if (pause) await this.pause();
    const tmp = join(tmpdir(), `nacelle-commit-${randomBytes(6).toString('hex')}.tar.gz`);
    try {
      const changes = await this.diff();
      await packChanges(statePaths(this.dir).upper, changes, createWriteStream(tmp));
      const layer = await Layer.fromTar(tmp);
      const image = await this.service.images.get(this.#state.image);
      const spec = await this.spec();
      let next = await image.withLayer(layer, {
        createdBy: spec.process?.args.join(' ') ?? '',
        ...(options.message !== undefined ? { comment: options.message } : {}),
        ...(options.author !== undefined ? { author: options.author } : {}),
      });
      if (options.changes?.length) next = await next.withConfig(applyChanges(next.config, options.changes), { createdBy: `commit --change ${options.changes.join('; ')}` });
      if (options.tag) next = await this.service.images.tag(next, options.tag);
      await layer.storeIn(this.service.images.store);
      return next;
    } finally {
      await rm(tmp, { force: true });
      if (pause) await this.resume().catch(() => undefined);
    }
  }

  /** Removes the container: its state, writable layer and cgroup. Running ones need `force`. */
  async remove(options: { force?: boolean } = {}): Promise<void> {
    const state = await this.refresh().catch(() => undefined);
    if (!state) return;
    if (state.status === 'running' || state.status === 'paused') {
      if (!options.force) throw new ConflictError(`container ${this.id.slice(0, 12)} is ${state.status}: stop it first or remove with force`);
      if (state.status === 'paused') await this.resume().catch(() => undefined);
      await this.kill('SIGKILL').catch(() => undefined);
      await this.wait({ timeoutMs: 10_000 }).catch(() => undefined);
    }
    // (this handle watched it exit and removed its cgroup then; otherwise look for one)
    const cg = process.geteuid?.() === 0 && !this.#cgroupRemoved ? await Cgroup.open(this.id).catch(() => undefined) : undefined;
    await cg?.destroy().catch(() => undefined);
    // Another handle may be writing its last state update: retry ENOTEMPTY.
    // Nothing written by the container (an empty upper dir) leaves a dozen
    // small entries: removed synchronously; otherwise off the JS thread.
    let written = true;
    try {
      written = readdirSync(statePaths(this.dir).upper).length > 0;
    } catch {
      // no upper dir: whatever is there goes the slow way
    }
    if (written) await rm(this.dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
    else rmSync(this.dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  }
}

/**
 * Docker's device policy: nothing but the default devices may be read or
 * written (mknod stays allowed, as with CAP_MKNOD in Docker, but the node
 * cannot be used). Through the v1 devices controller where the host has one,
 * else through a BPF device program on the cgroup v2 directory. Privileged
 * containers keep access.
 */
async function restrictDevices(cgroup: Cgroup, spec: RuntimeSpec): Promise<void> {
  if (!spec.linux?.maskedPaths?.length) return; // privileged: no masked paths, full access
  const v1 = cgroup.paths.get('devices');
  if (v1) {
    // Thirteen tiny writes the kernel answers at once: synchronous, so each
    // costs a system call rather than a round trip through the thread pool.
    const fd = openSync(join(v1, 'devices.deny'), 'w');
    try {
      writeSync(fd, 'a');
    } finally {
      closeSync(fd);
    }
    const allow = openSync(join(v1, 'devices.allow'), 'w');
    try {
      for (const rule of DEFAULT_DEVICE_RULES) writeSync(allow, rule); // one rule per write(2)
    } finally {
      closeSync(allow);
    }
    return;
  }
  const v2 = cgroup.paths.get('');
  if (v2) attachDeviceFilter(v2, DEFAULT_DEVICE_POLICY);
}

/** The device cgroup rules Docker allows by default. */
export const DEFAULT_DEVICE_RULES = [
  'c *:* m',
  'b *:* m',
  'c 1:3 rwm', // null
  'c 1:5 rwm', // zero
  'c 1:7 rwm', // full
  'c 1:8 rwm', // random
  'c 1:9 rwm', // urandom
  'c 5:0 rwm', // tty
  'c 5:1 rwm', // console
  'c 5:2 rwm', // ptmx
  'c 136:* rwm', // pts
  'c 10:200 rwm', // tun
];

/** A log file opened on its first byte: a container that prints nothing costs no file I/O (logs() reads a missing file as empty). */
class LazyLog {
  readonly #path: string;
  #stream: WriteStream | undefined;
  constructor(path: string) {
    this.#path = path;
  }
  write(chunk: Buffer): void {
    (this.#stream ??= createWriteStream(this.#path, { flags: 'a' })).write(chunk);
  }
  end(): Promise<void> {
    const stream = this.#stream;
    return stream ? new Promise((r) => stream.end(r)) : Promise.resolve();
  }
}

/** This process's start time, for {@link ContainerState.parentStart}. */
let creatorStart: string | undefined;

/** {@link DEFAULT_DEVICE_RULES} as rules for the cgroup v2 device program (default deny). */
const DEFAULT_DEVICE_POLICY: readonly DeviceRule[] = DEFAULT_DEVICE_RULES.map((line) => parseDeviceRule(line));

/** What the spec says about privileges, as spawn options: the container's and every exec's. */
function securityOf(spec: RuntimeSpec): Pick<SpawnOptions, 'capabilities' | 'noNewPrivs' | 'seccomp'> {
  const proc = spec.process;
  const caps = proc?.capabilities;
  return {
    ...(caps
      ? {
          capabilities: {
            bounding: caps.bounding ?? [],
            effective: caps.effective ?? [],
            permitted: caps.permitted ?? [],
            inheritable: caps.inheritable ?? [],
            ambient: caps.ambient ?? [],
          },
        }
      : {}),
    noNewPrivs: proc?.noNewPrivileges ?? false,
    ...(spec.linux?.seccomp ? { seccomp: compileSeccomp(spec.linux.seccomp) } : {}),
  };
}

function cgroupLimits(spec: RuntimeSpec): CgroupLimits {
  const r = spec.linux?.resources ?? {};
  const limits: CgroupLimits = {};
  if (r.memory?.limit !== undefined) limits.memory = r.memory.limit;
  if (r.memory?.swap !== undefined) limits.memorySwap = r.memory.swap;
  if (r.cpu?.shares !== undefined) limits.cpuShares = r.cpu.shares;
  if (r.cpu?.quota !== undefined) limits.cpuQuota = r.cpu.quota;
  if (r.cpu?.period !== undefined && r.cpu.quota !== undefined) limits.cpuPeriod = r.cpu.period;
  if (r.cpu?.cpus !== undefined) limits.cpusetCpus = r.cpu.cpus;
  if (r.pids?.limit !== undefined) limits.pids = r.pids.limit;
  return limits;
}

function parseArgs(rest: string): string[] {
  const trimmed = rest.trim();
  if (trimmed.startsWith('[')) {
    const parsed = JSON.parse(trimmed) as unknown;
    if (Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')) return parsed as string[];
  }
  return ['/bin/sh', '-c', trimmed];
}

/** Applies Dockerfile-style config instructions (`docker commit --change`). */
export function applyChanges(config: ContainerConfig, changes: readonly string[]): Partial<ContainerConfig> {
  const next: ContainerConfig = structuredClone(config);
  for (const change of changes) {
    const m = /^\s*(\w+)\s+([\s\S]*)$/.exec(change);
    if (!m) throw new NacelleError(`cannot read change '${change}'`, { code: 'ERR_INVALID_ARG' });
    const [, instr, rest] = m as unknown as [string, string, string];
    switch (instr.toUpperCase()) {
      case 'CMD':
        next.Cmd = parseArgs(rest);
        break;
      case 'ENTRYPOINT':
        next.Entrypoint = parseArgs(rest);
        break;
      case 'ENV': {
        const env = (next.Env ?? []).filter((e) => !rest.trim().split(/\s+/).some((kv) => e.startsWith(`${kv.split('=')[0]}=`)));
        for (const kv of rest.trim().split(/\s+/)) env.push(kv.includes('=') ? kv : `${kv}=`);
        next.Env = env;
        break;
      }
      case 'WORKDIR':
        next.WorkingDir = rest.trim();
        break;
      case 'USER':
        next.User = rest.trim();
        break;
      case 'LABEL':
        next.Labels = { ...(next.Labels ?? {}) };
        for (const kv of rest.trim().split(/\s+/)) {
          const [k, ...v] = kv.split('=');
          next.Labels[k!] = v.join('=').replace(/^"|"$/g, '');
        }
        break;
      case 'EXPOSE':
        next.ExposedPorts = { ...(next.ExposedPorts ?? {}) };
        for (const p of rest.trim().split(/\s+/)) next.ExposedPorts[p.includes('/') ? p : `${p}/tcp`] = {};
        break;
      case 'STOPSIGNAL':
        next.StopSignal = rest.trim();
        break;
      default:
        throw new NacelleError(`unsupported change instruction '${instr}'`, { code: 'ERR_INVALID_ARG' });
    }
  }
  return next;
}

