/**
 * Behaviour matches crun on an equivalent bundle where it applies: the same
 * probe runs in a nacelle container and in crun on a bundle made from that
 * container's own config.json (test/helpers/crun.ts), and what the process
 * sees inside is compared. Differences that come from how the two runtimes
 * are built (overlayfs vs a plain directory, pipes vs sockets for stdio) are
 * normalized away, each named where it is; anything else fails.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import type { Container } from '../../lib/container/container';
import type { ContainerOptions } from '../../lib/container/options';
import type { Image } from '../../lib/image/image';
import type { RuntimeSpec } from '../../lib/oci/runtime-spec';
import { DEFAULT_MASKED_PATHS } from '../../lib/container/spec';
import { CAPABILITY_NAMES } from '../../lib/process/spawn';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { type CrunResult, crunBundle, describeCrun, removeCrunCgroupParents, runCrun } from '../helpers/crun';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

/**
 * A container's output and exit. Output is collected from 'data' events; after
 * the exit, the streams get `graceMs` to end. `streamsEnded` records whether they
 * did (see the test of that below): an empty stream that never ends still
 * has its whole (empty) content, so the other tests can go on.
 */
async function collect(c: Container, graceMs = 5_000): Promise<{ stdout: string; stderr: string; exitCode: number | null; oomKilled: boolean; streamsEnded: boolean }> {
  const out = { stdout: '', stderr: '' };
  const ends = (['stdout', 'stderr'] as const).map(
    (name) =>
      new Promise<void>((resolve) => {
        const stream = c[name];
        stream.on('data', (d: Buffer) => (out[name] += d.toString()));
        stream.once('end', () => resolve());
        if (stream.readableEnded) resolve();
      }),
  );
  const exit = await c.wait({ timeoutMs: 60_000 });
  const streamsEnded = await Promise.race([Promise.all(ends).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), graceMs))]);
  return { ...out, exitCode: exit.exitCode, oomKilled: exit.oomKilled, streamsEnded };
}

/** What one command did in one runtime. */
interface Outcome {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  oomKilled?: boolean;
  /** Whether stdout and stderr ended (nacelle; always true for crun, whose pipes close). */
  streamsEnded: boolean;
  /** Milliseconds from start to exit. */
  ms: number;
}

/**
 * The probe: one shell script printing `=== section` headers. Only shell
 * builtins and busybox applets; nothing that differs between two runs of the
 * same runtime (no pids but $$, no times).
 */
const PROBE = String.raw`
echo "=== pid"; echo $$
echo "=== hostname"; hostname; cat /etc/hostname
echo "=== mountinfo"; cat /proc/self/mountinfo
echo "=== masked"
for p in $MASKED; do
  if [ -d "$p" ]; then echo "$p dir entries=$(ls -A "$p" | wc -l)"
  elif [ -e "$p" ]; then echo "$p file bytes=$(cat "$p" 2>/dev/null | wc -c)"
  else echo "$p missing"; fi
done
echo "=== readonly"
(echo probe > /proc/sys/kernel/hostname) 2>&1; echo "hostname write status=$?"
(echo 1 > /proc/sys/vm/overcommit_memory) 2>&1; echo "overcommit write status=$?"
touch /sys/probe 2>&1; echo "sysfs touch status=$?"
echo "=== caps"; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status
echo "=== nnp"; grep -E '^NoNewPrivs:' /proc/self/status
echo "=== seccomp"; grep -E '^Seccomp(_filters)?:' /proc/self/status
echo "=== ids"; id; grep -E '^(Uid|Gid|Groups):' /proc/self/status
echo "=== cwd"; pwd
echo "=== umask"; umask
echo "=== stdio"
# The shell's own fds ($$), not those of a command substitution; reopened as
# /dev/stdout (/proc/self/fd/1) would be, without redirecting them first.
for fd in 1 2; do echo "fd $fd $(stat -L -c '%F %a %u:%g' /proc/$$/fd/$fd)"; done
for fd in 1 2; do (: > /proc/$$/fd/$fd) 2>/dev/null && echo "reopen fd $fd ok" || echo "reopen fd $fd denied"; done
echo "=== env"; env | sort
echo "=== dev"; find /dev | sort | while read -r f; do stat -c '%N|%F|%a|%t:%T|%u:%g' "$f"; done
echo "=== nofile"; ulimit -n
echo "=== limits"; cat /proc/self/limits
echo "=== cgroup"; cat /proc/self/cgroup
echo "=== net"; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort
echo "=== etc"; cat /etc/hosts; echo ---; cat /etc/resolv.conf
echo "=== end"
`;

function sections(out: string): Record<string, string> {
  const result: Record<string, string> = {};
  let name: string | undefined;
  let lines: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^=== (\S+)$/.exec(line);
    if (m) {
      if (name !== undefined) result[name] = lines.join('\n');
      name = m[1]!;
      lines = [];
    } else if (name !== undefined) lines.push(line);
  }
  if (name !== undefined) result[name] = lines.join('\n');
  return result;
}

/** One line of /proc/self/mountinfo, without ids, device numbers and sources. */
interface MountRecord {
  point: string;
  /** The mounted directory inside its filesystem (`/null` for a bind of /dev/null). */
  root: string;
  fstype: string;
  flags: string[];
  superOptions: string[];
}

function parseMountinfo(textValue: string): MountRecord[] {
  return textValue
    .split('\n')
    .filter((l) => l.includes(' - '))
    .map((line) => {
      const [before, after] = line.split(' - ') as [string, string];
      const f = before.split(' ');
      const [fstype, , superOptions = ''] = after.split(' ');
      return { point: f[4]!, root: f[3]!, fstype: fstype!, flags: f[5]!.split(','), superOptions: superOptions.split(',') };
    });
}

/** Super options that name host paths or host devices (overlay layers, the host fs under a bind). */
const HOST_SUPER_OPTIONS = /^(lowerdir|upperdir|workdir|uuid|index|redirect_dir|metacopy|xino|nr_inodes)=|^(discard|resv_strict|resuid=.*|resgid=.*|errors=.*|data=.*)$/;

/**
 * A mount as compared. Normalizations, each a legitimate difference between
 * the runtimes rather than a difference the container can act on:
 *  - `/`: nacelle mounts an overlay of the image's snapshots, crun binds a
 *    plain unpacked directory: only the mount flags are compared.
 *  - read-only is compared as effective (`ro` on the mount or its
 *    superblock): nacelle mounts sysfs and the masking tmpfs with MS_RDONLY,
 *    crun mounts them rw and remounts the mount read-only.
 *  - masked files: both bind a /dev/null over them; crun binds the host's
 *    (devtmpfs, `ro`), nacelle the container's own (tmpfs, as runc does).
 *  - masked directories: crun's empty tmpfs has `size=0k`, nacelle's none;
 *    both are read-only and empty (checked in the masked-paths test).
 *  - read-only paths: nacelle keeps /proc's nosuid,nodev,noexec on the
 *    read-only binds (as runc does), crun 1.8's remount drops them.
 */
function normalizeMounts(records: MountRecord[], spec: RuntimeSpec): string[] {
  const masked = new Set(spec.linux?.maskedPaths ?? []);
  const readonly = new Set(spec.linux?.readonlyPaths ?? []);
  return records.map((m) => {
    const ro = m.flags.includes('ro') || m.superOptions.includes('ro');
    let flags = m.flags.filter((f) => f !== 'ro' && f !== 'rw');
    let superOptions = m.superOptions.filter((o) => o !== 'ro' && o !== 'rw' && !HOST_SUPER_OPTIONS.test(o));
    let fstype = m.fstype;
    if (m.point === '/') {
      fstype = '(rootfs)';
      superOptions = [];
    } else if (masked.has(m.point) && m.root === '/null') {
      return `${m.point} bind-of-/dev/null`;
    } else if (masked.has(m.point)) {
      superOptions = superOptions.filter((o) => o !== 'size=0k');
    } else if (readonly.has(m.point)) {
      flags = flags.filter((f) => f !== 'nosuid' && f !== 'nodev' && f !== 'noexec');
    }
    return `${m.point} ${fstype} ${ro ? 'ro' : 'rw'},${flags.sort().join(',')} [${superOptions.sort().join(',')}]`;
  });
}

/** The capability mask /proc/self/status shows for a list of capability names. */
function capMask(names: readonly string[] | undefined): string {
  let mask = 0n;
  for (const n of names ?? []) mask |= 1n << BigInt(CAPABILITY_NAMES.indexOf(n.replace(/^CAP_/, '') as never));
  return mask.toString(16).padStart(16, '0');
}

describeCrun('Behaviour matches crun on an equivalent bundle where it applies', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  /** The image unpacked once, shared (read-only in intent) by crun bundles. */
  let rootfs: string;
  /** A static program calling keyctl(2), mounted into containers at /t. */
  let keyctlDir: string;
  let bundleCount = 0;

  beforeAll(async () => {
    dir = makeTempDir('crun');
    rt = await Runtime.open({ root: join(dir, 'root') });
    img = await busyboxImage(rt, dir);
    rootfs = join(dir, 'rootfs');
    await img.unpack(rootfs);
    keyctlDir = join(dir, 'keyctl');
    mkdirSync(keyctlDir);
    writeFileSync(
      join(keyctlDir, 'keyctl.c'),
      [
        '#include <errno.h>',
        '#include <stdio.h>',
        '#include <string.h>',
        '#include <sys/syscall.h>',
        '#include <unistd.h>',
        'int main(void) {',
        '  /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, without creating it */',
        '  long r = syscall(SYS_keyctl, 0, -3, 0, 0, 0);',
        '  if (r < 0) printf("keyctl errno=%d %s\\n", errno, strerror(errno));',
        '  else printf("keyctl ok\\n");',
        '  return 0;',
        '}',
        '',
      ].join('\n'),
    );
    execFileSync('gcc', ['-static', '-O2', '-o', join(keyctlDir, 'keyctl'), join(keyctlDir, 'keyctl.c')], { stdio: 'pipe' });
  }, 120_000);

  afterEach(async () => {
    for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
  });

  afterAll(async () => {
    if (rt) for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
    removeCrunCgroupParents();
    if (dir) removeTempDir(dir);
  });

  /** Runs `cmd` in nacelle with `options`, then in crun on the equivalent bundle. */
  async function both(cmd: string[], options: ContainerOptions = {}): Promise<{ nacelle: Outcome; crun: Outcome; spec: RuntimeSpec }> {
    let t = Date.now();
    const c = await rt.containers.run(img, { ...options, cmd });
    const nacelle: Outcome = { ...(await collect(c)), ms: Date.now() - t };
    const bundle = await crunBundle(c, img, join(dir, `bundle-${bundleCount++}`), { rootfs, stateRoot: join(dir, 'crun-state') });
    t = Date.now();
    const r: CrunResult = await runCrun(bundle, { timeoutMs: 60_000 });
    const crun: Outcome = { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, streamsEnded: true, ms: Date.now() - t };
    return { nacelle, crun, spec: bundle.spec };
  }

  const configurations: { name: string; options: (dir: string) => ContainerOptions }[] = [
    { name: 'defaults', options: () => ({}) },
    {
      name: 'user, workdir, env, ulimits, cap-add/drop, tmpfs, read-only volume, read-only rootfs',
      options: (d) => ({
        user: 'app',
        workdir: '/home/app',
        env: { FOO: 'bar baz', PATH: '/bin:/usr/bin' },
        ulimits: [
          { type: 'nofile', soft: 256, hard: 512 },
          { type: 'nproc', soft: 100, hard: 200 },
        ],
        capAdd: ['SYS_PTRACE'],
        capDrop: ['NET_RAW', 'MKNOD'],
        tmpfs: [{ container: '/scratch', size: '8m' }],
        volumes: [{ host: d, container: '/vol', readonly: true }],
        readonlyRootfs: true,
        hostname: 'probe-b',
      }),
    },
    { name: 'host network, new workdir', options: () => ({ network: 'host', workdir: '/made/here', hostname: 'probe-c' }) },
  ];

  for (const config of configurations) {
    describeCrunSections(config.name, config.options);
  }

  function describeCrunSections(name: string, optionsOf: (dir: string) => ContainerOptions): void {
    let s: { nacelle: Record<string, string>; crun: Record<string, string>; spec: RuntimeSpec; raw: { nacelle: Outcome; crun: Outcome } } | undefined;
    const probe = async () => {
      if (s) return s;
      const volume = join(dir, `vol-${bundleCount}`);
      mkdirSync(volume, { recursive: true });
      writeFileSync(join(volume, 'file'), 'volume\n');
      const options = optionsOf(volume);
      const r = await both(['sh', '-c', `MASKED="${DEFAULT_MASKED_PATHS.join(' ')}"\n${PROBE}`], options);
      s = { nacelle: sections(r.nacelle.stdout), crun: sections(r.crun.stdout), spec: r.spec, raw: r };
      return s;
    };

    it(`[${name}] both runs complete the probe`, async () => {
      const { raw, nacelle, crun } = await probe();
      expect(raw.nacelle.exitCode, raw.nacelle.stderr).toBe(0);
      expect(raw.crun.exitCode, raw.crun.stderr).toBe(0);
      expect(Object.keys(nacelle)).toContain('end');
      expect(Object.keys(crun)).toContain('end');
    }, 120_000);

    it(`[${name}] pid 1 and hostname`, async () => {
      const { nacelle, crun, spec } = await probe();
      expect(nacelle.pid).toBe('1');
      expect(nacelle.pid).toBe(crun.pid);
      expect(nacelle.hostname).toBe(`${spec.hostname}\n${spec.hostname}`);
      expect(nacelle.hostname).toBe(crun.hostname);
    }, 120_000);

    it(`[${name}] mounts (points, fstypes, flags, filesystem options)`, async () => {
      const { nacelle, crun, spec } = await probe();
      const n = normalizeMounts(parseMountinfo(nacelle.mountinfo!), spec);
      const c = normalizeMounts(parseMountinfo(crun.mountinfo!), spec);
      expect(n).toEqual(c);
    }, 120_000);

    it(`[${name}] masked paths are empty and read-only paths refuse writes`, async () => {
      const { nacelle, crun } = await probe();
      expect(nacelle.masked).toBe(crun.masked);
      for (const line of nacelle.masked!.split('\n').filter(Boolean)) expect(line).toMatch(/ (missing|dir entries=0|file bytes=0)$/);
      expect(nacelle.readonly).toBe(crun.readonly);
      expect(nacelle.readonly).toMatch(/hostname write status=[1-9]/);
      expect(nacelle.readonly).toMatch(/overcommit write status=[1-9]/);
      expect(nacelle.readonly).toMatch(/sysfs touch status=[1-9]/);
    }, 120_000);

    it(`[${name}] capabilities, no_new_privs, seccomp`, async () => {
      const { nacelle, crun, spec } = await probe();
      expect(nacelle.caps).toBe(crun.caps);
      const caps = spec.process!.capabilities!;
      const uid0 = spec.process!.user.uid === 0;
      expect(nacelle.caps).toContain(`CapBnd:\t${capMask(caps.bounding)}`);
      // A non-root user keeps only ambient capabilities across execve.
      expect(nacelle.caps).toContain(`CapEff:\t${uid0 ? capMask(caps.effective) : capMask(caps.ambient)}`);
      expect(nacelle.nnp).toBe(crun.nnp);
      expect(nacelle.nnp).toBe('NoNewPrivs:\t1');
      expect(nacelle.seccomp).toBe(crun.seccomp);
      expect(nacelle.seccomp).toMatch(/^Seccomp:\t2$/m);
    }, 120_000);

    it(`[${name}] uid, gid, groups, cwd, umask`, async () => {
      const { nacelle, crun } = await probe();
      expect(nacelle.ids).toBe(crun.ids);
      expect(nacelle.cwd).toBe(crun.cwd);
      expect(nacelle.umask).toBe(crun.umask);
    }, 120_000);

    it(`[${name}] stdout and stderr: pipes the container user owns, reopenable as /dev/stdout and /dev/stderr`, async () => {
      const { nacelle, crun } = await probe();
      // crun (like runc) fchowns the stdio pipes to the container user, so a
      // non-root process can open /dev/stdout (nginx-style logging).
      expect(crun.stdio).toMatch(/^fd 1 fifo 600 /m);
      expect(nacelle.stdio).toBe(crun.stdio);
    }, 120_000);

    it(`[${name}] environment`, async () => {
      const { nacelle, crun } = await probe();
      const norm = (e: string) => e.replace(/^HOSTNAME=.*$/m, 'HOSTNAME=<hostname>');
      expect(norm(nacelle.env!)).toBe(norm(crun.env!));
    }, 120_000);

    it(`[${name}] /dev: names, types, modes, device numbers, owners`, async () => {
      const { nacelle, crun } = await probe();
      // crun fchowns its stdin (/dev/null) to the container user, and that is
      // the container's own /dev/null node: a crun quirk (runc skips /dev/null).
      const norm = (d: string) => d.replace(/^(\/dev\/null\|.*\|)\d+:\d+$/m, '$1<owner>');
      expect(norm(nacelle.dev!)).toBe(norm(crun.dev!));
    }, 120_000);

    it(`[${name}] rlimits`, async () => {
      const { nacelle, crun, spec } = await probe();
      const nofile = spec.process!.rlimits!.find((r) => r.type === 'RLIMIT_NOFILE');
      expect(nacelle.nofile).toBe(String(nofile!.soft));
      expect(nacelle.nofile).toBe(crun.nofile);
      expect(nacelle.limits).toBe(crun.limits);
    }, 120_000);

    it(`[${name}] network interfaces, /etc/hosts and resolv.conf`, async () => {
      const { nacelle, crun } = await probe();
      expect(nacelle.net).toBe(crun.net);
      expect(nacelle.etc).toBe(crun.etc);
    }, 120_000);

    it(`[${name}] the cgroup namespace is rooted at the container's cgroup`, async () => {
      const { nacelle, crun } = await probe();
      // crun enters the container's cgroups before unsharing the cgroup
      // namespace, so every hierarchy shows '/'.
      expect(crun.cgroup!.split('\n').filter(Boolean).every((l) => l.endsWith(':/'))).toBe(true);
      expect(nacelle.cgroup).toBe(crun.cgroup);
    }, 120_000);
  }

  it('output streams end when a container exits at once with no output', async () => {
    // crun's stdio pipes close when the container exits; nacelle's
    // container.stdout/stderr must end too, or a caller reading them waits
    // forever. It is a race (fast exit, empty output), so try a few times.
    const crunRun = await both(['true']);
    expect(crunRun.crun.exitCode).toBe(0);
    let ended = 0;
    const tries = 5;
    for (let i = 0; i < tries; i++) {
      const c = await rt.containers.run(img, { cmd: ['true'] });
      const r = await collect(c, 2_000);
      expect(r.exitCode).toBe(0);
      if (r.streamsEnded) ended++;
      await c.remove({ force: true });
    }
    expect(`${ended} of ${tries} runs ended stdout and stderr`).toBe(`${tries} of ${tries} runs ended stdout and stderr`);
  }, 120_000);

  it('contains a fork bomb under pids: 20, and the container still exits', async () => {
    // A subshell forks until the pids limit refuses (busybox sh gives up at
    // the first "can't fork"); pid 1 then counts processes with builtins only
    // (a fork to run ps would itself be refused).
    const script = '(i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "procs=$n"';
    const { nacelle, crun } = await both(['sh', '-c', script], { pids: 20 });
    const count = (o: Outcome) => Number(/procs=(\d+)/.exec(o.stdout)?.[1] ?? NaN);
    expect(nacelle.exitCode, nacelle.stderr).toBe(0);
    expect(count(nacelle)).toBeGreaterThanOrEqual(10); // it did fork: the limit, not the loop, stopped it
    expect(count(nacelle)).toBeLessThanOrEqual(20);
    expect(count(nacelle)).toBe(count(crun));
    expect(crun.exitCode, crun.stderr).toBe(0);
    // The sleeps (30 s) die with pid 1: neither waited for them.
    expect(nacelle.ms).toBeLessThan(20_000);
    expect(crun.ms).toBeLessThan(20_000);
  }, 120_000);

  it("memory: '32m' and ~100 MB held gives oomKilled (and 137 from crun); 256m does not", async () => {
    // The shell keeps the whole command substitution (100 MB of 'a') in memory.
    const hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo "held ${#x}"';
    const limited = await both(['sh', '-c', hog], { memory: '32m' });
    expect(limited.nacelle.oomKilled).toBe(true);
    expect(limited.nacelle.exitCode).toBe(137);
    expect(limited.nacelle.stdout).not.toContain('held');
    expect(limited.crun.exitCode).toBe(137);
    expect(limited.crun.stdout).not.toContain('held');
    const roomy = await both(['sh', '-c', hog], { memory: '256m' });
    expect(roomy.nacelle.oomKilled).toBe(false);
    expect(roomy.nacelle.stdout).toBe('held 100000000\n');
    expect(roomy.crun.stdout).toBe(roomy.nacelle.stdout);
  }, 120_000);

  it('the default seccomp profile denies keyctl with EPERM; unconfined allows it', async () => {
    const volumes = [{ host: keyctlDir, container: '/t', readonly: true }];
    const confined = await both(['/t/keyctl'], { volumes });
    expect(confined.nacelle.stdout).toBe('keyctl errno=1 Operation not permitted\n');
    expect(confined.crun.stdout).toBe(confined.nacelle.stdout);
    const unconfined = await both(['/t/keyctl'], { volumes, seccomp: 'unconfined' });
    expect(unconfined.nacelle.stdout).toBe('keyctl ok\n');
    expect(unconfined.crun.stdout).toBe(unconfined.nacelle.stdout);
  }, 120_000);
});
