/**
 * What a {@link VmWorkload} needs from the thing that runs its VM: a qemu
 * process ({@link QemuMachine}) or a VM of the built-in monitor in this
 * process ({@link KvmMachine}).
 * @module
 */
import type { Readable, Writable } from 'node:stream';

/** What either machine boots with, besides its kernel. */
export interface VmBootOptions {
  /** An initramfs (cpio, optionally gzip-compressed). */
  initrd?: string;
  /** Kernel command line words after the machine's defaults (console, panic, …); later words win. */
  cmdline?: string;
  /** Use `cmdline` as the whole command line. */
  rawCmdline?: boolean;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Guest memory in MiB (default 256; the built-in monitor takes 8 to 3072). */
  memoryMiB?: number;
  /** Give the guest a channel to the host (default false): a virtio-serial port on qemu, a virtio-console on the monitor. */
  channel?: boolean;
}

/** Memory figures of a machine, in bytes. */
export interface VmMachineMemory {
  /** Now: qemu's VmRSS; the built-in monitor's resident guest RAM. */
  rssBytes: number;
  /** The peak: qemu's VmHWM; the built-in monitor's highest resident guest RAM seen. */
  peakRssBytes: number;
}

/** CPU seconds a machine used. */
export interface VmMachineCpuTime {
  /** User-mode seconds. */
  user: number;
  /** Kernel-mode seconds. */
  system: number;
}

/** How a machine ended. */
export interface VmMachineEnd {
  /** qemu's exit code; the built-in monitor: 0 when the guest powered off or reset, 1 when it crashed; null when killed. */
  exitCode: number | null;
  /** The signal that ended qemu, or the one the host's kill() was given (the built-in monitor); null otherwise. */
  signal: NodeJS.Signals | null;
  /** How it ended, in words, when the machine can say more than an exit status (the built-in monitor: poweroff, reset, a crash with the registers). */
  description?: string;
}

/** A running VM as {@link VmWorkload} drives it. */
export interface VmMachine {
  /** The VM's own process (qemu), or undefined where it has none: the built-in monitor runs in this process. */
  readonly pid: number | undefined;
  /** The host end of the guest channel, to write frames to; null without a channel. */
  readonly channelIn: Writable | null;
  /** The host end of the guest channel, to read frames from; null without a channel. */
  readonly channelOut: Readable | null;
  /** The serial console (kernel messages, init diagnostics, and qemu's own messages). */
  readonly console: Readable;
  /** The last lines of the console, for error reports. */
  consoleTail(lines?: number): string;
  /** Lines the VM program itself printed about why it failed (qemu's `qemu-system-x86_64: …`); empty for the built-in monitor. */
  monitorMessages(): string[];
  /** Resolves once the machine has ended and its console (and channel) output has arrived. */
  wait(): Promise<VmMachineEnd>;
  /** Whether it has ended. */
  readonly exited: boolean;
  /** Ends it (qemu: this signal; the built-in monitor: the VM stops at once, whatever the signal). @returns false when it had already ended */
  kill(signal?: NodeJS.Signals): boolean;
  /** Freezes the whole VM (qemu: SIGSTOP to its process; the built-in monitor: every vCPU parked). */
  pause(): Promise<void>;
  /** Lets a paused VM run on. */
  resume(): Promise<void>;
  /** Memory figures now (the last ones read while it ran, once it has ended), or undefined when none. */
  memory(): Promise<VmMachineMemory | undefined>;
  /** CPU seconds used so far (qemu: its process; the built-in monitor: its vCPU and I/O threads), or undefined after the end. */
  cpuTime(): Promise<VmMachineCpuTime | undefined>;
  /** Guest memory in MiB. */
  readonly memoryMiB: number;
  /** When it was started (performance.now() milliseconds). */
  readonly startedAt: number;
  /** The program (qemu's path; `nacelle-kvm` for the built-in monitor, which has none of its own). */
  readonly binary: string;
  /** Its arguments (for the built-in monitor: the same facts written in qemu's style). */
  readonly args: readonly string[];
}

/**
 * The last `lines` lines of console bytes, CR/LF normalized, for error reports.
 * @internal
 */
export function lastLines(tail: Buffer, lines: number): string {
  const text = tail.toString('utf8').replace(/\r\n/g, '\n').replace(/\r/g, '\n');
  return text.split('\n').filter((l, i, all) => l.length > 0 || i < all.length - 1).slice(-lines).join('\n').trimEnd();
}
