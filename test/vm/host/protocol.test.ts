/**
 * The host side of the guest protocol (frames in odd chunk sizes, the numbers
 * binding/guest/protocol.h defines), backend choice from synthetic probes, and
 * the qemu command line. Nothing here boots.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UnsupportedError } from '../../../lib/errors';
import { chooseBackend, hardwareKvmMissing } from '../../../lib/vm/backend';
import type { KvmProbe } from '../../../lib/vm/kvm';
import { FRAME_HEADER_BYTES, FrameDecoder, FrameType, MAX_FRAME_PAYLOAD, decodeExit, encodeExit, encodeFrame, encodeStdin } from '../../../lib/vm/protocol';
import { GUEST_CHANNEL_DEVICE, defaultCmdline, qemuArgs } from '../../../lib/vm/qemu';

describe('guest protocol frames', () => {
  it('agrees with every number in binding/guest/protocol.h', () => {
    const header = readFileSync(join(__dirname, '../../../binding/guest/protocol.h'), 'utf8');
    const define = (name: string): number => Number(new RegExp(`#define NACELLE_${name}\\s+(\\d+)`).exec(header)?.[1]);
    expect(define('PROTOCOL_VERSION')).toBe(1);
    expect(define('FRAME_HEADER')).toBe(FRAME_HEADER_BYTES);
    expect(define('MAX_PAYLOAD')).toBe(MAX_FRAME_PAYLOAD);
    for (const [name, value] of Object.entries(FrameType)) expect([name, define(`FRAME_${name}`)]).toEqual([name, value]);
  });

  it('decodes frames whatever the chunk boundaries', () => {
    const payloads = [Buffer.from('hello\n'), Buffer.alloc(0), Buffer.alloc(70_000, 7), encodeExit({ exitCode: 137, signal: 9 })];
    const types = [FrameType.STDOUT, FrameType.READY, FrameType.STDERR, FrameType.EXIT];
    const stream = Buffer.concat(payloads.map((p, i) => encodeFrame(types[i]!, p)));
    for (const size of [1, 2, 5, 7, 4096, stream.length]) {
      const decoder = new FrameDecoder();
      const frames = [];
      for (let off = 0; off < stream.length; off += size) frames.push(...decoder.push(stream.subarray(off, off + size)));
      expect(frames.map((f) => f.type)).toEqual(types);
      frames.forEach((f, i) => expect(f.payload.equals(payloads[i]!)).toBe(true));
      expect(decoder.buffered).toBe(0);
    }
    expect(decodeExit(encodeExit({ exitCode: 3, signal: 0 }))).toEqual({ exitCode: 3, signal: 0 });
    expect(() => decodeExit(Buffer.alloc(4))).toThrow(/8/);
  });

  it('splits stdin into frames no larger than the limit', () => {
    const frames = encodeStdin(Buffer.alloc(MAX_FRAME_PAYLOAD * 2 + 10, 1));
    expect(frames.map((f) => f.readUInt32LE(1))).toEqual([MAX_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD, 10]);
    expect(frames.every((f) => f[0] === FrameType.STDIN)).toBe(true);
    expect(encodeStdin(Buffer.alloc(0))).toEqual([]);
  });
});

function probe(over: Partial<KvmProbe>): KvmProbe {
  return {
    device: '/dev/kvm',
    available: false,
    errorCode: 'ENOENT',
    reason: "ENOENT: no such file or directory, open '/dev/kvm'",
    modules: { kvm: false, kvmIntel: false, kvmAmd: false, kvmPvm: false },
    hardware: false,
    ...over,
  };
}

describe('backend choice', () => {
  it("'auto' picks qemu with TCG without /dev/kvm, and says so", () => {
    const s = chooseBackend('auto', probe({}));
    expect(s).toMatchObject({ backend: 'qemu', accel: 'tcg', label: 'qemu+tcg' });
    expect(s.reason).toContain('no hardware KVM: /dev/kvm missing');
  });

  it("'auto' with hardware KVM picks the built-in monitor", () => {
    const s = chooseBackend('auto', probe({ available: true, errorCode: undefined, reason: undefined, hardware: true, modules: { kvm: true, kvmIntel: true, kvmAmd: false, kvmPvm: false } }));
    expect(s).toMatchObject({ backend: 'kvm', label: 'kvm monitor' });
    expect(s.reason).toContain('hardware KVM');
  });

  it('names PVM as not hardware KVM, and runs qemu on TCG there (its guests would die in the emulator)', () => {
    const p = probe({ available: true, errorCode: undefined, hardware: false, modules: { kvm: true, kvmIntel: false, kvmAmd: false, kvmPvm: true } });
    expect(hardwareKvmMissing(p)).toContain('PVM');
    const s = chooseBackend('auto', p);
    expect(s).toMatchObject({ backend: 'qemu', accel: 'tcg' });
    expect(s.reason).toContain('PVM');
    expect(chooseBackend('qemu', p)).toMatchObject({ accel: 'tcg' });
    expect(chooseBackend('kvm', p)).toMatchObject({ backend: 'kvm' });
  });

  it("refuses 'kvm' without /dev/kvm, and unknown names, clearly", () => {
    expect(() => chooseBackend('kvm', probe({}))).toThrow(UnsupportedError);
    expect(() => chooseBackend('kvm', probe({}))).toThrow(/needs a usable \/dev\/kvm/);
    expect(() => chooseBackend('xen' as never, probe({}))).toThrow(/unknown VM backend 'xen'/);
  });
});

describe('qemu command line', () => {
  it('boots microvm with the channel on stdio and the console on stderr', () => {
    const args = qemuArgs({ kernel: '/k', initrd: '/i', accel: 'tcg', channel: true, cpus: 2, memoryMiB: 128, cmdline: 'foo=1' });
    const after = (flag: string): string | undefined => args[args.indexOf(flag) + 1];
    expect(after('-M')).toBe('microvm');
    expect(after('-accel')).toBe('tcg');
    expect(after('-smp')).toBe('2');
    expect(after('-m')).toBe('128M');
    expect(after('-kernel')).toBe('/k');
    expect(after('-initrd')).toBe('/i');
    expect(after('-serial')).toBe('file:/dev/stderr');
    expect(after('-append')).toMatch(/^console=ttyS0 panic=-1 quiet .*no_timer_check foo=1$/);
    expect(args).toContain('-no-reboot');
    expect(args).toContain('-nodefaults');
    expect(args.join(' ')).toContain('-chardev stdio,id=nacelle,signal=off');
    expect(args.join(' ')).toMatch(/virtserialport,chardev=nacelle,nr=1/);
    expect(GUEST_CHANNEL_DEVICE).toBe('/dev/vport0p1');
    expect(defaultCmdline('kvm')).not.toContain('no_timer_check');
  });

  it('attaches the console to the terminal for interactive boots, and checks sizes', () => {
    const args = qemuArgs({ kernel: '/k', accel: 'kvm', console: 'inherit', disks: [{ path: '/d,1.img' }] });
    expect(args[args.indexOf('-serial') + 1]).toBe('mon:stdio');
    expect(args[args.indexOf('-cpu') + 1]).toBe('host');
    expect(args).not.toContain('-initrd');
    expect(args.join(' ')).toContain('file=/d,,1.img,format=raw,if=none,readonly=on');
    expect(() => qemuArgs({ kernel: '/k', accel: 'tcg', console: 'inherit', channel: true })).toThrow(/cannot have a channel/);
    expect(() => qemuArgs({ kernel: '/k', accel: 'tcg', cpus: 0 })).toThrow(/cpus/);
    expect(() => qemuArgs({ kernel: '/k', accel: 'tcg', memoryMiB: 0.5 })).toThrow(/memoryMiB/);
  });
});
