/**
 * The KVM monitor's interrupt paths, driven with the freestanding guest
 * (test/vm/kvm/guest) in its interrupt modes: the guest builds an IDT, enables
 * its LAPIC and routes IOAPIC pins to vectors, then sleeps in `sti; hlt`. The
 * monitor raises edges through irqfd (COM1 on GSI 4, virtio-mmio devices from
 * GSI 5 up) and the in-kernel LAPIC timer fires on its own. Every VM is bounded
 * in time and gone when its test ends.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { VirtualMachine } from '../../../lib/vm/machine';
import { describeKvm } from '../../helpers/gate';
import { Collector, LIMIT_MS, guestHarness } from './helpers';

const PAUSE_MS = 50;


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describeKvm('KVM monitor interrupts (IOAPIC, LAPIC, irqfd) with the freestanding guest', () => {
  const h = guestHarness('kvm-irq');
  const boot = h.boot;

  /**
   * Sends each line on its own (after the previous echo and a pause), then quit; waits for the
   * power-off and returns the guest's interrupt count. Waits for `ready` first unless restored.
   */
  async function serialLines(vm: VirtualMachine, out: Collector, lines: string[]): Promise<number> {
    for (const line of lines) {
      await sleep(PAUSE_MS);
      vm.console.write(`${line}\n`);
      await out.until(new RegExp(`irq line: ${escape(line)}\\n`));
    }
    await sleep(PAUSE_MS);
    vm.console.write('quit\n');
    const m = await out.until(/irqs: (\d+)\n/);
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).not.toContain('unexpected vector');
    return Number(m[1]);
  }

  it('delivers UART receive interrupts through IOAPIC pin 4: one interrupt (at least) per line', async () => {
    const { vm, out } = await boot('serialirq');
    await out.until(/ready\n/);
    const lines = ['first', 'second line', 'third: with punctuation!', 'x'];
    const irqs = await serialLines(vm, out, lines);
    expect(out.text).toMatch(/ioapic: version 0x[0-9a-f]{2}, 24 pins\n/);
    expect(irqs).toBeGreaterThanOrEqual(lines.length + 1);
    // every line came back once, in order
    const echoed = [...out.text.matchAll(/irq line: (.*)\n/g)].map((m) => m[1]);
    expect(echoed).toEqual([...lines, 'quit']);
  });

  it('refills the 64-byte receive FIFO by interrupt: a long line loses nothing', async () => {
    const { vm, out } = await boot('serialirq');
    await out.until(/ready\n/);
    const long = Array.from({ length: 200 }, (_, i) => String.fromCharCode(0x41 + (i % 26))).join('');
    const irqs = await serialLines(vm, out, [long, 'after']);
    expect(out.text).toContain(`irq line: ${long}\n`);
    expect(irqs).toBeGreaterThanOrEqual(3);
  });

  it('takes serial interrupts after the PVH entry too (its own GDT and code selector)', async () => {
    const { vm, out } = await boot('serialirq', { kernel: h.guest().elf });
    await out.until(/ready\n/);
    const irqs = await serialLines(vm, out, ['pvh one', 'pvh two']);
    expect(out.text).toContain('entry: pvh');
    expect(irqs).toBeGreaterThanOrEqual(3);
  });

  it('holds serial input that arrives while paused, then interrupts the guest on resume', async () => {
    const { vm, out } = await boot('serialirq');
    await out.until(/ready\n/);
    await vm.pause();
    vm.console.write('sent while paused\n');
    await sleep(150);
    expect(out.text).not.toContain('irq line');
    vm.resume();
    await out.until(/irq line: sent while paused\n/);
    const irqs = await serialLines(vm, out, []);
    expect(irqs).toBeGreaterThanOrEqual(2);
  });

  it('restores a snapshot taken while the guest sleeps in hlt: IDT, LAPIC and IOAPIC routing survive', async () => {
    const dir = join(h.tmp(), 'snap-irq');
    const { vm, out } = await boot('serialirq');
    await out.until(/ready\n/);
    vm.console.write('before\n');
    await out.until(/irq line: before\n/);
    await sleep(PAUSE_MS);
    await vm.pause();
    await vm.snapshot(dir);
    await vm.kill();

    const restored = await VirtualMachine.restore(dir);
    h.track(restored);
    const again = new Collector(restored.console);
    const irqs = await serialLines(restored, again, ['after restore']);
    // the count lives in guest memory: it goes on from before the snapshot
    expect(irqs).toBeGreaterThanOrEqual(3);
  });

  it('completes a virtio-blk read by interrupt on the IRQ from the command line (no polling)', async () => {
    const disk = join(h.tmp(), 'irq-disk.img');
    const image = Buffer.alloc(16 * 1024);
    image.write('NACELLE-IRQ-DISK', 0, 'latin1');
    writeFileSync(disk, image);
    const { vm, out } = await boot('blkirq', { disks: [{ path: disk }] });
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).not.toContain('unexpected vector');
    expect(out.text).toContain('blkirq irq: 5\n');
    expect(out.text).toContain('blkirq isr: 0x1\n'); // used-buffer notification
    expect(out.text).toContain('blkirq sector0: NACELLE-IRQ-DISK\n');
    const m = out.text.match(/blkirq interrupts: (\d+)\n/);
    expect(Number(m?.[1])).toBeGreaterThanOrEqual(1);
  });

  it('fires the LAPIC timer (one-shot, re-armed from its handler) three times', async () => {
    const { vm, out } = await boot('lapictimer');
    expect((await vm.wait(LIMIT_MS)).reason).toBe('poweroff');
    expect(out.text).not.toContain('unexpected vector');
    expect(out.text).toContain('timer ticks: 3\n');
    expect(out.text).toContain('timer current count: 0\n');
  });
});
