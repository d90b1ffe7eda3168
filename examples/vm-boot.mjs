// Boot a raw kernel + initrd with the serial console attached to this terminal (Ctrl-A x quits).
//   node examples/vm-boot.mjs [--kernel bzImage] [--initrd file] [--append "kernel words"]
// Without --initrd, a busybox initramfs is made whose /init gives a shell on the console:
//   echo 'uname -a; cat /proc/cpuinfo | head -5' | node examples/vm-boot.mjs
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { QemuMachine, chooseBackend, writeBusyboxRootfs, writeRootfsArchive } from 'nacelle';
import { guestKernel } from './lib/side-by-side.mjs';

const { values } = parseArgs({ options: { kernel: { type: 'string' }, initrd: { type: 'string' }, append: { type: 'string' } } });
const work = mkdtempSync(join(tmpdir(), 'nacelle-vm-boot-'));
try {
  const kernel = values.kernel ?? (await guestKernel(console.error)).kernel;
  let initrd = values.initrd;
  if (!initrd) {
    const rootfs = join(work, 'rootfs');
    writeBusyboxRootfs(rootfs);
    for (const d of ['proc', 'sys', 'dev']) mkdirSync(join(rootfs, d), { recursive: true });
    writeFileSync(
      join(rootfs, 'init'),
      `#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "nacelle vm-boot: $(uname -sr), init is pid $$. Exit the shell to power off; Ctrl-A x quits qemu."
setsid cttyhack sh
poweroff -f
`,
    );
    chmodSync(join(rootfs, 'init'), 0o755);
    initrd = join(work, 'initrd.cpio.gz');
    await writeRootfsArchive(initrd, rootfs, []);
  }
  const backend = chooseBackend('qemu');
  console.error(`booting ${kernel} with ${initrd} on ${backend.label} (${backend.reason})`);
  const machine = await QemuMachine.start({ kernel, initrd, console: 'inherit', ...(values.append ? { cmdline: values.append } : {}), accel: backend.accel });
  const status = await machine.wait();
  console.error(`qemu exited (${status.signal ?? `code ${status.exitCode}`})`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
