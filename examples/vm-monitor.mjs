// Boot a kernel on nacelle's built-in KVM monitor (no qemu: vCPU threads in this process),
// with its serial console attached to this terminal.
//   node examples/vm-monitor.mjs [--kernel bzImage|vmlinux] [--initrd file] [--append words]
//                                [--cpus n] [--memory MiB] [--seconds n] [--snapshot dir]
// Without --kernel: Debian's cloud kernel, its vmlinux extracted and entered through PVH.
// On a host whose /dev/kvm is PVM (no VT-x/AMD-V), an ordinary kernel runs in KVM's
// instruction emulator: it prints its banner and boots slowly; --seconds bounds the run.
// With --snapshot, the VM is paused after --seconds, snapshotted there, and restored once.
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { VirtualMachine, extractVmlinux, hardwareKvmMissing, probeKvm } from 'nacelle';
import { guestKernel } from './lib/side-by-side.mjs';

const { values } = parseArgs({
  options: {
    kernel: { type: 'string' },
    initrd: { type: 'string' },
    append: { type: 'string' },
    cpus: { type: 'string', default: '1' },
    memory: { type: 'string', default: '256' },
    seconds: { type: 'string', default: '30' },
    snapshot: { type: 'string' },
  },
});
const noHardware = hardwareKvmMissing(probeKvm());
if (noHardware) console.error(`note: ${noHardware}; guest code runs in KVM's emulator here (slow)`);
const kernel = values.kernel ?? (await extractVmlinux((await guestKernel(console.error)).kernel));
const vm = await VirtualMachine.create({
  kernel,
  ...(values.initrd ? { initrd: values.initrd } : {}),
  cmdline: values.append ?? 'console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1',
  cpus: Number(values.cpus),
  memoryMiB: Number(values.memory),
});
console.error(`booting ${kernel} on the built-in monitor (${vm.cpus} vCPU, ${vm.memoryMiB} MiB)`);
vm.console.pipe(process.stdout);
if (process.stdin.isTTY) process.stdin.setRawMode(true);
process.stdin.pipe(vm.console);
const t0 = performance.now();
vm.start();
const timer = setTimeout(async () => {
  if (values.snapshot) {
    await vm.pause();
    await vm.snapshot(values.snapshot);
    console.error(`\n[paused after ${values.seconds} s; snapshot in ${values.snapshot}; killing and restoring it]`);
    await vm.kill();
    const t1 = performance.now();
    const again = await VirtualMachine.restore(values.snapshot);
    console.error(`[restored in ${(performance.now() - t1).toFixed(1)} ms; running 5 s more]`);
    again.console.pipe(process.stdout);
    setTimeout(() => void again.kill(), 5000);
    const end = await again.wait();
    console.error(`\n[restored VM ended: ${end.reason}]`);
    rmSync(values.snapshot, { recursive: true, force: true });
  } else {
    console.error(`\n[${values.seconds} s are up: stopping the VM]`);
    await vm.stop({ timeout: 2000 });
  }
}, Number(values.seconds) * 1000);
const exit = await vm.wait();
if (!values.snapshot) clearTimeout(timer);
console.error(`\n[VM ended after ${((performance.now() - t0) / 1000).toFixed(1)} s: ${exit.reason}${exit.detail ? ` — ${exit.detail.split('\n')[0]}` : ''}]`);
process.stdin.unpipe(vm.console);
if (process.stdin.isTTY) process.stdin.setRawMode(false);
process.stdin.pause();
