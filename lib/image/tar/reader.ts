/**
 * Streaming tar reader: pulls uncompressed chunks, hashes every byte (the diffID), and hands
 * out headers and file data as slices of the chunks it got, without copying data.
 * @module
 * @internal
 */
import { createHash, type Hash } from 'node:crypto';
import { BLOCK, decodeHeader, decodePax, padLength, type EntryType } from './format';
import { LayerError } from './errors';
import type { ChunkSource } from './input';

/** How long the JS thread works (system calls included) before it lets the event loop run. */
export const SLICE_MS = 8;

/** The largest PAX or GNU long-name header accepted (xattr values included). */
const MAX_META = 16 * 1024 * 1024;

/** One archive entry, with PAX and GNU extensions applied. */
export interface TarEntry {
  /** The name as written in the archive (PAX `path` or GNU long name when present). */
  name: string;
  /** The entry type. */
  type: EntryType;
  /** Permission and set-id/sticky bits. */
  mode: number;
  /** Owner user id (PAX `uid` when present). */
  uid: number;
  /** Owner group id (PAX `gid` when present). */
  gid: number;
  /** Data bytes that follow (regular files only; 0 otherwise). */
  size: number;
  /** Seconds since the epoch, possibly fractional (PAX `mtime`). */
  mtime: number;
  /** Seconds since the epoch from PAX `atime`, when present. */
  atime: number | undefined;
  /** Symlink target or hardlink target name (PAX `linkpath` or GNU long link when present). */
  linkname: string;
  /** Device major number. */
  devmajor: number;
  /** Device minor number. */
  devminor: number;
  /** `SCHILY.xattr.*` records: attribute name → value. */
  xattrs: Map<string, Buffer> | null;
}

function corrupt(message: string, path?: string, cause?: unknown): LayerError {
  return new LayerError(message, { code: 'ERR_LAYER_CORRUPT', ...(path === undefined ? {} : { path }), cause });
}

/** Pulls chunks from a {@link ChunkSource}, hashing and counting them. */
export class ByteSource {
  readonly #src: ChunkSource;
  readonly #hash: Hash = createHash('sha256');
  #buf: Buffer = Buffer.alloc(0);
  #off = 0;
  #total = 0;
  #eof = false;
  #sliceStart = performance.now();

  /** @param src - the uncompressed tar bytes */
  constructor(src: ChunkSource) {
    this.#src = src;
  }

  /**
   * A promise for a turn of the event loop once the JS thread has worked for
   * {@link SLICE_MS} since the last one; null before that. Waiting for input counts as a turn.
   */
  pace(): Promise<void> | null {
    if (performance.now() - this.#sliceStart < SLICE_MS) return null;
    return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      this.#sliceStart = performance.now();
    });
  }

  /** Bytes pulled so far. */
  get total(): number {
    return this.#total;
  }

  /** The sha256 hex of everything pulled; call once, after {@link drain}. */
  digestHex(): string {
    return this.#hash.digest('hex');
  }

  #take(chunk: Buffer | null): boolean {
    if (chunk === null) {
      this.#eof = true;
      return false;
    }
    this.#hash.update(chunk);
    this.#total += chunk.length;
    this.#buf = chunk;
    this.#off = 0;
    return true;
  }

  /** Makes the next chunk current; false at the end of input. Synchronous when a chunk is ready. */
  #fill(): boolean | Promise<boolean> {
    if (this.#eof) return false;
    const r = this.#src.next();
    if (r instanceof Promise) {
      return r.then((c) => {
        this.#sliceStart = performance.now();
        return this.#take(c);
      });
    }
    return this.#take(r);
  }

  /** Exactly `n` bytes (a slice of the current chunk when it holds them), or null at a clean end. */
  async read(n: number, what: string): Promise<Buffer | null> {
    if (this.#buf.length - this.#off >= n) {
      const out = this.#buf.subarray(this.#off, this.#off + n);
      this.#off += n;
      return out;
    }
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      if (this.#off >= this.#buf.length) {
        let more = this.#fill();
        if (typeof more !== 'boolean') more = await more;
        if (!more) {
          if (have === 0) return null;
          throw corrupt(`truncated tar archive: unexpected end of data in ${what}`);
        }
      }
      const take = Math.min(n - have, this.#buf.length - this.#off);
      parts.push(this.#buf.subarray(this.#off, this.#off + take));
      this.#off += take;
      have += take;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
  }

  /**
   * Hands `n` bytes to `sink` in slices as they arrive (null: skips them); the slices stay
   * valid after the call.
   * @throws {@link LayerError} `ERR_LAYER_CORRUPT` when the input ends first
   */
  async pipe(n: number, what: string, sink: ((data: Buffer) => void | Promise<void>) | null): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.#off >= this.#buf.length) {
        let more = this.#fill();
        if (typeof more !== 'boolean') more = await more;
        if (!more) throw corrupt(`truncated tar archive: unexpected end of data in '${what}'`, what);
      }
      const take = Math.min(left, this.#buf.length - this.#off);
      if (sink) {
        const done = sink(this.#buf.subarray(this.#off, this.#off + take));
        if (done) await done;
      }
      this.#off += take;
      left -= take;
      const pause = left > 0 ? this.pace() : null;
      if (pause) await pause;
    }
  }

  /** Pulls (and hashes) whatever is left. */
  async drain(): Promise<void> {
    this.#off = this.#buf.length;
    for (;;) {
      let more = this.#fill();
      if (typeof more !== 'boolean') more = await more;
      if (!more) return;
      this.#off = this.#buf.length;
    }
  }
}

/** Reads entries one at a time; the caller reads or skips each entry's data before the next. */
export class TarReader {
  readonly #src: ByteSource;
  #pending = 0; // data + padding of the current entry not yet consumed
  #current: TarEntry | null = null;
  #global: Map<string, Buffer> | null = null;
  #ended = false;

  /** @param src - the uncompressed archive */
  constructor(src: ByteSource) {
    this.#src = src;
  }

  /** The next entry, or null after the end-of-archive marker. */
  async next(): Promise<TarEntry | null> {
    if (this.#ended) return null;
    if (this.#pending > 0) await this.#src.pipe(this.#pending, this.#current?.name ?? 'archive', null);
    this.#pending = 0;
    this.#current = null;
    let pax: Map<string, Buffer> | null = null;
    let longName: string | null = null;
    let longLink: string | null = null;
    for (;;) {
      const block = await this.#src.read(BLOCK, 'a tar header');
      if (block === null) {
        throw corrupt('truncated tar archive: the input ended without the end-of-archive marker');
      }
      const h = decodeHeader(block);
      if (h === null) {
        if (pax || longName !== null || longLink !== null) throw corrupt('truncated tar archive: extended header without its entry');
        this.#ended = true;
        return null;
      }
      if (h.type === 'pax' || h.type === 'pax-global' || h.type === 'gnu-longname' || h.type === 'gnu-longlink') {
        if (h.size > MAX_META) throw corrupt(`tar extended header of ${h.size} bytes is larger than ${MAX_META}`);
        const data = await this.#src.read(h.size, 'an extended header');
        if (data === null && h.size > 0) throw corrupt('truncated tar archive in an extended header');
        await this.#src.pipe(padLength(h.size), 'an extended header', null);
        const body = data ?? Buffer.alloc(0);
        if (h.type === 'pax') decodePax(body, (pax ??= new Map()));
        else if (h.type === 'pax-global') decodePax(body, (this.#global ??= new Map()));
        else {
          let end = body.length;
          while (end > 0 && body[end - 1] === 0) end--;
          const s = body.toString('utf8', 0, end);
          if (h.type === 'gnu-longname') longName = s;
          else longLink = s;
        }
        continue;
      }
      let name = longName ?? h.name;
      let linkname = longLink ?? h.linkname;
      let { size, uid, gid, mtime } = h;
      let atime: number | undefined;
      let xattrs: Map<string, Buffer> | null = null;
      const records = this.#global && pax ? new Map([...this.#global, ...pax]) : (pax ?? this.#global);
      if (records) {
        for (const [key, value] of records) {
          if (value.length === 0) continue; // an empty local record cancels a global one
          const str = (): string => value.toString('utf8');
          const num = (): number => {
            const n = Number(str());
            if (!Number.isFinite(n)) throw corrupt(`invalid PAX ${key} record for '${name}'`, name);
            return n;
          };
          if (key === 'path' && pax?.has(key)) name = str();
          else if (key === 'linkpath' && pax?.has(key)) linkname = str();
          else if (key === 'size') size = num();
          else if (key === 'uid') uid = num();
          else if (key === 'gid') gid = num();
          else if (key === 'mtime') mtime = num();
          else if (key === 'atime') atime = num();
          else if (key.startsWith('SCHILY.xattr.')) (xattrs ??= new Map()).set(key.slice(13), Buffer.from(value));
          else if (key.startsWith('GNU.sparse.')) {
            throw new LayerError(`'${name}' is a GNU sparse file, which nacelle does not apply`, { path: name });
          }
        }
      }
      if (h.type === 'unsupported') {
        throw new LayerError(`'${name}' has tar entry type '${String.fromCharCode(h.typeflag)}', which nacelle does not apply`, {
          path: name,
        });
      }
      if (!Number.isSafeInteger(size) || size < 0) throw corrupt(`invalid size for '${name}'`, name);
      const type = h.type;
      // only regular files carry data; other types may still declare a size, which is skipped
      const entry: TarEntry = {
        name,
        type,
        mode: h.mode,
        uid,
        gid,
        size: type === 'file' ? size : 0,
        mtime,
        atime,
        linkname,
        devmajor: h.devmajor,
        devminor: h.devminor,
        xattrs,
      };
      this.#current = entry;
      this.#pending = size + padLength(size);
      return entry;
    }
  }

  /** Hands the current entry's data to `sink` in slices; then skips the padding. */
  async readData(sink: (data: Buffer) => void | Promise<void>): Promise<void> {
    const entry = this.#current;
    if (!entry) throw new Error('TarReader.readData without a current entry');
    await this.#src.pipe(entry.size, entry.name, sink);
    this.#pending -= entry.size;
    await this.#src.pipe(this.#pending, entry.name, null);
    this.#pending = 0;
  }
}
