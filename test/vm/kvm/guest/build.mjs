// build.mjs: builds nacelle's freestanding KVM test guest (see README.md).
//
//   import { buildTestGuest } from './build.mjs';
//   const { bzImage, elf } = await buildTestGuest(outDir);
//
//   node test/vm/kvm/guest/build.mjs [outDir]     (default: build/test-guest)
//
// Runs gcc and objcopy with execFile (no shell); skips the build when both
// outputs are newer than every source. `elf` is the linked ELF64 image (PVH
// note, loads at 0x100000); `bzImage` wraps its flat binary behind a minimal
// Linux boot-protocol header (setup_sects = 1, 64-bit entry at +0x200).
import { execFile } from 'node:child_process';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '../../../..');

const SOURCES = ['start.S', 'guest.c', 'guest.h', 'guest.ld', 'build.mjs'];
const CFLAGS = [
  '-m64', '-ffreestanding', '-nostdlib', '-nostdinc', '-mno-sse', '-mno-mmx', '-mno-sse2',
  '-mno-red-zone', '-fno-pic', '-fno-pie', '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables', '-mgeneral-regs-only', '-O2',
  '-Wall', '-Wextra', '--param=min-pagesize=0', // low physical addresses are real memory here
];
const LDFLAGS = [
  '-static', '-nostdlib', '-no-pie', '-T', join(here, 'guest.ld'),
  '-Wl,-z,max-page-size=0x1000', '-Wl,--build-id=none', '-Wl,--no-warn-rwx-segments',
];

const LOAD_ADDR = 0x100000;
const SETUP_SECTS = 1;

async function mtime(path) {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return -1;
  }
}

/** Size in memory of the ELF's PT_LOAD segments from LOAD_ADDR on (image + bss). */
function elfMemEnd(buf) {
  if (buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2) throw new Error('guest.elf: not ELF64');
  const phoff = Number(buf.readBigUInt64LE(0x20));
  const phentsize = buf.readUInt16LE(0x36);
  const phnum = buf.readUInt16LE(0x38);
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (buf.readUInt32LE(ph) !== 1) continue; // PT_LOAD
    const paddr = Number(buf.readBigUInt64LE(ph + 0x18));
    const memsz = Number(buf.readBigUInt64LE(ph + 0x28));
    end = Math.max(end, paddr + memsz);
  }
  if (end <= LOAD_ADDR) throw new Error('guest.elf: no PT_LOAD above 0x100000');
  return end - LOAD_ADDR;
}

/** A bzImage: a one-sector setup holding only the boot header, then the flat image. */
function makeBzImage(flat, memSize) {
  const setupLen = (SETUP_SECTS + 1) * 512;
  const out = Buffer.alloc(setupLen + flat.length);
  out[0x1f1] = SETUP_SECTS;
  out.writeUInt32LE(Math.ceil(flat.length / 16), 0x1f4); // syssize
  out.writeUInt16LE(0xaa55, 0x1fe); // boot_flag
  out[0x200] = 0xeb; // jmp to the end of the header (never run)
  out[0x201] = 0x66;
  out.write('HdrS', 0x202, 'latin1');
  out.writeUInt16LE(0x020f, 0x206); // version 2.15
  out[0x211] = 0x01; // loadflags: LOADED_HIGH
  out.writeUInt32LE(LOAD_ADDR, 0x214); // code32_start
  out.writeUInt32LE(0x7fffffff, 0x22c); // initrd_addr_max
  out.writeUInt32LE(0x200000, 0x230); // kernel_alignment
  out[0x234] = 0; // relocatable_kernel
  out.writeUInt16LE(0x0001, 0x236); // xloadflags: XLF_KERNEL_64
  out.writeUInt32LE(0xffff, 0x238); // cmdline_size
  out.writeUInt32LE(Math.ceil(Math.max(memSize, flat.length) / 4096) * 4096, 0x260); // init_size
  flat.copy(out, setupLen);
  return out;
}

/**
 * Builds the test guest into outDir (created if needed) unless it is up to date.
 * @param {string} [outDir] default: <repo>/build/test-guest
 * @returns {Promise<{ bzImage: string, elf: string }>}
 */
export async function buildTestGuest(outDir = join(repoRoot, 'build', 'test-guest')) {
  outDir = resolve(outDir);
  const elf = join(outDir, 'guest.elf');
  const bzImage = join(outDir, 'bzImage');
  const newest = Math.max(...(await Promise.all(SOURCES.map((s) => mtime(join(here, s))))));
  const oldest = Math.min(await mtime(elf), await mtime(bzImage));
  if (oldest > newest) return { bzImage, elf };

  await mkdir(outDir, { recursive: true });
  const cc = process.env.CC || 'gcc';
  const objcopy = process.env.OBJCOPY || 'objcopy';
  const startObj = join(outDir, 'start.o');
  const guestObj = join(outDir, 'guest.o');
  const flatPath = join(outDir, 'guest.bin');
  const elfTmp = `${elf}.tmp`;
  await Promise.all([
    run(cc, [...CFLAGS, '-c', join(here, 'start.S'), '-o', startObj]),
    run(cc, [...CFLAGS, '-c', join(here, 'guest.c'), '-o', guestObj]),
  ]);
  await run(cc, [...LDFLAGS, startObj, guestObj, '-o', elfTmp]);
  await run(objcopy, ['-O', 'binary', elfTmp, flatPath]);
  const elfBuf = await readFile(elfTmp);
  const flat = await readFile(flatPath);
  await writeFile(`${bzImage}.tmp`, makeBzImage(flat, elfMemEnd(elfBuf)));
  await rename(`${bzImage}.tmp`, bzImage);
  await rename(elfTmp, elf);
  return { bzImage, elf };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const outDir = process.argv[2] ? resolve(process.argv[2]) : undefined;
  buildTestGuest(outDir).then(
    (r) => console.log(`bzImage: ${r.bzImage}\nelf: ${r.elf}`),
    (e) => {
      console.error(e.stderr || e.message || e);
      process.exit(1);
    },
  );
}
