/**
 * Import and export: OCI layout directories, OCI archives (a layout in a tar)
 * and docker-archive (the `docker save` format: manifest.json, repositories,
 * config, uncompressed layer tars). Every blob crossing the boundary is
 * verified against its digest.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, join, normalize, sep } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { DigestMismatchError, InvalidArgumentError, NacelleError, NotFoundError, UnsupportedError } from '../errors';
import { type Digest, DigestStream, digestOf, isDigest, parseDigest } from '../oci/digest';
import {
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER_TAR,
  MEDIA_TYPE_OCI_MANIFEST,
  isIndexMediaType,
  isLayerMediaType,
  isManifestMediaType,
  layerCompression,
} from '../oci/mediatypes';
import { type ImageReference, parseReference } from '../oci/reference';
import { ANNOTATION_CONTAINERD_IMAGE_NAME, ANNOTATION_REF_NAME, type Descriptor, type ImageManifest, parseImageConfig, parseIndex, parseManifest } from '../oci/types';
import { writeFileAtomic } from '../store/atomic';
import { MAX_JSON_BLOB } from '../store/content-store';
import type { Image } from './image';
import type { ImageService } from './images';
import { hostArchitecture } from './images';

/** The formats images are written in. */
export type ArchiveFormat = 'oci-layout' | 'oci-archive' | 'docker-archive';

/** How to export. */
export interface ExportOptions {
  /** Default `oci-layout`. */
  format?: ArchiveFormat;
  /**
   * Tags to write (normalized references). Default: each image's own tags.
   * With several images, give tags on the images themselves instead.
   */
  tags?: readonly string[];
}

/** How to import. */
export interface ImportOptions {
  /**
   * Repository for OCI layouts whose `org.opencontainers.image.ref.name` is a
   * bare tag (`latest`), as skopeo and umoci write them. Default: the layout's
   * file or directory name.
   */
  repository?: string;
  /** Tag every imported image with this reference as well. */
  tag?: string;
}

/* ---------------------------------------------------------------- export -- */

interface ExportEntry {
  image: Image;
  tags: ImageReference[];
}

function exportEntries(images: readonly Image[], options: ExportOptions): ExportEntry[] {
  if (options.tags && images.length !== 1) {
    throw new InvalidArgumentError('export: `tags` applies to a single image; tag the images instead');
  }
  return images.map((image) => ({
    image,
    tags: (options.tags ?? image.tags).map((t) => parseReference(t)),
  }));
}

/** Blobs an image needs, each once: manifest, config, layers. */
function blobsOf(image: Image): Descriptor[] {
  const manifestBytes = Buffer.byteLength(JSON.stringify(image.manifest));
  return [
    { mediaType: image.manifest.mediaType ?? MEDIA_TYPE_OCI_MANIFEST, digest: image.digest, size: manifestBytes },
    image.manifest.config,
    ...image.manifest.layers,
  ];
}

function indexRecords(entries: readonly ExportEntry[], sizes: Map<Digest, number>): Descriptor[] {
  const records: Descriptor[] = [];
  for (const { image, tags } of entries) {
    const base: Descriptor = {
      mediaType: image.manifest.mediaType ?? MEDIA_TYPE_OCI_MANIFEST,
      digest: image.digest,
      size: sizes.get(image.digest) ?? 0,
    };
    if (tags.length === 0) records.push(base);
    for (const tag of tags) {
      records.push({
        ...base,
        annotations: { [ANNOTATION_REF_NAME]: tag.tag ?? 'latest', [ANNOTATION_CONTAINERD_IMAGE_NAME]: tag.toString() },
      });
    }
  }
  return records;
}

async function exportLayout(entries: readonly ExportEntry[], dir: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const sizes = new Map<Digest, number>();
  for (const { image } of entries) {
    const store = image.service.store;
    for (const blob of blobsOf(image)) {
      const size = (await store.size(blob.digest)) ?? blob.size;
      sizes.set(blob.digest, size);
      const { algorithm, hex } = parseDigest(blob.digest);
      await mkdir(join(dir, 'blobs', algorithm), { recursive: true });
      const target = join(dir, 'blobs', algorithm, hex);
      const existing = await stat(target).catch(() => undefined);
      if (existing?.size === size) continue;
      const tmp = `${target}.tmp-${randomBytes(4).toString('hex')}`;
      try {
        await pipeline(await store.openBlob(blob.digest, size), createWriteStream(tmp, { flush: true }));
        await rename(tmp, target);
      } finally {
        await rm(tmp, { force: true });
      }
    }
  }
  let manifests: Descriptor[] = [];
  const indexPath = join(dir, 'index.json');
  const existing = await readFile(indexPath, 'utf8').catch(() => undefined);
  if (existing !== undefined) manifests = parseIndex(JSON.parse(existing) as unknown).manifests;
  const fresh = indexRecords(entries, sizes);
  // A tag written now replaces the same tag already in the layout.
  const names = new Set(fresh.map((d) => d.annotations?.[ANNOTATION_REF_NAME]).filter(Boolean));
  manifests = manifests.filter((d) => !names.has(d.annotations?.[ANNOTATION_REF_NAME]));
  await writeFileAtomic(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFileAtomic(indexPath, JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [...manifests, ...fresh] }));
}

/** Adds one entry to a tar pack, streaming its content. */
async function addEntry(pack: tar.Pack, name: string, size: number, content: Readable | Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const header = { name, size, mode: 0o644, mtime: new Date(0), type: 'file' as const };
    if (Buffer.isBuffer(content)) {
      pack.entry(header, content, (err) => (err ? reject(err) : resolve()));
      return;
    }
    const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    content.on('error', (err) => {
      sink.destroy(err);
      reject(err);
    });
    content.pipe(sink);
  });
}

async function addDirEntry(pack: tar.Pack, name: string): Promise<void> {
  await new Promise<void>((resolve, reject) =>
    pack.entry({ name, type: 'directory', mode: 0o755, mtime: new Date(0) }, (err) => (err ? reject(err) : resolve())),
  );
}

async function writeTar(path: string, fill: (pack: tar.Pack) => Promise<void>): Promise<void> {
  const pack = tar.pack();
  const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  const out = createWriteStream(tmp, { flush: true });
  const done = pipeline(pack, out);
  try {
    await fill(pack);
    pack.finalize();
    await done;
    await rename(tmp, path);
  } catch (err) {
    pack.destroy(err as Error);
    await done.catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
}

async function exportOciArchive(entries: readonly ExportEntry[], path: string): Promise<void> {
  await writeTar(path, async (pack) => {
    const sizes = new Map<Digest, number>();
    const written = new Set<Digest>();
    const layoutBytes = Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await addEntry(pack, 'oci-layout', layoutBytes.length, layoutBytes);
    await addDirEntry(pack, 'blobs/');
    await addDirEntry(pack, 'blobs/sha256/');
    for (const { image } of entries) {
      const store = image.service.store;
      for (const blob of blobsOf(image)) {
        if (written.has(blob.digest)) continue;
        written.add(blob.digest);
        const size = (await store.size(blob.digest)) ?? blob.size;
        sizes.set(blob.digest, size);
        const { algorithm, hex } = parseDigest(blob.digest);
        await addEntry(pack, `blobs/${algorithm}/${hex}`, size, await store.openBlob(blob.digest, size));
      }
    }
    const index = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: indexRecords(entries, sizes) };
    const indexBytes = Buffer.from(JSON.stringify(index));
    await addEntry(pack, 'index.json', indexBytes.length, indexBytes);
  });
}

/** The uncompressed tar of a layer, with its size, verified against the diffID. */
async function uncompressedLayer(image: Image, i: number): Promise<{ size: number; open: () => Promise<Readable> }> {
  const layer = image.layers[i]!;
  const compression = layerCompression(layer.mediaType);
  if (compression === 'none') return { size: layer.size, open: () => layer.open() };
  if (compression !== 'gzip') throw new UnsupportedError(`cannot write ${layer.mediaType} layers to a docker-archive`);
  const counter = new DigestStream({ digest: layer.diffId });
  await pipeline(await layer.open(), createGunzip(), counter, async function* (source) {
    for await (const _ of source) {
      // count
    }
  });
  const size = counter.size;
  return {
    size,
    open: async () => {
      const verify = new DigestStream({ digest: layer.diffId, size });
      const src = await layer.open();
      const gunzip = createGunzip();
      src.on('error', (e) => verify.destroy(e));
      gunzip.on('error', (e) => verify.destroy(e));
      return src.pipe(gunzip).pipe(verify);
    },
  };
}

async function exportDockerArchive(entries: readonly ExportEntry[], path: string): Promise<void> {
  await writeTar(path, async (pack) => {
    const manifest: { Config: string; RepoTags: string[] | null; Layers: string[] }[] = [];
    const repositories: Record<string, Record<string, string>> = {};
    const written = new Set<string>();
    for (const { image, tags } of entries) {
      const store = image.service.store;
      const configHex = parseDigest(image.id).hex;
      const configName = `${configHex}.json`;
      if (!written.has(configName)) {
        written.add(configName);
        await addEntry(pack, configName, image.manifest.config.size, await store.openBlob(image.id, image.manifest.config.size));
      }
      const layerNames: string[] = [];
      for (let i = 0; i < image.layers.length; i++) {
        const layer = image.layers[i]!;
        const dirName = parseDigest(layer.diffId).hex;
        const name = `${dirName}/layer.tar`;
        layerNames.push(name);
        if (written.has(name)) continue;
        written.add(name);
        await addDirEntry(pack, `${dirName}/`);
        await addEntry(pack, `${dirName}/VERSION`, 3, Buffer.from('1.0'));
        const tarLayer = await uncompressedLayer(image, i);
        await addEntry(pack, name, tarLayer.size, await tarLayer.open());
      }
      const familiar = tags.map((t) => t.familiar);
      manifest.push({ Config: configName, RepoTags: familiar.length ? familiar : null, Layers: layerNames });
      const top = image.layers.at(-1);
      for (const t of tags) {
        const repo = t.familiarName;
        repositories[repo] ??= {};
        repositories[repo][t.tag ?? 'latest'] = top ? parseDigest(top.diffId).hex : configHex;
      }
    }
    const manifestBytes = Buffer.from(JSON.stringify(manifest));
    await addEntry(pack, 'manifest.json', manifestBytes.length, manifestBytes);
    const repoBytes = Buffer.from(JSON.stringify(repositories));
    await addEntry(pack, 'repositories', repoBytes.length, repoBytes);
  });
}

/** Writes images to `path` in the chosen format. */
export async function exportImages(images: readonly Image[], path: string, options: ExportOptions = {}): Promise<void> {
  const entries = exportEntries(images, options);
  switch (options.format ?? 'oci-layout') {
    case 'oci-layout':
      return exportLayout(entries, path);
    case 'oci-archive':
      return exportOciArchive(entries, path);
    case 'docker-archive':
      return exportDockerArchive(entries, path);
    default:
      throw new InvalidArgumentError(`unknown export format '${String(options.format)}' (oci-layout, oci-archive, docker-archive)`);
  }
}

/* ---------------------------------------------------------------- import -- */

/** Unpacks an archive's regular files into `dir`, refusing names that escape it. */
async function extractArchive(path: string, dir: string): Promise<void> {
  const h = await open(path, 'r');
  const { buffer } = await h.read(Buffer.alloc(2), 0, 2, 0);
  await h.close();
  const gzipped = buffer[0] === 0x1f && buffer[1] === 0x8b;
  const extract = tar.extract();
  const source: Readable = gzipped ? createReadStream(path).pipe(createGunzip()) : createReadStream(path);
  const done = (async () => {
    for await (const entry of extract) {
      const name = normalize(entry.header.name);
      if (name.startsWith('..') || name.startsWith(sep) || name.split(sep).includes('..')) {
        entry.resume();
        throw new NacelleError(`archive ${path}: entry '${entry.header.name}' points outside the archive`, { code: 'ERR_INVALID_ARCHIVE' });
      }
      if (entry.header.type === 'directory') {
        await mkdir(join(dir, name), { recursive: true });
        entry.resume();
      } else if (entry.header.type === 'file' || entry.header.type === 'contiguous-file') {
        await mkdir(join(dir, name, '..'), { recursive: true });
        await pipeline(entry, createWriteStream(join(dir, name)));
      } else {
        entry.resume();
      }
    }
  })();
  source.on('error', (err) => extract.destroy(err));
  source.pipe(extract);
  try {
    await done;
  } catch (err) {
    source.destroy();
    if (err instanceof NacelleError) throw err;
    throw new NacelleError(`archive ${path} is damaged or truncated: ${(err as Error).message}`, { code: 'ERR_INVALID_ARCHIVE', cause: err });
  }
}

function repositoryFor(path: string, options: ImportOptions): string {
  if (options.repository) return options.repository;
  const base = basename(path).replace(/\.(tar|tgz|tar\.gz)$/, '').toLowerCase().replace(/[^a-z0-9._-]+/g, '-');
  return base.replace(/^[._-]+|[._-]+$/g, '') || 'imported';
}

function tagFromAnnotations(annotations: Record<string, string> | undefined, repository: string): ImageReference | undefined {
  const full = annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME];
  if (full) return parseReference(full);
  const refName = annotations?.[ANNOTATION_REF_NAME];
  if (!refName) return undefined;
  // A bare tag (what skopeo and umoci write) belongs to the chosen repository;
  // anything else is a full reference.
  if (/^[\w][\w.-]{0,127}$/.test(refName)) return parseReference(`${repository}:${refName}`);
  return parseReference(refName);
}

/** Copies one blob from a layout directory into the store, verified. */
async function copyBlob(service: ImageService, layout: string, d: Descriptor): Promise<void> {
  if (!isDigest(d.digest)) throw new InvalidArgumentError(`invalid digest '${String(d.digest)}'`);
  const { algorithm, hex } = parseDigest(d.digest);
  const file = join(layout, 'blobs', algorithm, hex);
  const st = await stat(file).catch(() => undefined);
  if (!st) throw new NotFoundError(`${layout}: blob ${d.digest} named by a manifest is missing`);
  await service.store.ingestFile(file, { digest: d.digest, size: d.size });
}

async function readLayoutJson(layout: string, d: Descriptor): Promise<unknown> {
  const { algorithm, hex } = parseDigest(d.digest);
  const file = join(layout, 'blobs', algorithm, hex);
  const data = await readFile(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new NotFoundError(`${layout}: blob ${d.digest} named by the index is missing`);
    throw err;
  });
  if (data.length > MAX_JSON_BLOB) throw new NacelleError(`${layout}: ${d.digest} is too large for a manifest`, { code: 'ERR_TOO_LARGE' });
  const actual = digestOf(data, algorithm);
  if (actual !== d.digest) throw new DigestMismatchError(`${layout}: blob ${d.digest} has digest ${actual}`);
  return JSON.parse(data.toString('utf8')) as unknown;
}

async function importManifest(
  service: ImageService,
  layout: string,
  d: Descriptor,
  tags: ImageReference[],
): Promise<Image> {
  const manifest = parseManifest(await readLayoutJson(layout, d));
  for (const layer of manifest.layers) {
    if (!isLayerMediaType(layer.mediaType)) throw new UnsupportedError(`${layout}: layer ${layer.digest} has unknown media type ${layer.mediaType}`);
    layerCompression(layer.mediaType); // refuses zstd and unknown compressions clearly
  }
  return service.store.gcLock.with('shared', async () => {
    for (const blob of [manifest.config, ...manifest.layers]) await copyBlob(service, layout, blob);
    parseImageConfig(await service.store.readJson(manifest.config.digest));
    await copyBlob(service, layout, d);
    if (tags.length === 0) await service.record(d.digest, manifest);
    for (const tag of tags) await service.record(d.digest, manifest, tag);
    return service.load(d.digest);
  });
}

function platformMatches(d: Descriptor): boolean {
  return !d.platform || (d.platform.os === 'linux' && d.platform.architecture === hostArchitecture());
}

async function importLayout(service: ImageService, layout: string, origin: string, options: ImportOptions): Promise<Image[]> {
  const indexText = await readFile(join(layout, 'index.json'), 'utf8');
  const index = parseIndex(JSON.parse(indexText) as unknown);
  const repository = repositoryFor(origin, options);
  const byDigest = new Map<Digest, { d: Descriptor; tags: ImageReference[] }>();
  for (const d of index.manifests) {
    let target = d;
    if (isIndexMediaType(d.mediaType)) {
      const nested = parseIndex(await readLayoutJson(layout, d));
      const pick = nested.manifests.find(platformMatches);
      if (!pick) throw new NotFoundError(`${origin}: index ${d.digest} has no manifest for linux/${hostArchitecture()}`);
      target = pick;
    } else if (!isManifestMediaType(d.mediaType)) {
      throw new UnsupportedError(`${origin}: index entry ${d.digest} has unknown media type ${d.mediaType}`);
    }
    const entry = byDigest.get(target.digest) ?? { d: target, tags: [] };
    const tag = tagFromAnnotations(d.annotations, repository);
    if (tag) entry.tags.push(tag);
    byDigest.set(target.digest, entry);
  }
  const images: Image[] = [];
  for (const { d, tags } of byDigest.values()) {
    if (options.tag) tags.push(parseReference(options.tag));
    images.push(await importManifest(service, layout, d, tags));
  }
  return images;
}

interface DockerArchiveEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

async function importDockerArchive(service: ImageService, dir: string, origin: string, options: ImportOptions): Promise<Image[]> {
  const raw = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as unknown;
  if (!Array.isArray(raw)) throw new NacelleError(`${origin}: manifest.json is not a list`, { code: 'ERR_INVALID_ARCHIVE' });
  const images: Image[] = [];
  for (const item of raw as DockerArchiveEntry[]) {
    if (typeof item?.Config !== 'string' || !Array.isArray(item.Layers)) {
      throw new NacelleError(`${origin}: manifest.json entry lacks Config or Layers`, { code: 'ERR_INVALID_ARCHIVE' });
    }
    const inside = (name: string) => {
      const n = normalize(name);
      if (n.startsWith('..') || n.startsWith(sep)) throw new NacelleError(`${origin}: '${name}' points outside the archive`, { code: 'ERR_INVALID_ARCHIVE' });
      return join(dir, n);
    };
    const image = await service.store.gcLock.with('shared', async () => {
      const configBytes = await readFile(inside(item.Config)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') throw new NotFoundError(`${origin}: config ${item.Config} is missing`);
        throw err;
      });
      const config = parseImageConfig(JSON.parse(configBytes.toString('utf8')) as unknown);
      if (config.rootfs.diff_ids.length !== item.Layers.length) {
        throw new NacelleError(`${origin}: ${item.Config} lists ${config.rootfs.diff_ids.length} layers, manifest.json ${item.Layers.length}`, {
          code: 'ERR_INVALID_ARCHIVE',
        });
      }
      const configBlob = await service.store.writeBlob(configBytes);
      const layers: Descriptor[] = [];
      for (let i = 0; i < item.Layers.length; i++) {
        const file = inside(item.Layers[i]!);
        const diffId = config.rootfs.diff_ids[i]!;
        const h = await open(file, 'r').catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') throw new NotFoundError(`${origin}: layer ${item.Layers[i]} is missing`);
          throw err;
        });
        const { buffer } = await h.read(Buffer.alloc(2), 0, 2, 0);
        await h.close();
        if (buffer[0] === 0x1f && buffer[1] === 0x8b) {
          // A compressed layer: store it as it is, and check its tar against the diffID.
          const blob = await service.store.ingestFile(file);
          const check = new DigestStream({ digest: diffId });
          await pipeline(createReadStream(file), createGunzip(), check, new PassThrough().resume());
          layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: blob.digest, size: blob.size });
        } else {
          const blob = await service.store.ingestFile(file, { digest: diffId });
          layers.push({ mediaType: MEDIA_TYPE_OCI_LAYER_TAR, digest: blob.digest, size: blob.size });
        }
      }
      const manifest: ImageManifest = {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE_OCI_MANIFEST,
        config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: configBlob.digest, size: configBlob.size },
        layers,
      };
      const manifestBytes = Buffer.from(JSON.stringify(manifest));
      const stored = await service.store.writeBlob(manifestBytes);
      const tags = (item.RepoTags ?? []).map((t) => parseReference(t));
      if (options.tag) tags.push(parseReference(options.tag));
      if (tags.length === 0) await service.record(stored.digest, manifest);
      for (const tag of tags) await service.record(stored.digest, manifest, tag);
      return service.load(stored.digest);
    });
    images.push(image);
  }
  return images;
}

/** Imports images from `path`, detecting the format. */
export async function importImages(service: ImageService, path: string, options: ImportOptions = {}): Promise<Image[]> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new NotFoundError(`nothing to import at ${path}`);
    throw err;
  });
  if (st.isDirectory()) {
    if (!(await stat(join(path, 'oci-layout')).catch(() => undefined))) {
      throw new UnsupportedError(`${path} is a directory but not an OCI image layout (no oci-layout file)`);
    }
    return importLayout(service, path, path, options);
  }
  // The scratch copy lives in the store's ingest area: hold the gc lock so a
  // prune in another process does not sweep it away mid-import.
  return service.store.gcLock.with('shared', async () => {
    const scratch = join(service.store.root, 'ingest', `import-${process.pid}-${randomBytes(6).toString('hex')}`);
    await mkdir(scratch, { recursive: true });
    try {
      await extractArchive(path, scratch);
      if (await stat(join(scratch, 'oci-layout')).catch(() => undefined)) return await importLayout(service, scratch, path, options);
      if (await stat(join(scratch, 'manifest.json')).catch(() => undefined)) return await importDockerArchive(service, scratch, path, options);
      throw new UnsupportedError(`${path} is neither an OCI archive (no oci-layout) nor a docker-archive (no manifest.json)`);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });
}

