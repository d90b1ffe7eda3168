/**
 * A container's state directory and state file: what any process can read
 * to list, wait on, stop, exec into or remove a container.
 * @module
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Digest } from '../oci/digest';
import { writeSmallFileAtomicSync } from '../store/atomic';

/** Where a container is in its life. */
export type ContainerStatus = 'created' | 'running' | 'paused' | 'exited';

/** The state file (`state.json`) of a container. */
export interface ContainerState {
  /** 64 hex characters. */
  id: string;
  /** Unique name, if given. */
  name?: string;
  /** The image's manifest digest. */
  image: Digest;
  /** The reference the container was created from, as given. */
  imageRef: string;
  /** ISO time of creation. */
  created: string;
  /** Last known status (refreshed from the process table when read). */
  status: ContainerStatus;
  /** Host pid of the container's init while it runs. */
  pid?: number;
  /** The init's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a recycled pid apart. */
  pidStart?: string;
  /** The pid of the Node process that started it (the only one that can reap a foreground container). */
  parentPid?: number;
  /** The creator's start time (as {@link ContainerState.pidStart}). */
  parentStart?: string;
  /** Detached containers: the nacelle-monitor process that is their parent and records the exit in `exit.json`. */
  monitorPid?: number;
  /** The monitor's start time (as {@link ContainerState.pidStart}). */
  monitorStart?: string;
  /** ISO time it started. */
  startedAt?: string;
  /** ISO time it exited. */
  finishedAt?: string;
  /** Exit code once exited (null when a signal ended it or it is unknown). */
  exitCode?: number | null;
  /** Signal that ended it. */
  signal?: NodeJS.Signals | null;
  /** Whether the kernel's OOM killer ended it. */
  oomKilled?: boolean;
  /** Labels. */
  labels: Record<string, string>;
  /** Remove when it exits. */
  autoRemove: boolean;
  /** Outlives its creator. */
  detached: boolean;
  /** Allocated a terminal. */
  tty: boolean;
  /** Keeps stdin open (`stdin: true`); a detached one reads it from the `stdin` FIFO that {@link Container.attach} writes to. */
  openStdin?: boolean;
  /** Signal `stop()` sends first. */
  stopSignal: NodeJS.Signals;
}

/** Paths inside a container's state directory. */
export function statePaths(dir: string) {
  return {
    dir,
    state: join(dir, 'state.json'),
    config: join(dir, 'config.json'),
    rootfs: join(dir, 'rootfs'),
    upper: join(dir, 'upper'),
    work: join(dir, 'work'),
    hosts: join(dir, 'hosts'),
    hostname: join(dir, 'hostname'),
    resolvConf: join(dir, 'resolv.conf'),
    stdoutLog: join(dir, 'stdout.log'),
    stderrLog: join(dir, 'stderr.log'),
    lock: join(dir, 'lock'),
    exitStatus: join(dir, 'exit.json'),
    stdinFifo: join(dir, 'stdin'),
  };
}

/** Reads a state file. */
export async function readState(dir: string): Promise<ContainerState> {
  // (small and read on every step: synchronous is cheaper than a thread-pool round trip)
  return JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as ContainerState;
}

/**
 * Writes a state file atomically. Not fsync'd (as runc and crun do not): after
 * a crash the process table, not the file, says whether a container runs.
 */
export async function writeState(dir: string, state: ContainerState): Promise<void> {
  writeSmallFileAtomicSync(join(dir, 'state.json'), JSON.stringify(state, null, 2));
}

/** The start time of a pid (field 22 of /proc/<pid>/stat), or undefined when it is gone. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    // (a small /proc file the kernel makes on read: synchronous costs less than a thread-pool round trip)
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined; // exited, not yet reaped
    return fields[19];
  } catch {
    return undefined;
  }
}

/** Whether the Node process that started a foreground container is still alive (it records the exit). */
export async function creatorRunning(state: ContainerState): Promise<boolean> {
  if (state.parentPid === undefined || state.parentStart === undefined) return false;
  return (await processStartTime(state.parentPid)) === state.parentStart;
}

/** Whether a detached container's monitor is still alive (it has not recorded the exit yet). */
export async function monitorRunning(state: ContainerState): Promise<boolean> {
  if (state.monitorPid === undefined || state.monitorStart === undefined) return false;
  return (await processStartTime(state.monitorPid)) === state.monitorStart;
}

/** Whether the container's init (same pid, same start time) is still alive. */
export async function stillRunning(state: ContainerState): Promise<boolean> {
  if (state.pid === undefined || state.pidStart === undefined) return false;
  return (await processStartTime(state.pid)) === state.pidStart;
}
