import { performance } from 'node:perf_hooks';
import { beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../lib/errors';
import {
  DOCKER_DEFAULT_CAPABILITIES,
  compileSeccomp,
  defaultSeccompProfile,
  syscallNames,
  syscallNumber,
  type LinuxSeccomp,
  type LinuxSeccompArg,
  type LinuxSyscall,
  type SeccompAction,
  type SeccompOperator,
  type SeccompTargetArch,
} from '../../../lib/container/seccomp';
import {
  AUDIT_ARCH_AARCH64,
  AUDIT_ARCH_I386,
  AUDIT_ARCH_X86_64,
  RET,
  checkProgram,
  decode,
  describeRet,
  errnoRet,
  prng,
  runProgram,
} from './bpf';
import { referenceDecision } from './reference';

const AUDIT: Record<SeccompTargetArch, number> = { x64: AUDIT_ARCH_X86_64, arm64: AUDIT_ARCH_AARCH64 };
const U64_MAX = (1n << 64n) - 1n;

/** Values where 64-bit comparisons done as two 32-bit halves go wrong if they go wrong at all. */
const INTERESTING: bigint[] = [
  0n, 1n, 2n, 7n, 0x7fffffffn, 0x80000000n, 0xfffffffen, 0xffffffffn, 0x100000000n, 0x100000001n, 0x1ffffffffn,
  0x7fffffffffffffffn, 0x8000000000000000n, 0xffffffff00000000n, 0xffffffff00000001n, 0xfffffffffffffffen, U64_MAX,
];

function nrOf(name: string, arch: SeccompTargetArch): number {
  const nr = syscallNumber(name, arch);
  if (nr === undefined) throw new Error(`${name} not on ${arch}`);
  return nr;
}

function decide(buf: Buffer, arch: SeccompTargetArch, nr: number, args: readonly (bigint | number)[] = []): number {
  return runProgram(buf, { nr, arch: AUDIT[arch], args }).ret;
}

describe('syscall tables', () => {
  it('has the x86_64 numbers, including syscalls newer than the installed headers', () => {
    const expected: Record<string, number> = {
      read: 0, open: 2, mmap: 9, clone: 56, fork: 57, execve: 59, mount: 165, umount2: 166, unshare: 272,
      keyctl: 250, add_key: 248, request_key: 249, kexec_load: 246, personality: 135, socket: 41, setns: 308,
      io_uring_setup: 425, clone3: 435, memfd_secret: 447, set_mempolicy_home_node: 450, uretprobe: 335,
      cachestat: 451, fchmodat2: 452, map_shadow_stack: 453, futex_wake: 454, statmount: 457, listmount: 458,
      lsm_list_modules: 461, mseal: 462, setxattrat: 463, removexattrat: 466, open_tree_attr: 467, listns: 470,
    };
    for (const [name, nr] of Object.entries(expected)) expect([name, syscallNumber(name, 'x64')]).toEqual([name, nr]);
    expect(syscallNames('x64').length).toBeGreaterThan(370);
    expect(syscallNumber('no_such_syscall', 'x64')).toBeUndefined();
    expect(syscallNumber('toString', 'x64')).toBeUndefined();
  });

  it('has the aarch64 (asm-generic) numbers: 64-bit aliases and what arm64 asks for', () => {
    const expected: Record<string, number> = {
      io_setup: 0, fcntl: 25, statfs: 43, fstatfs: 44, truncate: 45, ftruncate: 46, lseek: 62, sendfile: 71,
      pselect6: 72, newfstatat: 79, fstat: 80, sync_file_range: 84, mmap: 222, fadvise64: 223, renameat: 38,
      getrlimit: 163, setrlimit: 164, mount: 40, umount2: 39, openat: 56, keyctl: 219, clone: 220, execve: 221,
      unshare: 97, personality: 92, clone3: 435, memfd_secret: 447, rseq: 293, kexec_file_load: 294, mseal: 462,
      listns: 470,
    };
    for (const [name, nr] of Object.entries(expected)) expect([name, syscallNumber(name, 'arm64')]).toEqual([name, nr]);
    // Legacy and 32-bit-only entry points the generic table does not have.
    for (const name of ['open', 'stat', 'fork', 'fcntl64', 'statfs64', 'mmap2', 'llseek', 'sync_file_range2', 'uretprobe', 'arch_prctl']) {
      expect([name, syscallNumber(name, 'arm64')]).toEqual([name, undefined]);
    }
    expect(syscallNames('arm64')).toHaveLength(new Set(syscallNames('arm64').map((n) => syscallNumber(n, 'arm64'))).size);
  });
});

describe('compileSeccomp', () => {
  // The very first build + compile in this (fresh, forked) process: cold caches and a cold JIT.
  let coldMs = 0;
  beforeAll(() => {
    const t = performance.now();
    compileSeccomp(defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES }));
    coldMs = performance.now() - t;
  });

  it('produces well-formed programs for the default profiles on both architectures', () => {
    for (const arch of ['x64', 'arm64'] as const) {
      for (const caps of [DOCKER_DEFAULT_CAPABILITIES, [...DOCKER_DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN'], []]) {
        const buf = compileSeccomp(defaultSeccompProfile({ capabilities: caps, arch }), { arch });
        const report = checkProgram(buf);
        expect(report.unreachable).toBe(0);
        expect(report.longestPath).toBeLessThan(40); // a binary search, not a chain of hundreds
      }
    }
  });

  it('checks the architecture first and kills foreign ABIs; x32 calls get the default action', () => {
    const profile: LinuxSeccomp = { defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: ['getpid'], action: 'SCMP_ACT_ALLOW' }] };
    const x64 = compileSeccomp(profile, { arch: 'x64' });
    const getpid = nrOf('getpid', 'x64');
    expect(decide(x64, 'x64', getpid)).toBe(RET.ALLOW);
    expect(runProgram(x64, { nr: getpid, arch: AUDIT_ARCH_I386 }).ret).toBe(RET.KILL_PROCESS);
    expect(runProgram(x64, { nr: getpid, arch: AUDIT_ARCH_AARCH64 }).ret).toBe(RET.KILL_PROCESS);
    expect(decide(x64, 'x64', 0x40000000 | getpid)).toBe(errnoRet(38));
    expect(decide(x64, 'x64', 0xffffffff)).toBe(errnoRet(38));
    const arm = compileSeccomp(profile, { arch: 'arm64' });
    expect(decide(arm, 'arm64', nrOf('getpid', 'arm64'))).toBe(RET.ALLOW);
    expect(decide(arm, 'arm64', getpid)).toBe(errnoRet(38)); // x86_64's number for getpid is another syscall here
    expect(runProgram(arm, { nr: getpid, arch: AUDIT_ARCH_X86_64 }).ret).toBe(RET.KILL_PROCESS);
    expect(decode(x64)[0]).toEqual({ code: 0x20, jt: 0, jf: 0, k: 4 }); // ld [arch] comes first
  });

  it('returns the kernel value of every action, with errnoRet falling back to defaultErrnoRet, then EPERM', () => {
    const rule = (name: string, action: SeccompAction, errno?: number): LinuxSyscall => ({ names: [name], action, ...(errno === undefined ? {} : { errnoRet: errno }) });
    const profile: LinuxSeccomp = {
      defaultAction: 'SCMP_ACT_ALLOW',
      syscalls: [
        rule('read', 'SCMP_ACT_KILL'),
        rule('write', 'SCMP_ACT_KILL_THREAD'),
        rule('open', 'SCMP_ACT_KILL_PROCESS'),
        rule('close', 'SCMP_ACT_TRAP'),
        rule('stat', 'SCMP_ACT_ERRNO', 13),
        rule('fstat', 'SCMP_ACT_ERRNO'),
        rule('lstat', 'SCMP_ACT_TRACE', 7),
        rule('poll', 'SCMP_ACT_LOG'),
        rule('lseek', 'SCMP_ACT_NOTIFY'),
        rule('mmap', 'SCMP_ACT_ALLOW'),
      ],
    };
    const buf = compileSeccomp(profile, { arch: 'x64' });
    const got = Object.fromEntries(['read', 'write', 'open', 'close', 'stat', 'fstat', 'lstat', 'poll', 'lseek', 'mmap', 'brk'].map((n) => [n, decide(buf, 'x64', nrOf(n, 'x64'))]));
    expect(got).toEqual({
      read: 0, write: 0, open: 0x80000000, close: 0x00030000, stat: 0x0005000d, fstat: 0x00050001, lstat: 0x7ff00007,
      poll: 0x7ffc0000, lseek: 0x7fc00000, mmap: 0x7fff0000, brk: 0x7fff0000,
    });
    const withDefaultErrno = compileSeccomp({ ...profile, defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 95 }, { arch: 'x64' });
    expect(decide(withDefaultErrno, 'x64', nrOf('fstat', 'x64'))).toBe(errnoRet(95));
    expect(decide(withDefaultErrno, 'x64', nrOf('brk', 'x64'))).toBe(errnoRet(95));
  });

  it('compares 64-bit arguments exactly, for every operator (high bits set, MASKED_EQ, boundaries)', () => {
    const ops: SeccompOperator[] = ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GT', 'SCMP_CMP_GE', 'SCMP_CMP_MASKED_EQ'];
    let checked = 0;
    for (const op of ops) {
      for (const value of INTERESTING) {
        const valueTwo = op === 'SCMP_CMP_MASKED_EQ' ? value & 0xffff0000ffff0000n : undefined;
        const profile: LinuxSeccomp = {
          defaultAction: 'SCMP_ACT_ERRNO',
          syscalls: [{ names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 3, value, op, ...(valueTwo === undefined ? {} : { valueTwo }) }] }],
        };
        const buf = compileSeccomp(profile, { arch: 'x64' });
        checkProgram(buf);
        for (const a of INTERESTING.flatMap((x) => [x, x ^ 0x10000n, BigInt.asUintN(64, x + 1n), BigInt.asUintN(64, x - 1n)])) {
          const data = { nr: nrOf('ioctl', 'x64'), arch: AUDIT_ARCH_X86_64, args: [0, 0, 0, a] };
          expect([op, value, a, describeRet(runProgram(buf, data).ret)]).toEqual([op, value, a, describeRet(referenceDecision(profile, 'x64', data))]);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(3000);
  });

  it('agrees with the reference semantics on random profiles: ANDed conditions, rules in order, both architectures', () => {
    const rand = prng(20240601);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const ops: SeccompOperator[] = ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GT', 'SCMP_CMP_GE', 'SCMP_CMP_MASKED_EQ'];
    const actions: SeccompAction[] = ['SCMP_ACT_ALLOW', 'SCMP_ACT_ERRNO', 'SCMP_ACT_LOG', 'SCMP_ACT_TRAP', 'SCMP_ACT_KILL_PROCESS'];
    const randomValue = () => (rand() < 0.5 ? pick(INTERESTING) : BigInt(Math.floor(rand() * 2 ** 32)) << BigInt(pick([0, 0, 16, 32])));
    let cases = 0;
    for (let round = 0; round < 60; round++) {
      const arch: SeccompTargetArch = round % 2 ? 'arm64' : 'x64';
      const names = syscallNames(arch);
      const hot = Array.from({ length: 12 }, () => pick(names));
      const syscalls: LinuxSyscall[] = Array.from({ length: 25 }, () => {
        const args: LinuxSeccompArg[] = Array.from({ length: Math.floor(rand() * 4) }, () => {
          const op = pick(ops);
          const value = randomValue();
          return op === 'SCMP_CMP_MASKED_EQ' ? { index: Math.floor(rand() * 6), op, value, valueTwo: value & randomValue() } : { index: Math.floor(rand() * 6), op, value };
        });
        return { names: [pick(hot), pick(hot), 'not_a_syscall'], action: pick(actions), errnoRet: Math.floor(rand() * 200), args };
      });
      const profile: LinuxSeccomp = { defaultAction: pick(actions), defaultErrnoRet: 22, syscalls };
      const buf = compileSeccomp(profile, { arch });
      expect(checkProgram(buf).unreachable).toBe(0);
      const ruleValues = syscalls.flatMap((s) => (s.args ?? []).map((a) => BigInt(a.value)));
      for (let i = 0; i < 400; i++) {
        const nr = i % 10 === 0 ? Math.floor(rand() * 600) : nrOf(pick(hot), arch);
        const args = Array.from({ length: 6 }, () => (rand() < 0.6 && ruleValues.length ? BigInt.asUintN(64, pick(ruleValues) + BigInt(pick([-1, 0, 0, 1]))) : randomValue()));
        const data = { nr, arch: AUDIT[arch], args };
        const got = runProgram(buf, data).ret;
        const want = referenceDecision(profile, arch, data);
        if (got !== want) throw new Error(`round ${round} ${arch} nr ${nr} args ${args.join(',')}: got ${describeRet(got)}, want ${describeRet(want)}\n${JSON.stringify(profile, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))}`);
        cases++;
      }
    }
    expect(cases).toBe(24_000);
  });

  it('fits a binary search over 400+ distinct rules in 8-bit jumps, with ja trampolines where needed', () => {
    const names = syscallNames('x64');
    // Every syscall its own errno, so no neighbours merge, plus argument rules on every third one.
    const syscalls: LinuxSyscall[] = names.flatMap((name, i) => [
      ...(i % 3 === 0 ? [{ names: [name], action: 'SCMP_ACT_ALLOW' as const, args: [{ index: i % 6, value: BigInt(i) << 32n | 5n, op: 'SCMP_CMP_EQ' as const }] }] : []),
      { names: [name], action: 'SCMP_ACT_ERRNO' as const, errnoRet: (i % 4000) + 1 },
    ]);
    expect(syscalls.length).toBeGreaterThan(400);
    const profile: LinuxSeccomp = { defaultAction: 'SCMP_ACT_KILL_PROCESS', syscalls };
    const buf = compileSeccomp(profile, { arch: 'x64' });
    const report = checkProgram(buf);
    expect(report.length).toBeLessThanOrEqual(4096);
    expect(report.trampolines).toBeGreaterThan(0);
    expect(report.unreachable).toBe(0);
    expect(report.longestPath).toBeLessThan(40);
    names.forEach((name, i) => {
      const nr = nrOf(name, 'x64');
      expect(decide(buf, 'x64', nr)).toBe(errnoRet((i % 4000) + 1));
      if (i % 3 === 0) {
        const args = [0, 0, 0, 0, 0, 0].map((_, j) => (j === i % 6 ? (BigInt(i) << 32n) | 5n : 0n));
        expect(decide(buf, 'x64', nr, args)).toBe(RET.ALLOW);
      }
    });
    for (const nr of [336, 400, 423, 471, 1000, 0x3fffffff]) expect(decide(buf, 'x64', nr)).toBe(RET.KILL_PROCESS);
  });

  it('skips names the architecture lacks, drops rules that can never change the outcome, and merges neighbours', () => {
    const profile: LinuxSeccomp = {
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        { names: ['open', 'openat', 'no_such_call', 'arch_prctl'], action: 'SCMP_ACT_ALLOW' },
        { names: ['openat'], action: 'SCMP_ACT_KILL_PROCESS' }, // after an unconditional rule: never reached
        { names: ['close'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, value: 3, op: 'SCMP_CMP_EQ' }] }, // the default anyway
        { names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: 0, op: 'SCMP_CMP_LT' }] }, // never true
      ],
    };
    const arm = compileSeccomp(profile, { arch: 'arm64' });
    expect(decide(arm, 'arm64', nrOf('openat', 'arm64'))).toBe(RET.ALLOW);
    expect(decide(arm, 'arm64', nrOf('read', 'arm64'), [0, 0])).toBe(errnoRet(1));
    expect(decode(arm)).toHaveLength(4 + 5); // arch check, ld nr, then a 3-interval search: 2 jumps + 3 rets
    const x64 = compileSeccomp(profile, { arch: 'x64' });
    expect(decide(x64, 'x64', nrOf('open', 'x64'))).toBe(RET.ALLOW);
    expect(decide(x64, 'x64', nrOf('arch_prctl', 'x64'))).toBe(RET.ALLOW);
    expect(decide(x64, 'x64', nrOf('openat', 'x64'))).toBe(RET.ALLOW);
    const allowAll = compileSeccomp({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: syscallNames('x64'), action: 'SCMP_ACT_ALLOW' }] }, { arch: 'x64' });
    expect(decode(allowAll)).toHaveLength(7); // arch check, ld nr, x32 check, and one ret for everything
  });

  it('rejects what it cannot compile faithfully', () => {
    const base: LinuxSeccomp = { defaultAction: 'SCMP_ACT_ERRNO' };
    const bad: [string, LinuxSeccomp][] = [
      ['unknown action', { defaultAction: 'SCMP_ACT_MAYBE' as SeccompAction }],
      ['unknown op', { ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'SCMP_CMP_ABOUT' as SeccompOperator }] }] }],
      ['index 6', { ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 6, value: 1, op: 'SCMP_CMP_EQ' }] }] }],
      ['negative value', { ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: -1, op: 'SCMP_CMP_EQ' }] }] }],
      ['value above 2^64', { ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1n << 64n, op: 'SCMP_CMP_EQ' }] }] }],
      ['errno above 4095', { ...base, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 5000 }] }],
      ['names not an array', { ...base, syscalls: [{ names: 'read' as unknown as string[], action: 'SCMP_ACT_ALLOW' }] }],
      [
        'more than 4096 instructions',
        {
          ...base,
          syscalls: syscallNames('x64').map((name, i) => ({
            names: [name],
            action: 'SCMP_ACT_ALLOW' as const,
            args: [0, 1, 2, 3, 4, 5].map((index) => ({ index, value: (BigInt(i) << 32n) | BigInt(index), op: 'SCMP_CMP_GT' as const })),
          })),
        },
      ],
    ];
    for (const [what, profile] of bad) {
      expect(() => compileSeccomp(profile, { arch: 'x64' }), what).toThrow(InvalidArgumentError);
    }
    expect(() => compileSeccomp(base, { arch: 'riscv64' as SeccompTargetArch })).toThrow(InvalidArgumentError);
  });

  it('caches: the same profile (or equal contents) returns the same Buffer without recompiling', () => {
    const caps = [...DOCKER_DEFAULT_CAPABILITIES, 'CAP_SYS_PTRACE'];
    const t0 = performance.now();
    const profile = defaultSeccompProfile({ capabilities: caps, arch: 'x64' });
    const first = compileSeccomp(profile, { arch: 'x64' });
    const firstMs = performance.now() - t0;
    expect(defaultSeccompProfile({ capabilities: [...caps].reverse().map((c) => c.replace('CAP_', '')), arch: 'x64' })).toBe(profile);

    const n = 1000;
    const t1 = performance.now();
    for (let i = 0; i < n; i++) expect(compileSeccomp(defaultSeccompProfile({ capabilities: caps, arch: 'x64' }), { arch: 'x64' })).toBe(first);
    const cachedMs = (performance.now() - t1) / n;

    // A caller's own copy is recognised by its contents, and an edit is never served stale.
    const copy = structuredClone(profile) as LinuxSeccomp;
    const t2 = performance.now();
    expect(compileSeccomp(copy, { arch: 'x64' })).toBe(first);
    const byContentMs = performance.now() - t2;
    const edited: LinuxSeccomp = { ...copy, defaultErrnoRet: 38 };
    const other = compileSeccomp(edited, { arch: 'x64' });
    expect(other).not.toBe(first);
    expect(decide(other, 'x64', nrOf('keyctl', 'x64'))).toBe(errnoRet(38));
    expect(compileSeccomp(profile, { arch: 'arm64' })).not.toBe(first);

    console.log(
      `[seccomp] default profile (x64, ${decode(first).length} insns): first build+compile ${coldMs.toFixed(2)} ms in a cold process, ` +
        `${firstMs.toFixed(2)} ms warm for new capabilities, ` +
        `cached ${(cachedMs * 1000).toFixed(1)} µs, equal copy by contents ${byContentMs.toFixed(3)} ms`,
    );
    expect(cachedMs).toBeLessThan(0.1);
    expect(byContentMs).toBeLessThan(5);
  });
});
