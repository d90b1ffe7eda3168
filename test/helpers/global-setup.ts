/**
 * Runs once around the whole suite: checks the addon is built before any test
 * runs, and afterwards that no test left a mount behind under the temp dir.
 */
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { native } from '../../lib/native';

export const TEST_PREFIX = 'nacelle-test-';

function leftoverMounts(): string[] {
  const prefix = `${tmpdir()}/${TEST_PREFIX}`;
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => line.split(' ')[4]?.startsWith(prefix));
}

export function setup(): void {
  native(); // fails here, once, with node-gyp-build's message when the addon is missing
}

export function teardown(): void {
  const mounts = leftoverMounts();
  if (mounts.length > 0) {
    throw new Error(`tests left ${mounts.length} mount(s) behind:\n${mounts.join('\n')}`);
  }
}
