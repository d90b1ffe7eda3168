/**
 * The monitor's ACPI tables, read back by ACPICA's own disassembler (iasl, the
 * peer): checksums, the hardware-reduced FADT with our sleep control port, a
 * MADT with every vCPU and the IOAPIC, and a DSDT whose virtio-mmio devices
 * (LNRO0005) carry the windows and interrupts the monitor gives them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';

const haveIasl = spawnSync('iasl', ['-v']).status === 0;
if (!haveIasl) console.warn('[skip] ACPI tables vs iasl: iasl is not installed (apt-get install acpica-tools)');

describe.skipIf(!haveIasl)('ACPI tables, disassembled by iasl', () => {
  const tmp = makeTempDir('acpi');
  const cpus = 4;
  const devices = 11;
  let log = '';
  const dsl = (name: string): string => readFileSync(join(tmp, `${name}.dsl`), 'utf8');

  beforeAll(() => {
    const exe = join(tmp, 'acpi-dump');
    execFileSync('gcc', ['-std=gnu11', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Werror', '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
      '-Ibinding/kvm', 'test/vm/kvm/acpi-dump.c', 'binding/kvm/acpi.c', '-o', exe], { stdio: 'pipe' });
    execFileSync(exe, [tmp, String(cpus), String(devices)], { stdio: 'pipe' });
    const r = spawnSync('iasl', ['-d', 'dsdt.dat', 'facp.dat', 'apic.dat', 'xsdt.dat'], { cwd: tmp, encoding: 'utf8' });
    log = `${r.stdout}${r.stderr}`;
    expect(r.status, log).toBe(0);
  });
  afterAll(() => removeTempDir(tmp));

  it('has correct checksums everywhere', () => {
    expect(log).not.toMatch(/checksum/i);
    for (const t of ['dsdt', 'facp', 'apic', 'xsdt']) expect(dsl(t)).not.toMatch(/Incorrect checksum|Error/i);
    const rsdp = readFileSync(join(tmp, 'rsdp.dat'));
    expect(rsdp.toString('latin1', 0, 8)).toBe('RSD PTR ');
    const sum = (b: Buffer): number => b.reduce((a, x) => (a + x) & 0xff, 0);
    expect(sum(rsdp.subarray(0, 20))).toBe(0);
    expect(sum(rsdp)).toBe(0);
  });

  it('describes a hardware-reduced machine that powers off through port 0x600', () => {
    const facp = dsl('facp');
    expect(facp).toMatch(/Hardware Reduced \(V5\) : 1/);
    expect(facp).toMatch(/8042 Present on ports 60\/64 \(V2\) : 1/);
    expect(facp).toMatch(/Sleep Control Register[\s\S]*?Address : 0000000000000600/);
    expect(facp).toMatch(/Sleep Status Register[\s\S]*?Address : 0000000000000601/);
    expect(dsl('dsdt')).toMatch(/Name \(_S5, Package \(0x02\)[\s\S]*?0x05,/);
  });

  it('lists every vCPU and the IOAPIC in the MADT', () => {
    const apic = dsl('apic');
    expect(apic.match(/Subtable Type : 00 \[Processor Local APIC\]/g)).toHaveLength(cpus);
    for (let i = 0; i < cpus; i++) expect(apic).toContain(`Local Apic ID : ${i.toString(16).toUpperCase().padStart(2, '0')}`);
    expect(apic).toMatch(/Subtable Type : 01 \[I\/O APIC\][\s\S]*?Address : FEC00000[\s\S]*?Interrupt : 00000000/);
  });

  it('lists each virtio-mmio device with its window and interrupt in the DSDT', () => {
    const dsdt = dsl('dsdt');
    expect(dsdt.match(/Name \(_HID, "LNRO0005"\)/g)).toHaveLength(devices);
    for (let i = 0; i < devices; i++) {
      const base = (0xd0000000 + i * 0x1000).toString(16).toUpperCase();
      const irq = (5 + i).toString(16).toUpperCase().padStart(8, '0');
      expect(dsdt).toMatch(new RegExp(`Device \\(V${String(i).padStart(3, '0')}\\)[\\s\\S]*?0x${base},[\\s\\S]*?0x00001000,[\\s\\S]*?Interrupt \\(ResourceConsumer, Edge, ActiveHigh, Exclusive[\\s\\S]*?0x${irq},`));
    }
  });
});
