// nacelle demo: containers run by this Node process itself — no daemon.
// `npm run demo` (as root). Builds a busybox image from the host's busybox-static,
// then shows isolation, a memory limit, diff and commit, and runs the same image as a
// container and as a VM side by side (examples/lib/side-by-side.mjs).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';
import { guestKernel, printTable, sideBySide } from './lib/side-by-side.mjs';

if (process.geteuid() !== 0) {
  console.error('nacelle demo: run as root (namespaces, mounts and cgroups need it).');
  process.exit(1);
}
// The demo's peers from Debian: busybox for the image, qemu for the VM side.
const needed = [
  ['/bin/busybox', 'busybox-static'],
  ['/usr/bin/qemu-system-x86_64', 'qemu-system-x86'],
].filter(([path]) => !existsSync(path)).map(([, pkg]) => pkg);
if (needed.length) {
  console.log(`installing ${needed.join(', ')} from Debian ...`);
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...needed], { stdio: 'inherit' });
}

const work = mkdtempSync(join(tmpdir(), 'nacelle-demo-'));
const rt = await Runtime.open({ root: join(work, 'root') });
const say = (...a) => console.log(...a);
const text = async (s) => {
  let out = '';
  for await (const c of s) out += c;
  return out.trim();
};
async function run(image, options) {
  const started = process.hrtime.bigint();
  const c = await rt.containers.run(image, options);
  const [stdout, exit] = await Promise.all([text(c.stdout), c.wait()]);
  return { c, stdout, exit, ms: Number(process.hrtime.bigint() - started) / 1e6 };
}

try {
  writeBusyboxRootfs(join(work, 'rootfs'));
  const img = await rt.images.fromDirectory(join(work, 'rootfs'), { tag: 'busybox:demo', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  say(`image   busybox:demo  ${img.digest.slice(0, 19)}…  ${(img.size / 1e6).toFixed(1)} MB, ${img.layers.length} layer`);

  const iso = await run(img, { cmd: ['sh', '-c', 'echo "$$ $(hostname) $(ls /proc | grep -c "^[0-9]")"'], hostname: 'demo-box' });
  const [pid, host, procs] = iso.stdout.split(' ');
  say(`\n1. isolation (started, ran and exited in ${iso.ms.toFixed(0)} ms)`);
  say(`   inside:  pid ${pid}, hostname ${host}, ${procs} processes visible`);
  say(`   outside: pid ${process.pid}, hostname ${readFileSync('/proc/sys/kernel/hostname', 'utf8').trim()}, ${execFileSync('sh', ['-c', 'ls /proc | grep -c "^[0-9]"'], { encoding: 'utf8' }).trim()} processes`);

  const oom = await run(img, { cmd: ['tail', '/dev/zero'], memory: '32m' });
  say('\n2. a memory limit, enforced by the kernel (cgroup, 32 MiB; the command reads forever into memory)');
  say(`   exit code ${oom.exit.exitCode}, signal ${oom.exit.signal}, oomKilled: ${oom.exit.oomKilled}`);

  const changer = await run(img, { cmd: ['sh', '-c', 'echo "hello from a container" > /etc/motd; rm /bin/vi'] });
  const changes = await changer.c.diff();
  say('\n3. a container changed its filesystem; diff reports it (like `docker diff`)');
  for (const ch of changes) say(`   ${ch.kind} ${ch.path}`);

  const committed = await changer.c.commit({ tag: 'busybox:motd', message: 'add a motd' });
  const next = await run('busybox:motd', { cmd: ['cat', '/etc/motd'] });
  say(`\n4. commit → busybox:motd (${committed.layers.length} layers, the base layer shared); a new container sees:`);
  say(`   "${next.stdout}"`);

  // The same image as a container and as a VM (qemu here; the built-in KVM monitor where there is one).
  say('\n5. the same busybox image as a container and as a VM, measured side by side now');
  try {
    const kernel = await guestKernel((m) => say(`   ${m}`));
    const vmOptions = { kernel: kernel.kernel, ...(kernel.modulesDir ? { kernelModules: kernel.modulesDir } : {}) };
    printTable(await sideBySide(rt, img, { n: 3, vmOptions }), { indent: '   ' });
  } catch (err) {
    say(`   the VM side could not run: ${err.message}`);
    process.exitCode = 1;
  }
} finally {
  for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
  for (const vm of rt.vms.running()) await vm.remove({ force: true });
  rmSync(work, { recursive: true, force: true });
}
