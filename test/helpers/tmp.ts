/** Temporary directories that tests create and always remove. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh directory under the temp dir, named so leak checks recognize it. */
export function makeTempDir(label = 'tmp'): string {
  return mkdtempSync(join(tmpdir(), `nacelle-test-${label}-`));
}

/** Removes a directory made by {@link makeTempDir}. */
export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
