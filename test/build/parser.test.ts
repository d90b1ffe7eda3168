import { describe, expect, it } from 'vitest';
import { IgnoreMatcher } from '../../lib/build/dockerignore';
import { ExpandError, expandWord, expandWords, parseKeyValues } from '../../lib/build/expand';
import { parseDockerfile, splitStages } from '../../lib/build/parser';
import { DockerfileError } from '../../lib/build/types';

describe('Dockerfile parser', () => {
  it('reads directives, comments, continuations, flags and both forms', () => {
    const file = parseDockerfile(
      [
        '# syntax=docker/dockerfile:1.7',
        '# escape=\\',
        '',
        '# a comment',
        'FROM --platform=linux/amd64 busybox AS base',
        'RUN echo one \\',
        '  # a comment inside a continuation is dropped',
        '',
        '    two',
        'copy --chown=1:2 --chmod=644 ["a b", "/dst/"]',
        'CMD ["sh", "-c", "echo hi"]',
        'ENTRYPOINT [not json',
        '  HEALTHCHECK --interval=5s CMD true',
      ].join('\n'),
    );
    expect(file.directives).toEqual({ syntax: 'docker/dockerfile:1.7', escape: '\\' });
    const [from, run, copy, cmd, entry, health] = file.instructions;
    expect(from).toMatchObject({ keyword: 'FROM', flags: { platform: 'linux/amd64' }, args: 'busybox AS base', line: 5 });
    expect(run).toMatchObject({ keyword: 'RUN', args: 'echo one     two', line: 6, endLine: 9 });
    expect(run!.json).toBeUndefined();
    expect(copy).toMatchObject({ keyword: 'COPY', flags: { chown: '1:2', chmod: '644' }, json: ['a b', '/dst/'], line: 10 });
    expect(cmd!.json).toEqual(['sh', '-c', 'echo hi']);
    expect(entry!.json).toBeUndefined(); // not JSON: shell form, as Docker treats it
    expect(health).toMatchObject({ keyword: 'HEALTHCHECK', flags: { interval: '5s' }, args: 'CMD true', line: 13 });
  });

  it('takes the backtick escape directive, and stops directives at the first other line', () => {
    const file = parseDockerfile('# escape=`\nFROM x\nRUN echo a `\n  b\n');
    expect(file.escape).toBe('`');
    expect(file.instructions[1]!.args).toBe('echo a   b');
    const late = parseDockerfile('# a comment\n# escape=`\nFROM x\nRUN echo \\\n b');
    expect(late.directives).toEqual({});
    expect(late.instructions[1]!.args).toBe('echo  b');
  });

  it('names the line and column of errors', () => {
    const err = (text: string): DockerfileError => {
      try {
        splitStages(parseDockerfile(text));
      } catch (e) {
        if (e instanceof DockerfileError) return e;
        throw e;
      }
      throw new Error('no error');
    };
    expect(err('FROM x\n\n  BOGUS thing')).toMatchObject({ line: 3, column: 3, code: 'ERR_DOCKERFILE_UNKNOWN_INSTRUCTION' });
    expect(err('FROM x\nCOPY --frm=a b c')).toMatchObject({ line: 2, column: 6, message: expect.stringContaining('unknown flag --frm') });
    expect(err('RUN true\nFROM x')).toMatchObject({ line: 1, message: expect.stringContaining('before the first FROM') });
    expect(err('FROM x AS a\nFROM y AS A')).toMatchObject({ line: 2, message: expect.stringContaining("duplicate stage name 'a'") });
    expect(err('# escape=x\nFROM x')).toMatchObject({ line: 1 });
    expect(err('FROM x\nRUN')).toMatchObject({ line: 2, message: expect.stringContaining('RUN needs arguments') });
    expect(err('ARG A=1\n')).toMatchObject({ message: expect.stringContaining('no FROM') });
  });

  it('splits stages with global ARGs', () => {
    const f = splitStages(parseDockerfile('ARG V=1\nFROM a:${V} AS Build\nRUN x\nFROM scratch\nCOPY --from=build / /'));
    expect(f.globalArgs.map((a) => a.args)).toEqual(['V=1']);
    expect(f.stages.map((s) => [s.index, s.name, s.base, s.instructions.length])).toEqual([
      [0, 'build', 'a:${V}', 1],
      [1, undefined, 'scratch', 1],
    ]);
  });
});

describe('variable expansion', () => {
  const vars: Record<string, string> = { A: 'alpha', EMPTY: '', SP: 'x y' };
  const get = (n: string): string | undefined => vars[n];

  it('substitutes like Docker', () => {
    expect(expandWord('$A ${A} ${A}x $A-x', get)).toBe('alpha alpha alphax alpha-x');
    expect(expandWord('${MISSING:-def} ${EMPTY:-def} ${EMPTY-def} ${MISSING-def}', get)).toBe('def def  def');
    expect(expandWord('${A:+yes} ${EMPTY:+yes} ${EMPTY+yes} ${MISSING+yes}', get)).toBe('yes  yes ');
    expect(expandWord('${MISSING:-${A}}', get)).toBe('alpha');
    expect(expandWord(`'$A' "$A" \\$A "\\$A" a\\ b`, get)).toBe('$A alpha $A $A a b');
    expect(expandWord('cost $ 5 $', get)).toBe('cost $ 5 $');
    expect(expandWord('`$A', get, '`')).toBe('$A');
  });

  it('splits words outside quotes, unquoted values included', () => {
    expect(expandWords('a "b c" $SP "$SP"', get)).toEqual(['a', 'b c', 'x', 'y', 'x y']);
  });

  it('fails on required variables and unterminated quotes', () => {
    expect(() => expandWord('${MISSING:?must be set}', get)).toThrow(ExpandError);
    expect(() => expandWord('${EMPTY:?}', get)).toThrow(/EMPTY/);
    expect(expandWord('${EMPTY?}', get)).toBe('');
    expect(() => expandWord('"open', get)).toThrow(/double quote/);
    expect(() => expandWord('${A', get)).toThrow(/missing '}'|unsupported/);
  });

  it('parses key=value lists and the legacy ENV form', () => {
    expect(parseKeyValues('A=1 B="two words" C=\'$x\'', 'ENV')).toEqual([
      { key: 'A', value: '1' },
      { key: 'B', value: '"two words"' },
      { key: 'C', value: "'$x'" },
    ]);
    expect(parseKeyValues('KEY value with spaces', 'ENV')).toEqual([{ key: 'KEY', value: 'value with spaces' }]);
    expect(parseKeyValues('A B=2', 'ARG')).toEqual([
      { key: 'A', value: undefined },
      { key: 'B', value: '2' },
    ]);
    expect(parseKeyValues('A=1 B', 'LABEL')).toMatch(/not key=value/);
  });
});

describe('.dockerignore', () => {
  it('follows Docker pattern rules', () => {
    const m = IgnoreMatcher.parse('# comment\n\n*.log\n!keep.log\n/build/\n**/node_modules\ndocs/**/*.md\ntmp?\n[ab].txt\n');
    expect(m.excludes('x.log')).toBe(true);
    expect(m.excludes('dir/x.log')).toBe(false); // `*` stays in the top directory
    expect(m.excludes('keep.log')).toBe(false);
    expect(m.excludes('build')).toBe(true);
    expect(m.excludes('build/out/a')).toBe(true); // a parent matches
    expect(m.excludes('node_modules/x')).toBe(true);
    expect(m.excludes('a/b/node_modules')).toBe(true);
    expect(m.excludes('docs/readme.md')).toBe(true);
    expect(m.excludes('docs/a/b/readme.md')).toBe(true);
    expect(m.excludes('docs/readme.txt')).toBe(false);
    expect(m.excludes('tmp1')).toBe(true);
    expect(m.excludes('tmp12')).toBe(false);
    expect(m.excludes('a.txt')).toBe(true);
    expect(m.excludes('c.txt')).toBe(false);
    expect(m.hasExclusions).toBe(true);
  });

  it('lets the last matching pattern win', () => {
    const m = new IgnoreMatcher(['dir', '!dir/keep', 'dir/keep/drop']);
    expect(m.excludes('dir/x')).toBe(true);
    expect(m.excludes('dir/keep')).toBe(false);
    expect(m.excludes('dir/keep/a')).toBe(false);
    expect(m.excludes('dir/keep/drop')).toBe(true);
    expect(new IgnoreMatcher(['**']).excludes('any/thing')).toBe(true);
    expect(new IgnoreMatcher(['a\\*b']).excludes('a*b')).toBe(true);
    expect(new IgnoreMatcher(['a\\*b']).excludes('axb')).toBe(false);
  });
});
