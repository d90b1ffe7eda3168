/**
 * Registry authentication: anonymous, Basic, and the Bearer token flow of
 * the distribution spec (a 401 with `WWW-Authenticate: Bearer realm=…,
 * service=…,scope=…` → GET realm?service=…&scope=… with Basic credentials if
 * any → a token, cached per scope until it expires or a 401 says it is no
 * longer good).
 * @module
 */
import type { RegistryCredentials } from './docker-config';
import { RegistryError } from './errors';

/** A parsed `WWW-Authenticate` challenge. */
export interface AuthChallenge {
  /** `basic` or `bearer` (lowercase), or another scheme nacelle cannot answer. */
  scheme: string;
  /** The challenge's parameters, names lowercased: realm, service, scope, error. */
  params: Record<string, string>;
}

/**
 * Parses a `WWW-Authenticate` header value (RFC 7235; quoted strings may
 * hold commas, as scopes such as `repository:a:pull,push` do). Only the first
 * challenge is returned.
 */
export function parseChallenge(header: string): AuthChallenge | undefined {
  const m = /^\s*([A-Za-z][A-Za-z0-9._~+/-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const scheme = m[1]!.toLowerCase();
  const params: Record<string, string> = {};
  const re = /\s*([A-Za-z][A-Za-z0-9._~+/-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/gy;
  const rest = m[2] ?? '';
  re.lastIndex = 0;
  let p: RegExpExecArray | null;
  while (re.lastIndex < rest.length && (p = re.exec(rest)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
    if (p[0] === '') break;
  }
  return { scheme, params };
}

/** A token as a token endpoint returns it. */
interface CachedToken {
  token: string;
  expiresAt: number;
}

/** Fetches a token endpoint URL (GET) with optional headers; returns status and body (capped). */
export type TokenFetcher = (url: URL, headers: Record<string, string>) => Promise<{ status: number; body: Buffer }>;

/** The largest token response read. */
const MAX_TOKEN_RESPONSE = 1 << 20;

/**
 * Authentication state for one registry: which scheme it asked for, the
 * credentials to answer with, and the Bearer tokens obtained so far.
 * @internal
 */
export class Authenticator {
  readonly #registry: string;
  readonly #credentials: RegistryCredentials | undefined;
  readonly #fetchToken: TokenFetcher;
  #scheme: 'none' | 'basic' | 'bearer' = 'none';
  #bearer: { realm: string; service: string | undefined } | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  /** Token requests in flight, so that parallel requests share one. */
  readonly #pending = new Map<string, Promise<void>>();
  /** Token requests made, for tests and diagnostics. */
  tokenRequests = 0;

  constructor(registry: string, credentials: RegistryCredentials | undefined, fetchToken: TokenFetcher) {
    this.#registry = registry;
    this.#credentials = credentials;
    this.#fetchToken = fetchToken;
  }

  /** The `Authorization` header for a request needing `scopes`, if one can be given without asking. */
  header(scopes: readonly string[]): string | undefined {
    if (this.#scheme === 'basic') return this.#basic();
    if (this.#scheme === 'bearer') {
      const cached = this.#tokens.get(scopeKey(scopes));
      if (cached && cached.expiresAt > Date.now()) return `Bearer ${cached.token}`;
    }
    return undefined;
  }

  /**
   * Handles a 401. `sentAuth` is the Authorization header the refused request
   * carried. Returns once a retry can carry better credentials; throws a
   * {@link RegistryError} (`ERR_UNAUTHORIZED`) when nothing better can be sent.
   */
  async unauthorized(what: string, wwwAuthenticate: string | undefined, scopes: readonly string[], sentAuth: string | undefined, freshToken: boolean): Promise<void> {
    const challenge = wwwAuthenticate ? parseChallenge(wwwAuthenticate) : undefined;
    if (!challenge) {
      throw new RegistryError(`${what}: 401 Unauthorized without a WWW-Authenticate challenge`, { code: 'ERR_UNAUTHORIZED', status: 401 });
    }
    if (challenge.scheme === 'basic') {
      if (!this.#credentials) {
        throw new RegistryError(`${what}: the registry ${this.#registry} asks for a user name and password (Basic) and none were given (auth option or docker config)`, {
          code: 'ERR_UNAUTHORIZED',
          status: 401,
        });
      }
      if (sentAuth !== undefined && sentAuth === this.#basic()) {
        throw new RegistryError(`${what}: the registry ${this.#registry} rejected the credentials of user '${this.#credentials.username}'`, {
          code: 'ERR_UNAUTHORIZED',
          status: 401,
        });
      }
      this.#scheme = 'basic';
      return;
    }
    if (challenge.scheme !== 'bearer') {
      throw new RegistryError(`${what}: the registry asks for '${challenge.scheme}' authentication, which nacelle does not speak (Basic, Bearer)`, {
        code: 'ERR_UNAUTHORIZED',
        status: 401,
      });
    }
    const realm = challenge.params['realm'];
    if (!realm) throw new RegistryError(`${what}: Bearer challenge without a realm`, { code: 'ERR_REGISTRY_PROTOCOL', status: 401 });
    if (freshToken) {
      // The token was obtained for this very request and is refused anyway:
      // asking again would loop.
      const why = challenge.params['error'] ? ` (${challenge.params['error']})` : '';
      throw new RegistryError(`${what}: the registry ${this.#registry} refused a fresh token for ${scopes.join(' ')}${why}; not retrying`, {
        code: 'ERR_UNAUTHORIZED',
        status: 401,
      });
    }
    this.#scheme = 'bearer';
    this.#bearer = { realm, service: challenge.params['service'] };
    const key = scopeKey(scopes);
    const cached = this.#tokens.get(key);
    if (cached) {
      // A token refused by the registry is dropped; one that another request
      // obtained meanwhile is simply used.
      if (sentAuth === `Bearer ${cached.token}` || cached.expiresAt <= Date.now()) this.#tokens.delete(key);
      else return;
    }
    const pending = this.#pending.get(key);
    if (pending) {
      await pending;
      return;
    }
    const wanted = new Set(scopes);
    if (challenge.params['scope']) for (const s of challenge.params['scope'].split(' ')) if (s) wanted.add(s);
    const fetching = this.#token(what, scopes, [...wanted]).finally(() => this.#pending.delete(key));
    this.#pending.set(key, fetching);
    await fetching;
  }

  async #token(what: string, cacheScopes: readonly string[], scopes: readonly string[]): Promise<void> {
    const bearer = this.#bearer!;
    let url: URL;
    try {
      url = new URL(bearer.realm);
    } catch (err) {
      throw new RegistryError(`${what}: Bearer realm '${bearer.realm}' is not a URL`, { code: 'ERR_REGISTRY_PROTOCOL', cause: err });
    }
    if (bearer.service) url.searchParams.set('service', bearer.service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#credentials) headers['authorization'] = this.#basic()!;
    this.tokenRequests++;
    const { status, body } = await this.#fetchToken(url, headers);
    if (status === 401 || status === 403) {
      throw new RegistryError(
        `${what}: the token server ${url.origin}${url.pathname} refused ${this.#credentials ? `the credentials of user '${this.#credentials.username}'` : 'an anonymous request'} for ${scopes.join(' ')} (${status})`,
        { code: 'ERR_UNAUTHORIZED', status },
      );
    }
    if (status !== 200) {
      throw new RegistryError(`${what}: the token server ${url.origin}${url.pathname} answered ${status}`, { status });
    }
    if (body.length > MAX_TOKEN_RESPONSE) throw new RegistryError(`${what}: token response too large`, { code: 'ERR_REGISTRY_PROTOCOL' });
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      parsed = JSON.parse(body.toString('utf8')) as typeof parsed;
    } catch (err) {
      throw new RegistryError(`${what}: the token server sent invalid JSON`, { code: 'ERR_REGISTRY_PROTOCOL', cause: err });
    }
    const token = typeof parsed.token === 'string' && parsed.token ? parsed.token : parsed.access_token;
    if (typeof token !== 'string' || token === '') {
      throw new RegistryError(`${what}: the token server's answer has no token`, { code: 'ERR_REGISTRY_PROTOCOL' });
    }
    // The spec's default lifetime is 60 s; renew a little early.
    const seconds = typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 60;
    this.#tokens.set(scopeKey(cacheScopes), { token, expiresAt: Date.now() + Math.max(1, seconds - 5) * 1000 });
  }

  #basic(): string | undefined {
    if (!this.#credentials) return undefined;
    return `Basic ${Buffer.from(`${this.#credentials.username}:${this.#credentials.password}`).toString('base64')}`;
  }
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}
