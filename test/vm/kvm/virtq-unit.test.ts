/**
 * The virtio devices' own unit test (test/vm/kvm/virtq-unit.c), built here with
 * AddressSanitizer and UBSan and run: it drives the virtio-mmio transport the
 * way a driver does, over fake guest memory, including hostile rings and 2000
 * rounds of random garbage. Any out-of-bounds access fails it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';

const tmp = makeTempDir('virtq');
afterAll(() => removeTempDir(tmp));

it('passes every check under ASan and UBSan', () => {
  const exe = join(tmp, 'virtq-unit');
  const src = (f: string): string => join('binding', 'kvm', f);
  execFileSync('gcc', [
    '-std=gnu11', '-D_GNU_SOURCE', '-g', '-O1', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-Wno-missing-field-initializers',
    '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-pthread', '-Ibinding/kvm',
    'test/vm/kvm/virtq-unit.c', src('virtq.c'), src('virtio_mmio.c'), src('blk.c'), src('console.c'), '-o', exe,
  ], { stdio: 'pipe' });
  const r = spawnSync(exe, { encoding: 'utf8', timeout: 60_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/\b(\d+) checks, 0 failed/);
  expect(Number(/(\d+) checks/.exec(r.stdout)?.[1])).toBeGreaterThan(1000);
}, 120_000);
