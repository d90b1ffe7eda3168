/**
 * What callers can ask of a container, and parsing of Docker-style values
 * (`'32m'`, `'1000:1000'`, `'ALL'`).
 * @module
 */
import { InvalidArgumentError } from '../errors';
import type { IdMapping } from '../process/spawn';
import type { LinuxSeccomp } from './seccomp/types';

/** A bind mount of a host path (a Docker `-v host:container[:ro]`). */
export interface VolumeOption {
  /** Host path (must exist). */
  host: string;
  /** Absolute path inside the container. */
  container: string;
  /** Mount read-only. */
  readonly?: boolean;
}

/** A tmpfs mount (Docker `--tmpfs`). */
export interface TmpfsOption {
  /** Absolute path inside the container. */
  container: string;
  /** Size in bytes or with a unit (`64m`). Default 64m. */
  size?: number | string;
  /** Permission bits of the root of the tmpfs. Default 0o1777. */
  mode?: number;
  /** Mount read-only. */
  readonly?: boolean;
}

/** A resource limit, like Docker's `--ulimit nofile=1024:2048`. */
export interface UlimitOption {
  /** `nofile`, `nproc`, `RLIMIT_CORE`, … */
  type: string;
  /** Soft limit. */
  soft: number;
  /** Hard limit. */
  hard: number;
}

/** User-namespace mappings for a container. */
export interface UsernsOption {
  /** uid mappings. */
  uidMap: readonly IdMapping[];
  /** gid mappings. */
  gidMap: readonly IdMapping[];
}

/** Options of `rt.containers.create` / `run`. */
export interface ContainerOptions {
  /** Unique name (default: none; the id identifies the container). */
  name?: string;
  /** Replaces the image's Cmd. */
  cmd?: readonly string[];
  /** Replaces the image's Entrypoint (and, as in Docker, drops the image's Cmd). */
  entrypoint?: readonly string[] | string;
  /** Extra environment (overrides the image's). */
  env?: Readonly<Record<string, string>> | readonly string[];
  /** Working directory (default the image's WorkingDir, else `/`); created if missing. */
  workdir?: string;
  /** `uid`, `uid:gid`, `name` or `name:group`, resolved in the image's /etc/passwd and /etc/group. */
  user?: string;
  /** Hostname (default the first 12 characters of the id). */
  hostname?: string;
  /** Allocate a pseudo-terminal. */
  tty?: boolean;
  /** Keep stdin open (`container.stdin` is writable). */
  stdin?: boolean;
  /** Bind mounts. */
  volumes?: readonly VolumeOption[];
  /** tmpfs mounts. */
  tmpfs?: readonly TmpfsOption[];
  /** Memory limit: bytes, or a string with a unit as Docker takes it (`32m`, `1g`). */
  memory?: number | string;
  /** Memory + swap limit (Docker's `--memory-swap`); -1 for unlimited. */
  memorySwap?: number | string;
  /** CPU shares (relative weight, default 1024). */
  cpuShares?: number;
  /** CPU quota in µs per period. */
  cpuQuota?: number;
  /** CPU period in µs (default 100000). */
  cpuPeriod?: number;
  /** CPUs as a fraction (`1.5`): sets quota for the default period. */
  cpus?: number;
  /** Maximum number of processes. */
  pids?: number;
  /** `none` (own network namespace with loopback, the default) or `host`. */
  network?: 'none' | 'host';
  /** Mount the root filesystem read-only. */
  readonlyRootfs?: boolean;
  /** Capabilities to add to the default set (`NET_ADMIN`, `CAP_SYS_TIME`, `ALL`). */
  capAdd?: readonly string[];
  /** Capabilities to drop from the default set (`ALL` drops every one). */
  capDrop?: readonly string[];
  /** Every capability, no seccomp, no masked paths, writable /sys. */
  privileged?: boolean;
  /** Resource limits (default nofile 1024:1024). */
  ulimits?: readonly UlimitOption[];
  /** Labels recorded with the container. */
  labels?: Readonly<Record<string, string>>;
  /** Remove the container (state, writable layer) when it exits. */
  autoRemove?: boolean;
  /** Outlive this Node process; output goes to the log files only. */
  detach?: boolean;
  /** A seccomp profile in OCI form, or `unconfined`. Default: Docker's default profile. */
  seccomp?: LinuxSeccomp | 'unconfined';
  /** Run in a new user namespace with these mappings (rootless-style); default none when root. */
  userns?: UsernsOption;
  /** Signal `stop()` sends first (default the image's StopSignal, else SIGTERM). */
  stopSignal?: NodeJS.Signals;
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Bytes from a number or a Docker size string (`32m`, `1.5g`, `512k`, `100`). */
export function parseBytes(value: number | string, what = 'size'): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || !Number.isInteger(value)) throw new InvalidArgumentError(`${what}: ${value} is not a whole number of bytes`);
    return value;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$/i.exec(value);
  if (!m) throw new InvalidArgumentError(`${what}: cannot read '${value}' as a size (examples: 32m, 1g, 512k)`);
  return Math.floor(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
}
