/**
 * The content store: an OCI image layout on disk (oci-layout, index.json,
 * blobs/sha256/…) that is the single source of truth for blobs and tags.
 *
 * Every blob is written to `ingest/` under a temporary name while its digest
 * is computed, fsync'd, and renamed into `blobs/` only when it matches what
 * was expected; every read is verified against the digest as it streams.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestMismatchError, NacelleError, NotFoundError } from '../errors';
import { type Digest, DigestStream, isDigest, parseDigest } from '../oci/digest';
import type { Descriptor, ImageIndex } from '../oci/types';
import { fsyncDir, writeFileAtomic } from './atomic';
import { FileLock } from './lock';

/** The size beyond which a JSON document (manifest, index, config) is refused. */
export const MAX_JSON_BLOB = 4 * 1024 * 1024;

/** What a blob write should produce; a mismatch removes the partial blob. */
export interface ExpectedContent {
  /** The digest the content must have. */
  digest?: Digest | undefined;
  /** The size in bytes the content must have. */
  size?: number | undefined;
}

/** A blob that is in the store. */
export interface StoredBlob {
  /** Its digest. */
  digest: Digest;
  /** Its size in bytes. */
  size: number;
}

const INDEX_MEDIA_TYPE = 'application/vnd.oci.image.index.v1+json';

/** A content-addressed blob store in OCI image layout form, safe for several processes. */
export class ContentStore {
  /** The layout's directory. */
  readonly root: string;
  /** Held shared by writers (blob → index update) and exclusively by garbage collection. */
  readonly gcLock: FileLock;
  readonly #indexLock: FileLock;

  private constructor(root: string) {
    this.root = root;
    this.gcLock = new FileLock(join(root, 'gc.lock'));
    this.#indexLock = new FileLock(join(root, 'index.lock'));
  }

  /** Opens the store at `root`, creating an empty OCI layout there if needed. */
  static async open(root: string): Promise<ContentStore> {
    await mkdir(join(root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(root, 'blobs', 'sha512'), { recursive: true });
    await mkdir(join(root, 'ingest'), { recursive: true });
    const store = new ContentStore(root);
    await store.#indexLock.with('exclusive', async () => {
      if (!(await exists(join(root, 'oci-layout')))) {
        await writeFileAtomic(join(root, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      }
      if (!(await exists(join(root, 'index.json')))) {
        await writeFileAtomic(join(root, 'index.json'), JSON.stringify(emptyIndex()));
      }
    });
    return store;
  }

  /** The path of a blob in the layout (whether or not it exists). */
  blobPath(digest: Digest): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.root, 'blobs', algorithm, hex);
  }

  /** The blob's size, or undefined when the store lacks it. */
  async size(digest: Digest): Promise<number | undefined> {
    try {
      return (await stat(this.blobPath(digest))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Whether the store has the blob. */
  async has(digest: Digest): Promise<boolean> {
    return (await this.size(digest)) !== undefined;
  }

  /**
   * A stream of the blob's bytes that fails with a {@link DigestMismatchError}
   * at its end if the bytes on disk no longer match the digest (or `size`).
   * @throws {@link NotFoundError} when the store lacks the blob
   */
  async openBlob(digest: Digest, size?: number): Promise<Readable> {
    const path = this.blobPath(digest);
    const handle = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new NotFoundError(`blob ${digest} is not in the store ${this.root}`, { cause: err });
      throw err;
    });
    const file = handle.createReadStream({ highWaterMark: 1 << 20 });
    const verify = new DigestStream({ digest, size });
    file.on('error', (err) => verify.destroy(err));
    return file.pipe(verify);
  }

  /** The whole blob in memory, verified. Refuses blobs larger than `maxSize`. */
  async readBlob(digest: Digest, maxSize = MAX_JSON_BLOB): Promise<Buffer> {
    const size = await this.size(digest);
    if (size === undefined) throw new NotFoundError(`blob ${digest} is not in the store ${this.root}`);
    if (size > maxSize) {
      throw new NacelleError(`blob ${digest} is ${size} bytes, more than the ${maxSize} allowed here`, { code: 'ERR_TOO_LARGE' });
    }
    const data = await readFile(this.blobPath(digest));
    const verify = new DigestStream({ digest, size });
    await pipeline(Readable.from([data]), verify, async function* (source) {
      for await (const _ of source) {
        // drain
      }
    });
    return data;
  }

  /** A blob parsed as JSON (manifests, indexes, configs), verified and size-capped. */
  async readJson(digest: Digest, maxSize = MAX_JSON_BLOB): Promise<unknown> {
    const data = await this.readBlob(digest, maxSize);
    try {
      return JSON.parse(data.toString('utf8')) as unknown;
    } catch (err) {
      throw new NacelleError(`blob ${digest} is not valid JSON: ${(err as Error).message}`, { code: 'ERR_INVALID_MANIFEST', cause: err });
    }
  }

  /**
   * Writes a blob from a stream or buffer. The content goes to `ingest/`
   * first and is renamed into place only if it matches `expected`; on any
   * failure nothing partial is left. Writing a blob the store already has is
   * cheap when `expected.digest` is given (the source is not read).
   */
  async writeBlob(source: Readable | Buffer | string, expected: ExpectedContent = {}): Promise<StoredBlob> {
    if (expected.digest !== undefined) {
      const have = await this.size(expected.digest);
      if (have !== undefined && (expected.size === undefined || expected.size === have)) {
        if (source instanceof Readable) source.destroy();
        return { digest: expected.digest, size: have };
      }
    }
    const tmp = join(this.root, 'ingest', `${process.pid}-${randomBytes(8).toString('hex')}`);
    const verify = new DigestStream(expected);
    const input = typeof source === 'string' || Buffer.isBuffer(source) ? Readable.from([Buffer.from(source)]) : source;
    const out = createWriteStream(tmp, { flags: 'wx', flush: true });
    try {
      await pipeline(input, verify, out);
      const digest = verify.digest;
      await rename(tmp, this.blobPath(digest));
      await fsyncDir(join(this.root, 'blobs', verify.algorithm));
      return { digest, size: verify.size };
    } catch (err) {
      // A source that fails at once fails the pipeline before the file is even
      // open: the open still completes (and creates it) unless we wait for close.
      if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
      await rm(tmp, { force: true });
      if (err instanceof DigestMismatchError) throw err;
      throw err;
    }
  }

  /** Copies a file into the store, verified against `expected`. */
  async ingestFile(path: string, expected: ExpectedContent = {}): Promise<StoredBlob> {
    return this.writeBlob(createReadStream(path, { highWaterMark: 1 << 20 }), expected);
  }

  /** Removes a blob; returns its size, or 0 if it was not there. */
  async deleteBlob(digest: Digest): Promise<number> {
    const size = (await this.size(digest)) ?? 0;
    await rm(this.blobPath(digest), { force: true });
    return size;
  }

  /** Every blob in the store. */
  async listBlobs(): Promise<StoredBlob[]> {
    const blobs: StoredBlob[] = [];
    for (const algorithm of ['sha256', 'sha512']) {
      const dir = join(this.root, 'blobs', algorithm);
      for (const hex of await readdir(dir).catch(() => [] as string[])) {
        const digest = `${algorithm}:${hex}`;
        if (!isDigest(digest)) continue; // not ours
        blobs.push({ digest, size: (await stat(join(dir, hex))).size });
      }
    }
    return blobs;
  }

  /** Removes ingest files left by writers that died (called under the exclusive gc lock). */
  async clearIngest(): Promise<number> {
    const dir = join(this.root, 'ingest');
    let bytes = 0;
    for (const name of await readdir(dir)) {
      bytes += (await stat(join(dir, name)).catch(() => ({ size: 0 }))).size;
      await rm(join(dir, name), { force: true, recursive: true });
    }
    return bytes;
  }

  /** The layout's index.json. */
  async readIndex(): Promise<ImageIndex> {
    const text = await readFile(join(this.root, 'index.json'), 'utf8');
    const parsed = JSON.parse(text) as ImageIndex;
    parsed.manifests ??= [];
    return parsed;
  }

  /**
   * Read-modify-write of index.json under an exclusive lock (across
   * processes), written atomically.
   */
  async updateIndex<T>(fn: (manifests: Descriptor[]) => { manifests: Descriptor[]; result: T }): Promise<T> {
    return this.#indexLock.with('exclusive', async () => {
      const index = await this.readIndex();
      const { manifests, result } = fn(index.manifests);
      await writeFileAtomic(join(this.root, 'index.json'), JSON.stringify({ ...index, manifests }));
      return result;
    });
  }
}

function emptyIndex(): ImageIndex {
  return { schemaVersion: 2, mediaType: INDEX_MEDIA_TYPE, manifests: [] } as ImageIndex;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
