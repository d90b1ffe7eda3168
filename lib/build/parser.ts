/**
 * The Dockerfile parser: parser directives, comments, line continuations, instructions with
 * their flags, and exec (JSON) versus shell form. Variables are expanded later, per
 * instruction, by the builder (see expand.ts), because their values depend on the stage.
 * @module
 */
import { DockerfileError, type Dockerfile, type Instruction } from './types';

/** Every instruction the builder knows. */
export const INSTRUCTIONS: ReadonlySet<string> = new Set([
  'FROM',
  'RUN',
  'CMD',
  'LABEL',
  'MAINTAINER',
  'EXPOSE',
  'ENV',
  'ADD',
  'COPY',
  'ENTRYPOINT',
  'VOLUME',
  'USER',
  'WORKDIR',
  'ARG',
  'ONBUILD',
  'STOPSIGNAL',
  'HEALTHCHECK',
  'SHELL',
]);

/** The flags each instruction accepts (anything else is an error, as in Docker). */
const FLAGS: Record<string, readonly string[]> = {
  FROM: ['platform'],
  RUN: ['network', 'mount', 'security'],
  COPY: ['from', 'chown', 'chmod', 'link', 'parents', 'exclude'],
  ADD: ['chown', 'chmod', 'link', 'checksum', 'keep-git-dir', 'exclude'],
  HEALTHCHECK: ['interval', 'timeout', 'start-period', 'start-interval', 'retries'],
};

/** Instructions whose arguments may be a JSON array (exec form). */
const JSON_FORM = new Set(['RUN', 'CMD', 'ENTRYPOINT', 'SHELL', 'COPY', 'ADD', 'VOLUME']);

const DIRECTIVE = /^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$/;
const KNOWN_DIRECTIVES = new Set(['escape', 'syntax', 'check']);

/** A JSON array of strings, or undefined when `text` is not one. */
export function parseJsonArray(text: string): string[] | undefined {
  const t = text.trim();
  if (!t.startsWith('[')) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(t);
  } catch {
    return undefined;
  }
  if (!Array.isArray(value) || !value.every((x) => typeof x === 'string')) return undefined;
  return value as string[];
}

/** Splits the leading `--flag[=value]` words off an instruction's arguments. */
function extractFlags(keyword: string, rest: string, line: number, column: number): { flags: Record<string, string | true>; args: string; column: number } {
  const flags: Record<string, string | true> = {};
  let text = rest;
  let col = column;
  for (;;) {
    const m = /^--([a-zA-Z][a-zA-Z0-9-]*)(?:=("(?:[^"\\]|\\.)*"|\S*))?(?:[ \t]+|$)/.exec(text);
    if (!m) break;
    const name = m[1]!.toLowerCase();
    const allowed = FLAGS[keyword] ?? [];
    if (!allowed.includes(name)) {
      throw new DockerfileError(`unknown flag --${name} for ${keyword}${allowed.length ? ` (it takes ${allowed.map((f) => `--${f}`).join(', ')})` : ' (it takes no flags)'}`, { line, column: col });
    }
    if (name in flags) throw new DockerfileError(`flag --${name} given twice`, { line, column: col });
    let value: string | true = m[2] === undefined ? true : m[2];
    if (typeof value === 'string' && value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1).replace(/\\(.)/g, '$1');
    flags[name] = value;
    col += m[0].length;
    text = text.slice(m[0].length);
  }
  return { flags, args: text, column: col };
}

/**
 * Parses a Dockerfile's text.
 * @throws {@link DockerfileError} for an unknown instruction, a bad flag, a bad escape directive or an empty instruction
 */
export function parseDockerfile(text: string): Dockerfile {
  const lines = text.replace(/^\uFEFF/, '').split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  const directives: Record<string, string> = {};
  let i = 0;
  // Parser directives: `# name=value` lines at the very top. The first line that is not one
  // (a comment, a blank line, an instruction, an unknown directive) ends them.
  for (; i < lines.length; i++) {
    const m = DIRECTIVE.exec(lines[i]!);
    if (!m) break;
    const name = m[1]!.toLowerCase();
    if (!KNOWN_DIRECTIVES.has(name)) break;
    if (name in directives) throw new DockerfileError(`parser directive '${name}' given twice`, { line: i + 1, column: 1 });
    directives[name] = m[2]!;
  }
  const escapeValue = directives.escape ?? '\\';
  if (escapeValue !== '\\' && escapeValue !== '`') {
    throw new DockerfileError(`invalid escape directive '${escapeValue}': it must be \\ or \``, { line: 1, column: 1 });
  }
  const escape = escapeValue as '\\' | '`';
  const continuation = new RegExp(`${escape === '\\' ? '\\\\' : '`'}[ \\t]*$`);

  const instructions: Instruction[] = [];
  for (; i < lines.length; i++) {
    const first = lines[i]!;
    const trimmed = first.trimStart();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const start = i;
    let joined = first;
    while (continuation.test(joined)) {
      joined = joined.replace(continuation, '');
      // the next line that is neither a comment nor empty continues this instruction
      let next: string | undefined;
      while (i + 1 < lines.length) {
        i++;
        const candidate = lines[i]!;
        const t = candidate.trimStart();
        if (t.startsWith('#') || t === '') continue;
        next = candidate;
        break;
      }
      if (next === undefined) break;
      joined += next;
    }
    const indent = first.length - trimmed.length;
    const m = /^(\S+)(?:[ \t]+([\s\S]*))?$/.exec(joined.trimStart());
    if (!m) continue;
    const word = m[1]!;
    const keyword = word.toUpperCase();
    if (!INSTRUCTIONS.has(keyword)) {
      throw new DockerfileError(`unknown instruction '${word}'`, { line: start + 1, column: indent + 1, code: 'ERR_DOCKERFILE_UNKNOWN_INSTRUCTION' });
    }
    const restRaw = m[2] ?? '';
    const argsColumn = indent + 1 + (joined.trimStart().length - restRaw.length);
    const rest = restRaw.replace(/[ \t]+$/, '');
    const { flags, args, column } = extractFlags(keyword, rest, start + 1, argsColumn);
    if (args.trim() === '') {
      throw new DockerfileError(`${keyword} needs arguments`, { line: start + 1, column: indent + 1 });
    }
    const instruction: Instruction = {
      keyword,
      flags,
      args,
      line: start + 1,
      endLine: i + 1,
      column,
      original: joined.trim(),
    };
    if (JSON_FORM.has(keyword)) {
      const json = parseJsonArray(args);
      if (json) instruction.json = json;
    }
    instructions.push(instruction);
  }
  return { directives, escape, instructions };
}

/** One stage of a Dockerfile: a FROM and what follows it up to the next FROM. */
export interface Stage {
  /** 0-based position among the stages. */
  index: number;
  /** The lower-case name from `AS name`, if any. */
  name?: string;
  /** The FROM instruction. */
  from: Instruction;
  /** The base as written (before variable expansion): an image reference, `scratch` or a stage name. */
  base: string;
  /** The instructions after FROM. */
  instructions: Instruction[];
}

/** A Dockerfile split into global ARGs and stages. */
export interface StagedDockerfile extends Dockerfile {
  /** ARG instructions before the first FROM (global scope: visible in FROM lines). */
  globalArgs: Instruction[];
  /** The stages, in order. */
  stages: Stage[];
}

/**
 * Splits a parsed Dockerfile into global ARGs and stages.
 * @throws {@link DockerfileError} for an instruction before the first FROM that is not ARG, a bad FROM, a repeated stage name, or no FROM at all
 */
export function splitStages(file: Dockerfile): StagedDockerfile {
  const globalArgs: Instruction[] = [];
  const stages: Stage[] = [];
  const names = new Map<string, number>();
  for (const ins of file.instructions) {
    if (ins.keyword === 'FROM') {
      const words = ins.args.trim().split(/[ \t]+/);
      let name: string | undefined;
      if (words.length === 3 && words[1]!.toUpperCase() === 'AS') {
        name = words[2]!.toLowerCase();
        if (!/^[a-z][a-z0-9_.-]*$/.test(name)) {
          throw new DockerfileError(`invalid stage name '${words[2]}': it must start with a letter and hold only letters, digits, '-', '_' and '.'`, { line: ins.line, column: ins.column });
        }
        if (names.has(name)) throw new DockerfileError(`duplicate stage name '${name}' (first at line ${stages[names.get(name)!]!.from.line})`, { line: ins.line, column: ins.column });
      } else if (words.length !== 1) {
        throw new DockerfileError(`FROM takes an image and optionally 'AS name', got '${ins.args.trim()}'`, { line: ins.line, column: ins.column });
      }
      if (name) names.set(name, stages.length);
      stages.push({ index: stages.length, ...(name ? { name } : {}), from: ins, base: words[0]!, instructions: [] });
      continue;
    }
    const stage = stages[stages.length - 1];
    if (!stage) {
      if (ins.keyword === 'ARG') {
        globalArgs.push(ins);
        continue;
      }
      throw new DockerfileError(`${ins.keyword} before the first FROM (only ARG may come before FROM)`, { line: ins.line, column: 1 });
    }
    stage.instructions.push(ins);
  }
  if (stages.length === 0) throw new DockerfileError('the Dockerfile has no FROM instruction', { line: Math.max(1, file.instructions.at(-1)?.line ?? 1) });
  return { ...file, globalArgs, stages };
}
