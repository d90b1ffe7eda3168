/**
 * The whole guest path under qemu (TCG where there is no KVM): a real kernel
 * boots the initramfs (or the erofs disk), the init loads the virtio modules,
 * runs the command and reports over the virtio console. Skipped loudly when
 * qemu-system-x86_64 is not installed; the qemu backend itself is tested in
 * test/vm/host.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeBusyboxRootfs } from '../../../lib/image/busybox';
import { buildDiskBoot } from '../../../lib/vm/guest/disk';
import { type GuestConfig, buildInitramfs } from '../../../lib/vm/guest/initramfs';
import { FrameDecoder, FrameType, decodeExit } from '../../../lib/vm/protocol';
import { hardwareKvmMissing } from '../../../lib/vm/backend';
import { probeKvm } from '../../../lib/vm/kvm';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { type KernelFixture, initFixture, kernelFixture } from './fixtures';

const QEMU = 'qemu-system-x86_64';
const haveQemu = spawnSync(QEMU, ['--version']).status === 0;
if (!haveQemu) console.warn(`[skip] guest boot under qemu: ${QEMU} is not installed`);

/** The TSC frequency for tsc_early_khz (TCG's TSC runs at the host's). */
function tscKhz(): number | undefined {
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
  return mhz ? Math.round(Number(mhz) * 1000) : undefined;
}

/** Boots and returns the console text and the channel's decoded frames. */
async function boot(kernel: string, initrd: string, channelFile: string, disk?: string) {
  const khz = tscKhz();
  const kvm = hardwareKvmMissing(probeKvm()) === null; // qemu on PVM would die in the emulator
  const args = [
    '-M', 'microvm', '-accel', kvm ? 'kvm' : 'tcg', '-cpu', kvm ? 'host' : 'max', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd,
    '-append', `console=ttyS0 panic=-1 quiet no_timer_check${khz ? ` tsc_early_khz=${khz}` : ''}`,
    '-serial', 'stdio',
    '-device', 'virtio-serial-device', '-device', 'virtconsole,chardev=ch', '-chardev', `file,id=ch,path=${channelFile}`,
    ...(disk ? ['-drive', `id=d0,file=${disk},format=raw,if=none,readonly=on`, '-device', 'virtio-blk-device,drive=d0'] : []),
  ];
  const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let console = '';
  child.stdout.on('data', (c: Buffer) => (console += c.toString()));
  child.stderr.on('data', (c: Buffer) => (console += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 80_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(timer);
  const frames = existsSync(channelFile) ? new FrameDecoder().push(readFileSync(channelFile)) : [];
  const stdout = Buffer.concat(frames.filter((f) => f.type === FrameType.STDOUT).map((f) => f.payload)).toString();
  const exitFrame = frames.find((f) => f.type === FrameType.EXIT);
  return { code, console, frames, stdout, exit: exitFrame ? decodeExit(exitFrame.payload) : undefined };
}

describe.skipIf(!haveQemu)('guest boot under qemu', () => {
  let dir: string;
  let fx: KernelFixture;
  let init: { path: string; cleanup: () => void };
  const config: GuestConfig = {
    argv: ['sh', '-c', 'echo "on $(hostname)"; uname -r; tr "\\0" " " < /proc/1/cmdline; echo; exit 3'],
    env: ['PATH=/bin'],
    workdir: '/',
    uid: 0,
    gid: 0,
    hostname: 'vmbox',
  };
  beforeAll(async () => {
    dir = makeTempDir('guest-boot');
    fx = await kernelFixture();
    init = initFixture();
    mkdirSync(join(dir, 'rootfs'));
    writeBusyboxRootfs(join(dir, 'rootfs'));
    linkSync(join(dir, 'rootfs', 'bin', 'busybox'), join(dir, 'rootfs', 'bin', 'hardlinked-busybox'));
  }, 180_000);
  afterAll(() => {
    fx?.cleanup();
    init?.cleanup();
    removeTempDir(dir);
  });

  it('boots the initramfs and runs the command, reporting its output and exit code', async () => {
    const linked = { ...config, argv: ['sh', '-c', `${config.argv[2]!.replace('; exit 3', '')}; stat -c '%h %i' /bin/busybox /bin/hardlinked-busybox | uniq -c | tr -s ' '; exit 3`] };
    const r0 = await buildInitramfs({ rootfs: join(dir, 'rootfs'), kernel: fx.info, config: linked, out: join(dir, 'initrd'), init: init.path });
    const r = await boot(fx.info.kernel, r0.path, join(dir, 'chan-initramfs'));
    expect(r.frames[0]?.type, r.console).toBe(FrameType.READY);
    // the guest's own kernel; our init is PID 1; the kernel unpacked the hard link as one inode with 2 names
    expect(r.stdout).toMatch(new RegExp(`^on vmbox\n${(fx.info.release ?? '').replace(/\./g, '\\.')}\n/init \n 2 2 \\d+\n$`));
    expect(r.exit).toEqual({ exitCode: 3, signal: 0 });
    expect(r.code).toBe(0); // the guest powered off
  }, 90_000);

  it('boots from the erofs disk', async () => {
    const b = await buildDiskBoot({ rootfs: join(dir, 'rootfs'), kernel: fx.info, config: { ...config, argv: ['sh', '-c', 'grep " / " /proc/mounts | cut -d" " -f1-3; echo x > /tmp/f && cat /tmp/f; echo y > /etc/f && cat /etc/f'] }, disk: join(dir, 'disk.erofs'), initramfs: join(dir, 'disk-initrd'), init: init.path });
    const r = await boot(fx.info.kernel, b.initramfs, join(dir, 'chan-disk'), b.disk);
    // the disk, read-only, under a writable layer in RAM (as a container's upper dir)
    expect(r.stdout, r.console).toBe('overlay / overlay\nx\ny\n');
    expect(r.exit).toEqual({ exitCode: 0, signal: 0 });
  }, 90_000);
});
