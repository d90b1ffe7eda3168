import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Cgroup, listCgroups } from '../../lib/container/cgroups/index';
import { ConflictError, NotFoundError, SpawnError, StateError } from '../../lib/errors';
import type { Image } from '../../lib/image/image';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { eventually, procState } from '../helpers/proc';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

/** A capability this process does not hold (CAP_SYS_RESOURCE on these machines), if any. */
function heldMissingCap(): string | undefined {
  const prm = BigInt(`0x${/^CapPrm:\s+(\w+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
  const last = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8'));
  for (let i = 0; i <= last; i++) if (!((prm >> BigInt(i)) & 1n)) return i === 24 ? 'SYS_RESOURCE' : undefined;
  return undefined;
}

async function text(s: Readable): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

describeRoot('containers', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  beforeAll(async () => {
    dir = makeTempDir('containers');
    rt = await Runtime.open({ root: join(dir, 'root') });
    img = await busyboxImage(rt, dir);
  });
  const seen = new Set<string>(); // every container this suite made, for the final leak check
  afterEach(async () => {
    for (const c of await rt.containers.list({ all: true })) {
      seen.add(c.id);
      await c.remove({ force: true });
    }
  });
  afterAll(async () => {
    // The suite itself checks it left nothing: no container mounts, no cgroups, no processes.
    try {
      expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(join(dir, 'root'));
      const ours = new Set(readdirSync(join(dir, 'root', 'containers')).filter((n) => /^[0-9a-f]{64}$/.test(n)));
      expect(ours.size).toBe(0);
      expect(seen.size).toBeGreaterThan(10);
      expect((await listCgroups()).filter((id) => seen.has(id))).toEqual([]);
      const leftovers = spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.includes('nacelle-ctr-marker'));
      expect(leftovers).toEqual([]);
    } finally {
      removeTempDir(dir);
    }
  });

  async function run(cmd: string, options: Parameters<Runtime['containers']['run']>[1] = {}) {
    const c = await rt.containers.run(img, { cmd: ['sh', '-c', cmd], ...options });
    const [stdout, stderr, exit] = await Promise.all([text(c.stdout), text(c.stderr), c.wait()]);
    return { c, stdout, stderr, exit };
  }

  describe('isolation and the rootfs', () => {
    it('is pid 1 with its own hostname, the image as its root, loopback up', async () => {
      const r = await run('echo $$; hostname; ls /; ip -o link | cut -d" " -f2,3', { hostname: 'box' });
      const [pid, host, ...rest] = r.stdout.trim().split('\n');
      expect(pid).toBe('1');
      expect(host).toBe('box');
      expect(rest.slice(0, -1)).toEqual(['bin', 'dev', 'etc', 'home', 'proc', 'root', 'sys', 'tmp', 'usr', 'var']);
      expect(rest.at(-1)).toBe('lo: <LOOPBACK,UP,LOWER_UP>');
      expect(r.exit).toEqual({ exitCode: 0, signal: null, oomKilled: false });
    });

    it('has the OCI default devices, /dev/pts, shm, mqueue, a read-only /sys and managed /etc files', async () => {
      const r = await run(
        'cd /dev && for f in *; do echo "$(stat -c %A $f) $f"; done; grep -E " /(dev/pts|dev/shm|dev/mqueue|sys|proc) " /proc/self/mountinfo | awk \'{print $5, $6}\'; cat /etc/hostname; grep -c localhost /etc/hosts; (touch /sys/x) 2>&1 | grep -c Read-only',
        { hostname: 'devbox' },
      );
      for (const dev of ['null', 'zero', 'full', 'random', 'urandom', 'tty']) expect(r.stdout).toMatch(new RegExp(`^crw-rw-rw- ${dev}$`, 'm'));
      for (const link of ['fd', 'stdin', 'stdout', 'stderr', 'ptmx']) expect(r.stdout).toMatch(new RegExp(`^lrwxrwxrwx ${link}$`, 'm'));
      expect(r.stdout).toMatch(/^\/sys ro,/m);
      expect(r.stdout).toMatch(/^\/dev\/pts /m);
      expect(r.stdout).toMatch(/^\/dev\/shm /m);
      expect(r.stdout).toMatch(/^\/dev\/mqueue /m);
      expect(r.stdout).toContain('devbox\n');
      expect(r.stdout.trim().split('\n').slice(-2)).toEqual(['2', '1']);
    });

    it('masks and write-protects the OCI default paths', async () => {
      // Each masked path the host has must read empty; each read-only one must refuse writes.
      const masked = ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug'].filter((p) => existsSync(p));
      const maskedDirs = ['/sys/firmware', '/proc/acpi', '/proc/scsi'].filter((p) => existsSync(p));
      const readonly = ['/proc/sys/kernel/hostname', '/proc/sysrq-trigger'].filter((p) => existsSync(p));
      const script = [
        ...masked.map((p) => `echo ${p}=$(cat ${p} | wc -c)`),
        ...maskedDirs.map((p) => `echo ${p}=$(ls ${p} | wc -l)`),
        ...readonly.map((p) => `echo ${p}=$( (echo 1 > ${p}) 2>&1 | grep -c Read-only)`),
      ].join('; ');
      expect(masked.length + maskedDirs.length + readonly.length).toBeGreaterThan(2);
      const r = await run(script);
      expect(r.stdout.trim().split('\n')).toEqual([...masked.map((p) => `${p}=0`), ...maskedDirs.map((p) => `${p}=0`), ...readonly.map((p) => `${p}=1`)]);
    });

    it('runs with the default capabilities, no_new_privs and seccomp (unshare and mount denied)', async () => {
      const r = await run('grep -E "^(CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/self/status; unshare -U true 2>&1 | head -1; mount -t tmpfs none /mnt 2>&1 | head -1');
      expect(r.stdout).toMatch(/CapEff:\s+00000000a80425fb/);
      expect(r.stdout).toMatch(/CapBnd:\s+00000000a80425fb/);
      expect(r.stdout).toMatch(/NoNewPrivs:\s+1/);
      expect(r.stdout).toMatch(/Seccomp:\s+2/);
      expect(r.stdout).toMatch(/unshare: unshare\(0x10000000\): Operation not permitted/);
      expect(r.stdout).toMatch(/mount: .*(permission denied|Operation not permitted)/i);
    });

    it('adds and drops capabilities, and privileged gets them all without seccomp', async () => {
      const added = await run('grep ^CapEff /proc/self/status', { capAdd: ['NET_ADMIN'], capDrop: ['CHOWN'] });
      const mask = (0xa80425fbn | (1n << 12n)) & ~1n;
      expect(added.stdout).toContain(mask.toString(16).padStart(16, '0'));
      const priv = await run('grep -E "^(CapEff|Seccomp):" /proc/self/status', { privileged: true });
      expect(priv.stdout).toMatch(/Seccomp:\s+0/);
      const own = /^CapPrm:\s+(\w+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1];
      expect(priv.stdout).toMatch(new RegExp(`CapEff:\\s+${own}`)); // everything this process holds
      const missing = heldMissingCap();
      if (missing) await expect(rt.containers.create(img, { cmd: ['true'], capAdd: [missing] })).rejects.toMatchObject({ code: 'EPERM' });
    });

    it('resolves users and groups from the image, and honours workdir and env', async () => {
      const r = await run('id; pwd; echo $GREETING $HOME', { user: 'app', workdir: '/srv/app', env: { GREETING: 'hi' } });
      expect(r.stdout).toBe('uid=1000(app) gid=1000(app) groups=50(staff)\n/srv/app\nhi /home/app\n');
      const numeric = await run('id -u; id -g', { user: '1234:4321' });
      expect(numeric.stdout).toBe('1234\n4321\n');
    });

    it('bind-mounts volumes (read-only too) and tmpfs, and can make the rootfs read-only', async () => {
      const vol = join(dir, 'vol');
      mkdirSync(vol, { recursive: true });
      writeFileSync(join(vol, 'in.txt'), 'from host');
      const r = await run('cat /data/in.txt; echo; echo out > /data/out.txt; (echo x > /ro/x) 2>&1 | grep -c Read-only; df -k /scratch | tail -1 | awk \'{print $2}\'', {
        volumes: [
          { host: vol, container: '/data' },
          { host: vol, container: '/ro', readonly: true },
        ],
        tmpfs: [{ container: '/scratch', size: '8m' }],
      });
      expect(r.stdout.trim().split('\n')).toEqual(['from host', '1', '8192']);
      expect(readFileSync(join(vol, 'out.txt'), 'utf8')).toBe('out\n');
      const ro = await run('(touch /newfile) 2>&1 | grep -c Read-only; (touch /tmp/x) 2>&1 | grep -c Read-only', { readonlyRootfs: true });
      expect(ro.stdout.trim().split('\n')).toEqual(['1', '1']);
    });

    it('may create device nodes (CAP_MKNOD) but not open them, unless privileged (devices cgroup)', async () => {
      const script = 'mknod /tmp/kmsg c 1 11 && (head -c 1 /tmp/kmsg > /dev/null) 2>&1 | grep -c "Operation not permitted"; head -c 1 /dev/zero | wc -c';
      const r = await run(script);
      expect(r.stdout).toBe('1\n1\n'); // kmsg refused, /dev/zero (a default device) fine
      const priv = await run(script, { privileged: true });
      expect(priv.stdout).toBe('0\n1\n');
    });

    it('roots its cgroup namespace at its own cgroup', async () => {
      const r = await run('cat /proc/self/cgroup');
      const lines = r.stdout.trim().split('\n');
      expect(lines.length).toBeGreaterThan(1);
      for (const line of lines) expect(line).toMatch(/:\/$/); // every hierarchy shows "/"
    });

    it('shares the host network with network: host', async () => {
      const host = spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).length;
      const r = await run('ip -o link | wc -l', { network: 'host' });
      expect(Number(r.stdout.trim())).toBe(host);
    });
  });

  describe('limits', () => {
    it('applies memory, cpu and pids limits in its cgroup, and reports stats', async () => {
      const c = await rt.containers.run(img, { cmd: ['sleep', '30'], memory: '48m', pids: 30, cpus: 0.5 });
      try {
        const stats = await c.stats();
        expect(stats.memory.limit).toBe(48 * 1024 * 1024);
        expect(stats.pids.limit).toBe(30);
        expect(stats.pids.current).toBe(1);
        const cg = await Cgroup.open(c.id);
        expect(cg.paths.get('cpu')).toBeDefined();
        expect(readFileSync(join(cg.paths.get('cpu')!, 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('50000');
      } finally {
        await c.remove({ force: true });
      }
    });

    it('reports an OOM kill in the exit result', async () => {
      const r = await run('tail /dev/zero', { memory: '32m' });
      expect(r.exit).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: true });
    });

    it('contains a fork bomb under pids: 20', async () => {
      const r = await run('i=0; while [ $i -lt 60 ]; do sleep 2 & i=$((i+1)); done 2>/dev/null; ls /proc | grep -c "^[0-9]"', { pids: 20 });
      expect(Number(r.stdout.trim().split('\n').at(-1))).toBeLessThanOrEqual(20);
    });

    it('applies rlimits', async () => {
      const r = await run('ulimit -n; ulimit -Hn', { ulimits: [{ type: 'nofile', soft: 256, hard: 512 }] });
      expect(r.stdout).toBe('256\n512\n');
      const dflt = await run('ulimit -n');
      expect(dflt.stdout).toBe('1024\n');
    });
  });

  describe('lifecycle', () => {
    it('creates, starts, stops with SIGTERM then SIGKILL, and keeps exited containers listed', async () => {
      const c = await rt.containers.create(img, { cmd: ['sh', '-c', 'trap "" TERM; echo nacelle-ctr-marker; while true; do sleep 1; done'], name: 'stubborn' });
      expect(c.status).toBe('created');
      await c.start();
      expect(c.status).toBe('running');
      expect((await rt.containers.list()).map((x) => x.id)).toEqual([c.id]);
      const started = Date.now();
      const exit = await c.stop({ timeout: 1 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
      expect(exit).toMatchObject({ exitCode: 137, signal: 'SIGKILL' });
      expect(await rt.containers.list()).toEqual([]);
      const all = await rt.containers.list({ all: true });
      expect(all.map((x) => [x.name, x.status])).toEqual([['stubborn', 'exited']]);
      await expect(c.stop()).rejects.toBeInstanceOf(StateError);
      expect((await rt.containers.get('stubborn')).id).toBe(c.id);
      expect((await rt.containers.get(c.id.slice(0, 12))).id).toBe(c.id);
    });

    it('stops politely with SIGTERM when the process honours it', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'trap "exit 0" TERM; while true; do sleep 0.1; done'] });
      await new Promise((r) => setTimeout(r, 200));
      expect(await c.stop({ timeout: 5 })).toMatchObject({ exitCode: 0 });
    });

    it('pauses and resumes with the freezer', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.05; done'] });
      try {
        await new Promise((r) => setTimeout(r, 300));
        await c.pause();
        expect((await c.refresh()).status).toBe('paused');
        const tick = async () => (await c.exec(['cat', '/tmp/tick']).catch(() => undefined), readFileSync(join(c.dir, 'upper/tmp/tick'), 'utf8'));
        const a = await tick();
        await new Promise((r) => setTimeout(r, 300));
        expect(await tick()).toBe(a);
        await expect(c.exec(['true'])).rejects.toBeInstanceOf(StateError);
        await c.resume();
        await new Promise((r) => setTimeout(r, 300));
        expect(readFileSync(join(c.dir, 'upper/tmp/tick'), 'utf8')).not.toBe(a);
      } finally {
        await c.remove({ force: true });
      }
    });

    it('execs into a running container with its own stdio and exit code', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'echo hello > /tmp/greeting; sleep 30'], hostname: 'execbox', user: 'app' });
      try {
        await eventually(() => existsSync(join(c.dir, 'upper/tmp/greeting')), 5000, 'the container to write its file');
        const p = await c.exec(['sh', '-c', 'cat /tmp/greeting; hostname; id -u; echo $$; ls /proc | grep -c "^[0-9]"; echo err >&2; exit 7'], { env: { X: '1' } });
        const [out, err, status] = await Promise.all([text(p.stdout), text(p.stderr), p.wait()]);
        const lines = out.trim().split('\n');
        expect(lines.slice(0, 3)).toEqual(['hello', 'execbox', '1000']);
        expect(Number(lines[3])).toBeGreaterThan(1); // in the container's pid namespace, not pid 1
        expect(Number(lines[4])).toBeLessThan(10); // sees only the container's processes
        expect(err).toBe('err\n');
        expect(status.exitCode).toBe(7);
        const withTty = await c.exec(['sh', '-c', 'tty; [ -t 0 ] && echo interactive'], { tty: true });
        const [ttyOut, ttyStatus] = await Promise.all([text(withTty.stdout), withTty.wait()]);
        expect(ttyOut.replace(/\r/g, '')).toMatch(/^\/dev\/pts\/\d+\ninteractive\n$/);
        expect(ttyStatus.exitCode).toBe(0);
        const piped = await c.exec(['cat'], { stdin: true });
        piped.stdin!.end('round trip\n');
        expect(await text(piped.stdout)).toBe('round trip\n');
      } finally {
        await c.remove({ force: true });
      }
    });

    it('keeps logs, and another runtime object (another process) sees, waits on and removes it', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'echo to-out; echo to-err >&2; sleep 0.5; exit 4'] });
      const other = await Runtime.open({ root: join(dir, 'root') });
      const seen = await other.containers.get(c.id);
      expect(seen.status).toBe('running');
      expect(await seen.wait()).toMatchObject({ exitCode: 4 });
      expect(await seen.logs()).toEqual({ stdout: 'to-out\n', stderr: 'to-err\n' });
      await seen.remove();
      await expect(other.containers.get(c.id)).rejects.toBeInstanceOf(NotFoundError);
      expect(existsSync(c.dir)).toBe(false);
    });

    it('removes itself with autoRemove', async () => {
      const c = await rt.containers.run(img, { cmd: ['true'], autoRemove: true });
      await c.wait();
      await eventually(() => !existsSync(c.dir), 5000, 'auto-removal');
    });

    it('allocates a terminal with tty: true, and resizes it', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', '[ -t 0 ] && [ -t 1 ] && echo is-a-tty; tty; stty size; sleep 0.3; stty size'], tty: true, user: 'app' });
      await new Promise((r) => setTimeout(r, 100));
      c.resize(100, 40);
      const [out, exit] = await Promise.all([text(c.stdout), c.wait()]);
      expect(out).toContain('is-a-tty');
      expect(out).toMatch(/^\/dev\/pts\/0\r?$/m); // a terminal of the container's own devpts, as in Docker
      expect(out).toMatch(/24 80/);
      expect(out).toMatch(/40 100/);
      expect(exit.exitCode).toBe(0);
    });

    it('runs detached: output goes to the log files and it lives on its own session', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'echo detached-out; sleep 30'], detach: true });
      try {
        await eventually(() => readFileSync(join(c.dir, 'stdout.log'), 'utf8') === 'detached-out\n', 5000, 'the log');
        const stat = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        expect(Number(fields[3])).toBe(c.pid); // its own session
      } finally {
        await c.remove({ force: true });
      }
      expect(procState(c.state.pid!)).toBeNull();
    });
  });

  describe('diff and commit', () => {
    it('reports changes like docker diff, and commit makes an image whose containers see them', async () => {
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'echo new > /etc/motd; echo changed >> /etc/passwd; rm /bin/vi; mkdir -p /srv/data; echo x > /srv/data/f'] });
      await c.wait();
      const changes = await c.diff();
      expect(changes).toEqual(
        expect.arrayContaining([
          { kind: 'A', path: '/etc/motd' },
          { kind: 'C', path: '/etc/passwd' },
          { kind: 'C', path: '/etc' },
          { kind: 'D', path: '/bin/vi' },
          { kind: 'A', path: '/srv' },
          { kind: 'A', path: '/srv/data/f' },
        ]),
      );
      // mount points and the managed /etc files are not the container's changes
      for (const path of ['/proc', '/dev', '/sys', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf']) {
        expect(changes.map((x) => x.path)).not.toContain(path);
      }
      expect([...changes].sort((a, b) => a.path.localeCompare(b.path))).toEqual([
        { kind: 'C', path: '/bin' },
        { kind: 'D', path: '/bin/vi' },
        { kind: 'C', path: '/etc' },
        { kind: 'A', path: '/etc/motd' },
        { kind: 'C', path: '/etc/passwd' },
        { kind: 'A', path: '/srv' },
        { kind: 'A', path: '/srv/data' },
        { kind: 'A', path: '/srv/data/f' },
      ]);

      const committed = await c.commit({ tag: 'busybox:changed', message: 'a test commit', changes: ['CMD ["cat", "/etc/motd"]', 'ENV FROM_COMMIT=yes'] });
      expect(committed.layers).toHaveLength(img.layers.length + 1);
      expect(committed.history.at(-2)).toMatchObject({ comment: 'a test commit' });
      expect(committed.config.Cmd).toEqual(['cat', '/etc/motd']);
      const next = await rt.containers.run('busybox:changed', {});
      expect(await text(next.stdout)).toBe('new\n');
      const check = await run('ls /bin/vi 2>&1 | grep -c "No such"; echo $FROM_COMMIT', {});
      expect(check.stdout).toBe('0\n\n'); // the original image is unchanged
      const fromCommit = await rt.containers.run(committed, { cmd: ['sh', '-c', 'ls /bin/vi 2>/dev/null | wc -l; echo $FROM_COMMIT; tail -1 /etc/passwd'] });
      expect(await text(fromCommit.stdout)).toBe('0\nyes\nchanged\n');
    });
  });

  describe('bad input', () => {
    it('refuses a missing image, a command not found (127), a missing user, a missing volume source', async () => {
      await expect(rt.containers.run('no-such-image:1', {})).rejects.toBeInstanceOf(NotFoundError);
      const notFound = await rt.containers.run(img, { cmd: ['/bin/no-such-program'] }).catch((e: unknown) => e);
      expect(notFound).toBeInstanceOf(SpawnError);
      expect(notFound).toMatchObject({ code: 'ENOENT', step: 'execve', path: '/bin/no-such-program' });
      expect((notFound as Error).message).toContain('/bin/no-such-program');
      const exited = (await rt.containers.list({ all: true })).find((c) => c.state.exitCode === 127);
      expect(exited?.status).toBe('exited');
      await expect(rt.containers.create(img, { cmd: ['true'], user: 'ghost' })).rejects.toMatchObject({ code: 'ERR_NO_SUCH_USER' });
      await expect(rt.containers.create(img, { cmd: ['true'], volumes: [{ host: join(dir, 'nope'), container: '/x' }] })).rejects.toMatchObject({
        code: 'ENOENT',
      });
    });

    it('refuses limits the kernel rejects, leaving no cgroup', async () => {
      const before = await listCgroups();
      const err = await rt.containers.run(img, { cmd: ['true'], memory: '1k' }).catch((e: unknown) => e);
      expect((err as { code?: string }).code).toMatch(/^E[A-Z]+$/);
      expect(await listCgroups()).toEqual(before);
      await expect(rt.containers.create(img, { cmd: ['true'], memory: 'lots' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    });

    it('refuses to remove a running container without force, and a second container with the same name', async () => {
      const c = await rt.containers.run(img, { cmd: ['sleep', '30'], name: 'only-one' });
      await expect(c.remove()).rejects.toBeInstanceOf(ConflictError);
      await expect(rt.containers.create(img, { cmd: ['true'], name: 'only-one' })).rejects.toBeInstanceOf(ConflictError);
      await c.remove({ force: true });
      expect(readdirSync(join(dir, 'root', 'containers')).filter((n) => n === c.id)).toEqual([]);
    });
  });
});
