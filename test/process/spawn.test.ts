import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpawnError } from '../../lib/errors';
import { type SpawnOptions, readExitStatusFile, spawn } from '../../lib/process/spawn';
import { describeRoot } from '../helpers/gate';
import { eventually, fdCount, procState, zombieChildren } from '../helpers/proc';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

const PATH = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

async function readAll(stream: Readable | null): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Runs to completion and returns stdout, stderr and the exit status. */
async function run(options: SpawnOptions) {
  const p = await spawn(options);
  const [stdout, stderr, status] = await Promise.all([readAll(p.stdout), readAll(p.stderr), p.wait()]);
  return { stdout, stderr, status, pid: p.pid };
}

/** Reads the first line a child prints, without waiting for it to exit. */
async function firstLine(stream: Readable | null): Promise<string> {
  if (!stream) throw new Error('no stream');
  let buf = '';
  for await (const chunk of stream) {
    buf += String(chunk);
    const nl = buf.indexOf('\n');
    if (nl >= 0) return buf.slice(0, nl);
  }
  return buf;
}

describeRoot('spawn into namespaces', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('spawn');
  });
  afterEach(() => {
    removeTempDir(dir);
  });

  it('runs a program and reports its exit code', async () => {
    const r = await run({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 3'], env: PATH });
    expect(r.stdout).toBe('out\n');
    expect(r.stderr).toBe('err\n');
    expect(r.status).toEqual({ exitCode: 3, signal: null, coreDumped: false });
  });

  it('sees itself as pid 1 with its own hostname in new pid, uts and mount namespaces', async () => {
    const host = readFileSync('/proc/sys/kernel/hostname', 'utf8').trim();
    const r = await run({
      argv: ['sh', '-c', 'echo $$; cat /proc/sys/kernel/hostname'],
      env: PATH,
      namespaces: ['pid', 'uts', 'mount'],
      hostname: 'nacelle-box',
    });
    expect(r.status.exitCode).toBe(0);
    expect(r.stdout).toBe('1\nnacelle-box\n');
    expect(readFileSync('/proc/sys/kernel/hostname', 'utf8').trim()).toBe(host);
  });

  it('keeps a tmpfs mounted in the child invisible to the host', async () => {
    const target = join(dir, 'mnt');
    const p = await spawn({
      argv: ['sh', '-c', `echo planted > ${target}/inside && grep -c ' ${target} ' /proc/self/mountinfo && sleep 30`],
      env: PATH,
      namespaces: ['mount'],
      mounts: [
        { kind: 'mkdir', target },
        { kind: 'mount', source: 'tmpfs', target, fstype: 'tmpfs', data: 'size=1m' },
      ],
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      expect(await firstLine(p.stdout)).toBe('1'); // mounted, and the file written, inside
      expect(existsSync(join(target, 'inside'))).toBe(false);
      expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(` ${target} `);
    } finally {
      p.kill('SIGKILL');
      await p.wait();
    }
  });

  it('maps uid 0 inside a user namespace to the chosen host uid', async () => {
    chmodSync(dir, 0o777);
    const hostUid = 12345;
    const r = await run({
      argv: ['sh', '-c', `id -u; id -g; touch ${dir}/owned`],
      env: PATH,
      namespaces: ['user', 'mount', 'pid'],
      uidMap: [{ containerId: 0, hostId: hostUid, size: 1 }],
      gidMap: [{ containerId: 0, hostId: hostUid, size: 1 }],
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('0\n0\n');
    const st = statSync(join(dir, 'owned'));
    expect(st.uid).toBe(hostUid);
    expect(st.gid).toBe(hostUid);
  });

  it('switches to the requested uid, gid and groups', async () => {
    const r = await run({ argv: ['sh', '-c', 'id -u; id -g; id -G'], env: PATH, user: { uid: 1000, gid: 1001, groups: [1002, 1003] } });
    expect(r.stdout).toBe('1000\n1001\n1001 1002 1003\n');
  });

  it('reports signals, from outside and from the process itself', async () => {
    const p = await spawn({ argv: ['sleep', '30'], env: PATH });
    expect(procState(p.pid)).not.toBeNull();
    expect(p.kill('SIGKILL')).toBe(true);
    expect(await p.wait()).toEqual({ exitCode: null, signal: 'SIGKILL', coreDumped: false });
    expect(p.kill()).toBe(false); // reaped: the pidfd is closed, nothing is signalled

    const self = await run({ argv: ['sh', '-c', 'kill -TERM $$'], env: PATH });
    expect(self.status).toEqual({ exitCode: null, signal: 'SIGTERM', coreDumped: false });
  });

  it('resets signal dispositions Node ignores (SIGPIPE) before exec', async () => {
    // Node ignores SIGPIPE; an ignored signal would survive exec and make `yes | head` loop on EPIPE.
    const r = await run({ argv: ['sh', '-c', 'grep ^SigIgn /proc/self/status'], env: PATH });
    expect(r.stdout.trim()).toMatch(/^SigIgn:\s+0+$/);
  });

  it('pipes stdin through to stdout', async () => {
    const p = await spawn({ argv: ['cat'], env: PATH, stdio: ['pipe', 'pipe', 'inherit'] });
    p.stdin!.end('through the pipe\n');
    const [out, status] = await Promise.all([readAll(p.stdout), p.wait()]);
    expect(out).toBe('through the pipe\n');
    expect(status.exitCode).toBe(0);
  });

  it('leaves child_process working beside it: exits are not stolen or lost', async () => {
    const exec = promisify(execFile);
    const ours = Array.from({ length: 10 }, (_, i) => run({ argv: ['sh', '-c', `exit ${i}`], env: PATH }));
    const theirs = Array.from({ length: 10 }, (_, i) =>
      exec('sh', ['-c', `echo ${i}; exit 0`]).then((r) => r.stdout.trim()),
    );
    const failing = exec('sh', ['-c', 'exit 7']).then(
      () => null,
      (err: { code?: number }) => err.code,
    );
    const [oursDone, theirsDone, failCode] = await Promise.all([Promise.all(ours), Promise.all(theirs), failing]);
    expect(oursDone.map((r) => r.status.exitCode)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(theirsDone).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    expect(failCode).toBe(7);
    expect(spawnSync('true').status).toBe(0);
  });

  it('runs 200 spawns without leaking fds or zombies', async () => {
    await run({ argv: ['true'], env: PATH }); // warm up lazily opened fds (addon, pool)
    const before = fdCount();
    for (let i = 0; i < 200; i++) {
      const r = await run({ argv: ['true'], env: PATH, namespaces: ['pid', 'uts', 'ipc'] });
      expect(r.status.exitCode).toBe(0);
    }
    expect(fdCount()).toBe(before);
    expect(zombieChildren()).toEqual([]);
  });

  it('starts detached processes in their own session', async () => {
    const p = await spawn({ argv: ['sleep', '30'], env: PATH, detached: true, stdio: ['ignore', 'ignore', 'ignore'] });
    try {
      const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      expect(Number(fields[3])).toBe(p.pid); // session id
    } finally {
      p.kill('SIGKILL');
      await p.wait();
    }
  });

  it('kills a foreground child when the Node process that spawned it dies, but not a detached one', async () => {
    // A plain Node process (no vitest, no TypeScript) loads the addon and spawns two sleeps.
    const script = `
      const b = require('node-gyp-build')(${JSON.stringify(process.cwd())});
      const env = ['PATH=/usr/bin:/bin'];
      (async () => {
        const fg = await b.spawn({ file: 'sleep', argv: ['sleep', '60'], env });
        const bg = await b.spawn({ file: 'sleep', argv: ['sleep', '60'], env, detached: true });
        console.log(fg.pid + ' ' + bg.pid);
        process.exit(0);
      })();
    `;
    const out = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(out.status, out.stderr).toBe(0);
    const [fg, bg] = out.stdout.trim().split(' ').map(Number) as [number, number];
    try {
      await eventually(() => {
        const s = procState(fg);
        return s === null || s === 'Z';
      }, 5000, 'the foreground child to die with its parent');
      expect(procState(bg)).toMatch(/^[RS]$/);
    } finally {
      try {
        process.kill(bg, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  describe('detached through nacelle-monitor (exitStatusFile)', () => {
    let dir: string;
    beforeEach(() => {
      dir = makeTempDir('monitor');
    });
    afterEach(() => removeTempDir(dir));

    it('records the exit code; the monitor is the parent, has its own session and no terminal', async () => {
      const statusFile = join(dir, 'exit.json');
      const p = await spawn({ argv: ['sh', '-c', 'read x; exit 7'], env: PATH, detached: true, exitStatusFile: statusFile, stdio: ['pipe', 'ignore', 'ignore'] });
      const monitor = p.monitorPid!;
      expect(monitor).toBeGreaterThan(0);
      await eventually(() => readFileSync(`/proc/${monitor}/comm`, 'utf8').trim() === 'nacelle-monitor', 5000, 'the monitor to exec');
      const stat = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').slice(readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
      expect(Number(stat(p.pid)[1])).toBe(monitor); // ppid
      expect(Number(stat(monitor)[3])).toBe(monitor); // its own session
      expect(Number(stat(monitor)[1])).toBe(process.pid);
      // only /dev/null for stdio, nothing of ours kept open
      const fds = readdirSync(`/proc/${monitor}/fd`);
      expect(fds.sort()).toEqual(['0', '1', '2']);
      for (const fd of fds) expect(readlinkSync(`/proc/${monitor}/fd/${fd}`)).toBe('/dev/null');
      expect(existsSync(statusFile)).toBe(false);
      p.stdin!.end('go\n');
      expect(await p.wait()).toEqual({ exitCode: 7, signal: null, coreDumped: false });
      expect(readExitStatusFile(statusFile)).toEqual({ exitCode: 7, signal: null, coreDumped: false });
      expect(existsSync(`${statusFile}.tmp`)).toBe(false);
      expect(zombieChildren()).toEqual([]);
    });

    it('records a signal, and kill() reaches the process, not the monitor', async () => {
      const statusFile = join(dir, 'exit.json');
      const p = await spawn({ argv: ['sleep', '30'], env: PATH, detached: true, exitStatusFile: statusFile });
      expect(p.kill('SIGTERM')).toBe(true);
      expect(await p.wait()).toEqual({ exitCode: null, signal: 'SIGTERM', coreDumped: false });
      expect(readExitStatusFile(statusFile)?.signal).toBe('SIGTERM');
    });

    it('keeps the exit code after the Node process that started it is gone', async () => {
      const statusFile = join(dir, 'exit.json');
      const started = join(dir, 'started');
      const script = `
        import { spawn } from ${JSON.stringify(join(process.cwd(), 'lib/process/spawn.ts'))};
        const p = await spawn({ argv: ['sh', '-c', 'touch ${started}; sleep 0.5; exit 5'], env: { PATH: '/usr/bin:/bin' }, detached: true, exitStatusFile: ${JSON.stringify(statusFile)} });
        console.log(p.pid + ' ' + p.monitorPid);
        process.exit(0);`;
      writeFileSync(join(dir, 'start.ts'), script);
      const out = spawnSync(join(process.cwd(), 'node_modules/.bin/vite-node'), [join(dir, 'start.ts')], { encoding: 'utf8', timeout: 30_000 });
      expect(out.status, out.stderr).toBe(0);
      const [pid, monitor] = out.stdout.trim().split('\n').at(-1)!.split(' ').map(Number) as [number, number];
      expect(existsSync(started)).toBe(true); // it ran; its creator is gone
      await eventually(() => existsSync(statusFile), 10_000, 'the monitor to record the exit');
      expect(readExitStatusFile(statusFile)).toEqual({ exitCode: 5, signal: null, coreDumped: false });
      await eventually(() => procState(monitor) === null && procState(pid) === null, 5000, 'monitor and process to be gone');
    });

    it('refuses exitStatusFile without detached', async () => {
      await expect(spawn({ argv: ['true'], env: PATH, exitStatusFile: join(dir, 'x') })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    });

    it('reports a failed exec like any spawn and leaves no monitor behind', async () => {
      const before = fdCount();
      const err = await spawn({ argv: ['no-such-program-here'], env: PATH, detached: true, exitStatusFile: join(dir, 'exit.json') }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ENOENT', step: 'execve' });
      expect(fdCount()).toBe(before);
      expect(zombieChildren()).toEqual([]);
      expect(existsSync(join(dir, 'exit.json'))).toBe(false);
    });
  });

  describe('bad input', () => {
    it('names the step and errno: a missing binary', async () => {
      const before = fdCount();
      const err = await spawn({ argv: ['no-such-program-here'], env: PATH }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SpawnError);
      expect(err).toMatchObject({ code: 'ENOENT', step: 'execve', path: 'no-such-program-here', errno: -2 });
      const abs = await spawn({ argv: ['/nonexistent/bin/x'] }).catch((e: unknown) => e);
      expect(abs).toMatchObject({ code: 'ENOENT', step: 'execve', path: '/nonexistent/bin/x' });
      expect(fdCount()).toBe(before);
      expect(zombieChildren()).toEqual([]);
    });

    it('names the step and errno: a cwd that does not exist', async () => {
      const before = fdCount();
      const err = await spawn({ argv: ['true'], env: PATH, cwd: '/does/not/exist' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SpawnError);
      expect(err).toMatchObject({ code: 'ENOENT', step: 'chdir', path: '/does/not/exist' });
      expect(fdCount()).toBe(before);
      expect(zombieChildren()).toEqual([]);
    });

    it('names the step and errno: a bad uid map', async () => {
      const before = fdCount();
      const overlapping = await spawn({
        argv: ['true'],
        env: PATH,
        namespaces: ['user'],
        uidMap: [
          { containerId: 0, hostId: 1000, size: 10 },
          { containerId: 5, hostId: 2000, size: 10 },
        ],
      }).catch((e: unknown) => e);
      expect(overlapping).toBeInstanceOf(SpawnError);
      expect(overlapping).toMatchObject({ code: 'EINVAL', step: 'write uid_map' });
      const negative = await spawn({
        argv: ['true'],
        namespaces: ['user'],
        uidMap: [{ containerId: 0, hostId: -1, size: 1 }],
      }).catch((e: unknown) => e);
      expect(negative).toMatchObject({ code: 'EINVAL', step: 'write uid_map' });
      expect(fdCount()).toBe(before);
      expect(zombieChildren()).toEqual([]);
    });

    it('names the step and errno: an unknown namespace', async () => {
      const before = fdCount();
      const err = await spawn({ argv: ['true'], namespaces: ['time' as 'pid'] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SpawnError);
      expect(err).toMatchObject({ code: 'EINVAL', step: 'namespaces' });
      expect((err as Error).message).toContain("'time'");
      expect(fdCount()).toBe(before);
    });

    it('names the step and errno: a mount that fails in the child', async () => {
      const before = fdCount();
      const err = await spawn({
        argv: ['true'],
        namespaces: ['mount'],
        mounts: [{ kind: 'mount', source: 'tmpfs', target: join(dir, 'missing'), fstype: 'tmpfs' }],
      }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ENOENT', step: 'mount', path: join(dir, 'missing') });
      const optional = await run({
        argv: ['true'],
        namespaces: ['mount'],
        mounts: [{ kind: 'mount', source: 'tmpfs', target: join(dir, 'missing'), fstype: 'tmpfs', optional: true }],
      });
      expect(optional.status.exitCode).toBe(0);
      expect(fdCount()).toBe(before);
      expect(zombieChildren()).toEqual([]);
    });
  });
});

describeRoot('spawn: cgroups and pivot_root', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('spawn2');
  });
  afterEach(() => {
    removeTempDir(dir);
  });

  it('places the child in a cgroup before it runs (under our own cgroup, never above)', async () => {
    const own = readFileSync('/proc/self/cgroup', 'utf8')
      .split('\n')
      .find((l) => l.split(':')[1] === 'pids');
    if (!own) throw new Error('no pids controller in /proc/self/cgroup');
    const ownPath = own.split(':')[2]!;
    const cgroup = join('/sys/fs/cgroup/pids', ownPath, `nacelle-test-${process.pid}`);
    mkdirSync(cgroup);
    try {
      const r = await run({
        argv: ['sh', '-c', 'grep :pids: /proc/self/cgroup'],
        env: PATH,
        cgroupProcs: [join(cgroup, 'cgroup.procs')],
      });
      expect(r.stdout.trim()).toBe(`${own.split(':')[0]}:pids:${join(ownPath, `nacelle-test-${process.pid}`)}`);
      const bad = await spawn({ argv: ['true'], cgroupProcs: [join(cgroup, 'missing', 'cgroup.procs')] }).catch((e: unknown) => e);
      expect(bad).toMatchObject({ code: 'ENOENT', step: 'write cgroup.procs', path: join(cgroup, 'missing', 'cgroup.procs') });
      expect(zombieChildren()).toEqual([]);
    } finally {
      rmdirSync(cgroup);
    }
  });

  it('pivots into a root built from mount operations; the host root is gone', async () => {
    const root = join(dir, 'root');
    const usrIsMerged = lstatSync('/bin').isSymbolicLink();
    const lib64 = existsSync('/lib64');
    const r = await run({
      argv: ['sh', '-c', 'ls / | tr "\\n" " "; echo; test -e ' + dir + ' && echo host-visible || echo host-hidden; pwd'],
      env: PATH,
      cwd: '/work',
      namespaces: ['mount', 'pid'],
      mounts: [
        { kind: 'mkdir', target: root },
        { kind: 'mount', source: 'tmpfs', target: root, fstype: 'tmpfs', data: 'size=1m' },
        { kind: 'mkdir', target: `${root}/usr` },
        { kind: 'mount', source: '/usr', target: `${root}/usr`, flags: ['bind', 'rec'] },
        { kind: 'mount', target: `${root}/usr`, flags: ['bind', 'remount', 'rdonly'] },
        ...(usrIsMerged
          ? [
              { kind: 'symlink' as const, target: `${root}/bin`, linkTo: 'usr/bin' },
              { kind: 'symlink' as const, target: `${root}/lib`, linkTo: 'usr/lib' },
              ...(lib64 ? [{ kind: 'symlink' as const, target: `${root}/lib64`, linkTo: 'usr/lib64' }] : []),
            ]
          : [
              { kind: 'mkdir' as const, target: `${root}/bin` },
              { kind: 'mount' as const, source: '/bin', target: `${root}/bin`, flags: ['bind' as const] },
              { kind: 'mkdir' as const, target: `${root}/lib` },
              { kind: 'mount' as const, source: '/lib', target: `${root}/lib`, flags: ['bind' as const, 'rec' as const] },
              ...(lib64
                ? [
                    { kind: 'mkdir' as const, target: `${root}/lib64` },
                    { kind: 'mount' as const, source: '/lib64', target: `${root}/lib64`, flags: ['bind' as const] },
                  ]
                : []),
            ]),
        { kind: 'mkdir', target: `${root}/work`, mode: 0o700 },
      ],
      pivotRoot: root,
    });
    expect(r.stderr).toBe('');
    const expected = ['bin', 'lib', ...(lib64 ? ['lib64'] : []), 'usr', 'work'].sort();
    const [listing, hidden, cwd] = r.stdout.split('\n');
    expect(listing!.trim().split(' ').sort()).toEqual(expected);
    expect(hidden).toBe('host-hidden');
    expect(cwd).toBe('/work');
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(root);
  });
});

/** A tiny seccomp program: EPERM for mkdir/mkdirat, allow everything else. */
function denyMkdirFilter(): Buffer {
  const nrs = process.arch === 'x64' ? [83, 258] : [34];
  const insns: [number, number, number, number][] = [[0x20, 0, 0, 0]]; // ld [nr]
  nrs.forEach((nr, i) => insns.push([0x15, nrs.length - i, 0, nr])); // jeq nr → deny
  insns.push([0x06, 0, 0, 0x7fff0000]); // ret ALLOW
  insns.push([0x06, 0, 0, 0x00050000 | 1]); // ret ERRNO(EPERM)
  const buf = Buffer.alloc(insns.length * 8);
  insns.forEach(([code, jt, jf, k], i) => {
    buf.writeUInt16LE(code, i * 8);
    buf.writeUInt8(jt, i * 8 + 2);
    buf.writeUInt8(jf, i * 8 + 3);
    buf.writeUInt32LE(k, i * 8 + 4);
  });
  return buf;
}

function statusField(text: string, field: string): string {
  return text.split('\n').find((l) => l.startsWith(`${field}:`))?.split(/\s+/)[1] ?? '';
}

describeRoot('spawn: privileges, limits and exec into namespaces', () => {
  const STATUS = ['sh', '-c', 'cat /proc/self/status; echo limit=$(ulimit -n)'];

  it('sets exactly the requested capability sets, and ambient ones for a non-root user', async () => {
    const caps = ['CHOWN', 'CAP_KILL', 'NET_BIND_SERVICE'];
    const root = await run({ argv: STATUS, env: PATH, capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: caps } });
    const mask = ((1n << 0n) | (1n << 5n) | (1n << 10n)).toString(16).padStart(16, '0');
    expect(statusField(root.stdout, 'CapBnd')).toBe(mask);
    expect(statusField(root.stdout, 'CapEff')).toBe(mask);
    const user = await run({
      argv: STATUS,
      env: PATH,
      user: { uid: 1000, gid: 1000 },
      capabilities: { bounding: ['NET_BIND_SERVICE'], effective: ['NET_BIND_SERVICE'], permitted: ['NET_BIND_SERVICE'], inheritable: ['NET_BIND_SERVICE'], ambient: ['NET_BIND_SERVICE'] },
    });
    expect(statusField(user.stdout, 'CapAmb')).toBe((1n << 10n).toString(16).padStart(16, '0'));
    expect(statusField(user.stdout, 'CapEff')).toBe((1n << 10n).toString(16).padStart(16, '0'));
    expect(statusField(user.stdout, 'Uid')).toBe('1000');
    await expect(spawn({ argv: ['true'], capabilities: { bounding: ['CAP_TELEPORT'] } })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('applies rlimits, and reports the kernel refusing a hard limit above ours', async () => {
    const r = await run({ argv: STATUS, env: PATH, rlimits: [{ type: 'nofile', soft: 512, hard: 1024 }] });
    expect(r.stdout).toContain('limit=512');
    const tooHigh = await spawn({ argv: ['true'], rlimits: [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 10_000_000 }] }).catch((e: unknown) => e);
    expect(tooHigh).toMatchObject({ code: 'EPERM', step: 'prlimit' }); // no CAP_SYS_RESOURCE here
  });

  it('installs no_new_privs and a seccomp filter right before exec', async () => {
    const r = await run({ argv: STATUS, env: PATH, noNewPrivs: true });
    expect(statusField(r.stdout, 'NoNewPrivs')).toBe('1');
    const filtered = await run({ argv: ['sh', '-c', `mkdir /tmp/nacelle-test-seccomp-$$ 2>&1; grep ^Seccomp: /proc/self/status`], env: PATH, seccomp: denyMkdirFilter() });
    expect(filtered.stdout).toMatch(/Operation not permitted/);
    expect(filtered.stdout).toMatch(/Seccomp:\s+2/);
    const bad = await spawn({ argv: ['true'], seccomp: Buffer.alloc(8) }).catch((e: unknown) => e); // ld [0] without ret
    expect(bad).toMatchObject({ code: 'EINVAL', step: 'seccomp' });
  });

  it('starts a process inside another process\'s pid namespace (exec) and leaves this thread as it was', async () => {
    const holder = await spawn({ argv: ['sleep', '30'], env: PATH, namespaces: ['pid', 'mount'], stdio: ['ignore', 'ignore', 'ignore'] });
    const ns = openSync(`/proc/${holder.pid}/ns/pid`, 'r');
    try {
      const inside = await run({ argv: ['sh', '-c', 'echo $$'], env: PATH, joinPidNamespace: ns });
      expect(Number(inside.stdout.trim())).toBeGreaterThan(1);
      expect(Number(inside.stdout.trim())).toBeLessThan(10);
      const outside = await run({ argv: ['sh', '-c', 'echo $$'], env: PATH });
      expect(Number(outside.stdout.trim())).toBe(outside.pid);
    } finally {
      closeSync(ns);
      holder.kill('SIGKILL');
      await holder.wait();
    }
  });
});
