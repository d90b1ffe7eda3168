/**
 * Registry authentication: Basic against docker-registry with htpasswd,
 * credentials from the options or Docker's config ($DOCKER_CONFIG), the
 * Bearer token flow against a token server in front of the registry, token
 * renewal on 401, and an endless 401 that ends with an error.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../lib/image/image';
import { parseChallenge } from '../../lib/registry/auth';
import { plainHttpAllowed, registryHost } from '../../lib/registry/client';
import { dockerConfigPath, dockerCredentials, normalizeRegistryKey } from '../../lib/registry/docker-config';
import { parsePlatform, selectPlatform } from '../../lib/registry/platform';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { type TestProxy, type TestRegistry, startProxy, startRegistry } from './registry';

describe('registry auth and naming helpers', () => {
  it('parses WWW-Authenticate challenges, quoted commas included', () => {
    expect(parseChallenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.example/token', service: 'reg', scope: 'repository:a/b:pull,push' },
    });
    expect(parseChallenge('Basic realm="x y"')).toEqual({ scheme: 'basic', params: { realm: 'x y' } });
    expect(parseChallenge('Bearer realm=unquoted, error="invalid_token"')?.params).toEqual({ realm: 'unquoted', error: 'invalid_token' });
  });

  it('plain HTTP only for loopback or insecure; Docker Hub maps to its API host', () => {
    expect(plainHttpAllowed('127.0.0.1:5000', false)).toBe(true);
    expect(plainHttpAllowed('localhost:5000', false)).toBe(true);
    expect(plainHttpAllowed('[::1]:5000', false)).toBe(true);
    expect(plainHttpAllowed('registry.example.com', false)).toBe(false);
    expect(plainHttpAllowed('10.0.0.5:5000', true)).toBe(true);
    expect(registryHost('docker.io')).toBe('registry-1.docker.io');
  });

  it('runs credential helpers as Docker does: credHelpers for one registry, credsStore for the rest', async () => {
    const dir = makeTempDir('docker-helpers');
    try {
      // A helper that knows one server; it reads the server from stdin, as Docker's helpers do.
      const bin = join(dir, 'bin');
      mkdirSync(bin);
      writeFileSync(
        join(bin, 'docker-credential-fake'),
        '#!/bin/sh\n[ "$1" = get ] || exit 2\nread server\ncase "$server" in\n' +
          '  127.0.0.1:5000) echo \'{"ServerURL":"127.0.0.1:5000","Username":"carol","Secret":"from-helper"}\' ;;\n' +
          '  https://index.docker.io/v1/) echo \'{"ServerURL":"x","Username":"dave","Secret":"hub"}\' ;;\n' +
          '  *) echo "credentials not found in native keychain"; exit 1 ;;\nesac\n',
        { mode: 0o755 },
      );
      writeFileSync(join(bin, 'docker-credential-broken'), '#!/bin/sh\necho "keychain locked" >&2\nexit 3\n', { mode: 0o755 });
      const env = { DOCKER_CONFIG: dir, PATH: `${bin}:/usr/bin:/bin` };
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ auths: { '127.0.0.1:5000': {} }, credHelpers: { '127.0.0.1:5000': 'fake' }, credsStore: 'fake' }));
      expect(await dockerCredentials('127.0.0.1:5000', env)).toEqual({ username: 'carol', password: 'from-helper' });
      expect(await dockerCredentials('docker.io', env)).toEqual({ username: 'dave', password: 'hub' });
      expect(await dockerCredentials('ghcr.io', env)).toBeUndefined();
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ credsStore: 'broken' }));
      await expect(dockerCredentials('ghcr.io', env)).rejects.toThrow(/docker-credential-broken get failed: keychain locked/);
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ credsStore: 'absent' }));
      await expect(dockerCredentials('ghcr.io', env)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND', message: expect.stringContaining('docker-credential-absent is not on PATH') });
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ credsStore: '../../bin/sh' }));
      await expect(dockerCredentials('ghcr.io', env)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    } finally {
      removeTempDir(dir);
    }
  });

  it('reads credentials from $DOCKER_CONFIG/config.json (auth or username/password)', async () => {
    const dir = makeTempDir('docker-config');
    try {
      const env = { DOCKER_CONFIG: dir };
      expect(dockerConfigPath(env)).toBe(join(dir, 'config.json'));
      expect(await dockerCredentials('127.0.0.1:5000', env)).toBeUndefined();
      writeFileSync(
        join(dir, 'config.json'),
        JSON.stringify({
          auths: {
            'http://127.0.0.1:5000': { auth: Buffer.from('alice:s3:cret').toString('base64') },
            'https://index.docker.io/v1/': { username: 'bob', password: 'pw' },
          },
        }),
      );
      expect(await dockerCredentials('127.0.0.1:5000', env)).toEqual({ username: 'alice', password: 's3:cret' });
      expect(await dockerCredentials('docker.io', env)).toEqual({ username: 'bob', password: 'pw' });
      expect(await dockerCredentials('ghcr.io', env)).toBeUndefined();
      expect(normalizeRegistryKey('https://registry-1.docker.io/v2/')).toBe('docker.io');
      writeFileSync(join(dir, 'config.json'), '{ not json');
      await expect(dockerCredentials('127.0.0.1:5000', env)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    } finally {
      removeTempDir(dir);
    }
  });

  it('parses platforms and picks index entries', () => {
    expect(parsePlatform('linux/arm/v7')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(parsePlatform('arm64')).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(() => parsePlatform('linux//x')).toThrow(/invalid platform/);
    const d = (architecture: string, variant?: string) => ({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: `sha256:${(architecture + (variant ?? '')).padEnd(64, '0').replace(/[^0-9a-f]/g, 'a')}` as const,
      size: 1,
      platform: { os: 'linux', architecture, ...(variant ? { variant } : {}) },
    });
    const list = [d('unknown'), d('arm', 'v6'), d('arm', 'v7'), d('arm64', 'v8'), d('amd64')];
    expect(selectPlatform(list, parsePlatform('linux/arm/v7'))?.platform?.variant).toBe('v7');
    expect(selectPlatform(list, parsePlatform('linux/arm64'))?.platform?.architecture).toBe('arm64');
    expect(selectPlatform(list, parsePlatform('linux/arm64/v8'))?.platform?.architecture).toBe('arm64');
    expect(selectPlatform(list, parsePlatform('linux/riscv64'))).toBeUndefined();
  });
});

describeRoot('registry authentication against docker-registry', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  const savedDockerConfig = process.env.DOCKER_CONFIG;

  beforeAll(async () => {
    dir = makeTempDir('registry-auth');
    rt = await Runtime.open({ root: join(dir, 'root') });
    img = await busyboxImage(rt, dir);
    // No stray credentials from the host's own Docker config.
    process.env.DOCKER_CONFIG = join(dir, 'no-docker-config');
  }, 60_000);

  afterAll(() => {
    if (savedDockerConfig === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = savedDockerConfig;
    if (dir) removeTempDir(dir);
  });

  describe('Basic (htpasswd)', () => {
    let registry: TestRegistry;
    beforeAll(async () => {
      registry = await startRegistry({ htpasswd: { alice: 'wonderland' } });
    }, 30_000);
    afterAll(async () => registry?.stop());
    afterEach(() => {
      process.env.DOCKER_CONFIG = join(dir, 'no-docker-config');
    });

    it('refuses without credentials and with a wrong password, clearly', async () => {
      const anon = await rt.images.push(img, `${registry.host}/basic:v1`).catch((e: unknown) => e);
      expect(anon).toMatchObject({ code: 'ERR_UNAUTHORIZED' });
      expect((anon as Error).message).toMatch(/user name and password/);
      const wrong = await rt.images.push(img, `${registry.host}/basic:v1`, { auth: { username: 'alice', password: 'nope' } }).catch((e: unknown) => e);
      expect(wrong).toMatchObject({ code: 'ERR_UNAUTHORIZED' });
      expect((wrong as Error).message).toContain("user 'alice'");
    });

    it('pushes with credentials from the options, pulls with credentials from $DOCKER_CONFIG', async () => {
      const pushed = await rt.images.push(img, `${registry.host}/basic:v1`, { auth: { username: 'alice', password: 'wonderland' } });
      expect(pushed.digest).toBe(img.digest);
      const cfg = join(dir, 'docker-config');
      mkdirSync(cfg, { recursive: true });
      writeFileSync(join(cfg, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from('alice:wonderland').toString('base64') } } }));
      process.env.DOCKER_CONFIG = cfg;
      const rt2 = await Runtime.open({ root: join(dir, 'root-basic') });
      const pulled = await rt2.images.pull(`${registry.host}/basic:v1`);
      expect(pulled.digest).toBe(img.digest);
      // and through a credential helper named in the config, as Docker runs it
      const bin = join(dir, 'helper-bin');
      mkdirSync(bin, { recursive: true });
      writeFileSync(join(bin, 'docker-credential-test'), `#!/bin/sh\nread server\n[ "$server" = "${registry.host}" ] || exit 1\necho '{"Username":"alice","Secret":"wonderland"}'\n`, { mode: 0o755 });
      writeFileSync(join(cfg, 'config.json'), JSON.stringify({ credHelpers: { [registry.host]: 'test' } }));
      const savedPath = process.env.PATH;
      process.env.PATH = `${bin}:${savedPath ?? '/usr/bin:/bin'}`;
      try {
        const rt3 = await Runtime.open({ root: join(dir, 'root-helper') });
        expect((await rt3.images.pull(`${registry.host}/basic:v1`)).digest).toBe(img.digest);
      } finally {
        process.env.PATH = savedPath;
      }
    });
  });

  describe('Bearer token flow', () => {
    let registry: TestRegistry;
    let proxy: TestProxy;
    const creds = { username: 'tok', password: 'en' };
    beforeAll(async () => {
      registry = await startRegistry();
      proxy = await startProxy(registry.url, { bearer: creds });
    }, 30_000);
    afterAll(async () => {
      await proxy?.stop();
      await registry?.stop();
    });

    it('gets a token with the right scope, caches it, and renews it after a 401', async () => {
      const pushed = await rt.images.push(img, `${proxy.host}/bearer/app:v1`, { auth: creds });
      expect(pushed.digest).toBe(img.digest);
      // One token for pull,push on the repository, reused for every request.
      expect(proxy.tokensIssued).toBe(1);
      const tokenReq = proxy.requests.find((r) => r.path.startsWith('/token'))!;
      expect(decodeURIComponent(tokenReq.path)).toContain('scope=repository:bearer/app:pull,push');
      expect(decodeURIComponent(tokenReq.path)).toContain('service=nacelle-test');

      const rt2 = await Runtime.open({ root: join(dir, 'root-bearer') });
      const before = proxy.tokensIssued;
      let revoked = false;
      proxy.fault = (req) => {
        // Revoke every token once, in the middle of the pull.
        if (!revoked && req.url?.includes('/blobs/')) {
          revoked = true;
          proxy.revokeTokens();
        }
        return undefined;
      };
      const pulled = await rt2.images.pull(`${proxy.host}/bearer/app:v1`, { auth: creds });
      proxy.fault = undefined;
      expect(pulled.digest).toBe(img.digest);
      expect(proxy.tokensIssued - before).toBe(2); // the first, and one renewal
    });

    it('wrong credentials at the token server: a clear error', async () => {
      const rt2 = await Runtime.open({ root: join(dir, 'root-bearer-wrong') });
      const err = await rt2.images.pull(`${proxy.host}/bearer/app:v1`, { auth: { username: 'tok', password: 'wrong' } }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_UNAUTHORIZED' });
      expect((err as Error).message).toMatch(/token server .* refused/);
    });
  });

  describe('endless 401', () => {
    let registry: TestRegistry;
    let proxy: TestProxy;
    beforeAll(async () => {
      registry = await startRegistry();
      proxy = await startProxy(registry.url, { bearer: { username: 'u', password: 'p' }, endless401: true });
    }, 30_000);
    afterAll(async () => {
      await proxy?.stop();
      await registry?.stop();
    });

    it('ends with an error after one fresh token, not a loop', async () => {
      const rt2 = await Runtime.open({ root: join(dir, 'root-endless') });
      const err = await rt2.images.pull(`${proxy.host}/loop/app:v1`, { auth: { username: 'u', password: 'p' } }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_UNAUTHORIZED' });
      expect((err as Error).message).toMatch(/refused a fresh token/);
      expect(proxy.tokensIssued).toBe(1);
      expect(proxy.requests.length).toBeLessThanOrEqual(3);
    });
  });
});
