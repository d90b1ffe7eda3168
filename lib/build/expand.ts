/**
 * Variable substitution in Dockerfile words, as Docker's shell lexer does it: quotes
 * (`'…'` literal, `"…"` with substitution), the escape character, `$VAR`, `${VAR}`,
 * `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?message}`,
 * `${VAR?message}`; and key=value lists for ENV, LABEL and ARG.
 * @module
 */

/** Looks up a variable; undefined when it is not set. */
export type VariableLookup = (name: string) => string | undefined;

/** Substitution failed: an unterminated quote or brace, or a `${VAR:?}` without a value. */
export class ExpandError extends Error {
  /** 0-based offset in the word where it happened. */
  readonly offset: number;
  /** The `ERR_*` code the builder turns this into. */
  readonly code: string;

  /**
   * @param message - what went wrong
   * @param offset - where in the word
   * @param code - `ERR_DOCKERFILE` or `ERR_BUILD_ARG_REQUIRED`
   */
  constructor(message: string, offset: number, code = 'ERR_DOCKERFILE') {
    super(message);
    this.name = 'ExpandError';
    this.offset = offset;
    this.code = code;
  }
}

class Lexer {
  readonly #s: string;
  #i = 0;
  readonly #escape: string;
  readonly #lookup: VariableLookup;
  /** Words being collected; null when collecting a single word. */
  readonly #words: string[] | null;
  #word = '';
  #inWord = false;

  constructor(s: string, lookup: VariableLookup, escape: string, split: boolean) {
    this.#s = s;
    this.#lookup = lookup;
    this.#escape = escape;
    this.#words = split ? [] : null;
  }

  #raw(text: string): void {
    this.#word += text;
    this.#inWord = true;
  }

  /** Unquoted text from a substitution: split on whitespace when splitting words. */
  #unquoted(text: string): void {
    if (!this.#words) return this.#raw(text);
    for (const ch of text) {
      if (/\s/.test(ch)) this.#endWord();
      else this.#raw(ch);
    }
  }

  #endWord(): void {
    if (this.#inWord && this.#words) {
      this.#words.push(this.#word);
      this.#word = '';
      this.#inWord = false;
    }
  }

  run(stop?: string): string {
    const s = this.#s;
    while (this.#i < s.length) {
      const ch = s[this.#i]!;
      if (stop !== undefined && ch === stop) return this.#word;
      if (ch === this.#escape) {
        this.#i++;
        if (this.#i < s.length) this.#raw(s[this.#i++]!);
        else this.#raw(ch);
        continue;
      }
      if (ch === "'") {
        this.#single();
        continue;
      }
      if (ch === '"') {
        this.#double();
        continue;
      }
      if (ch === '$') {
        this.#unquoted(this.#dollar());
        continue;
      }
      if (this.#words && /\s/.test(ch)) {
        this.#endWord();
        this.#i++;
        continue;
      }
      this.#raw(ch);
      this.#i++;
    }
    if (stop !== undefined) throw new ExpandError(`missing '${stop}'`, this.#i);
    return this.#word;
  }

  words(): string[] {
    this.run();
    this.#endWord();
    return this.#words ?? [this.#word];
  }

  #single(): void {
    const start = this.#i;
    this.#i++;
    const end = this.#s.indexOf("'", this.#i);
    if (end < 0) throw new ExpandError('unexpected end of text while looking for the matching single quote', start);
    this.#raw(this.#s.slice(this.#i, end));
    this.#i = end + 1;
  }

  #double(): void {
    const start = this.#i;
    this.#i++;
    let text = '';
    const s = this.#s;
    for (;;) {
      if (this.#i >= s.length) throw new ExpandError('unexpected end of text while looking for the matching double quote', start);
      const ch = s[this.#i]!;
      if (ch === '"') {
        this.#i++;
        break;
      }
      if (ch === '$') {
        text += this.#dollar();
        continue;
      }
      if (ch === this.#escape && this.#i + 1 < s.length) {
        const next = s[this.#i + 1]!;
        if (next === '"' || next === '$' || next === this.#escape) {
          text += next;
          this.#i += 2;
          continue;
        }
      }
      text += ch;
      this.#i++;
    }
    this.#raw(text);
  }

  /** At a `$`: the substituted text (a lone `$` stays a `$`). */
  #dollar(): string {
    const s = this.#s;
    const start = this.#i;
    this.#i++;
    const c = s[this.#i];
    if (c === '{') {
      this.#i++;
      const name = this.#name();
      if (name === '') throw new ExpandError(`bad substitution: no variable name after '\${'`, start);
      const value = this.#lookup(name);
      const c2 = s[this.#i];
      if (c2 === '}') {
        this.#i++;
        return value ?? '';
      }
      let colon = false;
      if (c2 === ':') {
        colon = true;
        this.#i++;
      }
      const op = s[this.#i];
      if (op !== '-' && op !== '+' && op !== '?') {
        throw new ExpandError(`unsupported modifier '${colon ? ':' : ''}${op ?? ''}' in \${${name}…} (supported: :- - :+ + :? ?)`, this.#i);
      }
      this.#i++;
      const inner = new Lexer(s.slice(this.#i), this.#lookup, this.#escape, false);
      const word = inner.run('}');
      this.#i += inner.#i + 1;
      const set = value !== undefined && (!colon || value !== '');
      if (op === '-') return set ? value! : word;
      if (op === '+') return set ? word : '';
      if (!set) {
        throw new ExpandError(`${name}: ${word || (colon ? 'required and not set or empty' : 'required and not set')}`, start, 'ERR_BUILD_ARG_REQUIRED');
      }
      return value!;
    }
    const name = this.#name();
    if (name === '') return '$';
    return this.#lookup(name) ?? '';
  }

  #name(): string {
    const m = /^[A-Za-z_][A-Za-z0-9_]*|^[0-9]/.exec(this.#s.slice(this.#i));
    if (!m) return '';
    this.#i += m[0].length;
    return m[0];
  }
}

/**
 * Expands one word: quotes removed, escapes applied, variables substituted.
 * @throws {@link ExpandError}
 */
export function expandWord(word: string, lookup: VariableLookup, escape: string = '\\'): string {
  return new Lexer(word, lookup, escape, false).words()[0] ?? '';
}

/**
 * Expands and splits text into words on whitespace outside quotes (an unquoted variable's
 * value is split too, as the shell does).
 * @throws {@link ExpandError}
 */
export function expandWords(text: string, lookup: VariableLookup, escape: string = '\\'): string[] {
  return new Lexer(text, lookup, escape, true).words();
}

/**
 * Splits text into words on whitespace outside quotes, keeping quotes and escapes
 * (Docker's parseWords, used for `key=value` lists before expansion).
 */
export function splitRawWords(text: string, escape: string = '\\'): string[] {
  const words: string[] = [];
  let word = '';
  let quote: string | null = null;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quote === null && /\s/.test(ch)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (ch === escape && i + 1 < text.length && quote !== "'") {
      word += ch + text[++i]!;
      continue;
    }
    if (quote === null && (ch === '"' || ch === "'")) quote = ch;
    else if (ch === quote) quote = null;
    word += ch;
  }
  if (inWord) words.push(word);
  return words;
}

/** One `key=value` (value undefined for a bare `ARG key`). */
export interface KeyValue {
  /** The key, as written. */
  key: string;
  /** The value before expansion; undefined when there was no `=`. */
  value: string | undefined;
}

/**
 * The `key=value` pairs of ENV and LABEL (with the legacy `ENV key value…` form) or ARG.
 * @param kind - `ENV`/`LABEL`: every word needs `=` (except the legacy form); `ARG`: `=` optional
 * @returns the pairs, or an error message
 */
export function parseKeyValues(text: string, kind: 'ENV' | 'LABEL' | 'ARG', escape: string = '\\'): KeyValue[] | string {
  const words = splitRawWords(text.trim(), escape);
  if (words.length === 0) return `${kind} needs at least one argument`;
  if (kind !== 'ARG' && !words[0]!.includes('=')) {
    // legacy `ENV key value with spaces`: the rest of the line is the value
    const m = /^(\S+)\s+([\s\S]*)$/.exec(text.trim());
    if (!m) return `${kind} ${words[0]} needs a value (${kind} key=value)`;
    return [{ key: m[1]!, value: m[2]! }];
  }
  const out: KeyValue[] = [];
  for (const w of words) {
    const eq = w.indexOf('=');
    if (eq < 0) {
      if (kind !== 'ARG') return `${kind}: '${w}' is not key=value`;
      out.push({ key: w, value: undefined });
      continue;
    }
    if (eq === 0) return `${kind}: '${w}' has no key before '='`;
    out.push({ key: w.slice(0, eq), value: w.slice(eq + 1) });
  }
  return out;
}
