/**
 * Types of the OCI image-spec v1.1 documents (descriptor, manifest, index,
 * config, layout) and of their Docker schema 2 equivalents, with validators
 * that turn parsed JSON into them or say which field is wrong.
 *
 * Property names follow the JSON exactly (`diff_ids`, `os.version`, `Cmd`), so
 * a parsed document and the typed value are the same object shape.
 * @module
 */
import { NacelleError, type NacelleErrorOptions } from '../errors';
import { digestOf, isDigest, parseDigest, type Digest } from './digest';
import {
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  baseMediaType,
  isDockerMediaType,
  isIndexMediaType,
  isManifestMediaType,
} from './mediatypes';

// ---------------------------------------------------------------- annotations

/** Annotation naming the reference (tag) of a manifest in an OCI layout's `index.json`. */
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
/** Annotation holding the creation time of the image (RFC 3339). */
export const ANNOTATION_CREATED = 'org.opencontainers.image.created';
/** Annotation naming the people or organisation responsible for the image. */
export const ANNOTATION_AUTHORS = 'org.opencontainers.image.authors';
/** Annotation with a URL to find more information about the image. */
export const ANNOTATION_URL = 'org.opencontainers.image.url';
/** Annotation with a URL to the image's documentation. */
export const ANNOTATION_DOCUMENTATION = 'org.opencontainers.image.documentation';
/** Annotation with a URL to the source code the image was built from. */
export const ANNOTATION_SOURCE = 'org.opencontainers.image.source';
/** Annotation with the version of the packaged software. */
export const ANNOTATION_VERSION = 'org.opencontainers.image.version';
/** Annotation with the source control revision the image was built from. */
export const ANNOTATION_REVISION = 'org.opencontainers.image.revision';
/** Annotation naming the distributing entity. */
export const ANNOTATION_VENDOR = 'org.opencontainers.image.vendor';
/** Annotation with the licenses of the contained software (SPDX expression). */
export const ANNOTATION_LICENSES = 'org.opencontainers.image.licenses';
/** Annotation with a human-readable title of the image. */
export const ANNOTATION_TITLE = 'org.opencontainers.image.title';
/** Annotation with a human-readable description of the image. */
export const ANNOTATION_DESCRIPTION = 'org.opencontainers.image.description';
/** Annotation with the digest of the image this one is based on. */
export const ANNOTATION_BASE_DIGEST = 'org.opencontainers.image.base.digest';
/** Annotation with the reference of the image this one is based on. */
export const ANNOTATION_BASE_NAME = 'org.opencontainers.image.base.name';
/**
 * Annotation containerd (and `docker save` since v25) writes in an OCI layout's
 * `index.json`: the full image name, e.g. `docker.io/library/busybox:latest`.
 */
export const ANNOTATION_CONTAINERD_IMAGE_NAME = 'io.containerd.image.name';

/**
 * The annotation names above in one object, for code that prefers
 * `Annotations.imageName` to the individual constants.
 */
export const Annotations = {
  /** {@link ANNOTATION_REF_NAME} */
  refName: ANNOTATION_REF_NAME,
  /** {@link ANNOTATION_CREATED} */
  created: ANNOTATION_CREATED,
  /** {@link ANNOTATION_AUTHORS} */
  authors: ANNOTATION_AUTHORS,
  /** {@link ANNOTATION_URL} */
  url: ANNOTATION_URL,
  /** {@link ANNOTATION_DOCUMENTATION} */
  documentation: ANNOTATION_DOCUMENTATION,
  /** {@link ANNOTATION_SOURCE} */
  source: ANNOTATION_SOURCE,
  /** {@link ANNOTATION_VERSION} */
  version: ANNOTATION_VERSION,
  /** {@link ANNOTATION_REVISION} */
  revision: ANNOTATION_REVISION,
  /** {@link ANNOTATION_VENDOR} */
  vendor: ANNOTATION_VENDOR,
  /** {@link ANNOTATION_LICENSES} */
  licenses: ANNOTATION_LICENSES,
  /** {@link ANNOTATION_TITLE} */
  title: ANNOTATION_TITLE,
  /** {@link ANNOTATION_DESCRIPTION} */
  description: ANNOTATION_DESCRIPTION,
  /** {@link ANNOTATION_BASE_DIGEST} */
  baseDigest: ANNOTATION_BASE_DIGEST,
  /** {@link ANNOTATION_BASE_NAME} */
  baseName: ANNOTATION_BASE_NAME,
  /** {@link ANNOTATION_CONTAINERD_IMAGE_NAME} */
  imageName: ANNOTATION_CONTAINERD_IMAGE_NAME,
} as const;

// ---------------------------------------------------------------- OCI types

/** The platform an image runs on, as in an index entry or an image config. */
export interface Platform {
  /** CPU architecture in Go's spelling: `amd64`, `arm64`, `arm`, `ppc64le`, `s390x`, `riscv64`, … */
  architecture: string;
  /** Operating system in Go's spelling: `linux`, `windows`, … */
  os: string;
  /** Operating system version, e.g. `10.0.14393.1066` (Windows). */
  'os.version'?: string;
  /** Required operating system features, e.g. `win32k` (Windows). */
  'os.features'?: string[];
  /** CPU variant: `v7` for `arm`, `v8` for `arm64`, `v2`/`v3` for `amd64`, … */
  variant?: string;
  /** Reserved by the spec for future use. */
  features?: string[];
}

/** A reference to content by digest: the links between manifests, configs and layers. */
export interface Descriptor {
  /** The media type of the referenced content. */
  mediaType: string;
  /** The digest of the referenced content's bytes. */
  digest: Digest;
  /** The size of the referenced content in bytes. */
  size: number;
  /** URLs the content may be downloaded from (foreign and non-distributable layers). */
  urls?: string[];
  /** Arbitrary metadata. */
  annotations?: Record<string, string>;
  /** The platform of the referenced manifest, in an index. */
  platform?: Platform;
  /** The type of an artifact, when the descriptor refers to one. */
  artifactType?: string;
  /** The content itself, base64-encoded, embedded in the descriptor. */
  data?: string;
}

/** An OCI image manifest: one image for one platform (image-spec v1.1). */
export interface ImageManifest {
  /** Always 2. */
  schemaVersion: 2;
  /** `application/vnd.oci.image.manifest.v1+json` (or Docker's schema 2 manifest type). */
  mediaType?: string;
  /** The type of an artifact when the manifest is used for one. */
  artifactType?: string;
  /** The image configuration (or, for an artifact, the empty JSON descriptor). */
  config: Descriptor;
  /** The layers, base first. */
  layers: Descriptor[];
  /** The manifest this one refers to (signatures, SBOMs, attestations). */
  subject?: Descriptor;
  /** Arbitrary metadata. */
  annotations?: Record<string, string>;
}

/** An OCI image index: a list of manifests, usually one per platform (image-spec v1.1). */
export interface ImageIndex {
  /** Always 2. */
  schemaVersion: 2;
  /** `application/vnd.oci.image.index.v1+json` (or Docker's manifest list type). */
  mediaType?: string;
  /** The type of an artifact when the index is used for one. */
  artifactType?: string;
  /** The manifests (or nested indexes) listed. */
  manifests: Descriptor[];
  /** The manifest this one refers to. */
  subject?: Descriptor;
  /** Arbitrary metadata. */
  annotations?: Record<string, string>;
}

/** Docker's health check, part of the config Docker writes (durations in nanoseconds). */
export interface HealthcheckConfig {
  /**
   * The test: `[]` inherits, `['NONE']` disables, `['CMD', arg…]` execs,
   * `['CMD-SHELL', command]` runs with the image's shell.
   */
  Test?: string[];
  /** Time between checks, in nanoseconds (0 inherits). */
  Interval?: number;
  /** Time after which one check is considered hung, in nanoseconds (0 inherits). */
  Timeout?: number;
  /** Start-up time during which failures do not count, in nanoseconds. */
  StartPeriod?: number;
  /** Time between checks during the start period, in nanoseconds. */
  StartInterval?: number;
  /** Consecutive failures needed to report unhealthy (0 inherits). */
  Retries?: number;
}

/** The execution parameters of an image (the `config` member of an image config). */
export interface ContainerConfig {
  /** The user (and group) to run as: `name`, `uid`, `name:group`, `uid:gid`, … */
  User?: string;
  /** Ports to expose, as keys `port/tcp`, `port/udp` or `port` mapping to `{}`. */
  ExposedPorts?: Record<string, Record<string, unknown>>;
  /** Environment entries `NAME=value`. */
  Env?: string[];
  /** The program and its first arguments. */
  Entrypoint?: string[];
  /** Default arguments, appended to the entrypoint (or the command when there is none). */
  Cmd?: string[];
  /** Directories that should be volumes, as keys mapping to `{}`. */
  Volumes?: Record<string, Record<string, unknown>>;
  /** The working directory of the process. */
  WorkingDir?: string;
  /** Arbitrary metadata. */
  Labels?: Record<string, string>;
  /** The signal that stops the container, e.g. `SIGTERM` or `9`. */
  StopSignal?: string;
  /** Whether Cmd/Entrypoint are already escaped (Windows only; Docker-specific). */
  ArgsEscaped?: boolean;
  /** Docker's health check. */
  Healthcheck?: HealthcheckConfig;
  /** Dockerfile instructions that run when the image is used as a base (Docker-specific). */
  OnBuild?: string[];
  /** The shell for shell-form RUN, CMD and ENTRYPOINT (Docker-specific). */
  Shell?: string[];
}

/** One step of an image's history, oldest first. */
export interface HistoryEntry {
  /** When the step ran (RFC 3339). */
  created?: string;
  /** The command that made the step, e.g. `/bin/sh -c #(nop) CMD ["sh"]`. */
  created_by?: string;
  /** Who made the step. */
  author?: string;
  /** A free-form comment. */
  comment?: string;
  /** True when the step made no layer (metadata-only instructions such as ENV). */
  empty_layer?: boolean;
}

/** The layers of an image as uncompressed tar digests. */
export interface RootFs {
  /** Always `layers`. */
  type: 'layers';
  /** The digests of the uncompressed layer tars, base first. */
  diff_ids: Digest[];
}

/** An OCI image configuration (the blob a manifest's `config` points to). */
export interface ImageConfig {
  /** When the image was created (RFC 3339). */
  created?: string;
  /** Who made the image. */
  author?: string;
  /** CPU architecture in Go's spelling (`amd64`, `arm64`, …). */
  architecture: string;
  /** Operating system in Go's spelling (`linux`, …). */
  os: string;
  /** Operating system version (Windows). */
  'os.version'?: string;
  /** Required operating system features (Windows). */
  'os.features'?: string[];
  /** CPU variant (`v7`, `v8`, …). */
  variant?: string;
  /** How to run a container from the image. */
  config?: ContainerConfig;
  /** The image's layers as uncompressed tar digests. */
  rootfs: RootFs;
  /** How the image was built, oldest step first. */
  history?: HistoryEntry[];
}

/** The content of the `oci-layout` file at the root of an OCI image layout. */
export interface OciLayout {
  /** The layout version; `1.0.0` is the only one defined. */
  imageLayoutVersion: '1.0.0';
}

// ---------------------------------------------------------------- Docker schema 2

/** A Docker image manifest, schema 2: an {@link ImageManifest} with Docker's media type. */
export interface DockerManifest {
  /** Always 2. */
  schemaVersion: 2;
  /** Always Docker's schema 2 manifest type. */
  mediaType: typeof MEDIA_TYPE_DOCKER_MANIFEST;
  /** The image configuration (`application/vnd.docker.container.image.v1+json`). */
  config: Descriptor;
  /** The layers, base first. */
  layers: Descriptor[];
}

/** An entry of a Docker manifest list: a descriptor whose platform is required. */
export interface DockerManifestListEntry extends Descriptor {
  /** The platform the referenced manifest is for. */
  platform: Platform;
}

/** A Docker manifest list, schema 2: an {@link ImageIndex} with Docker's media type. */
export interface DockerManifestList {
  /** Always 2. */
  schemaVersion: 2;
  /** Always Docker's manifest list type. */
  mediaType: typeof MEDIA_TYPE_DOCKER_MANIFEST_LIST;
  /** One manifest per platform. */
  manifests: DockerManifestListEntry[];
}

// ---------------------------------------------------------------- errors

/** Options of {@link InvalidManifestError}. */
export interface InvalidManifestErrorOptions extends Partial<NacelleErrorOptions> {
  /** The JSON path of the bad field, e.g. `layers[2].digest`. */
  field?: string;
}

/**
 * A manifest, index, image config or layout document is malformed
 * (`ERR_INVALID_MANIFEST`); the message names the document and the bad field.
 */
export class InvalidManifestError extends NacelleError {
  /** The JSON path of the bad field, e.g. `layers[2].digest`, when one field is to blame. */
  readonly field?: string;

  /**
   * @param message - which document, which field, and what is wrong with it
   * @param options - the bad field and the underlying cause
   */
  constructor(message: string, options: InvalidManifestErrorOptions = {}) {
    const { field, ...rest } = options;
    super(message, { code: 'ERR_INVALID_MANIFEST', ...rest });
    if (field !== undefined) this.field = field;
  }
}

// ---------------------------------------------------------------- validation helpers

type JsonObject = Record<string, unknown>;

/** Where a value sits: the document kind for messages and the JSON path of the value. */
interface At {
  doc: string;
  path: string;
}

function child(at: At, key: string | number): At {
  const path =
    typeof key === 'number'
      ? `${at.path}[${key}]`
      : /^[A-Za-z_$][\w$]*$/.test(key)
        ? at.path === ''
          ? key
          : `${at.path}.${key}`
        : `${at.path}[${JSON.stringify(key)}]`;
  return { doc: at.doc, path };
}

function fail(at: At, problem: string): never {
  const subject = at.path === '' ? 'document' : at.path;
  throw new InvalidManifestError(`invalid ${at.doc}: ${subject} ${problem}`, {
    ...(at.path === '' ? {} : { field: at.path }),
  });
}

function show(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `'${value.length > 80 ? `${value.slice(0, 80)}…` : value}'`;
  if (typeof value === 'object') return 'an object';
  return `${typeof value} ${String(value)}`;
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function object(value: unknown, at: At): JsonObject {
  if (!isObject(value)) fail(at, `must be an object, got ${show(value)}`);
  return value;
}

/**
 * Copies `src` (keeping fields this module does not know), with the optional
 * fields in `optional` removed when they are null: Docker writes `"Cmd": null`.
 */
function copyWithoutNulls(src: JsonObject, optional: readonly string[]): JsonObject {
  const out: JsonObject = { ...src };
  for (const key of optional) if (out[key] === null) delete out[key];
  return out;
}

function string(value: unknown, at: At, nonEmpty = false): string {
  if (typeof value !== 'string') fail(at, `must be a string, got ${value === undefined ? 'nothing' : show(value)}`);
  if (nonEmpty && value === '') fail(at, 'must not be empty');
  return value;
}

function stringArray(value: unknown, at: At): string[] {
  if (!Array.isArray(value)) fail(at, `must be an array of strings, got ${show(value)}`);
  value.forEach((item, i) => string(item, child(at, i)));
  return value as string[];
}

function stringMap(value: unknown, at: At): Record<string, string> {
  const obj = object(value, at);
  for (const [key, item] of Object.entries(obj)) string(item, child(at, key));
  return obj as Record<string, string>;
}

function objectMap(value: unknown, at: At): Record<string, Record<string, unknown>> {
  const obj = object(value, at);
  for (const [key, item] of Object.entries(obj)) object(item, child(at, key));
  return obj as Record<string, Record<string, unknown>>;
}

function boolean(value: unknown, at: At): boolean {
  if (typeof value !== 'boolean') fail(at, `must be a boolean, got ${show(value)}`);
  return value;
}

function integer(value: unknown, at: At): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    fail(at, `must be a non-negative integer, got ${show(value)}`);
  }
  return value;
}

function digest(value: unknown, at: At): Digest {
  if (!isDigest(value)) {
    fail(
      at,
      value === undefined
        ? 'is missing (a digest is required)'
        : `${show(value)} is not a valid digest (expected sha256:<64 hex> or sha512:<128 hex>)`,
    );
  }
  return value;
}

/** RFC 6838 `type/subtype`, as the descriptor spec requires. */
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

function mediaType(value: unknown, at: At): string {
  const s = string(value, at, true);
  if (!MEDIA_TYPE_RE.test(s)) fail(at, `${show(s)} is not a media type (type/subtype, RFC 6838)`);
  return s;
}

/** Runs `check` on `obj[key]` unless it is absent (undefined or null). */
function optional(obj: JsonObject, key: string, at: At, check: (value: unknown, at: At) => unknown): void {
  const value = obj[key];
  if (value !== undefined && value !== null) check(value, child(at, key));
}

function required(obj: JsonObject, key: string, at: At): unknown {
  const value = obj[key];
  if (value === undefined || value === null) fail(child(at, key), 'is missing');
  return value;
}

function schemaVersion(obj: JsonObject, at: At): void {
  const v = obj['schemaVersion'];
  if (v === 2) return;
  const here = child(at, 'schemaVersion');
  if (v === undefined) fail(here, 'is missing (must be 2)');
  if (v === 1) fail(here, 'is 1: Docker schema 1 manifests are not supported');
  fail(here, `must be 2, got ${show(v)}`);
}

const PLATFORM_OPTIONAL = ['os.version', 'os.features', 'variant', 'features'] as const;

function platform(value: unknown, at: At): Platform {
  const out = copyWithoutNulls(object(value, at), PLATFORM_OPTIONAL);
  string(required(out, 'architecture', at), child(at, 'architecture'), true);
  string(required(out, 'os', at), child(at, 'os'), true);
  optional(out, 'os.version', at, string);
  optional(out, 'os.features', at, stringArray);
  optional(out, 'variant', at, string);
  optional(out, 'features', at, stringArray);
  return out as unknown as Platform;
}

const DESCRIPTOR_OPTIONAL = ['urls', 'annotations', 'platform', 'artifactType', 'data'] as const;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function descriptor(value: unknown, at: At): Descriptor {
  const out = copyWithoutNulls(object(value, at), DESCRIPTOR_OPTIONAL);
  mediaType(required(out, 'mediaType', at), child(at, 'mediaType'));
  const dgst = digest(out['digest'], child(at, 'digest'));
  const size = integer(required(out, 'size', at), child(at, 'size'));
  optional(out, 'urls', at, stringArray);
  optional(out, 'annotations', at, stringMap);
  if (out['platform'] !== undefined) out['platform'] = platform(out['platform'], child(at, 'platform'));
  optional(out, 'artifactType', at, mediaType);
  if (out['data'] !== undefined) {
    const dataAt = child(at, 'data');
    const data = string(out['data'], dataAt);
    if (!BASE64_RE.test(data)) fail(dataAt, 'is not base64');
    const bytes = Buffer.from(data, 'base64');
    if (bytes.length !== size) fail(dataAt, `holds ${bytes.length} bytes but size says ${size}`);
    const actual = digestOf(bytes, parseDigest(dgst).algorithm);
    if (actual !== dgst) fail(dataAt, `has digest ${actual} but digest says ${dgst}`);
  }
  return out as unknown as Descriptor;
}

function descriptorArray(value: unknown, at: At): Descriptor[] {
  if (!Array.isArray(value)) fail(at, `must be an array of descriptors, got ${show(value)}`);
  return value.map((item, i) => descriptor(item, child(at, i)));
}

// ---------------------------------------------------------------- validators

const MANIFEST_OPTIONAL = ['mediaType', 'artifactType', 'subject', 'annotations'] as const;

/**
 * Checks a parsed image manifest, OCI or Docker schema 2, and returns it typed.
 * Fields nacelle does not know are kept; optional fields that are null are
 * dropped. Embedded `data` is checked against its descriptor's size and digest.
 * @param json - the result of `JSON.parse` on the manifest's bytes
 * @throws An {@link InvalidManifestError} naming the first bad field (an index, a
 *   Docker schema 1 manifest, a missing config, a malformed digest, …)
 */
export function parseManifest(json: unknown): ImageManifest {
  const at: At = { doc: 'image manifest', path: '' };
  const out = copyWithoutNulls(object(json, at), MANIFEST_OPTIONAL);
  schemaVersion(out, at);
  if (out['mediaType'] !== undefined) {
    const mtAt = child(at, 'mediaType');
    const mt = string(out['mediaType'], mtAt);
    if (isIndexMediaType(mt)) fail(mtAt, `is ${show(mt)}: an index, not an image manifest`);
    if (!isManifestMediaType(mt)) fail(mtAt, `${show(mt)} is not an OCI or Docker schema 2 image manifest type`);
  } else if (out['manifests'] !== undefined && out['config'] === undefined) {
    fail(child(at, 'config'), 'is missing (the document has manifests: it looks like an index)');
  }
  out['config'] = descriptor(required(out, 'config', at), child(at, 'config'));
  out['layers'] = descriptorArray(required(out, 'layers', at), child(at, 'layers'));
  if (out['subject'] !== undefined) out['subject'] = descriptor(out['subject'], child(at, 'subject'));
  optional(out, 'artifactType', at, mediaType);
  optional(out, 'annotations', at, stringMap);
  return out as unknown as ImageManifest;
}

/**
 * Checks a parsed image index (OCI) or manifest list (Docker schema 2) and
 * returns it typed. In a Docker manifest list every entry needs a platform.
 * @param json - the result of `JSON.parse` on the index's bytes
 * @throws An {@link InvalidManifestError} naming the first bad field
 */
export function parseIndex(json: unknown): ImageIndex {
  const at: At = { doc: 'image index', path: '' };
  const out = copyWithoutNulls(object(json, at), MANIFEST_OPTIONAL);
  schemaVersion(out, at);
  let docker = false;
  if (out['mediaType'] !== undefined) {
    const mtAt = child(at, 'mediaType');
    const mt = string(out['mediaType'], mtAt);
    if (isManifestMediaType(mt)) fail(mtAt, `is ${show(mt)}: an image manifest, not an index`);
    if (!isIndexMediaType(mt)) fail(mtAt, `${show(mt)} is not an OCI index or Docker manifest list type`);
    docker = isDockerMediaType(mt);
  } else if (out['config'] !== undefined && out['manifests'] === undefined) {
    fail(child(at, 'manifests'), 'is missing (the document has a config: it looks like an image manifest)');
  }
  const manifestsAt = child(at, 'manifests');
  const manifests = descriptorArray(required(out, 'manifests', at), manifestsAt);
  if (docker) {
    manifests.forEach((m, i) => {
      if (m.platform === undefined) fail(child(child(manifestsAt, i), 'platform'), 'is missing (required in a Docker manifest list)');
    });
  }
  out['manifests'] = manifests;
  if (out['subject'] !== undefined) out['subject'] = descriptor(out['subject'], child(at, 'subject'));
  optional(out, 'artifactType', at, mediaType);
  optional(out, 'annotations', at, stringMap);
  return out as unknown as ImageIndex;
}

const HEALTHCHECK_OPTIONAL = ['Test', 'Interval', 'Timeout', 'StartPeriod', 'StartInterval', 'Retries'] as const;

function healthcheck(value: unknown, at: At): HealthcheckConfig {
  const out = copyWithoutNulls(object(value, at), HEALTHCHECK_OPTIONAL);
  optional(out, 'Test', at, stringArray);
  for (const key of ['Interval', 'Timeout', 'StartPeriod', 'StartInterval', 'Retries'] as const) {
    optional(out, key, at, integer);
  }
  return out as HealthcheckConfig;
}

const CONTAINER_CONFIG_STRINGS = ['User', 'WorkingDir', 'StopSignal'] as const;
const CONTAINER_CONFIG_ARRAYS = ['Env', 'Entrypoint', 'Cmd', 'OnBuild', 'Shell'] as const;
const CONTAINER_CONFIG_OPTIONAL = [
  ...CONTAINER_CONFIG_STRINGS,
  ...CONTAINER_CONFIG_ARRAYS,
  'ExposedPorts',
  'Volumes',
  'Labels',
  'ArgsEscaped',
  'Healthcheck',
] as const;

function containerConfig(value: unknown, at: At): ContainerConfig {
  const out = copyWithoutNulls(object(value, at), CONTAINER_CONFIG_OPTIONAL);
  for (const key of CONTAINER_CONFIG_STRINGS) optional(out, key, at, string);
  for (const key of CONTAINER_CONFIG_ARRAYS) optional(out, key, at, stringArray);
  optional(out, 'ExposedPorts', at, objectMap);
  optional(out, 'Volumes', at, objectMap);
  optional(out, 'Labels', at, stringMap);
  optional(out, 'ArgsEscaped', at, boolean);
  if (out['Healthcheck'] !== undefined) out['Healthcheck'] = healthcheck(out['Healthcheck'], child(at, 'Healthcheck'));
  return out as ContainerConfig;
}

const HISTORY_OPTIONAL = ['created', 'created_by', 'author', 'comment', 'empty_layer'] as const;

function historyEntry(value: unknown, at: At): HistoryEntry {
  const out = copyWithoutNulls(object(value, at), HISTORY_OPTIONAL);
  for (const key of ['created', 'created_by', 'author', 'comment'] as const) optional(out, key, at, string);
  optional(out, 'empty_layer', at, boolean);
  return out as HistoryEntry;
}

const CONFIG_OPTIONAL = ['created', 'author', 'os.version', 'os.features', 'variant', 'config', 'history'] as const;

/**
 * Checks a parsed image config (OCI or Docker) and returns it typed. Fields
 * nacelle does not know (Docker's `container_config`, `docker_version`, …) are
 * kept; optional fields that are null (`"Cmd": null`) are dropped.
 * @param json - the result of `JSON.parse` on the config's bytes
 * @throws An {@link InvalidManifestError} naming the first bad field
 */
export function parseImageConfig(json: unknown): ImageConfig {
  const at: At = { doc: 'image config', path: '' };
  const out = copyWithoutNulls(object(json, at), CONFIG_OPTIONAL);
  string(required(out, 'architecture', at), child(at, 'architecture'), true);
  string(required(out, 'os', at), child(at, 'os'), true);
  for (const key of ['created', 'author', 'os.version', 'variant'] as const) optional(out, key, at, string);
  optional(out, 'os.features', at, stringArray);
  if (out['config'] !== undefined) out['config'] = containerConfig(out['config'], child(at, 'config'));

  const rootfsAt = child(at, 'rootfs');
  const rootfs = object(required(out, 'rootfs', at), rootfsAt);
  if (rootfs['type'] !== 'layers') {
    fail(child(rootfsAt, 'type'), `must be 'layers', got ${rootfs['type'] === undefined ? 'nothing' : show(rootfs['type'])}`);
  }
  const diffIdsAt = child(rootfsAt, 'diff_ids');
  const diffIds = required(rootfs, 'diff_ids', rootfsAt);
  if (!Array.isArray(diffIds)) fail(diffIdsAt, `must be an array of digests, got ${show(diffIds)}`);
  diffIds.forEach((d, i) => digest(d, child(diffIdsAt, i)));

  if (out['history'] !== undefined) {
    const historyAt = child(at, 'history');
    const history = out['history'];
    if (!Array.isArray(history)) fail(historyAt, `must be an array, got ${show(history)}`);
    out['history'] = history.map((h, i) => historyEntry(h, child(historyAt, i)));
  }
  return out as unknown as ImageConfig;
}

/**
 * Checks a parsed `oci-layout` file.
 * @throws An {@link InvalidManifestError} when `imageLayoutVersion` is missing or not `1.0.0`
 */
export function parseOciLayout(json: unknown): OciLayout {
  const at: At = { doc: 'oci-layout', path: '' };
  const obj = object(json, at);
  const version = obj['imageLayoutVersion'];
  if (version !== '1.0.0') {
    fail(
      child(at, 'imageLayoutVersion'),
      version === undefined ? 'is missing' : `must be '1.0.0', got ${show(version)}`,
    );
  }
  return obj as unknown as OciLayout;
}

/** Whether a manifest or index uses Docker schema 2 media types rather than OCI ones. */
export function isDockerDocument(doc: ImageManifest | ImageIndex): boolean {
  return doc.mediaType !== undefined && isDockerMediaType(baseMediaType(doc.mediaType));
}
