/**
 * VmWorkload: an image's command running inside a virtual machine, with the
 * surface of a Container where it makes sense: stdio streams, wait, kill,
 * stop, stats, remove.
 * @module
 */
import { rm } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { PassThrough, type Readable, Writable } from 'node:stream';
import { ConflictError, NacelleError, StateError, TimeoutError } from '../errors';
import { signalNumber } from '../process/spawn';
import { diskUsage } from '../store/du';
import type { QemuAccel, VmBackendName } from './backend';
import { FrameDecoder, FrameType, decodeExit, encodeFrame, encodeSignal, encodeStdin } from './protocol';
import type { VmMachine } from './machine-types';
import type { QemuMemory } from './qemu';

/** Why a VM workload ended. */
export type VmExitReason = 'exited' | 'killed' | 'stopped';

/** How a VM workload ended. */
export interface VmExit {
  /** The command's exit code (128 + n when signal n ended it, as for containers); null when unknown. */
  exitCode: number | null;
  /** The signal that ended the command, or (reason `killed`/`stopped`) the one sent to the VM. */
  signal: NodeJS.Signals | null;
  /** `exited`: the guest reported the command's end; `killed`/`stopped`: the host ended the VM. */
  reason: VmExitReason;
  /** Why the command could not start, as the guest init reported it (exit code 127 or 126). */
  error?: string;
}

/** Where a VM workload is in its life. */
export type VmStatus = 'booting' | 'running' | 'exited';

/** Milliseconds from `rt.vms.run()` being called to each event (undefined until it happens). */
export interface VmTimings {
  /** The initramfs was ready and qemu started. */
  launchedMs?: number;
  /** The guest init reported READY (kernel booted, channel open). */
  readyMs?: number;
  /** The first byte of the command's stdout or stderr arrived. */
  firstOutputMs?: number;
  /** The guest reported the command's exit. */
  exitMs?: number;
  /** The VM process was gone. */
  endedMs?: number;
}

/** Resource use of a VM workload (the figures of its qemu process, or of its VM on the built-in monitor). */
export interface VmStats {
  /** The backend. */
  backend: VmBackendName;
  /** The accelerator (qemu). */
  accel?: QemuAccel;
  /** `qemu+tcg`, `qemu+kvm` or `kvm monitor`. */
  label: string;
  /** The VM process's pid (while it runs); absent for the built-in monitor, which runs in this process. */
  pid?: number;
  /** Guest memory configured, in MiB. */
  memoryMiB: number;
  /** Guest vCPUs configured. */
  cpus: number;
  /**
   * qemu: the VM process's memory, now (VmRSS) and peak (VmHWM). The built-in
   * monitor: the guest RAM the host has backed (resident pages), now and the
   * highest seen; the monitor's own threads are not counted. Last figures read
   * while it ran, once it has exited.
   */
  memory: QemuMemory | null;
  /** CPU seconds the VM process used (user, system), at the last reading; null for the built-in monitor (its threads are this process's). */
  cpu: {
    /** User-mode CPU seconds. */
    userSeconds: number;
    /** Kernel-mode CPU seconds. */
    systemSeconds: number;
  } | null;
  /** Disk: bytes of this VM's own files (its state directory, the initramfs in it included; measured at the end once it has ended) and of the initramfs alone. */
  disk: {
    /** Bytes of this VM's own files (its state directory, the per-run initramfs included). */
    stateDirBytes: number;
    /** Bytes of the initramfs it booted with. */
    initramfsBytes: number;
  };
  /** Event times since launch. */
  timings: VmTimings;
}

/** A VM ended without reporting its command's exit: it crashed or timed out. The console tail says why. */
export class VmFailedError extends NacelleError {
  /** The last lines of the VM's serial console (kernel and init messages, qemu's errors). */
  readonly consoleTail: string;

  /**
   * @param message - what happened
   * @param consoleTail - the end of the console output
   * @param code - `ERR_VM_FAILED` by default
   */
  constructor(message: string, consoleTail: string, code = 'ERR_VM_FAILED') {
    super(`${message}${consoleTail ? `\n--- console (last lines) ---\n${consoleTail}` : '\n(the console printed nothing)'}`, { code });
    this.consoleTail = consoleTail;
  }
}

/** The guest did not report in time (boot or run timeout); the VM was killed. `code` is `ETIMEDOUT`. */
export class VmTimeoutError extends TimeoutError {
  /** The last lines of the VM's serial console. */
  readonly consoleTail: string;

  /**
   * @param message - what was waited for and for how long
   * @param consoleTail - the end of the console output
   */
  constructor(message: string, consoleTail: string) {
    super(`${message}${consoleTail ? `\n--- console (last lines) ---\n${consoleTail}` : '\n(the console printed nothing)'}`);
    this.consoleTail = consoleTail;
  }
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([name, num]) => [num, name as NodeJS.Signals]));

/** How long a guest that reported EXIT gets to power off before qemu is killed (default of {@link VmWorkloadInit.poweroffGraceMs}). */
const POWEROFF_GRACE_MS = 10_000;

/** What the service hands a new workload. @internal */
export interface VmWorkloadInit {
  id: string;
  dir: string;
  machine: VmMachine;
  backend: VmBackendName;
  accel?: QemuAccel;
  label: string;
  backendReason: string;
  cpus: number;
  initramfs: { path: string; bytes: number };
  autoRemove: boolean;
  stdin: boolean;
  bootTimeoutMs: number;
  timeoutMs?: number;
  /** How long a guest that reported EXIT gets to end by itself before the machine is killed (default 10 s). */
  poweroffGraceMs?: number;
  /** performance.now() when run() was called. */
  t0: number;
  onEnd: (vm: VmWorkload) => void;
}

/** A workload running in a VM. Get one from `rt.vms.run`. */
export class VmWorkload {
  /** 64 hex characters. */
  readonly id: string;
  /** The state directory (`<root>/vms/<id>`). */
  readonly dir: string;
  /** The backend that runs it. */
  readonly backend: VmBackendName;
  /** For qemu: the accelerator. */
  readonly accel: QemuAccel | undefined;
  /** `qemu+tcg`, `qemu+kvm` or `kvm monitor`: for labelling figures. */
  readonly backendLabel: string;
  /** Why that backend was chosen (`'auto'` explains its pick). */
  readonly backendReason: string;
  readonly #machine: VmMachine;
  readonly #init: VmWorkloadInit;
  readonly #stdout = new PassThrough();
  readonly #stderr = new PassThrough();
  readonly #stdin: Writable | null;
  readonly #decoder = new FrameDecoder();
  readonly #timings: VmTimings = {};
  #status: VmStatus = 'booting';
  #paused = false;
  #guestExit: { exitCode: number; signal: number } | undefined;
  #guestError: string | undefined;
  #endedBy: { reason: 'killed' | 'stopped' | 'timeout'; signal: NodeJS.Signals; what?: string } | undefined;
  #pendingStdin: Buffer[] = [];
  #stdinEnded = false;
  #timers: NodeJS.Timeout[] = [];
  #sampler: NodeJS.Timeout | undefined;
  #cpu: { userSeconds: number; systemSeconds: number } | null = null;
  #exit: Promise<VmExit>;
  #stateDirBytes: number | undefined;
  #bootTimer: NodeJS.Timeout | undefined;

  /** @internal */
  constructor(init: VmWorkloadInit) {
    this.#init = init;
    this.id = init.id;
    this.dir = init.dir;
    this.backend = init.backend;
    this.accel = init.accel;
    this.backendLabel = init.label;
    this.backendReason = init.backendReason;
    this.#machine = init.machine;
    this.#timings.launchedMs = init.machine.startedAt - init.t0;
    this.#stdin = init.stdin ? this.#makeStdin() : null;
    const out = init.machine.channelOut;
    if (out) {
      out.on('data', (chunk: Buffer) => this.#onChannel(chunk));
      out.on('error', () => undefined);
    }
    init.machine.channelIn?.on('error', () => undefined); // EPIPE once qemu is gone: the exit path reports it
    this.#bootTimer = setTimeout(() => {
      if (this.#status === 'booting') this.#endBy('timeout', `guest did not report ready within ${init.bootTimeoutMs} ms`);
    }, init.bootTimeoutMs);
    this.#timers.push(this.#bootTimer);
    if (init.timeoutMs !== undefined) {
      this.#timers.push(
        setTimeout(() => {
          if (this.#status !== 'exited' && !this.#guestExit) this.#endBy('timeout', `command did not finish within ${init.timeoutMs} ms`);
        }, init.timeoutMs),
      );
    }
    // VmHWM is only readable while qemu runs: read it now and then (and on EXIT) so the peak survives.
    this.#sampler = setInterval(() => void this.#sample(), 250);
    this.#sampler.unref();
    this.#exit = this.#watch();
    this.#exit.catch(() => undefined);
  }

  /** Where it is: booting (until the guest reports READY), running, exited. */
  get status(): VmStatus {
    return this.#status;
  }

  /** Whether the VM is frozen by {@link pause}. */
  get paused(): boolean {
    return this.#paused;
  }

  /**
   * Freezes the whole VM, guest kernel and command alike, as `docker pause`
   * freezes a container (qemu: its process is stopped; the built-in monitor:
   * every vCPU is parked). Time limits keep running.
   */
  async pause(): Promise<void> {
    if (this.#status !== 'running' || this.#guestExit) throw new StateError(`cannot pause vm ${this.id.slice(0, 12)}: it is ${this.#guestExit ? 'ending' : this.#status}`);
    if (this.#paused) throw new StateError(`vm ${this.id.slice(0, 12)} is already paused`);
    await this.#machine.pause();
    this.#paused = true;
  }

  /** Lets a paused VM run on. */
  async resume(): Promise<void> {
    if (!this.#paused) throw new StateError(`vm ${this.id.slice(0, 12)} is not paused`);
    this.#paused = false;
    if (this.#status !== 'exited') await this.#machine.resume();
  }

  /**
   * The VM process's pid while it runs (qemu). Undefined for the built-in
   * monitor (`backend: 'kvm'`): its VM runs on threads of this process.
   */
  get pid(): number | undefined {
    return this.#status === 'exited' ? undefined : this.#machine.pid;
  }

  /** The command's stdout. */
  get stdout(): Readable {
    return this.#stdout;
  }

  /** The command's stderr. */
  get stderr(): Readable {
    return this.#stderr;
  }

  /** The command's stdin when run with `stdin: true`; end it to close the command's stdin. */
  get stdin(): Writable | null {
    return this.#stdin;
  }

  /** The VM's serial console (kernel and init messages) as it is written. */
  get console(): Readable {
    return this.#machine.console;
  }

  /** The last lines of the serial console. */
  consoleTail(lines = 30): string {
    return this.#machine.consoleTail(lines);
  }

  /**
   * The qemu command line (binary and arguments). For the built-in monitor,
   * which has no program of its own: `nacelle-kvm` and the same facts (kernel,
   * initrd, command line, vCPUs, memory, disks) written as qemu's arguments.
   */
  get commandLine(): string[] {
    return [this.#machine.binary, ...this.#machine.args];
  }

  /** Event times since `rt.vms.run()` was called. */
  get timings(): Readonly<VmTimings> {
    return { ...this.#timings };
  }

  #since(): number {
    return performance.now() - this.#init.t0;
  }

  #makeStdin(): Writable {
    return new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        if (this.#status === 'exited') return cb();
        if (this.#status === 'booting') {
          // The init puts its channel in raw mode before READY: until then a
          // tty would echo what arrives, so nothing is sent early.
          this.#pendingStdin.push(Buffer.from(chunk));
          return cb();
        }
        this.#sendStdin(chunk, cb);
      },
      final: (cb) => {
        this.#stdinEnded = true;
        if (this.#status === 'running') this.#send(encodeFrame(FrameType.STDIN_EOF));
        cb();
      },
    });
  }

  #send(frame: Buffer, cb?: () => void): void {
    const input = this.#machine.channelIn;
    if (!input || input.destroyed || input.writableEnded) {
      cb?.();
      return;
    }
    if (input.write(frame)) cb?.();
    else input.once('drain', () => cb?.());
  }

  #sendStdin(chunk: Buffer, cb?: () => void): void {
    const frames = encodeStdin(chunk);
    frames.forEach((f, i) => this.#send(f, i === frames.length - 1 ? cb : undefined));
    if (frames.length === 0) cb?.();
  }

  #onChannel(chunk: Buffer): void {
    let frames;
    try {
      frames = this.#decoder.push(chunk);
    } catch {
      return;
    }
    for (const frame of frames) {
      switch (frame.type) {
        case FrameType.READY:
          if (this.#status !== 'booting') break;
          this.#status = 'running';
          this.#timings.readyMs = this.#since();
          clearTimeout(this.#bootTimer);
          for (const data of this.#pendingStdin.splice(0)) this.#sendStdin(data);
          if (this.#stdinEnded) this.#send(encodeFrame(FrameType.STDIN_EOF));
          break;
        case FrameType.STDOUT:
        case FrameType.STDERR: {
          this.#timings.firstOutputMs ??= this.#since();
          const target = frame.type === FrameType.STDOUT ? this.#stdout : this.#stderr;
          // Nobody may be reading: keep at most 8 MiB buffered, as a container does.
          if (!target.writableEnded && target.readableLength < 8 * 1024 * 1024) target.write(frame.payload);
          break;
        }
        case FrameType.ERROR:
          this.#guestError = frame.payload.toString('utf8');
          break;
        case FrameType.EXIT:
          if (this.#guestExit) break;
          try {
            this.#guestExit = decodeExit(frame.payload);
          } catch {
            break;
          }
          this.#timings.exitMs = this.#since();
          void this.#sample();
          this.#endOutput();
          // The init powers off after EXIT; a guest that hangs there is not waited for long.
          this.#timers.push(setTimeout(() => this.#machine.kill('SIGKILL'), this.#init.poweroffGraceMs ?? POWEROFF_GRACE_MS).unref());
          break;
        default:
          break; // unknown types are skipped: a newer init may send more
      }
    }
  }

  #endOutput(): void {
    for (const s of [this.#stdout, this.#stderr]) if (!s.writableEnded) s.end();
  }

  async #sample(): Promise<void> {
    await this.#machine.memory().catch(() => undefined);
    const cpu = await this.#machine.cpuTime().catch(() => undefined);
    if (cpu) this.#cpu = { userSeconds: cpu.user, systemSeconds: cpu.system };
  }

  #endBy(reason: 'killed' | 'stopped' | 'timeout', what?: string, signal: NodeJS.Signals = 'SIGKILL'): void {
    this.#endedBy ??= { reason, signal, ...(what !== undefined ? { what } : {}) };
    this.#machine.kill(signal);
  }

  async #watch(): Promise<VmExit> {
    const status = await this.#machine.wait();
    this.#timings.endedMs = this.#since();
    this.#status = 'exited';
    this.#paused = false;
    for (const t of this.#timers.splice(0)) clearTimeout(t);
    if (this.#sampler) clearInterval(this.#sampler);
    this.#sampler = undefined;
    this.#endOutput();
    this.#machine.channelIn?.destroy();
    try {
      const ended = this.#endedBy;
      const guest = this.#guestExit;
      const short = this.id.slice(0, 12);
      if (guest) {
        const signal = guest.signal ? (SIGNAL_NAMES.get(guest.signal) ?? (`SIG${guest.signal}` as NodeJS.Signals)) : null;
        return { exitCode: guest.exitCode, signal, reason: 'exited', ...(this.#guestError !== undefined ? { error: this.#guestError } : {}) };
      }
      if (ended?.reason === 'timeout') {
        throw new VmTimeoutError(`vm ${short}: ${ended.what ?? 'timed out'}; killed it`, this.#machine.consoleTail());
      }
      if (ended) return { exitCode: 128 + signalNumber(ended.signal), signal: ended.signal, reason: ended.reason };
      const messages = this.#machine.monitorMessages();
      const guestSaid = this.#guestError ? `; the guest said: ${this.#guestError}` : '';
      if (status.description !== undefined) {
        // the built-in monitor: how the VM ended, in words (a crash with its registers), last
        throw new VmFailedError(`vm ${short}: ${this.backendLabel}: the VM ended before the guest reported its command's exit${guestSaid}: ${status.description}`, this.#machine.consoleTail());
      }
      const how = status.signal ? `was killed by ${status.signal}` : `exited with code ${status.exitCode}`;
      throw new VmFailedError(
        `vm ${short}: ${this.backendLabel} ${how} before the guest reported its command's exit${messages.length ? ` (${messages.join('; ')})` : ''}${guestSaid}`,
        this.#machine.consoleTail(),
      );
    } finally {
      this.#init.onEnd(this);
      // Measured before autoRemove takes it, so stats() can still say what the VM cost on disk.
      this.#stateDirBytes = await diskUsage(this.dir).catch(() => 0);
      if (this.#init.autoRemove) await rm(this.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 }).catch(() => undefined);
    }
  }

  /**
   * Resolves when the VM has ended: `{ exitCode, signal, reason }`. Rejects
   * with {@link VmTimeoutError} when the guest did not report in time, and with
   * {@link VmFailedError} when the VM ended without reporting (a kernel panic,
   * an init that could not start); both carry the console tail.
   */
  async wait(options: { timeoutMs?: number } = {}): Promise<VmExit> {
    if (options.timeoutMs === undefined) return this.#exit;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.#exit,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new TimeoutError(`vm ${this.id.slice(0, 12)} still running after ${options.timeoutMs} ms`)), options.timeoutMs);
        }),
      ]);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Ends the VM by signalling its process (default SIGKILL; on the built-in
   * monitor the VM is stopped at once): the guest's command ends with it. The
   * exit reads `{ exitCode: 128 + n, signal, reason: 'killed' }`. Another
   * signal, while the command runs, goes to the command, as in a container.
   */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.#status === 'exited') throw new StateError(`cannot kill vm ${this.id.slice(0, 12)}: it has exited`);
    if (this.#paused && signal !== 'SIGKILL') await this.resume(); // a frozen guest cannot act on a signal
    const num = signalNumber(signal);
    if (signal !== 'SIGKILL' && this.#status === 'running' && !this.#guestExit) {
      // to the command, as a container's process gets it: its handlers run, and its exit is reported
      this.#send(encodeSignal(num));
      return;
    }
    this.#endBy('killed', undefined, signal);
  }

  /**
   * Stops the command as a container is stopped: SIGTERM to it (its handlers
   * run; the VM powers off once it exits), then, after `timeout` seconds
   * (default 10), SIGKILL to the VM. A VM still booting is ended at once.
   */
  async stop(options: { timeout?: number } = {}): Promise<VmExit> {
    if (this.#status === 'exited') throw new StateError(`cannot stop vm ${this.id.slice(0, 12)}: it has exited`);
    if (this.#paused) await this.resume(); // as docker stop thaws a paused container first
    if (this.#status !== 'running' || this.#guestExit) {
      this.#endBy('stopped', undefined, 'SIGTERM');
    } else {
      this.#send(encodeSignal(signalNumber('SIGTERM')));
    }
    try {
      return await this.wait({ timeoutMs: (options.timeout ?? 10) * 1000 });
    } catch (err) {
      if (!(err instanceof TimeoutError) || err instanceof VmTimeoutError) throw err;
      this.#endBy('stopped', undefined, 'SIGKILL');
      return this.wait();
    }
  }

  /** Memory, CPU and disk use of the VM, with the backend that ran it. Works after exit (last figures read). */
  async stats(): Promise<VmStats> {
    if (this.#status !== 'exited') await this.#sample();
    const memory = (await this.#machine.memory()) ?? null;
    const stateDirBytes = this.#stateDirBytes ?? (await diskUsage(this.dir).catch(() => 0));
    return {
      backend: this.backend,
      ...(this.accel ? { accel: this.accel } : {}),
      label: this.backendLabel,
      ...(this.#status !== 'exited' && this.#machine.pid !== undefined ? { pid: this.#machine.pid } : {}),
      memoryMiB: this.#machine.memoryMiB,
      cpus: this.#init.cpus,
      memory,
      cpu: this.#cpu,
      disk: { stateDirBytes, initramfsBytes: this.#init.initramfs.bytes },
      timings: this.timings,
    };
  }

  /** Removes the VM's state directory. A running VM needs `force` (it is killed). */
  async remove(options: { force?: boolean } = {}): Promise<void> {
    if (this.#status !== 'exited') {
      if (!options.force) throw new ConflictError(`vm ${this.id.slice(0, 12)} is ${this.#status}: stop it first or remove with force`);
      this.#endBy('killed');
      await this.#exit.catch(() => undefined);
    }
    await rm(this.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
  }
}
