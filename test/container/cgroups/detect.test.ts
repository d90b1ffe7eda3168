import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { detectCgroups, parseCgroupHost } from '../../../lib/container/cgroups';
import { sharesToWeight, validateLimits } from '../../../lib/container/cgroups/limits';

const HYBRID_MOUNTINFO = `22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const HYBRID_SELF = `9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/a0444c4e
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
`;

describe('parseCgroupHost', () => {
  it('reads a hybrid host: v1 controllers, name=systemd and a controller-less cgroup2', () => {
    const host = parseCgroupHost(HYBRID_MOUNTINFO, HYBRID_SELF);
    expect(host.layout).toBe('hybrid');
    expect(host.v2Mount).toBe('/sys/fs/cgroup/unified');
    expect(host.v1.get('memory')).toBe('/sys/fs/cgroup/memory');
    expect(host.v1.get('name=systemd')).toBe('/sys/fs/cgroup/systemd');
    expect([...host.v1.keys()].sort()).toEqual(['cpu', 'cpuacct', 'cpuset', 'freezer', 'memory', 'name=systemd', 'pids']);
    expect(host.own.get('memory')).toBe('/process_api/a0444c4e');
    expect(host.own.get('cpu')).toBe('/');
    expect(host.own.get('')).toBe('/');
  });

  it('reads a pure v2 host', () => {
    const host = parseCgroupHost(
      '25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n',
      '0::/user.slice/user-1000.slice/session-2.scope\n',
    );
    expect(host).toEqual({
      layout: 'v2',
      v2Mount: '/sys/fs/cgroup',
      v1: new Map(),
      own: new Map([['', '/user.slice/user-1000.slice/session-2.scope']]),
    });
  });

  it('reads a pure v1 host with co-mounted cpu,cpuacct and optional fields in mountinfo', () => {
    const host = parseCgroupHost(
      [
        '26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd',
        '29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct',
        '30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory',
        '',
      ].join('\n'),
      '3:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n',
    );
    expect(host.layout).toBe('v1');
    expect(host.v2Mount).toBeUndefined();
    expect(host.v1.get('cpu')).toBe('/sys/fs/cgroup/cpu,cpuacct');
    expect(host.v1.get('cpuacct')).toBe('/sys/fs/cgroup/cpu,cpuacct');
    expect(host.own.get('cpuacct')).toBe('/docker/abc');
    expect(host.own.has('')).toBe(false);
  });

  it('makes own paths relative to a mount that shows only part of the hierarchy, and unescapes mount points', () => {
    const host = parseCgroupHost(
      [
        '40 30 0:31 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory',
        '41 30 0:31 / /mnt/all\\040cgroups rw - cgroup cgroup rw,memory',
        '50 30 0:40 /box /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw',
        '',
      ].join('\n'),
      '4:memory:/docker/abc/inner\n0::/box\n',
    );
    // The mount of the hierarchy root wins; the bind of /docker/abc is a second choice.
    expect(host.v1.get('memory')).toBe('/mnt/all cgroups');
    expect(host.own.get('memory')).toBe('/docker/abc/inner');
    expect(host.v2Mount).toBe('/sys/fs/cgroup/unified');
    expect(host.own.get('')).toBe('/');
    // A v2 host that still mounts name=systemd for old software is v2, not hybrid.
    const v2 = parseCgroupHost(
      '1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n2 0 0:2 / /run/systemd1 rw - cgroup cgroup rw,name=systemd\n',
      '1:name=systemd:/\n0::/a\n',
    );
    expect(v2.layout).toBe('v2');
    expect(v2.v1.get('name=systemd')).toBe('/run/systemd1');
  });

  it('throws ERR_UNSUPPORTED when no hierarchy of this process is mounted', () => {
    expect(() => parseCgroupHost('', '0::/\n')).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED' }));
  });
});

describe('detectCgroups on this host', () => {
  it('matches /proc/self/cgroup and the mounts under /sys/fs/cgroup', () => {
    const host = detectCgroups();
    expect(detectCgroups()).toBe(host); // cached
    const expected = existsSync('/sys/fs/cgroup/cgroup.controllers')
      ? 'v2'
      : existsSync('/sys/fs/cgroup/unified/cgroup.controllers')
        ? 'hybrid'
        : 'v1';
    expect(host.layout).toBe(expected);
    const self = readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n');
    for (const line of self) {
      const [, list = '', path = ''] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
      const key = list.split(',')[0] ?? '';
      if (key === '' && host.layout === 'v1') continue;
      expect(host.own.get(key), `own path for '${key}'`).toBe(path);
    }
    if (host.layout !== 'v2') {
      expect(host.v1.get('memory')).toBeDefined();
      expect(existsSync(`${host.v1.get('memory')}/memory.limit_in_bytes`)).toBe(true);
    }
  });
});

describe('limit checks', () => {
  it('maps cpu shares to cpu.weight as runc does', () => {
    expect(sharesToWeight(2)).toBe(1);
    expect(sharesToWeight(1024)).toBe(39);
    expect(sharesToWeight(262144)).toBe(10000);
  });

  it('rejects bad values before writing anything', () => {
    for (const bad of [
      { memory: 0 },
      { memory: 1.5 },
      { memory: 100, memorySwap: 50 },
      { memory: -1, memorySwap: 50 },
      { cpuShares: 1 },
      { cpuQuota: -2 },
      { cpuPeriod: 0 },
      { cpusetCpus: '0;reboot' },
      { pids: -5 },
    ]) {
      expect(() => validateLimits(bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    expect(() => validateLimits({ memory: 1 << 20, memorySwap: -1, cpuQuota: -1, pids: -1, cpusetCpus: '0-1' })).not.toThrow();
  });
});
