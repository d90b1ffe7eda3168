/**
 * Test peers for the registry client: Debian's docker-registry (distribution
 * v2) on 127.0.0.1 with filesystem storage in a temp dir, and a Node reverse
 * proxy in front of it that can demand Bearer tokens (with its own token
 * endpoint), count requests and bytes, and inject faults (corrupt, truncate,
 * drop, 404, endless 401, replace manifests).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

/** The registry binary. */
export const REGISTRY_BIN = process.env.NACELLE_DOCKER_REGISTRY ?? '/usr/bin/docker-registry';

/** A running docker-registry. */
export interface TestRegistry {
  /** `127.0.0.1:<port>`. */
  host: string;
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /** Its temp dir (config, storage, htpasswd). */
  dir: string;
  /** Stops it and removes its temp dir. */
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createNetServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForV2(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}`);
    const status = await new Promise<number>((resolve) => {
      const req = http.get(`${url}/v2/`, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.setTimeout(1000, () => req.destroy());
    });
    if (status === 200 || status === 401) return;
    await sleep(50);
  }
  throw new Error(`docker-registry did not answer ${url}/v2/ within ${timeoutMs} ms`);
}

/**
 * Starts docker-registry on a free loopback port. With `htpasswd`, it asks
 * for Basic auth against those users (bcrypt, made with htpasswd -B).
 */
export async function startRegistry(options: { htpasswd?: Record<string, string> } = {}): Promise<TestRegistry> {
  const dir = makeTempDir('registry');
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${randomBytes(16).toString('hex')}`,
  ];
  if (options.htpasswd) {
    const file = join(dir, 'htpasswd');
    writeFileSync(file, '');
    for (const [user, pass] of Object.entries(options.htpasswd)) {
      execFileSync('htpasswd', ['-Bb', file, user, pass], { stdio: 'ignore' });
    }
    lines.push('auth:', '  htpasswd:', '    realm: nacelle-test', `    path: ${file}`);
  }
  const config = join(dir, 'config.yml');
  writeFileSync(config, `${lines.join('\n')}\n`);
  const child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    if (stderr.length < 20_000) stderr += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    removeTempDir(dir);
  };
  try {
    await waitForV2(url, child, 15_000);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\n${stderr}`);
  }
  return { host: `127.0.0.1:${port}`, url, dir, stop };
}

/** What the proxy does to one request, decided by a fault hook. */
export type Fault =
  | { kind: 'corrupt' } // flip one byte of the body (lengths kept)
  | { kind: 'truncate'; bytes: number } // send this many body bytes, then cut the connection
  | { kind: 'status'; status: number; body?: string; headers?: Record<string, string> } // answer this instead
  | { kind: 'replace'; body: Buffer; contentType?: string } // answer 200 with this body instead
  | { kind: 'redirect' } // 307 to /_redirect/<same path> on the proxy, which then proxies normally
  | { kind: 'delay'; ms: number }; // wait, then pass through

/** One request the proxy saw. */
export interface SeenRequest {
  method: string;
  path: string;
  range?: string;
  status: number;
  /** Body bytes sent to the client. */
  bytes: number;
}

/** A proxy in front of a registry. */
export interface TestProxy {
  /** `127.0.0.1:<port>`. */
  host: string;
  /** Every request seen, in order (token requests included, path starts with /token). */
  requests: SeenRequest[];
  /** Decides a fault for a request (return undefined to pass it through). */
  fault?: (req: IncomingMessage, n: number) => Fault | undefined;
  /** Tokens issued so far. */
  tokensIssued: number;
  /** The most blob GETs that were in flight at once. */
  maxConcurrentBlobGets: number;
  /** Invalidates every issued token (the next request gets a 401 and must renew). */
  revokeTokens(): void;
  /** Stops the proxy. */
  stop(): Promise<void>;
}

/**
 * A reverse proxy to `upstream` on a free port. With `bearer`, every /v2/
 * request needs `Authorization: Bearer <token>` whose scope covers it; a
 * request without one gets a 401 challenge pointing at the proxy's /token
 * endpoint, which checks Basic credentials and grants the asked scopes.
 */
export async function startProxy(upstream: string, options: { bearer?: { username: string; password: string }; endless401?: boolean } = {}): Promise<TestProxy> {
  const up = new URL(upstream);
  const tokens = new Map<string, Set<string>>(); // token → granted "repo:action"
  let port = 0;
  const state: TestProxy = {
    host: '',
    requests: [],
    tokensIssued: 0,
    maxConcurrentBlobGets: 0,
    revokeTokens: () => tokens.clear(),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  let count = 0;
  let activeBlobGets = 0;
  const server = http.createServer(async (req, res) => {
    const n = count++;
    const path = req.url ?? '/';
    const seen: SeenRequest = { method: req.method ?? 'GET', path, status: 0, bytes: 0, ...(req.headers.range ? { range: req.headers.range } : {}) };
    state.requests.push(seen);
    const answer = (status: number, body: string | Buffer = '', headers: Record<string, string> = {}) => {
      seen.status = status;
      seen.bytes = Buffer.byteLength(body);
      res.writeHead(status, { 'content-length': String(Buffer.byteLength(body)), ...headers });
      res.end(body);
    };
    if (path.startsWith('/token')) {
      const auth = req.headers.authorization ?? '';
      const expected = options.bearer ? `Basic ${Buffer.from(`${options.bearer.username}:${options.bearer.password}`).toString('base64')}` : '';
      if (auth !== expected) return answer(401, JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
      const url = new URL(path, 'http://x');
      const grants = new Set<string>();
      for (const scope of url.searchParams.getAll('scope')) {
        const [type, repo, actions] = scope.split(':');
        if (type !== 'repository' || !repo || !actions) continue;
        for (const a of actions.split(',')) grants.add(`${repo}:${a}`);
      }
      const token = randomBytes(12).toString('hex');
      tokens.set(token, grants);
      state.tokensIssued++;
      return answer(200, JSON.stringify({ token, expires_in: 300 }), { 'content-type': 'application/json' });
    }
    let target = path;
    if (target.startsWith('/_redirect/')) target = target.slice('/_redirect'.length);
    if (options.bearer || options.endless401) {
      const m = /^\/v2\/(.+?)\/(blobs|manifests|tags)\//.exec(target);
      const repo = m?.[1];
      const action = req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'push';
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      const granted = token ? tokens.get(token) : undefined;
      const ok = !options.endless401 && granted && (!repo || granted.has(`${repo}:${action}`));
      if (!ok) {
        const scope = repo ? `repository:${repo}:${action === 'push' ? 'pull,push' : 'pull'}` : '';
        return answer(401, JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'token needed' }] }), {
          'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="nacelle-test"${scope ? `,scope="${scope}"` : ''}`,
          'content-type': 'application/json',
        });
      }
    }
    const fault = state.fault?.(req, n);
    if (fault?.kind === 'status') return answer(fault.status, fault.body ?? '', fault.headers);
    if (fault?.kind === 'replace') return answer(200, fault.body, { 'content-type': fault.contentType ?? 'application/vnd.oci.image.manifest.v1+json' });
    if (fault?.kind === 'redirect' && !path.startsWith('/_redirect/')) return answer(307, '', { location: `/_redirect${path}` });
    if (fault?.kind === 'delay') await sleep(fault.ms);
    if (req.method === 'GET' && target.includes('/blobs/sha256:')) {
      activeBlobGets++;
      state.maxConcurrentBlobGets = Math.max(state.maxConcurrentBlobGets, activeBlobGets);
      res.once('close', () => activeBlobGets--);
    }
    const headers = { ...req.headers, host: up.host };
    delete headers.authorization;
    const upReq = http.request({ host: up.hostname, port: up.port, method: req.method, path: target, headers }, (upRes) => {
      seen.status = upRes.statusCode ?? 0;
      const outHeaders = { ...upRes.headers };
      if (outHeaders.location) outHeaders.location = outHeaders.location.replace(`${up.protocol}//${up.host}`, `http://127.0.0.1:${port}`);
      res.writeHead(upRes.statusCode ?? 502, outHeaders);
      let sent = 0;
      let flipped = false;
      upRes.on('data', (chunk: Buffer) => {
        let out = chunk;
        if (fault?.kind === 'corrupt' && !flipped && out.length > 0) {
          out = Buffer.from(out);
          out[0] = out[0]! ^ 0xff;
          flipped = true;
        }
        if (fault?.kind === 'truncate' && sent + out.length >= fault.bytes) {
          const part = out.subarray(0, Math.max(0, fault.bytes - sent));
          sent += part.length;
          seen.bytes = sent;
          upRes.destroy();
          res.write(part, () => res.destroy());
          return;
        }
        sent += out.length;
        seen.bytes = sent;
        res.write(out);
      });
      upRes.on('end', () => res.end());
      upRes.on('error', () => res.destroy());
    });
    upReq.on('error', () => {
      if (!res.headersSent) answer(502);
      else res.destroy();
    });
    req.pipe(upReq);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const addr = server.address();
  port = typeof addr === 'object' && addr ? addr.port : 0;
  state.host = `127.0.0.1:${port}`;
  return state;
}

/** Runs a program, returning stdout; failures carry stderr. */
export function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000, env: env ?? process.env });
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
  }
}
