// bench/density: 50 detached `sleep 60` containers, nacelle (`detach: true`)
// vs crun (`crun run -d` on an equivalent bundle, made from nacelle's own
// config.json for such a container; the image unpacked once and shared).
// Prints the time to start all of them (one after another) and the memory per
// container: RSS and PSS (/proc/<pid>/smaps_rollup) of every process in the
// container's cgroup, and the memory cgroup's usage (memory.usage_in_bytes on
// v1, memory.current on v2; on v1 it includes kernel memory). crun exits after
// `run -d` and leaves no process of its own; nacelle leaves one small static
// nacelle-monitor per detached container (its parent, which records the exit
// code, as conmon does for podman): its RSS and PSS are printed on their own line.
// Everything is killed and removed at the end, also on failure or Ctrl-C.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';
import { crunCgroupDirs, deleteAllCrun, median, missingCrun, nacelleCgroupDirs, removeCrunCgroups, runInCrunNamespace, writeBundle } from './lib/crun.mjs';

const COUNT = Number(process.env.BENCH_DENSITY_N ?? 50);
const DEADLINE = Date.now() + 170_000;

const why = missingCrun();
if (why) {
  console.log(`skipped: ${why}`);
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'nacelle-bench-density-'));
const stateRoot = join(dir, 'crun-state');
let rt;
const started = [];
let cleaned = false;
let failures = 0;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  // Awaiting wait()/remove() of a detached container does not keep Node's
  // event loop alive (its pidfd waiter is unref'd): without this timer the
  // process would exit (code 13) halfway through the cleanup.
  const keepAlive = setInterval(() => {}, 1 << 30);
  try {
    await removeEverything();
  } finally {
    clearInterval(keepAlive);
  }
}
async function removeEverything() {
  // Through the handles that started them first: a second handle (from list())
  // races the first one's exit bookkeeping in this process (see the report).
  const remove = (c) =>
    c.remove({ force: true }).catch((err) => {
      failures++;
      console.error(`  remove ${c.id.slice(0, 12)}: ${err.message}`);
    });
  await Promise.all(started.map(remove));
  const left = rt ? await rt.containers.list({ all: true }).catch(() => []) : [];
  await Promise.all(left.map(remove));
  await deleteAllCrun(stateRoot);
  removeCrunCgroups();
  rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => cleanup().finally(() => process.exit(130)));

function readNumber(path) {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return NaN;
  }
}

/** { processes, rss, pss, usage, kmem } of one container's cgroups (bytes). */
function containerMemory(dirs) {
  const memDir = dirs.get('memory') ?? dirs.get('');
  const procsFile = join(memDir, 'cgroup.procs');
  const pids = existsSync(procsFile) ? readFileSync(procsFile, 'utf8').split('\n').filter(Boolean) : [];
  let rss = 0;
  let pss = 0;
  for (const pid of pids) {
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      rss += Number(/^Rss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
      pss += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
    } catch {
      // exited in between
    }
  }
  const v1 = existsSync(join(memDir, 'memory.usage_in_bytes'));
  const usage = readNumber(join(memDir, v1 ? 'memory.usage_in_bytes' : 'memory.current'));
  const kmem = v1 ? readNumber(join(memDir, 'memory.kmem.usage_in_bytes')) : NaN;
  return { processes: pids.length, rss, pss, usage, kmem };
}

function summarize(list) {
  const sum = (k) => list.reduce((a, m) => a + (Number.isFinite(m[k]) ? m[k] : 0), 0);
  return {
    n: list.length,
    processes: sum('processes'),
    rss: sum('rss') / list.length,
    pss: sum('pss') / list.length,
    usage: sum('usage') / list.length,
    kmem: sum('kmem') / list.length,
  };
}

const kib = (b) => `${(b / 1024).toFixed(0).padStart(6)} KiB`;

try {
  rt = await Runtime.open({ root: join(dir, 'root') });
  const src = join(dir, 'busybox-rootfs');
  mkdirSync(src);
  writeBusyboxRootfs(src);
  const img = await rt.images.fromDirectory(src, { tag: 'bench:density', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  const rootfs = join(dir, 'rootfs');
  await img.unpack(rootfs);
  const options = { cmd: ['sleep', '60'], detach: true };

  // The crun bundle: nacelle's spec for the same container.
  const template = await rt.containers.create(img, options);
  const bundle = writeBundle(await template.spec(), { dir: join(dir, 'bundle'), rootfs, containerDir: template.dir });
  await template.remove({ force: true });

  // nacelle: start COUNT detached containers, one after another.
  const rssBefore = process.memoryUsage().rss;
  const nStart = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < COUNT && Date.now() < DEADLINE - 60_000; i++) {
    const t = process.hrtime.bigint();
    const c = await rt.containers.run(img, options);
    nStart.push(Number(process.hrtime.bigint() - t) / 1e6);
    started.push(c);
  }
  const nTotal = Number(process.hrtime.bigint() - t0) / 1e6;
  await new Promise((r) => setTimeout(r, 500)); // let every sleep settle
  const nMem = summarize(started.map((c) => containerMemory(nacelleCgroupDirs(c.id))));
  const nodeGrowth = process.memoryUsage().rss - rssBefore;
  const monitors = { n: 0, rss: 0, pss: 0 };
  for (const c of started) {
    const pid = c.state.monitorPid;
    if (pid === undefined) continue;
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      monitors.rss += Number(/^Rss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
      monitors.pss += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
      monitors.n++;
    } catch {
      // gone
    }
  }

  // crun: the same, inside crun's mount namespace (one node process times every `crun run -d`).
  const ids = Array.from({ length: COUNT }, (_, i) => `density-${i}`);
  const t1 = process.hrtime.bigint();
  const results = await runInCrunNamespace({
    stateRoot,
    timeoutMs: Math.max(10_000, DEADLINE - Date.now() - 30_000),
    steps: ids.map((id) => ({ args: ['run', '-d', '-b', bundle, id], bundle, cgroupsPath: `nacelle-crun/${id}`, detached: true })),
  });
  const cTotalOuter = Number(process.hrtime.bigint() - t1) / 1e6;
  const failed = results.find((r) => r.status !== 0 && !r.skipped);
  if (failed) throw new Error(`crun run -d failed (${failed.status}): ${failed.stderr ?? ''}`);
  const cStart = results.filter((r) => !r.skipped).map((r) => r.ms);
  const cTotal = cStart.reduce((a, b) => a + b, 0);
  await new Promise((r) => setTimeout(r, 500));
  const cMem = summarize(ids.slice(0, cStart.length).map((id) => containerMemory(crunCgroupDirs(id))));

  const running = (await rt.containers.list()).length;
  console.log(`${COUNT} detached 'sleep 60' containers (busybox), started one after another:`);
  console.log(`                                  nacelle        crun   nacelle/crun`);
  console.log(`  containers running          ${String(running).padStart(10)}  ${String(cMem.n).padStart(10)}`);
  console.log(`  time to start all           ${(nTotal / 1000).toFixed(2).padStart(8)} s  ${(cTotal / 1000).toFixed(2).padStart(8)} s   ${(nTotal / cTotal).toFixed(2)}x`);
  console.log(`  median start                ${nStart.length ? median(nStart).toFixed(2).padStart(7) : '-'} ms  ${median(cStart).toFixed(2).padStart(7)} ms   ${(median(nStart) / median(cStart)).toFixed(2)}x`);
  console.log(`  processes in the cgroups    ${String(nMem.processes).padStart(10)}  ${String(cMem.processes).padStart(10)}`);
  console.log(`  RSS per container           ${kib(nMem.rss)}  ${kib(cMem.rss)}   ${(nMem.rss / cMem.rss).toFixed(2)}x`);
  console.log(`  PSS per container           ${kib(nMem.pss)}  ${kib(cMem.pss)}   ${(nMem.pss / cMem.pss).toFixed(2)}x`);
  console.log(`  cgroup memory per container ${kib(nMem.usage)}  ${kib(cMem.usage)}   ${(nMem.usage / cMem.usage).toFixed(2)}x`);
  if (Number.isFinite(nMem.kmem) && nMem.kmem > 0) console.log(`    of which kernel (kmem)    ${kib(nMem.kmem)}  ${kib(cMem.kmem)}`);
  if (monitors.n) console.log(`  nacelle-monitor per container  RSS ${kib(monitors.rss / monitors.n)}, PSS ${kib(monitors.pss / monitors.n)} (${monitors.n} running); crun: none`);
  const perContainerPss = (nMem.pss + (monitors.n ? monitors.pss / monitors.n : 0)) / cMem.pss;
  console.log(`  PSS per container + monitor ${kib(nMem.pss + (monitors.n ? monitors.pss / monitors.n : 0))}  ${kib(cMem.pss)}   ${perContainerPss.toFixed(2)}x`);
  console.log(`  runtime-side memory         node RSS grew ${(nodeGrowth / 1048576).toFixed(1)} MiB over ${COUNT} starts; crun: none left running`);
  console.log(`  (crun times are per \`crun run -d\` spawned from node; wall time for the whole crun batch incl. namespace setup: ${(cTotalOuter / 1000).toFixed(2)} s)`);
} catch (err) {
  console.error(`bench/density failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  const t = Date.now();
  await cleanup();
  console.log(
    failures
      ? `  cleanup: ${failures} nacelle remove() call(s) failed (temp dir removed anyway) in ${((Date.now() - t) / 1000).toFixed(1)} s`
      : `  cleanup: every container killed and removed in ${((Date.now() - t) / 1000).toFixed(1)} s`,
  );
}
