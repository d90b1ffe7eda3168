/**
 * The built-in KVM monitor, driven with freestanding guests (test/vm/kvm/guest):
 * boot paths, serial both ways, i8042 reset and Ctrl-Alt-Del, triple faults,
 * virtio-blk and virtio-console through real virtqueues, hostile virtqueues,
 * two vCPUs, pause/resume, snapshot → restore, and bad input. Every VM is
 * bounded in time and gone when its test ends.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { InvalidArgumentError, StateError } from '../../../lib/errors';
import { hardwareKvmMissing } from '../../../lib/vm/backend';
import { probeKvm } from '../../../lib/vm/kvm';
import { VirtualMachine } from '../../../lib/vm/machine';
import { describeKvm } from '../../helpers/gate';
import { Collector, LIMIT_MS, guestHarness } from './helpers';



describeKvm('KVM monitor with freestanding guests', () => {
  const h = guestHarness('kvm');
  const boot = h.boot;

  it('boots a bzImage through the 64-bit boot protocol: boot_params, command line, e820; powers off', async () => {
    const { vm, out } = await boot('hello', { cmdline: 'nacelle.test=hello extra=1' });
    const exit = await vm.wait(LIMIT_MS);
    expect(exit.reason).toBe('poweroff');
    await out.until(/e820: .*\n/);
    expect(out.text).toContain('entry: linux64');
    expect(out.text).toContain('hello from guest');
    expect(out.text).toMatch(/cmdline: nacelle\.test=hello extra=1/);
    // 32 MiB less the 0x9fc00..0x100000 hole
    expect(out.text).toMatch(/e820: 3 entries, 32383 KiB/);
    expect(vm.state).toBe('exited');
  });

  it('boots an ELF through its PVH note (32-bit entry, hvm_start_info)', async () => {
    const { vm, out } = await boot('hello', { kernel: h.guest().elf });
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('entry: pvh');
    expect(out.text).toContain('hello from guest');
    expect(out.text).toMatch(/e820: 3 entries/);
  });

  it('carries console input to the guest and its answers back', async () => {
    const { vm, out } = await boot('echo');
    await out.until(/guest: echo/);
    vm.console.write('first line\n');
    await out.until(/got: first line/);
    // more than the 64-byte receive FIFO at once: nothing may be dropped
    const long = 'x'.repeat(200);
    vm.console.write(`${long}\nquit\n`);
    await out.until(/bye/);
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain(`got: ${long}`);
  });

  it('powers off through ACPI: RSDP → XSDT → FADT sleep control register, \\_S5 from the DSDT', async () => {
    const { vm, out } = await boot('acpioff');
    const exit = await vm.wait(LIMIT_MS);
    expect(out.text).toContain('acpi: hw-reduced 1, sleep control port 0x600, S5 type 5');
    expect(exit).toMatchObject({ reason: 'poweroff', detail: expect.stringContaining('ACPI S5') });
    expect(out.text).not.toContain('still running');
  });

  it("ends with 'reset' when the guest pulses the i8042 reset line", async () => {
    const { vm } = await boot('reset');
    const exit = await vm.wait(LIMIT_MS);
    expect(exit).toMatchObject({ reason: 'reset' });
    expect(exit.detail).toContain('i8042');
  });

  it('stop() types Ctrl-Alt-Del; a guest that acts on it ends by itself', async () => {
    const { vm, out } = await boot('ctrlaltdel');
    await out.until(/waiting/);
    const exit = await vm.stop({ timeout: 10_000 });
    expect(exit.reason).toBe('reset');
    expect(out.text).toContain('scancode 1d');
    expect(out.text).toContain('ctrl-alt-del');
  });

  it('stop() kills a guest that ignores Ctrl-Alt-Del after the timeout', async () => {
    const { vm, out } = await boot('spin');
    await out.until(/spinning/);
    const t0 = Date.now();
    const exit = await vm.stop({ timeout: 300 });
    expect(exit.reason).toBe('killed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it("reports a triple fault as 'crash' with the registers", async () => {
    const { vm, out } = await boot('triple');
    const exit = await vm.wait(LIMIT_MS);
    expect(exit.reason).toBe('crash');
    expect(exit.detail).toContain('triple fault');
    expect(exit.detail).toMatch(/rip=0x[0-9a-f]{16}/);
    expect(exit.detail).toMatch(/cr0=0x/);
    expect(out.text).toContain('faulting');
  });

  it("reports an instruction KVM cannot emulate as 'crash' with the instruction's bytes (or runs it, on hardware)", async () => {
    const { vm, out } = await boot('cmpxchg16b');
    const exit = await vm.wait(LIMIT_MS);
    await out.until(/trying cmpxchg16b/);
    if (hardwareKvmMissing(probeKvm()) === null) {
      expect(exit.reason).toBe('poweroff');
      expect(out.text).toContain('survived: 1');
    } else {
      // PVM: guest code goes through KVM's instruction emulator, which has no cmpxchg16b
      expect(exit.reason).toBe('crash');
      expect(exit.detail).toMatch(/KVM internal error: emulation failure/);
      expect(exit.detail).toMatch(/instruction bytes: f0 48 0f c7/);
      expect(exit.detail).toMatch(/rip=0x[0-9a-f]{16}/);
      expect(out.text).not.toContain('survived');
    }
  });

  it('serves virtio-blk reads, writes and flushes, and refuses requests past the end', async () => {
    const disk = join(h.tmp(), 'disk.img');
    const image = Buffer.alloc(64 * 1024);
    image.write('NACELLE-DISK-0..', 0, 'latin1');
    writeFileSync(disk, image);
    const { vm, out } = await boot('blk', { disks: [{ path: disk }] });
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('sector0: NACELLE-DISK-0..');
    expect(out.text).toContain('sector1: nacelle-blk-test');
    expect(out.text).toContain('oob status: 1');
    expect(out.text).toContain('blk done');
    const after = readFileSync(disk);
    expect(after.subarray(512, 1024).toString('latin1')).toBe('nacelle-blk-test'.repeat(32));
  });

  it('a read-only disk refuses writes and keeps its bytes', async () => {
    const disk = join(h.tmp(), 'ro.img');
    const image = Buffer.alloc(16 * 1024);
    image.write('READ-ONLY-DISK..', 0, 'latin1');
    writeFileSync(disk, image);
    const { vm, out } = await boot('blk', { disks: [{ path: disk, readonly: true }] });
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('sector0: READ-ONLY-DISK..');
    expect(out.text).toContain('write status: 1');
    expect(readFileSync(disk).equals(image)).toBe(true);
  });

  it('moves bytes both ways over the virtio-console channel', async () => {
    const { vm, out } = await boot('console', { channel: true });
    expect(vm.channel).not.toBeNull();
    const ch = new Collector(vm.channel!);
    await ch.until(/ping\n/);
    vm.channel!.write('hello from the host\n');
    await ch.until(/pong hello from the host\n/);
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('console got: hello from the host');
  });

  it('lets no device input touch a paused guest: a snapshot taken then holds none of it', async () => {
    const { vm } = await boot('console', { channel: true });
    const ch = new Collector(vm.channel!);
    await ch.until(/ping\n/);
    await vm.pause();
    vm.channel!.write('sent while paused\n');
    await new Promise((r) => setTimeout(r, 150)); // the I/O thread sees the input, and must leave it be
    const dir = join(h.tmp(), 'snap-console');
    await vm.snapshot(dir);
    await vm.kill();
    // Had the input reached the guest's receive buffers, the restored guest would answer it.
    const restored = h.track(await VirtualMachine.restore(dir));
    const out = new Collector(restored.console);
    const again = new Collector(restored.channel!);
    restored.channel!.write('after restore\n');
    await again.until(/pong after restore\n/);
    expect((await restored.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('console got: after restore');
    expect(out.text + again.text).not.toContain('sent while paused');
  });

  for (const kind of ['loop', 'oob', 'huge', 'qsize', 'index']) {
    it(`survives a guest that writes garbage into a virtqueue (${kind}): device reset, counted, no host harm`, async () => {
      const disk = join(h.tmp(), `badq-${kind}.img`);
      writeFileSync(disk, Buffer.alloc(16 * 1024));
      const { vm, out } = await boot(`badq=${kind}`, { disks: [{ path: disk }] });
      await out.until(/status: 0x/);
      const stats = vm.stats();
      expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
      expect(out.text).toContain('needs-reset');
      expect(out.text).toContain('badq done');
      expect(stats.deviceErrors).toBeGreaterThanOrEqual(1);
      expect(stats.lastDeviceError).toMatch(/virtio-blk/);
    });
  }

  it('runs two vCPUs: the MP table lists both and the AP runs after INIT/SIPI', async () => {
    const { vm, out } = await boot('smp', { cpus: 2 });
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).toContain('mp cpus: 2');
    expect(out.text).toContain('smp ok: ap running');
  });

  it('pauses and resumes: no guest progress while paused', async () => {
    const { vm, out } = await boot('count');
    await out.until(/tick 2\n/);
    await vm.pause();
    expect(vm.state).toBe('paused');
    expect(vm.stats().state).toBe('paused');
    const frozen = out.text.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(out.text.length).toBe(frozen);
    vm.resume();
    const last = Math.max(...[...out.text.matchAll(/tick (\d+)\n/g)].map((m) => Number(m[1])));
    await out.until(new RegExp(`tick ${last + 2}\\n`));
    const stats = vm.stats();
    expect(stats.exits.io).toBeGreaterThan(0);
    expect(stats.memoryBytes).toBe(32 << 20);
    expect(stats.residentBytes).toBeGreaterThan(0);
    expect(stats.residentBytes).toBeLessThanOrEqual(stats.memoryBytes);
    // the vCPU and I/O threads are this process's, named, with their CPU time in /proc
    expect(readFileSync(`/proc/self/task/${stats.vcpus[0]!.tid}/comm`, 'utf8').trim()).toBe('nacelle-vcpu0');
    expect(readFileSync(`/proc/self/task/${stats.ioTid}/comm`, 'utf8').trim()).toBe('nacelle-vm-io');
    expect((await vm.kill()).reason).toBe('killed');
  });

  it('snapshots a paused VM and restores it: the counter continues where it stopped', async () => {
    const dir = join(h.tmp(), 'snap');
    const { vm, out } = await boot('count');
    await out.until(/tick 3\n/);
    await expect(vm.snapshot(dir)).rejects.toThrow(StateError);
    await vm.pause();
    await new Promise((r) => setTimeout(r, 50));
    const before = [...out.text.matchAll(/tick (\d+)\n/g)].map((m) => Number(m[1]));
    expect(before.length).toBeGreaterThanOrEqual(3);
    const last = before[before.length - 1]!;
    await vm.snapshot(dir);
    await vm.kill();

    const t0 = performance.now();
    const restored = await VirtualMachine.restore(dir);
    const ms = performance.now() - t0;
    h.track(restored);
    const again = new Collector(restored.console);
    await again.until(/tick \d+\n/);
    // The pause may have cut a line in two: the restored guest prints the rest of it.
    const continues = new RegExp(`tick ${last}\\ntick ${last + 1}\\n`);
    expect(out.text + again.text).toMatch(continues);
    console.info(`[kvm] snapshot restore → running in ${ms.toFixed(1)} ms`);
    // the memory file is mapped copy-on-write: restoring twice gives the same start
    await restored.kill();
    const twice = await VirtualMachine.restore(dir, { paused: true });
    h.track(twice);
    expect(twice.state).toBe('paused');
    const third = new Collector(twice.console);
    twice.resume();
    await third.until(/tick \d+\n/);
    expect(out.text + third.text).toMatch(continues);
  });

  it('refuses damaged and mismatched snapshots clearly', async () => {
    const dir = join(h.tmp(), 'snap-bad');
    const { vm, out } = await boot('count');
    await out.until(/tick 1\n/);
    await vm.pause();
    await vm.snapshot(dir);
    await vm.kill();
    const state = readFileSync(join(dir, 'vm.state'));
    const damaged = Buffer.from(state);
    damaged[state.length - 100] = (damaged[state.length - 100] ?? 0) ^ 0xff;
    writeFileSync(join(dir, 'vm.state'), damaged);
    await expect(VirtualMachine.restore(dir)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/damaged/) });
    const wrongVersion = Buffer.from(state);
    wrongVersion.writeUInt32LE(99, 8);
    writeFileSync(join(dir, 'vm.state'), wrongVersion);
    await expect(VirtualMachine.restore(dir)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/version 99/) });
    writeFileSync(join(dir, 'vm.state'), state);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { cpus: number };
    const otherDisk = join(h.tmp(), 'other-disk.img');
    writeFileSync(otherDisk, Buffer.alloc(4096));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, disks: [{ path: otherDisk }] }));
    await expect(VirtualMachine.restore(dir)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/different VM/) });
    await expect(VirtualMachine.restore(join(h.tmp(), 'nowhere'))).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });

  it('refuses bad input with clear errors', async () => {
    await expect(VirtualMachine.create({ kernel: join(h.tmp(), 'missing') })).rejects.toMatchObject({ code: 'ENOENT', message: expect.stringContaining('missing') });
    const garbage = join(h.tmp(), 'garbage');
    writeFileSync(garbage, randomBytes(8192));
    await expect(VirtualMachine.create({ kernel: garbage })).rejects.toMatchObject({ code: 'ENOEXEC', message: expect.stringContaining('not a kernel') });
    const bigInitrd = join(h.tmp(), 'big-initrd');
    writeFileSync(bigInitrd, Buffer.alloc(40 << 20));
    await expect(VirtualMachine.create({ kernel: h.guest().bzImage, initrd: bigInitrd, memoryMiB: 32 })).rejects.toMatchObject({
      code: 'ENOSPC',
      message: expect.stringContaining('does not fit'),
    });
    await expect(VirtualMachine.create({ kernel: h.guest().bzImage, memoryMiB: 4 })).rejects.toThrow(InvalidArgumentError);
    await expect(VirtualMachine.create({ kernel: h.guest().bzImage, cpus: 100_000 })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/at most \d+/) });
    await expect(VirtualMachine.create({ kernel: h.guest().bzImage, disks: [{ path: join(h.tmp(), 'no-disk') }] })).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a VM that is created but never started is released by kill()', async () => {
    const vm = await VirtualMachine.create({ kernel: h.guest().bzImage, cmdline: 'nacelle.test=hello', memoryMiB: 16 });
    expect(vm.state).toBe('created');
    expect((await vm.kill()).reason).toBe('killed');
    expect(() => vm.start()).toThrow(StateError);
  });
});
