/**
 * Image: an immutable manifest + config + ordered layers in a store.
 * @module
 */
import { mkdir } from 'node:fs/promises';
import type { Digest } from '../oci/digest';
import type { ContainerConfig, HistoryEntry, ImageConfig, ImageManifest } from '../oci/types';
import type { ExportOptions } from './archive';
import type { ImageService } from './images';
import { Layer } from './layer';

/** A history entry as callers give it; `created` defaults to now. */
export interface HistoryInput {
  /** The command or action that made the change, e.g. `COPY app /app`. */
  createdBy?: string;
  /** A free-form comment. */
  comment?: string;
  /** Author of the change. */
  author?: string;
  /** ISO 8601 time; default now (pass a fixed value for reproducible digests). */
  created?: string;
}

/**
 * An image: immutable. Methods that change something return a new Image,
 * recorded in the store (untagged until tagged).
 */
export class Image {
  /** Digest of the image manifest: the image's identity. */
  readonly digest: Digest;
  /** The manifest. */
  readonly manifest: ImageManifest;
  /** The whole image config document (architecture, os, rootfs, history, config). */
  readonly configDocument: ImageConfig;
  /** Normalized references that pointed here when this object was loaded. */
  readonly tags: readonly string[];
  /** The service that stores this image. @internal */
  readonly service: ImageService;
  readonly #layers: readonly Layer[];

  /** @internal */
  constructor(service: ImageService, digest: Digest, manifest: ImageManifest, config: ImageConfig, tags: readonly string[]) {
    this.service = service;
    this.digest = digest;
    this.manifest = manifest;
    this.configDocument = config;
    this.tags = tags;
    const diffIds = config.rootfs.diff_ids;
    this.#layers = manifest.layers.map((d, i) =>
      Layer.fromStore(service.store, { digest: d.digest, size: d.size, mediaType: d.mediaType, diffId: diffIds[i]! }),
    );
  }

  /** Digest of the config blob (what Docker calls the image ID). */
  get id(): Digest {
    return this.manifest.config.digest;
  }

  /** The runtime config: Env, Cmd, Entrypoint, WorkingDir, User, Labels, … */
  get config(): ContainerConfig {
    return this.configDocument.config ?? {};
  }

  /** Layers, base first. */
  get layers(): readonly Layer[] {
    return this.#layers;
  }

  /** History, oldest first; entries with `empty_layer` made no layer. */
  get history(): readonly HistoryEntry[] {
    return this.configDocument.history ?? [];
  }

  /** CPU architecture (`amd64`, `arm64`). */
  get architecture(): string {
    return this.configDocument.architecture;
  }

  /** Operating system (`linux`). */
  get os(): string {
    return this.configDocument.os;
  }

  /** Total size of the layer blobs in bytes. */
  get size(): number {
    return this.manifest.layers.reduce((n, l) => n + l.size, 0);
  }

  /** A new image with `layer` on top and a history entry for it. */
  async withLayer(layer: Layer, history: HistoryInput = {}): Promise<Image> {
    return this.service.derive(this, { layer, history });
  }

  /** A new image with runtime config fields replaced (a metadata-only history entry). */
  async withConfig(config: Partial<ContainerConfig>, history: HistoryInput = {}): Promise<Image> {
    return this.service.derive(this, { config, history });
  }

  /** Writes the image as an OCI layout directory, an OCI archive, or a docker-archive. */
  async export(path: string, options: ExportOptions = {}): Promise<void> {
    await this.service.export([this], path, options);
  }

  /** Applies every layer, in order, into `dir` (a plain tree, whiteouts applied). */
  async unpack(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true });
    for (const layer of this.#layers) await layer.apply(dir, { whiteouts: 'apply' });
  }

  /** Overlayfs lowerdirs for this image, nearest (top) layer first, unpacking any layer not yet unpacked. */
  async lowerDirs(): Promise<string[]> {
    return this.service.snapshots.prepare(this);
  }
}
