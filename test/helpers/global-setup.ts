/**
 * Runs once around the whole suite: checks the addon is built before any test
 * runs, and afterwards that the suite left nothing behind: no mount under the
 * temp dir, no nacelle cgroup, no process of a container, monitor or VM.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CGROUP_PARENT, detectCgroups } from '../../lib/container/cgroups';
import { ownDirectory } from '../../lib/container/cgroups/detect';
import { native } from '../../lib/native';

export const TEST_PREFIX = 'nacelle-test-';

function leftoverMounts(): string[] {
  const prefix = `${tmpdir()}/${TEST_PREFIX}`;
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => line.split(' ')[4]?.startsWith(prefix));
}

/** `<own>/nacelle` and the cgroups under it, in any hierarchy (the suite's containers and test cgroups). */
function leftoverCgroups(): string[] {
  if (process.geteuid?.() !== 0) return [];
  const host = detectCgroups();
  const keys = [...host.v1.keys(), ...(host.v2Mount !== undefined ? [''] : [])];
  const found = new Set<string>();
  for (const key of keys) {
    const own = ownDirectory(host, key);
    if (own === undefined) continue;
    const parent = join(own, CGROUP_PARENT);
    if (!existsSync(parent)) continue;
    found.add(parent); // even empty: every process that used it removes it as it exits
    for (const e of readdirSync(parent, { withFileTypes: true })) if (e.isDirectory()) found.add(join(parent, e.name));
  }
  return [...found];
}

/** Processes the suite may have left: in a nacelle cgroup, a nacelle-monitor, or a qemu of a test's. */
function leftoverProcesses(): string[] {
  const left: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      if (comm === 'nacelle-monitor' || cgroups.includes(`/${CGROUP_PARENT}/`) || (comm.startsWith('qemu-system') && cmdline.includes(TEST_PREFIX))) {
        left.push(`${pid} ${comm}: ${cmdline.slice(0, 120)}`);
      }
    } catch {
      // gone meanwhile
    }
  }
  return left;
}

export function setup(): void {
  native(); // fails here, once, with node-gyp-build's message when the addon is missing
}

export function teardown(): void {
  const problems: string[] = [];
  const mounts = leftoverMounts();
  if (mounts.length > 0) problems.push(`${mounts.length} mount(s):\n${mounts.join('\n')}`);
  const cgroups = leftoverCgroups();
  if (cgroups.length > 0) problems.push(`${cgroups.length} nacelle cgroup(s):\n${cgroups.join('\n')}`);
  const processes = leftoverProcesses();
  if (processes.length > 0) problems.push(`${processes.length} process(es):\n${processes.join('\n')}`);
  if (problems.length > 0) throw new Error(`the tests left things behind: ${problems.join('\n')}`);
}
