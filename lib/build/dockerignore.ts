/**
 * `.dockerignore`: which context paths a build may not see, with Docker's pattern rules
 * (moby/patternmatcher): one pattern a line, `#` comments, patterns cleaned and made
 * relative, `*` and `?` within one path element, `**` across any number of them, `[…]`
 * classes, `\` escapes, `!` exceptions; the last pattern that matches a path or one of
 * its parents decides.
 * @module
 */
import { posix } from 'node:path';

/** One compiled pattern. */
interface Pattern {
  /** The cleaned pattern text. */
  text: string;
  /** An exception (`!pattern`): a match includes the path again. */
  exclusion: boolean;
  /** Number of path elements in the pattern (for matching a path's parents). */
  dirs: number;
  regex: RegExp;
}

const REGEX_SPECIAL = new Set(['.', '+', '(', ')', '|', '{', '}', '$', '^']);

/** Docker's translation of one pattern into an anchored regular expression. */
function compile(pattern: string): RegExp {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        i++;
        if (pattern[i + 1] === '/') i++; // `**/` is `**`
        if (i + 1 >= pattern.length) re += '.*';
        else re += '(.*/)?';
      } else {
        re += '[^/]*';
      }
    } else if (ch === '?') {
      re += '[^/]';
    } else if (ch === '\\') {
      if (i + 1 < pattern.length) re += `\\${pattern[++i]!}`;
      else re += '\\\\';
    } else if (ch === '[' || ch === ']') {
      re += ch;
    } else if (REGEX_SPECIAL.has(ch) && !(ch === '^' && pattern[i - 1] === '[')) {
      re += `\\${ch}`;
    } else {
      re += ch;
    }
  }
  try {
    return new RegExp(`${re}$`, 's');
  } catch {
    // an unbalanced class: match it literally, as nothing else could match it either
    return new RegExp(`^${pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  }
}

/** Decides which context paths `.dockerignore` patterns exclude. */
export class IgnoreMatcher {
  readonly #patterns: Pattern[];

  /** @param patterns - the pattern lines (comments and blank lines are skipped) */
  constructor(patterns: readonly string[]) {
    this.#patterns = [];
    for (const raw of patterns) {
      let p = raw.trim();
      if (p === '' || p.startsWith('#')) continue;
      let exclusion = false;
      if (p.startsWith('!')) {
        exclusion = true;
        p = p.slice(1).trim();
        if (p === '') continue;
      }
      p = posix.normalize(p);
      if (p.length > 1 && p.startsWith('/')) p = p.slice(1);
      if (p.endsWith('/') && p.length > 1) p = p.slice(0, -1);
      this.#patterns.push({ text: p, exclusion, dirs: p.split('/').length, regex: compile(p) });
    }
  }

  /** Reads `.dockerignore` text. */
  static parse(text: string): IgnoreMatcher {
    return new IgnoreMatcher(text.split(/\r?\n/));
  }

  /** Whether any pattern is an exception (then an excluded directory may still hold included paths). */
  get hasExclusions(): boolean {
    return this.#patterns.some((p) => p.exclusion);
  }

  /** Whether there are no patterns. */
  get empty(): boolean {
    return this.#patterns.length === 0;
  }

  readonly #memo = new Map<string, boolean>();

  /**
   * Whether `rel` (a context-relative path, `/`-separated, no leading `/`) is excluded. A path
   * starts with its parent directory's result (what is below an excluded directory is excluded
   * unless an exception names it: moby's MatchesUsingParentResults), then every pattern that
   * matches it, or one of its parents, decides in turn.
   */
  excludes(rel: string): boolean {
    const path = posix.normalize(rel).replace(/^\/+/, '').replace(/\/+$/, '');
    if (path === '' || path === '.') return false;
    const known = this.#memo.get(path);
    if (known !== undefined) return known;
    const parts = path.split('/');
    let matched = parts.length > 1 ? this.excludes(parts.slice(0, -1).join('/')) : false;
    for (const p of this.#patterns) {
      let match = p.regex.test(path);
      if (!match && parts.length > 1) {
        // a pattern naming a parent directory excludes what is below it
        const prefix = parts.slice(0, p.dirs).join('/');
        if (p.dirs < parts.length) match = p.regex.test(prefix);
      }
      if (match) matched = !p.exclusion;
    }
    if (this.#memo.size > 100_000) this.#memo.clear();
    this.#memo.set(path, matched);
    return matched;
  }
}
