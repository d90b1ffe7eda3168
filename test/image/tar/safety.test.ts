import { lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NacelleError } from '../../../lib/errors';
import { applyLayer, LayerError } from '../../../lib/image/tar';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { chunked, makeTar, type TarSpec } from './helpers';

describe('applyLayer refuses unsafe and broken layers', () => {
  let dir: string;
  let target: string;
  let outside: string;
  beforeEach(() => {
    dir = makeTempDir('tar-safety');
    target = join(dir, 'target');
    outside = join(dir, 'outside');
    mkdirSync(target);
    mkdirSync(outside);
    writeFileSync(join(outside, 'secret'), 'secret');
  });
  afterEach(() => removeTempDir(dir));

  /** Everything in the sandbox except the target, to prove nothing was written outside. */
  function outsideState(): string {
    const walk = (p: string): string[] =>
      readdirSync(p)
        .sort()
        .flatMap((n) => {
          if (p === dir && n === 'target') return [];
          const st = lstatSync(join(p, n));
          const line = `${join(p, n)} ${st.mode.toString(8)} ${st.uid} ${st.nlink} ${st.mtimeMs} ${st.size}`;
          return st.isDirectory() ? [line, ...walk(join(p, n))] : [line];
        });
    return walk(dir).join('\n');
  }

  async function refuse(specs: readonly TarSpec[], code: string, path: string, options?: Parameters<typeof applyLayer>[2]): Promise<LayerError> {
    const before = outsideState();
    const err = await applyLayer(chunked(gzipSync(await makeTar(specs)), [512 + 3]), target, options).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LayerError);
    expect(err).toBeInstanceOf(NacelleError);
    expect(err).toMatchObject({ code, path });
    expect((err as Error).message).toContain(path);
    expect(outsideState()).toBe(before);
    return err as LayerError;
  }

  it('refuses names with .. components instead of stripping them', async () => {
    await refuse([{ name: '../outside/evil', data: 'x' }], 'ERR_LAYER_UNSAFE', '../outside/evil');
    await refuse([{ name: 'a/../../outside/evil', data: 'x' }], 'ERR_LAYER_UNSAFE', 'a/../../outside/evil');
    await refuse([{ name: 'ok/../', type: 'directory' }], 'ERR_LAYER_UNSAFE', 'ok/../');
  });

  it('refuses absolute names', async () => {
    const evil = join(outside, 'evil');
    await refuse([{ name: evil, data: 'x' }], 'ERR_LAYER_UNSAFE', evil);
  });

  it('refuses an entry written through a symlink from the archive', async () => {
    await refuse([{ name: 'link', type: 'symlink', linkname: outside }, { name: 'link/passwd', data: 'pwned' }], 'ERR_LAYER_UNSAFE', 'link/passwd');
    await refuse([{ name: 'rel', type: 'symlink', linkname: '../outside' }, { name: 'rel/sub/x', data: 'pwned' }], 'ERR_LAYER_UNSAFE', 'rel/sub/x');
  });

  it('refuses an entry through a symlink that replaced a directory it had already checked', async () => {
    await refuse(
      [{ name: 'd/' }, { name: 'd/ok', data: 'fine' }, { name: 'd', type: 'symlink', linkname: outside }, { name: 'd/secret', data: 'pwned' }],
      'ERR_LAYER_UNSAFE',
      'd/secret',
    );
  });

  it('refuses an entry through a symlink already in the target', async () => {
    symlinkSync(outside, join(target, 'etc'));
    await refuse([{ name: 'etc/passwd', data: 'pwned' }], 'ERR_LAYER_UNSAFE', 'etc/passwd');
  });

  it('refuses hardlinks that escape or go through a symlink', async () => {
    const secret = join(outside, 'secret');
    await refuse([{ name: 'h', type: 'link', linkname: '../outside/secret' }], 'ERR_LAYER_UNSAFE', 'h');
    await refuse([{ name: 'h', type: 'link', linkname: secret }], 'ERR_LAYER_UNSAFE', 'h');
    await refuse([{ name: 'ln', type: 'symlink', linkname: outside }, { name: 'h', type: 'link', linkname: 'ln/secret' }], 'ERR_LAYER_UNSAFE', 'h');
    await refuse([{ name: 'h', type: 'link', linkname: 'missing' }], 'ERR_LAYER_INVALID', 'h');
    expect(lstatSync(secret).nlink).toBe(1);
  });

  it('refuses whiteouts that point outside their directory', async () => {
    await refuse([{ name: '../.wh.outside' }], 'ERR_LAYER_UNSAFE', '../.wh.outside');
    await refuse([{ name: 'a/.wh...' }], 'ERR_LAYER_UNSAFE', 'a/.wh...');
    await refuse([{ name: 'ln', type: 'symlink', linkname: outside }, { name: 'ln/.wh.secret' }], 'ERR_LAYER_UNSAFE', 'ln/.wh.secret');
    await refuse([{ name: 'ln2', type: 'symlink', linkname: outside }, { name: 'ln2/.wh..wh..opq' }], 'ERR_LAYER_UNSAFE', 'ln2/.wh..wh..opq');
    expect(readFileSync(join(outside, 'secret'), 'utf8')).toBe('secret');
  });

  it('refuses device nodes when devices are not allowed', async () => {
    await refuse([{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 }], 'ERR_LAYER_DEVICE', 'dev/sda', { allowDevices: false });
    await refuse([{ name: 'dev/mem', type: 'character-device', devmajor: 1, devminor: 1 }], 'ERR_LAYER_DEVICE', 'dev/mem', { allowDevices: false });
  });

  it('never follows a symlink when setting metadata', async () => {
    symlinkSync(join(outside, 'secret'), join(target, 'ln'));
    symlinkSync(outside, join(target, 'dirlink'));
    const before = outsideState();
    await applyLayer(
      chunked(
        await makeTar([
          { name: 'dirlink/', mode: 0o40777, mtime: 1 }, // replaces the symlink with a directory
          { name: 'ln', type: 'symlink', linkname: join(outside, 'secret'), mode: 0o120777, mtime: 2 },
        ]),
      ),
      target,
    );
    expect(lstatSync(join(target, 'dirlink')).isDirectory()).toBe(true);
    expect(outsideState()).toBe(before);
  });

  describe('broken input', () => {
    let tarball: Buffer;
    beforeEach(async () => {
      const big = Buffer.alloc(300_000);
      for (let i = 0; i < big.length; i++) big[i] = (i * 7919) % 251;
      tarball = await makeTar([{ name: 'a', data: 'a' }, { name: 'big', data: big }, { name: 'z', data: 'z' }]);
    });

    async function corrupt(data: Buffer): Promise<LayerError> {
      const err = await applyLayer(chunked(data, [1000]), target).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LayerError);
      expect(err).toMatchObject({ code: 'ERR_LAYER_CORRUPT' });
      return err as LayerError;
    }

    it('a truncated gzip stream', async () => {
      const gz = gzipSync(tarball);
      const err = await corrupt(gz.subarray(0, Math.floor(gz.length / 2)));
      expect(err.message).toMatch(/truncated gzip/);
      await corrupt(gz.subarray(0, gz.length - 4)); // only the length trailer missing
    });

    it('a corrupt gzip stream', async () => {
      const gz = Buffer.from(gzipSync(tarball));
      for (let i = 100; i < 140; i++) gz[i] = (gz[i] as number) ^ 0x55;
      await corrupt(gz);
      const crc = Buffer.from(gzipSync(tarball));
      crc[crc.length - 6] = (crc[crc.length - 6] as number) ^ 1; // CRC32 trailer
      await corrupt(crc);
    });

    it('a truncated tar, mid-entry and at an entry boundary', async () => {
      const err = await corrupt(tarball.subarray(0, 512 * 3 + 100));
      expect(err.path).toBe('big');
      expect(err.message).toContain('big');
      await corrupt(gzipSync(tarball.subarray(0, 512 * 3 + 100)));
      await corrupt(tarball.subarray(0, tarball.length - 1024)); // the end-of-archive blocks cut off
      await corrupt(Buffer.alloc(0));
    });

    it('a tar header with a bad checksum', async () => {
      const bad = Buffer.from(tarball);
      bad[1] = 0x41;
      const err = await corrupt(bad);
      expect(err.message).toMatch(/checksum/);
    });
  });
});
