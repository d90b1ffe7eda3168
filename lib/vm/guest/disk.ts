/**
 * A disk image for images too large for an initramfs: an uncompressed erofs
 * filesystem written by nacelle itself (no mkfs), attached as virtio-blk and
 * mounted read-only as the root by the guest init (config `root=/dev/vda`,
 * `rootfstype=erofs`). The initramfs then holds only the init, its config and
 * the modules (virtio_blk and erofs included).
 *
 * The erofs layout used: 4 KiB blocks, the superblock at byte 1024, metadata
 * (64-byte extended inodes, each followed by its inline tail) from block 0,
 * then data blocks. Files use FLAT_PLAIN (whole blocks) with a FLAT_INLINE
 * tail when it fits in the inode's block; directories are blocks of 12-byte
 * dirents followed by their names, sorted bytewise (the kernel binary-searches
 * them). Hard links within the image share one inode.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { InvalidArgumentError } from '../../errors';
import { splitRdev } from '../../image/tar/common';
import { type GuestBootConfig, type GuestConfig, writeRunArchive } from './initramfs';
import type { KernelInfo } from './kernel';
import { DEFAULT_GUEST_MODULES, DISK_GUEST_MODULES, resolveModules } from './modules';
import { walkRootfs } from './rootfs';

const BLOCK_BITS = 12;
const BLOCK = 1 << BLOCK_BITS;
const SUPER_OFFSET = 1024;
const SUPER_MAGIC = 0xe0f5e1e2;
const INODE_BYTES = 64; // erofs_inode_extended
const SLOT = 32; // nids count 32-byte slots
const DIRENT_BYTES = 12;
const LAYOUT_FLAT_PLAIN = 0;
const LAYOUT_FLAT_INLINE = 2;

/** Directories the guest init mounts on, added to the image's root when it lacks them. */
const MOUNT_POINTS: ReadonlyArray<[string, number]> = [['dev', 0o755], ['proc', 0o555], ['sys', 0o555], ['tmp', 0o1777], ['run', 0o755]];

/** erofs dirent file types. */
const FT = { unknown: 0, file: 1, dir: 2, chr: 3, blk: 4, fifo: 5, sock: 6, symlink: 7 } as const;

interface Node {
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  size: number;
  ft: number;
  /** regular files: where the bytes are */
  source?: string;
  /** symlinks and directories: the content, built in memory */
  content?: Buffer;
  rdev?: number;
  children?: Array<{ name: string; node: Node }>;
  parent?: Node;
  nlink: number;
  // layout
  nid: number;
  layout: number;
  tail: number; // bytes inline after the inode
  blkaddr: number; // first data block (whole blocks)
  ino: number;
}

/** The result of {@link writeErofsImage}. */
export interface ErofsResult {
  /** The image file. */
  path: string;
  /** Its size in bytes. */
  bytes: number;
  /** Inodes written. */
  inodes: number;
}

function fileType(mode: number): number {
  switch (mode & 0o170000) {
    case 0o100000: return FT.file;
    case 0o040000: return FT.dir;
    case 0o020000: return FT.chr;
    case 0o060000: return FT.blk;
    case 0o010000: return FT.fifo;
    case 0o140000: return FT.sock;
    case 0o120000: return FT.symlink;
    default: return FT.unknown;
  }
}

/** Builds the merged tree in memory (metadata only; file bytes stay where they are). */
async function collect(rootfs: string | readonly string[]): Promise<{ root: Node; all: Node[] }> {
  const dirs = new Map<string, Node>();
  const links = new Map<string, Node>(); // "dev:ino" -> node, for hard links
  const all: Node[] = [];
  let root: Node | undefined;
  for await (const e of walkRootfs(rootfs)) {
    const st = e.stat;
    let node: Node | undefined;
    const key = `${st.dev}:${st.ino}`;
    if (st.isFile() && st.nlink > 1) node = links.get(key);
    if (node) node.nlink++;
    else {
      node = { mode: st.mode, uid: st.uid, gid: st.gid, mtimeMs: st.mtimeMs, size: 0, ft: fileType(st.mode), nlink: 1, nid: 0, layout: LAYOUT_FLAT_PLAIN, tail: 0, blkaddr: 0, ino: all.length + 1 };
      if (st.isFile()) {
        node.source = e.source;
        node.size = st.size;
        if (st.nlink > 1) links.set(key, node);
      } else if (st.isSymbolicLink()) {
        node.content = Buffer.from(e.linkTarget ?? '', 'utf8');
        node.size = node.content.length;
      } else if (st.isDirectory()) {
        node.children = [];
        node.nlink = 2;
        dirs.set(e.path, node);
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        node.rdev = st.rdev;
      }
      all.push(node);
    }
    if (e.path === '') {
      root = node;
      continue;
    }
    const slash = e.path.lastIndexOf('/');
    const parent = dirs.get(slash < 0 ? '' : e.path.slice(0, slash));
    if (!parent?.children) throw new InvalidArgumentError(`erofs: ${e.path} has no parent directory in the walk`);
    parent.children.push({ name: e.path.slice(slash + 1), node });
    if (node.children) {
      node.parent = parent;
      parent.nlink++;
    }
  }
  if (!root) throw new InvalidArgumentError('erofs: the rootfs has no root directory');
  root.parent = root;
  // The disk is read-only: the mount points the init needs must exist in the image.
  for (const [name, perm] of MOUNT_POINTS) {
    if (root.children?.some((c) => c.name === name)) continue;
    const node: Node = { mode: 0o040000 | perm, uid: 0, gid: 0, mtimeMs: root.mtimeMs, size: 0, ft: FT.dir, nlink: 2, nid: 0, layout: LAYOUT_FLAT_PLAIN, tail: 0, blkaddr: 0, ino: all.length + 1, children: [], parent: root };
    all.push(node);
    root.children?.push({ name, node });
    root.nlink++;
  }
  return { root, all };
}

/** Splits a directory's entries (with . and ..) into dirent blocks; nids are filled in later. */
function dirBlocks(node: Node): Array<Array<{ name: Buffer; node: Node }>> {
  const entries = [
    { name: Buffer.from('.'), node },
    { name: Buffer.from('..'), node: node.parent ?? node },
    ...(node.children ?? []).map((c) => ({ name: Buffer.from(c.name, 'utf8'), node: c.node })),
  ].sort((a, b) => Buffer.compare(a.name, b.name));
  const blocks: Array<Array<{ name: Buffer; node: Node }>> = [];
  let cur: Array<{ name: Buffer; node: Node }> = [];
  let used = 0;
  for (const e of entries) {
    if (e.name.length > 255) throw new InvalidArgumentError(`erofs: name too long: ${e.name.toString()}`);
    const need = DIRENT_BYTES + e.name.length;
    if (used + need > BLOCK) {
      blocks.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(e);
    used += need;
  }
  if (cur.length > 0) blocks.push(cur);
  return blocks;
}

function dirSize(blocks: Array<Array<{ name: Buffer }>>): number {
  let size = 0;
  blocks.forEach((b, i) => {
    const used = b.reduce((s, e) => s + DIRENT_BYTES + e.name.length, 0);
    size += i === blocks.length - 1 ? used : BLOCK;
  });
  return size;
}

function encodeDir(blocks: Array<Array<{ name: Buffer; node: Node }>>, size: number): Buffer {
  const out = Buffer.alloc(size);
  blocks.forEach((b, i) => {
    const base = i * BLOCK;
    let nameoff = b.length * DIRENT_BYTES;
    b.forEach((e, j) => {
      const d = base + j * DIRENT_BYTES;
      out.writeBigUInt64LE(BigInt(e.node.nid), d);
      out.writeUInt16LE(nameoff, d + 8);
      out.writeUInt8(e.node.ft, d + 10);
      e.name.copy(out, base + nameoff);
      nameoff += e.name.length;
    });
  });
  return out;
}

function newEncodeDev(rdev: number): number {
  const { major, minor } = splitRdev(rdev);
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * Writes the merged rootfs as an uncompressed erofs image.
 * @param rootfs - one unpacked directory, or overlay lowerdirs with the top layer last
 */
export async function writeErofsImage(out: string, rootfs: string | readonly string[]): Promise<ErofsResult> {
  const { root, all } = await collect(rootfs);
  // Directory contents depend only on names, so their sizes are known before nids.
  const dirLayout = new Map<Node, Array<Array<{ name: Buffer; node: Node }>>>();
  for (const n of all) {
    if (!n.children) continue;
    const blocks = dirBlocks(n);
    dirLayout.set(n, blocks);
    n.size = dirSize(blocks);
  }
  // Place inodes (root first: its nid must fit the superblock's 16 bits) with inline tails.
  let pos = SUPER_OFFSET + 128;
  const order = [root, ...all.filter((n) => n !== root)];
  for (const n of order) {
    const hasData = n.ft === FT.file || n.ft === FT.dir || n.ft === FT.symlink;
    const tail = hasData ? n.size % BLOCK : 0;
    pos = Math.ceil(pos / SLOT) * SLOT;
    if ((pos % BLOCK) + INODE_BYTES > BLOCK) pos = Math.ceil(pos / BLOCK) * BLOCK;
    if (tail > 0 && (pos % BLOCK) + INODE_BYTES + tail > BLOCK && INODE_BYTES + tail <= BLOCK) {
      // the inline tail may not cross a block boundary: start a new metadata block (when the
      // waste is smaller than storing the tail in a data block of its own)
      const waste = BLOCK - (pos % BLOCK);
      if (waste < BLOCK - tail) pos = Math.ceil(pos / BLOCK) * BLOCK;
    }
    if (tail > 0 && (pos % BLOCK) + INODE_BYTES + tail <= BLOCK) {
      n.layout = LAYOUT_FLAT_INLINE;
      n.tail = tail;
    } else {
      n.layout = LAYOUT_FLAT_PLAIN;
      n.tail = 0;
    }
    n.nid = pos / SLOT;
    pos += INODE_BYTES + n.tail;
  }
  if (root.nid > 0xffff) throw new InvalidArgumentError('erofs: root inode out of range');
  // Data blocks after the metadata.
  let block = Math.ceil(pos / BLOCK);
  for (const n of order) {
    const dataBytes = n.size - n.tail;
    const hasData = n.ft === FT.file || n.ft === FT.dir || n.ft === FT.symlink;
    if (!hasData || dataBytes <= 0) continue;
    n.blkaddr = block;
    block += Math.ceil(dataBytes / BLOCK);
  }
  const totalBlocks = block;
  if (totalBlocks > 0xffffffff) throw new InvalidArgumentError('erofs: image too large');

  await mkdir(dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    const meta = Buffer.alloc(Math.ceil(pos / BLOCK) * BLOCK);
    // superblock
    const sb = SUPER_OFFSET;
    meta.writeUInt32LE(SUPER_MAGIC, sb);
    meta.writeUInt8(BLOCK_BITS, sb + 12);
    meta.writeUInt16LE(root.nid, sb + 14);
    meta.writeBigUInt64LE(BigInt(all.length), sb + 16);
    meta.writeBigUInt64LE(BigInt(Math.floor(root.mtimeMs / 1000)), sb + 24);
    meta.writeUInt32LE(totalBlocks, sb + 36);
    meta.writeUInt32LE(0, sb + 40); // meta_blkaddr
    randomBytes(16).copy(meta, sb + 48); // uuid
    Buffer.from('nacelle').copy(meta, sb + 64); // volume name
    for (const n of order) {
      const o = n.nid * SLOT;
      meta.writeUInt16LE(1 | (n.layout << 1), o); // extended inode + layout
      meta.writeUInt16LE(0, o + 2); // no xattrs
      meta.writeUInt16LE(n.mode & 0xffff, o + 4);
      meta.writeBigUInt64LE(BigInt(n.size), o + 8);
      const iu = n.rdev !== undefined ? newEncodeDev(n.rdev) : n.blkaddr;
      meta.writeUInt32LE(iu >>> 0, o + 16);
      meta.writeUInt32LE(n.ino, o + 20);
      meta.writeUInt32LE(n.uid >>> 0, o + 24);
      meta.writeUInt32LE(n.gid >>> 0, o + 28);
      const sec = Math.floor(n.mtimeMs / 1000);
      meta.writeBigUInt64LE(BigInt(Math.max(0, sec)), o + 32);
      meta.writeUInt32LE(Math.max(0, Math.round((n.mtimeMs - sec * 1000) * 1e6)) % 1e9, o + 40);
      meta.writeUInt32LE(n.nlink, o + 44);
    }
    // directory and symlink contents, now that every nid is known
    for (const n of order) {
      if (n.children) n.content = encodeDir(dirLayout.get(n) ?? [], n.size);
      if (!n.content) continue;
      const head = n.size - n.tail;
      if (n.tail > 0) n.content.copy(meta, n.nid * SLOT + INODE_BYTES, head);
      if (head > 0) await fh.write(n.content, 0, head, n.blkaddr * BLOCK);
    }
    // regular files: whole blocks at blkaddr, the tail inline
    for (const n of order) {
      if (!n.source) continue;
      const head = n.size - n.tail;
      let written = 0;
      const tail = Buffer.alloc(n.tail);
      for await (const chunk of createReadStream(n.source, { highWaterMark: 1 << 20 })) {
        let c = chunk as Buffer;
        if (written + c.length > n.size) c = c.subarray(0, n.size - written);
        const toHead = Math.max(0, Math.min(c.length, head - written));
        if (toHead > 0) await fh.write(c, 0, toHead, n.blkaddr * BLOCK + written);
        if (toHead < c.length) c.copy(tail, written + toHead - head, toHead);
        written += c.length;
        if (written >= n.size) break;
      }
      if (written !== n.size) throw new InvalidArgumentError(`erofs: ${n.source} changed size while being written (${n.size} -> ${written} bytes)`);
      if (n.tail > 0) tail.copy(meta, n.nid * SLOT + INODE_BYTES);
    }
    await fh.write(meta, 0, meta.length, 0);
    await fh.truncate(totalBlocks * BLOCK);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, out);
  return { path: out, bytes: totalBlocks * BLOCK, inodes: all.length };
}

/** Options of {@link buildDiskBoot}. */
export interface BuildDiskBootOptions {
  /** The image's root filesystem: one unpacked directory, or lowerdirs with the top layer last. */
  rootfs: string | readonly string[];
  /** The kernel (its modules directory provides virtio_blk and erofs when not built in). */
  kernel: KernelInfo;
  /** What to run. */
  config: GuestConfig;
  /** Where to write the erofs disk image (reusable for every run of the image). */
  disk: string;
  /** Where to write the small initramfs (init, config, modules). */
  initramfs: string;
  /** Skip writing the disk when it exists (the caller keys the path by image digest). */
  reuseDisk?: boolean;
  /** Block device the guest sees the disk as (default /dev/vda). */
  device?: string;
  /** Channel device (default /dev/hvc0). */
  channel?: string;
  /** The guest init binary (default guestInitPath()). */
  init?: string;
}

/** The result of {@link buildDiskBoot}. */
export interface DiskBootResult {
  /** The erofs image: attach it as a virtio-blk device (read-only). */
  disk: string;
  /** Its size in bytes. */
  diskBytes: number;
  /** The initramfs to boot with. */
  initramfs: string;
  /** Its size in bytes. */
  initramfsBytes: number;
  /** Modules the guest loads, in order. */
  modules: string[];
}

/**
 * The disk path: an erofs image of the rootfs plus a small initramfs whose
 * init loads the modules, mounts the disk as the root and runs the command.
 * The host attaches `disk` as the first virtio-blk device (`/dev/vda`).
 */
export async function buildDiskBoot(opts: BuildDiskBootOptions): Promise<DiskBootResult> {
  const { stat } = await import('node:fs/promises');
  let diskBytes: number;
  const existing = opts.reuseDisk ? await stat(opts.disk).catch(() => undefined) : undefined;
  if (existing) diskBytes = existing.size;
  else diskBytes = (await writeErofsImage(opts.disk, opts.rootfs)).bytes;
  const modules = opts.kernel.modulesDir
    ? await resolveModules({
        modulesDir: opts.kernel.modulesDir,
        names: [...DEFAULT_GUEST_MODULES, ...DISK_GUEST_MODULES],
        ...(opts.kernel.release ? { release: opts.kernel.release } : {}),
      })
    : [];
  const boot: GuestBootConfig = { root: opts.device ?? '/dev/vda', rootfstype: 'erofs', ...(opts.channel ? { channel: opts.channel } : {}) };
  const initramfsBytes = await writeRunArchive(opts.initramfs, { config: opts.config, boot, modules, ...(opts.init ? { init: opts.init } : {}) });
  return { disk: opts.disk, diskBytes, initramfs: opts.initramfs, initramfsBytes, modules: modules.map((m) => m.name) };
}
