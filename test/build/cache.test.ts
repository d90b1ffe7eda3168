import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BuildCache, stepKey } from '../../lib/build/cache';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

describe('build cache', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('build-cache');
  });
  afterEach(() => removeTempDir(dir));

  it('keys a step on its parent, instruction, arguments and content', () => {
    const parts = { parent: 'sha256:' + 'a'.repeat(64), instruction: 'COPY a /a', contentHash: 'h1' };
    const key = stepKey(parts);
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(stepKey({ ...parts })).toBe(key);
    expect(stepKey({ ...parts, parent: 'sha256:' + 'b'.repeat(64) })).not.toBe(key);
    expect(stepKey({ ...parts, instruction: 'COPY a /b' })).not.toBe(key);
    expect(stepKey({ ...parts, contentHash: 'h2' })).not.toBe(key);
    expect(stepKey({ ...parts, args: ['X=1'] })).not.toBe(stepKey({ ...parts, args: ['X=2'] }));
  });

  it('stores and finds image digests by key', async () => {
    const cache = new BuildCache(join(dir, 'cache'));
    const key = stepKey({ parent: 'scratch:linux/amd64', instruction: 'ENV A=1' });
    expect(await cache.get(key)).toBeUndefined();
    const digest = `sha256:${'c'.repeat(64)}` as const;
    await cache.set(key, digest);
    expect(await cache.get(key)).toBe(digest);
    expect(await new BuildCache(join(dir, 'cache')).get(key)).toBe(digest);
  });
});
