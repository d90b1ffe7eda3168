// bench/vm: the built-in KVM monitor (VirtualMachine) with nacelle's freestanding test guest
// (test/vm/kvm/guest), against qemu-system-x86_64 -M microvm running the same image, in one run:
//  1. create → first serial byte (`nacelle.test=hello`), ELF via PVH and bzImage: ours is
//     VirtualMachine.create + start until the console's first 'data'; qemu's is spawn until its
//     first stdout byte (then it is killed). qemu runs on KVM when it can boot the guest there,
//     otherwise on TCG (the accel is printed). qemu cannot boot this bzImage (it has only the
//     64-bit boot entry), so that row has no peer.
//  2. the monitor's RSS beyond guest memory (target <= 5 MiB), measured in a fresh child Node
//     process: VmRSS growth while a `count` guest (64 MiB) runs, minus the guest memory that is
//     resident (vm.stats().residentBytes). qemu's figure: VmRSS minus the Rss of its guest RAM
//     mapping (/proc/<pid>/smaps), same guest.
//  3. VirtualMachine.restore(snapshot) → vCPUs running the restored state (target <= 10 ms); first console byte too.
//     No peer: qemu's savevm/loadvm is not comparable.
// Needs root and /dev/kvm; qemu is optional. Everything is bounded in time; VMs and qemu
// processes are killed and the temp dir removed, also on failure or Ctrl-C.
//   BENCH_VM_N=20 node bench/vm.mjs
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VirtualMachine, probeKvm } from '../dist/index.js';

const N = Number(process.env.BENCH_VM_N ?? 20);
const WARMUP = 2;
const QEMU = process.env.NACELLE_QEMU ?? '/usr/bin/qemu-system-x86_64';
const now = () => Number(process.hrtime.bigint()) / 1e6;

function vmRssKiB(pid = 'self') {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/** Counts the guest's `tick N` lines on a console stream; resolves once `count` have been seen. */
function ticks(stream, count) {
  let seen = 0;
  let tail = '';
  return new Promise((resolve) => {
    const onData = (chunk) => {
      const text = tail + chunk.toString('latin1');
      seen += text.split('tick ').length - 1;
      tail = text.slice(-4); // a 'tick ' split across chunks is counted once, with the next chunk
      if (seen >= count) {
        resolve(seen);
        stream.off('data', onData);
        stream.on('data', () => {}); // keep draining
      }
    };
    stream.on('data', onData);
  });
}

function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---- child mode: the RSS measurement in a process that has done nothing else ----------------------

if (process.argv[2] === '--rss-child') {
  const kernel = process.argv[3];
  const gc = globalThis.gc ?? (() => {});
  gc();
  const rssStart = vmRssKiB();
  probeKvm(); // loads the addon (counted in the overhead, reported on its own too)
  gc();
  const rssAddon = vmRssKiB();
  const vm = await VirtualMachine.create({ kernel, cmdline: 'nacelle.test=count', memoryMiB: 64 });
  const watchdog = setTimeout(() => vm.kill(), 20_000);
  const seen = ticks(vm.console, 5);
  vm.start();
  await within(seen, 10_000, 'count guest (rss child)');
  await new Promise((r) => setTimeout(r, 300));
  const samples = [];
  for (let i = 0; i < 5; i++) {
    gc();
    const rss = vmRssKiB();
    const resident = vm.stats().residentBytes;
    samples.push({ rssAfterKiB: rss, residentKiB: resident / 1024, overheadKiB: rss - rssStart - resident / 1024 });
    await new Promise((r) => setTimeout(r, 50));
  }
  await vm.kill();
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify({ rssStart, rssAddon, samples }));
  process.exit(0);
}

// ---- main --------------------------------------------------------------------------------------

function missing() {
  if (process.geteuid() !== 0) return 'needs root (/dev/kvm)';
  const probe = probeKvm();
  if (!probe.available) return `no usable /dev/kvm (${probe.reason})`;
  return null;
}
const why = missing();
if (why) {
  console.log(`skipped: ${why}`);
  process.exit(0);
}
const probe = probeKvm();
const kvmKind = probe.hardware ? 'hardware KVM' : probe.modules.kvmPvm ? 'PVM (kvm_pvm)' : 'KVM without kvm_intel/kvm_amd';

const dir = mkdtempSync(join(tmpdir(), 'nacelle-bench-vm-'));
const vms = new Set();
const qemus = new Set();
let cleaned = false;
function killAllSync() {
  for (const c of qemus) c.kill('SIGKILL');
  for (const vm of vms) vm.kill().catch(() => undefined);
}
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  killAllSync();
  await within(Promise.all([...vms].map((vm) => vm.wait().catch(() => undefined))), 5_000, 'VM cleanup').catch((e) => console.error(e.message));
  await within(Promise.all([...qemus].map((c) => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('close', r))))), 5_000, 'qemu cleanup').catch(
    (e) => console.error(e.message),
  );
  rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    cleanup().finally(() => process.exit(130));
  });
}
// The whole benchmark stays under ~4 minutes, whatever hangs.
const hardStop = setTimeout(() => {
  console.error('bench/vm: overall time limit reached; killing everything');
  cleanup().finally(() => process.exit(1));
}, 240_000);
hardStop.unref();

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { n: s.length, median, p90: s[Math.max(0, Math.ceil(0.9 * s.length) - 1)], min: s[0], max: s[s.length - 1] };
}
const fmt = (ms) => (ms === undefined ? '       —   ' : `${ms.toFixed(2).padStart(8)} ms`);
const mib = (kib) => `${(kib / 1024).toFixed(2).padStart(6)} MiB`;

async function track(vm, fn) {
  vms.add(vm);
  try {
    return await fn();
  } finally {
    await vm.kill().catch(() => undefined);
    await within(vm.wait(), 5_000, 'VM exit').catch(() => undefined);
    vms.delete(vm);
  }
}

/** Ours: create + start → first console byte; the `hello` guest then powers off by itself. */
const createMs = new Map();
async function oursFirstByte(kernel) {
  const t0 = now();
  const vm = await VirtualMachine.create({ kernel, cmdline: 'nacelle.test=hello', memoryMiB: 32 });
  createMs.set(kernel, [...(createMs.get(kernel) ?? []), now() - t0]);
  return track(vm, async () => {
    let out = '';
    let first;
    vm.console.on('data', (c) => {
      first ??= now();
      out += c;
    });
    vm.start();
    const exit = await vm.wait(5_000);
    if (first === undefined || !out.includes('guest: hello') || exit.reason !== 'poweroff') {
      throw new Error(`hello guest (${kernel}) failed: ${exit.reason} ${exit.detail}; console: ${JSON.stringify(out)}`);
    }
    return first - t0;
  });
}

const qemuArgs = (kernel, mode, memMiB, accel) => [
  '-M', 'microvm,x-option-roms=off,rtc=off,acpi=off', '-nodefaults', '-no-user-config', '-display', 'none',
  '-serial', 'stdio', '-kernel', kernel, '-append', `nacelle.test=${mode}`, '-m', String(memMiB), '-accel', accel,
];

/**
 * Spawns qemu and calls `onStdout(text, child, t0)` for each stdout chunk; resolves with what
 * `onStdout` returned truthy (and kills qemu then), or rejects after `timeoutMs`.
 */
function runQemu(args, timeoutMs, onStdout) {
  return new Promise((resolve, reject) => {
    const t0 = now();
    const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    qemus.add(child);
    let result;
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c) => {
      if (result !== undefined) return;
      out += c.toString('latin1');
      if (out.length > 4096) out = out.slice(-4096);
      const r = onStdout(out, child, t0);
      if (r) {
        result = r;
        child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (c) => (err += c));
    child.on('error', (e) => {
      clearTimeout(timer);
      qemus.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      qemus.delete(child);
      if (result !== undefined) resolve(result);
      else reject(new Error(`qemu ${args.at(-1)} ended (${signal ?? code}) without a result; stdout: ${JSON.stringify(out.slice(-200))}; stderr: ${err.trim().split('\n').slice(0, 3).join(' | ')}`));
    });
  });
}

/** The accel qemu can boot the guest with: kvm if it prints 'guest: hello' there, else tcg. */
async function qemuAccel(elf) {
  const tried = [];
  for (const accel of ['kvm', 'tcg']) {
    try {
      await runQemu(qemuArgs(elf, 'hello', 32, accel), 10_000, (out) => out.includes('guest: hello'));
      return { accel, tried };
    } catch (err) {
      tried.push(`${accel}: ${err.message.slice(0, 300)}`);
    }
  }
  return { accel: null, tried };
}

const qemuFirstByte = (elf, accel) => runQemu(qemuArgs(elf, 'hello', 32, accel), 10_000, (_out, _child, t0) => now() - t0);

async function samples(fn) {
  const xs = [];
  for (let i = 0; i < WARMUP + N; i++) {
    const ms = await fn();
    if (i >= WARMUP) xs.push(ms);
  }
  return stats(xs);
}

/** The child's RSS run (fresh Node process). */
function rssChild(elf) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--rss-child', elf], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`rss child exited ${signal ?? code}: ${err.trim()}`));
      resolve(JSON.parse(out));
    });
  });
}

/** qemu's VmRSS and the Rss of its guest-RAM mapping (the anonymous mapping of exactly memMiB). */
function qemuRss(elf, accel, memMiB) {
  const read = (pid) => {
    const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
    let guestKiB = 0;
    for (let i = 0; i < smaps.length; i++) {
      if (!/^[0-9a-f]+-[0-9a-f]+ rw-p 00000000 00:00 0\s*$/.test(smaps[i])) continue;
      const size = /^Size:\s+(\d+) kB/.exec(smaps[i + 1] ?? '');
      const rssLine = smaps.slice(i + 1, i + 8).find((l) => l.startsWith('Rss:'));
      if (size && Number(size[1]) === memMiB * 1024 && rssLine) guestKiB += Number(/(\d+)/.exec(rssLine)[1]);
    }
    return { rssKiB: vmRssKiB(pid), guestKiB };
  };
  // After 5 ticks and the same 300 ms settling as ours, /proc is read; the run ends on the next chunk.
  let measuring = false;
  let result;
  return runQemu(qemuArgs(elf, 'count', memMiB, accel), 20_000, (out, child) => {
    if (result) return result;
    if (!measuring && (out.match(/tick /g) ?? []).length >= 5) {
      measuring = true;
      setTimeout(() => {
        try {
          result = read(child.pid);
        } catch (err) {
          result = { error: err.message };
        }
      }, 300);
    }
    return undefined;
  }).catch((err) => ({ error: err.message }));
}

try {
  const { buildTestGuest } = await import('../test/vm/kvm/guest/build.mjs');
  const guest = await within(buildTestGuest(join(dir, 'guest')), 60_000, 'building the test guest');

  const qemuHere = existsSync(QEMU);
  const peer = qemuHere ? await qemuAccel(guest.elf) : { accel: null, tried: [`no ${QEMU}`] };
  const peerLabel = peer.accel ? `qemu microvm, -accel ${peer.accel}` : 'no qemu peer';

  // 1. create → first serial byte
  const rows = [];
  for (const [label, kernel, peerKernel] of [
    ['ELF (PVH)', guest.elf, guest.elf],
    ['bzImage', guest.bzImage, null],
  ]) {
    const ours = await samples(() => oursFirstByte(kernel));
    const theirs = peer.accel && peerKernel ? await samples(() => qemuFirstByte(peerKernel, peer.accel)) : undefined;
    rows.push({ label, ours, theirs, create: stats(createMs.get(kernel).slice(WARMUP)) });
  }
  // The floor under any spawned peer: node spawn → exit of /bin/true.
  const spawnFloor = await samples(
    () =>
      new Promise((resolve, reject) => {
        const t0 = now();
        const c = spawn('/bin/true', [], { stdio: 'ignore' });
        c.on('error', reject);
        c.on('close', () => resolve(now() - t0));
      }),
  );

  // 2. RSS beyond guest memory
  const child = await rssChild(guest.elf);
  const overheads = child.samples.map((s) => s.overheadKiB).sort((a, b) => a - b);
  const overhead = overheads[Math.floor(overheads.length / 2)];
  const last = child.samples.at(-1);
  const qrss = peer.accel ? await qemuRss(guest.elf, peer.accel, 64) : undefined;

  // 3. snapshot restore → first console byte
  const snap = join(dir, 'snapshot');
  const src = await VirtualMachine.create({ kernel: guest.elf, cmdline: 'nacelle.test=count', memoryMiB: 64 });
  await track(src, async () => {
    const seen = ticks(src.console, 3);
    src.start();
    await within(seen, 10_000, 'count guest before the snapshot');
    await src.pause();
    await within(src.snapshot(snap), 30_000, 'snapshot');
  });
  const snapKiB = readdirSync(snap).reduce((a, f) => a + statSync(join(snap, f)).blocks / 2, 0);
  const restoreCall = [];
  const restore = await samples(async () => {
    const t0 = now();
    const vm = await within(VirtualMachine.restore(snap), 5_000, 'restore');
    const t1 = now();
    return track(vm, async () => {
      let first;
      let out = '';
      const tickLine = new Promise((resolve) => {
        vm.console.on('data', (c) => {
          first ??= now();
          out += c.toString('latin1');
          if (/tick \d+\n/.test(out)) resolve();
        });
      });
      await within(tickLine, 5_000, `restored guest (console so far: ${JSON.stringify(out.slice(0, 100))})`);
      restoreCall.push(t1 - t0);
      return first - t0;
    });
  });
  restoreCall.splice(0, WARMUP);
  const restoreResolve = stats(restoreCall);

  // ---- report ----
  const cpus = readFileSync('/proc/cpuinfo', 'utf8').match(/^processor/gm).length;
  console.log(`built-in KVM monitor vs qemu ${peer.accel ? `(-M microvm, -accel ${peer.accel})` : '(none)'}; /dev/kvm here: ${kvmKind}; ${cpus} CPUs`);
  if (!peer.accel) console.log(`  qemu peer unavailable: ${peer.tried.join('; ')}`);
  else if (peer.tried.length) console.log(`  qemu fell back to ${peer.accel}: ${peer.tried.join('; ')}`);
  console.log(`\n1. create → first serial byte, 'hello' guest (32 MiB), ${N} runs each after ${WARMUP} warm-up:`);
  console.log(`                  ours median      p90    ${peerLabel.padEnd(25)} median      p90    ours/qemu (median, p90)`);
  for (const r of rows) {
    const ratio = r.theirs ? `${(r.ours.median / r.theirs.median).toFixed(3)}x  ${(r.ours.p90 / r.theirs.p90).toFixed(3)}x` : 'no peer';
    console.log(`  ${r.label.padEnd(12)} ${fmt(r.ours.median)} ${fmt(r.ours.p90)}    ${''.padEnd(25)} ${fmt(r.theirs?.median)} ${fmt(r.theirs?.p90)}    ${ratio}`);
  }
  console.log(`  ours: VirtualMachine.create + start → first console 'data' (in-process, no spawn); qemu: spawn → first stdout byte`);
  console.log(`  of ours, VirtualMachine.create() resolving: ${rows.map((r) => `${r.label} median ${fmt(r.create.median).trim()}, p90 ${fmt(r.create.p90).trim()}`).join('; ')}`);
  console.log(`  node spawn → exit of /bin/true (the floor under the qemu figure): median ${fmt(spawnFloor.median).trim()}, p90 ${fmt(spawnFloor.p90).trim()}`);
  console.log(`  no qemu figure for the bzImage: the test guest's bzImage has only the 64-bit entry, which qemu's loader does not use`);

  console.log(`\n2. memory beyond guest RAM, 'count' guest with 64 MiB (median of 5 readings, fresh child Node process):`);
  const verdict = overhead <= 5 * 1024 ? 'PASS' : 'MISS';
  console.log(`  ours: ${mib(overhead)}  (target <= 5 MiB: ${verdict})  = VmRSS growth ${mib(last.rssAfterKiB - child.rssStart)} - guest resident ${mib(last.residentKiB)}`);
  console.log(`        readings: ${overheads.map((k) => (k / 1024).toFixed(2)).join(', ')} MiB; of it, loading the addon: ${mib(child.rssAddon - child.rssStart)}`);
  if (qrss?.error) console.log(`  qemu: not measured (${qrss.error})`);
  else if (qrss) {
    console.log(
      `  qemu: ${mib(qrss.rssKiB - qrss.guestKiB)}  = VmRSS ${mib(qrss.rssKiB)} - guest RAM mapping Rss ${mib(qrss.guestKiB)}   ours/qemu ${(overhead / (qrss.rssKiB - qrss.guestKiB)).toFixed(3)}x`,
    );
  }

  // restore() resolves once the vCPU threads run the restored state: that is "running again".
  // The first console byte comes later: the guest must count to its next tick (~2000 loop
  // iterations at ~0.6 µs per emulated instruction on PVM), and the byte must reach JS.
  console.log(`\n3. snapshot restore → guest running again, ${N} runs after ${WARMUP} warm-up (64 MiB guest, snapshot ${mib(snapKiB)} on disk):`);
  const rverdict = restoreResolve.median <= 10 ? 'PASS' : 'MISS';
  console.log(`  ours: VirtualMachine.restore() resolved, vCPUs running: median ${fmt(restoreResolve.median)}  p90 ${fmt(restoreResolve.p90)}  (target <= 10 ms: ${rverdict}, p90 ${restoreResolve.p90 <= 10 ? 'PASS' : 'MISS'})`);
  console.log(`        first console byte of the restored guest (its next tick): median ${fmt(restore.median)}  p90 ${fmt(restore.p90)}`);
  console.log(`        most of it is KVM_SET_USER_MEMORY_REGION waiting for an SRCU grace period (~5 ms here, whatever the size; it overlaps vCPU creation)`);
  console.log(`  no peer: qemu's savevm/loadvm is not comparable`);
} catch (err) {
  console.error(`bench/vm failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await cleanup();
  clearTimeout(hardStop);
}
