/**
 * Shared fixtures of the guest-side tests: a guest kernel (found, or fetched
 * into a temporary cache that the caller removes) and the guest init binary
 * (built into a temporary directory when the checkout has none).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestInitPath } from '../../../lib/vm/guest/initramfs';
import { type KernelInfo, fetchDebianCloudKernel, findKernel } from '../../../lib/vm/guest/kernel';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';

/** A kernel with modules, and how to give it back. */
export interface KernelFixture {
  /** The kernel. */
  info: KernelInfo;
  /** Removes what the fixture downloaded (nothing when the kernel was already there). */
  cleanup: () => void;
}

/**
 * A kernel that has a modules directory: $NACELLE_KERNEL / the host's / the
 * default cache when one is there, else Debian's cloud kernel fetched into a
 * temporary cache (as on a fresh CI machine).
 */
export async function kernelFixture(): Promise<KernelFixture> {
  try {
    const info = await findKernel();
    if (info.modulesDir) return { info, cleanup: () => {} };
  } catch {
    // none here: fetch one
  }
  const dir = makeTempDir('kernel-cache');
  try {
    const info = await fetchDebianCloudKernel(dir);
    return { info, cleanup: () => removeTempDir(dir) };
  } catch (err) {
    removeTempDir(dir);
    throw err;
  }
}

/** The guest init: the checkout's build, or one built now into a temporary directory. */
export function initFixture(): { path: string; cleanup: () => void } {
  try {
    return { path: guestInitPath(), cleanup: () => {} };
  } catch {
    const dir = makeTempDir('guest-init');
    const out = join(dir, 'nacelle-init');
    execFileSync(process.execPath, [fileURLToPath(new URL('../../../binding/guest/build.mjs', import.meta.url)), '--out', out], { stdio: 'pipe' });
    if (!existsSync(out)) throw new Error(`building the guest init into ${out} left no file`);
    return { path: out, cleanup: () => removeTempDir(dir) };
  }
}
