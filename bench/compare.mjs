// bench/compare: the same busybox image as a container and as a VM — start times (first output,
// exit, N starts one after another), peak memory, CPU, disk, kernel and isolation — printed as the
// demo's table plus a VM/container ratio column. The VM backend (qemu+kvm or qemu+tcg, or the
// built-in monitor) is printed with the figures: TCG numbers say little about a KVM host.
//   BENCH_VMS=10 node bench/compare.mjs
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, findQemu, writeBusyboxRootfs } from 'nacelle';
import { guestKernel, printTable, sideBySide } from '../examples/lib/side-by-side.mjs';

const N = Number(process.env.BENCH_VMS ?? 10);

function missing() {
  if (process.geteuid() !== 0) return 'needs root (containers)';
  if (!existsSync('/bin/busybox')) return 'needs /bin/busybox (busybox-static)';
  try {
    findQemu();
  } catch (err) {
    return err.message;
  }
  return null;
}
const why = missing();
if (why) {
  console.log(`skipped: ${why}`);
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'nacelle-bench-compare-'));
let rt;
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (rt) {
    for (const c of await rt.containers.list({ all: true }).catch(() => [])) await c.remove({ force: true }).catch(() => undefined);
    for (const vm of rt.vms.running()) await vm.remove({ force: true }).catch(() => undefined);
  }
  rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    cleanup().finally(() => process.exit(130));
  });
}

try {
  rt = await Runtime.open({ root: join(dir, 'root') });
  writeBusyboxRootfs(join(dir, 'rootfs'));
  const img = await rt.images.fromDirectory(join(dir, 'rootfs'), { tag: 'bench:compare', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  const kernel = await guestKernel(console.log);
  const vmOptions = { kernel: kernel.kernel, ...(kernel.modulesDir ? { kernelModules: kernel.modulesDir } : {}) };
  // Warm-up, not measured: the first VM of an image builds its cached rootfs archive.
  const warm = await rt.vms.run(img, { cmd: ['true'], ...vmOptions });
  await warm.wait();
  const result = await sideBySide(rt, img, { n: N, vmOptions });
  console.log(`container vs VM, ${N} instances each way (medians over them; one inspection run each):`);
  printTable(result, { ratios: true });
} finally {
  await cleanup();
}
