/**
 * Push: every blob of an image the registry lacks (checked with HEAD), by a
 * cross-repository mount when the blob is known in another repository of the
 * same registry, else by a monolithic or chunked upload; then the manifest's
 * exact bytes, by tag or by digest.
 * @module
 */
import { createReadStream } from 'node:fs';
import { type Readable, Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DigestMismatchError, InvalidArgumentError, NacelleError } from '../errors';
import type { Image } from '../image/image';
import type { ImageService } from '../image/images';
import type { Digest } from '../oci/digest';
import { MEDIA_TYPE_OCI_MANIFEST } from '../oci/mediatypes';
import { parseReference } from '../oci/reference';
import type { Descriptor } from '../oci/types';
import { RegistryClient, type RegistryClientOptions, isTransient } from './client';
import { RegistryError } from './errors';
import { type ProgressHandler, type ProgressKind, report } from './progress';
import { knownBlobLocations, rememberBlobLocation, runPool } from './transfer';

/** How to push. */
export interface PushOptions extends RegistryClientOptions {
  /** Called as blobs are checked, mounted and uploaded. */
  onProgress?: ProgressHandler;
  /** How many blobs upload at once. Default 3. */
  concurrency?: number;
  /**
   * Upload blobs larger than this many bytes in PATCH chunks of this size
   * (the spec's chunked upload). Default: one monolithic PUT per blob.
   */
  chunkSize?: number;
  /**
   * Repositories of the same registry that may hold the image's blobs, tried
   * for a cross-repository mount before uploading. Repositories the image was
   * pulled from or pushed to (its tags on that registry, and transfers made
   * by this process) are tried as well.
   */
  mountFrom?: readonly string[];
  /** Try cross-repository mounts at all. Default true. */
  crossMount?: boolean;
}

/** What a push did. */
export interface PushResult {
  /** The digest of the pushed manifest (what a by-digest pull asks for). */
  digest: Digest;
  /** The reference pushed, normalized (`127.0.0.1:5000/app:v1`). */
  reference: string;
  /** Blob bytes uploaded; 0 when the registry had every blob. */
  bytesTransferred: number;
  /** Blobs uploaded. */
  blobsUploaded: Digest[];
  /** Blobs linked from another repository without moving bytes. */
  blobsMounted: Digest[];
  /** Blobs the repository already had. */
  blobsPresent: Digest[];
}

interface PushContext {
  service: ImageService;
  client: RegistryClient;
  repository: string;
  scopes: string[];
  what: string;
  options: PushOptions;
  candidates: string[];
  transferred: number;
}

/**
 * Pushes an image (or the image a local reference names) to `ref`
 * (`127.0.0.1:5000/app:v1`, or `…@sha256:…` to push by digest).
 * @throws {@link InvalidArgumentError} when `ref` pins a digest other than the image's;
 *   {@link RegistryError} for refusals (auth, quota, invalid manifest) and broken uploads
 */
export async function pushImage(service: ImageService, imageOrRef: Image | string, refString: string, options: PushOptions = {}): Promise<PushResult> {
  const image = await service.get(imageOrRef);
  const ref = parseReference(refString);
  const what = `push ${ref.toString()}`;
  if (ref.digest && ref.digest !== image.digest) {
    throw new InvalidArgumentError(`${what}: the reference pins ${ref.digest}, but the image's manifest is ${image.digest}`);
  }
  if (options.chunkSize !== undefined && (!Number.isSafeInteger(options.chunkSize) || options.chunkSize < 1)) {
    throw new InvalidArgumentError(`${what}: chunkSize must be a positive integer, got ${options.chunkSize}`);
  }
  const manifestBytes = await service.store.readBlob(image.digest);
  const candidates = new Set<string>(options.mountFrom ?? []);
  for (const tag of image.tags) {
    const t = parseReference(tag);
    if (t.registry === ref.registry) candidates.add(t.repository);
  }
  candidates.delete(ref.repository);

  const client = await RegistryClient.open(ref.registry, options);
  try {
    const ctx: PushContext = {
      service,
      client,
      repository: ref.repository,
      scopes: [`repository:${ref.repository}:pull,push`],
      what,
      options,
      candidates: [...candidates],
      transferred: 0,
    };
    const uploaded: Digest[] = [];
    const mounted: Digest[] = [];
    const present: Digest[] = [];
    const blobs: [Descriptor, ProgressKind][] = [[image.manifest.config, 'config']];
    const seen = new Set<Digest>([image.manifest.config.digest]);
    for (const layer of image.manifest.layers) {
      if (seen.has(layer.digest)) continue;
      seen.add(layer.digest);
      blobs.push([layer, 'layer']);
    }
    await runPool(blobs, Math.max(1, options.concurrency ?? 3), async ([d, kind], signal) => {
      const outcome = await pushBlob(ctx, d, kind, signal);
      (outcome === 'uploaded' ? uploaded : outcome === 'mounted' ? mounted : present).push(d.digest);
      rememberBlobLocation(ref.registry, ref.repository, d.digest);
    });

    const target = ref.tag ?? ref.digest ?? 'latest';
    const mediaType = image.manifest.mediaType ?? MEDIA_TYPE_OCI_MANIFEST;
    const res = await client.request({
      method: 'PUT',
      url: `/v2/${ref.repository}/manifests/${target}`,
      scopes: ctx.scopes,
      what: `${what}: manifest`,
      expect: [201, 200],
      headers: { 'content-type': mediaType, 'content-length': String(manifestBytes.length) },
      body: manifestBytes,
    });
    res.body.resume();
    const announced = res.headers['docker-content-digest'];
    if (typeof announced === 'string' && announced !== image.digest && announced.startsWith('sha256:') && image.digest.startsWith('sha256:')) {
      throw new DigestMismatchError(`${what}: the registry stored the manifest as ${announced}, expected ${image.digest}`);
    }
    report(options.onProgress, { operation: 'push', kind: 'manifest', digest: image.digest, status: 'done', done: manifestBytes.length, total: manifestBytes.length, transferred: ctx.transferred });
    return { digest: image.digest, reference: ref.toString(), bytesTransferred: ctx.transferred, blobsUploaded: uploaded, blobsMounted: mounted, blobsPresent: present };
  } finally {
    client.close();
  }
}

async function pushBlob(ctx: PushContext, d: Descriptor, kind: ProgressKind, signal: AbortSignal): Promise<'exists' | 'mounted' | 'uploaded'> {
  const { client, options } = ctx;
  const base = { operation: 'push' as const, kind, digest: d.digest, total: d.size };
  const what = `${ctx.what}: ${kind} ${d.digest}`;
  const head = await client.request({ method: 'HEAD', url: `/v2/${ctx.repository}/blobs/${d.digest}`, scopes: ctx.scopes, what, expect: [200, 404] });
  head.body.resume();
  if (head.status === 200) {
    report(options.onProgress, { ...base, status: 'exists', done: d.size, transferred: ctx.transferred });
    return 'exists';
  }
  const retries = options.retries ?? 3;
  for (let attempt = 0; ; attempt++) {
    signal.throwIfAborted();
    try {
      let location: URL | undefined;
      const known = knownBlobLocations(ctx.client.registry, d.digest);
      const sources = options.crossMount === false ? [] : [...new Set([...ctx.candidates, ...known])].filter((r) => r !== ctx.repository).slice(0, 4);
      for (const from of sources) {
        const res = await client.request({
          method: 'POST',
          url: `/v2/${ctx.repository}/blobs/uploads/?mount=${encodeURIComponent(d.digest)}&from=${encodeURIComponent(from)}`,
          scopes: [...ctx.scopes, `repository:${from}:pull`],
          what: `${what}: mount from ${from}`,
          expect: [201, 202],
          headers: { 'content-length': '0' },
        });
        res.body.resume();
        if (res.status === 201) {
          report(options.onProgress, { ...base, status: 'mounted', done: d.size, transferred: ctx.transferred });
          return 'mounted';
        }
        location = uploadLocation(res.headers.location, res.url, what);
        break;
      }
      if (!location) {
        const res = await client.request({
          method: 'POST',
          url: `/v2/${ctx.repository}/blobs/uploads/`,
          scopes: ctx.scopes,
          what: `${what}: start upload`,
          expect: [202],
          headers: { 'content-length': '0' },
        });
        res.body.resume();
        location = uploadLocation(res.headers.location, res.url, what);
      }
      await upload(ctx, d, location, base, what, signal);
      report(options.onProgress, { ...base, status: 'done', done: d.size, transferred: ctx.transferred });
      return 'uploaded';
    } catch (err) {
      signal.throwIfAborted();
      if (attempt >= retries || !isTransient(err) || (err instanceof NacelleError && !isTransient(err))) throw err;
      report(options.onProgress, { ...base, status: 'retrying', done: 0, transferred: ctx.transferred });
      await sleep(100 * (attempt + 1));
    }
  }
}

function uploadLocation(location: string | undefined, base: URL, what: string): URL {
  if (!location) throw new RegistryError(`${what}: the registry started an upload without a Location`, { code: 'ERR_REGISTRY_PROTOCOL' });
  return new URL(location, base);
}

async function upload(
  ctx: PushContext,
  d: Descriptor,
  start: URL,
  base: { operation: 'push'; kind: ProgressKind; digest: Digest; total: number },
  what: string,
  signal: AbortSignal,
): Promise<void> {
  const { client, service, options } = ctx;
  let done = 0;
  let reported = 0;
  const counter = (): Transform =>
    new Transform({
      transform(chunk: Buffer, _enc, cb) {
        done += chunk.length;
        ctx.transferred += chunk.length;
        if (done - reported >= 256 * 1024) {
          reported = done;
          report(options.onProgress, { ...base, status: 'uploading', done, transferred: ctx.transferred });
        }
        cb(null, chunk);
      },
    });
  const pipeCounted = (source: Readable): Readable => {
    const c = counter();
    source.on('error', (err) => c.destroy(err));
    const onAbort = () => source.destroy(new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    source.once('close', () => signal.removeEventListener('abort', onAbort));
    return source.pipe(c);
  };
  report(options.onProgress, { ...base, status: 'uploading', done: 0, transferred: ctx.transferred });
  let location = start;
  const chunkSize = options.chunkSize;
  if (chunkSize !== undefined && d.size > chunkSize) {
    const path = service.store.blobPath(d.digest);
    for (let offset = 0; offset < d.size; offset += chunkSize) {
      const end = Math.min(d.size, offset + chunkSize) - 1;
      const res = await client.request({
        method: 'PATCH',
        url: location,
        scopes: ctx.scopes,
        what: `${what}: chunk ${offset}-${end}`,
        expect: [202],
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${end}`, 'content-length': String(end - offset + 1) },
        body: async () => pipeCounted(createReadStream(path, { start: offset, end })),
      });
      res.body.resume();
      location = uploadLocation(res.headers.location, res.url, what);
    }
    const finish = new URL(location);
    finish.searchParams.set('digest', d.digest);
    const res = await client.request({ method: 'PUT', url: finish, scopes: ctx.scopes, what: `${what}: finish upload`, expect: [201], headers: { 'content-length': '0' } });
    res.body.resume();
    return;
  }
  const put = new URL(location);
  put.searchParams.set('digest', d.digest);
  const res = await client.request({
    method: 'PUT',
    url: put,
    scopes: ctx.scopes,
    what: `${what}: upload`,
    expect: [201],
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(d.size) },
    body: async () => pipeCounted(await service.store.openBlob(d.digest, d.size)),
  });
  res.body.resume();
}
