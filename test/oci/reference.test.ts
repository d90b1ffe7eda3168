import { describe, expect, it } from 'vitest';
import { NacelleError } from '../../lib/errors';
import {
  ImageReference,
  InvalidReferenceError,
  isLoopbackRegistry,
  parseReference,
} from '../../lib/oci/reference';

const HEX = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const DIGEST = `sha256:${HEX}` as const;

describe('parseReference: Docker normalization table', () => {
  // input, registry, repository, tag, digest, toString(), familiar
  const table: [string, string, string, string | undefined, string | undefined, string, string][] = [
    ['busybox', 'docker.io', 'library/busybox', undefined, undefined, 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined, 'docker.io/library/busybox:1.36', 'busybox:1.36'],
    ['docker.io/busybox', 'docker.io', 'library/busybox', undefined, undefined, 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['docker.io/library/busybox', 'docker.io', 'library/busybox', undefined, undefined, 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['index.docker.io/library/busybox', 'docker.io', 'library/busybox', undefined, undefined, 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['index.docker.io/busybox', 'docker.io', 'library/busybox', undefined, undefined, 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['user/app', 'docker.io', 'user/app', undefined, undefined, 'docker.io/user/app:latest', 'user/app:latest'],
    ['docker.io/library/a/b', 'docker.io', 'library/a/b', undefined, undefined, 'docker.io/library/a/b:latest', 'library/a/b:latest'],
    ['ghcr.io/org/x', 'ghcr.io', 'org/x', undefined, undefined, 'ghcr.io/org/x:latest', 'ghcr.io/org/x:latest'],
    ['ghcr.io/x', 'ghcr.io', 'x', undefined, undefined, 'ghcr.io/x:latest', 'ghcr.io/x:latest'],
    ['quay.io:443/a/b:c', 'quay.io:443', 'a/b', 'c', undefined, 'quay.io:443/a/b:c', 'quay.io:443/a/b:c'],
    ['localhost/x', 'localhost', 'x', undefined, undefined, 'localhost/x:latest', 'localhost/x:latest'],
    ['localhost:5000/a/b:t', 'localhost:5000', 'a/b', 't', undefined, 'localhost:5000/a/b:t', 'localhost:5000/a/b:t'],
    [`localhost:5000/a/b:t@${DIGEST}`, 'localhost:5000', 'a/b', 't', DIGEST, `localhost:5000/a/b:t@${DIGEST}`, `localhost:5000/a/b:t@${DIGEST}`],
    [`busybox@${DIGEST}`, 'docker.io', 'library/busybox', undefined, DIGEST, `docker.io/library/busybox@${DIGEST}`, `busybox@${DIGEST}`],
    ['[::1]:5000/x', '[::1]:5000', 'x', undefined, undefined, '[::1]:5000/x:latest', '[::1]:5000/x:latest'],
    ['[2001:db8::1]/a/b:v1', '[2001:db8::1]', 'a/b', 'v1', undefined, '[2001:db8::1]/a/b:v1', '[2001:db8::1]/a/b:v1'],
    ['127.0.0.1:5000/x_y__z.w-v--u', '127.0.0.1:5000', 'x_y__z.w-v--u', undefined, undefined, '127.0.0.1:5000/x_y__z.w-v--u:latest', '127.0.0.1:5000/x_y__z.w-v--u:latest'],
    // the first component is a registry when it has an uppercase letter, as in Docker
    ['Registry/app', 'Registry', 'app', undefined, undefined, 'Registry/app:latest', 'Registry/app:latest'],
    // a bare host:port is a name and a tag
    ['localhost:5000', 'docker.io', 'library/localhost', '5000', undefined, 'docker.io/library/localhost:5000', 'localhost:5000'],
    ['a:_Tag.with-Caps_', 'docker.io', 'library/a', '_Tag.with-Caps_', undefined, 'docker.io/library/a:_Tag.with-Caps_', 'a:_Tag.with-Caps_'],
  ];

  it.each(table)('%s', (input, registry, repository, tag, digest, full, familiar) => {
    const ref = parseReference(input);
    expect(ref).toBeInstanceOf(ImageReference);
    expect(ref.registry).toBe(registry);
    expect(ref.repository).toBe(repository);
    expect(ref.tag).toBe(tag);
    expect(ref.digest).toBe(digest);
    expect(ref.name).toBe(`${registry}/${repository}`);
    expect(ref.toString()).toBe(full);
    expect(`${ref}`).toBe(full);
    expect(ref.familiar).toBe(familiar);
    // normalizing is idempotent
    expect(parseReference(full).toString()).toBe(full);
    expect(parseReference(familiar).toString()).toBe(full);
  });

  it('gives the familiar name without tag', () => {
    expect(parseReference('busybox:1').familiarName).toBe('busybox');
    expect(parseReference('docker.io/user/app').familiarName).toBe('user/app');
    expect(parseReference('ghcr.io/org/x:1').familiarName).toBe('ghcr.io/org/x');
  });

  it('accepts a tag of 128 characters and a name of 255', () => {
    expect(parseReference(`x:${'t'.repeat(128)}`).tag).toHaveLength(128);
    const repo = 'a'.repeat(255 - 'example.com/'.length);
    expect(parseReference(`example.com/${repo}`).name).toHaveLength(255);
  });
});

describe('parseReference: invalid references', () => {
  const table: [string, RegExp][] = [
    ['', /empty/],
    ['Busybox', /must be lowercase/],
    ['docker.io/Library/busybox', /must be lowercase/],
    ['ghcr.io/Org/x', /must be lowercase/],
    ['a//b', /empty path component/],
    ['a/b/', /empty path component/],
    ['ghcr.io/', /repository name is empty/],
    [':tag', /repository name is missing/],
    ['x:', /tag is empty/],
    ['x@', /digest is empty/],
    ['x@sha256:abc', /invalid digest 'sha256:abc'/],
    [`x@sha256:${HEX.toUpperCase()}`, /sha256:<64 lowercase hex>/],
    [`x@md5:${'a'.repeat(32)}`, /invalid digest/],
    [`x@${DIGEST}@${DIGEST}`, /more than one '@'/],
    [`${'a'.repeat(256)}`, /too long/],
    [`example.com/${'a'.repeat(244)}`, /too long \(256 > 255/],
    ['-x', /invalid path component '-x'/],
    ['x-', /invalid path component 'x-'/],
    ['a/.b', /invalid path component '.b'/],
    ['a___b', /invalid path component/],
    ['x:-tag', /invalid tag '-tag'/],
    ['x:.tag', /invalid tag/],
    [`x:${'t'.repeat(129)}`, /invalid tag/],
    ['x:a:b', /invalid tag 'a:b'/],
    ['ex ample.com/x', /invalid registry 'ex ample.com'/],
    ['-bad.com/x', /invalid registry/],
    ['host:port/x', /invalid registry 'host:port'/],
    [HEX, /image id/],
    ['x y', /invalid path component 'x y'/],
  ];

  it.each(table)('%j is rejected (%s)', (input, reason) => {
    let err: unknown;
    try {
      parseReference(input);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidReferenceError);
    expect(err).toBeInstanceOf(NacelleError);
    const e = err as InvalidReferenceError;
    expect(e.code).toBe('ERR_INVALID_REFERENCE');
    expect(e.reference).toBe(input);
    expect(e.message).toContain(`'${input}'`);
    expect(e.reason).toMatch(reason);
    expect(e.message).toMatch(reason);
  });
});

describe('ImageReference', () => {
  it('builds from parts, normalizing like parseReference', () => {
    const ref = new ImageReference({ registry: 'index.docker.io', repository: 'busybox', tag: '1' });
    expect(ref.toString()).toBe('docker.io/library/busybox:1');
    expect(() => new ImageReference({ registry: 'ghcr.io', repository: 'A/b' })).toThrow(InvalidReferenceError);
    expect(() => new ImageReference({ registry: '', repository: 'a' })).toThrow(/registry is empty/);
  });

  it('swaps tags and digests, keeping the other', () => {
    const ref = parseReference('ghcr.io/org/x:1');
    expect(ref.withTag('2').toString()).toBe('ghcr.io/org/x:2');
    const pinned = ref.withDigest(DIGEST);
    expect(pinned.toString()).toBe(`ghcr.io/org/x:1@${DIGEST}`);
    expect(pinned.withTag('3').toString()).toBe(`ghcr.io/org/x:3@${DIGEST}`);
    expect(() => ref.withTag('')).toThrow(InvalidReferenceError);
  });
});

describe('isLoopbackRegistry', () => {
  it.each([
    'localhost',
    'localhost:5000',
    'LOCALHOST:5000',
    '127.0.0.1',
    '127.0.0.1:5000',
    '127.1.2.3:443',
    '[::1]',
    '[::1]:5000',
    '[0:0:0:0:0:0:0:1]:5000',
    '::1',
    '[::ffff:127.0.0.1]:5000',
  ])('%s is loopback', (registry) => {
    expect(isLoopbackRegistry(registry)).toBe(true);
  });

  it.each([
    'docker.io',
    'localhost.example.com',
    'mylocalhost:5000',
    '128.0.0.1',
    '10.0.0.1:5000',
    '[::2]:5000',
    '[::1',
    '[::1]x',
    'localhost:abc',
    '127.0.0.1.nip.io',
    '',
  ])('%s is not loopback', (registry) => {
    expect(isLoopbackRegistry(registry)).toBe(false);
  });
});
