/**
 * Turns filesystem entries into a deterministic tar stream and writes it, compressed or not,
 * digesting both the tar (diffID) and the blob.
 * @module
 * @internal
 */
import { constants as fsc, type Stats } from 'node:fs';
import { open, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { Writable } from 'node:stream';
import { InvalidArgumentError } from '../../errors';
import { DigestStream } from '../../oci/digest';
import { encodeHeader, END_OF_ARCHIVE, padLength, type WriteHeader } from './format';
import { LayerError } from './errors';
import { readXattrs, splitRdev } from './common';
import type { PackOptions, PackResult } from './pack';

/** One thing to put in the archive. */
export type PackItem =
  /** An entry copied from the filesystem: `rel` is its in-layer path (no trailing slash). */
  | { kind: 'fs'; rel: string; abs: string; st: Stats }
  /** An empty marker file (`.wh.<name>`, `.wh..wh..opq`) at `rel`. */
  | { kind: 'marker'; rel: string };

/** Data larger than this is streamed in chunks of this size; smaller files are read at once. */
const CHUNK = 1024 * 1024;
/** Small buffers are batched up to this size before they are handed on. */
const BATCH = 256 * 1024;

/** Builds headers from stats, remembering inodes so later links become hardlink entries. */
export class HeaderBuilder {
  readonly #links = new Map<string, string>();

  /** The header for one item, or null for what a layer cannot hold (sockets). */
  build(item: PackItem, linkTarget?: string): WriteHeader | null {
    if (item.kind === 'marker') {
      return { name: item.rel, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0 };
    }
    const { st, rel, abs } = item;
    const base = {
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
      size: 0,
    };
    if (!st.isDirectory() && st.nlink > 1 && !st.isSocket()) {
      const key = `${st.dev}:${st.ino}`;
      const first = this.#links.get(key);
      if (first !== undefined) return { ...base, name: rel, type: 'link', linkname: first };
      this.#links.set(key, rel);
    }
    const xattrs = readXattrs(abs);
    const h = { ...base, name: rel, ...(xattrs.length > 0 ? { xattrs } : {}) };
    if (st.isFile()) return { ...h, type: 'file', size: st.size };
    if (st.isDirectory()) return { ...h, name: `${rel}/`, type: 'dir' };
    if (st.isSymbolicLink()) return { ...h, type: 'symlink', linkname: linkTarget ?? '' };
    if (st.isFIFO()) return { ...h, type: 'fifo' };
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      const { major, minor } = splitRdev(st.rdev);
      return { ...h, type: st.isCharacterDevice() ? 'char' : 'block', devmajor: major, devminor: minor };
    }
    return null; // sockets and anything else a tar cannot hold
  }
}

async function* fileData(abs: string, size: number, rel: string): AsyncGenerator<Buffer> {
  const fh = await open(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    let left = size;
    while (left > 0) {
      const want = Math.min(left, CHUNK);
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, null);
        if (bytesRead === 0) {
          throw new LayerError(`'${abs}' shrank while it was being packed (${size} bytes expected)`, { path: rel });
        }
        got += bytesRead;
      }
      left -= want;
      yield buf;
    }
  } finally {
    await fh.close();
  }
}

/**
 * The tar bytes for `items` (in the order given), ending with the end-of-archive marker.
 * Headers and small files are batched into larger chunks.
 */
export async function* tarChunks(items: AsyncIterable<PackItem>): AsyncGenerator<Buffer> {
  const builder = new HeaderBuilder();
  let batch: Buffer[] = [];
  let batched = 0;
  const take = (): Buffer => {
    const out = batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, batched);
    batch = [];
    batched = 0;
    return out;
  };
  for await (const item of items) {
    const link = item.kind === 'fs' && item.st.isSymbolicLink() ? await readlink(item.abs) : undefined;
    const h = builder.build(item, link);
    if (h === null) continue;
    batch.push(encodeHeader(h));
    batched += batch[batch.length - 1]?.length ?? 0;
    if (h.type === 'file' && h.size > 0 && item.kind === 'fs') {
      if (h.size > BATCH) {
        yield take();
        yield* fileData(item.abs, h.size, item.rel);
      } else {
        for await (const data of fileData(item.abs, h.size, item.rel)) {
          batch.push(data);
          batched += data.length;
        }
      }
      const pad = padLength(h.size);
      if (pad > 0) {
        batch.push(Buffer.alloc(pad));
        batched += pad;
      }
    }
    if (batched >= BATCH) yield take();
  }
  batch.push(END_OF_ARCHIVE);
  batched += END_OF_ARCHIVE.length;
  yield take();
}

/** Checks pack options; returns the gzip level or null for no compression. */
function gzipLevel(options: PackOptions): number | null {
  const compression = options.compression ?? 'gzip';
  if (compression === 'none') return null;
  if (compression !== 'gzip') throw new InvalidArgumentError(`unknown compression '${String(compression)}' (gzip or none)`);
  const level = options.gzipLevel ?? 6;
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    throw new InvalidArgumentError(`gzipLevel must be an integer from 0 to 9, got ${String(level)}`);
  }
  return level;
}

/**
 * Writes the tar produced by `chunks` to `out` (gzip-compressed unless told otherwise) and
 * ends `out`. The gzip header has no name and mtime 0, so the blob is deterministic.
 */
export async function writeLayer(chunks: AsyncIterable<Buffer>, out: Writable, options: PackOptions = {}): Promise<PackResult> {
  const level = gzipLevel(options);
  const diff = new DigestStream();
  const blob = new DigestStream();
  const source = Readable.from(chunks, { objectMode: false, highWaterMark: 1024 * 1024 });
  if (level === null) await pipeline(source, diff, blob, out);
  else await pipeline(source, diff, createGzip({ level, chunkSize: 128 * 1024 }), blob, out);
  return { digest: blob.digest, diffId: diff.digest, size: blob.size };
}
