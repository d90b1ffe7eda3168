/**
 * COPY and ADD sources: choosing them in the build context (or another stage's or image's
 * files), hashing them for the cache, and laying them out in a staging tree that becomes
 * the step's layer. Also a read-only merged view of an image (an overlay mount of its
 * snapshots) for looking at the files a step starts from.
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, type Stats } from 'node:fs';
import { chmod, chown, copyFile, lchown, lstat, lutimes, mkdir, mkdtemp, open, readlink, rm, symlink, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, gunzipSync } from 'node:zlib';
import { UnsupportedError } from '../errors';
import { mount, umount } from '../host/mount';
import type { Image } from '../image/image';
import { sortedNames } from '../image/tar/pack';
import { applyLayer } from '../image/tar/apply';
import { decodeHeader } from '../image/tar/format';
import type { IgnoreMatcher } from './dockerignore';
import { DockerfileError } from './types';

/** A path chosen by a COPY/ADD source. */
export interface SourceEntry {
  /** Path relative to the source root (`/`-separated, no leading `/`; `''` for the root). */
  rel: string;
  /** Host path. */
  abs: string;
  /** lstat of it. */
  st: Stats;
}

/** What one source argument selected: the matched paths and, for directories, what is below them. */
export interface SourceMatch {
  /** The matched path. */
  base: SourceEntry;
  /** Everything below a matched directory (depth first, sorted), ignored paths left out. */
  below: SourceEntry[];
}

/** Whether a source argument is a pattern (has an unescaped `*`, `?` or `[`). */
export function isPattern(source: string): boolean {
  return /(^|[^\\])[*?[]/.test(source);
}

/** Go's filepath.Match as an anchored regular expression (`*` and `?` stay within a path element). */
function globRegex(pattern: string): RegExp {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else if (ch === '\\' && i + 1 < pattern.length) re += `\\${pattern[++i]!}`;
    else if (ch === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        let cls = pattern.slice(i + 1, end);
        if (cls.startsWith('^') || cls.startsWith('!')) cls = `^${cls.slice(1)}`;
        re += `[${cls.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += ch.replace(/[.+^${}()|\]\\/]/g, '\\$&');
  }
  return new RegExp(`${re}$`, 's');
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}

/** Walks below `rel` (not `rel` itself), sorted, leaving out what `ignore` excludes. */
async function walk(root: string, rel: string, ignore: IgnoreMatcher | undefined, out: SourceEntry[]): Promise<void> {
  const dir = rel === '' ? root : `${root}/${rel}`;
  for (const name of await sortedNames(dir)) {
    const childRel = rel === '' ? name : `${rel}/${name}`;
    const abs = `${dir}/${name}`;
    const st = await lstat(abs);
    const excluded = ignore?.excludes(childRel) ?? false;
    if (!excluded) out.push({ rel: childRel, abs, st });
    // an excluded directory may still hold paths an exception (`!path`) includes again
    if (st.isDirectory() && (!excluded || ignore?.hasExclusions)) await walk(root, childRel, ignore, out);
  }
}

/**
 * Resolves a path inside `root` the way a chroot would: symlinks are followed but never
 * leave `root` (`..` stops at the top). Returns the resolved in-root path (`/`-rooted).
 */
export async function resolveInRoot(root: string, path: string, followLast: boolean): Promise<string> {
  let parts = path.split('/').filter((p) => p !== '' && p !== '.');
  const resolved: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const here = [...resolved, part];
    const st = await lstatOrNull(`${root}/${here.join('/')}`);
    if (st?.isSymbolicLink() && (parts.length > 0 || followLast)) {
      if (++hops > 40) throw new UnsupportedError(`too many levels of symbolic links resolving ${path}`);
      const target = await readlink(`${root}/${here.join('/')}`);
      if (target.startsWith('/')) resolved.length = 0;
      parts = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...parts];
      continue;
    }
    resolved.push(part);
  }
  return `/${resolved.join('/')}`;
}

/**
 * What the source arguments of a COPY/ADD select under `root`.
 * @param root - the build context, or the merged files of a stage or image
 * @param sources - the expanded source arguments
 * @param options - `ignore`: the .dockerignore matcher (context only); `what` names the root in errors; `line` for errors
 * @throws {@link DockerfileError} for a path outside the root, or a source that matches nothing
 */
export async function selectSources(
  root: string,
  sources: readonly string[],
  options: { ignore?: IgnoreMatcher; what: string; line: number; keyword: string },
): Promise<SourceMatch[]> {
  const matches: SourceMatch[] = [];
  let everything: SourceEntry[] | undefined;
  for (const source of sources) {
    const rel = posix.normalize(source.replace(/^\/+/, '') || '.');
    if (rel === '..' || rel.startsWith('../')) {
      throw new DockerfileError(`${options.keyword} ${source}: the path is outside the ${options.what}`, { line: options.line, code: 'ERR_BUILD_CONTEXT_OUTSIDE' });
    }
    const clean = rel === '.' ? '' : rel.replace(/\/$/, '');
    const found: SourceEntry[] = [];
    if (isPattern(clean)) {
      if (!everything) {
        everything = [];
        await walk(root, '', options.ignore, everything);
      }
      const re = globRegex(clean);
      for (const e of everything) if (re.test(e.rel)) found.push(e);
    } else {
      let abs = clean === '' ? root : `${root}/${clean}`;
      let st = await lstatOrNull(abs);
      if (st?.isSymbolicLink()) {
        // the named source itself is followed (inside the root); links below it are copied as links
        const inRoot = await resolveInRoot(root, `/${clean}`, true);
        abs = `${root}${inRoot === '/' ? '' : inRoot}`;
        st = await lstatOrNull(abs);
      }
      if (st && !(clean !== '' && options.ignore?.excludes(clean))) found.push({ rel: clean, abs, st });
    }
    if (found.length === 0) {
      throw new DockerfileError(`${options.keyword} ${source}: no such file or directory in the ${options.what}${options.ignore && !options.ignore.empty ? ' (or .dockerignore excludes it)' : ''}`, {
        line: options.line,
        code: 'ERR_BUILD_SOURCE_NOT_FOUND',
      });
    }
    for (const base of found) {
      const below: SourceEntry[] = [];
      if (base.st.isDirectory()) {
        const rootLen = base.abs.length;
        const inner: SourceEntry[] = [];
        await walk(base.abs, '', undefined, inner); // filtered below by context-relative path
        for (const e of inner) {
          const contextRel = base.rel === '' ? e.rel : `${base.rel}/${e.rel}`;
          if (options.ignore?.excludes(contextRel)) continue;
          below.push({ rel: e.abs.slice(rootLen + 1), abs: e.abs, st: e.st });
        }
      }
      matches.push({ base, below });
    }
  }
  return matches;
}

/** One path to write into a step's layer. */
export interface CopyItem {
  /** Host path of the source. */
  abs: string;
  /** lstat of the source. */
  st: Stats;
  /** Absolute destination path in the image. */
  dest: string;
  /** Mode bits to give it (permission + setuid/setgid/sticky). */
  mode: number;
  /** Owner to give it. */
  uid: number;
  /** Group to give it. */
  gid: number;
  /** For ADD: extract this local archive into `dest` instead of copying it. */
  extract?: boolean;
}

async function fileDigest(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

/**
 * The content hash of what a COPY/ADD writes: destination paths, types, modes, owners,
 * contents and link targets (not times), in a fixed order.
 */
export async function hashItems(items: readonly CopyItem[]): Promise<string> {
  const lines: string[] = [];
  for (const item of items) {
    const { st } = item;
    let what: string;
    if (st.isFile()) what = `f:${await fileDigest(item.abs)}`;
    else if (st.isDirectory()) what = 'd';
    else if (st.isSymbolicLink()) what = `l:${await readlink(item.abs)}`;
    else what = `o:${st.mode & 0o170000}:${st.rdev}`;
    lines.push(`${item.dest}\0${what}\0${item.mode.toString(8)}\0${item.uid}:${item.gid}\0${item.extract ? 'x' : ''}`);
  }
  lines.sort();
  return createHash('sha256').update(lines.join('\n')).digest('hex');
}

/** Magic numbers of compressions ADD cannot open. */
function unsupportedCompression(head: Buffer): string | undefined {
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'BZh') return 'bzip2';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return undefined;
}

/**
 * Whether ADD should unpack `path`: a plain or gzip-compressed tar archive.
 * @throws {@link UnsupportedError} for xz, bzip2 and zstd archives
 */
export async function isLocalArchive(path: string): Promise<boolean> {
  const h = await open(path, 'r');
  let head: Buffer;
  try {
    const { buffer, bytesRead } = await h.read(Buffer.alloc(512), 0, 512, 0);
    head = buffer.subarray(0, bytesRead);
  } finally {
    await h.close();
  }
  const bad = unsupportedCompression(head);
  if (bad) throw new UnsupportedError(`ADD ${path}: ${bad}-compressed archives are not supported (plain and gzip tar archives are)`);
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) {
    // the first 64 KiB of compressed data, inflated as far as they go, hold the first header
    const h2 = await open(path, 'r');
    let prefix: Buffer;
    try {
      const { buffer, bytesRead } = await h2.read(Buffer.alloc(65536), 0, 65536, 0);
      prefix = buffer.subarray(0, bytesRead);
    } finally {
      await h2.close();
    }
    try {
      const data = gunzipSync(prefix, { finishFlush: zlibConstants.Z_SYNC_FLUSH });
      return data.length >= 512 && isTarHeader(data.subarray(0, 512));
    } catch {
      return false;
    }
  }
  return head.length === 512 && isTarHeader(head);
}

function isTarHeader(block: Buffer): boolean {
  try {
    return decodeHeader(block) !== null;
  } catch {
    return false;
  }
}

/** Metadata for a directory the copy creates (parents of the destination). */
export interface NewDirectory {
  /** Mode bits. */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** mtime. */
  mtime: Date;
}

/**
 * Lays `items` out under `staging` (a directory standing for the image root), with the
 * destination's existing parent directories copied from `view` (so the layer does not change
 * them) and missing ones made with `newDirs`.
 */
export async function stageItems(staging: string, items: readonly CopyItem[], view: string, newDirs: NewDirectory, emptyDirs: readonly string[] = []): Promise<void> {
  const made = new Set<string>(['/']);
  const dirTimes: Array<[string, Date]> = [];
  const ensureParents = async (dest: string): Promise<void> => {
    const parts = dest.split('/').filter(Boolean);
    let cur = '';
    for (const part of parts.slice(0, -1)) {
      cur += `/${part}`;
      if (made.has(cur)) continue;
      made.add(cur);
      const existing = await lstatOrNull(`${view}${cur}`);
      const host = `${staging}${cur}`;
      await mkdir(host);
      if (existing?.isDirectory()) {
        await chmod(host, existing.mode & 0o7777);
        await chown(host, existing.uid, existing.gid);
        dirTimes.push([host, existing.mtime]);
      } else {
        await chmod(host, newDirs.mode);
        await chown(host, newDirs.uid, newDirs.gid);
        dirTimes.push([host, newDirs.mtime]);
      }
    }
  };
  // directories to make without contents (an empty source directory's destination)
  for (const d of emptyDirs) await ensureParents(`${d}/.`);
  for (const item of items) {
    await ensureParents(item.dest);
    const host = `${staging}${item.dest}`;
    const { st } = item;
    if (item.extract) {
      await mkdir(host, { recursive: true });
      await applyLayer(createReadStream(item.abs), host, { sameOwner: true, whiteouts: 'apply' });
      made.add(item.dest);
      continue;
    }
    if (st.isDirectory()) {
      if (!made.has(item.dest)) {
        await mkdir(host, { recursive: true });
        made.add(item.dest);
      }
      await chmod(host, item.mode);
      await chown(host, item.uid, item.gid);
      dirTimes.push([host, st.mtime]);
    } else if (st.isSymbolicLink()) {
      await rm(host, { force: true, recursive: true });
      await symlink(await readlink(item.abs), host);
      await lchown(host, item.uid, item.gid);
      await lutimes(host, st.atime, st.mtime);
    } else if (st.isFile()) {
      await rm(host, { force: true, recursive: true });
      await copyFile(item.abs, host);
      await chown(host, item.uid, item.gid);
      await chmod(host, item.mode);
      await utimes(host, st.atime, st.mtime);
    }
    // sockets, fifos and devices in a build context are left out, as Docker leaves out sockets
  }
  // directory times last: writing into a directory changes its mtime
  for (const [path, time] of dirTimes.reverse()) await utimes(path, time, time);
}

/** A temporary directory for one build step, removed by the caller. */
export async function makeStepDir(label: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `nacelle-build-${label}-`));
}

/** A read-only view of an image's merged files, and how to release it. */
export interface ImageView {
  /** The merged root (an empty directory for an image without layers). */
  root: string;
  /** Unmounts and removes the view. */
  close(): Promise<void>;
}

/**
 * Mounts a read-only overlay of `image`'s snapshots (no upper layer) to read the files a
 * step starts from or copies from. `null` gives an empty view (a `scratch` stage).
 */
export async function openImageView(image: Image | null): Promise<ImageView> {
  const dir = await makeStepDir(`view-${randomBytes(3).toString('hex')}`);
  const root = join(dir, 'merged');
  const empty = join(dir, 'empty');
  await mkdir(root);
  await mkdir(empty);
  const lowers = image ? await image.lowerDirs() : [];
  let mounted = false;
  try {
    if (lowers.length > 0) {
      // an empty bottom layer: overlayfs without an upper directory wants two lowers at least
      await mount({ source: 'overlay', target: root, fstype: 'overlay', flags: ['rdonly'], data: `lowerdir=${[...lowers, empty].join(':')}` });
      mounted = true;
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    root,
    close: async () => {
      if (mounted) await umount(root, { detach: true });
      mounted = false;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
