/**
 * Layer input: takes chunks from a stream without copying them (flowing mode with
 * pause/resume for backpressure, where an async iterator would concatenate what is
 * buffered), tells gzip from plain tar by magic bytes, and refuses other compressions.
 * @module
 * @internal
 */
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { InvalidArgumentError, UnsupportedError } from '../../errors';
import { LayerError } from './errors';

/** Chunks on demand: a chunk when one is ready, a promise otherwise, null at the end. */
export interface ChunkSource {
  /** The next chunk, now or later; null at the end; throws the stream's error. */
  next(): Buffer | null | Promise<Buffer | null>;
}

/** How much a queue holds before it pauses its stream. */
const QUEUE_LIMIT = 4 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);
/** Small compressed chunks are joined up to this size before they go to zlib. */
const COALESCE = 64 * 1024;

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  throw new InvalidArgumentError('applyLayer: the input stream must yield bytes');
}

/** The chunks a stream emits, queued up to a limit. */
export class StreamQueue implements ChunkSource {
  readonly #stream: Readable;
  #queue: Buffer[] = [];
  #head = 0;
  #bytes = 0;
  #ended = false;
  #failed = false;
  #error: unknown;
  #waiter: (() => void) | null = null;

  /** @param stream - read in flowing mode from now on */
  constructor(stream: Readable) {
    this.#stream = stream;
    // The stream may have failed or ended before anyone listened (a blob whose
    // digest check failed while the target directory was being looked at):
    // its events are gone, so take its state as it is now.
    if (stream.errored) this.#fail(stream.errored);
    else if (stream.readableEnded) this.#ended = true;
    else if (stream.destroyed) this.#fail(new LayerError('the layer stream was closed before it was read', { code: 'ERR_LAYER_CORRUPT' }));
    stream.on('data', (chunk: unknown) => {
      try {
        const b = toBuffer(chunk);
        this.#queue.push(b);
        this.#bytes += b.length;
        if (this.#bytes >= QUEUE_LIMIT) stream.pause();
      } catch (err) {
        this.#fail(err);
      }
      this.#wake();
    });
    stream.on('end', () => {
      this.#ended = true;
      this.#wake();
    });
    stream.on('error', (err) => this.#fail(err));
    stream.on('close', () => {
      if (!this.#ended) this.#fail(new LayerError('the layer stream closed before its end', { code: 'ERR_LAYER_CORRUPT' }));
    });
  }

  #fail(err: unknown): void {
    if (!this.#failed) {
      this.#failed = true;
      this.#error = err;
    }
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  /** The next chunk: from the queue when one is there, else once the stream emits one. */
  next(): Buffer | null | Promise<Buffer | null> {
    if (this.#head < this.#queue.length) {
      const b = this.#queue[this.#head] as Buffer;
      this.#queue[this.#head++] = EMPTY;
      if (this.#head === this.#queue.length) {
        this.#queue = [];
        this.#head = 0;
      }
      this.#bytes -= b.length;
      if (this.#bytes < QUEUE_LIMIT / 2 && this.#stream.isPaused() && !this.#ended) this.#stream.resume();
      return b;
    }
    if (this.#failed) throw this.#error;
    if (this.#ended) return null;
    if (this.#stream.isPaused()) this.#stream.resume();
    return new Promise<void>((resolve) => {
      this.#waiter = resolve;
    }).then(() => this.next());
  }
}

/** A source that hands out `head` first, then what `rest` has. */
class Prefixed implements ChunkSource {
  readonly #head: Buffer[];
  readonly #rest: ChunkSource | null;
  constructor(head: Buffer[], rest: ChunkSource | null) {
    this.#head = head;
    this.#rest = rest;
  }
  next(): Buffer | null | Promise<Buffer | null> {
    const b = this.#head.shift();
    if (b !== undefined) return b;
    return this.#rest ? this.#rest.next() : null;
  }
}

/** What {@link openLayer} gives: the uncompressed tar and a way to stop everything. */
export interface LayerInput {
  /** The uncompressed tar. */
  source: ChunkSource;
  /** Stops reading: destroys the input (and the gunzip stream). */
  close(): void;
}

function startsWith(b: Buffer, bytes: readonly number[]): boolean {
  return b.length >= bytes.length && bytes.every((x, i) => b[i] === x);
}

/**
 * The uncompressed tar of a layer stream: gzip is decompressed (told apart by its magic
 * bytes), plain tar passes through.
 * @throws {@link UnsupportedError} for zstd, xz and bzip2
 */
export async function openLayer(input: Readable): Promise<LayerInput> {
  const raw = new StreamQueue(input);
  const head: Buffer[] = [];
  let have = 0;
  let ended = false;
  while (have < 10) {
    let c = raw.next();
    if (c instanceof Promise) c = await c;
    if (c === null) {
      ended = true;
      break;
    }
    head.push(c);
    have += c.length;
  }
  const first = Buffer.concat(head, Math.min(have, 16));
  const closeInput = (): void => {
    if (!input.destroyed) input.destroy();
  };
  const refuse = (what: string): never => {
    closeInput();
    throw new UnsupportedError(`${what}-compressed layers are not supported (gzip and plain tar are)`);
  };
  if (startsWith(first, [0x28, 0xb5, 0x2f, 0xfd])) refuse('zstd');
  if (startsWith(first, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) refuse('xz');
  if (startsWith(first, [0x42, 0x5a, 0x68]) && first.toString('latin1', 4, 10) === '1AY&SY') refuse('bzip2');
  const prefixed = new Prefixed(head, ended ? null : raw);
  if (!startsWith(first, [0x1f, 0x8b])) return { source: prefixed, close: closeInput };

  const gunzip = createGunzip({ chunkSize: 256 * 1024 });
  const out = new StreamQueue(gunzip);
  const pump = async (): Promise<void> => {
    try {
      let peeked: Buffer | null | Promise<Buffer | null> | undefined;
      for (;;) {
        let c = peeked !== undefined ? peeked : prefixed.next();
        peeked = undefined;
        if (c instanceof Promise) c = await c;
        if (c === null) break;
        if (c.length < COALESCE) {
          // many small chunks: one zlib call for what is already there
          const parts = [c];
          let size = c.length;
          while (size < COALESCE) {
            const d = prefixed.next();
            if (d === null || d instanceof Promise) {
              peeked = d;
              break;
            }
            parts.push(d);
            size += d.length;
          }
          if (parts.length > 1) c = Buffer.concat(parts, size);
        }
        if (gunzip.destroyed) return;
        if (!gunzip.write(c)) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              gunzip.off('drain', done);
              gunzip.off('close', done);
              resolve();
            };
            gunzip.on('drain', done);
            gunzip.on('close', done);
          });
        }
      }
      if (!gunzip.destroyed) gunzip.end();
    } catch (err) {
      gunzip.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  };
  void pump();
  return {
    source: out,
    close: () => {
      if (!gunzip.destroyed) gunzip.destroy();
      closeInput();
    },
  };
}
