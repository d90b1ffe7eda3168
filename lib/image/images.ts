/**
 * The image service (`rt.images`): images in the store, by tag or digest.
 * @module
 */
import { arch } from 'node:os';
import { NotFoundError } from '../errors';
import { type Digest, digestOf, isDigest } from '../oci/digest';
import { MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST } from '../oci/mediatypes';
import { type ImageReference, parseReference } from '../oci/reference';
import {
  ANNOTATION_CONTAINERD_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  type ContainerConfig,
  type Descriptor,
  type HistoryEntry,
  type ImageConfig,
  type ImageManifest,
  parseImageConfig,
  parseManifest,
} from '../oci/types';
import type { ContentStore } from '../store/content-store';
import { type PullOptions, pullImage } from '../registry/pull';
import { type PushOptions, type PushResult, pushImage } from '../registry/push';
import { type ExportOptions, type ImportOptions, exportImages, importImages } from './archive';
import { type HistoryInput, Image } from './image';
import { Layer } from './layer';
import type { Snapshotter } from './snapshots';

/** Marks an untagged image a build made for one of its steps (hidden by {@link ImageService.list}; like Docker's intermediate images). */
export const ANNOTATION_INTERMEDIATE = 'org.nacelle.image.intermediate';

/** What {@link ImageService.list} takes. */
export interface ListImagesOptions {
  /** Also the untagged images builds made for their steps (`docker images -a`). Default false. */
  all?: boolean;
}

/** What {@link ImageService.fromDirectory} takes. */
export interface FromDirectoryOptions {
  /** Tag the new image gets, e.g. `app:dev` (normalized like Docker: docker.io/library/app:dev). */
  tag?: string;
  /** The runtime config: Env, Cmd, Entrypoint, WorkingDir, User, … */
  config?: ContainerConfig;
  /** History entry for the layer. */
  history?: HistoryInput;
  /** Creation time (ISO 8601); fix it for reproducible digests. Default now. */
  created?: string;
  /** Architecture, default the host's in Go's naming (amd64, arm64). */
  architecture?: string;
}

/** How to remove an image. */
export interface RemoveImageOptions {
  /** Remove the image (all its tags) even when it has several tags. */
  force?: boolean;
}

/** The host's architecture as OCI names it. */
export function hostArchitecture(): string {
  const a = arch();
  return a === 'x64' ? 'amd64' : a === 'ia32' ? '386' : a;
}

function historyEntry(input: HistoryInput, emptyLayer: boolean): HistoryEntry {
  const entry: HistoryEntry = { created: input.created ?? new Date().toISOString() };
  if (input.createdBy !== undefined) entry.created_by = input.createdBy;
  if (input.author !== undefined) entry.author = input.author;
  if (input.comment !== undefined) entry.comment = input.comment;
  if (emptyLayer) entry.empty_layer = true;
  return entry;
}

/** Images in one store: lookup, tags, creation, import and export. */
export class ImageService {
  /** The content store holding every blob. @internal */
  readonly store: ContentStore;
  /** The snapshotter that unpacks layers once for every image. @internal */
  readonly snapshots: Snapshotter;

  /** @internal */
  constructor(store: ContentStore, snapshots: Snapshotter) {
    this.store = store;
    this.snapshots = snapshots;
  }

  /** Manifests and configs already read and verified, by manifest digest: content never changes. */
  readonly #parsed = new Map<Digest, { manifest: ImageManifest; config: ImageConfig }>();

  async #parse(digest: Digest): Promise<{ manifest: ImageManifest; config: ImageConfig }> {
    const cached = this.#parsed.get(digest);
    if (cached) return cached;
    const manifest = parseManifest(await this.store.readJson(digest));
    const config = parseImageConfig(await this.store.readJson(manifest.config.digest));
    if (this.#parsed.size > 256) this.#parsed.clear();
    this.#parsed.set(digest, { manifest, config });
    return { manifest, config };
  }

  /** Loads an image by manifest digest. @internal */
  async load(digest: Digest, tags?: readonly string[]): Promise<Image> {
    const { manifest, config } = await this.#parse(digest);
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw new NotFoundError(
        `image ${digest}: config lists ${config.rootfs.diff_ids.length} diff_ids for ${manifest.layers.length} layers`,
        { code: 'ERR_INVALID_MANIFEST' },
      );
    }
    for (const layer of manifest.layers) {
      if (!(await this.store.has(layer.digest))) {
        throw new NotFoundError(`image ${digest}: its manifest names layer ${layer.digest}, which is not in the store`);
      }
    }
    return new Image(this, digest, manifest, config, tags ?? (await this.tagsOf(digest)));
  }

  /** The normalized references pointing at a manifest digest. */
  async tagsOf(digest: Digest): Promise<string[]> {
    const index = await this.store.readIndex();
    return index.manifests
      .filter((d) => d.digest === digest)
      .map((d) => d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME])
      .filter((n): n is string => typeof n === 'string');
  }

  /**
   * Finds an image by reference (`busybox`, `localhost:5000/app:v1`,
   * `app@sha256:…`), by manifest digest, or by config digest (the image ID).
   * @throws {@link NotFoundError} naming what was looked for
   */
  async get(ref: string | Image): Promise<Image> {
    if (ref instanceof Image) return ref;
    const index = await this.store.readIndex();
    if (isDigest(ref)) {
      if (index.manifests.some((d) => d.digest === ref)) return this.load(ref);
      for (const d of index.manifests) {
        const manifest = parseManifest(await this.store.readJson(d.digest));
        if (manifest.config.digest === ref) return this.load(d.digest);
      }
      throw new NotFoundError(`no image ${ref} in ${this.store.root}`);
    }
    const parsed = parseReference(ref);
    if (parsed.digest) {
      const found = index.manifests.find((d) => d.digest === parsed.digest);
      if (found) return this.load(parsed.digest);
    } else {
      const name = parsed.toString();
      const found = index.manifests.find((d) => d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] === name);
      if (found) return this.load(found.digest);
    }
    throw new NotFoundError(`no image ${parsed.toString()} in ${this.store.root}`);
  }

  /**
   * Every image in the store, tagged or not, once each; without `all`, not
   * the intermediate images of build steps (as `docker images`).
   */
  async list(options: ListImagesOptions = {}): Promise<Image[]> {
    const index = await this.store.readIndex();
    const tags = new Map<Digest, string[]>();
    for (const d of index.manifests) {
      if (!options.all && d.annotations?.[ANNOTATION_INTERMEDIATE] === 'true') continue;
      const list = tags.get(d.digest) ?? [];
      const name = d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME];
      if (name) list.push(name);
      tags.set(d.digest, list);
    }
    return Promise.all([...tags].map(([digest, t]) => this.load(digest, t)));
  }

  /** Points `ref` at `image` (moving it from any other image, which stays, untagged). */
  async tag(image: Image | string, ref: string): Promise<Image> {
    const target = await this.get(image);
    const parsed = parseReference(ref);
    if (parsed.digest) throw new NotFoundError(`cannot tag with a digest reference '${ref}'`, { code: 'ERR_INVALID_REFERENCE' });
    await this.record(target.digest, target.manifest, parsed);
    return this.load(target.digest);
  }

  /** Removes a tag; the image stays (untagged) until removed or pruned. */
  async untag(ref: string): Promise<void> {
    const name = parseReference(ref).toString();
    const removed = await this.store.updateIndex((manifests) => {
      const hit = manifests.find((d) => d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] === name);
      if (!hit) return { manifests, result: false };
      const rest = manifests.filter((d) => d !== hit);
      if (!rest.some((d) => d.digest === hit.digest)) rest.push(untaggedRecord(hit));
      return { manifests: rest, result: true };
    });
    if (!removed) throw new NotFoundError(`no tag ${name} in ${this.store.root}`);
  }

  /**
   * Removes an image. Given a tag of an image that has other tags, only that
   * tag goes (as `docker rmi` does) unless `force`; otherwise every record of
   * the image goes and its blobs are freed by the next prune.
   */
  async remove(ref: Image | string, options: RemoveImageOptions = {}): Promise<void> {
    const image = await this.get(ref);
    const tagName = typeof ref === 'string' && !isDigest(ref) ? parseReference(ref).toString() : undefined;
    await this.store.updateIndex((manifests) => {
      const records = manifests.filter((d) => d.digest === image.digest);
      if (tagName && !options.force && records.length > 1) {
        return { manifests: manifests.filter((d) => d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] !== tagName), result: undefined };
      }
      return { manifests: manifests.filter((d) => d.digest !== image.digest), result: undefined };
    });
  }

  /**
   * An image of one layer holding `dir`'s tree, with the given runtime config.
   */
  async fromDirectory(dir: string, options: FromDirectoryOptions = {}): Promise<Image> {
    const layer = await Layer.fromDirectory(dir);
    const created = options.created ?? new Date().toISOString();
    const config: ImageConfig = {
      created,
      architecture: options.architecture ?? hostArchitecture(),
      os: 'linux',
      config: options.config ?? {},
      rootfs: { type: 'layers', diff_ids: [] },
      history: [],
    };
    const history = historyEntry({ created, createdBy: `nacelle fromDirectory ${dir}`, ...options.history }, false);
    const tag = options.tag === undefined ? undefined : parseReference(options.tag);
    return this.commit(config, [], { layer, history }, tag);
  }

  /** @internal A new image derived from `base` by a layer or a config change. */
  async derive(
    base: Image,
    change: { layer?: Layer; config?: Partial<ContainerConfig>; history: HistoryInput; intermediate?: boolean },
  ): Promise<Image> {
    const doc = structuredClone(base.configDocument);
    const created = change.history.created ?? new Date().toISOString();
    doc.created = created;
    if (change.config) doc.config = { ...(doc.config ?? {}), ...change.config };
    const entry = historyEntry({ ...change.history, created }, !change.layer);
    return this.commit(doc, [...base.manifest.layers], { ...(change.layer ? { layer: change.layer } : {}), history: entry }, undefined, {
      intermediate: change.intermediate ?? false,
    });
  }

  /** Stores layer, config and manifest, and records the image (tagged or not). */
  async commit(
    config: ImageConfig,
    layers: Descriptor[],
    add: { layer?: Layer; history: HistoryEntry },
    tag?: ImageReference,
    options: { intermediate?: boolean } = {},
  ): Promise<Image> {
    return this.store.gcLock.with('shared', async () => {
      const doc: ImageConfig = { ...config, rootfs: { type: 'layers', diff_ids: [...config.rootfs.diff_ids] } };
      doc.history = [...(config.history ?? []), add.history];
      const descriptors = [...layers];
      if (add.layer) {
        await add.layer.storeIn(this.store);
        doc.rootfs.diff_ids.push(add.layer.diffId);
        descriptors.push({ mediaType: add.layer.mediaType, digest: add.layer.digest, size: add.layer.size });
      }
      const configBytes = Buffer.from(JSON.stringify(doc));
      const configBlob = await this.store.writeBlob(configBytes, { digest: digestOf(configBytes) });
      const manifest: ImageManifest = {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE_OCI_MANIFEST,
        config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: configBlob.digest, size: configBlob.size },
        layers: descriptors,
      };
      const manifestBytes = Buffer.from(JSON.stringify(manifest));
      const stored = await this.store.writeBlob(manifestBytes, { digest: digestOf(manifestBytes) });
      await this.record(stored.digest, manifest, tag, stored.size, options);
      return this.load(stored.digest);
    });
  }

  /**
   * Records a manifest in index.json, with a tag or as an untagged image
   * (`intermediate`: a build step's, hidden from {@link ImageService.list};
   * recording it again without the flag makes it an ordinary image). @internal
   */
  async record(digest: Digest, manifest: ImageManifest, tag?: ImageReference, size?: number, options: { intermediate?: boolean } = {}): Promise<void> {
    const bytes = size ?? (await this.store.size(digest)) ?? Buffer.byteLength(JSON.stringify(manifest));
    const descriptor: Descriptor = { mediaType: manifest.mediaType ?? MEDIA_TYPE_OCI_MANIFEST, digest, size: bytes };
    await this.store.updateIndex((manifests) => {
      let next = manifests;
      if (tag) {
        const name = tag.toString();
        const moved = next.find((d) => d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] === name);
        next = next.filter((d) => d !== moved && !(d.digest === digest && !d.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME]));
        if (moved && moved.digest !== digest && !next.some((d) => d.digest === moved.digest)) next.push(untaggedRecord(moved));
        next.push({
          ...descriptor,
          annotations: { [ANNOTATION_CONTAINERD_IMAGE_NAME]: name, [ANNOTATION_REF_NAME]: tag.tag ?? 'latest' },
        });
      } else if (!next.some((d) => d.digest === digest)) {
        next = [...next, options.intermediate ? { ...descriptor, annotations: { [ANNOTATION_INTERMEDIATE]: 'true' } } : descriptor];
      } else if (!options.intermediate) {
        // kept for its own sake now: no longer a build step's
        next = next.map((d) => (d.digest === digest && d.annotations?.[ANNOTATION_INTERMEDIATE] === 'true' ? untaggedRecord(d) : d));
      }
      return { manifests: next, result: undefined };
    });
  }

  /** Imports an OCI layout directory, an OCI archive or a docker-archive (detected). */
  async import(path: string, options: ImportOptions = {}): Promise<Image[]> {
    return importImages(this, path, options);
  }

  /** Exports several images into one layout or archive (several tags per archive). */
  async export(images: readonly (Image | string)[], path: string, options: ExportOptions = {}): Promise<void> {
    const resolved = await Promise.all(images.map((i) => this.get(i)));
    await exportImages(resolved, path, options);
  }

  /**
   * Pulls an image from a registry (`127.0.0.1:5000/app:v1`, `ghcr.io/o/a@sha256:…`),
   * fetching only the blobs the store lacks; from an index, the platform's
   * manifest (default linux on the host's architecture). Blob byte counts
   * come with the progress events; {@link pullImage} returns them too.
   */
  async pull(ref: string, options: PullOptions = {}): Promise<Image> {
    return (await pullImage(this, ref, options)).image;
  }

  /**
   * Pushes an image (or the image a local reference names) to `ref`,
   * uploading only the blobs the registry lacks. The result's `digest` is the
   * pushed manifest's digest.
   */
  async push(image: Image | string, ref: string, options: PushOptions = {}): Promise<PushResult> {
    return pushImage(this, image, ref, options);
  }

  /** What Dockerfile builds need that the image service does not own: set by the runtime. */
  #buildServices: { containers: import('../container/containers').ContainerService; cacheDir: string } | undefined;

  /** @internal Gives builds the container service (RUN steps) and the cache directory; the runtime calls this. */
  attachBuilder(containers: import('../container/containers').ContainerService, cacheDir: string): void {
    this.#buildServices = { containers, cacheDir };
  }

  /**
   * Builds an image from a Dockerfile in `contextDir`: each step a layer or a metadata-only
   * history entry, reusing cached steps (see `BuildOptions` in the build module).
   * @throws `DockerfileError` for a bad Dockerfile, a missing base image or stage, a source outside the context (with the line)
   * @throws `BuildStepError` when a RUN step fails; nothing is tagged
   */
  async build(contextDir: string, options: import('../build/types').BuildOptions = {}): Promise<Image> {
    const services = this.#buildServices;
    if (!services) {
      const { StateError } = await import('../errors');
      throw new StateError('this image service has no container service attached: open it through Runtime.open to build');
    }
    const [{ Builder }, { BuildCache }] = await Promise.all([import('../build/builder'), import('../build/cache')]);
    const builder = new Builder({ images: this, containers: services.containers, cache: new BuildCache(services.cacheDir) });
    return builder.build(contextDir, options);
  }
}

function untaggedRecord(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}

