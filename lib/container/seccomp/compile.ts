/**
 * Compiles an OCI seccomp profile into a classic BPF program for
 * seccomp(SECCOMP_SET_MODE_FILTER): an array of `struct sock_filter`
 * (u16 code, u8 jt, u8 jf, u32 k; little-endian, 8 bytes each).
 *
 * Shape of every program:
 *
 * 1. `seccomp_data.arch` must be the native AUDIT_ARCH; any other ABI (i386
 *    or x32 entry on x86_64, AArch32 on arm64) kills the process. We only
 *    carry the native syscall tables, and a foreign ABI whose numbers we
 *    would misread must never be allowed by accident; dying with SIGSYS is
 *    also easier to diagnose than a wall of odd errnos.
 * 2. On x86_64, x32 syscalls (`nr & 0x40000000`) get the default action.
 * 3. The syscall number is located by a binary search over the intervals of
 *    the number line that share one outcome (adjacent syscalls with the same
 *    plain action are merged), so a profile of 350 syscalls costs about nine
 *    comparisons, not a chain of 350. Jumps are forward only; a subtree too
 *    far for an 8-bit offset is reached through a `ja` (32-bit offset).
 * 4. At a leaf: `ret` for a plain action, or the syscall's rules in profile
 *    order, each ANDing its argument conditions (64-bit arguments compared
 *    as two 32-bit halves), the first that matches deciding; when none
 *    does, the default action.
 *
 * Semantics follow runc/libseccomp where the spec leaves room: names the
 * architecture does not have are skipped, `SCMP_ACT_KILL` is KILL_THREAD,
 * an ERRNO without errnoRet uses the profile's defaultErrnoRet, else EPERM.
 * @module
 */
import { InvalidArgumentError } from '../../errors';
import { type SeccompTargetArch, archInfo, hostSeccompArch } from './arch';
import type { LinuxSeccomp, LinuxSeccompArg, SeccompAction, SeccompOperator } from './types';

/** Options for {@link compileSeccomp}. */
export interface CompileSeccompOptions {
  /** The architecture to compile for. Default: this process's (`process.arch`). */
  arch?: SeccompTargetArch;
}

/** The most instructions the kernel accepts in one filter (BPF_MAXINSNS). */
export const SECCOMP_MAX_INSTRUCTIONS = 4096;

const EPERM = 1;
const MAX_ERRNO = 4095;
const U64_MAX = (1n << 64n) - 1n;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS = 0x20;
const ALU_AND_K = 0x54;
const JMP_JA = 0x05;
const JMP_JEQ_K = 0x15;
const JMP_JGT_K = 0x25;
const JMP_JGE_K = 0x35;
const JMP_JSET_K = 0x45;
const RET_K = 0x06;

// struct seccomp_data offsets.
const OFF_NR = 0;
const OFF_ARCH = 4;
const argLow = (i: number) => 16 + 8 * i;
const argHigh = (i: number) => 20 + 8 * i;

const X32_SYSCALL_BIT = 0x40000000;
const RET_KILL_PROCESS = 0x80000000;

/** One instruction with jump offsets already relative. */
interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

const insn = (code: number, k = 0, jt = 0, jf = 0): Insn => ({ code, jt, jf, k: k >>> 0 });

/** The kernel's SECCOMP_RET_* value for an action. */
function actionValue(action: SeccompAction, errno: number | undefined, where: string): number {
  const data = () => {
    const e = errno ?? EPERM;
    if (!Number.isInteger(e) || e < 0 || e > MAX_ERRNO) {
      throw new InvalidArgumentError(`${where}: errnoRet must be an integer from 0 to ${MAX_ERRNO}, got ${String(e)}`);
    }
    return e;
  };
  switch (action) {
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD':
      return 0x00000000;
    case 'SCMP_ACT_KILL_PROCESS':
      return RET_KILL_PROCESS;
    case 'SCMP_ACT_TRAP':
      return 0x00030000;
    case 'SCMP_ACT_ERRNO':
      return (0x00050000 | data()) >>> 0;
    case 'SCMP_ACT_TRACE':
      return (0x7ff00000 | data()) >>> 0;
    case 'SCMP_ACT_LOG':
      return 0x7ffc0000;
    case 'SCMP_ACT_ALLOW':
      return 0x7fff0000;
    case 'SCMP_ACT_NOTIFY':
      // Installed without a listener (nacelle passes no flags), the kernel fails such calls with ENOSYS.
      return 0x7fc00000;
    default:
      throw new InvalidArgumentError(`${where}: unknown seccomp action '${String(action)}'`);
  }
}

/** A condition reduced to 32-bit halves: `hi`/`lo` is the value (the mask for MASKED_EQ). */
interface Cond {
  index: number;
  op: SeccompOperator;
  hi: number;
  lo: number;
  hi2: number;
  lo2: number;
}

/** A rule of one syscall after normalization. */
interface Rule {
  ret: number;
  conds: Cond[];
}

const OPS: ReadonlySet<string> = new Set<SeccompOperator>([
  'SCMP_CMP_NE',
  'SCMP_CMP_LT',
  'SCMP_CMP_LE',
  'SCMP_CMP_EQ',
  'SCMP_CMP_GE',
  'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
]);

function u64(value: unknown, where: string): bigint {
  let v: bigint;
  if (typeof value === 'bigint') v = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) v = BigInt(value);
  else throw new InvalidArgumentError(`${where}: must be an unsigned 64-bit integer (number or bigint), got ${String(value)}`);
  if (v < 0n || v > U64_MAX) throw new InvalidArgumentError(`${where}: ${v} is outside 0..2^64-1`);
  return v;
}

/**
 * Reduces a condition; returns true when it always holds (and can be
 * dropped), false when it never holds (the rule is dead), else the Cond.
 */
function reduceCondition(arg: LinuxSeccompArg, where: string): Cond | boolean {
  if (!Number.isInteger(arg.index) || arg.index < 0 || arg.index > 5) {
    throw new InvalidArgumentError(`${where}: argument index must be 0..5, got ${String(arg.index)}`);
  }
  if (!OPS.has(arg.op)) throw new InvalidArgumentError(`${where}: unknown comparison '${String(arg.op)}'`);
  const v = u64(arg.value, `${where}.value`);
  const v2 = arg.valueTwo === undefined || arg.valueTwo === null ? 0n : u64(arg.valueTwo, `${where}.valueTwo`);
  switch (arg.op) {
    case 'SCMP_CMP_GE':
      if (v === 0n) return true;
      break;
    case 'SCMP_CMP_LE':
      if (v === U64_MAX) return true;
      break;
    case 'SCMP_CMP_LT':
      if (v === 0n) return false;
      break;
    case 'SCMP_CMP_GT':
      if (v === U64_MAX) return false;
      break;
    case 'SCMP_CMP_MASKED_EQ':
      if ((v & v2) !== v2) return false; // valueTwo has bits the mask clears
      if (v === 0n) return true; // (arg & 0) == 0
      break;
    default:
      break;
  }
  const split = (x: bigint) => [Number(x >> 32n), Number(x & 0xffffffffn)] as const;
  const [hi, lo] = split(v);
  const [hi2, lo2] = split(v2);
  return { index: arg.index, op: arg.op, hi, lo, hi2, lo2 };
}

/** Jump targets inside one condition's code, resolved by {@link emitCondition}. */
type Target = 'next' | 'ok' | 'fail';
interface SymInsn {
  code: number;
  k: number;
  jt: Target;
  jf: Target;
}

const ld = (off: number): SymInsn => ({ code: LD_W_ABS, k: off, jt: 'next', jf: 'next' });
const and = (mask: number): SymInsn => ({ code: ALU_AND_K, k: mask, jt: 'next', jf: 'next' });
const jmp = (code: number, k: number, jt: Target, jf: Target): SymInsn => ({ code, k, jt, jf });

function conditionCode(c: Cond): SymInsn[] {
  const hiOff = argHigh(c.index);
  const loOff = argLow(c.index);
  switch (c.op) {
    case 'SCMP_CMP_EQ':
      return [ld(hiOff), jmp(JMP_JEQ_K, c.hi, 'next', 'fail'), ld(loOff), jmp(JMP_JEQ_K, c.lo, 'next', 'fail')];
    case 'SCMP_CMP_NE':
      return [ld(hiOff), jmp(JMP_JEQ_K, c.hi, 'next', 'ok'), ld(loOff), jmp(JMP_JEQ_K, c.lo, 'fail', 'next')];
    case 'SCMP_CMP_GT':
    case 'SCMP_CMP_GE':
      return [
        ld(hiOff),
        jmp(JMP_JGT_K, c.hi, 'ok', 'next'),
        jmp(JMP_JEQ_K, c.hi, 'next', 'fail'),
        ld(loOff),
        jmp(c.op === 'SCMP_CMP_GT' ? JMP_JGT_K : JMP_JGE_K, c.lo, 'next', 'fail'),
      ];
    case 'SCMP_CMP_LT':
    case 'SCMP_CMP_LE':
      return [
        ld(hiOff),
        jmp(JMP_JGT_K, c.hi, 'fail', 'next'),
        jmp(JMP_JEQ_K, c.hi, 'next', 'ok'),
        ld(loOff),
        jmp(c.op === 'SCMP_CMP_LT' ? JMP_JGE_K : JMP_JGT_K, c.lo, 'fail', 'next'),
      ];
    case 'SCMP_CMP_MASKED_EQ': {
      const half = (off: number, mask: number, want: number): SymInsn[] => {
        if (mask === 0) return []; // reduceCondition made sure want is 0 then
        return [ld(off), ...(mask === 0xffffffff ? [] : [and(mask)]), jmp(JMP_JEQ_K, want, 'next', 'fail')];
      };
      return [...half(hiOff, c.hi, c.hi2), ...half(loOff, c.lo, c.lo2)];
    }
    default:
      throw new InvalidArgumentError(`unknown comparison '${String(c.op)}'`);
  }
}

/**
 * Resolves a condition's jumps: `fail` lands `after` instructions past the
 * condition's end (just past its rule's `ret`), `ok` at the condition's end.
 */
function emitCondition(c: Cond, after: number): Insn[] {
  const sym = conditionCode(c);
  return sym.map((s, p) => {
    const toEnd = sym.length - p - 1;
    const resolve = (t: Target) => (t === 'next' ? 0 : t === 'ok' ? toEnd : toEnd + after);
    const jt = resolve(s.jt);
    const jf = resolve(s.jf);
    if (jt > 255 || jf > 255) throw new InvalidArgumentError('a seccomp rule has too many argument conditions');
    return insn(s.code, s.k, jt, jf);
  });
}

/** The code of one syscall's rules, falling through to `ret fallback`. */
function ruleChain(rules: readonly Rule[], fallback: number): Insn[] {
  // After an unconditional last rule nothing falls through.
  let code: Insn[] = rules[rules.length - 1]?.conds.length === 0 ? [] : [insn(RET_K, fallback)];
  for (let r = rules.length - 1; r >= 0; r--) {
    const rule = rules[r]!;
    let body: Insn[] = [insn(RET_K, rule.ret)];
    for (let c = rule.conds.length - 1; c >= 0; c--) body = [...emitCondition(rule.conds[c]!, body.length), ...body];
    code = [...body, ...code];
  }
  return code;
}

/** What happens to the syscalls of one interval of the number line. */
interface Interval {
  lo: number;
  hi: number;
  /** Equal keys mean equal code: adjacent intervals with one key merge. */
  key: string;
  code: () => Insn[];
}

/** Binary search over intervals that cover 0..2^32-1 without gaps. */
function searchTree(intervals: readonly Interval[], from: number, to: number): Insn[] {
  if (from === to) return intervals[from]!.code();
  const mid = (from + to + 1) >> 1;
  const left = searchTree(intervals, from, mid - 1);
  const right = searchTree(intervals, mid, to);
  const pivot = intervals[mid]!.lo;
  if (left.length <= 255) return [insn(JMP_JGE_K, pivot, left.length, 0), ...left, ...right];
  // Too far for jt: the true branch goes through a ja with a 32-bit offset.
  return [insn(JMP_JGE_K, pivot, 0, 1), insn(JMP_JA, left.length), ...left, ...right];
}

function compile(profile: LinuxSeccomp, arch: SeccompTargetArch | undefined): Buffer {
  if (profile === null || typeof profile !== 'object') throw new InvalidArgumentError('a seccomp profile must be an object');
  const info = archInfo(arch);
  const defaultErrno = profile.defaultErrnoRet;
  const defaultRet = actionValue(profile.defaultAction, defaultErrno, 'defaultAction');

  // Syscall number → its rules, in profile order.
  const bySyscall = new Map<number, Rule[]>();
  const closed = new Set<number>(); // an unconditional rule was seen: later rules never run
  (profile.syscalls ?? []).forEach((entry, i) => {
    const where = `syscalls[${i}]`;
    if (!entry || !Array.isArray(entry.names)) throw new InvalidArgumentError(`${where}: names must be an array of syscall names`);
    const ret = actionValue(entry.action, entry.errnoRet ?? defaultErrno, where);
    const conds: Cond[] = [];
    let dead = false;
    (entry.args ?? []).forEach((arg, j) => {
      const c = reduceCondition(arg, `${where}.args[${j}]`);
      if (c === false) dead = true;
      else if (c !== true) conds.push(c);
    });
    if (conds.length > 6) throw new InvalidArgumentError(`${where}: at most 6 argument conditions per rule`);
    if (dead) return;
    for (const name of entry.names) {
      if (typeof name !== 'string') throw new InvalidArgumentError(`${where}: syscall names must be strings`);
      if (!Object.hasOwn(info.table, name)) continue; // not on this architecture, as libseccomp does
      const nr = info.table[name]!;
      if (closed.has(nr)) continue;
      let rules = bySyscall.get(nr);
      if (!rules) bySyscall.set(nr, (rules = []));
      rules.push({ ret, conds });
      if (conds.length === 0) closed.add(nr);
    }
  });

  // Outcomes per syscall, then intervals over the whole u32 range.
  const entries: { nr: number; key: string; code: () => Insn[] }[] = [];
  for (const [nr, all] of bySyscall) {
    const rules = [...all];
    while (rules.length > 0 && rules[rules.length - 1]!.ret === defaultRet) rules.pop(); // same as falling through
    if (rules.length === 0) continue;
    const only = rules[0]!;
    if (rules.length === 1 && only.conds.length === 0) {
      entries.push({ nr, key: `ret:${only.ret}`, code: () => [insn(RET_K, only.ret)] });
    } else {
      entries.push({ nr, key: `rules:${JSON.stringify(rules)}`, code: () => ruleChain(rules, defaultRet) });
    }
  }
  entries.sort((a, b) => a.nr - b.nr);
  const defaultInterval = (lo: number, hi: number): Interval => ({ lo, hi, key: 'default', code: () => [insn(RET_K, defaultRet)] });
  const intervals: Interval[] = [];
  const push = (iv: Interval) => {
    const last = intervals[intervals.length - 1];
    if (last && last.key === iv.key && last.hi + 1 === iv.lo) last.hi = iv.hi;
    else intervals.push(iv);
  };
  let next = 0;
  for (const e of entries) {
    if (e.nr > next) push(defaultInterval(next, e.nr - 1));
    push({ lo: e.nr, hi: e.nr, key: e.key, code: e.code });
    next = e.nr + 1;
  }
  if (next <= 0xffffffff) push(defaultInterval(next, 0xffffffff));

  const program: Insn[] = [
    insn(LD_W_ABS, OFF_ARCH),
    insn(JMP_JEQ_K, info.auditArch, 1, 0),
    insn(RET_K, RET_KILL_PROCESS),
    insn(LD_W_ABS, OFF_NR),
  ];
  if (info.specName === 'SCMP_ARCH_X86_64') {
    program.push(insn(JMP_JSET_K, X32_SYSCALL_BIT, 0, 1), insn(RET_K, defaultRet));
  }
  program.push(...searchTree(intervals, 0, intervals.length - 1));
  if (program.length > SECCOMP_MAX_INSTRUCTIONS) {
    throw new InvalidArgumentError(
      `the seccomp profile compiles to ${program.length} instructions; the kernel accepts at most ${SECCOMP_MAX_INSTRUCTIONS}`,
    );
  }

  const buf = Buffer.alloc(program.length * 8);
  program.forEach((ins, i) => {
    buf.writeUInt16LE(ins.code, i * 8);
    buf.writeUInt8(ins.jt, i * 8 + 2);
    buf.writeUInt8(ins.jf, i * 8 + 3);
    buf.writeUInt32LE(ins.k, i * 8 + 4);
  });
  return buf;
}

// Caches. Profiles made by nacelle itself are deep-frozen and remembered by
// identity (a WeakMap lookup); any profile is also remembered by its contents
// (its JSON), so a caller that edits a profile between compilations never
// gets a stale program, and an equal copy gets the same Buffer.
const byIdentity = new WeakMap<object, Map<SeccompTargetArch, Buffer>>();
const frozenProfiles = new WeakSet<object>();
const byContent = new Map<string, Buffer>();
const CONTENT_CACHE_SIZE = 64;

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

/**
 * Deep-freezes a profile and lets {@link compileSeccomp} cache it by identity.
 * @internal
 */
export function internProfile<T extends LinuxSeccomp>(profile: T): T {
  deepFreeze(profile);
  frozenProfiles.add(profile);
  return profile;
}

/** The profile's JSON serves as its own key: V8 hashes a string once, and a hit costs one comparison. */
function contentKey(profile: LinuxSeccomp, arch: SeccompTargetArch): string {
  return `${arch}:${JSON.stringify(profile, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))}`;
}

/**
 * Compiles a seccomp profile (OCI runtime-spec format) to a classic BPF
 * program for `spawn({ seccomp })`.
 *
 * Programs are cached: the same profile object from
 * {@link defaultSeccompProfile}, or any profile with equal contents, gets the
 * same Buffer back without compiling again. Treat the Buffer as read-only.
 *
 * Unsupported or invalid input (an unknown action or comparison, an argument
 * index outside 0..5, an errno above 4095, a program over 4096 instructions)
 * throws InvalidArgumentError. Syscall names the architecture does not have
 * are skipped. `flags`, `listenerPath` and `listenerMetadata` are not used.
 *
 * @example
 * const seccomp = compileSeccomp(defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES }))
 * await spawn({ argv: ['sh'], seccomp })
 */
export function compileSeccomp(profile: LinuxSeccomp, options: CompileSeccompOptions = {}): Buffer {
  const arch = options.arch ?? hostSeccompArch();
  archInfo(arch); // validates
  const frozen = frozenProfiles.has(profile);
  let perArch = frozen ? byIdentity.get(profile) : undefined;
  const known = perArch?.get(arch);
  if (known) return known;
  const key = contentKey(profile, arch);
  let buf = byContent.get(key);
  if (buf) byContent.delete(key); // re-inserted below as the most recently used
  else buf = compile(profile, arch);
  byContent.set(key, buf);
  if (byContent.size > CONTENT_CACHE_SIZE) byContent.delete(byContent.keys().next().value as string);
  if (frozen) {
    if (!perArch) byIdentity.set(profile, (perArch = new Map()));
    perArch.set(arch, buf);
  }
  return buf;
}
