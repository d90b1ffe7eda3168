/**
 * The qemu backend: `qemu-system-x86_64 -M microvm` booting a kernel and an
 * initramfs, on KVM when /dev/kvm is usable and on TCG otherwise.
 *
 * Wiring: the guest init's channel is a virtio-serial port (`/dev/vport0p1` in
 * the guest) whose host end is qemu's own stdin and stdout (`-chardev stdio`), so
 * no socket path, no listener another process could reach first, and nothing
 * to clean up on disk. The serial console (ttyS0: kernel messages and the
 * init's diagnostics) goes to qemu's stderr, where qemu's own error messages
 * land too; the host keeps its tail for error reports. qemu is started with
 * nacelle's own spawn, which sets PR_SET_PDEATHSIG (SIGKILL): qemu dies with
 * the Node process, whatever ends it.
 * @module
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { InvalidArgumentError, StateError } from '../errors';
import { type ExitStatus, type Process, spawn } from '../process/spawn';
import { type QemuAccel, findQemu, hardwareKvmMissing } from './backend';
import { probeKvm } from './kvm';
import { type VmBootOptions, type VmMachine, lastLines } from './machine-types';

/** A block device for the guest (virtio-blk on virtio-mmio: `/dev/vda`, `/dev/vdb`, … in order). */
export interface QemuDisk {
  /** Host path of a raw disk image. */
  path: string;
  /** Attach read-only (default true). */
  readonly?: boolean;
}

/** CPU time a qemu process used. */
export interface QemuCpuTime {
  /** User-mode seconds. */
  user: number;
  /** Kernel-mode seconds. */
  system: number;
}

/** Options of {@link QemuMachine.start}. */
export interface QemuMachineOptions extends VmBootOptions {
  /** The qemu binary (default: {@link findQemu}). */
  qemu?: string;
  /** A bzImage. */
  kernel: string;
  /** `kvm` or `tcg` (default: kvm where /dev/kvm is hardware virtualization, tcg otherwise: under PVM a guest on qemu+kvm dies). */
  accel?: QemuAccel;
  /**
   * `pipe` (default): the serial console is readable as {@link QemuMachine.console};
   * `inherit`: the serial console and qemu's monitor are this process's terminal
   * (Ctrl-A x quits), for interactive boots. `inherit` cannot have a channel.
   */
  console?: 'pipe' | 'inherit';
  /** Block devices. */
  disks?: readonly QemuDisk[];
  /** Extra qemu arguments, appended last. */
  extraArgs?: readonly string[];
}

/** Memory figures of the qemu process, from /proc/<pid>/status. */
export interface QemuMemory {
  /** Resident set size now, in bytes (VmRSS). */
  rssBytes: number;
  /** Peak resident set size, in bytes (VmHWM). */
  peakRssBytes: number;
}

/** The name of the channel port (`/sys/class/virtio-ports/<port>/name` in the guest). */
const CHANNEL_NAME = 'io.nacelle.channel';

/** Where the guest sees the channel: the first port after the console slot of the only virtio-serial device. */
export const GUEST_CHANNEL_DEVICE = '/dev/vport0p1';

/** Bytes of the console tail kept for error reports. */
const CONSOLE_TAIL_BYTES = 16 * 1024;

let tscKhz: number | null | undefined;

/** The host's TSC frequency in kHz (from /proc/cpuinfo), so a TCG guest can skip calibrating it. */
function hostTscKhz(): number | null {
  if (tscKhz !== undefined) return tscKhz;
  try {
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
    tscKhz = mhz ? Math.round(Number(mhz) * 1000) : null;
  } catch {
    tscKhz = null;
  }
  return tscKhz;
}

/**
 * The kernel command line nacelle passes by default: the console on the first
 * serial port, power off (not reboot) on panic, and on TCG the timer flags
 * that keep an emulated boot from spending seconds calibrating.
 */
export function defaultCmdline(accel: QemuAccel): string {
  const words = ['console=ttyS0', 'panic=-1', 'quiet'];
  if (accel === 'tcg') {
    const khz = hostTscKhz();
    if (khz) words.push(`tsc_early_khz=${khz}`);
    words.push('no_timer_check');
  }
  return words.join(' ');
}

function positiveInt(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}, got ${String(value)}`);
  return value;
}

/**
 * The qemu argument list for a machine (without the binary). A pure function:
 * exported for tests and for printing what would run.
 */
export function qemuArgs(options: QemuMachineOptions & { accel: QemuAccel }): string[] {
  const cpus = positiveInt('cpus', options.cpus ?? 1, 255);
  const memoryMiB = positiveInt('memoryMiB', options.memoryMiB ?? 256, 1024 * 1024);
  if (options.console === 'inherit' && options.channel) throw new InvalidArgumentError("a machine with console 'inherit' cannot have a channel");
  const cmdline = options.rawCmdline ? (options.cmdline ?? '') : [defaultCmdline(options.accel), options.cmdline ?? ''].filter(Boolean).join(' ');
  const args = [
    '-M', 'microvm',
    '-accel', options.accel,
    '-cpu', options.accel === 'kvm' ? 'host' : 'max',
    '-smp', String(cpus),
    '-m', `${memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', options.kernel,
    ...(options.initrd ? ['-initrd', options.initrd] : []),
    '-append', cmdline,
    '-serial', options.console === 'inherit' ? 'mon:stdio' : 'file:/dev/stderr',
  ];
  if (options.channel) {
    // A virtio-serial port, not a virtconsole: /dev/vport0p1 appears only once
    // the port is ready (the hvc0 node exists before its console does, and
    // opening it early fails with ENODEV), and it is no tty, so no line
    // discipline can touch the binary frames.
    args.push('-chardev', 'stdio,id=nacelle,signal=off', '-device', 'virtio-serial-device', '-device', `virtserialport,chardev=nacelle,nr=1,name=${CHANNEL_NAME}`);
  }
  // (qemu reads a comma in an option value as a separator; a doubled one is a comma)
  (options.disks ?? []).forEach((d, i) => {
    args.push(
      '-drive', `id=disk${i},file=${d.path.replace(/,/g, ',,')},format=raw,if=none,readonly=${d.readonly === false ? 'off' : 'on'}`,
      '-device', `virtio-blk-device,drive=disk${i}`,
    );
  });
  args.push(...(options.extraArgs ?? []));
  return args;
}

/** A running qemu. Get one from {@link QemuMachine.start}. */
export class QemuMachine implements VmMachine {
  /** The qemu binary. */
  readonly binary: string;
  /** The arguments it was started with. */
  readonly args: readonly string[];
  /** The accelerator in use. */
  readonly accel: QemuAccel;
  /** Guest memory in MiB. */
  readonly memoryMiB: number;
  /** When qemu was started (performance.now() milliseconds). */
  readonly startedAt: number;
  readonly #process: Process;
  readonly #console = new PassThrough();
  #tail: Buffer = Buffer.alloc(0);
  #exit: Promise<ExitStatus>;
  #lastMemory: QemuMemory | undefined;

  private constructor(binary: string, args: string[], accel: QemuAccel, memoryMiB: number, proc: Process, startedAt: number) {
    this.binary = binary;
    this.args = args;
    this.accel = accel;
    this.memoryMiB = memoryMiB;
    this.#process = proc;
    this.startedAt = startedAt;
    const err = proc.stderr;
    if (err) {
      err.on('data', (chunk: Buffer) => {
        this.#tail = Buffer.concat([this.#tail, chunk]);
        if (this.#tail.length > CONSOLE_TAIL_BYTES) this.#tail = this.#tail.subarray(this.#tail.length - CONSOLE_TAIL_BYTES);
        // Nobody may be reading the console: keep at most 1 MiB buffered (the tail has the end of it).
        if (this.#console.readableLength < 1024 * 1024) this.#console.write(chunk);
      });
      const end = (): void => {
        if (!this.#console.writableEnded) this.#console.end();
      };
      err.on('end', end);
      err.on('close', end);
      err.on('error', end);
    } else {
      this.#console.end();
    }
    this.#exit = (async () => {
      const status = await proc.wait();
      // The console pipe ends once qemu is gone; let its last bytes arrive.
      if (err && !err.readableEnded && !err.destroyed) await new Promise<void>((r) => err.once('close', r));
      return status;
    })();
    this.#exit.catch(() => undefined);
  }

  /** Starts qemu. Resolves once it has been exec'd (it may still fail and exit at once: see {@link QemuMachine.wait}). */
  static async start(options: QemuMachineOptions): Promise<QemuMachine> {
    const binary = options.qemu ?? findQemu();
    // A usable /dev/kvm is not enough: under PVM (kvm_pvm) an ordinary guest
    // kernel on qemu+kvm dies on the first instruction KVM's emulator lacks.
    const accel = options.accel ?? (hardwareKvmMissing(probeKvm()) === null ? 'kvm' : 'tcg');
    const args = qemuArgs({ ...options, accel });
    const inherit = options.console === 'inherit';
    const env = Object.entries(process.env)
      .filter((e): e is [string, string] => typeof e[1] === 'string')
      .map(([k, v]) => `${k}=${v}`);
    const startedAt = performance.now();
    const proc = await spawn({
      argv: [binary, ...args],
      env,
      // The channel is qemu's stdin/stdout; without one, stdin is closed.
      stdio: inherit ? ['inherit', 'inherit', 'inherit'] : [options.channel ? 'pipe' : 'ignore', options.channel ? 'pipe' : 'ignore', 'pipe'],
      // (spawn sets PR_SET_PDEATHSIG to SIGKILL: qemu never outlives this process)
      deathSignal: 'SIGKILL',
    });
    return new QemuMachine(binary, args, accel, options.memoryMiB ?? 256, proc, startedAt);
  }

  /** qemu's pid. */
  get pid(): number {
    return this.#process.pid;
  }

  /** The host end of the guest's virtio console: write to send (qemu's stdin), or null without a channel. */
  get channelIn(): Writable | null {
    return this.#process.stdin;
  }

  /** The host end of the guest's virtio console: what the guest sends (qemu's stdout), or null without a channel. */
  get channelOut(): Readable | null {
    return this.#process.stdout;
  }

  /** The serial console (kernel messages, init diagnostics) and qemu's own messages. */
  get console(): Readable {
    return this.#console;
  }

  /** The last lines of the console (and qemu's messages), for error reports. */
  consoleTail(lines = 30): string {
    return lastLines(this.#tail, lines);
  }

  /** Lines qemu itself printed (`qemu-system-x86_64: ...`): why it refused to start, usually. */
  qemuMessages(): string[] {
    const name = this.binary.split('/').pop() ?? 'qemu';
    return this.#tail
      .toString('utf8')
      .split('\n')
      .filter((l) => l.startsWith(`${name}:`))
      .map((l) => l.trim());
  }

  /** The same as {@link qemuMessages} (what {@link VmMachine} asks of every machine). */
  monitorMessages(): string[] {
    return this.qemuMessages();
  }

  /** Resolves with qemu's exit status once it has exited and its console has drained. */
  wait(): Promise<ExitStatus> {
    return this.#exit;
  }

  /** Whether qemu has exited. */
  get exited(): boolean {
    return this.#process.status !== undefined;
  }

  /** Freezes qemu, and with it the guest (SIGSTOP, as the cgroup freezer stops a container). */
  async pause(): Promise<void> {
    if (!this.#process.kill('SIGSTOP')) throw new StateError('qemu has exited');
  }

  /** Lets a paused qemu run on (SIGCONT). */
  async resume(): Promise<void> {
    if (!this.#process.kill('SIGCONT')) throw new StateError('qemu has exited');
  }

  /** Signals qemu (default SIGKILL). @returns false when it had already exited */
  kill(signal: NodeJS.Signals = 'SIGKILL'): boolean {
    return this.#process.kill(signal);
  }

  /**
   * qemu's memory now (VmRSS) and at its peak (VmHWM). After qemu exits, the
   * last figures read while it ran (undefined when none were).
   */
  async memory(): Promise<QemuMemory | undefined> {
    if (this.exited) return this.#lastMemory;
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8').catch(() => undefined);
    if (this.exited || status === undefined) return this.#lastMemory;
    const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
    const now = { rssBytes: kb('VmRSS'), peakRssBytes: kb('VmHWM') };
    if (now.peakRssBytes > 0) this.#lastMemory = now;
    return this.#lastMemory;
  }

  /** CPU seconds qemu has used so far (user, system), from /proc/<pid>/stat; undefined once it has exited. */
  async cpuTime(): Promise<QemuCpuTime | undefined> {
    if (this.exited) return undefined;
    const stat = await readFile(`/proc/${this.pid}/stat`, 'utf8').catch(() => undefined);
    if (this.exited || stat === undefined) return undefined;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const hz = 100; // USER_HZ: 100 on every Linux the kernel ABI has known
    return { user: Number(fields[11]) / hz, system: Number(fields[12]) / hz };
  }
}
