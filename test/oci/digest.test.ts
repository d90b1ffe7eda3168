import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { DigestMismatchError, InvalidArgumentError, NacelleError } from '../../lib/errors';
import { type Digest, DigestStream, digestOf, isDigest, parseDigest } from '../../lib/oci/digest';

const sha256 = (b: Buffer | string): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

/** Deterministic bytes, so failures reproduce. */
function bytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 8)) & 0xff;
  return b;
}

/** Cuts `data` into chunks of the given sizes, cycling through them. */
function chunks(data: Buffer, sizes: number[]): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  for (let off = 0; off < data.length; i++) {
    const n = sizes[i % sizes.length] ?? 1;
    out.push(data.subarray(off, off + n));
    off += n;
  }
  return out;
}

/** Pipes the chunks through `stream`, collecting what comes out. */
async function run(stream: DigestStream, parts: Buffer[]): Promise<Buffer> {
  const got: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      got.push(chunk);
      cb();
    },
  });
  await pipeline(Readable.from(parts, { objectMode: false }), stream, sink);
  return Buffer.concat(got);
}

describe('isDigest / parseDigest / digestOf', () => {
  it('accepts sha256 and sha512 with lowercase hex of the right length', () => {
    expect(isDigest(`sha256:${'a'.repeat(64)}`)).toBe(true);
    expect(isDigest(`sha512:${'0'.repeat(128)}`)).toBe(true);
    expect(isDigest(`sha256:${'A'.repeat(64)}`)).toBe(false);
    expect(isDigest(`sha256:${'a'.repeat(63)}`)).toBe(false);
    expect(isDigest(`md5:${'a'.repeat(32)}`)).toBe(false);
    expect(isDigest('sha256')).toBe(false);
    expect(isDigest(42)).toBe(false);
  });

  it('splits a digest and rejects a bad one with InvalidArgumentError', () => {
    expect(parseDigest(`sha512:${'f'.repeat(128)}`)).toEqual({ algorithm: 'sha512', hex: 'f'.repeat(128) });
    expect(() => parseDigest('sha256:abc')).toThrow(InvalidArgumentError);
  });

  it('digests bytes in memory', () => {
    expect(digestOf('{}')).toBe('sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
    expect(digestOf('', 'sha512')).toBe(`sha512:${createHash('sha512').digest('hex')}`);
  });
});

describe('DigestStream', () => {
  const data = bytes(100_003);
  const digest = sha256(data);

  it('passes content through unchanged and reports digest and size', async () => {
    const s = new DigestStream({ digest, size: data.length });
    const out = await run(s, chunks(data, [4096]));
    expect(out.equals(data)).toBe(true);
    expect(s.digest).toBe(digest);
    expect(s.size).toBe(data.length);
  });

  it('computes a digest with no expectation, in the algorithm asked for', async () => {
    const s = new DigestStream({}, 'sha512');
    await run(s, [data]);
    expect(s.digest).toBe(`sha512:${createHash('sha512').update(data).digest('hex')}`);
  });

  it('takes the algorithm from the expected digest', async () => {
    const d512 = `sha512:${createHash('sha512').update(data).digest('hex')}` as Digest;
    const s = new DigestStream({ digest: d512 });
    expect(s.algorithm).toBe('sha512');
    await run(s, [data]);
    expect(s.digest).toBe(d512);
  });

  it('gives the same digest whatever the chunk sizes', async () => {
    for (const sizes of [[1], [3, 7, 1], [4095, 1, 4097], [65_537], [100_003], [13, 0, 8191]]) {
      const s = new DigestStream({ digest, size: data.length });
      const parts = chunks(data, sizes).filter((c) => c.length > 0);
      const out = await run(s, parts);
      expect(out.equals(data), `chunk sizes ${sizes.join(',')}`).toBe(true);
      expect(s.digest).toBe(digest);
    }
  });

  it('verifies empty content', async () => {
    const s = new DigestStream({ digest: sha256(''), size: 0 });
    await run(s, []);
    expect(s.digest).toBe(sha256(''));
    expect(s.size).toBe(0);
  });

  it('fails at the end with ERR_DIGEST_MISMATCH when the digest differs', async () => {
    const other = sha256('something else');
    const s = new DigestStream({ digest: other, size: data.length });
    const err = await run(s, chunks(data, [1000])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect(err).toBeInstanceOf(NacelleError);
    expect((err as DigestMismatchError).code).toBe('ERR_DIGEST_MISMATCH');
    expect((err as Error).message).toContain(other);
    expect((err as Error).message).toContain(digest);
  });

  it('fails when one byte is flipped, even in odd-sized chunks', async () => {
    const bad = Buffer.from(data);
    bad[77_777] = (bad[77_777] ?? 0) ^ 1;
    const s = new DigestStream({ digest, size: data.length });
    await expect(run(s, chunks(bad, [17, 1, 333]))).rejects.toMatchObject({ code: 'ERR_DIGEST_MISMATCH' });
  });

  it('fails as soon as the content is bigger than the expected size', async () => {
    const s = new DigestStream({ digest, size: data.length - 1 });
    const seen: number[] = [];
    s.on('data', (c: Buffer) => seen.push(c.length));
    const err = await run(s, chunks(data, [4096])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as DigestMismatchError).code).toBe('ERR_DIGEST_MISMATCH');
    expect((err as Error).message).toMatch(/more than the expected 100002 bytes/);
    // the chunk that crossed the limit never reached the consumer
    expect(seen.reduce((a, b) => a + b, 0)).toBeLessThan(data.length);
  });

  it('fails at the end when the content is smaller than the expected size', async () => {
    const s = new DigestStream({ size: data.length + 1 });
    const err = await run(s, chunks(data, [999])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as Error).message).toMatch(/expected 100004 bytes, got 100003/);
  });

  it('checks size alone, and digest alone', async () => {
    await expect(run(new DigestStream({ size: data.length }), [data])).resolves.toHaveLength(data.length);
    await expect(run(new DigestStream({ digest }), chunks(data, [5]))).resolves.toHaveLength(data.length);
  });

  it('throws before streaming when the expected digest is malformed', () => {
    expect(() => new DigestStream({ digest: 'sha256:nope' as Digest })).toThrow(InvalidArgumentError);
  });

  it('refuses to report a digest before the end', () => {
    expect(() => new DigestStream().digest).toThrow(/before the end/);
  });
});
