/**
 * Pull: reference → manifest (or index → the platform's manifest) → the
 * config and layers the store lacks, several at once, each verified against
 * its digest and size as it streams and written atomically; the manifest is
 * written and recorded last, so a failed pull leaves no partial blob and no
 * record (only complete, verified blobs that the next prune removes).
 *
 * Indexes: like Docker, only the chosen platform's manifest is stored and
 * recorded; the index itself is not kept (index.json lists images, and an
 * image is one manifest). A later pull by the index digest fetches the small
 * index again and finds every blob in the store.
 * @module
 */
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DigestMismatchError, NacelleError, NotFoundError, UnsupportedError } from '../errors';
import type { Image } from '../image/image';
import type { ImageService } from '../image/images';
import { type Digest, digestOf, isDigest, parseDigest } from '../oci/digest';
import {
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
  baseMediaType,
  isIndexMediaType,
  isLayerMediaType,
  layerCompression,
} from '../oci/mediatypes';
import { ImageReference, parseReference } from '../oci/reference';
import { type Descriptor, type ImageManifest, InvalidManifestError, parseImageConfig, parseIndex, parseManifest } from '../oci/types';
import { MAX_JSON_BLOB } from '../store/content-store';
import { RegistryClient, type RegistryClientOptions, isTransient } from './client';
import { RegistryError } from './errors';
import { type PlatformInput, formatPlatform, hostPlatform, parsePlatform, selectPlatform } from './platform';
import { type ProgressHandler, type ProgressKind, report } from './progress';
import { rememberBlobLocation, runPool } from './transfer';

/** How to pull. */
export interface PullOptions extends RegistryClientOptions {
  /** The platform to pick from an index: `linux/arm64`, `linux/arm/v7`. Default linux on the host's architecture. */
  platform?: PlatformInput;
  /** Called as blobs are checked, downloaded and verified. */
  onProgress?: ProgressHandler;
  /** How many blobs download at once. Default 4. */
  concurrency?: number;
}

/** What a pull did. */
export interface PullResult {
  /** The pulled image, recorded in the store (tagged when the reference had a tag or no digest). */
  image: Image;
  /** The digest of what the reference resolved to: the image manifest, or the index it was picked from. */
  resolvedDigest: Digest;
  /** Blob bytes (config and layers) downloaded; 0 when the store already had everything. */
  bytesTransferred: number;
  /** Blobs downloaded. */
  blobsFetched: Digest[];
  /** Blobs the store already had. */
  blobsPresent: Digest[];
}

/** The media types a pull accepts for manifests, best first. */
const MANIFEST_ACCEPT = [MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST].join(', ');

/** A manifest or index as fetched: its exact bytes, digest and kind. */
interface FetchedDocument {
  bytes: Buffer;
  digest: Digest;
  mediaType: string;
  json: unknown;
  isIndex: boolean;
}

/** One pull's shared state. */
interface PullContext {
  service: ImageService;
  client: RegistryClient;
  repository: string;
  scopes: string[];
  what: string;
  options: PullOptions;
  transferred: number;
}

/**
 * Pulls `ref` (`127.0.0.1:5000/app:v1`, `ghcr.io/o/a@sha256:…`) into the
 * service's store and returns the image with what moved.
 * @throws {@link NotFoundError} (no such tag, blob or platform), {@link DigestMismatchError}
 *   (content not matching its digest, or the reference's digest), {@link InvalidManifestError},
 *   {@link UnsupportedError} (zstd layers, artifacts), {@link RegistryError} (auth, protocol, HTTP)
 */
export async function pullImage(service: ImageService, refString: string, options: PullOptions = {}): Promise<PullResult> {
  const ref = parseReference(refString);
  const wanted = options.platform === undefined ? hostPlatform() : parsePlatform(options.platform);
  const what = `pull ${ref.toString()}`;

  const offline = ref.digest ? await fromStore(service, ref.digest) : undefined;
  if (offline) {
    await recordPulled(service, ref, offline.digest, offline.manifest);
    return { image: await service.load(offline.digest), resolvedDigest: ref.digest!, bytesTransferred: 0, blobsFetched: [], blobsPresent: blobsOf(offline.manifest) };
  }

  const client = await RegistryClient.open(ref.registry, options);
  try {
    const ctx: PullContext = { service, client, repository: ref.repository, scopes: [`repository:${ref.repository}:pull`], what, options, transferred: 0 };
    const top = await fetchDocument(ctx, ref.digest ?? ref.tag ?? 'latest', ref.digest);
    let doc = top;
    if (top.isIndex) {
      const index = parseIndex(top.json);
      const pick = selectPlatform(index.manifests, wanted);
      if (!pick) {
        const have = index.manifests.map((m) => (m.platform ? formatPlatform(m.platform) : 'unknown')).join(', ');
        throw new NotFoundError(`${what}: no manifest for ${formatPlatform(wanted)} in index ${top.digest} (it has ${have || 'none'})`);
      }
      if (isIndexMediaType(pick.mediaType)) throw new UnsupportedError(`${what}: nested index ${pick.digest} for ${formatPlatform(wanted)}`);
      doc = await fetchDocument(ctx, pick.digest, pick.digest, pick.size);
      if (doc.isIndex) throw new InvalidManifestError(`${what}: ${pick.digest} is listed as a manifest but is an index`, { field: 'mediaType' });
    }
    const manifest = parseManifest(doc.json);
    checkPullable(manifest, what);

    return await service.store.gcLock.with('shared', async () => {
      const present: Digest[] = [];
      const fetched: Digest[] = [];
      const config = manifest.config;
      const configNew = await fetchBlob(ctx, config, 'config');
      (configNew ? fetched : present).push(config.digest);
      const parsedConfig = parseImageConfig(await service.store.readJson(config.digest));
      if (parsedConfig.rootfs.diff_ids.length !== manifest.layers.length) {
        throw new InvalidManifestError(
          `${what}: config ${config.digest} lists ${parsedConfig.rootfs.diff_ids.length} diff_ids for ${manifest.layers.length} layers`,
          { field: 'rootfs.diff_ids' },
        );
      }
      if (!top.isIndex && options.platform !== undefined && (parsedConfig.os !== wanted.os || parsedConfig.architecture !== wanted.architecture)) {
        throw new NotFoundError(`${what}: the image is ${parsedConfig.os}/${parsedConfig.architecture}, not the requested ${formatPlatform(wanted)}`);
      }
      const layers = uniqueByDigest(manifest.layers);
      await runPool(layers, Math.max(1, options.concurrency ?? 4), async (layer, signal) => {
        const isNew = await fetchBlob(ctx, layer, 'layer', signal);
        (isNew ? fetched : present).push(layer.digest);
      });
      for (const d of [config, ...layers]) rememberBlobLocation(ref.registry, ref.repository, d.digest);
      await service.store.writeBlob(doc.bytes, { digest: doc.digest, size: doc.bytes.length });
      await recordPulled(service, ref, doc.digest, manifest);
      report(options.onProgress, { operation: 'pull', kind: 'manifest', digest: doc.digest, status: 'done', done: doc.bytes.length, total: doc.bytes.length, transferred: ctx.transferred });
      return { image: await service.load(doc.digest), resolvedDigest: top.digest, bytesTransferred: ctx.transferred, blobsFetched: fetched, blobsPresent: present };
    });
  } finally {
    client.close();
  }
}

/** Records a pulled manifest under the reference's tag (untagged for a digest-only reference). */
async function recordPulled(service: ImageService, ref: ImageReference, digest: Digest, manifest: ImageManifest): Promise<void> {
  if (ref.digest && ref.tag === undefined) {
    await service.record(digest, manifest);
    return;
  }
  await service.record(digest, manifest, new ImageReference({ registry: ref.registry, repository: ref.repository, tag: ref.tag ?? 'latest' }));
}

/** A by-digest pull the store can answer alone: the manifest and all its blobs are there. */
async function fromStore(service: ImageService, digest: Digest): Promise<{ digest: Digest; manifest: ImageManifest } | undefined> {
  if (!(await service.store.has(digest))) return undefined;
  try {
    const manifest = parseManifest(await service.store.readJson(digest));
    for (const d of blobsOf(manifest)) if ((await service.store.size(d)) === undefined) return undefined;
    return { digest, manifest };
  } catch {
    return undefined; // an index, or something damaged: ask the registry
  }
}

function blobsOf(manifest: ImageManifest): Digest[] {
  return [manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
}

function checkPullable(manifest: ImageManifest, what: string): void {
  const configType = baseMediaType(manifest.config.mediaType);
  if (configType !== MEDIA_TYPE_OCI_CONFIG && configType !== MEDIA_TYPE_DOCKER_CONFIG) {
    throw new UnsupportedError(`${what}: config media type '${manifest.config.mediaType}' is not an image config (an artifact?)`);
  }
  for (const layer of manifest.layers) {
    if (!isLayerMediaType(layer.mediaType)) throw new UnsupportedError(`${what}: layer ${layer.digest} has media type '${layer.mediaType}', not an image layer`);
    if (layerCompression(layer.mediaType) === 'zstd') {
      throw new UnsupportedError(`${what}: layer ${layer.digest} is zstd-compressed (${layer.mediaType}); nacelle reads gzip and uncompressed layers only`);
    }
  }
}

function uniqueByDigest(descriptors: readonly Descriptor[]): Descriptor[] {
  const seen = new Set<Digest>();
  return descriptors.filter((d) => (seen.has(d.digest) ? false : (seen.add(d.digest), true)));
}

/**
 * GETs a manifest or index by tag or digest: size-capped, its digest
 * computed from the exact bytes and checked against `expected` (a by-digest
 * reference) and the registry's Docker-Content-Digest header.
 */
async function fetchDocument(ctx: PullContext, reference: string, expected: Digest | undefined, expectedSize?: number): Promise<FetchedDocument> {
  const what = `${ctx.what}: manifest ${reference}`;
  const res = await ctx.client.request({
    method: 'GET',
    url: `/v2/${ctx.repository}/manifests/${reference}`,
    scopes: ctx.scopes,
    what,
    expect: [200],
    headers: { accept: MANIFEST_ACCEPT },
  });
  const bytes = await ctx.client.readBody(res, MAX_JSON_BLOB, what);
  const algorithm = expected ? parseDigest(expected).algorithm : 'sha256';
  const digest = digestOf(bytes, algorithm);
  if (expected && digest !== expected) {
    throw new DigestMismatchError(`${what}: the registry sent content with digest ${digest}, not the ${expected} asked for`);
  }
  if (expectedSize !== undefined && bytes.length !== expectedSize) {
    throw new DigestMismatchError(`${what}: ${bytes.length} bytes, the index says ${expectedSize}`);
  }
  const announced = res.headers['docker-content-digest'];
  if (typeof announced === 'string' && isDigest(announced) && parseDigest(announced).algorithm === algorithm && announced !== digest) {
    throw new DigestMismatchError(`${what}: the registry says Docker-Content-Digest ${announced}, but the bytes it sent have digest ${digest}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8')) as unknown;
  } catch (err) {
    throw new InvalidManifestError(`${what}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new InvalidManifestError(`${what}: not a JSON object`, {});
  }
  const field = (json as { mediaType?: unknown }).mediaType;
  const contentType = typeof res.headers['content-type'] === 'string' ? baseMediaType(res.headers['content-type']) : '';
  const mediaType = typeof field === 'string' ? baseMediaType(field) : contentType;
  const isIndex = isIndexMediaType(mediaType) || (!('config' in json) && 'manifests' in json);
  return { bytes, digest, mediaType, json, isIndex };
}

/**
 * Downloads one blob into the store unless it is there. Returns whether
 * bytes were fetched. A connection that breaks mid-body is resumed with a
 * Range request (at most `retries` times, and never twice without progress);
 * wrong bytes are never retried.
 */
async function fetchBlob(ctx: PullContext, d: Descriptor, kind: ProgressKind, signal?: AbortSignal): Promise<boolean> {
  const { service, options } = ctx;
  const base = { operation: 'pull' as const, kind, digest: d.digest, total: d.size };
  if ((await service.store.size(d.digest)) === d.size) {
    report(options.onProgress, { ...base, status: 'exists', done: d.size, transferred: ctx.transferred });
    return false;
  }
  const what = `${ctx.what}: ${kind} ${d.digest}`;
  const retries = options.retries ?? 3;
  let received = 0;
  let reported = 0;
  const source = async function* (): AsyncGenerator<Buffer> {
    let attempt = 0;
    let progressAtLastFailure = -1;
    for (;;) {
      signal?.throwIfAborted();
      const headers: Record<string, string> = {};
      if (received > 0) headers['range'] = `bytes=${received}-`;
      const res = await ctx.client.request({ method: 'GET', url: `/v2/${ctx.repository}/blobs/${d.digest}`, scopes: ctx.scopes, what, expect: [200, 206], headers });
      const onAbort = () => res.body.destroy(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
      signal?.addEventListener('abort', onAbort, { once: true });
      let skip = 0;
      if (received > 0) {
        if (res.status === 206) {
          const start = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''))?.[1];
          if (start !== undefined && Number(start) !== received) {
            res.body.destroy();
            throw new RegistryError(`${what}: asked for bytes from ${received}, got a range from ${start}`, { code: 'ERR_REGISTRY_PROTOCOL' });
          }
        } else {
          skip = received; // the server ignored Range: drop what we already have
        }
      }
      if (received === 0) report(options.onProgress, { ...base, status: 'downloading', done: 0, transferred: ctx.transferred });
      try {
        for await (const raw of res.body as AsyncIterable<Buffer>) {
          let chunk = raw;
          if (skip > 0) {
            const drop = Math.min(skip, chunk.length);
            skip -= drop;
            ctx.transferred += drop;
            chunk = chunk.subarray(drop);
            if (chunk.length === 0) continue;
          }
          received += chunk.length;
          ctx.transferred += chunk.length;
          if (received - reported >= 256 * 1024) {
            reported = received;
            report(options.onProgress, { ...base, status: 'downloading', done: Math.min(received, d.size), transferred: ctx.transferred });
          }
          yield chunk;
        }
      } catch (err) {
        signal?.throwIfAborted();
        if (err instanceof NacelleError && !isTransient(err)) throw err;
        if (!isTransient(err) || attempt >= retries || received === progressAtLastFailure) {
          throw new RegistryError(`${what}: the download broke after ${received} of ${d.size} bytes (${(err as Error).message}); gave up after ${attempt + 1} attempts`, {
            code: 'ERR_INTERRUPTED',
            cause: err,
          });
        }
        attempt++;
        progressAtLastFailure = received;
        report(options.onProgress, { ...base, status: 'retrying', done: received, transferred: ctx.transferred });
        await sleep(50 * attempt);
        continue;
      } finally {
        signal?.removeEventListener('abort', onAbort);
        if (!res.body.readableEnded) res.body.destroy();
      }
      if (received < d.size) {
        // The body ended cleanly but short: resume from where it stopped.
        if (attempt >= retries || received === progressAtLastFailure) {
          throw new DigestMismatchError(`${what}: truncated, the registry sent ${received} of ${d.size} bytes; gave up after ${attempt + 1} attempts`);
        }
        attempt++;
        progressAtLastFailure = received;
        report(options.onProgress, { ...base, status: 'retrying', done: received, transferred: ctx.transferred });
        continue;
      }
      return;
    }
  };
  await service.store.writeBlob(Readable.from(source(), { objectMode: false }), { digest: d.digest, size: d.size });
  report(options.onProgress, { ...base, status: 'done', done: d.size, transferred: ctx.transferred });
  return true;
}
