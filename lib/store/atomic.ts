/**
 * Atomic file writes: a temporary file in the same directory, fsync'd, then
 * renamed over the target, then the directory fsync'd, so a crash leaves the
 * old content or the new, never a torn file.
 * @module
 * @internal
 */
import { randomBytes } from 'node:crypto';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** fsync a directory so a rename inside it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/** A unique temporary name beside `path`. */
export function tempPathBeside(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
}

/**
 * Writes `data` to `path` atomically (readers see the old or the new
 * content). With `durable` (the default) the data and the rename are fsync'd
 * too, so they survive a crash; state that can be rebuilt skips that cost.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, mode = 0o644, durable = true): Promise<void> {
  const tmp = tempPathBeside(path);
  const h = await open(tmp, 'wx', mode);
  try {
    await h.writeFile(data);
    if (durable) await h.sync();
  } catch (err) {
    await h.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await h.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  if (durable) await fsyncDir(dirname(path));
}

/**
 * {@link writeFileAtomic} without `durable`, synchronously: for small state
 * files rewritten on every change, where a thread-pool round trip per step
 * (open, write, close, rename) costs more than the work itself.
 */
export function writeSmallFileAtomicSync(path: string, data: string | Buffer, mode = 0o644): void {
  const tmp = tempPathBeside(path);
  try {
    writeFileSync(tmp, data, { mode, flag: 'wx' });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
