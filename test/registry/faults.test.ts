/**
 * Bad registries: a proxy in front of docker-registry corrupts, truncates,
 * drops, redirects and replaces answers. Every failure is a clear error,
 * leaves nothing partial in the store, and never loops on a blob.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Image } from '../../lib/image/image';
import { Layer } from '../../lib/image/layer';
import { digestOf } from '../../lib/oci/digest';
import { MEDIA_TYPE_OCI_LAYER_TAR_ZSTD } from '../../lib/oci/mediatypes';
import type { ProgressEvent } from '../../lib/registry/progress';
import { pullImage } from '../../lib/registry/pull';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { type TestProxy, type TestRegistry, startProxy, startRegistry } from './registry';

describeRoot('registry client against a misbehaving registry', () => {
  let dir: string;
  let registry: TestRegistry;
  let proxy: TestProxy;
  let img: Image;
  let big: string; // the largest layer's digest
  let roots = 0;

  /** A runtime with an empty store. */
  async function fresh(): Promise<Runtime> {
    return Runtime.open({ root: join(dir, `root-${roots++}`) });
  }

  /** The store holds no partial blob, no ingest file and no image record. */
  async function expectClean(rt: Runtime, missing: string[] = []): Promise<void> {
    expect(readdirSync(join(rt.store.root, 'ingest'))).toEqual([]);
    expect((await rt.store.readIndex()).manifests).toEqual([]);
    for (const d of missing) expect(await rt.store.has(d as `sha256:${string}`)).toBe(false);
  }

  function blobGets(digest: string) {
    return proxy.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`));
  }

  beforeAll(async () => {
    dir = makeTempDir('registry-faults');
    registry = await startRegistry();
    proxy = await startProxy(registry.url);
    const rt = await Runtime.open({ root: join(dir, 'src-root') });
    const base = await busyboxImage(rt, dir);
    const extra = join(dir, 'extra');
    mkdirSync(extra);
    writeFileSync(join(extra, 'random.bin'), digestOf('seed').repeat(20_000)); // ~1.4 MB, compresses little
    const a = await base.withLayer(await Layer.fromDirectory(extra, { gzipLevel: 0 }), { created: '2024-01-01T00:00:00Z' });
    writeFileSync(join(extra, 'second.txt'), 'second\n');
    img = await a.withLayer(await Layer.fromDirectory(extra, { compression: 'none' }), { created: '2024-01-01T00:00:00Z' });
    big = [...img.layers].sort((x, y) => y.size - x.size)[0]!.digest;
    await rt.images.push(img, `${registry.host}/app:v1`);
  }, 120_000);

  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
    if (dir) removeTempDir(dir);
  });

  it('wrong bytes for a blob: DigestMismatchError, asked once, nothing kept', async () => {
    proxy.requests.length = 0;
    proxy.fault = (req) => (req.method === 'GET' && req.url?.endsWith(big) ? { kind: 'corrupt' } : undefined);
    const rt = await fresh();
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ name: 'DigestMismatchError', code: 'ERR_DIGEST_MISMATCH' });
    expect(blobGets(big).length).toBe(1);
    await expectClean(rt, [big, img.digest]);
  });

  it('a connection dropped mid-blob is resumed with Range', async () => {
    proxy.requests.length = 0;
    const size = img.layers.find((l) => l.digest === big)!.size;
    let cut = false;
    proxy.fault = (req) => {
      if (req.method === 'GET' && req.url?.endsWith(big) && !cut) {
        cut = true;
        return { kind: 'truncate', bytes: Math.floor(size / 2) };
      }
      return undefined;
    };
    const rt = await fresh();
    const events: ProgressEvent[] = [];
    const result = await pullImage(rt.images, `${proxy.host}/app:v1`, { onProgress: (e) => events.push(e) });
    expect(result.image.digest).toBe(img.digest);
    const gets = blobGets(big);
    expect(gets.length).toBe(2);
    expect(gets[0]!.range).toBeUndefined();
    // The resume starts where the client's bytes stopped (at most what the proxy sent before cutting).
    const from = Number(/^bytes=(\d+)-$/.exec(gets[1]!.range ?? '')?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(gets[0]!.bytes);
    expect(gets[1]!.status).toBe(206);
    expect(events.some((e) => e.digest === big && e.status === 'retrying')).toBe(true);
    // Resuming moved each byte once.
    expect(result.bytesTransferred).toBe(img.size + img.manifest.config.size);
  });

  it('a blob that is always cut short fails after a bounded number of attempts', async () => {
    proxy.requests.length = 0;
    proxy.fault = (req) => (req.method === 'GET' && req.url?.endsWith(big) ? { kind: 'truncate', bytes: 100_000 } : undefined);
    const rt = await fresh();
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_INTERRUPTED' });
    expect(blobGets(big).length).toBeLessThanOrEqual(4);
    await expectClean(rt, [big]);
  });

  it('blob 404: NotFoundError naming the blob', async () => {
    proxy.fault = (req) =>
      req.method === 'GET' && req.url?.endsWith(big)
        ? { kind: 'status', status: 404, body: JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] }) }
        : undefined;
    const rt = await fresh();
    const err = await rt.images.pull(`${proxy.host}/app:v1`).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect((err as Error).message).toContain(big);
    expect((err as Error).message).toContain('BLOB_UNKNOWN');
    await expectClean(rt, [big]);
  });

  it('malformed, invalid and oversized manifests are refused', async () => {
    const rt = await fresh();
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'replace', body: Buffer.from('{"schemaVersion": 2, "config": ') } : undefined);
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_INVALID_MANIFEST' });
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'replace', body: Buffer.from('{"schemaVersion":2,"config":{"digest":"nope"},"layers":[]}') } : undefined);
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_INVALID_MANIFEST' });
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'replace', body: Buffer.alloc(5 * 1024 * 1024, 0x20) } : undefined);
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_TOO_LARGE' });
    await expectClean(rt);
  });

  it('a by-digest reference whose content does not match is refused', async () => {
    const other = Buffer.from(JSON.stringify({ ...img.manifest, annotations: { changed: 'yes' } }));
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'replace', body: other } : undefined);
    const rt = await fresh();
    const err = await rt.images.pull(`${proxy.host}/app@${img.digest}`).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_DIGEST_MISMATCH' });
    expect((err as Error).message).toContain(img.digest);
    await expectClean(rt);
  });

  it('zstd layers are refused before any blob moves', async () => {
    proxy.requests.length = 0;
    const zstd = Buffer.from(JSON.stringify({ ...img.manifest, layers: img.manifest.layers.map((l) => ({ ...l, mediaType: MEDIA_TYPE_OCI_LAYER_TAR_ZSTD })) }));
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'replace', body: zstd } : undefined);
    const rt = await fresh();
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED', message: expect.stringContaining('zstd') as unknown as string });
    expect(proxy.requests.filter((r) => r.path.includes('/blobs/')).length).toBe(0);
    await expectClean(rt);
  });

  it('follows redirects of blob downloads, and retries a 503', async () => {
    proxy.requests.length = 0;
    let failed = false;
    proxy.fault = (req) => {
      if (!req.url?.includes('/blobs/') || req.url.startsWith('/_redirect/')) return undefined;
      if (!failed) {
        failed = true;
        return { kind: 'status', status: 503 };
      }
      return { kind: 'redirect' };
    };
    const rt = await fresh();
    const image = await rt.images.pull(`${proxy.host}/app:v1`);
    expect(image.digest).toBe(img.digest);
    expect(proxy.requests.filter((r) => r.path.startsWith('/_redirect/')).length).toBe(img.layers.length + 1);
    expect(proxy.requests.some((r) => r.status === 503)).toBe(true);
  });

  it('refuses a redirect to plain HTTP on a non-loopback host', async () => {
    proxy.fault = (req) =>
      req.url?.includes('/blobs/') ? { kind: 'status', status: 307, headers: { location: 'http://blobs.example.com/blob' } } : undefined;
    const rt = await fresh();
    await expect(rt.images.pull(`${proxy.host}/app:v1`)).rejects.toMatchObject({ code: 'ERR_INSECURE', message: expect.stringContaining('blobs.example.com') as unknown as string });
    await expectClean(rt);
  });

  it('a registry that goes silent times out after bounded retries', async () => {
    proxy.requests.length = 0;
    proxy.fault = (req) => (req.url?.includes('/manifests/') ? { kind: 'delay', ms: 1500 } : undefined);
    const rt = await fresh();
    const t0 = Date.now();
    await expect(rt.images.pull(`${proxy.host}/app:v1`, { timeoutMs: 200, retries: 1 })).rejects.toMatchObject({ name: 'TimeoutError', code: 'ETIMEDOUT' });
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(proxy.requests.filter((r) => r.path.includes('/manifests/')).length).toBe(2);
    await expectClean(rt);
  });

  it('downloads several layers at once', async () => {
    proxy.maxConcurrentBlobGets = 0;
    proxy.fault = (req) => (req.url?.includes('/blobs/') ? { kind: 'delay', ms: 150 } : undefined);
    const rt = await fresh();
    await rt.images.pull(`${proxy.host}/app:v1`, { concurrency: 3 });
    expect(proxy.maxConcurrentBlobGets).toBe(3);
  });

  it('pushes in PATCH chunks when asked to', async () => {
    proxy.fault = undefined;
    proxy.requests.length = 0;
    const rt = await fresh();
    const image = await rt.images.pull(`${registry.host}/app:v1`);
    const result = await rt.images.push(image, `${proxy.host}/chunks:v1`, { chunkSize: 256 * 1024, crossMount: false });
    expect(result.blobsUploaded.length).toBe(img.layers.length + 1);
    const patches = proxy.requests.filter((r) => r.method === 'PATCH');
    const expected = [img.manifest.config, ...img.manifest.layers].filter((d) => d.size > 256 * 1024).reduce((n, d) => n + Math.ceil(d.size / (256 * 1024)), 0);
    expect(patches.length).toBe(expected);
    expect(patches.length).toBeGreaterThan(1);
    const back = await (await fresh()).images.pull(`${registry.host}/chunks:v1`);
    expect(back.digest).toBe(img.digest);
  });
});
