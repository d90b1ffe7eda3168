/**
 * A busybox root filesystem from the host's static busybox (Debian's
 * busybox-static), for examples, tests and demos: no registry needed.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NotFoundError } from '../errors';

/** Where Debian's busybox-static installs its binary. */
export const BUSYBOX_STATIC = '/bin/busybox';

/** Writes a minimal busybox rootfs (every applet linked in /bin, /etc/passwd and group) into `dir`. */
export function writeBusyboxRootfs(dir: string, busybox = BUSYBOX_STATIC): void {
  if (!existsSync(busybox)) {
    throw new NotFoundError(`no static busybox at ${busybox}: install it with 'apt-get install busybox-static'`);
  }
  if (!isStaticElf(busybox)) {
    throw new NotFoundError(`${busybox} is not a statically linked ELF (it needs a loader): install busybox-static`);
  }
  for (const d of ['bin', 'etc', 'tmp', 'root', 'home', 'var', 'usr']) mkdirSync(join(dir, d), { recursive: true });
  chmodSync(join(dir, 'tmp'), 0o1777);
  chmodSync(join(dir, 'root'), 0o700);
  copyFileSync(busybox, join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  const applets = execFileSync(busybox, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet === 'busybox') continue;
    const link = join(dir, 'bin', applet);
    if (!existsSync(link)) symlinkSync('busybox', link);
  }
  symlinkSync('../bin', join(dir, 'usr/bin'));
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  writeFileSync(join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\napp:x:1000:\nstaff:x:50:app\n');
  mkdirSync(join(dir, 'home/app'), { recursive: true });
}

/** Whether an ELF64 file has no PT_INTERP program header (needs no dynamic loader). */
export function isStaticElf(path: string): boolean {
  const elf = readFileSync(path);
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > elf.length) return false;
    if (elf.readUInt32LE(off) === 3) return false; // PT_INTERP
  }
  return true;
}
