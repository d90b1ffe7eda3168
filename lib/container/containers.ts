/**
 * The container service (`rt.containers`): create, run, find, list and prune
 * containers kept under `<root>/containers/<id>`.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors';
import type { Image } from '../image/image';
import type { ImageService } from '../image/images';
import { FileLock } from '../store/lock';
import { writeSmallFileAtomicSync } from '../store/atomic';
import { Container } from './container';
import type { ContainerOptions } from './options';
import { ensureInitLayer } from './rootfs';
import { buildSpec } from './spec';
import { type ContainerState, readState, statePaths } from './state';

/** Options of `rt.containers.list`. */
export interface ListContainersOptions {
  /** Include created and exited containers (like `docker ps -a`). Default: running and paused only. */
  all?: boolean;
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

function hostsFile(hostname: string, network: 'none' | 'host'): string {
  const base = '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n';
  return network === 'host' ? base : `${base}127.0.1.1\t${hostname}\n`;
}

async function resolvConf(network: 'none' | 'host'): Promise<string> {
  if (network === 'none') return ''; // no network: nothing to resolve with
  return readFile('/etc/resolv.conf', 'utf8').catch(() => '');
}

/** Containers of one runtime. */
export class ContainerService {
  /** `<root>/containers`. */
  readonly root: string;
  /** The image service containers are made from. @internal */
  readonly images: ImageService;
  readonly #lock: FileLock;
  readonly #stdinWanted = new Set<string>();
  #rootMade = false;
  readonly #initDir: string;
  #init: Promise<string> | undefined;

  /** @internal */
  constructor(root: string, images: ImageService, initDir: string) {
    this.root = root;
    this.images = images;
    this.#initDir = initDir;
    this.#lock = new FileLock(join(root, '.lock'));
  }

  /** The shared init layer's directory (mount points every container needs). @internal */
  initLayer(): Promise<string> {
    this.#init ??= ensureInitLayer(this.#initDir);
    return this.#init;
  }

  /** @internal Whether `create` asked for stdin. */
  keepStdin(id: string): boolean {
    return this.#stdinWanted.has(id);
  }

  /**
   * Creates a container from an image (object, reference or digest) without
   * starting it. Checks everything that can be checked before start: the
   * image, the command, the user, volume sources, limits, the name.
   */
  async create(image: Image | string, options: ContainerOptions = {}): Promise<Container> {
    const img = await this.images.get(image);
    if (process.geteuid?.() !== 0 && options.userns === undefined) {
      // Rootless: root inside is this user outside (a single-id mapping: no
      // /etc/subuid needed), in a user namespace that owns every other namespace.
      const uid = process.geteuid?.() ?? 0;
      const gid = process.getegid?.() ?? 0;
      options = { ...options, userns: { uidMap: [{ containerId: 0, hostId: uid, size: 1 }], gidMap: [{ containerId: 0, hostId: gid, size: 1 }] } };
    }
    if (options.name !== undefined && !NAME.test(options.name)) {
      throw new InvalidArgumentError(`invalid container name '${options.name}' (letters, digits, _ . -)`);
    }
    if (!this.#rootMade) {
      await mkdir(this.root, { recursive: true });
      this.#rootMade = true;
    }
    const id = randomBytes(32).toString('hex');
    const dir = join(this.root, id);
    const paths = statePaths(dir);
    const lowerDirs = [await this.initLayer(), ...(await img.lowerDirs())];
    const hostname = options.hostname ?? id.slice(0, 12);
    const network = options.network ?? 'none';
    const spec = await buildSpec(img, options, {
      id,
      lowerDirs,
      etcFiles: { hosts: paths.hosts, hostname: paths.hostname, resolvConf: paths.resolvConf },
    });
    const state: ContainerState = {
      id,
      ...(options.name !== undefined ? { name: options.name } : {}),
      image: img.digest,
      imageRef: typeof image === 'string' ? image : (img.tags[0] ?? img.digest),
      created: new Date().toISOString(),
      status: 'created',
      labels: { ...(options.labels ?? {}) },
      autoRemove: options.autoRemove ?? false,
      detached: options.detach ?? false,
      tty: options.tty ?? false,
      ...(options.stdin ? { openStdin: true } : {}),
      stopSignal: options.stopSignal ?? ((img.config.StopSignal as NodeJS.Signals | undefined) || 'SIGTERM'),
    };
    const resolv = await resolvConf(network);
    // A handful of small files: written synchronously, each a system call
    // rather than a thread-pool round trip (this is most of what create costs).
    const write = () => {
      mkdirSync(dir, { mode: 0o711 });
      try {
        for (const d of [paths.rootfs, paths.upper, paths.work]) mkdirSync(d, { mode: 0o755 });
        writeFileSync(paths.hosts, hostsFile(hostname, network));
        writeFileSync(paths.hostname, `${hostname}\n`);
        writeFileSync(paths.resolvConf, resolv);
        writeSmallFileAtomicSync(paths.config, JSON.stringify(spec));
        writeSmallFileAtomicSync(paths.state, JSON.stringify(state, null, 2));
      } catch (err) {
        rmSync(dir, { recursive: true, force: true });
        throw err;
      }
    };
    if (options.name === undefined) {
      write(); // a fresh random id: nothing to check against other creators
    } else {
      await this.#lock.with('exclusive', async () => {
        for (const other of await this.#states()) {
          if (other.name === options.name) throw new ConflictError(`the name '${options.name}' is in use by container ${other.id.slice(0, 12)}`);
        }
        write();
      });
    }
    if (options.stdin) this.#stdinWanted.add(id);
    return new Container(this, state, { spec, image: img, lowerDirs });
  }

  /** Creates and starts a container. With `autoRemove`, it is removed once it exits. */
  async run(image: Image | string, options: ContainerOptions = {}): Promise<Container> {
    const c = await this.create(image, options);
    try {
      await c.start();
    } catch (err) {
      if (options.autoRemove) await c.remove({ force: true }).catch(() => undefined);
      throw err;
    }
    return c;
  }

  async #states(): Promise<ContainerState[]> {
    const out: ContainerState[] = [];
    for (const id of await readdir(this.root).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{64}$/.test(id)) continue;
      const state = await readState(join(this.root, id)).catch(() => undefined);
      if (state) out.push(state);
    }
    return out;
  }

  /** A container by id, unique id prefix, or name. */
  async get(idOrName: string): Promise<Container> {
    const states = await this.#states();
    const byName = states.find((s) => s.name === idOrName);
    if (byName) return this.#open(byName);
    const matches = /^[0-9a-f]+$/.test(idOrName) ? states.filter((s) => s.id.startsWith(idOrName)) : [];
    if (matches.length === 1) return this.#open(matches[0]!);
    if (matches.length > 1) throw new ConflictError(`'${idOrName}' matches ${matches.length} containers; give more of the id`);
    throw new NotFoundError(`no container '${idOrName}' in ${this.root}`);
  }

  async #open(state: ContainerState): Promise<Container> {
    const c = new Container(this, state);
    await c.refresh();
    return c;
  }

  /** Containers, newest first: running and paused ones, or all with `{ all: true }` (even after their creator exited). */
  async list(options: ListContainersOptions = {}): Promise<Container[]> {
    const out: Container[] = [];
    for (const state of await this.#states()) {
      const c = await this.#open(state).catch(() => undefined);
      if (!c) continue;
      if (options.all || c.status === 'running' || c.status === 'paused') out.push(c);
    }
    return out.sort((a, b) => b.state.created.localeCompare(a.state.created));
  }

  /** Removes every exited container; returns their ids. */
  async prune(): Promise<string[]> {
    const removed: string[] = [];
    for (const c of await this.list({ all: true })) {
      if (c.status !== 'exited') continue;
      await c.remove();
      removed.push(c.id);
    }
    return removed;
  }

  /** Image digests that containers (in any state) use: prune keeps them. @internal */
  async imagesInUse(): Promise<Set<string>> {
    return new Set((await this.#states()).map((s) => s.image));
  }
}
