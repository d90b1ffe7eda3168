#!/usr/bin/env node
/**
 * Writes syscalls.ts: syscall numbers by name for x86_64 and aarch64.
 *
 * Run by hand when the tables need refreshing (never at build time):
 *
 *   node lib/container/seccomp/gen-syscalls.mjs [include-dir]
 *
 * Sources, from linux-libc-dev (default include dir /usr/include):
 * - x86_64: asm/unistd_64.h (plain `#define __NR_name nr` lines);
 * - aarch64: asm-generic/unistd.h, the generic table arm64 uses, read through
 *   a tiny preprocessor with the macros arm64's asm/unistd.h sets before it
 *   includes the generic header, on a 64-bit native (non-compat) ABI.
 *
 * Syscalls newer than the installed headers come from NEWER below; each is
 * added only when the header lacks it, and a header that has it with another
 * number stops the script.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const include = process.argv[2] ?? '/usr/include';
const out = join(dirname(fileURLToPath(import.meta.url)), 'syscalls.ts');

/** What arch/arm64/include/uapi/asm/unistd.h defines before including asm-generic/unistd.h. */
const ARM64_WANTS = [
  '__ARCH_WANT_RENAMEAT',
  '__ARCH_WANT_NEW_STAT',
  '__ARCH_WANT_SET_GET_RLIMIT',
  '__ARCH_WANT_TIME32_SYSCALLS',
  '__ARCH_WANT_SYS_CLONE3',
  '__ARCH_WANT_MEMFD_SECRET',
];

/**
 * Syscalls added after the headers this was first generated from (6.1):
 * [name, number, arches]. Since 4.19 new syscalls share one number on every
 * architecture, except the few that exist on one only.
 */
const NEWER = [
  ['uretprobe', 335, ['x86_64']], // 6.11
  ['cachestat', 451, ['x86_64', 'aarch64']], // 6.5
  ['fchmodat2', 452, ['x86_64', 'aarch64']], // 6.6
  ['map_shadow_stack', 453, ['x86_64', 'aarch64']], // 6.6
  ['futex_wake', 454, ['x86_64', 'aarch64']], // 6.7
  ['futex_wait', 455, ['x86_64', 'aarch64']],
  ['futex_requeue', 456, ['x86_64', 'aarch64']],
  ['statmount', 457, ['x86_64', 'aarch64']], // 6.8
  ['listmount', 458, ['x86_64', 'aarch64']],
  ['lsm_get_self_attr', 459, ['x86_64', 'aarch64']],
  ['lsm_set_self_attr', 460, ['x86_64', 'aarch64']],
  ['lsm_list_modules', 461, ['x86_64', 'aarch64']],
  ['mseal', 462, ['x86_64', 'aarch64']], // 6.10
  ['setxattrat', 463, ['x86_64', 'aarch64']], // 6.13
  ['getxattrat', 464, ['x86_64', 'aarch64']],
  ['listxattrat', 465, ['x86_64', 'aarch64']],
  ['removexattrat', 466, ['x86_64', 'aarch64']],
  ['open_tree_attr', 467, ['x86_64', 'aarch64']], // 6.15
  ['file_getattr', 468, ['x86_64', 'aarch64']], // 6.17
  ['file_setattr', 469, ['x86_64', 'aarch64']],
  ['listns', 470, ['x86_64', 'aarch64']], // 6.18
];

function parseX86_64(text) {
  const table = new Map();
  for (const m of text.matchAll(/^#define __NR_(\w+)\s+(\d+)\s*$/gm)) table.set(m[1], Number(m[2]));
  return table;
}

/** Evaluates a #if expression: defined(), __BITS_PER_LONG, ==, !=, !, &&, ||, parentheses. */
function evalCondition(expr, macros) {
  let e = expr.replace(/\/\*.*?\*\//g, '').trim();
  e = e.replace(/defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)/g, (_, a, b) => (macros.has(a ?? b) ? '1' : '0'));
  e = e.replace(/[A-Za-z_]\w*/g, (id) => {
    const v = macros.get(id);
    return v !== undefined && /^\d+$/.test(v) ? v : '0'; // unknown identifiers are 0, as in cpp
  });
  if (!/^[\d\s()!&|=<>]*$/.test(e)) throw new Error(`cannot evaluate #if ${expr}`);
  return Boolean(Function(`"use strict"; return (${e});`)());
}

/** Runs the conditionals of asm-generic/unistd.h and collects every `__NR*` macro. */
function preprocessGeneric(text, predefined) {
  const macros = new Map(predefined);
  const stack = []; // { active, taken } per nesting level
  const active = () => stack.every((s) => s.active);
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const raw of lines) {
    const line = raw.trim();
    let m;
    if ((m = /^#\s*ifdef\s+(\w+)/.exec(line))) {
      const on = macros.has(m[1]);
      stack.push({ active: on, taken: on });
    } else if ((m = /^#\s*ifndef\s+(\w+)/.exec(line))) {
      const on = !macros.has(m[1]);
      stack.push({ active: on, taken: on });
    } else if ((m = /^#\s*if\s+(.*)$/.exec(line))) {
      const on = active() && evalCondition(m[1], macros);
      stack.push({ active: on, taken: on });
    } else if ((m = /^#\s*elif\s+(.*)$/.exec(line))) {
      const top = stack.at(-1);
      const on = !top.taken && evalCondition(m[1], macros);
      top.active = on;
      top.taken ||= on;
    } else if (/^#\s*else\b/.test(line)) {
      const top = stack.at(-1);
      top.active = !top.taken;
      top.taken = true;
    } else if (/^#\s*endif\b/.test(line)) {
      stack.pop();
    } else if (!active()) {
      continue;
    } else if ((m = /^#\s*define\s+(\w+)(?:\s+(.*?))?\s*(?:\/\*.*)?$/.exec(line))) {
      macros.set(m[1], (m[2] ?? '').trim());
    } else if ((m = /^#\s*undef\s+(\w+)/.exec(line))) {
      macros.delete(m[1]);
    }
  }
  if (stack.length !== 0) throw new Error('unbalanced #if/#endif');
  const resolve = (value, depth = 0) => {
    if (/^\d+$/.test(value)) return Number(value);
    if (depth > 4 || !macros.has(value)) return undefined;
    return resolve(macros.get(value), depth + 1);
  };
  const table = new Map();
  for (const [name, value] of macros) {
    if (!name.startsWith('__NR_') || name === '__NR_syscalls' || name === '__NR_arch_specific_syscall') continue;
    const nr = resolve(value);
    if (nr === undefined) throw new Error(`cannot resolve ${name} = ${value}`);
    table.set(name.slice('__NR_'.length), nr);
  }
  return table;
}

function addNewer(table, arch) {
  for (const [name, nr, arches] of NEWER) {
    if (!arches.includes(arch)) continue;
    const have = table.get(name);
    if (have !== undefined && have !== nr) throw new Error(`${arch}: header has ${name} = ${have}, NEWER says ${nr}`);
    table.set(name, nr);
  }
  const byNumber = new Map();
  for (const [name, nr] of table) {
    if (byNumber.has(nr)) throw new Error(`${arch}: ${name} and ${byNumber.get(nr)} share number ${nr}`);
    byNumber.set(nr, name);
  }
  return table;
}

function render(constName, doc, table) {
  const rows = [...table].sort((a, b) => a[1] - b[1]).map(([name, nr]) => `  ${name}: ${nr},`);
  return `/** ${doc} */\nexport const ${constName}: Readonly<Record<string, number>> = Object.freeze({\n${rows.join('\n')}\n});\n`;
}

const x86 = addNewer(parseX86_64(readFileSync(join(include, 'x86_64-linux-gnu/asm/unistd_64.h'), 'utf8')), 'x86_64');
const generic = readFileSync(join(include, 'asm-generic/unistd.h'), 'utf8');
const arm64 = addNewer(
  preprocessGeneric(generic, [['__BITS_PER_LONG', '64'], ...ARM64_WANTS.map((w) => [w, '1'])]),
  'aarch64',
);

const text = `/**
 * Syscall numbers by name for the native 64-bit ABIs of x86_64 and aarch64.
 * Generated by gen-syscalls.mjs from linux-libc-dev's asm/unistd_64.h and
 * asm-generic/unistd.h (plus the syscalls newer than those headers it lists);
 * do not edit by hand, run \`node lib/container/seccomp/gen-syscalls.mjs\`.
 * @module
 * @internal
 */

${render('X86_64_SYSCALLS', `x86_64 (64-bit ABI): ${x86.size} syscalls.`, x86)}
${render('AARCH64_SYSCALLS', `aarch64 (the asm-generic table): ${arm64.size} syscalls.`, arm64)}`;
writeFileSync(out, text);
console.log(`wrote ${out}: x86_64 ${x86.size}, aarch64 ${arm64.size}`);
