// Run an image's command inside a virtual machine: the same call as a container, one option apart.
//   node examples/vm-run.mjs                       # busybox: uname -a; cat /proc/1/comm
//   node examples/vm-run.mjs sh -c 'echo $HOSTNAME; exit 3'
// The kernel: $NACELLE_KERNEL, the host's /boot/vmlinuz-$(uname -r), the cache, or Debian's cloud
// kernel fetched into the cache. The backend: 'auto' (qemu with KVM when /dev/kvm works, TCG otherwise).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';
import { guestKernel } from './lib/side-by-side.mjs';

const cmd = process.argv.length > 2 ? process.argv.slice(2) : ['sh', '-c', 'echo "kernel $(uname -r), pid 1 is $(cat /proc/1/comm), I am $(id -un) on $(hostname)"'];
const work = mkdtempSync(join(tmpdir(), 'nacelle-vm-run-'));
try {
  const rt = await Runtime.open({ root: join(work, 'root') });
  writeBusyboxRootfs(join(work, 'rootfs'));
  const img = await rt.images.fromDirectory(join(work, 'rootfs'), { tag: 'busybox:vm', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  const kernel = await guestKernel(console.error);
  const vm = await rt.vms.run(img, { cmd, kernel: kernel.kernel, ...(kernel.modulesDir ? { kernelModules: kernel.modulesDir } : {}) });
  console.error(`vm ${vm.id.slice(0, 12)} on ${vm.backendLabel} (${vm.backendReason})`);
  vm.stdout.pipe(process.stdout);
  vm.stderr.pipe(process.stderr);
  const exit = await vm.wait();
  const stats = await vm.stats();
  const t = stats.timings;
  console.error(
    `exit code ${exit.exitCode}${exit.error ? ` (${exit.error})` : ''}; guest ready after ${t.readyMs?.toFixed(0)} ms, ` +
      `first output ${t.firstOutputMs?.toFixed(0) ?? '-'} ms, ended ${t.endedMs?.toFixed(0)} ms; ` +
      `qemu peak RSS ${((stats.memory?.peakRssBytes ?? 0) / 2 ** 20).toFixed(0)} MiB of ${stats.memoryMiB} MiB guest memory`,
  );
  process.exitCode = exit.exitCode ?? 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
