/**
 * rt.vms through the built-in KVM monitor (`backend: 'kvm'`): the Debian
 * cloud kernel entered through the PVH note of its vmlinux, the busybox image
 * in an initramfs, the channel on /dev/hvc0.
 *
 * With hardware KVM the command runs and reports as on qemu. Where /dev/kvm
 * is PVM (KVM without VT-x/AMD-V), an ordinary kernel runs through KVM's
 * instruction emulator (~0.6 µs an instruction): it prints its banner after
 * ~12 s and is far from running init within the boot timeout, so there the
 * test proves the boot started (kernel, initramfs and monitor through PVH: the
 * banner on the console) and that the timeout leaves nothing behind: no
 * state directory, no VM or vCPU file descriptors, no monitor threads.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { InvalidArgumentError, UnsupportedError } from '../../../lib/errors';
import { hardwareKvmMissing, monitorAvailability } from '../../../lib/vm/backend';
import { probeKvm } from '../../../lib/vm/kvm';
import { KVM_GUEST_CHANNEL_DEVICE, KVM_MACHINE_BINARY, kvmCmdline, kvmKernelImage } from '../../../lib/vm/kvm-machine';
import type { VmRunOptions, VmStateFile } from '../../../lib/vm/vms';
import { VmTimeoutError } from '../../../lib/vm/workload';
import { describeKvm, describeRoot } from '../../helpers/gate';
import { vmSuite } from './suite';

async function text(s: Readable): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

/** This process's threads. */
function threads(): Set<string> {
  return new Set(readdirSync('/proc/self/task'));
}

/** This process's KVM file descriptors (/dev/kvm, VMs, vCPUs). */
function kvmFds(): string[] {
  return readdirSync('/proc/self/fd')
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return '';
      }
    })
    .filter((target) => target.includes('kvm-vm') || target.includes('kvm-vcpu'));
}

const BOOT_TIMEOUT_MS = 25_000;
const hardware = hardwareKvmMissing(probeKvm()) === null;

// root (images, initramfs building, the read-only mount below, as the qemu suite) and /dev/kvm
describeRoot('rt.vms (kvm backend: the built-in monitor)', () => describeKvm('on /dev/kvm', () => {
  const s = vmSuite('vms-kvm');
  let kernelArgs: Pick<VmRunOptions, 'kernel' | 'kernelModules'> = {};
  beforeAll(() => {
    kernelArgs = s.kernelArgs;
  });
  afterAll(() => {
    if (s.dir) expect(kvmFds()).toEqual([]);
  });

  it(
    hardware
      ? "runs echo on the built-in monitor: output and exit code as on qemu, no VM process, state and stats say so"
      : 'boots the kernel through PVH on the built-in monitor (PVM: too slow to reach init), times out with the banner in the console tail, and leaves nothing',
    async () => {
      if (!monitorAvailability().available) {
        await expect(s.rt.vms.run(s.img, { cmd: ['echo', 'hi'], backend: 'kvm', ...kernelArgs })).rejects.toBeInstanceOf(UnsupportedError);
        return;
      }
      const threadsBefore = threads();
      const vm = await s.rt.vms.run(s.img, { backend: 'kvm', cmd: ['echo', 'hi'], bootTimeoutMs: BOOT_TIMEOUT_MS, ...kernelArgs });
      try {
        expect(vm.backend).toBe('kvm');
        expect(vm.backendLabel).toBe('kvm monitor');
        expect(vm.accel).toBeUndefined();
        expect(vm.pid).toBeUndefined(); // the monitor runs in this process
        // booted through PVH: the vmlinux extracted from the bzImage, the channel on hvc0
        const cl = vm.commandLine;
        expect(cl[0]).toBe(KVM_MACHINE_BINARY);
        expect(cl[cl.indexOf('-kernel') + 1]).toMatch(/\/vmlinux-[^/]+$/);
        expect(readFileSync(cl[cl.indexOf('-kernel') + 1]!).subarray(0, 4).toString('latin1')).toBe('\x7fELF');
        expect(cl[cl.indexOf('-append') + 1]).toBe(kvmCmdline());
        expect(cl.slice(cl.indexOf('-channel'), cl.indexOf('-channel') + 2)).toEqual(['-channel', KVM_GUEST_CHANNEL_DEVICE]);
        const state = JSON.parse(readFileSync(join(vm.dir, 'state.json'), 'utf8')) as VmStateFile;
        expect(state).toMatchObject({ backend: 'kvm monitor', pid: process.pid, parentPid: process.pid });
        expect(kvmFds().some((f) => f.includes('kvm-vm'))).toBe(true);
        const running = await vm.stats();
        expect(running.pid).toBeUndefined();
        expect(running.cpu).toEqual({ userSeconds: expect.any(Number), systemSeconds: expect.any(Number) }); // the monitor's vCPU and I/O threads
        expect(running.memoryMiB).toBe(256);
        // guest RAM the host backs: at least the kernel and the initramfs, loaded before the vCPU ran
        expect(running.memory!.rssBytes).toBeGreaterThan(8 * 1024 * 1024);
        expect(running.memory!.rssBytes).toBeLessThanOrEqual(256 * 1024 * 1024);

        if (hardware) {
          const [stdout, stderr, exit] = await Promise.all([text(vm.stdout), text(vm.stderr), vm.wait()]);
          expect(stdout).toBe('hi\n');
          expect(stderr).toBe('');
          expect(exit).toEqual({ exitCode: 0, signal: null, reason: 'exited' });
          expect(vm.timings.readyMs).toBeGreaterThan(0);
        } else {
          const err = await vm.wait().catch((e: unknown) => e);
          expect(err).toBeInstanceOf(VmTimeoutError);
          expect((err as Error).message).toContain(`did not report ready within ${BOOT_TIMEOUT_MS} ms`);
          expect((err as VmTimeoutError).consoleTail).toContain('Linux version');
          expect((err as VmTimeoutError).consoleTail).toContain('virtio_mmio.device=');
        }
        expect(vm.status).toBe('exited');
        expect(vm.pid).toBeUndefined();
        expect(existsSync(vm.dir)).toBe(false); // autoRemove
        expect(s.rt.vms.running()).toEqual([]);
        expect(kvmFds()).toEqual([]);
        expect([...threads()].filter((t) => !threadsBefore.has(t))).toEqual([]); // the vCPU and I/O threads are gone
        expect((await vm.stats()).memory!.peakRssBytes).toBeGreaterThanOrEqual(running.memory!.rssBytes);
      } finally {
        if (vm.status !== 'exited') await vm.remove({ force: true });
      }
    },
    BOOT_TIMEOUT_MS + 10_000,
  );

  it('refuses guest memory the monitor cannot give before anything boots', async () => {
    if (!monitorAvailability().available) return;
    await expect(s.rt.vms.run(s.img, { cmd: ['true'], backend: 'kvm', memoryMiB: 4096, ...kernelArgs })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(readdirSync(join(s.dir, 'root', 'vms')).filter((n) => /^[0-9a-f]{64}$/.test(n))).toEqual([]);
  });

  it(
    'extracts a vmlinux once, beside its bzImage, or under the fallback cache where that directory is read-only; an ELF is used as it is',
    async () => {
      const bz = kernelArgs.kernel!;
      const rw = join(s.dir, 'kernels-rw');
      mkdirSync(rw);
      copyFileSync(bz, join(rw, 'vmlinuz-test'));
      const fallback = join(s.dir, 'kernel-cache');
      // two at once share one extraction
      const [a, b] = await Promise.all([kvmKernelImage(join(rw, 'vmlinuz-test'), fallback), kvmKernelImage(join(rw, 'vmlinuz-test'), fallback)]);
      expect(a).toBe(join(rw, 'vmlinux-test'));
      expect(b).toBe(a);
      expect(readdirSync(rw).sort()).toEqual(['vmlinux-test', 'vmlinuz-test']);
      expect(await kvmKernelImage(a, fallback)).toBe(a);
      // a read-only directory: the fallback cache, one subdirectory per bzImage path
      const ro = join(s.dir, 'kernels-ro');
      mkdirSync(ro);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', ro]);
      try {
        copyFileSync(bz, join(ro, 'vmlinuz-test'));
        execFileSync('mount', ['-o', 'remount,ro', ro]);
        const c = await kvmKernelImage(join(ro, 'vmlinuz-test'), fallback);
        expect(c.startsWith(`${fallback}/`)).toBe(true);
        expect(c).toMatch(/\/[0-9a-f]{16}\/vmlinux-test$/);
        expect(readdirSync(ro)).toEqual(['vmlinuz-test']);
      } finally {
        execFileSync('umount', [ro]);
      }
    },
    30_000,
  );
}));
