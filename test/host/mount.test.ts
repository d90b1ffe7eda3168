import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { InvalidArgumentError, SystemCallError } from '../../lib/errors';
import { mount, mountFlags, umount } from '../../lib/host/mount';
import { setns, sethostname } from '../../lib/host/namespace';
import { native } from '../../lib/native';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

function mounted(target: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === target);
}

describeRoot('mount and umount through the addon', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('mount');
  });
  afterEach(async () => {
    // never leave a mount behind, whatever the test did
    while (mounted(join(dir, 'mnt'))) await umount(join(dir, 'mnt'), { detach: true });
    removeTempDir(dir);
  });

  it('mounts a tmpfs, sees it, and unmounts it', async () => {
    const target = join(dir, 'mnt');
    mkdirSync(target);
    await mount({ source: 'tmpfs', target, fstype: 'tmpfs', flags: ['nosuid', 'nodev'], data: 'size=1m,mode=700' });
    expect(mounted(target)).toBe(true);
    writeFileSync(join(target, 'f'), 'x');
    await umount(target);
    expect(mounted(target)).toBe(false);
    expect(existsSync(join(target, 'f'))).toBe(false);
  });

  it('remounts a bind mount read-only', async () => {
    const target = join(dir, 'mnt');
    mkdirSync(target);
    await mount({ source: dir, target, flags: ['bind'] });
    await mount({ target, flags: ['bind', 'remount', 'rdonly'] });
    expect(() => writeFileSync(join(target, 'nope'), 'x')).toThrow(/EROFS/);
    await umount(target);
  });

  it('gives ENOENT with syscall and path for a missing mount point', async () => {
    const target = join(dir, 'missing');
    const err = await mount({ source: 'tmpfs', target, fstype: 'tmpfs' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SystemCallError);
    expect(err).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'mount', path: target });
    expect((err as Error).message).toBe(`ENOENT: no such file or directory, mount '${target}'`);
  });

  it('gives EINVAL for bad flags and for a target that is not a mount point', async () => {
    const target = join(dir, 'mnt');
    mkdirSync(target);
    await mount({ source: 'tmpfs', target, fstype: 'tmpfs' });
    const badFlags = await umount(target, { flags: 0x4000_0000 }).catch((e: unknown) => e);
    expect(badFlags).toMatchObject({ code: 'EINVAL', syscall: 'umount2', path: target });
    await umount(target);
    const notMounted = await umount(target).catch((e: unknown) => e);
    expect(notMounted).toMatchObject({ code: 'EINVAL', syscall: 'umount2' });
    // MS_BIND | MS_MOVE together is refused by the kernel
    const c = native().constants;
    const conflicting = await mount({ source: dir, target, flags: c.MS_MOVE | c.MS_REMOUNT | c.MS_BIND }).catch(
      (e: unknown) => e,
    );
    expect(conflicting).toMatchObject({ code: 'EINVAL', syscall: 'mount' });
  });

  it('rejects unknown flag names before calling the kernel', () => {
    expect(() => mountFlags(['bind', 'sideways' as 'bind'])).toThrow(InvalidArgumentError);
  });
});

describeRoot('namespace calls on the calling thread', () => {
  it('joins its own uts namespace, and refuses a mount namespace in a multithreaded process', () => {
    const uts = openSync('/proc/self/ns/uts', 'r');
    const mnt = openSync('/proc/self/ns/mnt', 'r');
    try {
      expect(() => setns(uts, 'uts')).not.toThrow();
      expect(() => setns(uts, 'net')).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'setns' }));
      expect(() => setns(mnt, 'mount')).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    } finally {
      closeSync(uts);
      closeSync(mnt);
    }
    expect(() => setns(987654, 'uts')).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('sethostname rejects a name longer than the kernel allows', () => {
    expect(() => sethostname('x'.repeat(200))).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'sethostname' }));
  });
});
