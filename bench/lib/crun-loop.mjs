// Runs inside crun's private mount namespace (see bench/lib/crun.mjs): reads a
// job from stdin, runs each step's crun command and times it, and prints
// [{ ms, status }] as JSON. A step may first set the bundle's cgroupsPath
// (untimed), so detached containers each get their own cgroup.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const job = JSON.parse(readFileSync(0, 'utf8'));
const deadline = Date.now() + (job.timeoutMs ?? 100_000);
const results = [];
for (const step of job.steps) {
  if (Date.now() > deadline) {
    results.push({ ms: null, status: null, skipped: true });
    continue;
  }
  if (step.cgroupsPath) {
    const path = join(step.bundle, 'config.json');
    const spec = JSON.parse(readFileSync(path, 'utf8'));
    spec.linux.cgroupsPath = step.cgroupsPath;
    writeFileSync(path, JSON.stringify(spec));
  }
  const t = process.hrtime.bigint();
  const r = spawnSync(step.program ?? job.crun, step.program ? step.args : [`--root=${job.stateRoot}`, '--cgroup-manager=cgroupfs', ...step.args], {
    // A detached container would hold a stderr pipe open for its whole life.
    stdio: ['ignore', 'ignore', step.detached ? 'ignore' : 'pipe'],
    timeout: 30_000,
  });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  results.push({ ms, status: r.status, ...(r.status !== 0 ? { stderr: String(r.stderr ?? r.error ?? '').slice(0, 500) } : {}) });
}
process.stdout.write(JSON.stringify(results));
