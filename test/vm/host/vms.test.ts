/**
 * rt.vms through the qemu backend (TCG on hosts without /dev/kvm): the same
 * busybox image as a container and as a VM gives the same output and exit
 * codes; bad input is refused before anything boots; a guest that never
 * reports is killed with its console tail; nothing is left behind.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError, SpawnError, UnsupportedError } from '../../../lib/errors';
import { writeBusyboxRootfs } from '../../../lib/image/busybox';
import { Runtime } from '../../../lib/runtime';
import { chooseBackend, hardwareKvmMissing, monitorAvailability } from '../../../lib/vm/backend';
import { probeKvm } from '../../../lib/vm/kvm';
import type { VmRunOptions } from '../../../lib/vm/vms';
import { VmFailedError, VmTimeoutError, type VmWorkload } from '../../../lib/vm/workload';
import { describeRoot } from '../../helpers/gate';
import { eventually } from '../../helpers/proc';
import { vmSuite } from './suite';

async function text(s: Readable): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

/** qemu processes whose parent is this process. */
function ourQemus(): string[] {
  const ps = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' }).stdout;
  return ps.split('\n').filter((l) => l.includes('qemu-system'));
}

const VM_TEST_MS = 60_000;

/** The first chunk of stdout; rejects when the VM ends (or fails) before writing any. */
function firstOutput(vm: VmWorkload): Promise<string> {
  return new Promise((resolve, reject) => {
    vm.stdout.once('data', (c: Buffer) => resolve(String(c)));
    vm.stdout.once('end', () => reject(new Error('the VM ended without output')));
    vm.wait().then(() => reject(new Error('the VM ended without output')), reject);
  });
}

describeRoot('rt.vms (qemu backend)', () => {
  const s = vmSuite('vms');
  // (where auto would pick the built-in monitor, this suite asks for qemu: test/vm/host/vms-kvm.test.ts covers the monitor)
  let kernelArgs: Pick<VmRunOptions, 'kernel' | 'kernelModules' | 'backend'> = {};
  const vms: VmWorkload[] = [];

  beforeAll(() => {
    kernelArgs = { ...s.kernelArgs, ...(chooseBackend('auto').backend === 'qemu' ? {} : { backend: 'qemu' as const }) };
  });

  afterEach(async () => {
    for (const vm of vms.splice(0)) await vm.remove({ force: true }).catch(() => undefined);
    for (const c of await s.rt.containers.list({ all: true })) await c.remove({ force: true });
  });

  afterAll(() => {
    if (s.dir) expect(ourQemus()).toEqual([]);
  });

  async function inVm(cmd: string[], options: VmRunOptions = {}) {
    const vm = await s.rt.vms.run(s.img, { cmd, ...kernelArgs, ...options });
    vms.push(vm);
    const [stdout, stderr, exit] = await Promise.all([text(vm.stdout), text(vm.stderr), vm.wait()]);
    return { vm, stdout, stderr, exit };
  }

  async function inContainer(cmd: string[]) {
    const c = await s.rt.containers.run(s.img, { cmd });
    const [stdout, stderr, exit] = await Promise.all([text(c.stdout), text(c.stderr), c.wait()]);
    return { stdout, stderr, exit };
  }

  it('picks qemu+tcg for auto without hardware KVM and says why; the built-in monitor where /dev/kvm is usable', () => {
    const probe = probeKvm();
    const auto = chooseBackend('auto');
    const monitor = monitorAvailability().available;
    if (hardwareKvmMissing(probe) !== null) {
      expect(auto).toMatchObject({ backend: 'qemu', accel: 'tcg', label: 'qemu+tcg' });
      expect(auto.reason).toMatch(/^auto: no hardware KVM/);
      if (!existsSync('/dev/kvm')) expect(auto.reason).toContain('/dev/kvm missing');
      if (probe.available && probe.modules.kvmPvm) expect(auto.reason).toContain('PVM');
    } else {
      expect(auto.backend).toBe(monitor ? 'kvm' : 'qemu');
    }
    if (monitor && probe.available) {
      expect(chooseBackend('kvm')).toEqual({ backend: 'kvm', reason: 'asked for the built-in KVM monitor', label: 'kvm monitor' });
    } else {
      expect(() => chooseBackend('kvm')).toThrow(UnsupportedError);
    }
  });

  it(
    'runs echo with the same output and exit code as a container, and reports its backend and memory',
    async () => {
      const cmd = ['echo', 'hello from', 'busybox'];
      const vm = await inVm(cmd);
      const ctr = await inContainer(cmd);
      expect(vm.stdout).toBe('hello from busybox\n');
      expect(vm.stdout).toBe(ctr.stdout);
      expect(vm.stderr).toBe(ctr.stderr);
      expect(vm.exit).toEqual({ exitCode: 0, signal: null, reason: 'exited' });
      expect(ctr.exit.exitCode).toBe(0);
      expect(vm.vm.backend).toBe('qemu');
      expect(vm.vm.backendReason).toMatch(kernelArgs.backend ? /^asked for qemu/ : /^auto: /);
      const stats = await vm.vm.stats();
      expect(stats.memoryMiB).toBe(256);
      expect(stats.memory?.peakRssBytes).toBeGreaterThan(10 * 1024 * 1024);
      expect(stats.disk.initramfsBytes).toBeGreaterThan(100 * 1024);
      expect(stats.timings.readyMs).toBeGreaterThan(0);
      expect(stats.timings.firstOutputMs).toBeGreaterThanOrEqual(stats.timings.readyMs!);
      expect(existsSync(vm.vm.dir)).toBe(false); // autoRemove
    },
    VM_TEST_MS,
  );

  it(
    "runs sh -c 'exit 3' with exit code 3, as a container does",
    async () => {
      const cmd = ['sh', '-c', 'echo out; echo err >&2; exit 3'];
      const vm = await inVm(cmd);
      const ctr = await inContainer(cmd);
      expect(vm.exit).toEqual({ exitCode: 3, signal: null, reason: 'exited' });
      expect(ctr.exit.exitCode).toBe(3);
      expect([vm.stdout, vm.stderr]).toEqual(['out\n', 'err\n']);
      expect([vm.stdout, vm.stderr]).toEqual([ctr.stdout, ctr.stderr]);
    },
    VM_TEST_MS,
  );

  it(
    "reads a file from the image, as the image's user, in its workdir",
    async () => {
      const cmd = ['sh', '-c', 'cat /etc/passwd; id -u; pwd; echo $HOME $PATH'];
      const options = { user: 'app', workdir: '/tmp' } as const;
      const vm = await inVm(cmd, options);
      const c = await s.rt.containers.run(s.img, { cmd, ...options });
      const [cout, cexit] = await Promise.all([text(c.stdout), c.wait()]);
      expect(vm.exit.exitCode).toBe(0);
      expect(cexit.exitCode).toBe(0);
      expect(vm.stdout).toContain('app:x:1000:1000:app:/home/app:/bin/sh\n');
      expect(vm.stdout).toContain('\n1000\n/tmp\n/home/app /bin\n');
      expect(vm.stdout).toBe(cout);
    },
    VM_TEST_MS,
  );

  it(
    "boots from an erofs disk (rootfs: 'disk'), shared by every VM of the image; a missing workdir is made, as in a container; prune drops the boot files of removed images",
    async () => {
      const cmd = ['sh', '-c', 'cat /etc/passwd; pwd; grep -c " / overlay " /proc/mounts; echo ok > /etc/x && cat /etc/x'];
      const vm = await inVm(cmd, { rootfs: 'disk', workdir: '/srv/new' });
      expect(vm.exit).toEqual({ exitCode: 0, signal: null, reason: 'exited' });
      const c = await s.rt.containers.run(s.img, { cmd: ['sh', '-c', 'cat /etc/passwd; pwd'], workdir: '/srv/new' });
      const [cout, cexit] = await Promise.all([text(c.stdout), c.wait()]);
      expect(cexit.exitCode).toBe(0);
      expect(vm.stdout).toBe(`${cout}1\nok\n`); // the same files and workdir; the root is the erofs disk; /tmp is writable
      const disks = readdirSync(join(s.dir, 'root', 'vms', 'disk-cache'));
      expect(disks).toEqual([`${s.img.digest.slice(7)}.erofs`]);
      // the disk is the VM's cost beside the per-run initramfs, which now holds no rootfs
      expect((await vm.vm.stats()).disk.initramfsBytes).toBeLessThan(2 * 1024 * 1024);
      // prune keeps the boot files of images in the store, and drops those of a removed image
      const other = await s.img.withConfig({ Labels: { v: '2' } }, { createdBy: 'test' });
      const vm2 = await s.rt.vms.run(other, { cmd: ['true'], rootfs: 'disk', ...kernelArgs });
      vms.push(vm2);
      expect((await vm2.wait()).exitCode).toBe(0);
      expect(readdirSync(join(s.dir, 'root', 'vms', 'disk-cache')).sort()).toEqual([...disks, `${other.digest.slice(7)}.erofs`].sort());
      await s.rt.images.remove(other.digest);
      const pruned = await s.rt.prune();
      expect(pruned.vmCacheBytes).toBeGreaterThan(0);
      expect(readdirSync(join(s.dir, 'root', 'vms', 'disk-cache'))).toEqual(disks);
    },
    VM_TEST_MS * 2,
  );

  it(
    'forwards stdin, and kill() ends a running VM with nothing left',
    async () => {
      const vm = await s.rt.vms.run(s.img, { cmd: ['sh', '-c', 'read line; echo "got $line"; exec sleep 1000'], stdin: true, ...kernelArgs });
      vms.push(vm);
      vm.stdin!.write('hello vm\n');
      const got = await firstOutput(vm);
      expect(got).toBe('got hello vm\n');
      expect(vm.status).toBe('running');
      const pid = vm.pid!;
      await vm.kill();
      expect(await vm.wait()).toEqual({ exitCode: 137, signal: 'SIGKILL', reason: 'killed' });
      expect(existsSync(`/proc/${pid}`)).toBe(false);
      expect(existsSync(vm.dir)).toBe(false);
      expect(ourQemus()).toEqual([]);
    },
    VM_TEST_MS,
  );

  it(
    'pause() freezes the whole VM and resume() lets it run on; stop() of a paused VM thaws it first, as for a container',
    async () => {
      const vm = await s.rt.vms.run(s.img, { cmd: ['sh', '-c', 'trap "echo bye; exit 4" TERM; i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done'], ...kernelArgs });
      vms.push(vm);
      let out = '';
      vm.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const lines = (): number => out.split('\n').filter(Boolean).length;
      await eventually(() => lines() >= 3, 20_000, 'the guest to count');
      await vm.pause();
      expect(vm.paused).toBe(true);
      await expect(vm.pause()).rejects.toThrow(/already paused/);
      await new Promise((r) => setTimeout(r, 300)); // what was on its way arrives
      const frozen = lines();
      await new Promise((r) => setTimeout(r, 700));
      expect(lines()).toBe(frozen);
      await vm.resume();
      expect(vm.paused).toBe(false);
      await eventually(() => lines() >= frozen + 3, 20_000, 'the guest to count on');
      await vm.pause();
      expect(await vm.stop({ timeout: 10 })).toEqual({ exitCode: 4, signal: null, reason: 'exited' });
      expect(out).toMatch(/bye\n$/);
      await expect(vm.resume()).rejects.toThrow(/not paused/);
    },
    VM_TEST_MS,
  );

  it(
    "stop() and kill(signal) reach the guest's command as they reach a container's: its handlers run, its exit is reported",
    async () => {
      const cmd = ['sh', '-c', 'trap "echo bye; exit 3" TERM; trap "echo usr1" USR1; echo up; while :; do sleep 0.1; done'];
      const vm = await s.rt.vms.run(s.img, { cmd, ...kernelArgs });
      vms.push(vm);
      const out = text(vm.stdout);
      expect(await firstOutput(vm)).toBe('up\n');
      await vm.kill('SIGUSR1');
      await new Promise((r) => setTimeout(r, 500));
      expect(await vm.stop({ timeout: 10 })).toEqual({ exitCode: 3, signal: null, reason: 'exited' });
      expect(await out).toBe('up\nusr1\nbye\n');
      const c = await s.rt.containers.run(s.img, { cmd });
      const cout = text(c.stdout);
      await new Promise((r) => setTimeout(r, 300));
      await c.kill('SIGUSR1');
      await new Promise((r) => setTimeout(r, 300));
      expect(await c.stop({ timeout: 10 })).toMatchObject({ exitCode: 3 });
      expect(await cout).toBe('up\nusr1\nbye\n');
      await expect(vm.kill()).rejects.toThrow(/has exited/);
      expect(existsSync(vm.dir)).toBe(false);
    },
    VM_TEST_MS,
  );

  it(
    'stop() of a command that ignores SIGTERM ends the VM after the timeout',
    async () => {
      const vm = await s.rt.vms.run(s.img, { cmd: ['sh', '-c', 'trap "" TERM; echo up; while :; do sleep 0.1; done'], ...kernelArgs });
      vms.push(vm);
      expect(await firstOutput(vm)).toBe('up\n');
      const t = Date.now();
      expect(await vm.stop({ timeout: 1 })).toEqual({ exitCode: 137, signal: 'SIGKILL', reason: 'stopped' });
      expect(Date.now() - t).toBeGreaterThanOrEqual(900);
    },
    VM_TEST_MS,
  );

  it(
    'reports a command the guest cannot exec (ERROR frame) with its exit code and message',
    async () => {
      // Executable bits but no ELF header and no #!: execve fails with ENOEXEC inside the guest.
      const rootfs = join(s.dir, 'noexec-rootfs');
      mkdirSync(join(rootfs, 'bin'), { recursive: true });
      writeBusyboxRootfs(rootfs);
      writeFileSync(join(rootfs, 'bin', 'fake'), 'not a program\n', { mode: 0o755 });
      const bad = await s.rt.images.fromDirectory(rootfs, { tag: 'noexec:1', config: { Cmd: ['/bin/fake'], Env: ['PATH=/bin'] } });
      const vm = await s.rt.vms.run(bad, kernelArgs);
      vms.push(vm);
      const [stdout, exit] = await Promise.all([text(vm.stdout), vm.wait()]);
      expect(stdout).toBe('');
      expect(exit.reason).toBe('exited');
      expect(exit.exitCode).toBe(126);
      expect(exit.error).toMatch(/\/bin\/fake.*ENOEXEC/);
    },
    VM_TEST_MS,
  );

  it(
    'kills a guest that never reports, with the console tail in the error, and leaves nothing',
    async () => {
      // The kernel runs a shell as PID 1 instead of nacelle's init: it writes
      // to the console and sleeps; nothing ever reports.
      const vm = await s.rt.vms.run(s.img, {
        cmd: ['true'],
        cmdline: 'rdinit=/bin/sh -- -c "echo this guest never reports; exec sleep 1000"',
        bootTimeoutMs: 8_000,
        ...kernelArgs,
      });
      vms.push(vm);
      const err = await vm.wait().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmTimeoutError);
      expect((err as VmTimeoutError).code).toBe('ETIMEDOUT');
      expect((err as VmTimeoutError).consoleTail).toContain('this guest never reports');
      expect((err as Error).message).toContain('did not report ready within 8000 ms');
      expect(existsSync(vm.dir)).toBe(false);
      expect(ourQemus()).toEqual([]);
    },
    VM_TEST_MS,
  );

  it(
    'reports a VM that ends without an exit status (qemu refusing to start) with its messages',
    async () => {
      const vm = await s.rt.vms.run(s.img, { cmd: ['true'], memoryMiB: 1024 * 1024, ...kernelArgs });
      vms.push(vm);
      const err = await vm.wait().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmFailedError);
      expect((err as Error).message).toMatch(/qemu-system-x86_64: .*memory|cannot set up guest memory/i);
      expect(existsSync(vm.dir)).toBe(false);
    },
    VM_TEST_MS,
  );

  it(
    'takes the VM down with the Node process that ran it (exit or SIGKILL), and prune removes what a killed one left',
    async () => {
      for (const mode of ['exit', 'kill'] as const) {
        const childDir = join(s.dir, `orphan-${mode}`);
        mkdirSync(childDir);
        const child = spawnSync(join(__dirname, '../../../node_modules/.bin/vite-node'), [join(__dirname, 'fixtures', 'orphan.ts'), childDir, mode], {
          encoding: 'utf8',
          timeout: 40_000,
          env: { ...process.env, ...(kernelArgs.kernel ? { NACELLE_KERNEL: kernelArgs.kernel } : {}), ...(kernelArgs.kernelModules ? { NACELLE_KERNEL_MODULES: kernelArgs.kernelModules } : {}) },
        });
        const line = child.stdout.split('\n').find((l) => l.startsWith('{'));
        expect(line, `${mode}: ${child.stderr}`).toBeDefined();
        const { pid, dir: vmDir } = JSON.parse(line!) as { pid: number; dir: string };
        // PR_SET_PDEATHSIG: qemu gets SIGKILL as its parent dies (reaped by init just after).
        const deadline = Date.now() + 5_000;
        while (existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) {
          if (Date.now() > deadline) throw new Error(`qemu ${pid} outlived its parent (${mode})`);
          await new Promise((r) => setTimeout(r, 50));
        }
        if (mode === 'exit') expect(existsSync(vmDir)).toBe(false); // the exit hook removed it
        else {
          expect(existsSync(vmDir)).toBe(true); // nothing runs in a SIGKILLed process
          const childRt = await Runtime.open({ root: join(childDir, 'root') });
          expect(await childRt.vms.prune()).toEqual([vmDir.split('/').pop()]);
          expect(existsSync(vmDir)).toBe(false);
        }
      }
    },
    VM_TEST_MS + 30_000,
  );

  describe('bad input, refused before anything boots', () => {
    it('an image without a command, as a container refuses it', async () => {
      const rootfs = join(s.dir, 'nocmd-rootfs');
      mkdirSync(rootfs, { recursive: true });
      writeBusyboxRootfs(rootfs);
      const nocmd = await s.rt.images.fromDirectory(rootfs, { tag: 'nocmd:1', config: { Env: ['PATH=/bin'] } });
      const vmErr = await s.rt.vms.run(nocmd, kernelArgs).catch((e: unknown) => e);
      const ctrErr = await s.rt.containers.run(nocmd, {}).catch((e: unknown) => e);
      expect(vmErr).toBeInstanceOf(InvalidArgumentError);
      expect(vmErr).toMatchObject({ code: 'ERR_NO_COMMAND' });
      expect((vmErr as Error).message).toBe((ctrErr as Error).message);
    });

    it('a command missing in the image (ENOENT, as execve in a container), or not executable (EACCES)', async () => {
      for (const cmd of [['/bin/no-such-program'], ['no-such-program'], ['/etc/passwd']]) {
        const vmErr = await s.rt.vms.run(s.img, { cmd, ...kernelArgs }).catch((e: unknown) => e);
        const ctrErr = await s.rt.containers.run(s.img, { cmd }).catch((e: unknown) => e);
        expect(vmErr).toBeInstanceOf(SpawnError);
        expect(ctrErr).toBeInstanceOf(SpawnError);
        expect(vmErr).toMatchObject({ code: (ctrErr as SpawnError).code, step: 'execve', path: cmd[0] });
        expect((vmErr as Error).message).toContain(`cannot run '${cmd[0]}'`);
      }
    });

    it('a kernel that is missing or not a kernel', async () => {
      const missing = await s.rt.vms.run(s.img, { cmd: ['true'], kernel: join(s.dir, 'no-such-bzImage') }).catch((e: unknown) => e);
      expect(missing).toMatchObject({ message: expect.stringContaining(join(s.dir, 'no-such-bzImage')) });
      expect((missing as { code: string }).code).toMatch(/ENOENT|ERR_NOT_FOUND|ERR_NO_KERNEL/);
      const fake = join(s.dir, 'fake-bzImage');
      writeFileSync(fake, 'not a kernel\n'.repeat(100));
      const notKernel = await s.rt.vms.run(s.img, { cmd: ['true'], kernel: fake }).catch((e: unknown) => e);
      expect(notKernel).toBeInstanceOf(InvalidArgumentError);
      expect((notKernel as Error).message).toContain(fake);
    });

    it('an unknown backend, and bad sizes', async () => {
      await expect(s.rt.vms.run(s.img, { cmd: ['true'], backend: 'bochs' as never })).rejects.toBeInstanceOf(UnsupportedError);
      await expect(s.rt.vms.run(s.img, { cmd: ['true'], cpus: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.rt.vms.run(s.img, { cmd: ['true'], memoryMiB: 1.5 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.rt.vms.run('no-such-image:1', { cmd: ['true'] })).rejects.toBeInstanceOf(NotFoundError);
    });

    afterAll(() => {
      const vmsDir = join(s.dir, 'root', 'vms');
      const left = existsSync(vmsDir) ? readdirSync(vmsDir).filter((n) => /^[0-9a-f]{64}$/.test(n)) : [];
      expect(left).toEqual([]);
    });
  });
});
