/**
 * The compiled default profile installed for real (spawn → seccomp(2) before
 * execve), probed with perl's syscall(). Every denial is checked against a
 * control run without the filter, so an EPERM can only come from seccomp.
 */
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { beforeAll, expect, it } from 'vitest';
import { DOCKER_DEFAULT_CAPABILITIES, compileSeccomp, defaultSeccompProfile, syscallNumber } from '../../../lib/container/seccomp';
import { type SpawnOptions, spawn } from '../../../lib/process/spawn';
import { describeRoot } from '../../helpers/gate';

const PATH = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
const EPERM = 1;
const ENOSYS = 38;
const SIGCHLD = 17;
const CLONE_NEWUSER = 0x10000000;
const WITH_SYS_ADMIN = [...DOCKER_DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN'];

async function readAll(stream: Readable | null): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function run(options: SpawnOptions) {
  const p = await spawn({ env: PATH, stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const [stdout, stderr, status] = await Promise.all([readAll(p.stdout), readAll(p.stderr), p.wait()]);
  return { stdout, stderr, status };
}

const nr = (name: string) => {
  const n = syscallNumber(name);
  if (n === undefined) throw new Error(`no ${name} here`);
  return n;
};

/** Probes, in order (unshare last: it moves perl into a new user namespace when it works). */
function probes(): [string, number, ...number[]][] {
  const list: [string, number, ...number[]][] = [
    ['getpid', nr('getpid')],
    ['keyctl', nr('keyctl'), 0, 0, 0],
    ['add_key', nr('add_key'), 0, 0, 0, 0, 0],
    ['request_key', nr('request_key'), 0, 0, 0, 0],
    ['mount', nr('mount'), 0, 0, 0, 0, 0],
    ['kexec_load', nr('kexec_load'), 0, 0, 0, 0],
    ['socket_vsock', nr('socket'), 40, 1, 0],
    ['personality_query', nr('personality'), 0xffffffff],
    ['personality_norandom', nr('personality'), 0x0040000],
    ['clone_newuser', nr('clone'), CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
    ['clone_plain', nr('clone'), SIGCHLD, 0, 0, 0, 0],
    ['clone3', nr('clone3'), 0, 0],
    ['unshare_newuser', nr('unshare'), CLONE_NEWUSER],
  ];
  if (process.arch === 'x64') list.splice(1, 0, ['x32_getpid', 0x40000000 | nr('getpid')]);
  return list;
}

/** Runs every probe in one perl; returns name → [return value, errno]. */
async function probe(options: Partial<SpawnOptions>): Promise<Record<string, [number, number]>> {
  const cases = probes()
    .map(([name, ...args]) => `["${name}", ${args.join(', ')}]`)
    .join(', ');
  const script = `
    use POSIX ();
    for my $c (${cases}) {
      my ($name, $nr, @a) = @$c;
      $! = 0;
      my $r = syscall($nr, @a);  # not syscall(@a): its first argument is in scalar context
      my $e = $r == -1 ? $! + 0 : 0;
      POSIX::_exit(0) if $r == 0 && $name =~ /^clone/;  # the child of a clone that worked
      waitpid($r, 0) if $r > 0 && $name =~ /^clone/;
      print "$name $r $e\\n";
    }`;
  const r = await run({ argv: ['perl', '-e', script], ...options });
  expect(r.stderr).toBe('');
  expect(r.status.exitCode).toBe(0);
  return Object.fromEntries(
    r.stdout
      .trim()
      .split('\n')
      .map((line) => {
        const [name, ret, errno] = line.split(' ');
        return [name!, [Number(ret), Number(errno)] as [number, number]];
      }),
  );
}

describeRoot('seccomp: the default profile in the kernel', () => {
  let defaultFilter: Buffer;
  let sysAdminFilter: Buffer;
  const timings: string[] = [];

  beforeAll(() => {
    let t = performance.now();
    defaultFilter = compileSeccomp(defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES }));
    timings.push(`first build+compile ${(performance.now() - t).toFixed(2)} ms`);
    const n = 1000;
    t = performance.now();
    for (let i = 0; i < n; i++) compileSeccomp(defaultSeccompProfile({ capabilities: DOCKER_DEFAULT_CAPABILITIES }));
    timings.push(`cached ${(((performance.now() - t) / n) * 1000).toFixed(1)} µs per container start`);
    t = performance.now();
    sysAdminFilter = compileSeccomp(defaultSeccompProfile({ capabilities: WITH_SYS_ADMIN }));
    timings.push(`+SYS_ADMIN variant ${(performance.now() - t).toFixed(2)} ms`);
    console.log(`[seccomp] compile times (${process.arch}, ${defaultFilter.length / 8} instructions): ${timings.join(', ')}`);
  });

  it('runs ordinary programs under the filter (Seccomp: 2), forks, and installs it with no_new_privs', async () => {
    const r = await run({
      argv: ['sh', '-c', 'ls / >/dev/null; true & wait; echo forked; cat /proc/self/status | grep -E "^(Seccomp|NoNewPrivs):"'],
      seccomp: defaultFilter,
    });
    expect(r.stderr).toBe('');
    expect(r.status.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^forked$/m);
    expect(r.stdout).toMatch(/^Seccomp:\s+2$/m);
    expect(r.stdout).toMatch(/^NoNewPrivs:\s+1$/m);
  });

  it('denies keyctl, add_key, request_key, mount, kexec_load, AF_VSOCK, namespace clone and unshare with EPERM, even to root', async () => {
    const control = await probe({});
    const filtered = await probe({ seccomp: defaultFilter });
    const denied = ['keyctl', 'add_key', 'request_key', 'mount', 'kexec_load', 'socket_vsock', 'personality_norandom', 'clone_newuser', 'unshare_newuser'];
    for (const name of denied) expect([name, filtered[name]]).toEqual([name, [-1, EPERM]]);
    // Without the filter root gets past seccomp's EPERM on each (kexec_load aside: the kernel may refuse it anyway).
    for (const name of denied.filter((n) => n !== 'kexec_load')) expect([name, control[name]]).not.toEqual([name, [-1, EPERM]]);
    expect(control.unshare_newuser).toEqual([0, 0]);
    expect(control.clone_newuser![0]).toBeGreaterThan(0);
    // Allowed: plain clone (fork), personality queries, getpid; clone3 says ENOSYS so libc falls back to clone.
    expect(filtered.clone_plain![0]).toBeGreaterThan(0);
    expect(filtered.personality_query![1]).toBe(0);
    expect(filtered.getpid![0]).toBeGreaterThan(1);
    expect(filtered.clone3).toEqual([-1, ENOSYS]);
    expect(control.clone3![1]).not.toBe(ENOSYS);
    if (process.arch === 'x64') expect(filtered.x32_getpid).toEqual([-1, EPERM]); // the default action, not the kernel's ENOSYS
  });

  it('lets a container with the default capabilities run, but not create a user namespace', async () => {
    const caps = { bounding: DOCKER_DEFAULT_CAPABILITIES, effective: DOCKER_DEFAULT_CAPABILITIES, permitted: DOCKER_DEFAULT_CAPABILITIES };
    const control = await run({ argv: ['unshare', '-U', 'true'], capabilities: caps });
    expect(control.status.exitCode).toBe(0);
    const r = await run({ argv: ['unshare', '-U', 'true'], capabilities: caps, seccomp: defaultFilter });
    expect(r.status.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/Operation not permitted/);
    const chroot = await run({ argv: ['sh', '-c', 'chroot / true && echo chroot-ok'], capabilities: caps, seccomp: defaultFilter });
    expect(chroot.stdout).toBe('chroot-ok\n'); // CAP_SYS_CHROOT is among the defaults
  });

  it('with CAP_SYS_ADMIN, the profile for it lets unshare, mount and clone3 through to the kernel', async () => {
    const caps = { bounding: WITH_SYS_ADMIN, effective: WITH_SYS_ADMIN, permitted: WITH_SYS_ADMIN };
    const r = await run({ argv: ['unshare', '-U', 'true'], capabilities: caps, seccomp: sysAdminFilter });
    expect(r.stderr).toBe('');
    expect(r.status.exitCode).toBe(0);
    const p = await probe({ capabilities: caps, seccomp: sysAdminFilter });
    expect(p.mount![1]).not.toBe(EPERM); // EFAULT: the kernel read our NULL target
    expect(p.clone3![1]).not.toBe(ENOSYS);
    expect(p.clone_newuser![0]).toBeGreaterThan(0);
    expect(p.unshare_newuser).toEqual([0, 0]);
    for (const name of ['keyctl', 'add_key', 'kexec_load']) expect([name, p[name]]).toEqual([name, [-1, EPERM]]);
  });
});
