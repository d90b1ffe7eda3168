/**
 * The cpio "newc" format (magic 070701), the one the Linux kernel unpacks as
 * an initramfs: a 110-byte ASCII header of thirteen 8-digit hex fields, the
 * NUL-terminated name padded to 4 bytes, the data padded to 4 bytes, and a
 * `TRAILER!!!` entry at the end. Several archives may be concatenated (each
 * compressed or not); the kernel unpacks them in order, later entries
 * replacing earlier ones.
 * @module
 */
import { InvalidArgumentError } from '../../errors';

/** File type bits as cpio (and stat) carries them in `mode`. */
export const CPIO_TYPE = {
  /** Regular file. */
  file: 0o100000,
  /** Directory. */
  directory: 0o040000,
  /** Symbolic link (the data is the target). */
  symlink: 0o120000,
  /** Character device. */
  charDevice: 0o020000,
  /** Block device. */
  blockDevice: 0o060000,
  /** FIFO. */
  fifo: 0o010000,
} as const;

/** One cpio header. */
export interface CpioHeader {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** Type and permission bits (`CPIO_TYPE.file | 0o755`). */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Modification time, seconds since the epoch (clamped to 32 bits). */
  mtime: number;
  /** Size of the data that follows (a symlink's target length). */
  size: number;
  /** Inode number; entries sharing one with nlink > 1 are hard links. */
  ino: number;
  /** Link count. */
  nlink: number;
  /** Device major/minor for device nodes. */
  rdevMajor?: number;
  /** Device minor for device nodes. */
  rdevMinor?: number;
}

const MAGIC = '070701';
const HEADER_BYTES = 110;
/** The name of the entry that ends an archive. */
export const CPIO_TRAILER = 'TRAILER!!!';

function hex8(n: number, field: string): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new InvalidArgumentError(`cpio: ${field} ${n} does not fit in 32 bits`);
  return n.toString(16).padStart(8, '0');
}

/** Zero bytes to pad `n` to a multiple of 4. */
export function cpioPadding(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}

/** The bytes of a header plus its padded name (the data and its padding follow separately). */
export function encodeCpioHeader(h: CpioHeader): Buffer {
  const name = Buffer.from(`${h.name}\0`, 'utf8');
  if (name.includes(0) && name.indexOf(0) !== name.length - 1) throw new InvalidArgumentError(`cpio: name holds a NUL byte: ${JSON.stringify(h.name)}`);
  const mtime = Math.max(0, Math.min(0xffffffff, Math.floor(h.mtime)));
  const text =
    MAGIC +
    hex8(h.ino, 'inode') +
    hex8(h.mode, 'mode') +
    hex8(h.uid, 'uid') +
    hex8(h.gid, 'gid') +
    hex8(h.nlink, 'nlink') +
    hex8(mtime, 'mtime') +
    hex8(h.size, `size of ${h.name}`) +
    hex8(0, 'devmajor') +
    hex8(0, 'devminor') +
    hex8(h.rdevMajor ?? 0, 'rdevmajor') +
    hex8(h.rdevMinor ?? 0, 'rdevminor') +
    hex8(name.length, 'namesize') +
    hex8(0, 'check');
  return Buffer.concat([Buffer.from(text, 'ascii'), name, cpioPadding(HEADER_BYTES + name.length)]);
}

/** The trailer that ends an archive. */
export function cpioTrailer(): Buffer {
  return encodeCpioHeader({ name: CPIO_TRAILER, mode: 0, uid: 0, gid: 0, mtime: 0, size: 0, ino: 0, nlink: 1 });
}

/** A whole small entry (header, data, padding) in one buffer. */
export function cpioEntry(h: Omit<CpioHeader, 'size'>, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeCpioHeader({ ...h, size: data.length }), data, cpioPadding(data.length)]);
}

/** An entry read back by {@link readCpio}. */
export interface CpioEntry extends CpioHeader {
  /** The entry's data. */
  data: Buffer;
}

/**
 * Parses uncompressed newc archives (several concatenated ones too, with zero
 * padding between them, as the kernel accepts). Used by tests and tools; the
 * whole archive is in memory.
 */
export function readCpio(buf: Buffer): CpioEntry[] {
  const out: CpioEntry[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf[off] === 0) {
      off++;
      continue;
    }
    const magic = buf.toString('ascii', off, off + 6);
    if (magic !== MAGIC) throw new InvalidArgumentError(`cpio: bad magic ${JSON.stringify(magic)} at offset ${off}`);
    const start = off;
    const field = (i: number): number => parseInt(buf.toString('ascii', start + 6 + i * 8, start + 14 + i * 8), 16);
    const namesize = field(11);
    const size = field(6);
    const nameStart = off + HEADER_BYTES;
    const name = buf.toString('utf8', nameStart, nameStart + namesize - 1);
    const dataStart = nameStart + namesize + ((4 - ((HEADER_BYTES + namesize) % 4)) % 4);
    if (dataStart + size > buf.length) throw new InvalidArgumentError(`cpio: entry ${name} runs past the end`);
    off = dataStart + size + ((4 - (size % 4)) % 4);
    if (name === CPIO_TRAILER) continue;
    out.push({
      name,
      ino: field(0),
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      size,
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: buf.subarray(dataStart, dataStart + size),
    });
  }
  return out;
}
