/**
 * Credentials from Docker's client config: `$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`, its `auths` map keyed by registry host (with or
 * without a scheme, Docker Hub as `https://index.docker.io/v1/`), each entry
 * holding `auth` (base64 of `user:password`) or `username` and `password`.
 * Credential helpers run as Docker runs them: `credHelpers[registry]`, else
 * `credsStore`, is the program `docker-credential-<name>`, called with `get`
 * and the server on stdin; it answers `{ Username, Secret }` as JSON.
 * @module
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError, TimeoutError } from '../errors';

/** A user name and password (or token used as a password) for a registry. */
export interface RegistryCredentials {
  /** The user name. */
  username: string;
  /** The password or access token. */
  password: string;
}

/** The path of the Docker client config this process would read. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.DOCKER_CONFIG || join(homedir(), '.docker');
  return join(dir, 'config.json');
}

const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

/** A registry key as Docker writes it, reduced to `host[:port]` (Docker Hub's aliases to `docker.io`). */
export function normalizeRegistryKey(key: string): string {
  let host = key.trim().replace(/^[a-z]+:\/\//i, '');
  const slash = host.indexOf('/');
  if (slash !== -1) host = host.slice(0, slash);
  host = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(host) ? 'docker.io' : host;
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
}

/**
 * The credentials Docker's config holds for `registry` (`host[:port]`), or
 * undefined when it holds none (or there is no config file).
 * @throws {@link InvalidArgumentError} when the file exists but is not valid JSON
 *   or its entry for the registry is malformed
 */
export async function dockerCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Promise<RegistryCredentials | undefined> {
  const path = dockerConfigPath(env);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES') return undefined;
    throw err;
  }
  let config: unknown;
  try {
    config = JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  const wanted = normalizeRegistryKey(registry);
  const helper = credentialHelperFor(config, wanted);
  if (helper) return runCredentialHelper(helper.name, helper.server, path, env);
  const auths = (config as { auths?: unknown } | null)?.auths;
  if (typeof auths !== 'object' || auths === null) return undefined;
  for (const [key, value] of Object.entries(auths as Record<string, unknown>)) {
    if (normalizeRegistryKey(key) !== wanted || typeof value !== 'object' || value === null) continue;
    const entry = value as AuthEntry;
    if (typeof entry.auth === 'string' && entry.auth !== '') {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon <= 0) throw new InvalidArgumentError(`${path}: auths["${key}"].auth is not base64 of user:password`);
      return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
    if (typeof entry.username === 'string' && typeof entry.password === 'string') {
      return { username: entry.username, password: entry.password };
    }
  }
  return undefined;
}

/** The helper Docker would ask for `registry` (normalized), and the server name it passes. */
function credentialHelperFor(config: unknown, registry: string): { name: string; server: string } | undefined {
  const c = config as { credHelpers?: unknown; credsStore?: unknown } | null;
  // Docker names Docker Hub by its old index URL to helpers
  const server = registry === 'docker.io' ? 'https://index.docker.io/v1/' : registry;
  if (typeof c?.credHelpers === 'object' && c.credHelpers !== null) {
    for (const [key, name] of Object.entries(c.credHelpers as Record<string, unknown>)) {
      if (typeof name === 'string' && name !== '' && normalizeRegistryKey(key) === registry) return { name, server };
    }
  }
  if (typeof c?.credsStore === 'string' && c.credsStore !== '') return { name: c.credsStore, server };
  return undefined;
}

/** How long a credential helper may take (a keychain may prompt; we never wait for that). */
const HELPER_TIMEOUT_MS = 10_000;

/**
 * Runs `docker-credential-<name> get` with the server on stdin. A helper that
 * has nothing for the server (it says "credentials not found") gives undefined.
 */
function runCredentialHelper(name: string, server: string, configPath: string, env: NodeJS.ProcessEnv): Promise<RegistryCredentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new InvalidArgumentError(`${configPath}: credential helper name '${name}' is not a plain program name`);
  const program = `docker-credential-${name}`;
  return new Promise((resolve, reject) => {
    const child = execFile(program, ['get'], { env: { PATH: env.PATH ?? process.env.PATH ?? '/usr/bin:/bin', HOME: env.HOME ?? process.env.HOME ?? '/' }, timeout: HELPER_TIMEOUT_MS, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: string | number };
        if (e.code === 'ENOENT') {
          reject(new NotFoundError(`${configPath} names the credential helper '${name}', but ${program} is not on PATH`, { cause: err }));
        } else if (e.killed) {
          reject(new TimeoutError(`${program} did not answer within ${HELPER_TIMEOUT_MS} ms`, { cause: err }));
        } else if (/credentials not found/i.test(`${stdout}${stderr}`)) {
          resolve(undefined);
        } else {
          reject(new InvalidArgumentError(`${program} get failed: ${`${stderr}`.trim() || err.message}`, { cause: err }));
        }
        return;
      }
      let answer: { Username?: unknown; Secret?: unknown };
      try {
        answer = JSON.parse(stdout) as { Username?: unknown; Secret?: unknown };
      } catch (parseErr) {
        reject(new InvalidArgumentError(`${program} get did not answer JSON: ${stdout.slice(0, 200)}`, { cause: parseErr }));
        return;
      }
      if (typeof answer.Username !== 'string' || typeof answer.Secret !== 'string') {
        reject(new InvalidArgumentError(`${program} get answered without Username and Secret`));
        return;
      }
      resolve({ username: answer.Username, password: answer.Secret });
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(server);
  });
}
