/**
 * Kernel discovery, the Debian cloud kernel fetch helper, and module
 * resolution from the kernel's own tree (ELF .modinfo depends=/vermagic=).
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../../../lib/errors';
import { cachedKernel, defaultKernelCache, fetchDebianCloudKernel, findKernel, readKernelRelease } from '../../../lib/vm/guest/kernel';
import { DEFAULT_GUEST_MODULES, DISK_GUEST_MODULES, type ResolvedModule, builtinModules, parseModinfo, readModuleFile, resolveModules } from '../../../lib/vm/guest/modules';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { type KernelFixture, kernelFixture } from './fixtures';

/** Every module comes after the modules it depends on (that are not built in). */
function expectLoadOrder(mods: ResolvedModule[]): void {
  const seen = new Set<string>();
  for (const m of mods) {
    for (const dep of (m.info.depends ?? '').split(',').filter(Boolean)) expect(seen.has(dep.replace(/-/g, '_'))).toBe(true);
    seen.add(m.name);
  }
}

function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  return fn().finally(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
}

describe('guest kernels and modules', () => {
  let fx: KernelFixture;
  let dir: string;
  beforeAll(async () => {
    dir = makeTempDir('kernel');
    fx = await kernelFixture();
  }, 180_000);
  afterAll(() => {
    fx?.cleanup();
    removeTempDir(dir);
  });

  it('reads the release from the bzImage header and matches the modules directory', async () => {
    const release = await readKernelRelease(fx.info.kernel);
    expect(release).toMatch(/^\d+\.\d+/);
    expect(fx.info.release).toBe(release);
    expect(fx.info.modulesDir?.endsWith(`/${release}`)).toBe(true);
  });

  it('refuses a file that is not a kernel, naming it, and a missing one', async () => {
    const junk = join(dir, 'not-a-kernel');
    writeFileSync(junk, Buffer.alloc(4096, 1));
    await expect(findKernel({ kernel: junk })).rejects.toThrow(InvalidArgumentError);
    await expect(findKernel({ kernel: junk })).rejects.toThrow(`${junk} is not a kernel`);
    await expect(findKernel({ kernel: join(dir, 'missing') })).rejects.toThrow(NotFoundError);
    await expect(findKernel({ kernel: fx.info.kernel, modulesDir: join(dir, 'nope') })).rejects.toThrow(/modules directory/);
  });

  it('looks at the option, then $NACELLE_KERNEL, then the host, then the cache', async () => {
    const opt = await findKernel({ kernel: fx.info.kernel, ...(fx.info.modulesDir ? { modulesDir: fx.info.modulesDir } : {}) });
    expect(opt).toMatchObject({ kernel: fx.info.kernel, source: 'option', release: fx.info.release });
    const env = await withEnv({ NACELLE_KERNEL: fx.info.kernel, NACELLE_KERNEL_MODULES: fx.info.modulesDir }, () => findKernel());
    expect(env).toMatchObject({ kernel: fx.info.kernel, modulesDir: fx.info.modulesDir, source: 'env' });
    // a cache laid out as fetchDebianCloudKernel leaves it
    const release = fx.info.release as string;
    const cache = join(dir, 'cache');
    mkdirSync(join(cache, release, 'boot'), { recursive: true });
    mkdirSync(join(cache, release, 'lib', 'modules', release), { recursive: true });
    copyFileSync(fx.info.kernel, join(cache, release, 'boot', `vmlinuz-${release}`));
    expect(await cachedKernel(cache)).toMatchObject({ source: 'cache', release, kernel: join(cache, release, 'boot', `vmlinuz-${release}`) });
    if (!existsSync(`/boot/vmlinuz-${osRelease()}`)) {
      const found = await withEnv({ NACELLE_KERNEL: undefined }, () => findKernel({ cacheDir: cache }));
      expect(found.source).toBe('cache');
      const none = withEnv({ NACELLE_KERNEL: undefined }, () => findKernel({ cacheDir: join(dir, 'empty-cache') }));
      await expect(none).rejects.toThrow(NotFoundError);
      await expect(withEnv({ NACELLE_KERNEL: undefined }, () => findKernel({ cacheDir: join(dir, 'empty-cache') }))).rejects.toThrow(
        /tried the kernel option, \$NACELLE_KERNEL, \/boot\/vmlinuz-.*, the kernel cache .*fetchDebianCloudKernel/,
      );
    }
  });

  it('keeps the cache under $NACELLE_KERNEL_CACHE when set', async () => {
    expect(await withEnv({ NACELLE_KERNEL_CACHE: '/some/where' }, async () => defaultKernelCache())).toBe('/some/where');
    const dflt = await withEnv({ NACELLE_KERNEL_CACHE: undefined }, async () => defaultKernelCache());
    expect(dflt).toMatch(process.geteuid?.() === 0 ? /^\/var\/cache\/nacelle\/kernels$/ : /\/nacelle\/kernels$/);
  });

  it('fetches the Debian cloud kernel into a cache, idempotently', async () => {
    // when the fixture fetched, fetch again into the same cache: nothing is downloaded twice
    const reuse = fx.info.source === 'cache' ? dirname(dirname(dirname(fx.info.kernel))) : undefined;
    const cache = reuse ?? join(dir, 'fetched');
    const first = await fetchDebianCloudKernel(cache);
    expect(first.source).toBe('cache');
    expect(first.kernel).toBe(join(cache, first.release as string, 'boot', `vmlinuz-${first.release}`));
    expect(existsSync(join(first.modulesDir as string, 'kernel'))).toBe(true);
    const again = await fetchDebianCloudKernel(cache);
    expect(again).toEqual(first);
  }, 180_000);

  it('resolves virtio_mmio and virtio_console with their dependencies, in load order', async () => {
    const mods = await resolveModules({ modulesDir: fx.info.modulesDir as string, names: DEFAULT_GUEST_MODULES, release: fx.info.release as string });
    const names = mods.map((m) => m.name);
    expect(names).toEqual(expect.arrayContaining(['virtio_mmio', 'virtio_console']));
    const builtin = await builtinModules(fx.info.modulesDir as string);
    for (const n of ['virtio', 'virtio_ring']) expect(names.includes(n) || builtin.has(n)).toBe(true);
    expectLoadOrder(mods);
    for (const m of mods) expect(m.info.vermagic?.split(' ')[0]).toBe(fx.info.release);
    const disk = await resolveModules({ modulesDir: fx.info.modulesDir as string, names: DISK_GUEST_MODULES, release: fx.info.release as string });
    expect(disk.map((m) => m.name)).toEqual(expect.arrayContaining(['virtio_blk', 'erofs']));
    expectLoadOrder(disk);
  });

  it('takes module names with dashes, as modprobe does, and orders dependencies first', async () => {
    const mods = await resolveModules({ modulesDir: fx.info.modulesDir as string, names: ['virtio-mmio', 'virtio_console'], release: fx.info.release as string });
    const builtin = await builtinModules(fx.info.modulesDir as string);
    expect(mods.map((m) => m.name)).toEqual(['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_console'].filter((n) => !builtin.has(n)));
  });

  it('says "modules do not match the kernel" for another release', async () => {
    await expect(resolveModules({ modulesDir: fx.info.modulesDir as string, names: ['virtio_console'], release: '9.9.9-other' })).rejects.toThrow(
      /modules do not match the kernel: .*virtio.*\.ko was built for .*, the kernel is 9\.9\.9-other/,
    );
  });

  it('skips built-in modules, refuses unknown and xz/zstd-compressed ones', async () => {
    const real = await resolveModules({ modulesDir: fx.info.modulesDir as string, names: ['virtio_mmio'] });
    const tree = join(dir, 'modules');
    mkdirSync(join(tree, 'kernel', 'drivers'), { recursive: true });
    for (const m of real) copyFileSync(m.path, join(tree, 'kernel', 'drivers', `${m.name}.ko`));
    writeFileSync(join(tree, 'modules.builtin'), 'kernel/drivers/virtio/virtio.ko\n');
    const mods = await resolveModules({ modulesDir: tree, names: ['virtio_mmio'] });
    expect(mods.map((m) => m.name)).not.toContain('virtio');
    expect(mods.map((m) => m.name)).toContain('virtio_mmio');
    await expect(resolveModules({ modulesDir: tree, names: ['no_such_module'] })).rejects.toThrow(NotFoundError);
    const xzTree = join(dir, 'modules-xz'); // a fresh tree: module indexes are cached per directory
    mkdirSync(join(xzTree, 'kernel'), { recursive: true });
    writeFileSync(join(xzTree, 'kernel', 'squashed.ko.xz'), 'xz');
    await expect(resolveModules({ modulesDir: xzTree, names: ['squashed'] })).rejects.toThrow(UnsupportedError);
    await expect(readModuleFile(join(xzTree, 'kernel', 'squashed.ko.xz'))).rejects.toThrow(/cannot decompress/);
    expect(() => parseModinfo(Buffer.alloc(100), 'junk')).toThrow(/not an ELF/);
  });
});
