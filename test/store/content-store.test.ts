import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DigestMismatchError, NotFoundError } from '../../lib/errors';
import { digestOf } from '../../lib/oci/digest';
import { ContentStore } from '../../lib/store/content-store';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

describe('ContentStore', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('store');
  });
  afterEach(() => removeTempDir(dir));

  it('is an OCI image layout from the start', async () => {
    await ContentStore.open(dir);
    expect(JSON.parse(readFileSync(join(dir, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });
    expect(JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'))).toMatchObject({ schemaVersion: 2, manifests: [] });
  });

  it('writes blobs by digest, reads them back verified, and refuses wrong content without leaving anything', async () => {
    const store = await ContentStore.open(dir);
    const data = Buffer.from('hello layers');
    const blob = await store.writeBlob(Readable.from([data.subarray(0, 3), data.subarray(3)]));
    expect(blob).toEqual({ digest: digestOf(data), size: data.length });
    expect((await store.readBlob(blob.digest)).toString()).toBe('hello layers');

    const wrong = await store.writeBlob(Buffer.from('other'), { digest: digestOf('expected') }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(DigestMismatchError);
    const short = await store.writeBlob(Buffer.from('abc'), { size: 4 }).catch((e: unknown) => e);
    expect(short).toMatchObject({ code: 'ERR_DIGEST_MISMATCH' });
    const long = await store.writeBlob(Buffer.from('abcde'), { size: 4 }).catch((e: unknown) => e);
    expect(long).toMatchObject({ code: 'ERR_DIGEST_MISMATCH' });
    expect(readdirSync(join(dir, 'ingest'))).toEqual([]);
    expect(readdirSync(join(dir, 'blobs/sha256'))).toEqual([blob.digest.slice(7)]);
  });

  it('detects a blob corrupted on disk when it is read', async () => {
    const store = await ContentStore.open(dir);
    const blob = await store.writeBlob(Buffer.from('{"a":1}'));
    writeFileSync(store.blobPath(blob.digest), '{"a":2}');
    await expect(store.readBlob(blob.digest)).rejects.toBeInstanceOf(DigestMismatchError);
    const stream = await store.openBlob(blob.digest);
    await expect((async () => { for await (const _ of stream) { /* read */ } })()).rejects.toMatchObject({ code: 'ERR_DIGEST_MISMATCH' });
    await expect(store.readBlob(digestOf('absent'))).rejects.toBeInstanceOf(NotFoundError);
  });

  it('serializes index updates across independent handles (flock) without losing any', async () => {
    const a = await ContentStore.open(dir);
    const b = await ContentStore.open(dir);
    const updates = Array.from({ length: 40 }, (_, i) =>
      (i % 2 ? a : b).updateIndex((manifests) => ({
        manifests: [...manifests, { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digestOf(String(i)), size: i }],
        result: undefined,
      })),
    );
    await Promise.all(updates);
    expect((await a.readIndex()).manifests).toHaveLength(40);
  });
});
