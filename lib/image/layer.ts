/**
 * Layer: one tar blob of an image (gzip or uncompressed), known by the digest
 * of its blob and the digest of its uncompressed tar (the diffID).
 * @module
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, rmSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { DigestMismatchError, NotFoundError, UnsupportedError } from '../errors';
import { type Digest, DigestStream } from '../oci/digest';
import { MEDIA_TYPE_OCI_LAYER_TAR, MEDIA_TYPE_OCI_LAYER_TAR_GZIP } from '../oci/mediatypes';
import type { ContentStore } from '../store/content-store';
import { type ApplyOptions, type ApplyResult, applyLayer } from './tar/apply';
import { type PackOptions, packDirectory } from './tar/pack';

/** Temporary layer files of this process, removed at exit if never stored. */
const temporaryFiles = new Set<string>();
process.once('exit', () => {
  for (const file of temporaryFiles) rmSync(file, { force: true });
});

/** The compression of a layer blob, from its first bytes. */
export async function sniffCompression(path: string): Promise<'gzip' | 'zstd' | 'none'> {
  const h = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await h.read(Buffer.alloc(4), 0, 4, 0);
    if (bytesRead >= 2 && buffer[0] === 0x1f && buffer[1] === 0x8b) return 'gzip';
    if (bytesRead >= 4 && buffer.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'none';
  } finally {
    await h.close();
  }
}

/** Where a layer's blob lives. */
type LayerSource = { kind: 'store'; store: ContentStore } | { kind: 'file'; path: string; temporary: boolean };

/**
 * One layer: a tar of filesystem changes, stored once however many images
 * share it. Create one from a tar file or a directory, then add it to an
 * image with {@link Image.withLayer}.
 */
export class Layer {
  /** Digest of the blob as stored (compressed, when it is). */
  readonly digest: Digest;
  /** Digest of the uncompressed tar: what image configs list in rootfs.diff_ids. */
  readonly diffId: Digest;
  /** Size of the blob in bytes. */
  readonly size: number;
  /** OCI media type of the blob (tar or tar+gzip). */
  readonly mediaType: string;
  #source: LayerSource;

  /** @internal */
  constructor(fields: { digest: Digest; diffId: Digest; size: number; mediaType: string }, source: LayerSource) {
    this.digest = fields.digest;
    this.diffId = fields.diffId;
    this.size = fields.size;
    this.mediaType = fields.mediaType;
    this.#source = source;
  }

  /**
   * A layer from an existing tar or tar.gz file (used in place, not copied
   * until it joins an image). zstd layers are refused.
   */
  static async fromTar(path: string): Promise<Layer> {
    const compression = await sniffCompression(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new NotFoundError(`layer tar ${path} does not exist`, { cause: err });
      throw err;
    });
    if (compression === 'zstd') throw new UnsupportedError(`layer ${path} is zstd-compressed; nacelle reads gzip and plain tar layers`);
    const blob = new DigestStream();
    const diff = new DigestStream();
    if (compression === 'gzip') {
      await pipeline(createReadStream(path), blob, createGunzip(), diff, drain);
    } else {
      await pipeline(createReadStream(path), blob, drain);
    }
    const digest = blob.digest;
    return new Layer(
      {
        digest,
        diffId: compression === 'gzip' ? diff.digest : digest,
        size: blob.size,
        mediaType: compression === 'gzip' ? MEDIA_TYPE_OCI_LAYER_TAR_GZIP : MEDIA_TYPE_OCI_LAYER_TAR,
      },
      { kind: 'file', path, temporary: false },
    );
  }

  /**
   * A gzip layer holding `dir`'s tree (deterministic: the same tree gives the
   * same digest). The tar is written to a temporary file until the layer
   * joins an image.
   */
  static async fromDirectory(dir: string, options: PackOptions = {}): Promise<Layer> {
    const path = join(tmpdir(), `nacelle-layer-${process.pid}-${randomBytes(6).toString('hex')}`);
    temporaryFiles.add(path);
    try {
      const result = await packDirectory(dir, createWriteStream(path, { flags: 'wx' }), options);
      const gzip = (options.compression ?? 'gzip') === 'gzip';
      return new Layer(
        { ...result, mediaType: gzip ? MEDIA_TYPE_OCI_LAYER_TAR_GZIP : MEDIA_TYPE_OCI_LAYER_TAR },
        { kind: 'file', path, temporary: true },
      );
    } catch (err) {
      temporaryFiles.delete(path);
      await rm(path, { force: true });
      throw err;
    }
  }

  /** @internal A layer whose blob is in `store`. */
  static fromStore(store: ContentStore, fields: { digest: Digest; diffId: Digest; size: number; mediaType: string }): Layer {
    return new Layer(fields, { kind: 'store', store });
  }

  /** The blob's bytes (compressed as stored), verified against the digest as they stream. */
  async open(): Promise<Readable> {
    const source = this.#source;
    if (source.kind === 'store') return source.store.openBlob(this.digest, this.size);
    const file = createReadStream(source.path, { highWaterMark: 1 << 20 });
    const verify = new DigestStream({ digest: this.digest, size: this.size });
    file.on('error', (err) => verify.destroy(err));
    return file.pipe(verify);
  }

  /**
   * Unpacks the layer onto `dir`, honouring OCI whiteouts, and checks that the
   * tar's digest is the layer's diffID.
   */
  async apply(dir: string, options: ApplyOptions = {}): Promise<ApplyResult> {
    const blob = await this.open();
    // The blob's own digest is checked when its stream ends; that can be after
    // the tar reader has seen the end of the archive, so listen here and read
    // the stream to its end before trusting the result.
    let blobError: unknown;
    blob.on('error', (err) => {
      blobError ??= err;
    });
    let result: ApplyResult;
    try {
      result = await applyLayer(blob, dir, options);
      if (!blob.readableEnded && !blob.destroyed) {
        blob.resume();
        await finished(blob).catch(() => undefined);
      }
    } catch (err) {
      blob.destroy();
      throw blobError instanceof DigestMismatchError ? blobError : err;
    }
    if (blobError) throw blobError;
    if (result.diffId !== this.diffId) {
      throw new DigestMismatchError(`layer ${this.digest}: its tar has digest ${result.diffId}, expected diffID ${this.diffId}`);
    }
    return result;
  }

  /** @internal Puts the blob into `store` (verified) and makes this layer read from there. */
  async storeIn(store: ContentStore): Promise<void> {
    const source = this.#source;
    if (source.kind === 'store' && source.store === store) return;
    if (source.kind === 'store') {
      await store.writeBlob(await this.open(), { digest: this.digest, size: this.size });
    } else {
      await store.ingestFile(source.path, { digest: this.digest, size: this.size });
      if (source.temporary) {
        temporaryFiles.delete(source.path);
        await rm(source.path, { force: true });
      }
    }
    this.#source = { kind: 'store', store };
  }

  /** @internal The file path of a file-backed layer (for tests and diagnostics). */
  get sourcePath(): string | undefined {
    return this.#source.kind === 'file' ? this.#source.path : undefined;
  }
}

async function drain(source: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of source) {
    // consume
  }
}
