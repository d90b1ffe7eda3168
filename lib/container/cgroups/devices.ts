/**
 * Device access policy. cgroup v1 has the devices controller (devices.allow /
 * devices.deny); cgroup v2 has none: the kernel asks a
 * BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup instead. This
 * module parses Docker-style rules and compiles them to that program.
 * @module
 */
import { InvalidArgumentError, fromNativeError } from '../../errors';
import { native } from '../../native';

/** One device rule, as in the OCI runtime spec's `linux.resources.devices`. */
export interface DeviceRule {
  /** Allow (true) or deny (false) what matches. */
  allow: boolean;
  /** `a` (all), `c` (character) or `b` (block). */
  type: 'a' | 'c' | 'b';
  /** Major number; undefined matches any. */
  major?: number;
  /** Minor number; undefined matches any. */
  minor?: number;
  /** Some of `r`, `w`, `m` (read, write, mknod). */
  access: string;
}

/** Parses a devices.allow-style line (`c 1:3 rwm`, `c *:* m`, `a`) into an allow rule. */
export function parseDeviceRule(line: string, allow = true): DeviceRule {
  const m = /^\s*([acb])(?:\s+(\*|\d+):(\*|\d+)(?:\s+([rwm]+))?)?\s*$/.exec(line);
  if (!m) throw new InvalidArgumentError(`bad device rule '${line}' (expected e.g. 'c 1:3 rwm')`);
  return {
    allow,
    type: m[1] as DeviceRule['type'],
    ...(m[2] !== undefined && m[2] !== '*' ? { major: Number(m[2]) } : {}),
    ...(m[3] !== undefined && m[3] !== '*' ? { minor: Number(m[3]) } : {}),
    access: m[4] ?? 'rwm',
  };
}

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
// access_type = (access << 16) | type.
const DEV_BLOCK = 1;
const DEV_CHAR = 2;
const ACC_MKNOD = 1;
const ACC_READ = 2;
const ACC_WRITE = 4;

// eBPF opcodes (linux/bpf.h)
const LDX_MEM_W = 0x61; // dst = *(u32 *)(src + off)
const ALU64_MOV_X = 0xbf;
const ALU64_MOV_K = 0xb7;
const ALU64_AND_K = 0x57;
const ALU64_RSH_K = 0x77;
const JMP_JNE_K = 0x55; // if dst != imm goto pc + off
const JMP_EXIT = 0x95;

type Insn = [code: number, dst: number, src: number, off: number, imm: number];

function accessMask(access: string): number {
  let mask = 0;
  for (const ch of access) {
    if (ch === 'r') mask |= ACC_READ;
    else if (ch === 'w') mask |= ACC_WRITE;
    else if (ch === 'm') mask |= ACC_MKNOD;
    else throw new InvalidArgumentError(`bad device access '${access}' (use r, w, m)`);
  }
  return mask;
}

/**
 * Compiles rules to a BPF_PROG_TYPE_CGROUP_DEVICE program: the last rule that
 * matches decides (as writes to devices.allow/deny accumulate on v1), and
 * nothing matching means deny. A rule matches when the type, the numbers and
 * *every* requested access bit match (`c 1:3 r` does not grant `rw`).
 * @returns the program as 8-byte `struct bpf_insn`s
 */
export function compileDeviceFilter(rules: readonly DeviceRule[]): Buffer {
  const prog: Insn[] = [
    [LDX_MEM_W, 2, 1, 0, 0], // r2 = access_type
    [ALU64_MOV_X, 3, 2, 0, 0], // r3 = r2
    [ALU64_AND_K, 3, 0, 0, 0xffff], // r3 = type
    [ALU64_RSH_K, 2, 0, 0, 16], // r2 = access
    [LDX_MEM_W, 4, 1, 4, 0], // r4 = major
    [LDX_MEM_W, 5, 1, 8, 0], // r5 = minor
  ];
  let unconditional = false;
  for (const rule of [...rules].reverse()) {
    const mask = accessMask(rule.access);
    if (mask === 0) continue;
    const checks: Insn[] = [];
    // each check jumps over the rest of this block when it fails; offsets fixed below
    if (rule.type !== 'a') checks.push([JMP_JNE_K, 3, 0, 0, rule.type === 'c' ? DEV_CHAR : DEV_BLOCK]);
    if (mask !== (ACC_READ | ACC_WRITE | ACC_MKNOD)) {
      checks.push([ALU64_MOV_X, 0, 2, 0, 0]); // r0 = access
      checks.push([ALU64_AND_K, 0, 0, 0, ~mask & 0x7]); // bits asked for but not in the rule
      checks.push([JMP_JNE_K, 0, 0, 0, 0]);
    }
    if (rule.major !== undefined) checks.push([JMP_JNE_K, 4, 0, 0, checkedNumber(rule.major)]);
    if (rule.minor !== undefined) checks.push([JMP_JNE_K, 5, 0, 0, checkedNumber(rule.minor)]);
    const tail: Insn[] = [
      [ALU64_MOV_K, 0, 0, 0, rule.allow ? 1 : 0],
      [JMP_EXIT, 0, 0, 0, 0],
    ];
    const block = [...checks, ...tail];
    block.forEach((insn, i) => {
      if (insn[0] === JMP_JNE_K) insn[3] = block.length - i - 1; // to the first instruction after the block
    });
    prog.push(...block);
    unconditional = checks.length === 0;
    if (unconditional) break; // matches everything: what comes after is never reached (and the verifier refuses dead code)
  }
  if (!unconditional) prog.push([ALU64_MOV_K, 0, 0, 0, 0], [JMP_EXIT, 0, 0, 0, 0]); // default: deny
  const buf = Buffer.alloc(prog.length * 8);
  prog.forEach(([code, dst, src, off, imm], i) => {
    buf.writeUInt8(code, i * 8);
    buf.writeUInt8((src << 4) | dst, i * 8 + 1);
    buf.writeInt16LE(off, i * 8 + 2);
    buf.writeInt32LE(imm | 0, i * 8 + 4);
  });
  return buf;
}

function checkedNumber(n: number): number {
  if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new InvalidArgumentError(`bad device number ${n}`);
  return n;
}

/** Loaded programs by rule set: one per distinct policy per process, attached to many cgroups. */
const loaded = new Map<string, number>();

/**
 * Attaches the device policy to a cgroup v2 directory (kept for the cgroup's
 * life; the kernel drops it with the cgroup). Ancestors' programs still run:
 * access needs every program on the path to allow it.
 */
export function attachDeviceFilter(cgroupDir: string, rules: readonly DeviceRule[]): void {
  const key = JSON.stringify(rules);
  let fd = loaded.get(key);
  try {
    if (fd === undefined) {
      fd = native().bpfLoadDeviceFilter(compileDeviceFilter(rules));
      loaded.set(key, fd);
    }
    native().bpfAttachDeviceFilter(cgroupDir, fd);
  } catch (err) {
    throw fromNativeError(err);
  }
}

/** How many device programs are attached to this cgroup v2 directory itself. */
export function deviceFiltersAttached(cgroupDir: string): number {
  try {
    return native().bpfQueryDeviceFilters(cgroupDir);
  } catch (err) {
    throw fromNativeError(err);
  }
}
