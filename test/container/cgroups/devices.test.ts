/**
 * The cgroup v2 device policy: rules compiled to a BPF_PROG_TYPE_CGROUP_DEVICE
 * program and attached to a cgroup2 directory. This hybrid host has a cgroup2
 * hierarchy (/sys/fs/cgroup/unified) beside the v1 devices controller, so the
 * program is tested for real here: processes placed only in the v2 cgroup are
 * governed by it alone.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Cgroup } from '../../../lib/container/cgroups';
import { type DeviceRule, attachDeviceFilter, compileDeviceFilter, deviceFiltersAttached, parseDeviceRule } from '../../../lib/container/cgroups/devices';
import { DEFAULT_DEVICE_RULES } from '../../../lib/container/container';
import { InvalidArgumentError } from '../../../lib/errors';
import { native } from '../../../lib/native';
import { spawn } from '../../../lib/process/spawn';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';

async function text(stream: Readable | null): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream!) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('device rules', () => {
  it('parses devices.allow lines', () => {
    expect(parseDeviceRule('c 1:3 rwm')).toEqual({ allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' });
    expect(parseDeviceRule('c *:* m')).toEqual({ allow: true, type: 'c', access: 'm' });
    expect(parseDeviceRule('c 136:* rwm')).toEqual({ allow: true, type: 'c', major: 136, access: 'rwm' });
    expect(parseDeviceRule('a', false)).toEqual({ allow: false, type: 'a', access: 'rwm' });
    expect(() => parseDeviceRule('x 1:3 rwm')).toThrow(InvalidArgumentError);
    expect(() => parseDeviceRule('c 1:3 rwx')).toThrow(/bad device rule/);
  });

  it('compiles to whole eBPF instructions: a prologue, a block per rule, a default deny', () => {
    const prog = compileDeviceFilter(DEFAULT_DEVICE_RULES.map((l) => parseDeviceRule(l)));
    expect(prog.length % 8).toBe(0);
    const last = prog.subarray(prog.length - 16);
    expect(last[0]).toBe(0xb7); // r0 = 0
    expect(last.readInt32LE(4)).toBe(0);
    expect(last[8]).toBe(0x95); // exit
    expect(() => compileDeviceFilter([{ allow: true, type: 'c', major: -1, access: 'r' }])).toThrow(/bad device number/);
  });
});

describeRoot('device policy on cgroup v2 (BPF)', () => {
  let dir: string;
  let cgroup: Cgroup | undefined;
  let v2: string;
  beforeEach(async (ctx) => {
    dir = makeTempDir('devices');
    cgroup = await Cgroup.create(`devtest-${randomBytes(4).toString('hex')}`);
    const path = cgroup.paths.get('');
    if (!path) ctx.skip(); // (no cgroup2 hierarchy at all: nothing to attach to)
    v2 = path!;
  });
  afterEach(async () => {
    await cgroup?.destroy();
    removeTempDir(dir);
  });

  /** Runs a shell in the v2 cgroup only (the v1 devices controller stays at our own, unrestricted, cgroup). */
  async function sh(script: string): Promise<string> {
    const p = await spawn({ argv: ['sh', '-c', script], env: { PATH: '/usr/bin:/bin' }, cgroupProcs: [join(v2, 'cgroup.procs')], stdio: ['ignore', 'pipe', 'pipe'] });
    const [out, err] = await Promise.all([text(p.stdout), text(p.stderr), p.wait()]);
    return out + err.replace(/^sh: \d+: /gm, '').replace(/^.*: /gm, 'ERR ');
  }

  it("enforces Docker's default policy: the default devices work, others are refused, mknod stays allowed", async () => {
    attachDeviceFilter(v2, [{ allow: false, type: 'a', access: 'rwm' }, ...DEFAULT_DEVICE_RULES.map((l) => parseDeviceRule(l))]);
    expect(deviceFiltersAttached(v2)).toBe(1);
    const mem = join(dir, 'mem');
    const out = await sh(
      `cat /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo write-ok; ` +
        `mknod ${mem} c 1 1 && echo mknod-ok; head -c 1 ${mem} >/dev/null || echo mem-refused`,
    );
    expect(out).toContain('null-ok\n4\nwrite-ok\nmknod-ok\n');
    expect(out).toMatch(/Operation not permitted/);
    expect(out).toContain('mem-refused');
  });

  it('grants only the access bits a rule names, and the last matching rule wins', async () => {
    const rules: DeviceRule[] = [
      { allow: true, type: 'a', access: 'rwm' },
      { allow: false, type: 'c', major: 1, minor: 5, access: 'rwm' }, // zero: denied after the allow-all
      { allow: false, type: 'c', major: 1, minor: 3, access: 'w' }, // null: no writes
    ];
    attachDeviceFilter(v2, rules);
    const out = await sh(`cat /dev/null && echo read-ok; echo x > /dev/null || echo write-refused; head -c 1 /dev/zero > /dev/null || echo zero-refused; head -c 1 /dev/urandom | wc -c`);
    expect(out).toContain('read-ok');
    expect(out).toContain('write-refused');
    expect(out).toContain('zero-refused');
    expect(out).toMatch(/^1$/m); // urandom: allowed by the first rule
  });

  it("reports what the kernel's verifier refused, with its log", () => {
    const exitOnly = Buffer.from([0x95, 0, 0, 0, 0, 0, 0, 0]); // exit without setting r0
    let err: unknown;
    try {
      native().bpfLoadDeviceFilter(exitOnly);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'EACCES', syscall: expect.stringMatching(/^bpf\(BPF_PROG_LOAD\): .*R0/) });
    expect((err as { verifierLog: string }).verifierLog).toMatch(/R0 !read_ok/);
  });

  it('leaves processes outside the cgroup alone', async () => {
    attachDeviceFilter(v2, [{ allow: false, type: 'a', access: 'rwm' }]);
    const p = await spawn({ argv: ['sh', '-c', 'head -c 1 /dev/zero | wc -c'], env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'ignore'] });
    expect((await Promise.all([text(p.stdout), p.wait()]))[0]).toBe('1\n');
  });
});
