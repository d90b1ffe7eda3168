/**
 * What the rt.vms suites share: a runtime in a temp dir with the busybox
 * image, a guest kernel with modules, and, at the end, the check that no VM
 * state directory was left behind. Register it inside the suite's describe.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import type { Image } from '../../../lib/image/image';
import { Runtime } from '../../../lib/runtime';
import { guestInitPath } from '../../../lib/vm/guest/initramfs';
import type { VmRunOptions } from '../../../lib/vm/vms';
import { busyboxImage } from '../../helpers/busybox';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { type KernelFixture, kernelFixture } from '../guest/fixtures';

/** The suite's runtime, image and kernel options (valid from beforeAll on). */
export interface VmSuite {
  dir: string;
  rt: Runtime;
  img: Image;
  kernelArgs: Pick<VmRunOptions, 'kernel' | 'kernelModules'>;
}

/** Sets up a suite's runtime (beforeAll) and checks and removes it (afterAll, after the suite's own). */
export function vmSuite(label: string): VmSuite {
  const suite = {} as VmSuite;
  let kernelFx: KernelFixture | undefined;
  beforeAll(async () => {
    suite.dir = makeTempDir(label);
    suite.rt = await Runtime.open({ root: join(suite.dir, 'root') });
    suite.img = await busyboxImage(suite.rt, suite.dir);
    guestInitPath(); // fails here, clearly, when the guest init is not built
    // A fresh machine has no kernel: Debian's cloud kernel, fetched into a temporary cache (~10 s).
    kernelFx = await kernelFixture();
    const kernel = kernelFx.info;
    suite.kernelArgs = { kernel: kernel.kernel, ...(kernel.modulesDir ? { kernelModules: kernel.modulesDir } : {}) };
  }, 120_000);
  afterAll(() => {
    if (!suite.dir) return;
    try {
      const vms = join(suite.dir, 'root', 'vms');
      const left = existsSync(vms) ? readdirSync(vms).filter((n) => /^[0-9a-f]{64}$/.test(n)) : [];
      expect(left).toEqual([]);
    } finally {
      removeTempDir(suite.dir);
      kernelFx?.cleanup();
    }
  });
  return suite;
}
