/**
 * The snapshotter: every layer unpacked once into `snapshots/<diffID hex>/fs`,
 * in overlayfs form (whiteouts as 0:0 character devices, opaque directories
 * marked with trusted.overlay.opaque), so an unpacked layer does not depend on
 * the layers below it and one snapshot serves every image and container that
 * uses the layer. A snapshot is unpacked under a temporary name and renamed
 * into place, like containerd's overlay snapshotter, so a half-unpacked layer
 * is never visible and two processes unpacking the same layer both succeed.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../store/atomic';
import { diskUsage } from '../store/du';
import { type Digest, parseDigest } from '../oci/digest';
import type { Image } from './image';
import type { Layer } from './layer';
import { processAlive } from '../process/alive';

/** One unpacked layer. */
export interface SnapshotInfo {
  /** The layer's diffID: the snapshot's identity. */
  diffId: Digest;
  /** The directory to use as an overlayfs lowerdir. */
  path: string;
  /** Bytes on disk (blocks, as `du` counts them). */
  size: number;
}

/** Unpacks layers once and hands out their directories. */
export class Snapshotter {
  /** The directory holding every snapshot. */
  readonly root: string;
  readonly #inFlight = new Map<Digest, Promise<string>>();

  /** @param root - `<runtime root>/snapshots` */
  constructor(root: string) {
    this.root = root;
  }

  /** The lowerdir a layer's snapshot has (or will have). */
  path(diffId: Digest): string {
    return join(this.root, parseDigest(diffId).hex, 'fs');
  }

  /** Whether the layer is unpacked. */
  async has(diffId: Digest): Promise<boolean> {
    return stat(join(this.root, parseDigest(diffId).hex, 'meta.json')).then(
      () => true,
      () => false,
    );
  }

  /** Unpacks `layer` unless it already is; returns its lowerdir. */
  async ensure(layer: Layer): Promise<string> {
    const pending = this.#inFlight.get(layer.diffId);
    if (pending) return pending;
    const work = this.#ensure(layer).finally(() => this.#inFlight.delete(layer.diffId));
    this.#inFlight.set(layer.diffId, work);
    return work;
  }

  async #ensure(layer: Layer): Promise<string> {
    const final = join(this.root, parseDigest(layer.diffId).hex);
    if (await this.has(layer.diffId)) return join(final, 'fs');
    await mkdir(this.root, { recursive: true });
    const tmp = join(this.root, `tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      await mkdir(join(tmp, 'fs'), { recursive: true, mode: 0o755 });
      const result = await layer.apply(join(tmp, 'fs'), { whiteouts: 'overlay' });
      const size = await diskUsage(join(tmp, 'fs'));
      const meta = { diffId: layer.diffId, digest: layer.digest, size, entries: result.entries };
      await writeFile(join(tmp, 'meta.json'), JSON.stringify(meta));
      try {
        await rename(tmp, final);
      } catch (err) {
        // Another process finished the same layer first: use theirs.
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
        await rm(tmp, { recursive: true, force: true });
      }
      await fsyncDir(this.root);
      return join(final, 'fs');
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  /** Every layer of `image` unpacked; its overlayfs lowerdirs, top layer first. */
  async prepare(image: Image): Promise<string[]> {
    const dirs: string[] = [];
    for (const layer of image.layers) dirs.push(await this.ensure(layer));
    return dirs.reverse();
  }

  /** Every snapshot on disk. */
  async list(): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (name.startsWith('tmp-')) continue;
      try {
        const meta = JSON.parse(await readFile(join(this.root, name, 'meta.json'), 'utf8')) as { diffId: Digest; size: number };
        out.push({ diffId: meta.diffId, path: join(this.root, name, 'fs'), size: meta.size });
      } catch {
        // not a finished snapshot
      }
    }
    return out;
  }

  /** Removes a snapshot (the caller makes sure nothing uses it). */
  async remove(diffId: Digest): Promise<void> {
    await rm(join(this.root, parseDigest(diffId).hex), { recursive: true, force: true });
  }

  /** Removes unpacks that were interrupted: temporary directories whose process has died. */
  async clearTemporary(): Promise<void> {
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      const pid = /^tmp-(\d+)-/.exec(name)?.[1];
      if (pid === undefined || processAlive(Number(pid))) continue;
      await rm(join(this.root, name), { recursive: true, force: true });
    }
  }
}

