/**
 * Helpers shared by pack, apply and diff: path order, xattrs, device numbers, overlay whiteouts.
 * @module
 * @internal
 */
import type { Stats } from 'node:fs';
import { fromNativeError } from '../../errors';
import { native } from '../../native';

/** The prefix of an OCI whiteout file name. */
export const WHITEOUT_PREFIX = '.wh.';
/** The OCI opaque-directory marker. */
export const OPAQUE_MARKER = '.wh..wh..opq';
/** The xattr overlayfs sets on an opaque directory. */
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque';

/** Whether an xattr is host-specific and never goes into or comes out of a layer. */
export function isHostXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name === 'security.selinux';
}

/**
 * A sort key for an in-layer path: bytewise, with `/` lower than any byte, which is the
 * order of a depth-first walk that sorts each directory's names bytewise (what GNU tar
 * `--sort=name` and Go's filepath.Walk produce: a directory comes right before its contents).
 */
export function pathKey(rel: string): Buffer {
  const b = Buffer.from(rel, 'utf8');
  for (let i = 0; i < b.length; i++) if (b[i] === 0x2f) b[i] = 0;
  return b;
}

/** Sorts names (or relative paths) in layer order. */
export function sortPaths(paths: readonly string[]): string[] {
  return paths
    .map((p) => [pathKey(p), p] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]))
    .map((x) => x[1]);
}

/** Splits st_rdev into major and minor as glibc's major()/minor() do. */
export function splitRdev(rdev: number): { major: number; minor: number } {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn & 0xffffffffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn & 0xffffffffn);
  return { major: Number(major), minor: Number(minor) };
}

/** Whether a stat is an overlayfs whiteout: a character device 0:0. */
export function isOverlayWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string'
    ? (err as { code: string }).code
    : undefined;
}

/** The `code` of an error, if it has one. */
export { errnoCode };

/**
 * The extended attributes of `path` (not following a symlink), sorted by name, without the
 * host-specific ones; empty where the filesystem has none.
 */
export function readXattrs(path: string): Array<[string, Buffer]> {
  const n = native();
  let names: string[];
  try {
    names = n.llistxattr(path);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return [];
    throw fromNativeError(err);
  }
  if (names.length === 0) return [];
  const out: Array<[string, Buffer]> = [];
  for (const name of names.sort()) {
    if (isHostXattr(name)) continue;
    let value: Buffer | null;
    try {
      value = n.lgetxattr(path, name);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENODATA' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') continue;
      throw fromNativeError(err);
    }
    if (value !== null) out.push([name, value]);
  }
  return out;
}

/** Whether `path` carries overlayfs's opaque xattr (`trusted.overlay.opaque=y`). */
export function isOverlayOpaque(path: string): boolean {
  try {
    const v = native().lgetxattr(path, OVERLAY_OPAQUE_XATTR);
    return v !== null && v.toString() === 'y';
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENODATA' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOENT') return false;
    throw fromNativeError(err);
  }
}
