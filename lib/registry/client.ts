/**
 * HTTP for the distribution spec over node:http and node:https: one client
 * per registry with keep-alive connections, authentication, redirects (blob downloads are often sent to a CDN),
 * timeouts, and bounded retries of idempotent requests.
 *
 * Plain `http://` is used, and accepted in redirects and token realms, only for
 * loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`) or with
 * `insecure: true`; everything else is https with certificate checks.
 * @module
 */
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { NacelleError, NotFoundError, TimeoutError } from '../errors';
import { isLoopbackRegistry } from '../oci/reference';
import { Authenticator } from './auth';
import { type RegistryCredentials, dockerCredentials } from './docker-config';
import { RegistryError, type RegistryErrorDetail } from './errors';

/** How to reach and authenticate to a registry. */
export interface RegistryClientOptions {
  /**
   * Credentials. Default: the entry for this registry in Docker's config
   * (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else anonymous.
   */
  auth?: RegistryCredentials;
  /** Allow plain HTTP to a registry that is not on loopback. Default false. */
  insecure?: boolean;
  /** Milliseconds a connection may stay silent before the request fails. Default 30000. */
  timeoutMs?: number;
  /** How many times a failed idempotent request (network error, 5xx, 429) is retried. Default 3. */
  retries?: number;
}

/** HTTP methods the distribution spec uses. */
export type RegistryMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** One request to a registry. */
export interface RegistryRequest {
  /** The method. */
  method: RegistryMethod;
  /** A path on the registry (`/v2/…`) or an absolute URL (an upload location). */
  url: string | URL;
  /** Token scopes the request needs (`repository:app:pull`). */
  scopes: readonly string[];
  /** What the request is for, used in error messages (`pull 127.0.0.1:5000/app:v1: manifest`). */
  what: string;
  /** Statuses that are answers rather than failures (a HEAD lists 404 to learn a blob is missing). */
  expect: readonly number[];
  /** Extra headers. */
  headers?: Record<string, string>;
  /** The body: bytes, or a function opening a fresh stream for each attempt (give content-length in headers). */
  body?: Buffer | (() => Promise<Readable>);
  /** Retry network errors, 5xx and 429. Default: for GET and HEAD only. */
  retry?: boolean;
}

/** A registry's answer; the caller must read or destroy `body`. */
export interface RegistryResponse {
  /** The HTTP status. */
  status: number;
  /** The response headers. */
  headers: IncomingHttpHeaders;
  /** The body stream. */
  body: IncomingMessage;
  /** The URL that answered (after redirects). */
  url: URL;
}

const MAX_REDIRECTS = 5;
const MAX_ERROR_BODY = 64 * 1024;

/** The host to speak to for a registry name (Docker Hub's API lives at registry-1.docker.io). */
export function registryHost(registry: string): string {
  return registry === 'docker.io' ? 'registry-1.docker.io' : registry;
}

/** Whether plain HTTP may be used for `host` (`host[:port]`). */
export function plainHttpAllowed(host: string, insecure: boolean): boolean {
  return insecure || isLoopbackRegistry(host);
}

/** A connection to one registry. */
export class RegistryClient {
  /** The registry as named in references (`127.0.0.1:5000`, `docker.io`). */
  readonly registry: string;
  /** Where its API lives: `https://host` or `http://host`. */
  readonly origin: URL;
  /** Authentication state. @internal */
  readonly auth: Authenticator;
  readonly #insecure: boolean;
  readonly #timeoutMs: number;
  readonly #retries: number;
  readonly #httpAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  readonly #httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 16 });

  /** @internal Use {@link RegistryClient.open}. */
  constructor(registry: string, credentials: RegistryCredentials | undefined, options: RegistryClientOptions) {
    this.registry = registry;
    this.#insecure = options.insecure ?? false;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#retries = options.retries ?? 3;
    const host = registryHost(registry);
    this.origin = new URL(`${plainHttpAllowed(host, this.#insecure) ? 'http' : 'https'}://${host}`);
    this.auth = new Authenticator(registry, credentials, (url, headers) => this.#fetchSmall(url, headers));
  }

  /** A client for `registry`, with credentials from the options or Docker's config. */
  static async open(registry: string, options: RegistryClientOptions = {}): Promise<RegistryClient> {
    const credentials = options.auth ?? (await dockerCredentials(registry));
    return new RegistryClient(registry, credentials, options);
  }

  /** Closes idle connections. */
  close(): void {
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
  }

  /**
   * Sends a request: authenticates on 401 (once per new token: a refused
   * fresh token is an error, not a loop), follows redirects, retries what may
   * be retried, and turns unexpected statuses into errors
   * ({@link NotFoundError} for 404, {@link RegistryError} otherwise).
   */
  async request(req: RegistryRequest): Promise<RegistryResponse> {
    const retry = req.retry ?? (req.method === 'GET' || req.method === 'HEAD');
    let url = typeof req.url === 'string' ? new URL(req.url, this.origin) : req.url;
    let method = req.method;
    let body = req.body;
    let freshToken = false;
    let authRounds = 0;
    let redirects = 0;
    for (;;) {
      this.#checkScheme(url, req.what);
      const sameOrigin = url.origin === this.origin.origin;
      const authorization = sameOrigin ? this.auth.header(req.scopes) : undefined;
      const headers: Record<string, string> = { 'user-agent': 'nacelle', ...req.headers };
      if (authorization) headers['authorization'] = authorization;
      const res = await this.#sendWithRetries(method, url, headers, body, retry, req.what);
      const status = res.statusCode ?? 0;
      if (status === 401 && sameOrigin && !req.expect.includes(401)) {
        res.resume();
        if (++authRounds > 3) {
          throw new RegistryError(`${req.what}: still 401 after ${authRounds - 1} authentication rounds; giving up`, { code: 'ERR_UNAUTHORIZED', status });
        }
        const before = this.auth.tokenRequests;
        await this.auth.unauthorized(req.what, header(res.headers['www-authenticate']), req.scopes, authorization, freshToken);
        freshToken = this.auth.tokenRequests > before;
        continue;
      }
      if (isRedirect(status) && !req.expect.includes(status)) {
        res.resume();
        const location = header(res.headers.location);
        if (!location) throw new RegistryError(`${req.what}: ${status} redirect without a Location`, { code: 'ERR_REGISTRY_PROTOCOL', status });
        if (++redirects > MAX_REDIRECTS) throw new RegistryError(`${req.what}: more than ${MAX_REDIRECTS} redirects`, { code: 'ERR_REGISTRY_PROTOCOL', status });
        url = new URL(location, url);
        if (status === 303 || ((status === 301 || status === 302) && method === 'POST')) {
          method = 'GET';
          body = undefined;
        }
        continue;
      }
      if (!req.expect.includes(status)) throw await this.#failure(req.what, method, url, res);
      return { status, headers: res.headers, body: res, url };
    }
  }

  /** Reads a response body into memory, refusing more than `max` bytes (by header or as it streams). */
  async readBody(res: RegistryResponse, max: number, what: string): Promise<Buffer> {
    const length = Number(header(res.headers['content-length']) ?? NaN);
    if (Number.isFinite(length) && length > max) {
      res.body.destroy();
      throw new NacelleError(`${what}: the registry announces ${length} bytes, more than the ${max} allowed`, { code: 'ERR_TOO_LARGE' });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) {
        res.body.destroy();
        throw new NacelleError(`${what}: more than the ${max} bytes allowed`, { code: 'ERR_TOO_LARGE' });
      }
      chunks.push(chunk);
    }
    return Buffer.concat(chunks, size);
  }

  #checkScheme(url: URL, what: string): void {
    if (url.protocol === 'https:') return;
    if (url.protocol !== 'http:') throw new RegistryError(`${what}: unsupported URL scheme in ${url.href}`, { code: 'ERR_REGISTRY_PROTOCOL' });
    if (!plainHttpAllowed(url.host, this.#insecure)) {
      throw new RegistryError(`${what}: refusing plain HTTP to ${url.host} (only loopback registries, or insecure: true)`, { code: 'ERR_INSECURE' });
    }
  }

  async #sendWithRetries(
    method: RegistryMethod,
    url: URL,
    headers: Record<string, string>,
    body: RegistryRequest['body'],
    retry: boolean,
    what: string,
  ): Promise<IncomingMessage> {
    for (let attempt = 0; ; attempt++) {
      let res: IncomingMessage;
      try {
        res = await this.#send(method, url, headers, body, what);
      } catch (err) {
        if (!retry || attempt >= this.#retries || !isTransient(err)) throw wrapNetworkError(err, what, method, url);
        await sleep(backoff(attempt));
        continue;
      }
      const status = res.statusCode ?? 0;
      if (retry && attempt < this.#retries && (status >= 500 || status === 429)) {
        res.resume();
        await sleep(backoff(attempt));
        continue;
      }
      return res;
    }
  }

  /** One HTTP exchange; resolves with the response head. */
  #send(method: RegistryMethod, url: URL, headers: Record<string, string>, body: RegistryRequest['body'], what: string): Promise<IncomingMessage> {
    const secure = url.protocol === 'https:';
    const send = secure ? https.request : http.request;
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = send(url, { method, headers, agent: secure ? this.#httpsAgent : this.#httpAgent });
      req.setTimeout(this.#timeoutMs, () => {
        req.destroy(new TimeoutError(`${what}: ${method} ${url.href} sent nothing for ${this.#timeoutMs} ms`));
      });
      req.on('error', reject);
      req.on('response', resolve);
      if (body === undefined) {
        req.end();
      } else if (Buffer.isBuffer(body)) {
        req.end(body);
      } else {
        body().then(
          (stream) => {
            stream.on('error', (err) => req.destroy(err));
            stream.pipe(req);
          },
          (err: unknown) => req.destroy(err as Error),
        );
      }
    });
  }

  /** GET of a small document (token endpoints): status and body, through the same scheme rules. */
  async #fetchSmall(url: URL, headers: Record<string, string>): Promise<{ status: number; body: Buffer }> {
    const what = `token request to ${url.origin}${url.pathname}`;
    let current = url;
    for (let redirects = 0; ; redirects++) {
      this.#checkScheme(current, what);
      const res = await this.#sendWithRetries('GET', current, { 'user-agent': 'nacelle', ...headers }, undefined, true, what);
      const status = res.statusCode ?? 0;
      if (isRedirect(status) && redirects < MAX_REDIRECTS && res.headers.location) {
        res.resume();
        current = new URL(res.headers.location, current);
        continue;
      }
      const body = await this.readBody({ status, headers: res.headers, body: res, url: current }, 1 << 20, what);
      return { status, body };
    }
  }

  async #failure(what: string, method: string, url: URL, res: IncomingMessage): Promise<Error> {
    const status = res.statusCode ?? 0;
    let details: RegistryErrorDetail[] = [];
    if (method !== 'HEAD') {
      const text = await this.readBody({ status, headers: res.headers, body: res, url }, MAX_ERROR_BODY, what)
        .then((b) => b.toString('utf8'))
        .catch(() => '');
      details = parseErrorBody(text);
    } else {
      res.resume();
    }
    const detail = details.length ? `: ${details.map((d) => `${d.code}${d.message ? ` (${d.message})` : ''}`).join('; ')}` : '';
    const message = `${what}: ${method} ${url.pathname} answered ${status} ${res.statusMessage ?? ''}`.trimEnd() + detail;
    if (status === 404) return new NotFoundError(message);
    const code = status === 401 ? 'ERR_UNAUTHORIZED' : status === 403 ? 'ERR_DENIED' : 'ERR_REGISTRY';
    return new RegistryError(message, { code, status, details });
  }
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308;
}

function backoff(attempt: number): number {
  return Math.min(2000, 100 * 2 ** attempt) + Math.floor(Math.random() * 50);
}

const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ECONNABORTED', 'ENETUNREACH', 'EHOSTUNREACH', 'UND_ERR_SOCKET']);

/** Whether a failed exchange may succeed when tried again. @internal */
export function isTransient(err: unknown): boolean {
  if (err instanceof TimeoutError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
  return err instanceof Error && /socket hang up|aborted|premature close/i.test(err.message);
}

function wrapNetworkError(err: unknown, what: string, method: string, url: URL): unknown {
  if (err instanceof NacelleError) return err;
  const e = err as NodeJS.ErrnoException;
  return new RegistryError(`${what}: ${method} ${url.href} failed: ${e.message}`, { code: typeof e.code === 'string' ? e.code : 'ERR_REGISTRY', cause: err });
}

function parseErrorBody(text: string): RegistryErrorDetail[] {
  try {
    const parsed = JSON.parse(text) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return [];
    return parsed.errors
      .filter((e): e is { code?: unknown; message?: unknown } => typeof e === 'object' && e !== null)
      .map((e) => ({ code: String(e.code ?? 'UNKNOWN'), message: typeof e.message === 'string' ? e.message : '' }));
  } catch {
    return [];
  }
}
