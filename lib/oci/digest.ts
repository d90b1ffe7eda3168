/**
 * Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`): computed while
 * streaming, verified at the end of every read.
 * @module
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { DigestMismatchError, InvalidArgumentError } from '../errors';

/** A content digest as OCI writes it: `algorithm:hex`. */
export type Digest = `sha256:${string}` | `sha512:${string}`;

/** Digest algorithms nacelle computes and verifies. */
export type DigestAlgorithm = 'sha256' | 'sha512';

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };

/** Whether `value` is a well-formed digest of a supported algorithm. */
export function isDigest(value: unknown): value is Digest {
  if (typeof value !== 'string') return false;
  const [alg, hex, extra] = value.split(':');
  if (extra !== undefined || !hex) return false;
  const len = HEX_LENGTH[alg as DigestAlgorithm];
  return len !== undefined && hex.length === len && /^[0-9a-f]+$/.test(hex);
}

/**
 * Checks and splits a digest.
 * @throws An {@link InvalidArgumentError} naming what is wrong with it
 */
export function parseDigest(value: string): {
  /** The algorithm, `sha256` or `sha512`. */
  algorithm: DigestAlgorithm;
  /** The hex-encoded hash, lowercase. */
  hex: string;
} {
  if (!isDigest(value)) {
    throw new InvalidArgumentError(`invalid digest '${value}': expected sha256:<64 hex> or sha512:<128 hex>`);
  }
  const [algorithm, hex] = value.split(':') as [DigestAlgorithm, string];
  return { algorithm, hex };
}

/** The digest of bytes in memory. */
export function digestOf(data: Buffer | string, algorithm: DigestAlgorithm = 'sha256'): Digest {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}` as Digest;
}

/**
 * A pass-through stream that digests and counts what flows through it. When
 * `expected` is given, the stream fails at its end with a
 * {@link DigestMismatchError} if the digest or the size differ, so a consumer
 * never sees a successful end of unverified content.
 */
export class DigestStream extends Transform {
  /** The algorithm being computed. */
  readonly algorithm: DigestAlgorithm;
  #hash: Hash;
  #size = 0;
  #digest: Digest | undefined;
  readonly #expected: { digest?: Digest | undefined; size?: number | undefined };

  /**
   * @param expected - the digest and/or size the content must have
   * @param algorithm - the algorithm when no expected digest says it (default sha256)
   */
  constructor(expected: { digest?: Digest | undefined; size?: number | undefined } = {}, algorithm?: DigestAlgorithm) {
    super();
    this.algorithm = expected.digest ? parseDigest(expected.digest).algorithm : (algorithm ?? 'sha256');
    this.#hash = createHash(this.algorithm);
    this.#expected = expected;
  }

  /** Bytes seen so far. */
  get size(): number {
    return this.#size;
  }

  /** The digest, once the stream has ended. */
  get digest(): Digest {
    if (!this.#digest) throw new Error('DigestStream: digest read before the end of the stream');
    return this.#digest;
  }

  /** @internal */
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    if (this.#expected.size !== undefined && this.#size > this.#expected.size) {
      cb(
        new DigestMismatchError(
          `size mismatch for ${this.#expected.digest ?? 'content'}: more than the expected ${this.#expected.size} bytes`,
        ),
      );
      return;
    }
    cb(null, chunk);
  }

  /** @internal */
  override _flush(cb: TransformCallback): void {
    this.#digest = `${this.algorithm}:${this.#hash.digest('hex')}` as Digest;
    const { digest, size } = this.#expected;
    if (size !== undefined && size !== this.#size) {
      cb(new DigestMismatchError(`size mismatch for ${digest ?? this.#digest}: expected ${size} bytes, got ${this.#size}`));
      return;
    }
    if (digest !== undefined && digest !== this.#digest) {
      cb(new DigestMismatchError(`digest mismatch: expected ${digest}, got ${this.#digest} (${this.#size} bytes)`));
      return;
    }
    cb();
  }
}
