/**
 * The built-in KVM monitor as a {@link VmMachine}: what `rt.vms.run(…, {
 * backend: 'kvm' })` boots on. The VM runs inside this process (native vCPU
 * and I/O threads of the addon, {@link VirtualMachine}), so there is no VM
 * process: no pid, nothing to outlive this process, and its memory is guest
 * RAM in this process's address space.
 *
 * Wiring: the guest kernel is entered through the PVH note of its ELF vmlinux
 * (extracted once from the bzImage and cached); the serial console (ttyS0) and
 * the guest channel (a virtio-console without multiport: `/dev/hvc0` in the
 * guest) are socketpairs the monitor hands over.
 * @module
 */
import { createHash } from 'node:crypto';
import { access, constants, open, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { InvalidArgumentError } from '../errors';
import { extractVmlinux } from './guest/vmlinux';
import { VirtualMachine, type VirtualMachineExit } from './machine';
import { type VmBootOptions, type VmMachine, type VmMachineCpuTime, type VmMachineEnd, type VmMachineMemory } from './machine-types';

/** Where the guest sees the channel on the built-in monitor: its virtio-console has no multiport, so its port is the hvc0 console. */
export const KVM_GUEST_CHANNEL_DEVICE = '/dev/hvc0';

/** Program name the built-in monitor is listed under in {@link KvmMachine.binary}: it has no binary of its own. */
export const KVM_MACHINE_BINARY = 'nacelle-kvm';

/** How long wait() lets the channel's last bytes arrive after the VM ended. */
const CHANNEL_DRAIN_MS = 1000;

/**
 * The kernel command line of the built-in monitor, before the caller's words:
 * the console on the first serial port, with the early console there too (a
 * kernel that dies before ttyS0 registers still says why; under `quiet` it
 * prints only the banner and the memory map), reboot through the keyboard
 * controller (the monitor's i8042 reset ends the VM), and reboot (so: end)
 * at once on panic. No TSC hints: this is hardware KVM or PVM, not emulation.
 * The monitor appends its `virtio_mmio.device=` words itself.
 */
export function kvmCmdline(extra?: string): string {
  return ['console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 quiet', extra ?? ''].filter(Boolean).join(' ');
}

/** Options of {@link KvmMachine.start}. */
export interface KvmMachineOptions extends VmBootOptions {
  /** An ELF vmlinux with a PVH note (see {@link kvmKernelImage} to get one from a bzImage), or a bzImage (64-bit boot protocol). */
  kernel: string;
  /** Block devices (virtio-blk: `/dev/vda`, `/dev/vdb`, … in order); read-only unless `readonly: false`. */
  disks?: readonly {
    /** A raw image file. */
    path: string;
    /** Read-only unless false. */
    readonly?: boolean;
  }[];
}

const extracting = new Map<string, Promise<string>>();

async function isElf(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(4), 0, 4, 0);
    return bytesRead === 4 && buffer.toString('latin1') === '\x7fELF';
  } finally {
    await fh.close();
  }
}

/**
 * The kernel file the built-in monitor boots: an ELF as it is, and for a
 * bzImage its vmlinux (entered through the PVH note), extracted once and
 * cached beside the bzImage as `vmlinux-<release>` where that directory is
 * writable and is not `/boot` (an extra vmlinux there would show up in the
 * boot loader's menu), else under `fallbackCacheDir`, in a subdirectory per
 * bzImage path. Concurrent calls for one kernel share one extraction.
 */
export async function kvmKernelImage(kernel: string, fallbackCacheDir: string): Promise<string> {
  const abs = resolve(kernel);
  if (await isElf(abs)) return abs;
  const beside = dirname(abs);
  const besideOk = !/^\/boot(\/|$)/.test(beside) && (await access(beside, constants.W_OK).then(() => true, () => false));
  const cacheDir = besideOk ? beside : join(fallbackCacheDir, createHash('sha256').update(abs).digest('hex').slice(0, 16));
  const key = `${abs}\0${cacheDir}`;
  let pending = extracting.get(key);
  if (!pending) {
    pending = extractVmlinux(abs, cacheDir).finally(() => extracting.delete(key));
    extracting.set(key, pending);
  }
  try {
    return await pending;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // a directory that said writable but is not (a read-only mount, an ACL): the fallback cache
    if (besideOk && (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')) {
      return extractVmlinux(abs, join(fallbackCacheDir, createHash('sha256').update(abs).digest('hex').slice(0, 16)));
    }
    throw err;
  }
}

function positiveInt(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}, got ${String(value)}`);
  return value;
}

/**
 * A VM on the built-in monitor with the surface {@link VmWorkload} drives.
 * Get one from {@link KvmMachine.start}.
 */
export class KvmMachine implements VmMachine {
  /** {@link KVM_MACHINE_BINARY}: the monitor runs in this process and has no binary. */
  readonly binary = KVM_MACHINE_BINARY;
  /** What it runs, written as qemu's arguments would say it (`-kernel`, `-initrd`, `-append`, `-smp`, `-m`, `-drive`, `-channel`). */
  readonly args: readonly string[];
  /** Guest memory in MiB. */
  readonly memoryMiB: number;
  /** When it was started (performance.now() milliseconds, before the kernel was loaded). */
  readonly startedAt: number;
  /** The command line the guest got (before the monitor's `virtio_mmio.device=` words). */
  readonly cmdline: string;
  /** The monitor's VM. */
  readonly vm: VirtualMachine;
  readonly #console = new PassThrough();
  #killSignal: NodeJS.Signals | undefined;
  #exit: Promise<VmMachineEnd>;
  #ended = false;
  #lastMemory: VmMachineMemory | undefined;

  private constructor(vm: VirtualMachine, args: string[], cmdline: string, startedAt: number) {
    this.vm = vm;
    this.args = args;
    this.cmdline = cmdline;
    this.memoryMiB = vm.memoryMiB;
    this.startedAt = startedAt;
    vm.console.on('data', (chunk: Buffer) => {
      // Nobody may be reading the console: keep at most 1 MiB buffered (the tail has the end of it).
      if (this.#console.readableLength < 1024 * 1024) this.#console.write(chunk);
    });
    const endConsole = (): void => {
      if (!this.#console.writableEnded) this.#console.end();
    };
    vm.console.once('end', endConsole);
    vm.console.once('close', endConsole);
    const channel = vm.channel;
    // 'end' comes once what the guest sent last has been read (by whoever reads it: the workload)
    const channelDone = channel
      ? new Promise<void>((res) => {
          channel.once('end', res);
          channel.once('close', res);
          channel.once('error', () => res());
        })
      : Promise.resolve();
    this.#exit = (async () => {
      const exit = await vm.wait();
      this.#ended = true;
      if (channel && !channel.readableEnded && !channel.destroyed && channel.listenerCount('data') > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([channelDone, new Promise<void>((res) => (timer = setTimeout(res, CHANNEL_DRAIN_MS)))]);
        clearTimeout(timer);
      }
      endConsole();
      return this.#mapExit(exit);
    })();
    this.#exit.catch(() => undefined);
  }

  /**
   * Creates the VM and starts its vCPUs. `kernel` is booted as given: pass the
   * ELF vmlinux from {@link kvmKernelImage} to enter a Linux bzImage's kernel
   * through PVH.
   */
  static async start(options: KvmMachineOptions): Promise<KvmMachine> {
    const cpus = positiveInt('cpus', options.cpus ?? 1, 255);
    const memoryMiB = positiveInt('memoryMiB', options.memoryMiB ?? 256, 1024 * 1024);
    const cmdline = options.rawCmdline ? (options.cmdline ?? '') : kvmCmdline(options.cmdline);
    const disks = (options.disks ?? []).map((d) => ({ path: d.path, readonly: d.readonly !== false }));
    const args = [
      '-kernel', options.kernel,
      ...(options.initrd ? ['-initrd', options.initrd] : []),
      '-append', cmdline,
      '-smp', String(cpus),
      '-m', `${memoryMiB}M`,
      ...disks.flatMap((d) => ['-drive', `file=${d.path},readonly=${d.readonly ? 'on' : 'off'}`]),
      ...(options.channel ? ['-channel', KVM_GUEST_CHANNEL_DEVICE] : []),
    ];
    const startedAt = performance.now();
    const vm = await VirtualMachine.create({
      kernel: options.kernel,
      ...(options.initrd ? { initrd: options.initrd } : {}),
      cmdline,
      cpus,
      memoryMiB,
      disks,
      channel: options.channel ?? false,
    });
    const machine = new KvmMachine(vm, args, cmdline, startedAt);
    try {
      vm.start();
    } catch (err) {
      await vm.kill().catch(() => undefined);
      throw err;
    }
    return machine;
  }

  #mapExit(exit: VirtualMachineExit): VmMachineEnd {
    switch (exit.reason) {
      case 'poweroff':
        return { exitCode: 0, signal: null, description: `the guest powered off (${exit.detail})` };
      case 'reset':
        return { exitCode: 0, signal: null, description: `the guest reset (${exit.detail}); with panic=-1 a kernel panic does that` };
      case 'crash':
        return { exitCode: 1, signal: null, description: `the guest crashed: ${exit.detail}` };
      default:
        return { exitCode: null, signal: this.#killSignal ?? 'SIGKILL', description: `the host killed it (${exit.detail})` };
    }
  }

  /** Undefined: the monitor runs in this process (its VM has no process of its own). */
  get pid(): undefined {
    return undefined;
  }

  /** The host end of the guest's virtio-console: write to send; null without a channel. */
  get channelIn(): Writable | null {
    return this.vm.channel;
  }

  /** The host end of the guest's virtio-console: what the guest sends; null without a channel. */
  get channelOut(): Readable | null {
    return this.vm.channel;
  }

  /** The serial console (kernel messages, init diagnostics). */
  get console(): Readable {
    return this.#console;
  }

  /** The last lines of the console, for error reports. */
  consoleTail(lines = 30): string {
    return this.vm.consoleTail(lines);
  }

  /** Empty: the monitor reports why a VM ended through {@link wait}'s description, not on the console. */
  monitorMessages(): string[] {
    return [];
  }

  /**
   * Resolves once the VM has ended, its threads and memory are released and
   * the last console and channel bytes have arrived: exit code 0 for a
   * poweroff or reset, 1 for a crash (the description has the registers), and
   * for a VM the host killed, the signal given to {@link kill}.
   */
  wait(): Promise<VmMachineEnd> {
    return this.#exit;
  }

  /** Whether the VM has ended. */
  get exited(): boolean {
    return this.#ended || this.vm.state === 'exited';
  }

  /** Parks every vCPU (the guest stops where it is). */
  async pause(): Promise<void> {
    await this.vm.pause();
  }

  /** Lets the vCPUs run on. */
  async resume(): Promise<void> {
    this.vm.resume();
  }

  /**
   * Ends the VM now. Whatever the signal, the vCPUs stop at once (the guest's
   * command gets its signals from the workload, over the channel); the signal
   * is what {@link wait} reports. @returns false when it had already ended
   */
  kill(signal: NodeJS.Signals = 'SIGKILL'): boolean {
    if (this.exited) return false;
    this.#killSignal ??= signal;
    void this.vm.kill().catch(() => undefined);
    return true;
  }

  /**
   * Guest RAM the host has backed (resident pages of the VM's memory, from
   * the monitor's stats), now and the highest seen. Not counted: the monitor's
   * threads and buffers (small, inside this process). After the end, the last
   * figures read while it ran.
   */
  async memory(): Promise<VmMachineMemory | undefined> {
    if (this.exited) return this.#lastMemory;
    try {
      const resident = this.vm.stats().residentBytes;
      this.#lastMemory = { rssBytes: resident, peakRssBytes: Math.max(resident, this.#lastMemory?.peakRssBytes ?? 0) };
    } catch {
      // ended meanwhile
    }
    return this.#lastMemory;
  }

  /** Undefined: the vCPU threads are threads of this process, and their CPU time is not told apart yet. */
  async cpuTime(): Promise<VmMachineCpuTime | undefined> {
    if (this.exited) return undefined;
    let stats: ReturnType<VirtualMachine['stats']>;
    try {
      stats = this.vm.stats();
    } catch {
      return undefined; // ended meanwhile
    }
    // The monitor's own threads (vCPUs and I/O), from /proc/self/task/<tid>/stat.
    const tids = [...stats.vcpus.map((v) => v.tid), stats.ioTid].filter((t) => t > 0);
    const hz = 100; // USER_HZ
    let user = 0;
    let system = 0;
    for (const tid of tids) {
      const stat = await readFile(`/proc/self/task/${tid}/stat`, 'utf8').catch(() => undefined);
      if (stat === undefined) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      user += Number(fields[11]) / hz;
      system += Number(fields[12]) / hz;
    }
    return { user, system };
  }
}

