/**
 * A real Linux kernel on the built-in monitor: Debian's cloud kernel, its
 * vmlinux extracted from the bzImage, entered through the PVH note with two
 * vCPUs and our ACPI tables. On this host (/dev/kvm is PVM) the kernel runs in
 * KVM's instruction emulator, so the test stops once the banner, the command
 * line, the ACPI tables and both vCPUs have shown up on our serial port; that
 * proves the boot protocol. Bounded in time; the VM is killed at the end.
 */
import { randomBytes } from 'node:crypto';
import { expect, it } from 'vitest';
import { fetchDebianCloudKernel } from '../../../lib/vm/guest/kernel';
import { extractVmlinux } from '../../../lib/vm/guest/vmlinux';
import { VirtualMachine } from '../../../lib/vm/machine';
import { describeKvm, describeRoot } from '../../helpers/gate';

describeRoot('Linux on the built-in monitor', () => {
  describeKvm('PVH boot of the Debian cloud kernel', () => {
    it('prints its banner, our command line, our ACPI tables and both vCPUs on our serial', async () => {
      const kernel = await fetchDebianCloudKernel();
      const vmlinux = await extractVmlinux(kernel.kernel);
      const marker = randomBytes(6).toString('hex');
      const vm = await VirtualMachine.create({
        kernel: vmlinux,
        cmdline: `console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 nacelle.marker=${marker}`,
        cpus: 2,
        memoryMiB: 256,
        channel: true,
      });
      let text = '';
      const seen = new Promise<void>((resolve) => {
        vm.console.on('data', (d: Buffer) => {
          text += d.toString('latin1');
          if (/smpboot: Allowing 2 CPUs/.test(text)) resolve();
        });
      });
      const t0 = performance.now();
      vm.start();
      const ended = vm.wait();
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        seen.then(() => 'seen' as const),
        ended.then((e) => e),
        new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 90_000))),
      ]);
      clearTimeout(timer);
      const exit = await vm.kill();
      console.info(`[kvm] Linux reached 'Allowing 2 CPUs' after ${((performance.now() - t0) / 1000).toFixed(1)} s; then ${exit.reason}`);
      expect(outcome, `console:\n${text.slice(-3000)}`).toBe('seen');
      expect(text).toMatch(/Linux version 6\.\d+\.\d+-\d+-cloud-amd64/);
      expect(text).toContain(`Command line: console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 nacelle.marker=${marker}`);
      expect(text).toMatch(/ACPI: RSDP 0x00000000000E0000/);
      expect(text).toMatch(/ACPI: APIC 0x/);
      expect(text).toMatch(/BIOS-e820: \[mem 0x0000000000100000-0x000000000fffffff\] usable/);
    }, 120_000);
  });
});
