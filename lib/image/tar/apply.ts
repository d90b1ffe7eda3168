/**
 * Applies (unpacks) a layer tar onto a directory with the OCI layer rules: whiteouts,
 * opaque directories, merged directories, replaced files — and refuses anything that would
 * write outside the target.
 *
 * Speed: the per-entry system calls (open, write, fchown, futimes, close, …) are made
 * synchronously, a few microseconds each, with a turn of the event loop at least every
 * few milliseconds. Going through the libuv pool instead costs a thread hand-off per call,
 * which for a layer of small files doubles the unpack time; decompression still runs off
 * the JS thread, in parallel.
 * @module
 */
import {
  chmodSync,
  closeSync,
  constants as fsc,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { lstat, readdir, realpath, rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { fromNativeError, InvalidArgumentError, NacelleError } from '../../errors';
import { native } from '../../native';
import type { Digest } from '../../oci/digest';
import { errnoCode, isHostXattr, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from './common';
import { LayerError } from './errors';
import { openLayer, type LayerInput } from './input';
import { ByteSource, SLICE_MS, TarReader, type TarEntry } from './reader';

/** How to apply a layer. */
export interface ApplyOptions {
  /** Create character and block devices; default: only as root (euid 0). Otherwise a device entry is an error. */
  allowDevices?: boolean;
  /**
   * `apply` (the default): a `.wh.<name>` entry deletes `<name>`, `.wh..wh..opq` empties its
   * directory of what lower layers put there. `overlay`: write overlayfs whiteouts instead
   * (a character device 0:0 for `.wh.<name>`, `trusted.overlay.opaque=y` on an opaque
   * directory), for a snapshot directory used as an overlay lowerdir.
   */
  whiteouts?: 'apply' | 'overlay';
  /** Give entries the uid/gid in the archive (lchown); default: only as root. */
  sameOwner?: boolean;
}

/** What was applied. */
export interface ApplyResult {
  /** sha256 of the uncompressed tar stream: the layer's diffID. */
  diffId: Digest;
  /** Number of archive entries, whiteouts included (PAX and GNU extension headers are not counted). */
  entries: number;
  /** Size of the uncompressed tar stream in bytes. */
  bytes: number;
}

// libuv adds O_CLOEXEC itself
const CREATE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_ISGID = 0o2000;

/** A directory known to be a real directory inside the target (never a symlink). */
interface DirNode {
  /** Verified subdirectories by name. */
  children: Map<string, DirNode>;
  /** An entry of this layer created this directory or lies below it. */
  touched: boolean;
  /** The directory has the set-group-ID bit, so new entries inherit its group. */
  sgid: boolean;
  /** Mode and times from this layer's entry, set at the end (deepest first). */
  meta: { mode: number; atime: number; mtime: number } | null;
}

function newNode(touched: boolean, sgid: boolean): DirNode {
  return { children: new Map(), touched, sgid, meta: null };
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

function unsafe(message: string, path: string): LayerError {
  return new LayerError(message, { code: 'ERR_LAYER_UNSAFE', path });
}

function invalid(message: string, path: string, cause?: unknown): LayerError {
  return new LayerError(message, { code: 'ERR_LAYER_INVALID', path, cause });
}

/**
 * Splits an archive name into path components. `.` and empty components are dropped (so
 * `./etc/` is `etc`); absolute names and `..` are refused, never stripped.
 */
function components(name: string, entry: string, what = 'entry name'): string[] {
  const subject = name === entry ? `${what} '${name}'` : `${what} '${name}' of '${entry}'`;
  if (name.includes('\u0000')) throw unsafe(`${subject} contains a NUL byte`, entry);
  if (name.startsWith('/')) throw unsafe(`${subject} is absolute`, entry);
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw unsafe(`${subject} has a '..' component`, entry);
    parts.push(p);
  }
  return parts;
}

/** The process umask from /proc, or null when it cannot be read (then modes are always set). */
function currentUmask(): number | null {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m?.[1] ? parseInt(m[1], 8) : null;
  } catch {
    return null;
  }
}

class Applier {
  readonly #root: string;
  readonly #rootNode: DirNode;
  readonly #overlay: boolean;
  readonly #allowDevices: boolean;
  readonly #sameOwner: boolean;
  readonly #euid: number;
  readonly #egid: number;
  readonly #umask: number | null;
  /** In-layer paths of the non-directories this layer created. */
  readonly #applied = new Set<string>();

  constructor(root: string, rootSgid: boolean, options: ApplyOptions) {
    this.#root = root;
    this.#rootNode = newNode(false, rootSgid);
    this.#euid = process.geteuid?.() ?? -1;
    this.#egid = process.getegid?.() ?? -1;
    this.#overlay = (options.whiteouts ?? 'apply') === 'overlay';
    this.#allowDevices = options.allowDevices ?? this.#euid === 0;
    this.#sameOwner = options.sameOwner ?? this.#euid === 0;
    this.#umask = currentUmask();
  }

  #abs(parts: readonly string[]): string {
    return parts.length === 0 ? this.#root : `${this.#root}/${parts.join('/')}`;
  }

  /**
   * The node of the directory `parts`, verifying each component is a real directory inside
   * the target (cached, so a known directory costs no system call). Missing directories are
   * created when `create`, else the result is null.
   */
  #dir(parts: readonly string[], create: boolean, touch: boolean, entry: string): DirNode | null {
    let node = this.#rootNode;
    let abs = this.#root;
    for (let i = 0; i < parts.length; i++) {
      const name = parts[i] as string;
      abs = `${abs}/${name}`;
      let child = node.children.get(name);
      if (!child) {
        const st = lstatSync(abs, { throwIfNoEntry: false });
        if (st === undefined) {
          if (!create) return null;
          mkdirSync(abs, 0o755);
          child = newNode(true, node.sgid);
        } else if (st.isDirectory()) {
          child = newNode(false, (st.mode & S_ISGID) !== 0);
        } else if (st.isSymbolicLink()) {
          throw unsafe(`'${entry}' goes through the symlink '${parts.slice(0, i + 1).join('/')}'`, entry);
        } else {
          throw invalid(`'${entry}' needs '${parts.slice(0, i + 1).join('/')}' to be a directory, but it is not one`, entry);
        }
        node.children.set(name, child);
      }
      if (touch) child.touched = true;
      node = child;
    }
    return node;
  }

  /** Removes whatever is at `abs` (recursively for a directory) and forgets it. */
  async #remove(parent: DirNode, name: string, abs: string): Promise<void> {
    const st = lstatSync(abs, { throwIfNoEntry: false });
    if (st === undefined) return;
    if (st.isDirectory()) await rm(abs, { recursive: true, force: true });
    else unlinkSync(abs);
    parent.children.delete(name);
  }

  /** Runs `create`; when something is in the way, removes it and runs `create` once more. */
  async #replacing<T>(parent: DirNode, name: string, abs: string, create: () => T): Promise<T> {
    if (!parent.children.has(name)) {
      try {
        return create();
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw err;
      }
    }
    await this.#remove(parent, name, abs);
    return create();
  }

  #needsChown(parent: DirNode, e: TarEntry): boolean {
    return this.#sameOwner && (parent.sgid || e.uid !== this.#euid || e.gid !== this.#egid);
  }

  /** Whether the mode needs a chmod after creation (umask, set-id and sticky bits). */
  #needsChmod(mode: number): boolean {
    return this.#umask === null || (mode & 0o7000) !== 0 || (mode & this.#umask & 0o777) !== 0;
  }

  #setXattrs(abs: string, e: TarEntry, isSymlink: boolean): void {
    if (!e.xattrs) return;
    const n = native();
    for (const [name, value] of e.xattrs) {
      if (isHostXattr(name)) continue;
      try {
        n.lsetxattr(abs, name, value);
      } catch (err) {
        const code = errnoCode(err);
        if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') continue;
        if (code === 'EPERM' && (isSymlink || this.#euid !== 0)) continue;
        throw fromNativeError(err);
      }
    }
  }

  /** Applies one entry; `reader` is positioned at its data. */
  async apply(e: TarEntry, reader: TarReader): Promise<void> {
    const parts = components(e.name, e.name);
    const base = parts[parts.length - 1];
    if (base === undefined) {
      // the root directory itself ('./')
      if (e.type !== 'dir') throw invalid(`'${e.name}' names the target directory but is not a directory`, e.name);
      if (this.#sameOwner) lchownSync(this.#root, e.uid, e.gid);
      this.#setXattrs(this.#root, e, false);
      this.#rootNode.meta = { mode: e.mode & 0o7777, atime: e.atime ?? e.mtime, mtime: e.mtime };
      return;
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      await this.#whiteout(e, parts, base);
      return;
    }
    if ((e.type === 'char' || e.type === 'block') && !this.#allowDevices) {
      throw new LayerError(`'${e.name}' is a ${e.type === 'char' ? 'character' : 'block'} device, and devices are not allowed here`, {
        code: 'ERR_LAYER_DEVICE',
        path: e.name,
      });
    }
    const parent = this.#dir(parts.slice(0, -1), true, true, e.name) as DirNode;
    const abs = this.#abs(parts);
    const atime = e.atime ?? e.mtime;
    switch (e.type) {
      case 'dir':
        await this.#directory(parent, base, abs, e);
        return;
      case 'file':
        await this.#file(parent, base, abs, e, reader);
        break;
      case 'symlink':
        await this.#replacing(parent, base, abs, () => symlinkSync(e.linkname, abs));
        if (this.#needsChown(parent, e)) lchownSync(abs, e.uid, e.gid);
        this.#setXattrs(abs, e, true);
        lutimesSync(abs, atime, e.mtime);
        break;
      case 'link':
        await this.#hardlink(parent, base, abs, e);
        break;
      case 'char':
      case 'block':
      case 'fifo': {
        const type = e.type === 'char' ? S_IFCHR : e.type === 'block' ? S_IFBLK : S_IFIFO;
        const mode = e.mode & 0o7777;
        const n = native();
        await this.#replacing(parent, base, abs, () => n.mknod(abs, type | (mode & 0o777), e.devmajor, e.devminor));
        if (this.#needsChown(parent, e)) lchownSync(abs, e.uid, e.gid);
        if (this.#needsChmod(mode)) chmodSync(abs, mode); // a fresh device or fifo, not a symlink
        this.#setXattrs(abs, e, false);
        lutimesSync(abs, atime, e.mtime);
        break;
      }
    }
    this.#applied.add(parts.join('/'));
  }

  async #directory(parent: DirNode, name: string, abs: string, e: TarEntry): Promise<void> {
    let node = parent.children.get(name);
    if (!node) {
      let created = false;
      try {
        mkdirSync(abs, 0o700);
        created = true;
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw err;
      }
      if (created) node = newNode(true, parent.sgid);
      else {
        const st = lstatSync(abs);
        if (st.isDirectory()) node = newNode(true, (st.mode & S_ISGID) !== 0);
        else {
          unlinkSync(abs); // a file or a symlink: replaced, never followed
          mkdirSync(abs, 0o700);
          node = newNode(true, parent.sgid);
        }
      }
      parent.children.set(name, node);
    }
    node.touched = true;
    if (this.#needsChown(parent, e)) lchownSync(abs, e.uid, e.gid);
    this.#setXattrs(abs, e, false);
    // mode and times at the end: a read-only directory must stay writable until then
    node.meta = { mode: e.mode & 0o7777, atime: e.atime ?? e.mtime, mtime: e.mtime };
    if (node.meta.mode & S_ISGID) node.sgid = true;
  }

  async #file(parent: DirNode, name: string, abs: string, e: TarEntry, reader: TarReader): Promise<void> {
    const mode = e.mode & 0o7777;
    const fd = await this.#replacing(parent, name, abs, () => openSync(abs, CREATE_FLAGS, mode & 0o777));
    try {
      await reader.readData((data) => writeAll(fd, data));
      // chown before chmod: chown clears the set-id bits; xattrs after the data: a write
      // removes security.capability
      if (this.#needsChown(parent, e)) fchownSync(fd, e.uid, e.gid);
      if (this.#needsChmod(mode)) fchmodSync(fd, mode);
      this.#setXattrs(abs, e, false);
      futimesSync(fd, e.atime ?? e.mtime, e.mtime);
    } finally {
      closeSync(fd);
    }
  }

  async #hardlink(parent: DirNode, name: string, abs: string, e: TarEntry): Promise<void> {
    const target = components(e.linkname, e.name, 'hardlink target');
    const tbase = target[target.length - 1];
    if (tbase === undefined) throw unsafe(`hardlink '${e.name}' points at the target directory itself`, e.name);
    let tparent: DirNode | null;
    try {
      tparent = this.#dir(target.slice(0, -1), false, false, e.name);
    } catch (err) {
      if (err instanceof LayerError && err.code === 'ERR_LAYER_UNSAFE') {
        throw unsafe(`hardlink '${e.name}' -> '${e.linkname}' goes through a symlink`, e.name);
      }
      throw err;
    }
    if (!tparent) throw invalid(`hardlink '${e.name}' -> '${e.linkname}': the target does not exist`, e.name);
    if (tparent.children.has(tbase)) throw invalid(`hardlink '${e.name}' -> '${e.linkname}': the target is a directory`, e.name);
    const targetAbs = this.#abs(target);
    try {
      // link(2) does not follow a symlink at the target: it links the symlink itself
      await this.#replacing(parent, name, abs, () => linkSync(targetAbs, abs));
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') throw invalid(`hardlink '${e.name}' -> '${e.linkname}': the target does not exist`, e.name, err);
      if (code === 'EPERM') throw invalid(`hardlink '${e.name}' -> '${e.linkname}': the target cannot be linked`, e.name, err);
      throw err;
    }
  }

  async #whiteout(e: TarEntry, parts: readonly string[], base: string): Promise<void> {
    const dirParts = parts.slice(0, -1);
    if (base === OPAQUE_MARKER) {
      if (this.#overlay) {
        this.#dir(dirParts, true, true, e.name);
        try {
          native().lsetxattr(this.#abs(dirParts), OVERLAY_OPAQUE_XATTR, Buffer.from('y'));
        } catch (err) {
          throw fromNativeError(err);
        }
        return;
      }
      const node = this.#dir(dirParts, false, false, e.name);
      if (node) await this.#clearLower(node, this.#abs(dirParts), dirParts.join('/'));
      return;
    }
    if (base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) return; // other AUFS metadata: nothing to apply
    const victim = base.slice(WHITEOUT_PREFIX.length);
    if (victim === '' || victim === '.' || victim === '..') {
      throw unsafe(`whiteout '${e.name}' does not name an entry in its directory`, e.name);
    }
    const parent = this.#dir(dirParts, this.#overlay, this.#overlay, e.name);
    if (!parent) return; // nothing below a missing directory to delete
    const rel = [...dirParts, victim].join('/');
    // a whiteout hides lower layers only, never what this same layer put there
    if (parent.children.get(victim)?.touched || this.#applied.has(rel)) return;
    const abs = this.#abs([...dirParts, victim]);
    await this.#remove(parent, victim, abs);
    if (this.#overlay) {
      try {
        native().mknod(abs, S_IFCHR, 0, 0);
      } catch (err) {
        throw fromNativeError(err);
      }
      this.#applied.add(rel);
    }
  }

  /** Deletes everything under `abs` that this layer did not put there. */
  async #clearLower(node: DirNode, abs: string, rel: string): Promise<void> {
    for (const name of await readdir(abs)) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const child = node.children.get(name);
      if (child?.touched) {
        await this.#clearLower(child, `${abs}/${name}`, childRel);
        continue;
      }
      if (this.#applied.has(childRel)) continue;
      await rm(`${abs}/${name}`, { recursive: true, force: true });
      node.children.delete(name);
    }
  }

  /** Sets directory modes and times, deepest first (creating children changed them). */
  async finish(): Promise<void> {
    let slice = performance.now();
    const visit = async (node: DirNode, abs: string): Promise<void> => {
      for (const [name, child] of node.children) await visit(child, `${abs}/${name}`);
      if (node.meta) {
        // every node is a verified real directory: chmod and utimes cannot follow a symlink
        chmodSync(abs, node.meta.mode);
        utimesSync(abs, node.meta.atime, node.meta.mtime);
        if (performance.now() - slice > SLICE_MS) {
          await turn();
          slice = performance.now();
        }
      }
    };
    await visit(this.#rootNode, this.#root);
  }
}

/** Lets the event loop run. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function isZlibError(err: unknown): boolean {
  const code = errnoCode(err);
  return code !== undefined && /^Z_/.test(code);
}

/**
 * Applies a layer tar (gzip or plain, told apart by magic bytes) onto `target`, following
 * the OCI layer rules: directories merge; anything else already there is replaced (a
 * directory replaced by a non-directory is removed recursively); `.wh.<name>` deletes
 * `<name>` and `.wh..wh..opq` empties its directory of what lower layers put there (what this
 * layer adds stays, in whatever order the archive has it), or with `whiteouts: 'overlay'`
 * both become overlayfs whiteouts. Owners (lchown), modes, times (lutimes; directories at
 * the end, deepest first) and `SCHILY.xattr.*` attributes are set without following
 * symlinks; `trusted.overlay.*` and `security.selinux` from an archive are ignored.
 *
 * Nothing is written outside `target`: absolute names, `..`, entries through a symlink
 * (every parent must be a real directory inside the target), hardlinks and whiteouts that
 * escape are refused with a {@link LayerError} naming the entry. On an error the target is
 * left partly applied.
 *
 * @param input - the layer blob; it is consumed to its end (for the diffID), or destroyed on error
 * @param target - an existing directory
 * @param options - devices, whiteout style, ownership
 * @returns the diffID, the entry count and the uncompressed size
 * @throws {@link LayerError} `ERR_LAYER_UNSAFE`, `ERR_LAYER_DEVICE`, `ERR_LAYER_CORRUPT` (truncated or corrupt gzip or tar) or `ERR_LAYER_INVALID`
 * @throws {@link UnsupportedError} for zstd, xz or bzip2 layers
 * @throws {@link SystemCallError} when the filesystem refuses an operation
 */
export async function applyLayer(input: Readable, target: string, options: ApplyOptions = {}): Promise<ApplyResult> {
  if (options.whiteouts !== undefined && options.whiteouts !== 'apply' && options.whiteouts !== 'overlay') {
    throw new InvalidArgumentError(`whiteouts must be 'apply' or 'overlay', got '${String(options.whiteouts)}'`);
  }
  let layer: LayerInput | undefined;
  try {
    const root = await realpath(target);
    const st = await lstat(root);
    if (!st.isDirectory()) throw new InvalidArgumentError(`applyLayer: target '${target}' is not a directory`);
    layer = await openLayer(input);
    const src = new ByteSource(layer.source);
    const reader = new TarReader(src);
    const applier = new Applier(root, (st.mode & S_ISGID) !== 0, options);
    let entries = 0;
    for (;;) {
      const entry = await reader.next();
      if (!entry) break;
      entries++;
      await applier.apply(entry, reader);
      const pause = src.pace();
      if (pause) await pause;
    }
    await src.drain();
    await applier.finish();
    return { diffId: `sha256:${src.digestHex()}`, entries, bytes: src.total };
  } catch (err) {
    if (layer) layer.close();
    else if (!input.destroyed) input.destroy();
    if (err instanceof NacelleError) throw err;
    if (isZlibError(err)) {
      const truncated = errnoCode(err) === 'Z_BUF_ERROR';
      throw new LayerError(`${truncated ? 'truncated' : 'corrupt'} gzip stream: ${(err as Error).message}`, {
        code: 'ERR_LAYER_CORRUPT',
        cause: err,
      });
    }
    throw fromNativeError(err);
  }
}
