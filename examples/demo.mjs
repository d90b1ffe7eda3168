// The nacelle demo: what the foundation does today, measured on this machine.
// Run with `npm run demo` (as root: namespaces and mounts need it).
import { readFileSync } from 'node:fs';
import { spawn, probeKvm } from 'nacelle';

const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

async function capture(options) {
  const started = process.hrtime.bigint();
  const p = await spawn({ env, stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const status = await p.wait();
  await new Promise((r) => setImmediate(r));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  return { out: out.trim(), err: err.trim(), status, ms };
}

if (process.geteuid() !== 0) {
  console.error('nacelle demo: run as root (namespaces, mounts and cgroups need it).');
  process.exit(1);
}

const hostName = readFileSync('/proc/sys/kernel/hostname', 'utf8').trim();
console.log('nacelle: a process in its own namespaces, started by this Node process (no daemon)\n');

const iso = await capture({
  argv: ['sh', '-c', 'echo "pid=$$ hostname=$(cat /proc/sys/kernel/hostname) uid=$(id -u)"; ls /proc | grep -c "^[0-9]"'],
  namespaces: ['pid', 'uts', 'mount', 'ipc', 'net', 'cgroup'],
  hostname: 'demo-box',
  mounts: [{ kind: 'mount', source: 'proc', target: '/proc', fstype: 'proc', flags: ['nosuid', 'nodev', 'noexec'] }],
});
const [line, visible] = iso.out.split('\n');
console.log(`  inside : ${line}, processes visible: ${visible}`);
console.log(`  outside: pid=${process.pid} hostname=${hostName}, processes visible: ${readFileSync('/proc/loadavg', 'utf8').split(' ')[3]?.split('/')[1]}`);
console.log(`  spawn + exec + exit in 6 new namespaces: ${iso.ms.toFixed(1)} ms\n`);

const user = await capture({
  argv: ['sh', '-c', 'echo "uid inside=$(id -u)"; cat /proc/self/uid_map'],
  namespaces: ['user', 'pid', 'mount'],
  uidMap: [{ containerId: 0, hostId: 100000, size: 65536 }],
  gidMap: [{ containerId: 0, hostId: 100000, size: 65536 }],
});
console.log(`  user namespace: ${user.out.replace(/\s+/g, ' ')} (root inside is uid 100000 outside)\n`);

const failed = await spawn({ argv: ['/no/such/program'], env }).catch((e) => e);
console.log(`  errors name the step and errno: ${failed.name} code=${failed.code} step=${failed.step} path=${failed.path}\n`);

const kvm = probeKvm();
console.log(
  kvm.available
    ? `  KVM: /dev/kvm API ${kvm.apiVersion}, up to ${kvm.maxVcpus} vCPUs, ${kvm.hardware ? 'hardware virtualization' : 'no VT-x/AMD-V (PVM or emulation)'}`
    : `  KVM: not usable here (${kvm.reason}); modules: ${Object.entries(kvm.modules).filter(([, v]) => v).map(([k]) => k).join(', ') || 'none'}`,
);
