/**
 * The Dockerfile builder: plans the stages a target needs, then runs each step — RUN in a
 * nacelle container on the previous step's image, COPY/ADD by staging the selected files,
 * everything else as a config change — reusing cached steps where the key matches.
 * @module
 */
import { createWriteStream, type Stats } from 'node:fs';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, posix, resolve } from 'node:path';
import type { ContainerService } from '../container/containers';
import { statePaths } from '../container/state';
import { InvalidArgumentError, NacelleError, NotFoundError } from '../errors';
import type { Image } from '../image/image';
import type { ImageService } from '../image/images';
import { hostArchitecture } from '../image/images';
import { Layer } from '../image/layer';
import { packChanges } from '../image/tar/diff';
import type { ContainerConfig, HealthcheckConfig, HistoryEntry, ImageConfig } from '../oci/types';
import { type BuildCache, stepKey } from './cache';
import {
  type CopyItem,
  type ImageView,
  hashItems,
  isLocalArchive,
  makeStepDir,
  openImageView,
  resolveInRoot,
  selectSources,
  stageItems,
} from './context';
import { IgnoreMatcher } from './dockerignore';
import { ExpandError, expandWord, expandWords, parseKeyValues, type VariableLookup } from './expand';
import { INSTRUCTIONS, parseDockerfile, parseJsonArray, type Stage, type StagedDockerfile, splitStages } from './parser';
import { type BuildOptions, type BuildProgress, type BuildStepInfo, BuildStepError, DockerfileError, type Instruction } from './types';

/** What the builder needs from a runtime. */
export interface BuilderServices {
  /** Images: bases, results, tags. */
  images: ImageService;
  /** Containers: RUN steps. */
  containers: ContainerService;
  /** The step cache. */
  cache: BuildCache;
}

const DEFAULT_SHELL = ['/bin/sh', '-c'];
/** How much RUN output an error message keeps. */
const OUTPUT_TAIL = 8192;

/** Builds images from Dockerfiles. Use it through `rt.images.build`. */
export class Builder {
  readonly #services: BuilderServices;

  /** @param services - the runtime's image and container services and the cache */
  constructor(services: BuilderServices) {
    this.#services = services;
  }

  /**
   * Builds `contextDir` with its Dockerfile.
   * @throws {@link DockerfileError} for a bad Dockerfile (with the line), a missing base image or stage, a source outside the context
   * @throws {@link BuildStepError} when a RUN step fails (nothing is tagged)
   */
  async build(contextDir: string, options: BuildOptions = {}): Promise<Image> {
    const context = resolve(contextDir);
    const st = await stat(context).catch(() => undefined);
    if (!st?.isDirectory()) throw new NotFoundError(`build context ${context} is not a directory`);
    const dockerfilePath = options.dockerfile === undefined ? join(context, 'Dockerfile') : isAbsolute(options.dockerfile) ? options.dockerfile : join(context, options.dockerfile);
    const text = await readFile(dockerfilePath, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new NotFoundError(`no Dockerfile at ${dockerfilePath}`, { cause: err });
      throw err;
    });
    const file = splitStages(parseDockerfile(text));
    // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore` (as BuildKit does)
    const ignoreText =
      (await readFile(`${dockerfilePath}.dockerignore`, 'utf8').catch(() => undefined)) ??
      (await readFile(join(context, '.dockerignore'), 'utf8').catch(() => undefined)) ??
      '';
    return new BuildRun(this.#services, context, file, IgnoreMatcher.parse(ignoreText), options).execute();
  }
}

/** A stage's running state: the image so far and what only the builder tracks. */
interface StageState {
  stage: Stage;
  label: string;
  image: Image | null;
  config: ContainerConfig;
  /** Build arguments declared in this stage, with their values. */
  args: Map<string, string>;
  /** Whether CMD was set in this stage (ENTRYPOINT then keeps it). */
  cmdSet: boolean;
  os: string;
  architecture: string;
}

/** What a COPY --from or FROM refers to, resolved before the build. */
type Ref = { kind: 'stage'; index: number } | { kind: 'image'; ref: string } | { kind: 'scratch' };

function envGet(env: readonly string[] | undefined, name: string): string | undefined {
  for (const e of env ?? []) {
    const eq = e.indexOf('=');
    if ((eq < 0 ? e : e.slice(0, eq)) === name) return eq < 0 ? '' : e.slice(eq + 1);
  }
  return undefined;
}

function envSet(env: readonly string[] | undefined, name: string, value: string): string[] {
  const out = [...(env ?? [])];
  const i = out.findIndex((e) => e === name || e.startsWith(`${name}=`));
  if (i >= 0) out[i] = `${name}=${value}`;
  else out.push(`${name}=${value}`);
  return out;
}

/** Go's time.ParseDuration, in nanoseconds. */
function parseDuration(text: string): number | undefined {
  const units: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let pos = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * units[m[2]!]!;
    pos = re.lastIndex;
  }
  return pos === text.length && pos > 0 ? Math.round(total) : undefined;
}

class BuildRun {
  readonly #s: BuilderServices;
  readonly #context: string;
  readonly #file: StagedDockerfile;
  readonly #ignore: IgnoreMatcher;
  readonly #options: BuildOptions;
  readonly #buildArgs: Readonly<Record<string, string>>;
  readonly #created: string;
  readonly #globals = new Map<string, string | undefined>();
  readonly #usedArgs = new Set<string>();
  readonly #results = new Map<number, Image | null>();
  #step = 0;
  #steps = 0;

  constructor(services: BuilderServices, context: string, file: StagedDockerfile, ignore: IgnoreMatcher, options: BuildOptions) {
    this.#s = services;
    this.#context = context;
    this.#file = file;
    this.#ignore = ignore;
    this.#options = options;
    this.#buildArgs = options.buildArgs ?? {};
    this.#created = options.created ?? new Date().toISOString();
  }

  #progress(event: BuildProgress): void {
    this.#options.onProgress?.(event);
  }

  #expand(word: string, lookup: VariableLookup, ins: Instruction): string {
    try {
      return expandWord(word, lookup, this.#file.escape);
    } catch (err) {
      throw this.#expandError(err, ins);
    }
  }

  #expandAll(text: string, lookup: VariableLookup, ins: Instruction): string[] {
    try {
      return expandWords(text, lookup, this.#file.escape);
    } catch (err) {
      throw this.#expandError(err, ins);
    }
  }

  #expandError(err: unknown, ins: Instruction): unknown {
    if (!(err instanceof ExpandError)) return err;
    return new DockerfileError(`${ins.keyword}: ${err.message}`, { line: ins.line, column: ins.column + err.offset, code: err.code });
  }

  /** BuildKit's automatic platform ARGs: visible in FROM lines, and in a stage that declares them. */
  readonly #automatic: ReadonlyMap<string, string> = (() => {
    const arch = hostArchitecture();
    const platform = `linux/${arch}`;
    return new Map([
      ['TARGETPLATFORM', platform],
      ['TARGETOS', 'linux'],
      ['TARGETARCH', arch],
      ['TARGETVARIANT', ''],
      ['BUILDPLATFORM', platform],
      ['BUILDOS', 'linux'],
      ['BUILDARCH', arch],
      ['BUILDVARIANT', ''],
    ]);
  })();

  #globalLookup: VariableLookup = (name) => (this.#globals.has(name) ? this.#globals.get(name) : this.#automatic.get(name));

  /** The variables a stage's instructions see: its ENV (which wins) and its declared ARGs. */
  #stageLookup(state: StageState): VariableLookup {
    return (name) => envGet(state.config.Env, name) ?? state.args.get(name);
  }

  async execute(): Promise<Image> {
    const file = this.#file;
    for (const ins of file.globalArgs) {
      const kvs = parseKeyValues(ins.args, 'ARG', file.escape);
      if (typeof kvs === 'string') throw new DockerfileError(kvs, { line: ins.line, column: ins.column });
      for (const kv of kvs) {
        this.#usedArgs.add(kv.key);
        const given = Object.hasOwn(this.#buildArgs, kv.key) ? this.#buildArgs[kv.key] : undefined;
        this.#globals.set(kv.key, given ?? (kv.value === undefined ? undefined : this.#expand(kv.value, this.#globalLookup, ins)));
      }
    }
    const bases = file.stages.map((s) => this.#resolveBase(s));
    const target = this.#targetStage();
    const order = this.#plan(target, bases);
    this.#steps = order.reduce((n, i) => n + 1 + file.stages[i]!.instructions.length, 0);
    for (const i of order) this.#results.set(i, await this.#runStage(file.stages[i]!, bases[i]!));
    for (const name of Object.keys(this.#buildArgs)) {
      if (!this.#usedArgs.has(name)) this.#progress({ kind: 'warning', message: `build argument ${name} was given but no ARG in the built stages declares it` });
    }
    let result = this.#results.get(target) ?? null;
    if (!result) result = await this.#emptyImage(file.stages[target]!);
    const tags = this.#options.tag === undefined ? [] : typeof this.#options.tag === 'string' ? [this.#options.tag] : this.#options.tag;
    for (const tag of tags) result = await this.#s.images.tag(result, tag);
    // the result is an image of its own, not a step's: listed even untagged
    if (tags.length === 0) await this.#s.images.record(result.digest, result.manifest);
    return result;
  }

  #targetStage(): number {
    const stages = this.#file.stages;
    const target = this.#options.target;
    if (target === undefined) return stages.length - 1;
    const found = stages.find((s) => s.name === target.toLowerCase());
    if (!found) {
      const names = stages.map((s) => s.name).filter(Boolean);
      throw new InvalidArgumentError(`target stage '${target}' is not in the Dockerfile${names.length ? ` (stages: ${names.join(', ')})` : ' (no stage is named)'}`, { code: 'ERR_BUILD_NO_SUCH_STAGE' });
    }
    return found.index;
  }

  /** What a FROM or `--from` names: a stage (by name, or by index for `--from`), scratch, or an image. */
  #refer(name: string, allowIndex: boolean): Ref {
    const lower = name.toLowerCase();
    if (lower === 'scratch') return { kind: 'scratch' };
    const stage = this.#file.stages.find((s) => s.name === lower);
    if (stage) return { kind: 'stage', index: stage.index };
    if (allowIndex && /^\d+$/.test(name)) {
      const index = Number(name);
      if (index < this.#file.stages.length) return { kind: 'stage', index };
    }
    return { kind: 'image', ref: name };
  }

  #resolveBase(stage: Stage): Ref {
    const base = this.#expand(stage.base, this.#globalLookup, stage.from);
    if (base.trim() === '') {
      throw new DockerfileError(`FROM ${stage.base}: the base image name is empty (is a global ARG missing a value?)`, { line: stage.from.line, column: stage.from.column, code: 'ERR_BUILD_ARG_REQUIRED' });
    }
    return this.#refer(base, false);
  }

  /** The `--from` of a COPY, resolved against the stages. */
  #copyFrom(ins: Instruction): Ref | undefined {
    const from = ins.flags.from;
    if (from === undefined) return undefined;
    if (from === true || from === '') throw new DockerfileError('COPY --from needs a stage name, index or image', { line: ins.line, column: ins.column });
    return this.#refer(this.#expand(from, this.#globalLookup, ins), true);
  }

  /** The stages the target needs, dependencies first. */
  #plan(target: number, bases: readonly Ref[]): number[] {
    const order: number[] = [];
    const state = new Map<number, 'visiting' | 'done'>();
    const path: string[] = [];
    const label = (i: number): string => this.#file.stages[i]!.name ?? String(i);
    const visit = (i: number, via: Instruction | undefined): void => {
      const s = state.get(i);
      if (s === 'done') return;
      if (s === 'visiting') {
        throw new DockerfileError(`circular dependency between stages: ${[...path, label(i)].join(' -> ')}`, { line: via?.line ?? 1, code: 'ERR_BUILD_STAGE_CYCLE' });
      }
      state.set(i, 'visiting');
      path.push(label(i));
      const stage = this.#file.stages[i]!;
      const base = bases[i]!;
      if (base.kind === 'stage') visit(base.index, stage.from);
      for (const ins of stage.instructions) {
        if (ins.keyword !== 'COPY') continue;
        const from = this.#copyFrom(ins);
        if (from?.kind === 'stage') visit(from.index, ins);
      }
      path.pop();
      state.set(i, 'done');
      order.push(i);
    };
    visit(target, undefined);
    return order;
  }

  #info(state: StageState, ins: Instruction, instruction: string): BuildStepInfo {
    return { stage: state.label, step: this.#step, steps: this.#steps, line: ins.line, instruction };
  }

  async #runStage(stage: Stage, base: Ref): Promise<Image | null> {
    const started = Date.now();
    this.#step++;
    let image: Image | null = null;
    if (base.kind === 'stage') {
      image = this.#results.get(base.index) ?? null;
    } else if (base.kind === 'image') {
      image = await this.#s.images.get(base.ref).catch((err: unknown) => {
        if (err instanceof NacelleError && (err.code === 'ERR_NOT_FOUND' || err.code === 'ERR_INVALID_REFERENCE')) {
          throw new DockerfileError(`FROM ${base.ref}: no such image in the store (builds do not pull; pull or import it first)`, {
            line: stage.from.line,
            column: stage.from.column,
            code: 'ERR_NOT_FOUND',
            cause: err,
          });
        }
        throw err;
      });
    }
    const state: StageState = {
      stage,
      label: stage.name ?? String(stage.index),
      image,
      config: structuredClone(image?.config ?? {}),
      args: new Map(),
      cmdSet: false,
      os: image?.os ?? 'linux',
      architecture: image?.architecture ?? hostArchitecture(),
    };
    const platform = stage.from.flags.platform;
    if (typeof platform === 'string') {
      // recorded, not acted on: nacelle builds for the base image's platform
      const wanted = this.#expand(platform, this.#globalLookup, stage.from);
      const [os, arch] = wanted.split('/');
      if ((os && os !== state.os) || (arch && arch !== state.architecture)) {
        this.#progress({ kind: 'warning', message: `FROM --platform=${wanted}: the base is ${state.os}/${state.architecture}; building for that`, line: stage.from.line });
      }
    }
    if (image?.config.OnBuild?.length) {
      this.#progress({ kind: 'warning', message: `the base image has ONBUILD triggers (${image.config.OnBuild.join('; ')}); nacelle records ONBUILD but does not run triggers`, line: stage.from.line });
    }
    const baseName = base.kind === 'image' ? base.ref : base.kind === 'stage' ? (this.#file.stages[base.index]!.name ?? String(base.index)) : 'scratch';
    const fromText = `FROM ${baseName}${stage.name ? ` AS ${stage.name}` : ''}`;
    this.#progress({ kind: 'step', ...this.#info(state, stage.from, fromText), status: 'cached', image: image?.digest ?? null, ms: Date.now() - started });
    for (const ins of stage.instructions) {
      this.#step++;
      await this.#instruction(state, ins);
    }
    return state.image;
  }

  /** A stage that is only `FROM scratch`: an image without layers. */
  async #emptyImage(stage: Stage): Promise<Image> {
    const doc: ImageConfig = { created: this.#created, architecture: hostArchitecture(), os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] }, history: [] };
    return this.#s.images.commit(doc, [], { history: { created: this.#created, created_by: `FROM ${stage.base}`, empty_layer: true } }, undefined, { intermediate: true });
  }

  // ------------------------------------------------------------------ steps

  async #instruction(state: StageState, ins: Instruction): Promise<void> {
    const lookup = this.#stageLookup(state);
    const config = structuredClone(state.config);
    const fail = (message: string, code?: string): never => {
      throw new DockerfileError(message, { line: ins.line, column: ins.column, ...(code ? { code } : {}) });
    };
    switch (ins.keyword) {
      case 'ARG': {
        const kvs = parseKeyValues(ins.args, 'ARG', this.#file.escape);
        if (typeof kvs === 'string') return fail(kvs);
        const parts: string[] = [];
        for (const kv of kvs) {
          this.#usedArgs.add(kv.key);
          let value: string | undefined;
          if (Object.hasOwn(this.#buildArgs, kv.key)) value = this.#buildArgs[kv.key];
          else if (kv.value !== undefined) value = this.#expand(kv.value, lookup, ins);
          else if (this.#globals.has(kv.key)) value = this.#globals.get(kv.key);
          else value = this.#automatic.get(kv.key);
          if (value !== undefined) state.args.set(kv.key, value);
          else state.args.delete(kv.key);
          parts.push(value === undefined ? kv.key : `${kv.key}=${value}`);
        }
        return this.#meta(state, ins, `ARG ${parts.join(' ')}`, config);
      }
      case 'ENV':
      case 'LABEL': {
        const kvs = parseKeyValues(ins.args, ins.keyword, this.#file.escape);
        if (typeof kvs === 'string') return fail(kvs);
        const parts: string[] = [];
        // every pair is expanded with the values from before this instruction, as Docker does
        const pairs = kvs.map((kv) => [this.#expand(kv.key, lookup, ins), this.#expand(kv.value ?? '', lookup, ins)] as const);
        for (const [key, value] of pairs) {
          if (key === '') return fail(`${ins.keyword} has an empty name`);
          if (ins.keyword === 'ENV') config.Env = envSet(config.Env, key, value);
          else config.Labels = { ...(config.Labels ?? {}), [key]: value };
          parts.push(`${key}=${value}`);
        }
        return this.#meta(state, ins, `${ins.keyword} ${parts.join(' ')}`, config);
      }
      case 'MAINTAINER': {
        const who = ins.args.trim();
        return this.#meta(state, ins, `MAINTAINER ${who}`, config, who);
      }
      case 'EXPOSE': {
        const ports: string[] = [];
        for (const word of this.#expandAll(ins.args, lookup, ins)) {
          const m = /^(\d+)(?:-(\d+))?(?:\/(tcp|udp|sctp))?$/i.exec(word);
          if (!m) return fail(`EXPOSE: invalid port '${word}' (port, port/proto or low-high/proto)`);
          const low = Number(m[1]);
          const high = m[2] === undefined ? low : Number(m[2]);
          if (high < low || high > 65535) return fail(`EXPOSE: invalid port range '${word}'`);
          const proto = (m[3] ?? 'tcp').toLowerCase();
          for (let p = low; p <= high; p++) ports.push(`${p}/${proto}`);
        }
        config.ExposedPorts = { ...(config.ExposedPorts ?? {}) };
        for (const p of ports) config.ExposedPorts[p] = {};
        return this.#meta(state, ins, `EXPOSE ${ports.join(' ')}`, config);
      }
      case 'VOLUME': {
        const volumes = ins.json ? ins.json.map((v) => this.#expand(v, lookup, ins)) : this.#expandAll(ins.args, lookup, ins);
        if (volumes.length === 0 || volumes.some((v) => v.trim() === '')) return fail('VOLUME needs non-empty paths');
        config.Volumes = { ...(config.Volumes ?? {}) };
        for (const v of volumes) config.Volumes[v] = {};
        return this.#meta(state, ins, `VOLUME [${volumes.join(' ')}]`, config);
      }
      case 'USER': {
        const user = this.#expand(ins.args.trim(), lookup, ins);
        if (user === '') return fail('USER needs a user');
        config.User = user;
        return this.#meta(state, ins, `USER ${user}`, config);
      }
      case 'WORKDIR': {
        const dir = this.#expand(ins.args.trim(), lookup, ins);
        if (dir === '') return fail('WORKDIR needs a path');
        config.WorkingDir = posix.resolve(config.WorkingDir || '/', dir);
        return this.#workdir(state, ins, config);
      }
      case 'STOPSIGNAL': {
        const signal = this.#expand(ins.args.trim(), lookup, ins);
        if (!/^(SIG[A-Z0-9+-]+|\d+)$/.test(signal)) return fail(`STOPSIGNAL: invalid signal '${signal}'`);
        config.StopSignal = signal;
        return this.#meta(state, ins, `STOPSIGNAL ${signal}`, config);
      }
      case 'SHELL': {
        if (!ins.json || ins.json.length === 0) return fail('SHELL needs its arguments in JSON form, e.g. SHELL ["/bin/sh", "-c"]');
        config.Shell = ins.json;
        return this.#meta(state, ins, `SHELL ${JSON.stringify(ins.json)}`, config);
      }
      case 'CMD':
      case 'ENTRYPOINT': {
        const argv = ins.json ?? [...(config.Shell ?? DEFAULT_SHELL), ins.args.trim()];
        if (ins.keyword === 'CMD') {
          config.Cmd = argv;
          state.cmdSet = true;
        } else {
          config.Entrypoint = argv;
          if (!state.cmdSet) delete config.Cmd; // a base image's CMD does not survive a new ENTRYPOINT
        }
        return this.#meta(state, ins, `${ins.keyword} ${JSON.stringify(argv)}`, config);
      }
      case 'HEALTHCHECK':
        config.Healthcheck = this.#healthcheck(ins);
        return this.#meta(state, ins, `HEALTHCHECK ${JSON.stringify(config.Healthcheck)}`, config);
      case 'ONBUILD': {
        const m = /^(\S+)([\s\S]*)$/.exec(ins.args.trim());
        const keyword = m?.[1]?.toUpperCase() ?? '';
        if (keyword === 'ONBUILD' || keyword === 'FROM' || keyword === 'MAINTAINER') return fail(`ONBUILD ${keyword} is not allowed`);
        if (!INSTRUCTIONS.has(keyword)) return fail(`ONBUILD: unknown instruction '${m?.[1] ?? ''}'`, 'ERR_DOCKERFILE_UNKNOWN_INSTRUCTION');
        const trigger = `${keyword}${m?.[2] ?? ''}`;
        config.OnBuild = [...(config.OnBuild ?? []), trigger];
        return this.#meta(state, ins, `ONBUILD ${trigger}`, config);
      }
      case 'RUN':
        return this.#run(state, ins);
      case 'COPY':
      case 'ADD':
        return this.#copy(state, ins);
      default:
        return fail(`instruction ${ins.keyword} is not allowed here`);
    }
  }

  #healthcheck(ins: Instruction): HealthcheckConfig {
    const args = ins.args.trim();
    const fail = (message: string): never => {
      throw new DockerfileError(message, { line: ins.line, column: ins.column });
    };
    if (args.toUpperCase() === 'NONE') {
      if (Object.keys(ins.flags).length > 0) fail('HEALTHCHECK NONE takes no options');
      return { Test: ['NONE'] };
    }
    const m = /^CMD(?:[ \t]+([\s\S]*))?$/i.exec(args);
    if (!m || !m[1]?.trim()) return fail('HEALTHCHECK needs NONE or CMD <command>');
    const json = parseJsonArray(m[1]);
    const hc: HealthcheckConfig = { Test: json ? ['CMD', ...json] : ['CMD-SHELL', m[1].trim()] };
    const durations: Array<[string, 'Interval' | 'Timeout' | 'StartPeriod' | 'StartInterval']> = [
      ['interval', 'Interval'],
      ['timeout', 'Timeout'],
      ['start-period', 'StartPeriod'],
      ['start-interval', 'StartInterval'],
    ];
    for (const [flag, field] of durations) {
      const v = ins.flags[flag];
      if (v === undefined) continue;
      const ns = typeof v === 'string' ? parseDuration(v) : undefined;
      if (ns === undefined) fail(`HEALTHCHECK --${flag}: '${String(v)}' is not a duration (like 30s, 1m30s, 500ms)`);
      if (ns! !== 0) hc[field] = ns!;
    }
    const retries = ins.flags.retries;
    if (retries !== undefined) {
      if (typeof retries !== 'string' || !/^\d+$/.test(retries)) fail(`HEALTHCHECK --retries: '${String(retries)}' is not a whole number`);
      if (Number(retries) !== 0) hc.Retries = Number(retries);
    }
    return hc;
  }

  /**
   * WORKDIR: a config change, plus a layer making the directory (0755, root) when the image
   * does not have it yet, as buildah and BuildKit do.
   */
  async #workdir(state: StageState, ins: Instruction, config: ContainerConfig): Promise<void> {
    const createdBy = `WORKDIR ${config.WorkingDir}`;
    const key = stepKey({ parent: this.#parentKey(state), instruction: createdBy });
    await this.#cached(state, ins, createdBy, key, async () => {
      const view = await openImageView(state.image);
      const staging = await makeStepDir('workdir');
      try {
        const path = await resolveInRoot(view.root, config.WorkingDir!, true);
        if (path === '/' || (await stat(`${view.root}${path}`).catch(() => undefined))) return await this.#next(state, { config, createdBy });
        const rootDir = join(staging, 'root');
        await mkdir(rootDir);
        await stageItems(rootDir, [], view.root, { mode: 0o755, uid: 0, gid: 0, mtime: new Date(this.#created) }, [path]);
        return await this.#next(state, { layer: await Layer.fromDirectory(rootDir), config, createdBy });
      } finally {
        await view.close().catch(() => undefined);
        await rm(staging, { recursive: true, force: true });
      }
    });
  }

  #parentKey(state: StageState): string {
    return state.image?.digest ?? `scratch:${state.os}/${state.architecture}`;
  }

  /** A metadata-only step: a new config and a history entry with `empty_layer`. */
  async #meta(state: StageState, ins: Instruction, createdBy: string, config: ContainerConfig, author?: string): Promise<void> {
    const key = stepKey({ parent: this.#parentKey(state), instruction: createdBy });
    await this.#cached(state, ins, createdBy, key, () => this.#next(state, { config, createdBy, ...(author ? { author } : {}) }));
  }

  /** Uses the cached result of `key`, or makes it and records it. */
  async #cached(state: StageState, ins: Instruction, createdBy: string, key: string, make: () => Promise<Image>): Promise<void> {
    const started = Date.now();
    const info = this.#info(state, ins, createdBy);
    let image: Image | undefined;
    if (!this.#options.noCache) {
      const digest = await this.#s.cache.get(key);
      if (digest) image = await this.#s.images.load(digest).catch(() => undefined); // pruned: a miss
    }
    const status = image ? 'cached' : 'built';
    if (!image) {
      image = await make();
      await this.#s.cache.set(key, image.digest);
    }
    state.image = image;
    state.config = structuredClone(image.config);
    this.#progress({ kind: 'step', ...info, status, image: image.digest, ms: Date.now() - started });
  }

  /** The image after a step: the stage's image (or nothing, for scratch) plus a layer and/or a new config. */
  async #next(state: StageState, change: { layer?: Layer; config: ContainerConfig; createdBy: string; author?: string }): Promise<Image> {
    const history = { created: this.#created, createdBy: change.createdBy, ...(change.author ? { author: change.author } : {}) };
    // keys the step removed must be present (as undefined) to be dropped by the merge in derive
    const config: Partial<ContainerConfig> = { ...change.config };
    for (const k of Object.keys(state.config) as Array<keyof ContainerConfig>) if (!(k in change.config)) config[k] = undefined;
    if (state.image) return this.#s.images.derive(state.image, { ...(change.layer ? { layer: change.layer } : {}), config, history, intermediate: true });
    const doc: ImageConfig = {
      created: this.#created,
      architecture: state.architecture,
      os: state.os,
      config: change.config,
      rootfs: { type: 'layers', diff_ids: [] },
      history: [],
    };
    const entry: HistoryEntry = { created: this.#created, created_by: change.createdBy, ...(change.author ? { author: change.author } : {}), ...(change.layer ? {} : { empty_layer: true }) };
    return this.#s.images.commit(doc, [], { ...(change.layer ? { layer: change.layer } : {}), history: entry }, undefined, { intermediate: true });
  }

  // ------------------------------------------------------------------ RUN

  async #run(state: StageState, ins: Instruction): Promise<void> {
    const fail = (message: string, code?: string): never => {
      throw new DockerfileError(message, { line: ins.line, column: ins.column, ...(code ? { code } : {}) });
    };
    if (ins.flags.mount !== undefined || ins.flags.security !== undefined) {
      fail(`RUN --${ins.flags.mount !== undefined ? 'mount' : 'security'} is not supported`, 'ERR_UNSUPPORTED');
    }
    const netFlag = ins.flags.network;
    let network: 'host' | 'none' = this.#options.network ?? 'host';
    if (netFlag !== undefined) {
      if (netFlag === 'none') network = 'none';
      else if (netFlag === 'host' || netFlag === 'default') network = 'host';
      else fail(`RUN --network=${String(netFlag)}: use none, host or default`);
    }
    const config = state.config;
    const argv = ins.json ?? [...(config.Shell ?? DEFAULT_SHELL), ins.args.trim()];
    if (argv.length === 0) fail('RUN needs a command');
    // declared build arguments are in the step's environment, under ENV of the same name
    const argEnv = [...state.args].filter(([k]) => envGet(config.Env, k) === undefined).map(([k, v]) => `${k}=${v}`).sort();
    const createdBy = `RUN ${argEnv.length ? `|${argEnv.length} ${argEnv.join(' ')} ` : ''}${argv.join(' ')}`;
    const key = stepKey({ parent: this.#parentKey(state), instruction: `${createdBy}\0network=${network}`, args: argEnv });
    await this.#cached(state, ins, createdBy, key, async () => {
      const image = state.image;
      if (!image) return fail('RUN in a stage with no files yet (FROM scratch): there is nothing to run');
      const info = this.#info(state, ins, createdBy);
      const c = await this.#s.containers.create(image, {
        cmd: argv,
        entrypoint: [],
        env: argEnv,
        ...(config.User ? { user: config.User } : {}),
        workdir: config.WorkingDir || '/',
        network,
      });
      const tmp = join(await makeStepDir('run'), 'layer.tar.gz');
      try {
        let output = '';
        const collect = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
          const data = chunk.toString();
          output = (output + data).slice(-OUTPUT_TAIL);
          this.#progress({ kind: 'output', ...info, stream, data });
        };
        const ended = Promise.all(
          (['stdout', 'stderr'] as const).map(
            (name) =>
              new Promise<void>((done) => {
                const s = c[name];
                s.on('data', collect(name));
                s.once('end', done);
                s.once('close', done);
                s.once('error', () => done());
              }),
          ),
        );
        await c.start();
        const exit = await c.wait();
        await Promise.race([ended, new Promise((r) => setTimeout(r, 2000).unref())]);
        if (exit.exitCode !== 0) throw new BuildStepError({ step: info, exitCode: exit.exitCode, output });
        const changes = await c.diff();
        if (changes.length === 0) return this.#next(state, { config, createdBy });
        await packChanges(statePaths(c.dir).upper, changes, createWriteStream(tmp));
        const layer = await Layer.fromTar(tmp);
        return await this.#next(state, { layer, config, createdBy });
      } finally {
        await c.remove({ force: true }).catch(() => undefined);
        await rm(join(tmp, '..'), { recursive: true, force: true });
      }
    });
  }

  // ------------------------------------------------------------------ COPY / ADD

  async #copy(state: StageState, ins: Instruction): Promise<void> {
    const fail = (message: string, code?: string): never => {
      throw new DockerfileError(message, { line: ins.line, column: ins.column, ...(code ? { code } : {}) });
    };
    const kw = ins.keyword;
    for (const flag of ['parents', 'exclude', 'checksum', 'keep-git-dir']) {
      if (ins.flags[flag] !== undefined) fail(`${kw} --${flag} is not supported`, 'ERR_UNSUPPORTED');
    }
    const lookup = this.#stageLookup(state);
    const words = ins.json ? ins.json.map((w) => this.#expand(w, lookup, ins)) : this.#expandAll(ins.args, lookup, ins);
    if (words.length < 2) fail(`${kw} needs at least one source and a destination`);
    const sources = words.slice(0, -1);
    const destRaw = words[words.length - 1]!;
    if (kw === 'ADD') {
      for (const s of sources) {
        if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(s) || /^git@/.test(s)) {
          fail(`ADD ${s}: remote sources (URLs, git) are not supported; download it into the build context and COPY it`, 'ERR_UNSUPPORTED');
        }
      }
    }
    const flagValue = (name: string): string | undefined => {
      const v = ins.flags[name];
      if (v === undefined) return undefined;
      if (v === true || v === '') return fail(`${kw} --${name} needs a value`);
      return this.#expand(v, lookup, ins);
    };
    const chown = flagValue('chown');
    const chmodText = flagValue('chmod');
    let chmod: number | undefined;
    if (chmodText !== undefined) {
      if (!/^[0-7]{3,4}$/.test(chmodText)) fail(`${kw} --chmod=${chmodText}: give octal permission bits like 755 or 0644`);
      chmod = parseInt(chmodText, 8);
    }
    const from = kw === 'COPY' ? this.#copyFrom(ins) : undefined;

    const views: ImageView[] = [];
    const staging = await makeStepDir('copy');
    try {
      const view = await openImageView(state.image);
      views.push(view);
      let root = this.#context;
      let what = 'build context';
      let fromKey = '';
      if (from) {
        let source: Image | null;
        if (from.kind === 'stage') {
          source = this.#results.get(from.index) ?? null;
          what = `stage ${this.#file.stages[from.index]!.name ?? from.index}`;
        } else if (from.kind === 'scratch') {
          source = null;
          what = 'scratch';
        } else {
          source = await this.#s.images.get(from.ref).catch((err: unknown) => {
            if (err instanceof NacelleError && (err.code === 'ERR_NOT_FOUND' || err.code === 'ERR_INVALID_REFERENCE')) {
              return fail(`COPY --from=${from.ref}: no stage is named so and no such image is in the store`, 'ERR_NOT_FOUND');
            }
            throw err;
          });
          what = `image ${from.ref}`;
        }
        const sourceView = await openImageView(source);
        views.push(sourceView);
        root = sourceView.root;
        fromKey = source?.digest ?? 'scratch';
      }
      const matches = await selectSources(root, sources, { ...(from ? {} : { ignore: this.#ignore }), what, line: ins.line, keyword: kw });

      const workdir = state.config.WorkingDir || '/';
      const destAbs = posix.resolve(workdir, destRaw);
      let destIsDir = destRaw.endsWith('/') || destRaw === '.' || destRaw.endsWith('/.');
      // resolve symlinks in the destination's parents inside the image (e.g. /bin -> usr/bin)
      let dest = destAbs === '/' ? '/' : posix.join(await resolveInRoot(view.root, posix.dirname(destAbs), true), posix.basename(destAbs));
      const existing = await stat(`${view.root}${dest}`).catch(() => undefined);
      if (existing?.isDirectory()) {
        destIsDir = true;
        dest = await resolveInRoot(view.root, dest, true);
      }
      if ((matches.length > 1 || sources.length > 1) && !destIsDir) {
        fail(`${kw} with more than one source needs a directory destination ending in '/' (got '${destRaw}')`);
      }
      const owner = chown === undefined ? (from ? undefined : { uid: 0, gid: 0 }) : await resolveOwner(view.root, chown).catch((err: Error) => fail(`${kw} --chown=${chown}: ${err.message}`));
      const items: CopyItem[] = [];
      /** Destinations of empty source directories: made, with nothing in them. */
      const newDirsOnly: string[] = [];
      const add = (abs: string, st: Stats, to: string, extract = false): void => {
        items.push({ abs, st, dest: to, mode: chmod ?? st.mode & 0o7777, uid: owner?.uid ?? st.uid, gid: owner?.gid ?? st.gid, ...(extract ? { extract } : {}) });
      };
      for (const match of matches) {
        const { base, below } = match;
        if (base.st.isDirectory()) {
          // a directory's contents go into the destination; a destination directory the copy
          // creates is made like any missing parent (0755, the --chown owner), as buildah does
          for (const e of below) add(e.abs, e.st, posix.join(dest, e.rel));
          if (below.length === 0 && dest !== '/') newDirsOnly.push(dest);
        } else {
          const name = posix.basename(base.rel || base.abs);
          if (kw === 'ADD' && base.st.isFile() && (await isLocalArchive(base.abs).catch((err: Error) => fail(err.message, 'ERR_UNSUPPORTED')))) {
            add(base.abs, base.st, dest, true);
          } else {
            add(base.abs, base.st, destIsDir ? posix.join(dest, name) : dest);
          }
        }
      }
      const fromName = from === undefined ? '' : from.kind === 'image' ? from.ref : from.kind === 'scratch' ? 'scratch' : (this.#file.stages[from.index]!.name ?? String(from.index));
      const flagsText = [from ? `--from=${fromName}` : '', chown !== undefined ? `--chown=${chown}` : '', chmodText !== undefined ? `--chmod=${chmodText}` : '']
        .filter(Boolean)
        .join(' ');
      const createdBy = `${kw} ${flagsText ? `${flagsText} ` : ''}${sources.join(' ')} ${destRaw}`;
      const contentHash = `${fromKey}:${await hashItems(items)}:${newDirsOnly.join(',')}`;
      const key = stepKey({ parent: this.#parentKey(state), instruction: createdBy, contentHash });
      await this.#cached(state, ins, createdBy, key, async () => {
        const rootDir = join(staging, 'root');
        await mkdir(rootDir);
        const time = new Date(this.#created);
        await stageItems(rootDir, items, view.root, { mode: 0o755, uid: owner?.uid ?? 0, gid: owner?.gid ?? 0, mtime: time }, newDirsOnly);
        const layer = await Layer.fromDirectory(rootDir);
        return this.#next(state, { layer, config: state.config, createdBy });
      });
    } finally {
      for (const v of views.reverse()) await v.close().catch(() => undefined);
      await rm(staging, { recursive: true, force: true });
    }
  }
}

/**
 * The numeric owner for `--chown=user[:group]`: names are looked up in the image's
 * /etc/passwd and /etc/group; a user without a group gets the group with the user's number
 * (as Docker does).
 */
async function resolveOwner(root: string, spec: string): Promise<{ uid: number; gid: number }> {
  const [userPart, groupPart] = spec.split(':', 2) as [string, string | undefined];
  const table = async (file: string): Promise<string[][]> => {
    const path = await resolveInRoot(root, file, true);
    const text = await readFile(`${root}${path}`, 'utf8').catch(() => '');
    return text.split('\n').map((l) => l.split(':'));
  };
  let uid: number;
  if (/^\d+$/.test(userPart)) uid = Number(userPart);
  else {
    const entry = (await table('/etc/passwd')).find((f) => f[0] === userPart && f.length >= 3);
    if (!entry) throw new Error(`no user '${userPart}' in the image's /etc/passwd`);
    uid = Number(entry[2]);
  }
  let gid = uid;
  if (groupPart !== undefined && groupPart !== '') {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart);
    else {
      const entry = (await table('/etc/group')).find((f) => f[0] === groupPart && f.length >= 3);
      if (!entry) throw new Error(`no group '${groupPart}' in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  return { uid, gid };
}
