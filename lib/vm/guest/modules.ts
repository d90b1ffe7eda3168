/**
 * Kernel modules for the guest: find `<modulesDir>/kernel/**\/<name>.ko`,
 * read each module's ELF `.modinfo` section (`depends=`, `vermagic=`),
 * resolve dependencies transitively into load order and skip what the kernel
 * has built in (`modules.builtin`). Debian's kernel packages ship no
 * modules.dep (depmod runs at install time), so the ELF is the source of truth.
 * @module
 */
import { gunzipSync } from 'node:zlib';
import type { Dirent } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../../errors';

/** The modules a nacelle guest needs when they are not built in: the virtio-mmio transport and console. */
export const DEFAULT_GUEST_MODULES: readonly string[] = ['virtio_mmio', 'virtio_console'];
/** What the disk path adds: the block device, the erofs filesystem and overlay (a writable layer in RAM over it). */
export const DISK_GUEST_MODULES: readonly string[] = ['virtio_blk', 'erofs', 'overlay'];

/** A module resolved for loading. */
export interface ResolvedModule {
  /** Normalized name (`virtio_mmio`: dashes become underscores, as the kernel does). */
  name: string;
  /** The file on the host. */
  path: string;
  /** Its `.modinfo` fields (repeated keys keep the last value). */
  info: Record<string, string>;
}

/** Options of {@link resolveModules}. */
export interface ResolveModulesOptions {
  /** `.../lib/modules/<release>`. */
  modulesDir: string;
  /** Module names wanted (`virtio_console`, `virtio-mmio`). */
  names: readonly string[];
  /** The kernel's release; each module's vermagic must start with it. */
  release?: string;
}

const MODULE_SUFFIXES = ['.ko', '.ko.gz', '.ko.xz', '.ko.zst'] as const;

/** The kernel's spelling of a module name. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

function stripSuffix(file: string): string | undefined {
  for (const s of MODULE_SUFFIXES) if (file.endsWith(s)) return file.slice(0, -s.length);
  return undefined;
}

const indexCache = new Map<string, Promise<Map<string, string>>>();

/** name -> path of every module file under `<modulesDir>/kernel` (and `updates`, `extra`). */
async function moduleIndex(modulesDir: string): Promise<Map<string, string>> {
  let pending = indexCache.get(modulesDir);
  if (!pending) {
    pending = (async () => {
      const index = new Map<string, string>();
      const walk = async (dir: string): Promise<void> => {
        let entries: Dirent[];
        try {
          entries = await readdir(dir, { withFileTypes: true });
        } catch {
          return;
        }
        for (const e of entries) {
          const abs = join(dir, e.name);
          if (e.isDirectory()) await walk(abs);
          else {
            const base = stripSuffix(e.name);
            if (base !== undefined) {
              const name = normalizeModuleName(base);
              if (!index.has(name)) index.set(name, abs);
            }
          }
        }
      };
      // updates/ and extra/ override the tree's own modules, as depmod's search order does
      for (const sub of ['updates', 'extra', 'kernel']) await walk(join(modulesDir, sub));
      return index;
    })();
    indexCache.set(modulesDir, pending);
    pending.catch(() => indexCache.delete(modulesDir));
  }
  return pending;
}

/** Names of the modules built into the kernel, from `modules.builtin` (empty when absent). */
export async function builtinModules(modulesDir: string): Promise<Set<string>> {
  const text = await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const file = line.trim().split('/').pop();
    const base = file ? stripSuffix(file) : undefined;
    if (base) out.add(normalizeModuleName(base));
  }
  return out;
}

/**
 * The bytes of a module file, decompressed: `.ko` as is, `.ko.gz` through
 * zlib. `.ko.xz` and `.ko.zst` are refused: Node has no decompressor for them.
 */
export async function readModuleFile(path: string): Promise<Buffer> {
  if (path.endsWith('.ko.xz') || path.endsWith('.ko.zst'))
    throw new UnsupportedError(
      `module ${path} is compressed with ${path.endsWith('.xz') ? 'xz' : 'zstd'}, which nacelle cannot decompress; ` +
        'use a kernel whose modules are plain .ko (Debian\'s cloud kernel) or .ko.gz',
    );
  const data = await readFile(path);
  return path.endsWith('.gz') ? gunzipSync(data) : data;
}

/**
 * The `.modinfo` section of a module (an ELF relocatable object) as key/value
 * pairs. Repeated keys (alias=) keep the last value.
 */
export function parseModinfo(elf: Buffer, what = 'module'): Record<string, string> {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new InvalidArgumentError(`${what} is not an ELF file`);
  const is64 = elf[4] === 2;
  const little = elf[5] === 1;
  if (!is64) throw new UnsupportedError(`${what}: only 64-bit modules are supported`);
  const u16 = (o: number): number => (little ? elf.readUInt16LE(o) : elf.readUInt16BE(o));
  const u64 = (o: number): number => Number(little ? elf.readBigUInt64LE(o) : elf.readBigUInt64BE(o));
  const shoff = u64(0x28);
  const shentsize = u16(0x3a);
  const shnum = u16(0x3c);
  const shstrndx = u16(0x3e);
  if (shoff === 0 || shoff + shnum * shentsize > elf.length) throw new InvalidArgumentError(`${what}: section headers out of range`);
  const section = (i: number): { name: number; offset: number; size: number } => {
    const o = shoff + i * shentsize;
    return { name: elf.readUInt32LE(o), offset: u64(o + 0x18), size: u64(o + 0x20) };
  };
  const strtab = section(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameStart = strtab.offset + s.name;
    const nameEnd = elf.indexOf(0, nameStart);
    if (elf.toString('latin1', nameStart, nameEnd) !== '.modinfo') continue;
    if (s.offset + s.size > elf.length) throw new InvalidArgumentError(`${what}: .modinfo out of range`);
    const out: Record<string, string> = {};
    for (const rec of elf.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = rec.indexOf('=');
      if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    }
    return out;
  }
  throw new InvalidArgumentError(`${what} has no .modinfo section: not a kernel module`);
}

/**
 * Resolves `names` and their dependencies into load order (dependencies
 * first), leaving out modules built into the kernel.
 * @throws NotFoundError for a module that is neither a file nor built in
 * @throws InvalidArgumentError "modules do not match the kernel" when a
 *   module's vermagic names another release than `release`
 */
export async function resolveModules(opts: ResolveModulesOptions): Promise<ResolvedModule[]> {
  const index = await moduleIndex(opts.modulesDir);
  const builtin = await builtinModules(opts.modulesDir);
  const order: ResolvedModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = async (raw: string, wantedBy?: string): Promise<void> => {
    const name = normalizeModuleName(raw);
    if (done.has(name) || builtin.has(name)) return;
    if (visiting.has(name)) throw new InvalidArgumentError(`module dependency cycle through ${name} in ${opts.modulesDir}`);
    const path = index.get(name);
    if (!path)
      throw new NotFoundError(
        `kernel module ${name}${wantedBy ? ` (needed by ${wantedBy})` : ''} is neither built in nor under ${opts.modulesDir}/kernel`,
        { code: 'ERR_NO_MODULE' },
      );
    visiting.add(name);
    const info = parseModinfo(await readModuleFile(path), path);
    if (opts.release !== undefined) {
      const magic = (info.vermagic ?? '').split(' ')[0] ?? '';
      if (magic !== opts.release)
        throw new InvalidArgumentError(
          `modules do not match the kernel: ${path} was built for ${magic || 'an unknown release'}, the kernel is ${opts.release}`,
          { code: 'ERR_MODULE_MISMATCH' },
        );
    }
    for (const dep of (info.depends ?? '').split(',').filter((d) => d.length > 0)) await visit(dep, name);
    visiting.delete(name);
    done.add(name);
    order.push({ name, path, info });
  };
  for (const n of opts.names) await visit(n);
  return order;
}
