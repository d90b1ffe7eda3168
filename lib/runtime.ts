/**
 * Runtime: one root directory holding the content store, the snapshots and
 * (later) container and VM state, with garbage collection across them.
 * @module
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { removeEmptyCgroupParents } from './container/cgroups/cgroup';
import { ContainerService } from './container/containers';
import { ImageService } from './image/images';
import { Snapshotter } from './image/snapshots';
import { type Digest, isDigest } from './oci/digest';
import { isIndexMediaType } from './oci/mediatypes';
import { parseIndex, parseImageConfig, parseManifest } from './oci/types';
import { ContentStore } from './store/content-store';
import { VmService } from './vm/vms';

/** Where a runtime keeps its state. */
export interface RuntimeOptions {
  /**
   * Root directory. Default: `$NACELLE_ROOT`, else `/var/lib/nacelle` for root,
   * else `$XDG_DATA_HOME/nacelle` (`~/.local/share/nacelle`).
   */
  root?: string;
}

/** How many things of one kind were removed, and the bytes freed. */
export interface PruneCount {
  /** Number removed. */
  count: number;
  /** Bytes freed. */
  bytes: number;
}

/** What {@link Runtime.prune} freed. */
export interface PruneResult {
  /** Blobs removed from the content store. */
  blobs: PruneCount;
  /** Unpacked layers removed. */
  snapshots: PruneCount;
  /** Bytes of interrupted writes removed from the ingest area. */
  ingestBytes: number;
  /** Ids of exited containers removed. */
  containers: string[];
  /** Ids of VMs whose process is gone (their state directories removed). */
  vms: string[];
  /** Bytes of per-image VM boot files (initramfs archives, erofs disks) of images no longer in the store. */
  vmCacheBytes: number;
}

/** The default root directory for this user. */
export function defaultRoot(): string {
  if (process.env.NACELLE_ROOT) return resolve(process.env.NACELLE_ROOT);
  if (process.geteuid?.() === 0) return '/var/lib/nacelle';
  const data = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(data, 'nacelle');
}

/** One nacelle root: images, layers, snapshots. */
export class Runtime {
  /** The root directory. */
  readonly root: string;
  /** Images: get, list, tag, remove, fromDirectory, import, export. */
  readonly images: ImageService;
  /** Unpacked layers shared by every image and container. */
  readonly snapshots: Snapshotter;
  /** Containers: create, run, get, list, prune. */
  readonly containers: ContainerService;
  /** Virtual machines: run an image's command in a VM (qemu backend; the built-in KVM monitor later). */
  readonly vms: VmService;
  /** The OCI layout holding every blob. @internal */
  readonly store: ContentStore;

  private constructor(root: string, store: ContentStore, snapshots: Snapshotter) {
    this.root = root;
    this.store = store;
    this.snapshots = snapshots;
    this.images = new ImageService(store, snapshots);
    this.containers = new ContainerService(join(root, 'containers'), this.images, join(root, 'init-layer'));
    this.images.attachBuilder(this.containers, join(root, 'build-cache'));
    this.vms = new VmService(join(root, 'vms'), this.images);
  }

  /** Opens (creating if needed) the runtime rooted at `options.root` or the default root. */
  static async open(options: RuntimeOptions = {}): Promise<Runtime> {
    const root = resolve(options.root ?? defaultRoot());
    const store = await ContentStore.open(join(root, 'content'));
    return new Runtime(root, store, new Snapshotter(join(root, 'snapshots')));
  }

  /**
   * Removes exited containers, then every blob and snapshot that no image
   * (tagged or not) or container references, and writes interrupted by a crash. Runs under the store's exclusive lock,
   * so writers in other processes wait rather than lose blobs.
   */
  async prune(): Promise<PruneResult> {
    const containers = await this.containers.prune();
    const vms = await this.vms.prune();
    if (process.geteuid?.() === 0) await removeEmptyCgroupParents().catch(() => undefined); // (kept between containers otherwise)
    const inUse = await this.containers.imagesInUse();
    return this.store.gcLock.with('exclusive', async () => {
      const liveBlobs = new Set<Digest>();
      const liveLayers = new Set<Digest>();
      const index = await this.store.readIndex();
      const visit = async (digest: Digest, mediaType: string): Promise<void> => {
        if (liveBlobs.has(digest)) return;
        liveBlobs.add(digest);
        if (!(await this.store.has(digest))) return;
        if (isIndexMediaType(mediaType)) {
          for (const child of parseIndex(await this.store.readJson(digest)).manifests) await visit(child.digest, child.mediaType);
          return;
        }
        const manifest = parseManifest(await this.store.readJson(digest));
        liveBlobs.add(manifest.config.digest);
        for (const layer of manifest.layers) liveBlobs.add(layer.digest);
        if (await this.store.has(manifest.config.digest)) {
          const config = parseImageConfig(await this.store.readJson(manifest.config.digest));
          for (const diffId of config.rootfs.diff_ids) liveLayers.add(diffId);
        }
      };
      for (const d of index.manifests) await visit(d.digest, d.mediaType);
      for (const digest of inUse) if (isDigest(digest)) await visit(digest, 'application/vnd.oci.image.manifest.v1+json');

      const result: PruneResult = { blobs: { count: 0, bytes: 0 }, snapshots: { count: 0, bytes: 0 }, ingestBytes: 0, containers, vms, vmCacheBytes: 0 };
      result.vmCacheBytes = await this.vms.pruneCaches(new Set([...index.manifests.map((d) => d.digest), ...inUse]));
      for (const blob of await this.store.listBlobs()) {
        if (liveBlobs.has(blob.digest)) continue;
        result.blobs.bytes += await this.store.deleteBlob(blob.digest);
        result.blobs.count++;
      }
      for (const snap of await this.snapshots.list()) {
        if (liveLayers.has(snap.diffId) || !isDigest(snap.diffId)) continue;
        await this.snapshots.remove(snap.diffId);
        result.snapshots.count++;
        result.snapshots.bytes += snap.size;
      }
      await this.snapshots.clearTemporary();
      result.ingestBytes = await this.store.clearIngest();
      return result;
    });
  }
}
