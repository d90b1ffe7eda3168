/**
 * The ELF vmlinux inside a bzImage: what the built-in monitor boots through
 * the PVH entry. The bzImage's setup header says where the compressed payload
 * is; gzip goes through zlib and LZ4 (the legacy frame Linux uses, as Debian's
 * cloud kernel has it) through a small decoder here.
 * @module
 */
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { InvalidArgumentError, UnsupportedError } from '../../errors';

const LZ4_LEGACY_MAGIC = 0x184c2102;

/** Decodes one LZ4 block into out at pos; returns the new pos. */
function lz4Block(src: Buffer, start: number, end: number, out: Buffer, pos: number): number {
  let i = start;
  while (i < end) {
    const token = src[i++]!;
    let lit = token >> 4;
    if (lit === 15) {
      let b: number;
      do {
        b = src[i++]!;
        lit += b;
      } while (b === 255 && i < end);
    }
    if (i + lit > end || pos + lit > out.length) throw new InvalidArgumentError('LZ4: literal run beyond the block');
    src.copy(out, pos, i, i + lit);
    i += lit;
    pos += lit;
    if (i >= end) break; // the last sequence has literals only
    const offset = src[i]! | (src[i + 1]! << 8);
    i += 2;
    if (offset === 0 || offset > pos) throw new InvalidArgumentError('LZ4: match offset outside the output');
    let len = token & 15;
    if (len === 15) {
      let b: number;
      do {
        b = src[i++]!;
        len += b;
      } while (b === 255 && i < end);
    }
    len += 4;
    if (pos + len > out.length) throw new InvalidArgumentError('LZ4: match beyond the output');
    if (offset >= len) {
      out.copy(out, pos, pos - offset, pos - offset + len);
      pos += len;
    } else {
      for (let k = 0; k < len; k++, pos++) out[pos] = out[pos - offset]!;
    }
  }
  return pos;
}

/** Decodes Linux's LZ4 legacy frame (magic, then blocks of up to 8 MiB, each with its compressed size). */
export function decodeLz4Legacy(src: Buffer, maxOutput = 512 << 20): Buffer {
  if (src.length < 4 || src.readUInt32LE(0) !== LZ4_LEGACY_MAGIC) throw new InvalidArgumentError('not an LZ4 legacy frame');
  const blocks: Buffer[] = [];
  let total = 0;
  let i = 4;
  while (i + 4 <= src.length) {
    const size = src.readUInt32LE(i);
    if (size === LZ4_LEGACY_MAGIC) {
      i += 4; // a concatenated frame
      continue;
    }
    i += 4;
    if (size === 0 || i + size > src.length) break; // the kernel appends its size after the last block
    const out = Buffer.allocUnsafe(8 << 20);
    const n = lz4Block(src, i, i + size, out, 0);
    blocks.push(out.subarray(0, n));
    total += n;
    if (total > maxOutput) throw new InvalidArgumentError(`LZ4: output larger than ${maxOutput} bytes`);
    i += size;
  }
  return Buffer.concat(blocks, total);
}

/** Extracts the ELF vmlinux from a bzImage's bytes (gzip or LZ4 payloads). */
export function vmlinuxFromBzImage(bz: Buffer, name = 'bzImage'): Buffer {
  if (bz.length < 0x300 || bz.toString('latin1', 0x202, 0x206) !== 'HdrS') throw new InvalidArgumentError(`${name} is not a bzImage (no HdrS header)`);
  const setupSects = bz[0x1f1] || 4;
  const payloadOffset = bz.readUInt32LE(0x248);
  const payloadLength = bz.readUInt32LE(0x24c);
  const start = (setupSects + 1) * 512 + payloadOffset;
  if (payloadLength === 0 || start + payloadLength > bz.length) throw new InvalidArgumentError(`${name}: the payload lies outside the file`);
  const payload = bz.subarray(start, start + payloadLength);
  let elf: Buffer;
  if (payload[0] === 0x1f && payload[1] === 0x8b) elf = gunzipSync(payload);
  else if (payload.readUInt32LE(0) === LZ4_LEGACY_MAGIC) elf = decodeLz4Legacy(payload);
  else throw new UnsupportedError(`${name}: the kernel payload is compressed with something other than gzip or LZ4 (magic ${payload.subarray(0, 4).toString('hex')})`);
  if (elf.toString('latin1', 1, 4) !== 'ELF') throw new InvalidArgumentError(`${name}: the payload did not decompress to an ELF file`);
  return elf;
}

/**
 * The vmlinux of a bzImage, extracted once and cached beside it as
 * `vmlinux-<name>` (or under `cacheDir`). Returns the ELF file's path.
 */
export async function extractVmlinux(bzImage: string, cacheDir = dirname(bzImage)): Promise<string> {
  const out = join(cacheDir, `vmlinux-${basename(bzImage).replace(/^vmlinuz-?/, '')}`);
  const [src, dst] = await Promise.all([stat(bzImage), stat(out).catch(() => null)]);
  if (dst && dst.mtimeMs >= src.mtimeMs) return out;
  const elf = vmlinuxFromBzImage(await readFile(bzImage), bzImage);
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  await writeFile(tmp, elf);
  await rename(tmp, out);
  return out;
}
