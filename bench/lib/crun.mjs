// Shared by bench/run.mjs and bench/density.mjs: crun as the peer runtime.
//
// crun 1.8 refuses hybrid cgroup hosts, so crun runs in a private mount
// namespace where the cgroup2 mount (/sys/fs/cgroup/unified) is unmounted and
// each hierarchy in which this process is not at the root (here: memory, at
// /process_api/<hash>) has this process's own cgroup bound over its mount
// point. cgroupsPath `nacelle-crun/<id>` then lands at
// `<own cgroup>/nacelle-crun/<id>`, where nacelle puts `<own>/nacelle/<id>`.
// One node process (bench/lib/crun-loop.mjs) runs inside that namespace and
// times every crun command, so the namespace setup is paid once, not per run.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmdirSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CRUN = process.env.NACELLE_CRUN ?? ['/usr/bin/crun', '/usr/local/bin/crun'].find((p) => existsSync(p)) ?? 'crun';
export const CGROUP_PARENT = 'nacelle-crun';
const here = dirname(fileURLToPath(import.meta.url));

/** Why crun cannot run here, or null. */
export function missingCrun() {
  if (process.geteuid?.() !== 0) return 'needs root';
  const v = spawnSync(CRUN, ['--version'], { encoding: 'utf8' });
  if (v.error || v.status !== 0) return `no usable crun ('${CRUN} --version' failed; apt-get install crun)`;
  return null;
}

/** Cgroup hierarchies: mount point, fstype, controller key, own path below the mount. */
export function hierarchies() {
  const own = new Map();
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m) own.set(m[1], m[2]);
  }
  const out = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const before = line.slice(0, sep).split(' ');
    const [fstype, , superOptions = ''] = line.slice(sep + 3).split(' ');
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const root = before[3];
    const mountPoint = before[4];
    const key =
      fstype === 'cgroup2'
        ? ''
        : superOptions
            .split(',')
            .filter((o) => !['rw', 'ro', 'clone_children', 'noprefix'].includes(o) && !o.startsWith('release_agent') && !o.startsWith('xattr'))
            .join(',');
    const path = own.get(key);
    if (path === undefined) continue;
    const rel = root === '/' ? path : path === root ? '/' : path.startsWith(`${root}/`) ? path.slice(root.length) : null;
    if (rel !== null) out.push({ mountPoint, fstype, key, own: rel });
  }
  return out;
}

const isHybrid = (hs) => hs.some((h) => h.fstype === 'cgroup') && hs.some((h) => h.fstype === 'cgroup2');
const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

/** Shell commands preparing the private mount namespace for crun. */
export function setupScript() {
  const hs = hierarchies();
  const hybrid = isHybrid(hs);
  const lines = [];
  for (const h of hs) {
    if (hybrid && h.fstype === 'cgroup2') lines.push(`umount ${q(h.mountPoint)}`);
    else if (h.own !== '/') lines.push(`mount --bind ${q(h.mountPoint + h.own)} ${q(h.mountPoint)}`);
  }
  return lines.join(' && ') || 'true';
}

/** Host directories of a crun container's cgroups by hierarchy key. */
export function crunCgroupDirs(id) {
  const hs = hierarchies();
  const hybrid = isHybrid(hs);
  const dirs = new Map();
  for (const h of hs) if (!(hybrid && h.fstype === 'cgroup2')) dirs.set(h.key, join(h.mountPoint, h.own, CGROUP_PARENT, id));
  return dirs;
}

/** Host directories of a nacelle container's cgroups by hierarchy key (`<own>/nacelle/<id>`). */
export function nacelleCgroupDirs(id) {
  const hs = hierarchies();
  const dirs = new Map();
  for (const h of hs) dirs.set(h.key, join(h.mountPoint, h.own, 'nacelle', id));
  return dirs;
}

/** rmdir every empty leaf under `<own>/nacelle-crun` and the parent itself (what a crash may leave). */
export function removeCrunCgroups() {
  for (const dir of crunCgroupDirs('x').values()) {
    const parent = dirname(dir);
    if (!existsSync(parent)) continue;
    for (const e of readdirSync(parent, { withFileTypes: true })) {
      if (e.isDirectory()) {
        try {
          rmdirSync(join(parent, e.name));
        } catch {}
      }
    }
    try {
      rmdirSync(parent);
    } catch {}
  }
}

/**
 * Writes a crun bundle in `dir` from a nacelle container's spec: root.path =
 * the shared unpacked `rootfs`, the managed /etc files copied from
 * `containerDir`, terminal off, cgroupsPath `nacelle-crun/<id>` (set per run
 * by crun-loop), and `edit(spec)` last.
 */
export function writeBundle(spec, { dir, rootfs, containerDir, edit }) {
  const s = structuredClone(spec);
  mkdirSync(join(dir, 'etc'), { recursive: true });
  for (const m of s.mounts ?? []) {
    if (m.type === 'bind' && m.source?.startsWith(`${containerDir}/`)) {
      const copy = join(dir, 'etc', basename(m.source));
      copyFileSync(m.source, copy);
      m.source = copy;
    }
  }
  s.root = { ...s.root, path: rootfs };
  s.process = { ...s.process, terminal: false };
  s.linux = { ...s.linux, cgroupsPath: `${CGROUP_PARENT}/bundle` };
  edit?.(s);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(s, null, 2));
  return dir;
}

/**
 * Runs `job` in bench/lib/crun-loop.mjs inside the prepared mount namespace
 * and returns its JSON result. job: { stateRoot, steps: [{ args, id?, bundle? }], timeoutMs }.
 */
export function runInCrunNamespace(job, timeoutMs = 120_000) {
  const script = `${setupScript()} && exec ${q(process.execPath)} ${q(join(here, 'crun-loop.mjs'))}`;
  return new Promise((resolve, reject) => {
    const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`crun loop exited ${code}`));
      try {
        resolve(JSON.parse(out));
      } catch (err) {
        reject(err);
      }
    });
    child.stdin.end(JSON.stringify({ ...job, crun: CRUN }));
  });
}

/** `crun delete -f` of every container left in `stateRoot` (in the namespace), then the cgroup leftovers. */
export async function deleteAllCrun(stateRoot) {
  if (existsSync(stateRoot)) {
    const ids = readdirSync(stateRoot).filter((n) => !n.startsWith('.'));
    if (ids.length) {
      await runInCrunNamespace({ stateRoot, steps: ids.map((id) => ({ args: ['delete', '-f', id] })) }).catch((err) =>
        console.error(`crun delete failed: ${err.message}`),
      );
    }
  }
  removeCrunCgroups();
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
