/**
 * The OCI runtime-spec `config.json` (the parts nacelle reads and writes).
 * A container is described by one of these, so the same bundle can be run by
 * crun or runc for comparison, and by nacelle's runc-compatible CLI.
 * @module
 */
import type { LinuxSeccomp } from '../container/seccomp/types';

/** The user a container process runs as. */
export interface RuntimeUser {
  /** User id inside the container. */
  uid: number;
  /** Group id inside the container. */
  gid: number;
  /** Supplementary group ids. */
  additionalGids?: number[];
  /** File-mode creation mask. */
  umask?: number;
}

/** Capability sets by name (`CAP_CHOWN`, …). */
export interface RuntimeCapabilities {
  /** Bounding set. */
  bounding?: string[];
  /** Effective set. */
  effective?: string[];
  /** Inheritable set. */
  inheritable?: string[];
  /** Permitted set. */
  permitted?: string[];
  /** Ambient set. */
  ambient?: string[];
}

/** One POSIX resource limit. */
export interface RuntimeRlimit {
  /** `RLIMIT_NOFILE`, … */
  type: string;
  /** Hard limit. */
  hard: number;
  /** Soft limit. */
  soft: number;
}

/** A terminal size. */
export interface RuntimeConsoleSize {
  /** Rows. */
  height: number;
  /** Columns. */
  width: number;
}

/** The container's process. */
export interface RuntimeProcess {
  /** Allocate a pseudo-terminal for stdio. */
  terminal?: boolean;
  /** Initial terminal size. */
  consoleSize?: RuntimeConsoleSize;
  /** The user. */
  user: RuntimeUser;
  /** argv. */
  args: string[];
  /** Environment as `KEY=value`. */
  env?: string[];
  /** Working directory (absolute, inside the container). */
  cwd: string;
  /** Capabilities. */
  capabilities?: RuntimeCapabilities;
  /** Resource limits. */
  rlimits?: RuntimeRlimit[];
  /** Set no_new_privs. */
  noNewPrivileges?: boolean;
  /** OOM score adjustment. */
  oomScoreAdj?: number;
}

/** A mount in the container. */
export interface RuntimeMount {
  /** Where, inside the container. */
  destination: string;
  /** Source: a host path for binds, a label otherwise. */
  source?: string;
  /** Filesystem type (`proc`, `tmpfs`, `bind`, …). */
  type?: string;
  /** Options as in mount(8): `nosuid`, `ro`, `rbind`, `size=64m`, `mode=755`, … */
  options?: string[];
}

/** A namespace to create or join. */
export interface RuntimeNamespace {
  /** `pid`, `network`, `mount`, `ipc`, `uts`, `user`, `cgroup`. */
  type: 'pid' | 'network' | 'mount' | 'ipc' | 'uts' | 'user' | 'cgroup' | 'time';
  /** Join the namespace at this path instead of creating one. */
  path?: string;
}

/** One uid/gid mapping line. */
export interface RuntimeIdMapping {
  /** First id inside. */
  containerID: number;
  /** First id outside. */
  hostID: number;
  /** Number of ids. */
  size: number;
}

/** A device node to create in /dev. */
export interface RuntimeDevice {
  /** Path inside the container. */
  path: string;
  /** `c`, `b`, `u` or `p`. */
  type: 'c' | 'b' | 'u' | 'p';
  /** Major number. */
  major?: number;
  /** Minor number. */
  minor?: number;
  /** Permission bits. */
  fileMode?: number;
  /** Owner uid. */
  uid?: number;
  /** Owner gid. */
  gid?: number;
}

/** Memory limits in bytes. */
export interface RuntimeMemory {
  /** Memory limit. */
  limit?: number;
  /** Memory + swap limit (-1: unlimited). */
  swap?: number;
  /** Soft limit. */
  reservation?: number;
}

/** CPU limits. */
export interface RuntimeCpu {
  /** Relative weight. */
  shares?: number;
  /** µs of CPU time per period. */
  quota?: number;
  /** Period in µs. */
  period?: number;
  /** CPUs allowed (cpuset list, `0-1`). */
  cpus?: string;
  /** Memory nodes allowed. */
  mems?: string;
}

/** The pids controller's limit. */
export interface RuntimePids {
  /** Maximum number of tasks. */
  limit: number;
}

/** A device cgroup rule. */
export interface RuntimeDeviceRule {
  /** Allow or deny. */
  allow: boolean;
  /** `a`, `c` or `b`. */
  type?: string;
  /** Major number (any when omitted). */
  major?: number;
  /** Minor number (any when omitted). */
  minor?: number;
  /** `r`, `w`, `m` combination. */
  access?: string;
}

/** cgroup resource limits. */
export interface RuntimeResources {
  /** Memory limits. */
  memory?: RuntimeMemory;
  /** CPU limits. */
  cpu?: RuntimeCpu;
  /** Task limit. */
  pids?: RuntimePids;
  /** Device cgroup rules. */
  devices?: RuntimeDeviceRule[];
}

/** Linux-specific configuration. */
export interface RuntimeLinux {
  /** Namespaces. */
  namespaces?: RuntimeNamespace[];
  /** uid mappings for a user namespace. */
  uidMappings?: RuntimeIdMapping[];
  /** gid mappings for a user namespace. */
  gidMappings?: RuntimeIdMapping[];
  /** Device nodes to create. */
  devices?: RuntimeDevice[];
  /** cgroup path (nacelle: the container id under `<own cgroup>/nacelle`). */
  cgroupsPath?: string;
  /** cgroup limits. */
  resources?: RuntimeResources;
  /** Root mount propagation. */
  rootfsPropagation?: string;
  /** The seccomp profile. */
  seccomp?: LinuxSeccomp;
  /** Paths hidden from the container. */
  maskedPaths?: string[];
  /** Paths made read-only. */
  readonlyPaths?: string[];
  /** Kernel parameters. */
  sysctl?: Record<string, string>;
}

/** The root filesystem. */
export interface RuntimeRoot {
  /** Path of the rootfs, relative to the bundle or absolute. */
  path: string;
  /** Mount it read-only. */
  readonly?: boolean;
}

/** An OCI runtime-spec config.json. */
export interface RuntimeSpec {
  /** Spec version, e.g. `1.0.2`. */
  ociVersion: string;
  /** The process. */
  process?: RuntimeProcess;
  /** The root filesystem. */
  root?: RuntimeRoot;
  /** Hostname in the UTS namespace. */
  hostname?: string;
  /** Mounts, in order. */
  mounts?: RuntimeMount[];
  /** Linux configuration. */
  linux?: RuntimeLinux;
  /** Annotations. */
  annotations?: Record<string, string>;
}

/** The OCI runtime-spec version nacelle writes. */
export const RUNTIME_SPEC_VERSION = '1.0.2';
