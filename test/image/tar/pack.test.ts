import { mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayer, packDirectory } from '../../../lib/image/tar';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { buildFixture, chunked, Collector, run, sha256, snapshot, tarOf } from './helpers';

/** The fixture's snapshot without what a layer leaves out (the socket). */
function layerView(root: string): ReturnType<typeof snapshot> {
  return snapshot(root).filter((e) => e.type !== 'other');
}

async function pack(dir: string, options?: Parameters<typeof packDirectory>[2]): Promise<{ blob: Buffer; result: Awaited<ReturnType<typeof packDirectory>> }> {
  const out = new Collector();
  const result = await packDirectory(dir, out, options);
  return { blob: out.buffer, result };
}

describe('packDirectory and applyLayer (unprivileged parts)', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-pack');
  });
  afterEach(() => removeTempDir(dir));

  it('round-trips plain files, directories and symlinks, gzip and plain', async () => {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'd/e'), { recursive: true });
    writeFileSync(join(src, 'd/e/f'), 'hello');
    writeFileSync(join(src, 'top'), '');
    symlinkSync('d/e/f', join(src, 'ln'));
    utimesSync(join(src, 'd/e/f'), 1_000_000, 1_000_000);
    for (const compression of ['gzip', 'none'] as const) {
      const { blob, result } = await pack(src, { compression });
      expect(result.size).toBe(blob.length);
      expect(result.digest).toBe(sha256(blob));
      expect(result.diffId).toBe(sha256(tarOf(blob)));
      if (compression === 'none') expect(result.digest).toBe(result.diffId);
      else expect(blob.subarray(0, 10)).toEqual(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]));
      const dst = join(dir, `dst-${compression}`);
      mkdirSync(dst);
      const applied = await applyLayer(chunked(blob, [4096]), dst);
      expect(applied).toEqual({ diffId: result.diffId, entries: 5, bytes: tarOf(blob).length });
      expect(snapshot(dst)).toEqual(snapshot(src));
    }
  });

  it('names entries relative, directories with a trailing slash, in sorted order', async () => {
    const src = join(dir, 'src');
    for (const d of ['a', 'a-b', 'B', 'a/c']) mkdirSync(join(src, d), { recursive: true });
    for (const f of ['a/x', 'a-b/y', 'a.txt', 'a/c/z']) writeFileSync(join(src, f), f);
    const { blob } = await pack(src, { compression: 'none' });
    writeFileSync(join(dir, 'l.tar'), blob);
    expect(run('tar', ['-tf', join(dir, 'l.tar')]).trim().split('\n')).toEqual(['B/', 'a/', 'a/c/', 'a/c/z', 'a/x', 'a-b/', 'a-b/y', 'a.txt']);
  });

  it('rejects bad options', async () => {
    await expect(packDirectory(dir, new Collector(), { gzipLevel: 12 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });
});

describeRoot('packDirectory and applyLayer', () => {
  let dir: string;
  let src: string;
  beforeEach(() => {
    dir = makeTempDir('tar-pack');
    src = join(dir, 'src');
    mkdirSync(src);
    buildFixture(src);
  });
  afterEach(() => removeTempDir(dir));

  it('round-trips modes, owners, mtimes, xattrs, hardlinks, symlinks, devices, fifos and long names', async () => {
    const { blob, result } = await pack(src);
    const dst = join(dir, 'dst');
    mkdirSync(dst);
    const applied = await applyLayer(chunked(blob, [65536]), dst);
    expect(applied.diffId).toBe(result.diffId);
    const got = snapshot(dst);
    expect(got).toEqual(layerView(src));
    // spot checks, so a snapshot bug cannot hide a loss
    const byPath = new Map(got.map((e) => [e.path, e]));
    expect(byPath.get('srv/suid')).toMatchObject({ mode: '4755', xattrs: { 'trusted.nacelle': '74' } });
    expect(byPath.get('tmp')).toMatchObject({ mode: '1777' });
    expect(byPath.get('home/user/bigid')).toMatchObject({ uid: 3_000_000, gid: 3_000_001 });
    expect(byPath.get('etc/hosts')?.xattrs).toEqual({ 'user.binary': 'ff00800a3d', 'user.comment': '68656c6c6f' });
    expect(byPath.get('etc/hosts')?.hardlinkOf).toBe('a/hosts-link');
    expect(byPath.get('dev/null')).toMatchObject({ type: 'char', mode: '666' });
    expect(byPath.get('dev/loop9')).toMatchObject({ type: 'block' });
    expect(byPath.get('dev/fifo')).toMatchObject({ type: 'fifo' });
    expect(byPath.get('a/long-link')?.link).toHaveLength(158);
    expect(byPath.has('dev/sock')).toBe(false);
  });

  it('is deterministic: the same tree, or a copy of it, packs to the same bytes', async () => {
    const first = await pack(src);
    const second = await pack(src);
    expect(second.blob.equals(first.blob)).toBe(true);
    expect(second.result).toEqual(first.result);
    const copy = join(dir, 'copy');
    mkdirSync(copy);
    await applyLayer(chunked(first.blob), copy);
    const third = await pack(copy);
    expect(third.result).toEqual(first.result);
    const plain = await pack(src, { compression: 'none' });
    expect(plain.result.diffId).toBe(first.result.diffId);
    expect(sha256(gunzipSync(first.blob))).toBe(first.result.diffId);
  });

  it('writes what GNU tar lists as the same entries as its own --sort=name archive', async () => {
    const { blob } = await pack(src, { compression: 'none' });
    const ours = join(dir, 'ours.tar');
    writeFileSync(ours, blob);
    const theirs = join(dir, 'theirs.tar');
    run('tar', ['--sort=name', '--numeric-owner', '-C', src, '-cf', theirs, '.']);
    const list = (file: string): string[] =>
      run('tar', ['-tvf', file, '--numeric-owner', '--full-time'])
        .trim()
        .split('\n')
        .map((l) => l.replace(/ \.\//g, ' ').replace(/link to \.\//, 'link to '))
        .filter((l) => !/ \.?\/?$/.test(l) && !l.endsWith(' ./'));
    const mine = list(ours);
    expect(mine).toEqual(list(theirs));
    expect(mine.length).toBe(layerView(src).length);
    // xattrs as GNU tar reads them
    const x = run('tar', ['--xattrs', '--xattrs-include=*', '-tvvf', ours, 'a/hosts-link', 'etc/']);
    expect(x).toMatch(/x: 5 user\.binary\n\s+x: 5 user\.comment\n/);
    expect(x).toMatch(/x: 1 user\.dir\n/);
  });

  it('applies archives GNU tar made (gnu and posix formats) to the same tree', async () => {
    for (const format of ['gnu', 'posix']) {
      const file = join(dir, `${format}.tar`);
      run('tar', [`--format=${format}`, '--sort=name', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', file, '.']);
      const dst = join(dir, `dst-${format}`);
      mkdirSync(dst);
      await applyLayer(chunked(readFileSync(file), [1 << 20]), dst);
      expect(snapshot(dst)).toEqual(layerView(src));
    }
  });

  it('GNU tar extracts what we pack to the same tree', async () => {
    const { blob } = await pack(src);
    writeFileSync(join(dir, 'l.tgz'), blob);
    const dst = join(dir, 'dst');
    mkdirSync(dst);
    run('tar', ['--xattrs', '--xattrs-include=*', '--same-owner', '-xpzf', join(dir, 'l.tgz'), '-C', dst]);
    expect(snapshot(dst)).toEqual(layerView(src));
  });

  it('applies input arriving in chunks of 1, 7 and 515 bytes, gzip and plain', async () => {
    const small = join(dir, 'small');
    mkdirSync(small);
    buildFixture(small, { bigFile: 70_000 });
    const { blob } = await pack(small);
    const plain = tarOf(blob);
    const want = layerView(small);
    for (const [data, sizes] of [
      [blob, [1, 7, 515]],
      [plain, [515, 7, 1]],
      [blob, [1]],
    ] as const) {
      const dst = makeTempDir('tar-chunks');
      try {
        const r = await applyLayer(chunked(data, sizes), dst);
        expect(r.bytes).toBe(plain.length);
        expect(snapshot(dst)).toEqual(want);
      } finally {
        removeTempDir(dst);
      }
    }
  }, 120_000);
});
