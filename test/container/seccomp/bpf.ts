/**
 * Test helpers: a small classic-BPF checker and interpreter for seccomp
 * programs, so compiled filters can be judged without installing them.
 */

/** One decoded `struct sock_filter`. */
export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** The input a seccomp filter sees (struct seccomp_data). */
export interface SeccompData {
  nr: number;
  arch: number;
  instructionPointer?: bigint;
  args?: readonly (bigint | number)[];
}

export const AUDIT_ARCH_X86_64 = 0xc000003e;
export const AUDIT_ARCH_AARCH64 = 0xc00000b7;
export const AUDIT_ARCH_I386 = 0x40000003;

export const RET = {
  KILL_PROCESS: 0x80000000,
  KILL_THREAD: 0,
  TRAP: 0x00030000,
  ERRNO: 0x00050000,
  USER_NOTIF: 0x7fc00000,
  TRACE: 0x7ff00000,
  LOG: 0x7ffc0000,
  ALLOW: 0x7fff0000,
} as const;

export const errnoRet = (errno: number) => (RET.ERRNO | errno) >>> 0;

export function decode(buf: Buffer): Insn[] {
  if (buf.length % 8 !== 0) throw new Error(`program length ${buf.length} is not a multiple of 8`);
  const out: Insn[] = [];
  for (let off = 0; off < buf.length; off += 8) {
    out.push({ code: buf.readUInt16LE(off), jt: buf.readUInt8(off + 2), jf: buf.readUInt8(off + 3), k: buf.readUInt32LE(off + 4) });
  }
  return out;
}

const cls = (code: number) => code & 0x07;
const BPF_LD = 0x00;
const BPF_LDX = 0x01;
const BPF_ST = 0x02;
const BPF_STX = 0x03;
const BPF_ALU = 0x04;
const BPF_JMP = 0x05;
const BPF_RET = 0x06;
const BPF_MISC = 0x07;

/** Opcodes seccomp accepts (kernel/seccomp.c seccomp_check_filter, after the classic checks). */
const ALLOWED_CODES = new Set([
  0x20, // ld [k] (seccomp_data)
  0x80, // ld #len
  0x81, // ldx #len
  0x06, // ret k
  0x16, // ret a
  0x04, 0x0c, 0x14, 0x1c, 0x24, 0x2c, 0x34, 0x3c, 0x44, 0x4c, 0x54, 0x5c, 0x64, 0x6c, 0x74, 0x7c, 0x84, 0x94, 0x9c, 0xa4, 0xac, // alu
  0x05, 0x15, 0x1d, 0x25, 0x2d, 0x35, 0x3d, 0x45, 0x4d, // jmp
  0x07, 0x87, // tax, txa
  0x00, 0x01, // ld #k, ldx #k
  0x02, 0x03, 0x60, 0x61, // st, stx, ld M[k], ldx M[k]
]);

/** What a check found out about a program. */
export interface ProgramReport {
  length: number;
  /** The most instructions any path executes. */
  longestPath: number;
  /** Instructions no path reaches. */
  unreachable: number;
  /** `ja` instructions (trampolines for far jumps). */
  trampolines: number;
}

/**
 * Checks what the kernel checks (size, opcodes, aligned loads inside
 * seccomp_data, jumps forward and in range, a final ret) and that every path
 * from the first instruction ends in a ret.
 */
export function checkProgram(buf: Buffer): ProgramReport {
  const prog = decode(buf);
  if (prog.length === 0 || prog.length > 4096) throw new Error(`program has ${prog.length} instructions (1..4096 allowed)`);
  const targets = (pc: number): number[] => {
    const i = prog[pc]!;
    if (!ALLOWED_CODES.has(i.code)) throw new Error(`insn ${pc}: opcode 0x${i.code.toString(16)} not allowed in seccomp`);
    if (i.code === 0x20 && (i.k % 4 !== 0 || i.k >= 64)) throw new Error(`insn ${pc}: ld [${i.k}] outside seccomp_data or unaligned`);
    if ((i.code === 0x02 || i.code === 0x03 || i.code === 0x60 || i.code === 0x61) && i.k >= 16) throw new Error(`insn ${pc}: M[${i.k}]`);
    if (cls(i.code) === BPF_RET) return [];
    if (cls(i.code) === BPF_JMP) {
      const next = i.code === 0x05 ? [pc + 1 + i.k] : [pc + 1 + i.jt, pc + 1 + i.jf];
      for (const t of next) if (t >= prog.length) throw new Error(`insn ${pc}: jump to ${t} past the end (${prog.length})`);
      return next;
    }
    if (pc + 1 >= prog.length) throw new Error(`insn ${pc}: falls off the end of the program`);
    return [pc + 1];
  };
  if (cls(prog[prog.length - 1]!.code) !== BPF_RET) throw new Error('the last instruction is not a ret');
  // Jumps only go forward, so one pass in order computes reachability and path lengths.
  const depth = new Array<number>(prog.length).fill(-1);
  depth[0] = 1;
  let longestPath = 0;
  let trampolines = 0;
  for (let pc = 0; pc < prog.length; pc++) {
    if (depth[pc]! < 0) continue;
    if (prog[pc]!.code === 0x05) trampolines++;
    const next = targets(pc);
    if (next.length === 0) longestPath = Math.max(longestPath, depth[pc]!);
    for (const t of next) depth[t] = Math.max(depth[t]!, depth[pc]! + 1);
  }
  return { length: prog.length, longestPath, unreachable: depth.filter((d) => d < 0).length, trampolines };
}

function seccompDataBytes(d: SeccompData): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(d.nr >>> 0, 0);
  b.writeUInt32LE(d.arch >>> 0, 4);
  b.writeBigUInt64LE(d.instructionPointer ?? 0n, 8);
  (d.args ?? []).forEach((a, i) => b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(a)), 16 + 8 * i));
  return b;
}

/** Runs a program on one seccomp_data; returns the SECCOMP_RET_* value and the instructions executed. */
export function runProgram(prog: readonly Insn[] | Buffer, data: SeccompData): { ret: number; steps: number } {
  const insns = Buffer.isBuffer(prog) ? decode(prog) : prog;
  const mem = seccompDataBytes(data);
  const M = new Uint32Array(16);
  let A = 0;
  let X = 0;
  let pc = 0;
  let steps = 0;
  for (;;) {
    const i = insns[pc];
    if (!i) throw new Error(`pc ${pc} ran off the program`);
    steps++;
    const src = i.code & 0x08 ? X : i.k;
    switch (cls(i.code)) {
      case BPF_LD:
        if (i.code === 0x20) A = mem.readUInt32LE(i.k);
        else if (i.code === 0x80) A = 64;
        else if (i.code === 0x00) A = i.k;
        else if (i.code === 0x60) A = M[i.k]!;
        else throw new Error(`ld 0x${i.code.toString(16)}`);
        pc++;
        break;
      case BPF_LDX:
        X = i.code === 0x81 ? 64 : i.code === 0x61 ? M[i.k]! : i.k;
        pc++;
        break;
      case BPF_ST:
        M[i.k] = A;
        pc++;
        break;
      case BPF_STX:
        M[i.k] = X;
        pc++;
        break;
      case BPF_ALU: {
        const op = i.code & 0xf0;
        const ops: Record<number, () => number> = {
          0x00: () => A + src,
          0x10: () => A - src,
          0x20: () => Math.imul(A, src),
          0x30: () => Math.floor((A >>> 0) / (src >>> 0)),
          0x40: () => A | src,
          0x50: () => A & src,
          0x60: () => A << (src & 31),
          0x70: () => A >>> (src & 31),
          0x80: () => -A,
          0x90: () => (A >>> 0) % (src >>> 0),
          0xa0: () => A ^ src,
        };
        const f = ops[op];
        if (!f) throw new Error(`alu 0x${i.code.toString(16)}`);
        A = f() >>> 0;
        pc++;
        break;
      }
      case BPF_JMP: {
        const op = i.code & 0xf0;
        if (op === 0x00) {
          pc += 1 + i.k;
          break;
        }
        const a = A >>> 0;
        const s = src >>> 0;
        const taken = op === 0x10 ? a === s : op === 0x20 ? a > s : op === 0x30 ? a >= s : op === 0x40 ? (a & s) !== 0 : null;
        if (taken === null) throw new Error(`jmp 0x${i.code.toString(16)}`);
        pc += 1 + (taken ? i.jt : i.jf);
        break;
      }
      case BPF_RET:
        return { ret: (i.code === 0x16 ? A : i.k) >>> 0, steps };
      case BPF_MISC:
        if (i.code === 0x07) X = A;
        else A = X;
        pc++;
        break;
      default:
        throw new Error(`bad opcode 0x${i.code.toString(16)}`);
    }
  }
}

/** A SECCOMP_RET_* value in words: `allow`, `errno 1`, `kill_process`, … */
export function describeRet(ret: number): string {
  const action = (ret & 0xffff0000) >>> 0;
  const data = ret & 0xffff;
  switch (action) {
    case RET.ALLOW:
      return 'allow';
    case RET.ERRNO:
      return `errno ${data}`;
    case RET.TRACE:
      return `trace ${data}`;
    case RET.KILL_PROCESS:
      return 'kill_process';
    case RET.KILL_THREAD:
      return 'kill_thread';
    case RET.TRAP:
      return 'trap';
    case RET.LOG:
      return 'log';
    case RET.USER_NOTIF:
      return 'notify';
    default:
      return `0x${ret.toString(16)}`;
  }
}

/** A deterministic PRNG (mulberry32) for reproducible random cases. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
