/**
 * The disk path: nacelle's own erofs writer, checked by erofs-utils'
 * fsck.erofs (integrity, then --extract compared with the merged layers).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../../lib/native';
import { readCpio } from '../../../lib/vm/guest/cpio';
import { buildDiskBoot, writeErofsImage } from '../../../lib/vm/guest/disk';
import { gunzipSync } from 'node:zlib';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { type KernelFixture, initFixture, kernelFixture } from './fixtures';

describeRoot('erofs disk images', () => {
  let dir: string;
  let lower: string;
  let upper: string;
  const t = new Date('2023-03-04T05:06:07Z');
  beforeAll(() => {
    dir = makeTempDir('erofs');
    lower = join(dir, 'lower');
    upper = join(dir, 'upper');
    mkdirSync(join(lower, 'etc'), { recursive: true });
    mkdirSync(join(lower, 'opaque/old'), { recursive: true });
    mkdirSync(join(lower, 'many'), { recursive: true });
    writeFileSync(join(lower, 'etc/gone'), 'x');
    writeFileSync(join(lower, 'opaque/old/f'), 'hidden');
    writeFileSync(join(lower, 'small'), 'tiny\n');
    writeFileSync(join(lower, 'exact'), Buffer.alloc(8192, 1));
    writeFileSync(join(lower, 'big'), Buffer.from(Array.from({ length: 300_001 }, (_, i) => (i * 31) & 0xff)));
    chownSync(join(lower, 'small'), 1000, 2000);
    chmodSync(join(lower, 'small'), 0o4750);
    utimesSync(join(lower, 'small'), t, t);
    linkSync(join(lower, 'big'), join(lower, 'big-hardlink'));
    symlinkSync('small', join(lower, 'to-small'));
    symlinkSync('x'.repeat(3000), join(lower, 'long-link'));
    // a directory spanning several dirent blocks
    for (let i = 0; i < 600; i++) writeFileSync(join(lower, 'many', `file-with-a-longish-name-${String(i).padStart(4, '0')}`), `${i}`);
    native().mknod(join(lower, 'null'), 0o020666, 1, 3);
    mkdirSync(join(upper, 'etc'), { recursive: true });
    mkdirSync(join(upper, 'opaque'), { recursive: true });
    native().mknod(join(upper, 'etc/gone'), 0o020000, 0, 0);
    native().lsetxattr(join(upper, 'opaque'), 'trusted.overlay.opaque', Buffer.from('y'));
    writeFileSync(join(upper, 'opaque/new'), 'new');
  });
  afterAll(() => removeTempDir(dir));

  it('writes an image fsck.erofs accepts and extracts to the merged tree', async () => {
    const img = join(dir, 'root.erofs');
    const r = await writeErofsImage(img, [lower, upper]);
    expect(r.bytes).toBe(lstatSync(img).size);
    expect(r.bytes % 4096).toBe(0);
    execFileSync('fsck.erofs', [img], { stdio: 'pipe' });
    const x = join(dir, 'x');
    execFileSync('fsck.erofs', [`--extract=${x}`, '--preserve', img], { stdio: 'pipe' });
    expect(readdirSync(x).sort()).toEqual(['big', 'big-hardlink', 'dev', 'etc', 'exact', 'long-link', 'many', 'null', 'opaque', 'proc', 'run', 'small', 'sys', 'tmp', 'to-small']);
    expect(readdirSync(join(x, 'etc'))).toEqual([]);
    expect(readdirSync(join(x, 'opaque'))).toEqual(['new']);
    expect(readFileSync(join(x, 'big')).equals(readFileSync(join(lower, 'big')))).toBe(true);
    expect(readFileSync(join(x, 'exact')).equals(Buffer.alloc(8192, 1))).toBe(true);
    expect(readFileSync(join(x, 'small'), 'utf8')).toBe('tiny\n');
    const small = lstatSync(join(x, 'small'));
    expect([small.uid, small.gid, small.mtimeMs]).toEqual([1000, 2000, t.getTime()]);
    // fsck.erofs's extractor drops set-id bits (chmod before chown): read the inode's i_mode itself
    const nid = Number(/NID:\s*(\d+)/.exec(execFileSync('dump.erofs', ['--path=/small', img], { encoding: 'utf8' }))?.[1]);
    expect(readFileSync(img).readUInt16LE(nid * 32 + 4)).toBe(0o104750);
    expect(readlinkSync(join(x, 'to-small'))).toBe('small');
    expect(readlinkSync(join(x, 'long-link'))).toBe('x'.repeat(3000));
    expect(readdirSync(join(x, 'many'))).toHaveLength(600);
    expect(readFileSync(join(x, 'many', 'file-with-a-longish-name-0599'), 'utf8')).toBe('599');
    expect(lstatSync(join(x, 'null')).isCharacterDevice()).toBe(true);
    expect(lstatSync(join(x, 'tmp')).mode & 0o7777).toBe(0o1777);
  });

  it('keeps hard links as one inode', async () => {
    const img = join(dir, 'links.erofs');
    await writeErofsImage(img, lower);
    const out = execFileSync('dump.erofs', ['--path=/big-hardlink', img], { encoding: 'utf8' });
    const big = execFileSync('dump.erofs', ['--path=/big', img], { encoding: 'utf8' });
    const nid = (s: string) => /NID:\s*(\d+)/i.exec(s)?.[1];
    expect(nid(out)).toBeDefined();
    expect(nid(out)).toBe(nid(big));
  });

  describe('with a kernel', () => {
    let fx: KernelFixture;
    let init: { path: string; cleanup: () => void };
    beforeAll(async () => {
      fx = await kernelFixture();
      init = initFixture();
    }, 180_000);
    afterAll(() => {
      fx?.cleanup();
      init?.cleanup();
    });

    it('builds the disk boot: erofs disk plus an initramfs with init, config and the disk modules', async () => {
      const r = await buildDiskBoot({
        rootfs: [lower, upper],
        kernel: fx.info,
        config: { argv: ['/small'], env: ['PATH=/bin'], workdir: '/', uid: 0, gid: 0, hostname: 'd' },
        disk: join(dir, 'boot.erofs'),
        initramfs: join(dir, 'boot.cpio.gz'),
        init: init.path,
      });
      expect(r.modules).toEqual(expect.arrayContaining(['virtio_mmio', 'virtio_console', 'virtio_blk', 'erofs']));
      const entries = readCpio(gunzipSync(readFileSync(r.initramfs)));
      const cfg = entries.find((e) => e.name === '.nacelle/config')?.data.toString() ?? '';
      expect(cfg).toContain('root=/dev/vda\0rootfstype=erofs\0');
      for (const m of r.modules) {
        expect(cfg).toContain(`module=/.nacelle/modules/${m}.ko\0`);
        expect(entries.some((e) => e.name === `.nacelle/modules/${m}.ko`)).toBe(true);
      }
      expect(entries.some((e) => e.name === 'small')).toBe(false); // the rootfs is on the disk
      execFileSync('fsck.erofs', [r.disk], { stdio: 'pipe' });
      const again = await buildDiskBoot({ rootfs: [lower, upper], kernel: fx.info, config: { argv: ['true'], env: [], workdir: '/', uid: 0, gid: 0, hostname: 'd' }, disk: r.disk, initramfs: join(dir, 'boot2.cpio.gz'), init: init.path, reuseDisk: true });
      expect(again.diskBytes).toBe(r.diskBytes);
    });
  });
});
