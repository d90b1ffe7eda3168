// Container vs VM, measured: the same busybox image run both ways on this machine, every row of
// the comparison the "Docker vs VM" articles assert (launch times, memory, CPU, disk, kernel,
// isolation), with the VM backend (qemu+kvm, qemu+tcg) beside every VM figure.
//   node examples/compare.mjs [instances]        (as root: containers need it)
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';
import { guestKernel, printTable, sideBySide } from './lib/side-by-side.mjs';

if (process.geteuid() !== 0) {
  console.error('compare: run as root (containers need namespaces, mounts and cgroups).');
  process.exit(1);
}
if (!existsSync('/bin/busybox')) {
  console.error('compare: needs /bin/busybox (apt-get install busybox-static).');
  process.exit(1);
}
const n = Number(process.argv[2] ?? 3);
const work = mkdtempSync(join(tmpdir(), 'nacelle-compare-'));
const rt = await Runtime.open({ root: join(work, 'root') });
try {
  writeBusyboxRootfs(join(work, 'rootfs'));
  const img = await rt.images.fromDirectory(join(work, 'rootfs'), { tag: 'busybox:compare', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  const kernel = await guestKernel(console.error);
  const vmOptions = { kernel: kernel.kernel, ...(kernel.modulesDir ? { kernelModules: kernel.modulesDir } : {}) };
  printTable(await sideBySide(rt, img, { n, vmOptions, log: console.error }), { ratios: true });
} finally {
  for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
  for (const vm of rt.vms.running()) await vm.remove({ force: true });
  rmSync(work, { recursive: true, force: true });
}
