/**
 * VirtualMachine: a guest kernel on the built-in KVM monitor (binding/kvm).
 * The monitor runs inside this process: one native thread per vCPU plus an
 * I/O thread; the serial console and the host↔guest channel are Duplex streams.
 * @module
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { InvalidArgumentError, NotFoundError, StateError, TimeoutError, fromNativeError } from '../errors';
import { lastLines } from './machine-types';
import { type NativeVmCreated, type NativeVmExit, type NativeVmHandle, native } from '../native';

/** Smallest and largest guest memory the monitor accepts (RAM lies below the 32-bit MMIO hole). */
export const VM_MEMORY_MIN_MIB = 8;
/** @see VM_MEMORY_MIN_MIB */
export const VM_MEMORY_MAX_MIB = 3072;

/** A disk the guest sees as a virtio-blk device (`/dev/vda`, `/dev/vdb`, … in order). */
export interface VmDiskOptions {
  /** A raw image file. */
  path: string;
  /** Opened read-only; the guest's writes fail with an I/O error. */
  readonly?: boolean;
  /** The serial number the guest reads (VIRTIO_BLK_T_GET_ID), up to 20 bytes. */
  id?: string;
}

/** What {@link VirtualMachine.create} takes. */
export interface VirtualMachineOptions {
  /** A bzImage, or an ELF vmlinux (entered through its PVH note when it has one). */
  kernel: string;
  /** An initramfs or initrd, loaded at the top of guest memory. */
  initrd?: string;
  /** The kernel command line; virtio-mmio devices are appended to it. */
  cmdline?: string;
  /** vCPUs (default 1); at most what KVM allows here. */
  cpus?: number;
  /** Guest memory in MiB (default 128), from 8 to 3072. */
  memoryMiB?: number;
  /** Block devices, in order. */
  disks?: VmDiskOptions[];
  /** Adds a virtio-console device: a byte stream between host and guest ({@link VirtualMachine.channel}). */
  channel?: boolean;
}

/** How a VM ended. */
export type VirtualMachineEndReason = 'poweroff' | 'reset' | 'crash' | 'killed';

/** The result of {@link VirtualMachine.wait}. */
export interface VirtualMachineExit {
  /** poweroff or reset: the guest asked; crash: triple fault, KVM internal error or emulation failure; killed: the host ended it. */
  reason: VirtualMachineEndReason;
  /** What happened, in words; for a crash, with the vCPU's registers. */
  detail: string;
}

/** Where a VM is in its life. */
export type VirtualMachineState = 'created' | 'running' | 'paused' | 'exited';

/** The result of {@link VirtualMachine.stats}. */
export interface VirtualMachineStats {
  /** Where the VM is in its life. */
  state: VirtualMachineState;
  /** KVM exits by reason (io, mmio, intr, …), all vCPUs together. */
  exits: Record<string, number>;
  /** Exits per vCPU. */
  vcpus: {
    /** Every KVM exit of this vCPU, whatever the reason. */
    exits: number;
    /** The vCPU thread's id in this process (`/proc/self/task/<tid>`), 0 before it runs. */
    tid: number;
  }[];
  /** The VM's I/O thread's id, 0 before it runs. */
  ioTid: number;
  /** Guest memory size in bytes. */
  memoryBytes: number;
  /** Guest memory the host has actually backed (resident pages). */
  residentBytes: number;
  /** Guest misbehaviour the virtio devices refused (bad descriptors, addresses outside RAM). */
  deviceErrors: number;
  /** The last such error, in words. */
  lastDeviceError?: string;
}

/** What {@link VirtualMachine.stop} takes. */
export interface StopVmOptions {
  /** Milliseconds the guest gets to act on Ctrl-Alt-Del before it is killed (default 10000). */
  timeout?: number;
}

/** What {@link VirtualMachine.restore} takes. */
export interface RestoreVmOptions {
  /** Leave the restored VM paused (default: it runs at once). */
  paused?: boolean;
}

/** Written beside vm.state so restore() can rebuild the same devices. */
interface SnapshotConfig {
  format: 'nacelle-vm-snapshot';
  version: 1;
  cpus: number;
  memoryMiB: number;
  disks: VmDiskOptions[];
  channel: boolean;
}

/** Console bytes kept for error reports. */
const TAIL_BYTES = 16 * 1024;

/**
 * A VM on the built-in monitor. Create it, optionally attach to
 * {@link console}, then {@link start}; {@link wait} resolves once it has ended
 * and every native resource is released.
 */
export class VirtualMachine {
  /** The serial console (COM1): what the guest prints, and what is written here reaches its UART. */
  readonly console: Duplex;
  /** The virtio-console channel, when asked for; otherwise null. */
  readonly channel: Duplex | null;
  /** vCPUs. */
  readonly cpus: number;
  /** Guest memory in MiB. */
  readonly memoryMiB: number;

  readonly #handle: NativeVmHandle;
  readonly #config: SnapshotConfig;
  readonly #exited: Promise<VirtualMachineExit>;
  #resolveExit!: (exit: VirtualMachineExit) => void;
  #state: VirtualMachineState = 'created';
  #exit: VirtualMachineExit | undefined;
  #tail: Buffer = Buffer.alloc(0);
  #consoleSocket!: Socket;
  #consoleDrained!: Promise<void>;

  private constructor(created: NativeVmCreated, config: SnapshotConfig, exitSink: { set: (fn: (e: NativeVmExit) => void) => void }) {
    this.#handle = created.handle;
    this.#config = config;
    this.cpus = created.cpus;
    this.memoryMiB = created.memoryMiB;
    this.#exited = new Promise((res) => {
      this.#resolveExit = res;
    });
    this.console = this.#wrapConsole(created.consoleFd);
    this.channel = created.channelFd >= 0 ? new Socket({ fd: created.channelFd, readable: true, writable: true }) : null;
    // When the VM ends with bytes the guest never read, its end closes with a reset:
    // that is the channel ending, not a failure to crash the process over.
    this.channel?.on('error', () => undefined);
    exitSink.set((e) => void this.#onExit(e));
  }

  /** Creates a VM with the kernel loaded; it does not run until {@link start}. */
  static async create(options: VirtualMachineOptions): Promise<VirtualMachine> {
    const cpus = options.cpus ?? 1;
    const memoryMiB = options.memoryMiB ?? 128;
    if (!Number.isInteger(cpus) || cpus < 1) throw new InvalidArgumentError(`cpus must be a positive integer, got ${cpus}`);
    if (!Number.isInteger(memoryMiB) || memoryMiB < VM_MEMORY_MIN_MIB || memoryMiB > VM_MEMORY_MAX_MIB) {
      throw new InvalidArgumentError(`memoryMiB must be an integer from ${VM_MEMORY_MIN_MIB} to ${VM_MEMORY_MAX_MIB}, got ${memoryMiB}`);
    }
    if (!options.kernel) throw new InvalidArgumentError('kernel is required');
    const disks = (options.disks ?? []).map((d) => ({ ...d, path: resolve(d.path) }));
    if (disks.length > 8) throw new InvalidArgumentError(`at most 8 disks, got ${disks.length}`);
    for (const d of disks) {
      if (d.id !== undefined && Buffer.byteLength(d.id) > 20) throw new InvalidArgumentError(`disk id '${d.id}' is longer than 20 bytes`);
    }
    const config: SnapshotConfig = { format: 'nacelle-vm-snapshot', version: 1, cpus, memoryMiB, disks, channel: options.channel ?? false };
    return VirtualMachine.#open(
      {
        kernel: resolve(options.kernel),
        initrd: options.initrd ? resolve(options.initrd) : null,
        cmdline: options.cmdline ?? '',
        cpus,
        memoryMiB,
        disks,
        channel: config.channel,
      },
      config,
    );
  }

  /**
   * A VM from a directory {@link snapshot} wrote: guest memory is the snapshot's
   * memory file mapped copy-on-write, so the file is never modified. It runs at
   * once unless `paused`. A damaged or mismatched snapshot is refused (`EINVAL`).
   */
  static async restore(dir: string, options: RestoreVmOptions = {}): Promise<VirtualMachine> {
    const abs = resolve(dir);
    let config: SnapshotConfig;
    try {
      config = JSON.parse(await readFile(join(abs, 'config.json'), 'utf8')) as SnapshotConfig;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`${abs} is not a VM snapshot (no config.json)`, { cause: err });
      throw new InvalidArgumentError(`${abs}/config.json is not readable JSON`, { cause: err });
    }
    if (config.format !== 'nacelle-vm-snapshot' || config.version !== 1) {
      throw new InvalidArgumentError(`${abs} holds a snapshot format this version cannot read (${String(config.format)} v${String(config.version)})`);
    }
    const vm = await VirtualMachine.#open(
      { restoreDir: abs, cpus: config.cpus, memoryMiB: config.memoryMiB, disks: config.disks, channel: config.channel },
      config,
    );
    vm.#start(options.paused ?? false);
    return vm;
  }

  static async #open(nativeConfig: Parameters<ReturnType<typeof native>['kvmCreate']>[0], config: SnapshotConfig): Promise<VirtualMachine> {
    let deliver: ((e: NativeVmExit) => void) | undefined;
    let early: NativeVmExit | undefined;
    const onExit = (e: NativeVmExit): void => {
      if (deliver) deliver(e);
      else early = e;
    };
    let created: NativeVmCreated;
    try {
      created = await native().kvmCreate(nativeConfig, onExit);
    } catch (err) {
      throw fromNativeError(err);
    }
    return new VirtualMachine(created, config, {
      set: (fn) => {
        deliver = fn;
        if (early) fn(early);
      },
    });
  }

  /** Where the VM is in its life. */
  get state(): VirtualMachineState {
    return this.#state;
  }

  /** How it ended, once it has. */
  get exit(): VirtualMachineExit | undefined {
    return this.#exit;
  }

  /** The last `lines` lines the console printed (of its last 16 KiB), for error reports. */
  consoleTail(lines = 30): string {
    return lastLines(this.#tail, lines);
  }

  /** Starts the vCPUs. */
  start(): void {
    if (this.#state !== 'created') throw new StateError(`the VM is ${this.#state}, not created`);
    this.#start(false);
  }

  #start(paused: boolean): void {
    try {
      native().kvmStart(this.#handle, paused);
    } catch (err) {
      throw fromNativeError(err);
    }
    this.#state = paused ? 'paused' : 'running';
  }

  /**
   * Resolves once the VM has ended and its threads and memory are released.
   * With `timeoutMs`, a VM still running then is killed and the promise rejects
   * with a TimeoutError carrying the console's last lines.
   */
  async wait(timeoutMs?: number): Promise<VirtualMachineExit> {
    if (timeoutMs === undefined) return this.#exited;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((res) => {
      timer = setTimeout(() => res('timeout'), timeoutMs);
    });
    const r = await Promise.race([this.#exited, timedOut]);
    clearTimeout(timer);
    if (r !== 'timeout') return r;
    await this.kill();
    throw new TimeoutError(`the VM did not end within ${timeoutMs} ms; it was killed. Console tail:\n${this.consoleTail()}`);
  }

  /** Parks every vCPU outside the guest; resolves when they are. */
  async pause(): Promise<void> {
    if (this.#state !== 'running') throw new StateError(`the VM is ${this.#state}, not running`);
    try {
      await native().kvmPause(this.#handle);
    } catch (err) {
      throw fromNativeError(err);
    }
    if (this.#state === 'running') this.#state = 'paused';
  }

  /** Lets a paused VM run again. */
  resume(): void {
    if (this.#state !== 'paused') throw new StateError(`the VM is ${this.#state}, not paused`);
    try {
      native().kvmResume(this.#handle);
    } catch (err) {
      throw fromNativeError(err);
    }
    this.#state = 'running';
  }

  /**
   * Asks the guest to shut down (Ctrl-Alt-Del on its keyboard, as Firecracker
   * does), and kills it when it has not ended after `timeout` ms. A paused or
   * never-started VM is killed at once.
   */
  async stop(options: StopVmOptions = {}): Promise<VirtualMachineExit> {
    if (this.#state === 'exited') return this.#exited;
    if (this.#state !== 'running') return this.kill();
    try {
      native().kvmCtrlAltDel(this.#handle);
    } catch {
      return this.#exited;
    }
    const timeout = options.timeout ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((res) => {
      timer = setTimeout(() => res('timeout'), timeout);
    });
    const r = await Promise.race([this.#exited, timedOut]);
    clearTimeout(timer);
    return r === 'timeout' ? this.kill() : r;
  }

  /** Ends the VM now (reason `killed`); resolves like {@link wait}. */
  async kill(): Promise<VirtualMachineExit> {
    if (this.#state === 'created') {
      // never started: nothing runs, so release it here
      this.#state = 'exited';
      await native().kvmDestroy(this.#handle);
      this.#finish({ reason: 'killed', detail: 'killed before it started' });
      return this.#exited;
    }
    if (this.#state !== 'exited') {
      try {
        native().kvmKill(this.#handle);
      } catch {
        // already on its way out
      }
    }
    return this.#exited;
  }

  /** vCPU exits by reason, guest memory and what of it is resident, device errors. */
  stats(): VirtualMachineStats {
    if (this.#state === 'exited') throw new StateError('the VM has exited');
    try {
      return native().kvmStats(this.#handle);
    } catch (err) {
      throw fromNativeError(err);
    }
  }

  /**
   * Writes a snapshot of a paused VM into `dir` (created if needed): vm.state
   * (vCPUs, interrupt controllers, timer, clock, devices; versioned, with a
   * checksum), memory (sparse) and config.json. The disks are referenced by
   * path, not copied.
   */
  async snapshot(dir: string): Promise<void> {
    if (this.#state !== 'paused') throw new StateError(`a snapshot needs a paused VM; this one is ${this.#state}`);
    const abs = resolve(dir);
    await mkdir(abs, { recursive: true });
    try {
      await native().kvmSnapshot(this.#handle, abs);
    } catch (err) {
      throw fromNativeError(err);
    }
    const tmp = join(abs, `.config.json.${process.pid}`);
    await writeFile(tmp, `${JSON.stringify(this.#config, null, 2)}\n`);
    await rename(tmp, join(abs, 'config.json'));
  }

  #wrapConsole(fd: number): Duplex {
    const socket = new Socket({ fd, readable: true, writable: true });
    this.#consoleSocket = socket;
    this.#consoleDrained = new Promise((res) => {
      socket.once('end', res);
      socket.once('close', res);
    });
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    socket.on('data', (chunk: Buffer) => {
      this.#tail = Buffer.concat([this.#tail, chunk]);
      if (this.#tail.length > TAIL_BYTES) this.#tail = this.#tail.subarray(this.#tail.length - TAIL_BYTES);
      if (!out.write(chunk)) socket.pause();
    });
    out.on('drain', () => socket.resume());
    socket.on('end', () => out.end());
    socket.on('error', () => out.end());
    const duplex = Duplex.from({ readable: out, writable: socket });
    duplex.on('error', () => undefined);
    return duplex;
  }

  async #onExit(e: NativeVmExit): Promise<void> {
    this.#state = 'exited';
    try {
      await native().kvmDestroy(this.#handle);
    } catch {
      // destroy only fails for a handle already destroyed
    }
    // The monitor's end of the console is closed now: let what the guest printed
    // last reach the stream before wait() resolves (unless nobody is reading it).
    if (!this.#consoleSocket.isPaused()) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#consoleDrained, new Promise((res) => (timer = setTimeout(res, 1000)))]);
      clearTimeout(timer);
    }
    // A channel nobody reads would hold its socket open for good: close it.
    const ch = this.channel;
    if (ch && !ch.destroyed && ch.listenerCount('data') === 0 && ch.listenerCount('readable') === 0) ch.destroy();
    this.#finish({ reason: e.reason, detail: e.detail });
  }

  #finish(exit: VirtualMachineExit): void {
    if (this.#exit) return;
    this.#exit = exit;
    this.#state = 'exited';
    this.#resolveExit(exit);
  }
}
