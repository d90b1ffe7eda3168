import { closeSync, ftruncateSync, mkdirSync, openSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayer, packDirectory } from '../../../lib/image/tar';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { chunked, Collector, tarOf } from './helpers';

describe('layer streaming', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('tar-stream');
  });
  afterEach(() => removeTempDir(dir));

  it('streams a big file from pack straight into apply without holding it in memory', async () => {
    const src = join(dir, 'src');
    mkdirSync(src);
    const size = 384 * 1024 * 1024 + 5;
    const fd = openSync(join(src, 'big'), 'w');
    ftruncateSync(fd, size); // sparse: no disk space, still read as zeros
    closeSync(fd);
    writeFileSync(join(src, 'small'), 'small');
    const dst = join(dir, 'dst');
    mkdirSync(dst);
    const pipe = new PassThrough({ highWaterMark: 1 << 20 });
    let peak = 0;
    const rss0 = process.memoryUsage().rss;
    const timer = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss - rss0);
    }, 20);
    try {
      const [packed, applied] = await Promise.all([packDirectory(src, pipe), applyLayer(pipe, dst)]);
      expect(applied.diffId).toBe(packed.diffId);
      expect(applied.bytes).toBe(512 + size + 507 + (512 + 512) + 1024); // big, its padding, small, end blocks
    } finally {
      clearInterval(timer);
    }
    expect(statSync(join(dst, 'big')).size).toBe(size);
    expect(peak).toBeLessThan(200 * 1024 * 1024);
  }, 120_000);

  it('keeps the event loop turning while it applies thousands of entries that are all in memory', async () => {
    const src = join(dir, 'src');
    for (let d = 0; d < 100; d++) {
      mkdirSync(join(src, `d${d}`), { recursive: true });
      for (let f = 0; f < 100; f++) writeFileSync(join(src, `d${d}`, `f${f}`), `${d}/${f}`);
    }
    const out = new Collector();
    await packDirectory(src, out, { compression: 'none' });
    const tar = tarOf(out.buffer);
    const dst = join(dir, 'dst');
    mkdirSync(dst);
    // the longest the event loop went without running a timer, the start and end included
    let last = performance.now();
    let longest = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 2);
    let r;
    try {
      r = await applyLayer(chunked(tar, [tar.length]), dst);
    } finally {
      clearInterval(timer);
    }
    longest = Math.max(longest, performance.now() - last);
    expect(r.entries).toBe(10_100);
    // one chunk holds the whole archive: only pacing lets timers run in between
    expect(longest).toBeLessThan(200);
  }, 60_000);
});
