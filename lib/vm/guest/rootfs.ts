/**
 * A read-only walk over an image's root filesystem as overlayfs would show it,
 * straight from the snapshotter's unpacked layers: the top layer wins, overlay
 * whiteouts (character devices 0:0) delete what lies below, and a directory
 * marked `trusted.overlay.opaque=y` hides the lower layers' contents. The
 * initramfs and disk builders read the image through this, so no merged copy
 * of the image is ever written.
 * @module
 */
import type { Stats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError } from '../../errors';
import { errnoCode, isOverlayOpaque, isOverlayWhiteout } from '../../image/tar/common';

/** One file, directory or symlink of the merged root filesystem. */
export interface RootfsEntry {
  /** Path inside the image without a leading slash (`bin/sh`); `''` is the root directory. */
  path: string;
  /** Where the entry's bytes live on the host (in the layer that provides it). */
  source: string;
  /** lstat of `source`. */
  stat: Stats;
  /** The symlink's target, for symlinks. */
  linkTarget?: string;
}

/**
 * Normalizes the `rootfs` argument the builders take: one directory, or
 * overlay lowerdirs with the top layer LAST (the order layers are applied).
 * Returns the directories top layer first.
 */
export function layersTopFirst(rootfs: string | readonly string[]): string[] {
  const list = typeof rootfs === 'string' ? [rootfs] : [...rootfs].reverse();
  if (list.length === 0) throw new InvalidArgumentError('rootfs: no directories given');
  return list;
}

/** Names in bytewise order, so archives built from the same layers are identical. */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

async function readNames(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
}

/**
 * Walks the merged tree depth first, a directory before its contents, names in
 * bytewise order. Skips sockets and whiteouts; yields devices and FIFOs (the
 * caller decides whether to keep them).
 *
 * @param rootfs - one unpacked directory, or lowerdirs with the top layer last
 */
export async function* walkRootfs(rootfs: string | readonly string[]): AsyncGenerator<RootfsEntry> {
  const layers = layersTopFirst(rootfs);
  for (const dir of layers) {
    const st = await lstat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new InvalidArgumentError(`rootfs: ${dir} is not a directory`);
  }
  // The root merges every layer down to the first opaque one.
  const rootDirs: string[] = [];
  for (const dir of layers) {
    rootDirs.push(dir);
    if (isOverlayOpaque(dir)) break;
  }
  const top = rootDirs[0] as string;
  yield { path: '', source: top, stat: await lstat(top) };
  yield* walkDir('', rootDirs);
}

/** `dirs`: the layers' copies of directory `rel`, top first, already cut at an opaque one. */
async function* walkDir(rel: string, dirs: readonly string[]): AsyncGenerator<RootfsEntry> {
  // name -> the entry that wins, plus the lower directories merged into it
  const winners = new Map<string, { source: string; stat: Stats; mergeDirs: string[]; closed: boolean } | null>();
  for (const dir of dirs) {
    for (const name of await readNames(dir)) {
      const abs = join(dir, name);
      const prev = winners.get(name);
      if (prev === null) continue; // whited out above
      if (prev === undefined) {
        const st = await lstat(abs);
        if (isOverlayWhiteout(st)) {
          winners.set(name, null);
          continue;
        }
        const isDir = st.isDirectory();
        winners.set(name, { source: abs, stat: st, mergeDirs: isDir ? [abs] : [], closed: !isDir || isOverlayOpaque(abs) });
        continue;
      }
      if (prev.closed) continue;
      // a directory from a higher layer merges with lower directories of the same name
      const st = await lstat(abs);
      if (st.isDirectory()) {
        prev.mergeDirs.push(abs);
        if (isOverlayOpaque(abs)) prev.closed = true;
      } else prev.closed = true; // a file below a directory is hidden, and so is all beneath it
    }
  }
  const names = [...winners.keys()].sort(byteOrder);
  for (const name of names) {
    const w = winners.get(name);
    if (!w) continue;
    const path = rel === '' ? name : `${rel}/${name}`;
    if (w.stat.isSocket()) continue;
    if (w.stat.isSymbolicLink()) {
      yield { path, source: w.source, stat: w.stat, linkTarget: await readlink(w.source) };
      continue;
    }
    yield { path, source: w.source, stat: w.stat };
    if (w.stat.isDirectory()) yield* walkDir(path, w.mergeDirs);
  }
}
