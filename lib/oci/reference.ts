/**
 * Image references (`busybox`, `ghcr.io/org/app:1.2`, `localhost:5000/a/b@sha256:…`)
 * parsed and normalized the way Docker does, following the grammar of
 * distribution's reference package:
 *
 * ```
 * reference  := name [ ":" tag ] [ "@" digest ]
 * name       := [ registry "/" ] path-component [ "/" path-component ]*
 * registry   := host [ ":" port ]          host: a domain name, IPv4 address or [IPv6]
 * path-component := [a-z0-9]+ ( ( [._] | __ | [-]* ) [a-z0-9]+ )*
 * tag        := [\w][\w.-]{0,127}
 * ```
 *
 * The first component is the registry when it contains `.` or `:`, is
 * `localhost`, or has an uppercase letter (a repository never does); otherwise
 * the registry is `docker.io` and a single-component name gets `library/`.
 * @module
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { NacelleError, type NacelleErrorOptions } from '../errors';
import { isDigest, type Digest } from './digest';

/** The registry names without one: Docker Hub. */
export const DEFAULT_REGISTRY = 'docker.io';
/** The tag a reference without tag or digest means. */
export const DEFAULT_TAG = 'latest';
/** The longest a name (`registry/repository`) may be, in characters. */
export const NAME_TOTAL_LENGTH_MAX = 255;

const LEGACY_DEFAULT_REGISTRY = 'index.docker.io';
const OFFICIAL_REPO_PREFIX = 'library/';

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const REGISTRY_RE = new RegExp(
  `^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
/** The general digest shape: `algorithm:hex`, before checking nacelle supports it. */
const DIGEST_SHAPE_RE = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
/** A bare image id; Docker refuses it as a name so it is never mistaken for one. */
const IDENTIFIER_RE = /^[a-f0-9]{64}$/;

/** Options of {@link InvalidReferenceError}. */
export interface InvalidReferenceErrorOptions extends Partial<NacelleErrorOptions> {
  /** The reference as given. */
  reference: string;
  /** Why it was rejected. */
  reason: string;
}

/** An image reference does not follow the grammar (`ERR_INVALID_REFERENCE`). */
export class InvalidReferenceError extends NacelleError {
  /** The reference as given. */
  readonly reference: string;
  /** Why it was rejected, e.g. `repository name must be lowercase`. */
  readonly reason: string;

  /**
   * @param message - names the reference and the reason
   * @param options - the reference, the reason and the underlying cause
   */
  constructor(message: string, options: InvalidReferenceErrorOptions) {
    const { reference, reason, ...rest } = options;
    super(message, { code: 'ERR_INVALID_REFERENCE', ...rest });
    this.reference = reference;
    this.reason = reason;
  }
}

function invalid(reference: string, reason: string): never {
  throw new InvalidReferenceError(`invalid reference '${reference}': ${reason}`, { reference, reason });
}

/** The parts of an image reference, as {@link ImageReference}'s constructor takes them. */
export interface ImageReferenceParts {
  /** The registry host, with port if any: `docker.io`, `localhost:5000`, `[::1]:5000`. */
  registry: string;
  /** The repository path within the registry: `library/busybox`, `org/app`. */
  repository: string;
  /** The tag, if any. */
  tag?: string | undefined;
  /** The digest, if any. */
  digest?: Digest | undefined;
}

function checkRegistry(ref: string, registry: string): string {
  if (registry === '') invalid(ref, 'registry is empty');
  if (!REGISTRY_RE.test(registry)) invalid(ref, `invalid registry '${registry}'`);
  return registry === LEGACY_DEFAULT_REGISTRY ? DEFAULT_REGISTRY : registry;
}

function checkRepository(ref: string, repository: string): void {
  if (repository === '') invalid(ref, 'repository name is empty');
  if (repository.toLowerCase() !== repository) invalid(ref, `repository name (${repository}) must be lowercase`);
  for (const component of repository.split('/')) {
    if (component === '') invalid(ref, `repository name (${repository}) has an empty path component`);
    if (!PATH_COMPONENT_RE.test(component)) {
      invalid(
        ref,
        `invalid path component '${component}': lowercase letters and digits, separated by '.', '_', '__' or dashes, ` +
          'starting and ending with a letter or digit',
      );
    }
  }
}

function checkTag(ref: string, tag: string): void {
  if (tag === '') invalid(ref, 'tag is empty');
  if (!TAG_RE.test(tag)) {
    invalid(ref, `invalid tag '${tag}': up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'`);
  }
}

function checkDigest(ref: string, digest: string): Digest {
  if (digest === '') invalid(ref, 'digest is empty');
  if (!DIGEST_SHAPE_RE.test(digest)) invalid(ref, `invalid digest '${digest}': expected algorithm:hex`);
  if (!isDigest(digest)) {
    invalid(ref, `invalid digest '${digest}': expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>`);
  }
  return digest;
}

function checkLength(ref: string, name: string): void {
  if (name.length > NAME_TOTAL_LENGTH_MAX) {
    invalid(ref, `repository name is too long (${name.length} > ${NAME_TOTAL_LENGTH_MAX} characters)`);
  }
}

/**
 * A parsed, normalized image reference. Build one with {@link parseReference};
 * the constructor is for parts already split (it checks and normalizes them the
 * same way).
 */
export class ImageReference {
  /** The registry host, with port if any: `docker.io`, `localhost:5000`, `[::1]:5000`. */
  readonly registry: string;
  /** The repository path within the registry: `library/busybox`, `org/app`. */
  readonly repository: string;
  /** The tag as written, or undefined when none was (see {@link toString} for the default). */
  readonly tag?: string;
  /** The digest, when the reference pins one. */
  readonly digest?: Digest;

  /**
   * @param parts - registry, repository and optional tag and digest
   * @throws An {@link InvalidReferenceError} when a part is malformed
   */
  constructor(parts: ImageReferenceParts) {
    const shown = `${parts.registry}/${parts.repository}${parts.tag === undefined ? '' : `:${parts.tag}`}${
      parts.digest === undefined ? '' : `@${parts.digest}`
    }`;
    const registry = checkRegistry(shown, parts.registry);
    let repository = parts.repository;
    if (registry === DEFAULT_REGISTRY && repository !== '' && !repository.includes('/')) {
      repository = OFFICIAL_REPO_PREFIX + repository;
    }
    checkRepository(shown, repository);
    checkLength(shown, `${registry}/${repository}`);
    if (parts.tag !== undefined) checkTag(shown, parts.tag);
    if (parts.digest !== undefined) checkDigest(shown, parts.digest);
    this.registry = registry;
    this.repository = repository;
    if (parts.tag !== undefined) this.tag = parts.tag;
    if (parts.digest !== undefined) this.digest = parts.digest;
  }

  /** The fully qualified name, without tag or digest: `docker.io/library/busybox`. */
  get name(): string {
    return `${this.registry}/${this.repository}`;
  }

  /**
   * The name as Docker shows it: `busybox`, `org/app` (on Docker Hub),
   * `ghcr.io/org/app`, `localhost:5000/a/b`.
   */
  get familiarName(): string {
    if (this.registry !== DEFAULT_REGISTRY) return this.name;
    const rest = this.repository.slice(OFFICIAL_REPO_PREFIX.length);
    return this.repository.startsWith(OFFICIAL_REPO_PREFIX) && !rest.includes('/') ? rest : this.repository;
  }

  /** The reference as Docker shows it: `busybox:latest`, `localhost:5000/a/b:t`. */
  get familiar(): string {
    return this.familiarName + this.#suffix();
  }

  /**
   * The fully qualified reference: `docker.io/library/busybox:latest`. The tag
   * defaults to `latest` only when there is no digest; a reference with both
   * keeps both (`name:tag@digest`).
   */
  toString(): string {
    return this.name + this.#suffix();
  }

  /** The same reference with a different tag (a digest, if any, is kept). */
  withTag(tag: string): ImageReference {
    return new ImageReference({ registry: this.registry, repository: this.repository, tag, digest: this.digest });
  }

  /** The same reference pinned to a digest (a tag, if any, is kept). */
  withDigest(digest: Digest): ImageReference {
    return new ImageReference({ registry: this.registry, repository: this.repository, tag: this.tag, digest });
  }

  #suffix(): string {
    const tag = this.tag ?? (this.digest === undefined ? DEFAULT_TAG : undefined);
    return `${tag === undefined ? '' : `:${tag}`}${this.digest === undefined ? '' : `@${this.digest}`}`;
  }
}

/**
 * Parses and normalizes an image reference exactly as Docker does:
 * `busybox` → `docker.io/library/busybox:latest`, `index.docker.io/x/y` →
 * `docker.io/x/y:latest`, `localhost:5000/a/b:t@sha256:…` kept as it is.
 * @throws An {@link InvalidReferenceError} naming the reference and the reason
 *   (empty, uppercase in the repository, bad tag, bad digest, too long, …)
 */
export function parseReference(s: string): ImageReference {
  if (typeof s !== 'string') invalid(String(s), 'not a string');
  if (s === '') invalid(s, 'reference is empty');
  if (IDENTIFIER_RE.test(s)) {
    invalid(s, 'a 64-character hexadecimal string is an image id, not a repository name');
  }

  let rest = s;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    const d = rest.slice(at + 1);
    if (d.includes('@')) invalid(s, "more than one '@'");
    digest = checkDigest(s, d);
    rest = rest.slice(0, at);
  }

  let tag: string | undefined;
  const colon = rest.indexOf(':', rest.lastIndexOf('/') + 1);
  if (colon !== -1) {
    tag = rest.slice(colon + 1);
    checkTag(s, tag);
    rest = rest.slice(0, colon);
  }
  if (rest === '') invalid(s, 'repository name is missing');

  let registry = DEFAULT_REGISTRY;
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash !== -1) {
    const first = rest.slice(0, slash);
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      registry = checkRegistry(s, first);
      repository = rest.slice(slash + 1);
    }
  }
  if (registry === DEFAULT_REGISTRY && repository !== '' && !repository.includes('/')) {
    repository = OFFICIAL_REPO_PREFIX + repository;
  }
  checkRepository(s, repository);
  checkLength(s, `${registry}/${repository}`);
  return new ImageReference({ registry, repository, tag, digest });
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/**
 * Whether a registry is on this machine: `localhost`, `127.0.0.0/8`, `[::1]`
 * (or `::ffff:127.x.y.z`), with or without a port. Such registries may be
 * spoken to over plain HTTP, as Docker does.
 */
export function isLoopbackRegistry(registry: string): boolean {
  let host = registry.trim();
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end === -1) return false;
    const after = host.slice(end + 1);
    if (after !== '' && !/^:[0-9]+$/.test(after)) return false;
    host = host.slice(1, end);
  } else if (!isIPv6(host)) {
    const colon = host.lastIndexOf(':');
    if (colon !== -1) {
      if (!/^[0-9]+$/.test(host.slice(colon + 1))) return false;
      host = host.slice(0, colon);
    }
  }
  host = host.toLowerCase();
  if (host === 'localhost') return true;
  if (isIPv4(host)) return LOOPBACK.check(host, 'ipv4');
  if (isIPv6(host)) return LOOPBACK.check(host, 'ipv6');
  return false;
}
