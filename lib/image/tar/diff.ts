/**
 * What changed between trees, as `docker diff` lists it, and a layer tar holding just those
 * changes.
 * @module
 */
import type { Dirent, Stats } from 'node:fs';
import { constants as fsc } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { fromNativeError, InvalidArgumentError } from '../../errors';
import { isOverlayOpaque, isOverlayWhiteout, OPAQUE_MARKER, readXattrs, sortPaths, pathKey, WHITEOUT_PREFIX, errnoCode } from './common';
import { LayerError } from './errors';
import { sortedNames, type PackOptions, type PackResult } from './pack';
import { tarChunks, writeLayer, type PackItem } from './writer';

/** One changed path. */
export interface Change {
  /** `A` added, `C` changed (metadata, content, type, or something below a directory), `D` deleted. */
  kind: 'A' | 'C' | 'D';
  /** Absolute in-container path, e.g. `/etc/hosts`. */
  path: string;
}

function sortChanges(changes: Change[]): Change[] {
  return changes
    .map((c) => [pathKey(c.path.slice(1)), c] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]))
    .map((x) => x[1]);
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}

/** A name visible in the merged view of the lower layers. */
interface LowerName {
  isDir: boolean;
  /** For a directory: the lowers (indices, nearest first) whose directories make it up. */
  lowers: number[];
}

/**
 * The merged view of the lower layers for one directory: what overlayfs would show there
 * without the upper. `lowers` are the indices of the lowers whose directory at `rel` is part
 * of the merge (nearest first, ending at an opaque one).
 */
async function lowerView(lowerRoots: readonly string[], rel: string, lowers: readonly number[]): Promise<Map<string, LowerName>> {
  const seen = new Map<string, { visible: boolean; isDir: boolean; lowers: number[]; closed: boolean }>();
  for (const i of lowers) {
    const dir = rel === '' ? (lowerRoots[i] as string) : `${lowerRoots[i] as string}/${rel}`;
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') continue;
      throw err;
    }
    for (const d of entries) {
      const abs = `${dir}/${d.name}`;
      const s = seen.get(d.name);
      if (!s) {
        if (d.isCharacterDevice()) {
          const st = await lstat(abs);
          if (isOverlayWhiteout(st)) {
            seen.set(d.name, { visible: false, isDir: false, lowers: [], closed: true });
            continue;
          }
        }
        if (d.isDirectory()) seen.set(d.name, { visible: true, isDir: true, lowers: [i], closed: isOverlayOpaque(abs) });
        else seen.set(d.name, { visible: true, isDir: false, lowers: [], closed: true });
      } else if (!s.closed) {
        // a directory from a nearer lower merges with directories below it, up to an opaque one
        if (d.isDirectory()) {
          s.lowers.push(i);
          if (isOverlayOpaque(abs)) s.closed = true;
        } else s.closed = true;
      }
    }
  }
  const view = new Map<string, LowerName>();
  for (const [name, s] of seen) if (s.visible) view.set(name, { isDir: s.isDir, lowers: s.lowers });
  return view;
}

/**
 * The changes an overlayfs upper directory makes to its lower directories, like
 * `docker diff`: `A` for what no lower has, `C` for what one had (directories that hold
 * changes included, as the upper holds them), `D` for overlay whiteouts (character
 * devices 0:0) and, under an opaque directory (`trusted.overlay.opaque=y`), for everything
 * the lowers had there that the upper does not. Sorted in layer order.
 *
 * @param upper - the overlay upperdir
 * @param lowers - the lowerdirs, nearest first (as in overlayfs's `lowerdir=` option)
 */
export async function diffOverlayUpper(upper: string, lowers: readonly string[]): Promise<Change[]> {
  const changes: Change[] = [];
  const rootLowers: number[] = [];
  for (let i = 0; i < lowers.length; i++) {
    rootLowers.push(i);
    if (isOverlayOpaque(lowers[i] as string)) break;
  }
  const walk = async (rel: string, view: Map<string, LowerName> | null, opaque: boolean): Promise<void> => {
    const dir = rel === '' ? upper : `${upper}/${rel}`;
    const names = await sortedNames(dir);
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const abs = `${dir}/${name}`;
      const st = await lstat(abs);
      if (isOverlayWhiteout(st)) {
        changes.push({ kind: 'D', path: `/${childRel}` });
        continue;
      }
      const below = view?.get(name);
      changes.push({ kind: below ? 'C' : 'A', path: `/${childRel}` });
      if (st.isDirectory()) {
        const childView = below?.isDir ? await lowerView(lowers, childRel, below.lowers) : null;
        await walk(childRel, childView, opaque || isOverlayOpaque(abs));
      }
    }
    if (opaque && view) {
      const present = new Set(names);
      for (const name of view.keys()) {
        if (!present.has(name)) changes.push({ kind: 'D', path: `/${rel === '' ? name : `${rel}/${name}`}` });
      }
    }
  };
  try {
    const rootView = await lowerView(lowers, '', rootLowers);
    await walk('', rootView, isOverlayOpaque(upper));
  } catch (err) {
    throw fromNativeError(err);
  }
  return sortChanges(changes);
}

function sameXattrs(a: Array<[string, Buffer]>, b: Array<[string, Buffer]>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as [string, Buffer];
    const y = b[i] as [string, Buffer];
    if (x[0] !== y[0] || !x[1].equals(y[1])) return false;
  }
  return true;
}

async function sameContent(a: string, b: string, size: number): Promise<boolean> {
  const fa = await open(a, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const fb = await open(b, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      const chunk = Math.min(size, 1024 * 1024) || 1;
      const ba = Buffer.allocUnsafe(chunk);
      const bb = Buffer.allocUnsafe(chunk);
      for (;;) {
        const [ra, rb] = await Promise.all([fa.read(ba, 0, chunk, null), fb.read(bb, 0, chunk, null)]);
        if (ra.bytesRead !== rb.bytesRead) return false;
        if (ra.bytesRead === 0) return true;
        if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
      }
    } finally {
      await fb.close();
    }
  } finally {
    await fa.close();
  }
}

/** Whether two entries of the same type differ in what a layer records (directories: not their contents). */
async function differs(a: string, sa: Stats, b: string, sb: Stats): Promise<boolean> {
  if (sa.mode !== sb.mode || sa.uid !== sb.uid || sa.gid !== sb.gid) return true;
  if ((sa.isCharacterDevice() || sa.isBlockDevice()) && sa.rdev !== sb.rdev) return true;
  if (!sameXattrs(readXattrs(a), readXattrs(b))) return true;
  if (sa.isSymbolicLink()) return (await readlink(a)) !== (await readlink(b));
  if (sa.isFile()) {
    // a new or removed hardlink changes the link count: packing both paths keeps them linked
    if (sa.size !== sb.size || sa.nlink !== sb.nlink) return true;
    if (sa.mtimeMs === sb.mtimeMs) return false;
    return !(await sameContent(a, b, sa.size));
  }
  return false;
}

const S_IFMT = 0o170000;

/**
 * The changes that turn tree `base` into tree `target`, like `docker diff`: `A` for each
 * path only in `target` (everything inside a new directory too), `D` for each path only in
 * `base` (not what is inside it), `C` for a path whose type, mode, owner, xattrs, device
 * number, symlink target, link count or content changed, and for every directory below which
 * something changed. File content is read only when the sizes are equal and the mtimes differ; a file
 * whose content and metadata are the same counts as unchanged whatever its mtime, and so
 * does a directory whose only change is its mtime. Sorted in layer order.
 *
 * @param base - the tree before
 * @param target - the tree after
 */
export async function diffTrees(base: string, target: string): Promise<Change[]> {
  const changes: Change[] = [];
  const addAll = async (rel: string): Promise<void> => {
    for (const name of await sortedNames(`${target}/${rel}`)) {
      const childRel = `${rel}/${name}`;
      changes.push({ kind: 'A', path: `/${childRel}` });
      const st = await lstat(`${target}/${childRel}`);
      if (st.isDirectory()) await addAll(childRel);
    }
  };
  const compare = async (rel: string): Promise<boolean> => {
    const bdir = rel === '' ? base : `${base}/${rel}`;
    const tdir = rel === '' ? target : `${target}/${rel}`;
    const [bnames, tnames] = await Promise.all([readdir(bdir), readdir(tdir)]);
    const bset = new Set(bnames);
    const tset = new Set(tnames);
    let changed = false;
    for (const name of sortPaths([...new Set([...bnames, ...tnames])])) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const path = `/${childRel}`;
      if (!bset.has(name)) {
        changed = true;
        changes.push({ kind: 'A', path });
        if ((await lstat(`${tdir}/${name}`)).isDirectory()) await addAll(childRel);
        continue;
      }
      if (!tset.has(name)) {
        changed = true;
        changes.push({ kind: 'D', path });
        continue;
      }
      const [sb, st] = await Promise.all([lstat(`${bdir}/${name}`), lstat(`${tdir}/${name}`)]);
      if ((sb.mode & S_IFMT) !== (st.mode & S_IFMT)) {
        changed = true;
        changes.push({ kind: 'C', path });
        if (st.isDirectory()) await addAll(childRel);
        continue;
      }
      if (st.isDirectory()) {
        const inner = await compare(childRel);
        if (inner || (await differs(`${bdir}/${name}`, sb, `${tdir}/${name}`, st))) {
          changed = true;
          changes.push({ kind: 'C', path });
        }
        continue;
      }
      if (await differs(`${bdir}/${name}`, sb, `${tdir}/${name}`, st)) {
        changed = true;
        changes.push({ kind: 'C', path });
      }
    }
    return changed;
  };
  try {
    await compare('');
  } catch (err) {
    throw fromNativeError(err);
  }
  return sortChanges(changes);
}

/** An in-layer relative path from a change's absolute path; refuses `..`. */
function changeRel(path: string): string {
  const parts: string[] = [];
  for (const p of path.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw new InvalidArgumentError(`change path '${path}' has a '..' component`);
    parts.push(p);
  }
  return parts.join('/');
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i === -1 ? '' : rel.slice(0, i);
}

/**
 * Packs the given changes into a layer tar written to `out` (which is ended): each `A`/`C`
 * path as an entry taken from `root`, with its parent directories; each `D` as a
 * `.wh.<name>` file; a directory carrying overlayfs's opaque xattr gets a `.wh..wh..opq`
 * marker (and the `D`s below it are left out, the marker covers them). The same
 * deterministic format as {@link packDirectory}.
 *
 * @param root - the tree holding the new content: an overlay upperdir or the target tree
 * @param changes - from {@link diffOverlayUpper} or {@link diffTrees}
 * @param out - where the blob goes; ended when the pack is complete
 * @param options - compression
 * @throws {@link LayerError} `ERR_LAYER_INVALID` when an `A` or `C` path is missing from `root`
 */
export async function packChanges(root: string, changes: readonly Change[], out: Writable, options: PackOptions = {}): Promise<PackResult> {
  const rootDir = root.length > 1 ? root.replace(/\/+$/, '') : root;
  try {
    const fsPaths = new Set<string>();
    const listed = new Set<string>(); // A and C paths, which must exist
    const whiteouts = new Map<string, string>(); // marker path → parent dir
    const addParents = (rel: string): void => {
      for (let p = parentOf(rel); p !== '' && !fsPaths.has(p); p = parentOf(p)) fsPaths.add(p);
    };
    for (const change of changes) {
      const rel = changeRel(change.path);
      if (rel === '') continue;
      if (change.kind === 'D') {
        const parent = parentOf(rel);
        const base = rel.slice(parent === '' ? 0 : parent.length + 1);
        whiteouts.set(parent === '' ? `${WHITEOUT_PREFIX}${base}` : `${parent}/${WHITEOUT_PREFIX}${base}`, parent);
        addParents(rel);
      } else if (change.kind === 'A' || change.kind === 'C') {
        fsPaths.add(rel);
        listed.add(rel);
        addParents(rel);
      } else {
        throw new InvalidArgumentError(`unknown change kind '${String((change as Change).kind)}' for '${change.path}'`);
      }
    }
    // stat everything up front: parents of whiteouts may be missing; opaque directories get a marker
    const stats = new Map<string, Stats>();
    const opaque = new Set<string>();
    if (isOverlayOpaque(rootDir)) opaque.add('');
    for (const rel of fsPaths) {
      const st = await lstatOrNull(`${rootDir}/${rel}`);
      if (!st) continue;
      stats.set(rel, st);
      if (st.isDirectory() && isOverlayOpaque(`${rootDir}/${rel}`)) opaque.add(rel);
    }
    for (const rel of listed) {
      if (!stats.has(rel)) {
        throw new LayerError(`'${rel}' is listed as added or changed but is not in '${rootDir}'`, { path: rel });
      }
    }
    const underOpaque = (dir: string): boolean => {
      for (let p = dir; ; p = parentOf(p)) {
        if (opaque.has(p)) return true;
        if (p === '') return false;
      }
    };
    const markers = new Set<string>();
    for (const [marker, parent] of whiteouts) if (!underOpaque(parent)) markers.add(marker);
    for (const dir of opaque) markers.add(dir === '' ? OPAQUE_MARKER : `${dir}/${OPAQUE_MARKER}`);
    const ordered = sortPaths([...stats.keys(), ...markers]);
    async function* items(): AsyncGenerator<PackItem> {
      for (const rel of ordered) {
        const st = stats.get(rel);
        if (st) {
          if (isOverlayWhiteout(st)) continue; // a whiteout device is a deletion, never content
          yield { kind: 'fs', rel, abs: `${rootDir}/${rel}`, st };
        } else yield { kind: 'marker', rel };
      }
    }
    return await writeLayer(tarChunks(items()), out, options);
  } catch (err) {
    throw fromNativeError(err);
  }
}
