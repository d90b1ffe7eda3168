/**
 * Credentials from Docker's client config: `$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`, its `auths` map keyed by registry host (with or
 * without a scheme, Docker Hub as `https://index.docker.io/v1/`), each entry
 * holding `auth` (base64 of `user:password`) or `username` and `password`.
 * Credential helpers (`credsStore`, `credHelpers`) are not run.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors';

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
  const auths = (config as { auths?: unknown } | null)?.auths;
  if (typeof auths !== 'object' || auths === null) return undefined;
  const wanted = normalizeRegistryKey(registry);
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
