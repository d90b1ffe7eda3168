/**
 * Disk usage of a tree: the blocks its entries occupy (as `du` counts them),
 * hard-linked files counted once.
 * @module
 * @internal
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Bytes `dir` occupies on disk (st_blocks × 512), each inode once. */
export async function diskUsage(dir: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path, { bigint: true });
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    total += Number(st.blocks) * 512;
    if (st.isDirectory()) {
      for (const name of await readdir(path)) await walk(join(path, name));
    }
  };
  await walk(dir);
  return total;
}
