/**
 * The tar format, written and read by hand: 512-byte ustar headers, PAX extended headers
 * (binary-safe, so `SCHILY.xattr.*` values such as `security.capability` survive) and, when
 * reading, GNU long names and base-256 numbers.
 * @module
 * @internal
 */
import { LayerError } from './errors';

/** Size of a tar block. */
export const BLOCK = 512;

/** The entry types nacelle writes and applies, by their typeflag. */
export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

const TYPEFLAG: Record<EntryType, number> = {
  file: 0x30, // '0'
  link: 0x31, // '1'
  symlink: 0x32, // '2'
  char: 0x33, // '3'
  block: 0x34, // '4'
  dir: 0x35, // '5'
  fifo: 0x36, // '6'
};

/** The fields of one entry to write. */
export interface WriteHeader {
  /** Archive name: relative, no leading `./`; directories end in `/`. */
  name: string;
  /** The entry type. */
  type: EntryType;
  /** Permission and set-id/sticky bits (the type bits are ignored). */
  mode: number;
  /** Owner user id. */
  uid: number;
  /** Owner group id. */
  gid: number;
  /** Data size; only regular files have data. */
  size: number;
  /** Modification time in whole seconds since the epoch. */
  mtime: number;
  /** Symlink target or hardlink target name. */
  linkname?: string;
  /** Device major number (character and block devices). */
  devmajor?: number;
  /** Device minor number (character and block devices). */
  devminor?: number;
  /** Extended attributes, already sorted by name. */
  xattrs?: ReadonlyArray<readonly [string, Buffer]>;
}

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

function octalFits(value: number, width: number): boolean {
  // width - 1 digits, then a NUL
  return Number.isSafeInteger(value) && value >= 0 && value < 8 ** (width - 1);
}

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  const digits = value.toString(8).padStart(width - 1, '0');
  buf.write(digits, offset, width - 1, 'latin1');
  buf[offset + width - 1] = 0;
}

/** GNU base-256: first byte 0x80, big-endian magnitude in the rest. For non-negative values. */
function writeBase256(buf: Buffer, offset: number, width: number, value: number): void {
  let v = BigInt(Math.trunc(value));
  for (let i = width - 1; i > 0; i--) {
    buf[offset + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  buf[offset] = 0x80;
}

function writeNumber(buf: Buffer, offset: number, width: number, value: number): void {
  if (octalFits(value, width)) writeOctal(buf, offset, width, value);
  else if (value >= 0) writeBase256(buf, offset, width, value);
  else writeOctal(buf, offset, width, 0); // negative: the PAX record carries it
}

function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), typeof value === 'string' ? Buffer.from(value, 'utf8') : value, Buffer.from('\n')]);
  let digits = String(body.length).length;
  while (String(body.length + digits).length !== digits) digits++;
  return Buffer.concat([Buffer.from(String(body.length + digits), 'latin1'), body]);
}

function padLength(size: number): number {
  const rest = size % BLOCK;
  return rest === 0 ? 0 : BLOCK - rest;
}

/** Splits a name into ustar prefix (≤155 bytes) and name (≤100 bytes), or null when it cannot be. */
function splitUstar(name: string): [string, string] | null {
  if (name.length <= 100) return ['', name];
  if (name.length > 256) return null;
  // the name part must be non-empty and ≤100; a trailing '/' belongs to the name part
  for (let i = name.length - 1; i > 0; i--) {
    if (name.charCodeAt(i) !== 0x2f || i === name.length - 1) continue;
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (rest.length > 100) return null;
    if (prefix.length <= 155) return [prefix, rest];
  }
  return null;
}

function ustarBlock(
  name: string,
  prefix: string,
  typeflag: number,
  h: { mode: number; uid: number; gid: number; size: number; mtime: number; linkname: string; devmajor: number; devminor: number },
): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  writeOctal(b, 100, 8, h.mode & 0o7777);
  writeNumber(b, 108, 8, h.uid);
  writeNumber(b, 116, 8, h.gid);
  writeNumber(b, 124, 12, h.size);
  writeNumber(b, 136, 12, h.mtime);
  b.fill(0x20, 148, 156); // checksum placeholder: spaces
  b[156] = typeflag;
  b.write(h.linkname, 157, 100, 'utf8');
  b.write('ustar\u000000', 257, 8, 'latin1');
  writeOctal(b, 329, 8, h.devmajor);
  writeOctal(b, 337, 8, h.devminor);
  if (prefix) b.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i] as number;
  writeOctal(b, 148, 7, sum); // six digits and a NUL, the space stays
  return b;
}

/** A fallback ASCII name of at most `max` bytes for the ustar field when PAX carries the real one. */
function asciiFallback(name: string, max: number): string {
  // eslint-disable-next-line no-control-regex
  return name.replace(/[^\x20-\x7e]/g, '_').slice(0, max);
}

/**
 * The header blocks of one entry: a PAX extended header when a field does not fit ustar
 * (long or non-ASCII names, big ids or sizes, negative times, xattrs), then the ustar header.
 * Deterministic: the same fields give the same bytes.
 */
export function encodeHeader(h: WriteHeader): Buffer {
  const linkname = h.linkname ?? '';
  const devmajor = h.devmajor ?? 0;
  const devminor = h.devminor ?? 0;
  const records: Buffer[] = [];
  let name = h.name;
  let prefix = '';
  const split = PRINTABLE_ASCII.test(h.name) ? splitUstar(h.name) : null;
  if (split) [prefix, name] = split;
  else {
    records.push(paxRecord('path', h.name));
    name = asciiFallback(h.name, 100);
  }
  let link = linkname;
  if (linkname.length > 100 || !PRINTABLE_ASCII.test(linkname)) {
    records.push(paxRecord('linkpath', linkname));
    link = asciiFallback(linkname, 100);
  }
  if (!octalFits(h.size, 12)) records.push(paxRecord('size', String(h.size)));
  if (!octalFits(h.uid, 8)) records.push(paxRecord('uid', String(h.uid)));
  if (!octalFits(h.gid, 8)) records.push(paxRecord('gid', String(h.gid)));
  if (!octalFits(h.mtime, 12)) records.push(paxRecord('mtime', String(h.mtime)));
  if (!octalFits(devmajor, 8) || !octalFits(devminor, 8)) {
    throw new LayerError(`device numbers ${devmajor}:${devminor} of '${h.name}' do not fit a tar header`, { path: h.name });
  }
  for (const [key, value] of h.xattrs ?? []) records.push(paxRecord(`SCHILY.xattr.${key}`, value));

  const main = ustarBlock(name, prefix, TYPEFLAG[h.type], {
    mode: h.mode,
    uid: h.uid,
    gid: h.gid,
    size: h.size,
    mtime: h.mtime,
    linkname: link,
    devmajor,
    devminor,
  });
  if (records.length === 0) return main;
  const data = Buffer.concat(records);
  const base = h.name.replace(/\/+$/, '').split('/').pop() ?? '';
  const paxName = asciiFallback(`PaxHeaders.0/${base}`, 100);
  const paxHead = ustarBlock(paxName, '', 0x78 /* 'x' */, {
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: data.length,
    mtime: 0,
    linkname: '',
    devmajor: 0,
    devminor: 0,
  });
  return Buffer.concat([paxHead, data, Buffer.alloc(padLength(data.length)), main]);
}

/** Number of padding bytes after `size` bytes of data. */
export { padLength };

/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE: Buffer = Buffer.alloc(2 * BLOCK);

// ---------------------------------------------------------------------------------------------
// reading

/** The kinds of header a reader meets, beyond {@link EntryType}. */
export type RawType = EntryType | 'pax' | 'pax-global' | 'gnu-longname' | 'gnu-longlink' | 'unsupported';

/** One decoded ustar/GNU/v7 header block. */
export interface RawHeader {
  /** The name (ustar prefix joined in). */
  name: string;
  /** What the typeflag means. */
  type: RawType;
  /** The typeflag byte, for messages about unsupported types. */
  typeflag: number;
  /** Mode field (permission bits). */
  mode: number;
  /** Owner user id. */
  uid: number;
  /** Owner group id. */
  gid: number;
  /** Size of the data that follows. */
  size: number;
  /** Modification time, seconds since the epoch. */
  mtime: number;
  /** Link target field. */
  linkname: string;
  /** Device major number. */
  devmajor: number;
  /** Device minor number. */
  devminor: number;
}

function corrupt(message: string, path?: string): LayerError {
  return new LayerError(message, { code: 'ERR_LAYER_CORRUPT', ...(path === undefined ? {} : { path }) });
}

function cString(buf: Buffer, offset: number, width: number): string {
  let end = offset;
  const max = offset + width;
  while (end < max && buf[end] !== 0) end++;
  return buf.toString('utf8', offset, end);
}

function readNumber(buf: Buffer, offset: number, width: number, field: string): number {
  const first = buf[offset] as number;
  if (first & 0x80) {
    // base-256: 0x80 positive, 0xff negative (two's complement)
    let v = 0n;
    for (let i = 1; i < width; i++) v = (v << 8n) | BigInt(buf[offset + i] as number);
    if (first === 0xff) v -= 1n << BigInt(8 * (width - 1));
    else if (first !== 0x80) v |= BigInt(first & 0x7f) << BigInt(8 * (width - 1));
    return Number(v);
  }
  let i = offset;
  const end = offset + width;
  while (i < end && (buf[i] === 0x20 || buf[i] === 0)) i++;
  let value = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = buf[i] as number;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) throw corrupt(`invalid tar header: bad ${field} field`);
    value = value * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) {
    const c = buf[i];
    if (c !== 0x20 && c !== 0) throw corrupt(`invalid tar header: bad ${field} field`);
  }
  return digits === 0 ? 0 : value;
}

function rawType(flag: number, name: string): RawType {
  switch (flag) {
    case 0:
    case 0x30:
    case 0x37: // contiguous file
      return flag === 0 && name.endsWith('/') ? 'dir' : 'file';
    case 0x31:
      return 'link';
    case 0x32:
      return 'symlink';
    case 0x33:
      return 'char';
    case 0x34:
      return 'block';
    case 0x35:
      return 'dir';
    case 0x36:
      return 'fifo';
    case 0x78: // 'x'
      return 'pax';
    case 0x67: // 'g'
      return 'pax-global';
    case 0x4c: // 'L'
      return 'gnu-longname';
    case 0x4b: // 'K'
      return 'gnu-longlink';
    default:
      return 'unsupported';
  }
}

/**
 * Decodes one header block; null for an all-zero block (end of archive).
 * @throws {@link LayerError} `ERR_LAYER_CORRUPT` for a bad checksum or field
 */
export function decodeHeader(b: Buffer): RawHeader | null {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : (b[i] as number);
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  if (unsigned === 8 * 0x20) {
    // checksum of an all-zero block
    let zero = true;
    for (let i = 0; i < BLOCK; i++) {
      if (b[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) return null;
  }
  const stored = readNumber(b, 148, 8, 'checksum');
  if (stored !== unsigned && stored !== signed) {
    throw corrupt('invalid tar header: checksum mismatch (not a tar archive, or corrupt)');
  }
  const isUstar = b.toString('latin1', 257, 263) === 'ustar\u0000';
  let name = cString(b, 0, 100);
  if (isUstar && b[345] !== 0) name = `${cString(b, 345, 155)}/${name}`;
  const typeflag = b[156] as number;
  return {
    name,
    type: rawType(typeflag, name),
    typeflag,
    mode: readNumber(b, 100, 8, 'mode'),
    uid: readNumber(b, 108, 8, 'uid'),
    gid: readNumber(b, 116, 8, 'gid'),
    size: readNumber(b, 124, 12, 'size'),
    mtime: readNumber(b, 136, 12, 'mtime'),
    linkname: cString(b, 157, 100),
    devmajor: readNumber(b, 329, 8, 'devmajor'),
    devminor: readNumber(b, 337, 8, 'devminor'),
  };
}

/**
 * Parses PAX records (`<len> <key>=<value>\n`) into `into`, binary-safe: values are kept as
 * bytes.
 * @throws {@link LayerError} `ERR_LAYER_CORRUPT` for a malformed record
 */
export function decodePax(data: Buffer, into: Map<string, Buffer>): void {
  let off = 0;
  while (off < data.length) {
    if (data[off] === 0) break; // some writers pad with NULs
    let sp = off;
    while (sp < data.length && data[sp] !== 0x20) sp++;
    const len = Number(data.toString('latin1', off, sp));
    if (!Number.isSafeInteger(len) || len <= sp - off + 1 || off + len > data.length || data[off + len - 1] !== 0x0a) {
      throw corrupt('invalid PAX extended header record');
    }
    const eq = data.indexOf(0x3d, sp + 1);
    if (eq === -1 || eq >= off + len) throw corrupt('invalid PAX extended header record');
    const key = data.toString('utf8', sp + 1, eq);
    into.set(key, data.subarray(eq + 1, off + len - 1));
    off += len;
  }
}
