// The same image run as a container and as a VM, measured side by side: every row of
// the comparison the "containers vs VMs" articles assert (see ../../docs or
// /work/shared/COMPARISON.md). Used by examples/demo.mjs, examples/compare.mjs and
// bench/compare.mjs. Prints what was measured, never a claim.
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { NotFoundError, fetchDebianCloudKernel, findKernel } from 'nacelle';

/** Bytes a tree occupies on disk (st_blocks), each inode once. */
export async function du(path, seen = new Set()) {
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  if (!st) return 0;
  const key = `${st.dev}:${st.ino}`;
  if (seen.has(key)) return 0;
  seen.add(key);
  let total = Number(st.blocks) * 512;
  if (st.isDirectory()) for (const name of await readdir(path)) total += await du(join(path, name), seen);
  return total;
}

/** A kernel for the VM side: $NACELLE_KERNEL, the host's, the cache, or Debian's cloud kernel fetched into the cache. */
export async function guestKernel(log = () => undefined) {
  try {
    return await findKernel();
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    log("no guest kernel here: fetching Debian's cloud kernel into the cache (once, ~10 s) ...");
    return fetchDebianCloudKernel();
  }
}

const ms = (t0) => performance.now() - t0;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function collect(stream, onFirst) {
  let out = '';
  for await (const c of stream) {
    if (!out && onFirst) onFirst();
    out += c;
  }
  return out;
}

/** Runs `cmd` as a container; launch → first output and → exit, in ms. */
async function timeContainer(rt, image, cmd) {
  const t0 = performance.now();
  let first;
  const c = await rt.containers.run(image, { cmd });
  const [out, exit] = await Promise.all([collect(c.stdout, () => (first ??= ms(t0))), c.wait()]);
  const total = ms(t0);
  const disk = await du(c.dir);
  await c.remove();
  if (exit.exitCode !== 0) throw new Error(`container ${cmd.join(' ')} exited ${exit.exitCode}`);
  return { first, total, out, disk };
}

/** Runs `cmd` as a VM; launch → first output and → exit, in ms. */
async function timeVm(rt, image, cmd, vmOptions) {
  const t0 = performance.now();
  let first;
  const vm = await rt.vms.run(image, { cmd, ...vmOptions });
  const [out, exit] = await Promise.all([collect(vm.stdout, () => (first ??= ms(t0))), vm.wait()]);
  const total = ms(t0);
  const stats = await vm.stats();
  if (exit.exitCode !== 0) throw new Error(`vm ${cmd.join(' ')} exited ${exit.exitCode}`);
  return { first, total, out, disk: stats.disk.stateDirBytes, stats, vm };
}

/**
 * Measures everything once. `n`: instances started one after another each way.
 * Returns the rows and the backend label.
 */
export async function sideBySide(rt, image, { n = 3, vmOptions = {}, log = () => undefined } = {}) {
  const planted = `/tmp/nacelle-planted-${randomBytes(6).toString('hex')}`;
  writeFileSync(planted, 'a host file\n');
  try {
    const hostBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    // 1. n starts one after another, each way: start times, the scale-up time, disk per instance.
    log(`starting ${n} containers, then ${n} VMs, one after another ...`);
    const cmd = ['echo', 'hi'];
    const cRuns = [];
    let t0 = performance.now();
    for (let i = 0; i < n; i++) cRuns.push(await timeContainer(rt, image, cmd));
    const cScale = ms(t0);
    const vRuns = [];
    t0 = performance.now();
    for (let i = 0; i < n; i++) vRuns.push(await timeVm(rt, image, cmd, vmOptions));
    const vScale = ms(t0);
    const label = vRuns[0].vm.backendLabel;
    const reason = vRuns[0].vm.backendReason;

    // 2. A second image sharing the base: what it adds on disk each way.
    const next = await rt.images.get('busybox:side-by-side-2').catch(async () => {
      const c = await rt.containers.run(image, { cmd: ['sh', '-c', 'echo "a second image" > /etc/motd'] });
      await c.wait();
      const img2 = await c.commit({ tag: 'busybox:side-by-side-2' });
      await c.remove();
      return img2;
    });
    const added = next.manifest.layers.slice(image.manifest.layers.length);
    const layerBytes = added.reduce((s, l) => s + l.size, 0);
    const cacheBefore = await du(rt.vms.cacheDir);

    // 3. One run of the same inspection command each way (on the second image), with stats read
    //    while it still runs: stdin stays open until its output is in.
    log('inspecting the inside of each ...');
    const probe = [
      'sh',
      '-c',
      `cat /proc/sys/kernel/random/boot_id; uname -r; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; test -e ${planted} && echo yes || echo no; read x`,
    ];
    const parse = (out) => {
      const [bootId, kernel, pid1, procs, reach] = out.trim().split('\n');
      return { bootId, kernel, pid1, procs: Number(procs), reach };
    };
    const c = await rt.containers.run(next, { cmd: probe, stdin: true });
    const cOut = await new Promise((resolve) => {
      let acc = '';
      c.stdout.on('data', (d) => {
        acc += d;
        if (acc.split('\n').length > 5) resolve(acc);
      });
    });
    const cStats = await c.stats().catch(() => undefined);
    c.stdin.end();
    await c.wait();
    await c.remove();
    const vm = await rt.vms.run(next, { cmd: probe, stdin: true, ...vmOptions });
    const vOutP = collect(vm.stdout);
    vm.stdin.end();
    const [vOut] = await Promise.all([vOutP, vm.wait()]);
    const vStats = await vm.stats();
    const cacheAfter = await du(rt.vms.cacheDir);
    const ci = parse(cOut);
    const vi = parse(vOut);

    const layersBytes = await (async () => {
      const seen = new Set();
      let t = 0;
      for (const d of await image.lowerDirs()) t += await du(d, seen);
      return t;
    })();
    const cacheBytes = cacheBefore;
    const cpuC = cStats ? (cStats.cpu.usageNs / 1e9).toFixed(3) : 'n/a';
    const cpuV = vStats.cpu ? (vStats.cpu.userSeconds + vStats.cpu.systemSeconds).toFixed(2) : 'n/a';
    const peakC = cStats?.memory.peak ?? cStats?.memory.usage;
    const peakV = vStats.memory?.peakRssBytes;
    const cDisk = cRuns.reduce((s, r) => s + r.disk, 0);
    const vDisk = vRuns.reduce((s, r) => s + r.disk, 0);

    const rows = [
      ['launch → first output (median)', fmtMs(median(cRuns.map((r) => r.first))), fmtMs(median(vRuns.map((r) => r.first))), median(vRuns.map((r) => r.first)) / median(cRuns.map((r) => r.first))],
      ['launch → exit (median)', fmtMs(median(cRuns.map((r) => r.total))), fmtMs(median(vRuns.map((r) => r.total))), median(vRuns.map((r) => r.total)) / median(cRuns.map((r) => r.total))],
      [`${n} starts, one after another`, fmtMs(cScale), fmtMs(vScale), vScale / cScale],
      [
        'peak memory',
        peakC === undefined ? 'n/a' : `${fmtBytes(peakC)} cgroup${cStats?.memory.peak == null ? ' now' : ' peak'}`,
        peakV === undefined ? 'n/a' : `${fmtBytes(peakV)} qemu RSS peak (guest ${vStats.memoryMiB} MiB)`,
        peakC && peakV ? peakV / peakC : undefined,
      ],
      ['CPU, start to end of command', `${cpuC} s`, `${cpuV} s`, cStats && vStats.cpu ? Number(cpuV) / Math.max(Number(cpuC), 0.001) : undefined],
      [
        `disk for ${n} instances`,
        `${fmtBytes(layersBytes)} shared + ${n}×${fmtBytes(cDisk / n)}`,
        `${n}×${fmtBytes(vDisk / n)} initramfs+state (+${fmtBytes(cacheBytes)} cache)`,
        (vDisk + cacheBytes) / (layersBytes + cDisk),
      ],
      ['a second image sharing the base adds', `${fmtBytes(layerBytes)} (${added.length} layer)`, `${fmtBytes(Math.max(0, cacheAfter - cacheBefore))} (a whole rootfs archive)`, undefined],
      ['kernel inside (uname -r)', ci.kernel, vi.kernel, undefined],
      ['shares the host kernel (boot_id)', ci.bootId === hostBootId ? 'yes' : 'no', vi.bootId === hostBootId ? 'yes' : 'no', undefined],
      ['pid 1 inside', ci.pid1, vi.pid1, undefined],
      ['processes visible', String(ci.procs), String(vi.procs), undefined],
      ['a host file in /tmp reachable', ci.reach, vi.reach, undefined],
    ];
    return { rows, label, reason, host: release(), n };
  } finally {
    rmSync(planted, { force: true });
  }
}

function fmtMs(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(1)} ms`;
}

function fmtBytes(b) {
  if (b >= 1024 * 1024) return `${(b / 1024 / 1024).toFixed(1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(0)} KiB`;
  return `${Math.round(b)} B`;
}

/** Prints the table; with `ratios`, a VM/container column. */
export function printTable({ rows, label, reason, host }, { ratios = false, indent = '' } = {}) {
  const head = ['', 'container', `VM (${label})`, ...(ratios ? ['VM/ctr'] : [])];
  const body = rows.map(([name, c, v, r]) => [name, c, v, ...(ratios ? [r === undefined || !Number.isFinite(r) ? '' : `${r >= 10 ? r.toFixed(0) : r.toFixed(1)}×`] : [])]);
  const widths = head.map((_, i) => Math.max(...[head, ...body].map((row) => String(row[i]).length)));
  const line = (row) => indent + row.map((cell, i) => String(cell).padEnd(widths[i])).join('  ').trimEnd();
  console.log(line(head));
  for (const row of body) console.log(line(row));
  console.log(`${indent}host kernel ${host}; VM backend ${label}: ${reason}`);
}
