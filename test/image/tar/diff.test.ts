import {
  appendFileSync,
  chmodSync,
  lchownSync,
  linkSync,
  mkdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mount, umount } from '../../../lib/host/mount';
import { applyLayer, diffOverlayUpper, diffTrees, packChanges, type Change } from '../../../lib/image/tar';
import { native } from '../../../lib/native';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { chunked, Collector, makeTar, run, snapshot, tarOf } from './helpers';

function write(root: string, files: Record<string, string>): void {
  for (const [p, data] of Object.entries(files)) {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), data);
  }
}

function changes(list: string): Change[] {
  return list
    .trim()
    .split('\n')
    .map((l) => {
      const [kind, path] = l.trim().split(' ');
      return { kind: kind as Change['kind'], path: path as string };
    });
}

async function packAndApply(root: string, list: readonly Change[], onto: string): Promise<Buffer> {
  const out = new Collector();
  await packChanges(root, list, out);
  await applyLayer(chunked(out.buffer, [4099]), onto);
  return out.buffer;
}

function mounted(target: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === target);
}

describeRoot('diffOverlayUpper and packChanges with a real overlayfs', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-diff');
  });
  afterEach(async () => {
    for (const m of ['merged', 'merged2']) {
      while (mounted(join(dir, m))) await umount(join(dir, m), { detach: true });
    }
    removeTempDir(dir);
  });

  async function withOverlay(
    lowers: string[],
    change: (merged: string) => void,
    snapOptions: Parameters<typeof snapshot>[1] = {},
  ): Promise<{ upper: string; merged: ReturnType<typeof snapshot> }> {
    const upper = join(dir, 'upper');
    const work = join(dir, 'work');
    const merged = join(dir, 'merged');
    for (const d of [upper, work, merged]) mkdirSync(d);
    await mount({ source: 'overlay', target: merged, fstype: 'overlay', data: `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}` });
    try {
      change(merged);
      return { upper, merged: snapshot(merged, snapOptions) };
    } finally {
      await umount(merged);
    }
  }

  it('lists A/C/D like docker diff, and the packed changes turn a copy of the lower into the merged tree', async () => {
    const lower = join(dir, 'lower');
    mkdirSync(lower);
    write(lower, {
      'etc/hosts': '127.0.0.1\n',
      'etc/passwd': 'root\n',
      'etc/gone': 'g',
      'etc/conf.d/a': 'a',
      'etc/conf.d/b': 'b',
      'var/lib/data/x': 'x',
      'opq/old1': '1',
      'opq/sub/old2': '2',
      'opq/keep': 'k',
      'bin/sh': '#!',
      'usr/share/doc/readme': 'r',
      'hl/a': 'shared',
      'untouched/file': 'u',
    });
    linkSync(join(lower, 'hl/a'), join(lower, 'hl/b'));
    utimesSync(join(lower, 'etc/hosts'), 1_000_000, 1_000_000);

    const { upper, merged } = await withOverlay([lower], (m) => {
      appendFileSync(join(m, 'etc/hosts'), '10.0.0.1 box\n');
      unlinkSync(join(m, 'etc/gone'));
      rmSync(join(m, 'etc/conf.d'), { recursive: true });
      write(m, { 'new/sub/file': 'n' });
      chmodSync(join(m, 'bin/sh'), 0o700);
      rmSync(join(m, 'opq'), { recursive: true });
      mkdirSync(join(m, 'opq'));
      write(m, { 'opq/fresh': 'f', 'opq/keep': 'k2' });
      write(m, { 'var/lib/data/z': 'z' });
      symlinkSync('etc/hosts', join(m, 'lnk'));
      lchownSync(join(m, 'usr/share/doc/readme'), 1000, 1000);
      appendFileSync(join(m, 'hl/a'), ' and changed');
      native().lsetxattr(join(m, 'etc/passwd'), 'user.note', Buffer.from('x'));
    });
    expect(native().lgetxattr(join(upper, 'opq'), 'trusted.overlay.opaque')?.toString()).toBe('y');

    const list = await diffOverlayUpper(upper, [lower]);
    expect(list).toEqual(
      changes(`
        C /bin
        C /bin/sh
        C /etc
        D /etc/conf.d
        D /etc/gone
        C /etc/hosts
        C /etc/passwd
        C /hl
        C /hl/a
        A /lnk
        A /new
        A /new/sub
        A /new/sub/file
        C /opq
        A /opq/fresh
        C /opq/keep
        D /opq/old1
        D /opq/sub
        C /usr
        C /usr/share
        C /usr/share/doc
        C /usr/share/doc/readme
        C /var
        C /var/lib
        C /var/lib/data
        A /var/lib/data/z
      `),
    );

    const copy = join(dir, 'copy');
    run('cp', ['-a', lower, copy]);
    const blob = await packAndApply(upper, list, copy);
    expect(snapshot(copy)).toEqual(merged);
    // the layer holds whiteouts and the opaque marker, not the D's below the opaque directory
    writeFileSync(join(dir, 'layer.tar'), tarOf(blob));
    const names = run('tar', ['-tf', join(dir, 'layer.tar')]).trim().split('\n');
    expect(names).toContain('etc/.wh.gone');
    expect(names).toContain('etc/.wh.conf.d');
    expect(names).toContain('opq/.wh..wh..opq');
    expect(names.filter((n) => n.startsWith('opq/'))).toEqual(['opq/', 'opq/.wh..wh..opq', 'opq/fresh', 'opq/keep']);
    expect(names).not.toContain('untouched/');
  });

  it('sees lower layers through their own whiteouts and opaque directories', async () => {
    const l1 = join(dir, 'l1');
    const l2 = join(dir, 'l2');
    mkdirSync(l1);
    mkdirSync(l2);
    write(l1, { 'x': 'x', 'y': 'y', 'd/a': 'a', 'e/old': 'o' });
    // l2 deletes x, makes d opaque with only d/b, keeps e merged
    await applyLayer(
      chunked(await makeTar([{ name: '.wh.x' }, { name: 'd/' }, { name: 'd/.wh..wh..opq' }, { name: 'd/b', data: 'b' }, { name: 'e/' }, { name: 'e/new', data: 'n' }])),
      l2,
      { whiteouts: 'overlay' },
    );
    const { upper, merged } = await withOverlay([l2, l1], (m) => {
      writeFileSync(join(m, 'x'), 'x again');
      writeFileSync(join(m, 'y'), 'y changed');
      writeFileSync(join(m, 'd/a'), 'a again');
      rmSync(join(m, 'e'), { recursive: true });
      mkdirSync(join(m, 'e'));
    }, { mtimes: false });
    const list = await diffOverlayUpper(upper, [l2, l1]);
    expect(list).toEqual(
      changes(`
        C /d
        A /d/a
        C /e
        D /e/new
        D /e/old
        A /x
        C /y
      `),
    );
    // apply onto the merged view of the lowers
    const copy = join(dir, 'copy');
    mkdirSync(copy);
    await applyLayer(chunked(await makeTar([{ name: 'x', data: 'x' }, { name: 'y', data: 'y' }, { name: 'd/a', data: 'a' }, { name: 'e/old', data: 'o' }])), copy);
    await applyLayer(chunked(await makeTar([{ name: '.wh.x' }, { name: 'd/' }, { name: 'd/.wh..wh..opq' }, { name: 'd/b', data: 'b' }, { name: 'e/' }, { name: 'e/new', data: 'n' }])), copy);
    await packAndApply(upper, list, copy);
    expect(snapshot(copy, { mtimes: false })).toEqual(merged);
  });
});

describeRoot('diffTrees', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-difftrees');
  });
  afterEach(() => removeTempDir(dir));

  it('finds added, changed and deleted paths, and packChanges reproduces the target', async () => {
    const base = join(dir, 'base');
    mkdirSync(base);
    write(base, {
      'same/file': 'same',
      'touched': 'only the mtime changes',
      'content': 'aaaa',
      'grow': 'g',
      'mode': 'm',
      'owner': 'o',
      'xattr': 'x',
      'gone/deep/file': 'd',
      'todir': 'file becomes a dir',
      'tofile/child': 'dir becomes a file',
      'hl/a': 'a',
    });
    symlinkSync('same', join(base, 'ln'));
    utimesSync(join(base, 'content'), 1000, 1000);
    const target = join(dir, 'target');
    run('cp', ['-a', base, target]);
    utimesSync(join(target, 'touched'), 5000, 5000);
    writeFileSync(join(target, 'content'), 'bbbb'); // same size, new mtime
    appendFileSync(join(target, 'grow'), 'rown');
    chmodSync(join(target, 'mode'), 0o600);
    lchownSync(join(target, 'owner'), 1, 1);
    native().lsetxattr(join(target, 'xattr'), 'user.k', Buffer.from('v'));
    rmSync(join(target, 'gone'), { recursive: true });
    unlinkSync(join(target, 'todir'));
    write(target, { 'todir/inside': 'i', 'new/a/b': 'b' });
    rmSync(join(target, 'tofile'), { recursive: true });
    writeFileSync(join(target, 'tofile'), 'now a file');
    unlinkSync(join(target, 'ln'));
    symlinkSync('elsewhere', join(target, 'ln'));
    linkSync(join(target, 'hl/a'), join(target, 'hl/b'));

    const list = await diffTrees(base, target);
    expect(list).toEqual(
      changes(`
        C /content
        D /gone
        C /grow
        C /hl
        C /hl/a
        A /hl/b
        C /ln
        C /mode
        A /new
        A /new/a
        A /new/a/b
        C /owner
        C /todir
        A /todir/inside
        C /tofile
        C /xattr
      `),
    );
    const copy = join(dir, 'copy');
    run('cp', ['-a', base, copy]);
    await packAndApply(target, list, copy);
    expect(await diffTrees(copy, target)).toEqual([]);
    const noTouched = (s: ReturnType<typeof snapshot>): ReturnType<typeof snapshot> => s.filter((e) => e.path !== 'touched');
    expect(noTouched(snapshot(copy, { dirMtimes: false }))).toEqual(noTouched(snapshot(target, { dirMtimes: false })));
  });

  it('gives nothing for identical trees', async () => {
    const a = join(dir, 'a');
    mkdirSync(a);
    write(a, { 'x/y': 'y', 'z': 'z' });
    const b = join(dir, 'b');
    run('cp', ['-a', a, b]);
    expect(await diffTrees(a, b)).toEqual([]);
  });
});

describe('packChanges', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-packchanges');
  });
  afterEach(() => removeTempDir(dir));

  it('writes parents, whiteouts and entries in layer order, and refuses a missing path', async () => {
    write(dir, { 'a/b/c': 'c', 'z': 'z' });
    const out = new Collector();
    await packChanges(dir, changes('A /a/b/c\nD /a/old\nD /top\nC /z'), out, { compression: 'none' });
    const listing = run('tar', ['-tf', '-'], out.buffer).trim().split('\n');
    expect(listing).toEqual(['.wh.top', 'a/', 'a/.wh.old', 'a/b/', 'a/b/c', 'z']);
    await expect(packChanges(dir, changes('A /missing'), new Collector())).rejects.toMatchObject({ code: 'ERR_LAYER_INVALID', path: 'missing' });
  });
});
