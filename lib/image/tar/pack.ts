/**
 * Packs a directory tree into a layer tar, deterministically.
 * @module
 */
import { lstat, readdir } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { fromNativeError } from '../../errors';
import type { Digest } from '../../oci/digest';
import { tarChunks, writeLayer, type PackItem } from './writer';

/** How to write a layer blob. */
export interface PackOptions {
  /** `gzip` (the default) or `none` for a plain tar. */
  compression?: 'gzip' | 'none';
  /** zlib level from 0 to 9 (default 6) when compressing. */
  gzipLevel?: number;
}

/** What was written. */
export interface PackResult {
  /** sha256 of the blob as written to the output (compressed when compressing). */
  digest: Digest;
  /** sha256 of the uncompressed tar: the layer's diffID. */
  diffId: Digest;
  /** Size of the blob in bytes, as written to the output. */
  size: number;
}

/** How many lstat calls run at once while listing a directory. */
const STAT_CONCURRENCY = 32;

/**
 * Names of a directory in layer order (bytewise).
 * @internal
 */
export async function sortedNames(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names
    .map((n) => [Buffer.from(n, 'utf8'), n] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]))
    .map((x) => x[1]);
}

/**
 * Walks `root` depth-first, each directory's names sorted bytewise; the root itself is not yielded.
 * @internal
 */
export async function* walkTree(root: string, rel = ''): AsyncGenerator<PackItem & { kind: 'fs' }> {
  const dirAbs = rel === '' ? root : `${root}/${rel}`;
  const names = await sortedNames(dirAbs);
  for (let i = 0; i < names.length; i += STAT_CONCURRENCY) {
    const slice = names.slice(i, i + STAT_CONCURRENCY);
    const stats = await Promise.all(slice.map((n) => lstat(`${dirAbs}/${n}`)));
    for (let j = 0; j < slice.length; j++) {
      const name = slice[j] as string;
      const st = stats[j];
      if (!st) continue;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      yield { kind: 'fs', rel: childRel, abs: `${dirAbs}/${name}`, st };
      if (st.isDirectory()) yield* walkTree(root, childRel);
    }
  }
}

/**
 * Packs everything under `dir` (not `dir` itself) into a layer tar written to `out`, which is
 * ended. The tar is deterministic: entries in bytewise path order with each directory right
 * before its contents, names relative (`etc/`, `etc/hosts`), uid/gid/mode/mtime (whole
 * seconds) as on disk, no user or group names and no access or change times; xattrs as PAX
 * `SCHILY.xattr.*` records (without `trusted.overlay.*` and `security.selinux`); hardlinks
 * (same device and inode) after the first as link entries; symlinks, devices and fifos;
 * sockets are left out. The gzip header carries no name and mtime 0.
 *
 * @param dir - the tree to pack
 * @param out - where the blob goes; ended when the pack is complete
 * @param options - compression
 * @returns the blob digest and size and the tar's diffID
 * @throws {@link InvalidArgumentError} for bad options
 * @throws {@link SystemCallError} when the tree cannot be read
 */
export async function packDirectory(dir: string, out: Writable, options: PackOptions = {}): Promise<PackResult> {
  try {
    const root = dir.length > 1 ? dir.replace(/\/+$/, '') : dir;
    return await writeLayer(tarChunks(walkTree(root)), out, options);
  } catch (err) {
    throw fromNativeError(err);
  }
}
