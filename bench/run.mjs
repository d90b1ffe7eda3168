// bench/run: `rt.containers.run(img, { cmd: ['/bin/true'] })` + wait() + remove(),
// vs `crun run` (which also waits and deletes) on an equivalent bundle: nacelle's
// own config.json for that container (same namespaces, mounts, cgroups, caps,
// rlimits, seccomp policy), with the image unpacked into a plain directory.
// With seccomp: nacelle's default profile; crun gets the very same
// `linux.seccomp` from nacelle's spec (already OCI form). Without: nacelle
// `seccomp: 'unconfined'`; crun's config.json has no `linux.seccomp`.
// Also prints node's spawnSync('/bin/true') (the cost of starting crun from
// node) and a C floor: clone into the same namespaces + exec a static true +
// wait, no rootfs, cgroups or seccomp.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';
import { deleteAllCrun, median, missingCrun, removeCrunCgroups, runInCrunNamespace, writeBundle } from './lib/crun.mjs';

const N = Number(process.env.BENCH_N ?? 100);
const WARMUP = 5;
const DEADLINE = Date.now() + 170_000; // the whole benchmark stays under ~3 minutes

const why = missingCrun();
if (why) {
  console.log(`skipped: ${why}`);
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'nacelle-bench-run-'));
const stateRoot = join(dir, 'crun-state');
let rt;
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (rt) for (const c of await rt.containers.list({ all: true }).catch(() => [])) await c.remove({ force: true }).catch(() => undefined);
  await deleteAllCrun(stateRoot);
  removeCrunCgroups();
  rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    cleanup().finally(() => process.exit(130));
  });
}

function fmt(ms) {
  return `${ms.toFixed(2).padStart(7)} ms`;
}

try {
  rt = await Runtime.open({ root: join(dir, 'root') });
  const rootfsSrc = join(dir, 'busybox-rootfs');
  mkdirSync(rootfsSrc);
  writeBusyboxRootfs(rootfsSrc);
  const img = await rt.images.fromDirectory(rootfsSrc, { tag: 'bench:run', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
  const rootfs = join(dir, 'rootfs');
  await img.unpack(rootfs);

  // Bundles from the spec nacelle writes for exactly this container.
  const bundles = {};
  for (const [name, options] of [
    ['seccomp', {}],
    ['unconfined', { seccomp: 'unconfined' }],
  ]) {
    const c = await rt.containers.create(img, { cmd: ['/bin/true'], ...options });
    const spec = await c.spec();
    bundles[name] = writeBundle(spec, { dir: join(dir, `bundle-${name}`), rootfs, containerDir: c.dir, edit: (s) => (s.linux.cgroupsPath = `nacelle-crun/${name}`) });
    if (name === 'seccomp' && !spec.linux?.seccomp) throw new Error('nacelle wrote no linux.seccomp for a default container');
    if (name === 'unconfined' && spec.linux?.seccomp) throw new Error("nacelle wrote linux.seccomp for seccomp: 'unconfined'");
    await c.remove({ force: true });
  }

  async function nacelle(options) {
    const samples = [];
    for (let i = 0; i < WARMUP + N && Date.now() < DEADLINE; i++) {
      const t = process.hrtime.bigint();
      const c = await rt.containers.run(img, { cmd: ['/bin/true'], ...options });
      const exit = await c.wait();
      await c.remove();
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      if (exit.exitCode !== 0) throw new Error(`nacelle: /bin/true exited ${exit.exitCode}`);
      if (i >= WARMUP) samples.push(ms);
    }
    return samples;
  }

  async function crun(name) {
    const steps = Array.from({ length: WARMUP + N }, (_, i) => ({ args: ['run', '-b', bundles[name], `bench-${name}-${i}`] }));
    const results = await runInCrunNamespace({ stateRoot, steps, timeoutMs: Math.max(5_000, DEADLINE - Date.now()) });
    const failed = results.find((r) => r.status !== 0 && !r.skipped);
    if (failed) throw new Error(`crun run failed (${failed.status}): ${failed.stderr}`);
    return results.slice(WARMUP).filter((r) => !r.skipped).map((r) => r.ms);
  }

  const rows = [];
  for (const [label, options, bundle] of [
    ['with seccomp', {}, 'seccomp'],
    ['without seccomp', { seccomp: 'unconfined' }, 'unconfined'],
  ]) {
    const n = await nacelle(options);
    const c = await crun(bundle);
    rows.push({ label, nacelle: median(n), crun: median(c), nn: n.length, nc: c.length });
  }

  // Floors: starting a process from node inside crun's namespace (what each crun run pays
  // before crun itself starts), and a C loop cloning into the same namespaces.
  const spawnFloor = await runInCrunNamespace({
    stateRoot,
    steps: Array.from({ length: WARMUP + N }, () => ({ program: '/bin/true', args: [] })),
    timeoutMs: 20_000,
  });
  const spawnMs = median(spawnFloor.slice(WARMUP).map((r) => r.ms));

  let floorMs;
  try {
    const src = join(dir, 'floor.c');
    writeFileSync(
      src,
      `#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
  int n = atoi(argv[1]);
  double *ms = calloc(n, sizeof *ms);
  char *args[] = {"true", NULL}, *env[] = {NULL};
  for (int i = 0; i < n; i++) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    long pid = syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) { execve(argv[2], args, env); _exit(127); }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) { fprintf(stderr, "floor: run %d failed\\n", i); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &b);
    ms[i] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
  }
  qsort(ms, n, sizeof *ms, cmp);
  printf("%f\\n", n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2);
  return 0;
}
`,
    );
    execFileSync('gcc', ['-O2', '-o', join(dir, 'floor'), src], { stdio: 'pipe' });
    floorMs = Number(execFileSync(join(dir, 'floor'), [String(N), join(rootfs, 'bin/busybox')], { encoding: 'utf8', timeout: 30_000 }).trim());
  } catch (err) {
    console.log(`(C floor skipped: ${err.message.split('\n')[0]})`);
  }

  const cpus = spawnSync('nproc', { encoding: 'utf8' }).stdout.trim();
  console.log(`container run of /bin/true (busybox), run + wait + remove; median of ${N} after ${WARMUP} warm-up, ${cpus} CPUs:`);
  console.log(`                     nacelle        crun    nacelle/crun   (target <= 0.5x)`);
  for (const r of rows) {
    const partial = r.nn < N || r.nc < N ? `  (only ${r.nn}/${r.nc} runs: time limit)` : '';
    console.log(`  ${r.label.padEnd(16)} ${fmt(r.nacelle)}  ${fmt(r.crun)}   ${(r.nacelle / r.crun).toFixed(2)}x${partial}`);
  }
  console.log(`  crun with seccomp: nacelle's own generated linux.seccomp (OCI form, Docker's default policy)`);
  console.log(`  node spawnSync('/bin/true'), included in each crun figure: ${fmt(spawnMs)}`);
  if (floorMs !== undefined) console.log(`  C floor (clone into pid,mnt,uts,ipc,net,cgroup ns + exec static true + wait): ${fmt(floorMs)}`);
} catch (err) {
  console.error(`bench/run failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
