/**
 * The VM service (`rt.vms`): run an image's command inside a virtual machine,
 * with the same defaults a container gets (command, env, workdir, user from
 * the image config), each VM keeping its files under `<root>/vms/<id>`.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { type Stats, rmSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { InvalidArgumentError, SpawnError } from '../errors';
import type { Image } from '../image/image';
import type { ImageService } from '../image/images';
import { buildSpec } from '../container/spec';
import { type VmBackendChoice, chooseBackend, findQemu } from './backend';
import { buildDiskBoot, writeErofsImage } from './guest/disk';
import { buildInitramfs } from './guest/initramfs';
import { findKernel } from './guest/kernel';
import { KVM_GUEST_CHANNEL_DEVICE, KvmMachine, kvmKernelImage } from './kvm-machine';
import { VM_MEMORY_MAX_MIB, VM_MEMORY_MIN_MIB } from './machine';
import type { VmMachine } from './machine-types';
import { GUEST_CHANNEL_DEVICE, QemuMachine } from './qemu';
import { VmWorkload } from './workload';
import { processAlive } from '../process/alive';
import type { ContainerOptions } from '../container/options';

/** Options of `rt.vms.run`. */
export interface VmRunOptions extends Pick<ContainerOptions, 'cmd' | 'entrypoint' | 'env' | 'workdir' | 'user' | 'hostname'> {
  /** Forward stdin: `vm.stdin` is writable; ending it closes the command's stdin. */
  stdin?: boolean;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Guest memory in MiB (default 256; the built-in monitor takes 8 to 3072). */
  memoryMiB?: number;
  /** A bzImage to boot (default: {@link findKernel}'s search: `$NACELLE_KERNEL`, the host's, the cache). */
  kernel?: string;
  /** The kernel's modules directory (`.../lib/modules/<release>`), with `kernel`. */
  kernelModules?: string;
  /**
   * `auto` (default), `qemu` or `kvm` (the built-in monitor: the VM runs on
   * threads of this process, so {@link VmWorkload.pid} is undefined).
   */
  backend?: VmBackendChoice;
  /** Kill the VM when its command has not finished this many ms after launch (default: no limit). */
  timeoutMs?: number;
  /** Kill the VM when the guest has not reported READY this many ms after launch (default 60000). */
  bootTimeoutMs?: number;
  /** Extra kernel command line words. */
  cmdline?: string;
  /** Remove the VM's state directory once it ends (default true). */
  autoRemove?: boolean;
  /**
   * How the image's files reach the guest: `initramfs` (unpacked into RAM at
   * boot), `disk` (an erofs image on a read-only virtio-blk disk, built once
   * per image and shared by every VM of it, under a writable layer in the
   * guest's RAM, as a container's upper dir over its image), or
   * `auto` (default): the disk when the image's layers take more than
   * {@link DISK_THRESHOLD_BYTES} or a quarter of the guest memory.
   */
  rootfs?: 'initramfs' | 'disk' | 'auto';
}

/** Above this many bytes of layers (as stored), `rootfs: 'auto'` boots from a disk image. */
export const DISK_THRESHOLD_BYTES = 64 * 1024 * 1024;

/** What `<root>/vms/<id>/state.json` records. */
export interface VmStateFile {
  /** The VM id. */
  id: string;
  /** The image's manifest digest. */
  image: string;
  /** When it was created (ISO 8601). */
  created: string;
  /** The backend label. */
  backend: string;
  /** The VM process's pid; for the built-in monitor (`kvm`), which runs in the Node process, that process's pid (= parentPid). */
  pid: number;
  /** The Node process that runs it. */
  parentPid: number;
}

const DEFAULT_BOOT_TIMEOUT_MS = 60_000;

/**
 * How long a guest on the built-in monitor that reported EXIT gets to end by
 * itself before it is killed. Short: the exit code is in the EXIT frame, the
 * rootfs is read-only or in RAM, and a kernel with no ACPI power-off halts
 * instead of ending the VM.
 */
const KVM_POWEROFF_GRACE_MS = 500;

function checkPositive(name: string, value: number | undefined, max: number): void {
  if (value === undefined) return;
  if (!Number.isInteger(value) || value < 1 || value > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}, got ${String(value)}`);
}


/**
 * Looks a path up in an image's layers (top first), following symlinks inside
 * the image: what execve would find in the guest. Returns the kind found.
 */
async function lookupInImage(layers: readonly string[], path: string): Promise<'file' | 'executable' | 'dir' | 'missing'> {
  let hops = 0;
  const resolve = async (abs: string): Promise<'file' | 'executable' | 'dir' | 'missing'> => {
    const parts = abs.split('/').filter((p) => p.length > 0 && p !== '.');
    let cur = '/';
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      if (part === '..') {
        cur = posix.dirname(cur);
        continue;
      }
      const next = posix.join(cur, part);
      let found: Stats | undefined;
      let layer: string | undefined;
      for (const l of layers) {
        const st = await lstat(join(l, next)).catch(() => undefined);
        if (st) {
          found = st;
          layer = l;
          break;
        }
      }
      if (!found || (found.isCharacterDevice() && found.rdev === 0)) return 'missing';
      if (found.isSymbolicLink()) {
        if (++hops > 40) return 'missing';
        const target = await readlink(join(layer!, next));
        const rest = parts.slice(i + 1).join('/');
        const base = target.startsWith('/') ? target : posix.join(cur, target);
        return resolve(rest ? posix.join(base, rest) : base);
      }
      if (i < parts.length - 1 && !found.isDirectory()) return 'missing';
      cur = next;
      if (i === parts.length - 1) {
        if (found.isDirectory()) return 'dir';
        return found.mode & 0o111 ? 'executable' : 'file';
      }
    }
    return 'dir';
  };
  return resolve(path);
}

/** VMs of one runtime. */
export class VmService {
  /** `<root>/vms`: one directory per VM, and the initramfs cache. */
  readonly root: string;
  /** The image service VMs are made from. @internal */
  readonly images: ImageService;
  readonly #live = new Set<VmWorkload>();
  #exitHook: (() => void) | undefined;

  /** @internal */
  constructor(root: string, images: ImageService) {
    this.root = root;
    this.images = images;
  }

  /** Where per-image initramfs archives are cached. */
  get cacheDir(): string {
    return join(this.root, 'initramfs-cache');
  }

  /** Where the built-in monitor's vmlinux files are cached when they cannot be kept beside their bzImage. */
  get kernelCacheDir(): string {
    return join(this.root, 'kernel-cache');
  }

  /** VMs started by this process that have not ended. */
  running(): VmWorkload[] {
    return [...this.#live];
  }

  /**
   * Runs an image's command in a new VM and returns once the VM has started
   * (qemu's process, or the built-in monitor's vCPUs; the guest boots on; {@link VmWorkload.timings} says when it was
   * ready). The command, env, workdir and user default from the image config
   * exactly as for a container. A command that is not in the image is refused
   * before anything boots, with the {@link SpawnError} a container gives
   * (`code` ENOENT or EACCES, `step` execve).
   */
  async run(image: Image | string, options: VmRunOptions = {}): Promise<VmWorkload> {
    const t0 = performance.now();
    checkPositive('cpus', options.cpus, 255);
    checkPositive('memoryMiB', options.memoryMiB, 1024 * 1024);
    checkPositive('timeoutMs', options.timeoutMs, 2 ** 31 - 1);
    checkPositive('bootTimeoutMs', options.bootTimeoutMs, 2 ** 31 - 1);
    const selection = chooseBackend(options.backend ?? 'auto');
    const kvm = selection.backend === 'kvm';
    if (kvm && options.memoryMiB !== undefined && (options.memoryMiB < VM_MEMORY_MIN_MIB || options.memoryMiB > VM_MEMORY_MAX_MIB)) {
      throw new InvalidArgumentError(`memoryMiB must be from ${VM_MEMORY_MIN_MIB} to ${VM_MEMORY_MAX_MIB} on the built-in monitor (backend 'kvm'), got ${options.memoryMiB}`);
    }
    const qemu = kvm ? undefined : findQemu(); // the built-in monitor needs no qemu
    const img = await this.images.get(image);
    const kernel = await findKernel({
      ...(options.kernel !== undefined ? { kernel: options.kernel } : {}),
      ...(options.kernelModules !== undefined ? { modulesDir: options.kernelModules } : {}),
    });
    // The monitor enters Linux through the PVH note of its ELF vmlinux (extracted once, cached).
    const vmlinux = kvm ? await kvmKernelImage(kernel.kernel, this.kernelCacheDir) : undefined;
    const channel = kvm ? KVM_GUEST_CHANNEL_DEVICE : GUEST_CHANNEL_DEVICE;
    const id = randomBytes(32).toString('hex');
    const short = id.slice(0, 12);
    const hostname = options.hostname ?? short;
    const lowerDirs = await img.lowerDirs(); // top layer first
    // The container's own spec logic: command, env (PATH, HOSTNAME, HOME), workdir, user.
    const spec = await buildSpec(
      img,
      {
        ...(options.cmd !== undefined ? { cmd: options.cmd } : {}),
        ...(options.entrypoint !== undefined ? { entrypoint: options.entrypoint } : {}),
        ...(options.env !== undefined ? { env: options.env } : {}),
        ...(options.workdir !== undefined ? { workdir: options.workdir } : {}),
        ...(options.user !== undefined ? { user: options.user } : {}),
        hostname,
        seccomp: 'unconfined',
      },
      { id, lowerDirs, etcFiles: { hosts: '/dev/null', hostname: '/dev/null', resolvConf: '/dev/null' } },
    );
    const proc = spec.process!;
    await this.#checkCommand(short, lowerDirs, proc.args, proc.env ?? []);

    const dir = join(this.root, id);
    await mkdir(this.root, { recursive: true });
    await mkdir(dir, { mode: 0o700 });
    let machine: VmMachine | undefined;
    try {
      const config = {
        argv: [...proc.args],
        env: [...(proc.env ?? [])],
        workdir: proc.cwd,
        uid: proc.user.uid,
        gid: proc.user.gid,
        groups: [...(proc.user.additionalGids ?? [])],
        hostname,
        stdin: options.stdin ?? false,
      };
      const memoryMiB = options.memoryMiB ?? 256;
      const layerBytes = img.layers.reduce((n, l) => n + l.size, 0);
      const useDisk =
        options.rootfs === 'disk' || ((options.rootfs ?? 'auto') === 'auto' && (layerBytes > DISK_THRESHOLD_BYTES || layerBytes > (memoryMiB * 1024 * 1024) / 4));
      let initramfs: { path: string; bytes: number };
      let disks: { path: string; readonly: boolean }[] = [];
      if (useDisk) {
        const disk = await this.#diskImage(img.digest, [...lowerDirs].reverse());
        const boot = await buildDiskBoot({
          rootfs: [...lowerDirs].reverse(),
          kernel,
          config,
          disk,
          reuseDisk: true,
          initramfs: join(dir, 'initramfs.cpio.gz'),
          channel,
        });
        initramfs = { path: boot.initramfs, bytes: boot.initramfsBytes };
        disks = [{ path: boot.disk, readonly: true }];
      } else {
        initramfs = await buildInitramfs({
          rootfs: [...lowerDirs].reverse(), // the builder takes the top layer last
          kernel,
          config,
          out: join(dir, 'initramfs.cpio.gz'),
          channel,
          cache: { dir: this.cacheDir, key: img.digest },
        });
      }
      const common = {
        initrd: initramfs.path,
        ...(disks.length ? { disks } : {}),
        ...(options.cmdline !== undefined ? { cmdline: options.cmdline } : {}),
        cpus: options.cpus ?? 1,
        memoryMiB,
        channel: true,
      };
      machine = kvm
        ? await KvmMachine.start({ ...common, kernel: vmlinux! })
        : await QemuMachine.start({ ...common, qemu: qemu!, kernel: kernel.kernel, ...(selection.accel ? { accel: selection.accel } : {}) });
      // The monitor runs in this process: its "VM process" is this one, and the VM is gone when it is.
      const state: VmStateFile = {
        id,
        image: img.digest,
        created: new Date().toISOString(),
        backend: selection.label,
        pid: machine.pid ?? process.pid,
        parentPid: process.pid,
      };
      await writeFile(join(dir, 'state.json'), JSON.stringify(state, null, 2));
      const vm = new VmWorkload({
        id,
        dir,
        machine,
        backend: selection.backend,
        ...(selection.accel ? { accel: selection.accel } : {}),
        label: selection.label,
        backendReason: selection.reason,
        cpus: options.cpus ?? 1,
        initramfs: { path: initramfs.path, bytes: initramfs.bytes },
        autoRemove: options.autoRemove ?? true,
        stdin: options.stdin ?? false,
        bootTimeoutMs: options.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS,
        ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        ...(kvm ? { poweroffGraceMs: KVM_POWEROFF_GRACE_MS } : {}),
        t0,
        onEnd: (v) => this.#forget(v),
      });
      this.#track(vm);
      return vm;
    } catch (err) {
      if (machine) {
        machine.kill('SIGKILL');
        await machine.wait().catch(() => undefined);
      }
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * The image's erofs disk, written once per image (to a temporary name, then
   * renamed, so VMs starting together never see half a disk).
   */
  async #diskImage(digest: string, layers: readonly string[]): Promise<string> {
    const dir = join(this.root, 'disk-cache');
    await mkdir(dir, { recursive: true });
    const path = join(dir, `${digest.replace(/^sha256:/, '')}.erofs`);
    if (await stat(path).then(() => true, () => false)) return path;
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeErofsImage(tmp, layers);
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
    return path;
  }

  /** Refuses, as execve in a container would, a command the image does not have. */
  async #checkCommand(short: string, layers: readonly string[], argv: readonly string[], env: readonly string[]): Promise<void> {
    const file = argv[0]!;
    let kind: Awaited<ReturnType<typeof lookupInImage>>;
    if (file.includes('/')) {
      if (!posix.isAbsolute(file)) return; // relative to the workdir: the guest init checks it
      kind = await lookupInImage(layers, file);
    } else {
      const path = env.find((e) => e.startsWith('PATH='))?.slice(5) ?? '';
      kind = 'missing';
      for (const d of path.split(':').filter((p) => p.startsWith('/'))) {
        const k = await lookupInImage(layers, posix.join(d, file));
        if (k === 'executable') return;
        if (k !== 'missing') kind = k;
      }
    }
    if (kind === 'executable') return;
    const code = kind === 'missing' ? 'ENOENT' : 'EACCES';
    const what = kind === 'missing' ? (file.includes('/') ? 'no such file or directory' : "not found in the image's PATH") : kind === 'dir' ? 'is a directory' : 'not executable';
    throw new SpawnError(`vm ${short}: cannot run '${file}': ${code}: ${what}`, {
      code,
      errno: code === 'ENOENT' ? -2 : -13,
      syscall: 'execve',
      step: 'execve',
      path: file,
    });
  }

  #track(vm: VmWorkload): void {
    this.#live.add(vm);
    if (!this.#exitHook) {
      // qemu dies with this process (PR_SET_PDEATHSIG), and the built-in
      // monitor's VMs are threads of it (no pid here: never signal ourselves);
      // on a normal exit, also take the VMs' state directories with it.
      this.#exitHook = () => {
        for (const v of this.#live) {
          const pid = v.pid;
          if (pid !== undefined) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // gone
            }
          }
          rmSync(v.dir, { recursive: true, force: true });
        }
      };
      process.on('exit', this.#exitHook);
    }
  }

  #forget(vm: VmWorkload): void {
    this.#live.delete(vm);
    if (this.#live.size === 0 && this.#exitHook) {
      process.off('exit', this.#exitHook);
      this.#exitHook = undefined;
    }
  }

  /**
   * Removes the state directories of VMs whose process is gone (a Node
   * process that was killed cannot clean up after itself). Returns their ids.
   * A VM of the built-in monitor records the Node process as its own (pid =
   * parentPid): it is gone exactly when that process is.
   */
  async prune(): Promise<string[]> {
    const removed: string[] = [];
    const mine = new Set(this.running().map((v) => v.id));
    for (const id of await readdir(this.root).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{64}$/.test(id) || mine.has(id)) continue;
      const dir = join(this.root, id);
      const state = await readFile(join(dir, 'state.json'), 'utf8')
        .then((t) => JSON.parse(t) as VmStateFile)
        .catch(() => undefined);
      if (state && processAlive(state.parentPid) && processAlive(state.pid)) continue;
      // No state file yet: maybe another process is creating it right now.
      if (!state && Date.now() - ((await lstat(dir).catch(() => undefined))?.mtimeMs ?? 0) < 60_000) continue;
      await rm(dir, { recursive: true, force: true });
      removed.push(id);
    }
    return removed;
  }

  /**
   * Removes the per-image initramfs archives and erofs disks of images not in
   * `images` (manifest digests). Returns the bytes freed. `Runtime.prune` calls it.
   */
  async pruneCaches(images: ReadonlySet<string>): Promise<number> {
    const keep = new Set([...images].map((d) => d.replace(/[^A-Za-z0-9_.-]/g, '-')));
    let freed = 0;
    for (const [dir, owner] of [
      [this.cacheDir, (f: string) => f.split('.')[0]!],
      [join(this.root, 'disk-cache'), (f: string) => `sha256-${f.split('.')[0]!}`],
    ] as const) {
      for (const f of await readdir(dir).catch(() => [] as string[])) {
        if (keep.has(owner(f)) && !f.endsWith('.tmp')) continue;
        const path = join(dir, f);
        const st = await stat(path).catch(() => undefined);
        // a .tmp younger than a minute is another process writing it now
        if (!st || (f.endsWith('.tmp') && Date.now() - st.mtimeMs < 60_000)) continue;
        await rm(path, { force: true });
        freed += st.size;
      }
    }
    return freed;
  }
}
