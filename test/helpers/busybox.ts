/** A busybox image for container tests, made from the host's busybox-static. */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Image } from '../../lib/image/image';
import { writeBusyboxRootfs } from '../../lib/image/busybox';
import type { Runtime } from '../../lib/runtime';

/** Builds (once per runtime root) and returns a tagged busybox image. */
export async function busyboxImage(rt: Runtime, dir: string, tag = 'busybox:test'): Promise<Image> {
  const rootfs = join(dir, 'busybox-rootfs');
  mkdirSync(rootfs, { recursive: true });
  writeBusyboxRootfs(rootfs);
  return rt.images.fromDirectory(rootfs, { tag, created: '2024-01-01T00:00:00Z', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
}
