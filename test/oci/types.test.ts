import { describe, expect, it } from 'vitest';
import { NacelleError } from '../../lib/errors';
import { digestOf } from '../../lib/oci/digest';
import {
  EMPTY_JSON_DIGEST,
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_EMPTY_JSON,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER_TAR_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from '../../lib/oci/mediatypes';
import {
  ANNOTATION_CONTAINERD_IMAGE_NAME,
  ANNOTATION_CREATED,
  ANNOTATION_REF_NAME,
  Annotations,
  type DockerManifest,
  type DockerManifestList,
  type ImageIndex,
  type ImageManifest,
  InvalidManifestError,
  isDockerDocument,
  parseImageConfig,
  parseIndex,
  parseManifest,
  parseOciLayout,
} from '../../lib/oci/types';

const d = (s: string) => digestOf(s);
const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

const ociManifest = {
  schemaVersion: 2,
  mediaType: MEDIA_TYPE_OCI_MANIFEST,
  config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: d('config'), size: 6 },
  layers: [
    { mediaType: MEDIA_TYPE_OCI_LAYER_TAR_GZIP, digest: d('l1'), size: 100 },
    { mediaType: MEDIA_TYPE_OCI_LAYER_TAR_GZIP, digest: d('l2'), size: 200, annotations: { a: 'b' } },
  ],
  annotations: { [ANNOTATION_CREATED]: '2024-01-01T00:00:00Z' },
};

const dockerManifest: DockerManifest = {
  schemaVersion: 2,
  mediaType: MEDIA_TYPE_DOCKER_MANIFEST,
  config: { mediaType: MEDIA_TYPE_DOCKER_CONFIG, digest: d('config'), size: 6 },
  layers: [{ mediaType: MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, digest: d('l1'), size: 100 }],
};

const dockerList: DockerManifestList = {
  schemaVersion: 2,
  mediaType: MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  manifests: [
    { mediaType: MEDIA_TYPE_DOCKER_MANIFEST, digest: d('amd64'), size: 500, platform: { architecture: 'amd64', os: 'linux' } },
    {
      mediaType: MEDIA_TYPE_DOCKER_MANIFEST,
      digest: d('arm'),
      size: 500,
      platform: { architecture: 'arm', os: 'linux', variant: 'v7' },
    },
  ],
};

/** A config as Docker writes it: nulls, extra fields, empty layers in history. */
const dockerConfig = {
  architecture: 'amd64',
  os: 'linux',
  created: '2024-05-01T12:34:56.123456789Z',
  docker_version: '24.0.7',
  container_config: { Hostname: 'abc' },
  config: {
    Hostname: '',
    User: '',
    Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
    Cmd: ['sh'],
    Entrypoint: null,
    OnBuild: null,
    Volumes: null,
    ExposedPorts: { '80/tcp': {} },
    Labels: { 'org.example': 'x' },
    WorkingDir: '/',
    StopSignal: 'SIGTERM',
    ArgsEscaped: true,
    Healthcheck: { Test: ['CMD-SHELL', 'true'], Interval: 30_000_000_000, Retries: 3, StartPeriod: null },
    Shell: ['/bin/sh', '-c'],
  },
  rootfs: { type: 'layers', diff_ids: [d('diff1')] },
  history: [
    { created: '2024-05-01T12:34:56Z', created_by: '/bin/sh -c #(nop) ADD file:x in /' },
    { created: '2024-05-01T12:34:56Z', created_by: '/bin/sh -c #(nop)  CMD ["sh"]', empty_layer: true, comment: null },
  ],
};

/** Runs `fn`, expecting an InvalidManifestError; returns it. */
function rejects(fn: () => unknown): InvalidManifestError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(InvalidManifestError);
  expect(err).toBeInstanceOf(NacelleError);
  expect((err as InvalidManifestError).code).toBe('ERR_INVALID_MANIFEST');
  return err as InvalidManifestError;
}

describe('annotations', () => {
  it('have the well-known names', () => {
    expect(ANNOTATION_REF_NAME).toBe('org.opencontainers.image.ref.name');
    expect(ANNOTATION_CREATED).toBe('org.opencontainers.image.created');
    expect(ANNOTATION_CONTAINERD_IMAGE_NAME).toBe('io.containerd.image.name');
    expect(Annotations.imageName).toBe(ANNOTATION_CONTAINERD_IMAGE_NAME);
    expect(Annotations.refName).toBe(ANNOTATION_REF_NAME);
  });
});

describe('parseManifest', () => {
  it('accepts an OCI manifest and returns an equal value', () => {
    const m: ImageManifest = parseManifest(clone(ociManifest));
    expect(m).toEqual(ociManifest);
    expect(m.layers[1]?.annotations).toEqual({ a: 'b' });
    expect(isDockerDocument(m)).toBe(false);
  });

  it('accepts a Docker schema 2 manifest', () => {
    const m = parseManifest(clone(dockerManifest));
    expect(m).toEqual(dockerManifest);
    expect(isDockerDocument(m)).toBe(true);
  });

  it('accepts a manifest without mediaType, an artifact with subject, and keeps unknown fields', () => {
    const { mediaType: _omit, ...bare } = clone(ociManifest);
    expect(parseManifest(bare).mediaType).toBeUndefined();
    const artifact = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      artifactType: 'application/vnd.example.sbom+json',
      config: { mediaType: MEDIA_TYPE_OCI_EMPTY_JSON, digest: EMPTY_JSON_DIGEST, size: 2, data: 'e30=' },
      layers: [],
      subject: { mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: d('subject'), size: 10 },
      futureField: { x: 1 },
    };
    const m = parseManifest(artifact);
    expect(m.subject?.digest).toBe(d('subject'));
    expect((m as unknown as { futureField: unknown }).futureField).toEqual({ x: 1 });
  });

  it('does not modify its input', () => {
    const input = { ...clone(ociManifest), annotations: null };
    const before = clone(input);
    const m = parseManifest(input);
    expect(input).toEqual(before);
    expect('annotations' in m).toBe(false);
  });

  it.each<[string, (m: Record<string, unknown>) => unknown, RegExp, string | undefined]>([
    ['not an object', () => [], /document must be an object, got an array/, undefined],
    ['null', () => null, /must be an object, got null/, undefined],
    ['schema 1', (m) => ({ ...m, schemaVersion: 1 }), /schemaVersion is 1: Docker schema 1/, 'schemaVersion'],
    ['no schemaVersion', (m) => ({ ...m, schemaVersion: undefined }), /schemaVersion is missing/, 'schemaVersion'],
    ['an index type', (m) => ({ ...m, mediaType: MEDIA_TYPE_OCI_INDEX }), /an index, not an image manifest/, 'mediaType'],
    ['a foreign type', (m) => ({ ...m, mediaType: 'text/plain' }), /mediaType 'text\/plain' is not/, 'mediaType'],
    ['no config', (m) => ({ ...m, config: undefined }), /config is missing/, 'config'],
    ['no layers', (m) => ({ ...m, layers: undefined }), /layers is missing/, 'layers'],
    ['layers not an array', (m) => ({ ...m, layers: {} }), /layers must be an array/, 'layers'],
    [
      'bad layer digest',
      (m) => ({ ...m, layers: [{ mediaType: MEDIA_TYPE_OCI_LAYER_TAR_GZIP, digest: 'sha256:abc', size: 1 }] }),
      /layers\[0\]\.digest 'sha256:abc' is not a valid digest/,
      'layers[0].digest',
    ],
    ['config digest missing', (m) => ({ ...m, config: { mediaType: MEDIA_TYPE_OCI_CONFIG, size: 1 } }), /config\.digest is missing/, 'config.digest'],
    [
      'negative size',
      (m) => ({ ...m, config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: d('c'), size: -1 } }),
      /config\.size must be a non-negative integer/,
      'config.size',
    ],
    [
      'bad media type',
      (m) => ({ ...m, config: { mediaType: 'nonsense', digest: d('c'), size: 1 } }),
      /config\.mediaType 'nonsense' is not a media type/,
      'config.mediaType',
    ],
    [
      'bad annotation',
      (m) => ({ ...m, annotations: { 'org.example': 3 } }),
      /annotations\["org\.example"\] must be a string/,
      'annotations["org.example"]',
    ],
    [
      'data that does not match',
      (m) => ({ ...m, config: { mediaType: MEDIA_TYPE_OCI_EMPTY_JSON, digest: EMPTY_JSON_DIGEST, size: 2, data: 'W10=' } }),
      /config\.data has digest sha256:\w+ but digest says/,
      'config.data',
    ],
    [
      'data of the wrong size',
      (m) => ({ ...m, config: { mediaType: MEDIA_TYPE_OCI_EMPTY_JSON, digest: EMPTY_JSON_DIGEST, size: 3, data: 'e30=' } }),
      /config\.data holds 2 bytes but size says 3/,
      'config.data',
    ],
    ['an index without mediaType', () => ({ schemaVersion: 2, manifests: [] }), /config is missing .*looks like an index/, 'config'],
  ])('rejects %s', (_name, change, message, field) => {
    const err = rejects(() => parseManifest(change(clone(ociManifest))));
    expect(err.message).toMatch(/^invalid image manifest: /);
    expect(err.message).toMatch(message);
    expect(err.field).toBe(field);
  });
});

describe('parseIndex', () => {
  const ociIndex: ImageIndex = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_INDEX,
    manifests: [
      {
        mediaType: MEDIA_TYPE_OCI_MANIFEST,
        digest: d('m'),
        size: 400,
        platform: { architecture: 'arm64', os: 'linux', variant: 'v8' },
        annotations: { [ANNOTATION_REF_NAME]: 'latest', [ANNOTATION_CONTAINERD_IMAGE_NAME]: 'docker.io/library/x:latest' },
      },
      // an OCI index may list entries without platform (attestations)
      { mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: d('att'), size: 300, artifactType: 'application/vnd.in-toto+json' },
    ],
  };

  it('accepts an OCI index and a Docker manifest list', () => {
    expect(parseIndex(clone(ociIndex))).toEqual(ociIndex);
    const list = parseIndex(clone(dockerList));
    expect(list).toEqual(dockerList);
    expect(list.manifests[1]?.platform?.variant).toBe('v7');
    expect(isDockerDocument(list)).toBe(true);
  });

  it('accepts an index without mediaType (an oci-layout index.json)', () => {
    expect(parseIndex({ schemaVersion: 2, manifests: [] }).manifests).toEqual([]);
  });

  it.each<[string, unknown, RegExp, string | undefined]>([
    ['a manifest type', { ...ociIndex, mediaType: MEDIA_TYPE_OCI_MANIFEST }, /an image manifest, not an index/, 'mediaType'],
    ['no manifests', { schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_INDEX }, /manifests is missing/, 'manifests'],
    ['a manifest without mediaType', { schemaVersion: 2, config: {}, layers: [] }, /looks like an image manifest/, 'manifests'],
    [
      'a Docker list entry without platform',
      { ...dockerList, manifests: [{ mediaType: MEDIA_TYPE_DOCKER_MANIFEST, digest: d('x'), size: 1 }] },
      /manifests\[0\]\.platform is missing/,
      'manifests[0].platform',
    ],
    [
      'a platform without os',
      { ...ociIndex, manifests: [{ mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: d('x'), size: 1, platform: { architecture: 'amd64' } }] },
      /manifests\[0\]\.platform\.os is missing/,
      'manifests[0].platform.os',
    ],
    [
      'a sha512 digest of the wrong length',
      { ...ociIndex, manifests: [{ mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: `sha512:${'a'.repeat(64)}`, size: 1 }] },
      /manifests\[0\]\.digest 'sha512:a+…?' is not a valid digest/,
      'manifests[0].digest',
    ],
    ['schemaVersion 3', { ...ociIndex, schemaVersion: 3 }, /schemaVersion must be 2, got number 3/, 'schemaVersion'],
  ])('rejects %s', (_name, json, message, field) => {
    const err = rejects(() => parseIndex(clone(json)));
    expect(err.message).toMatch(/^invalid image index: /);
    expect(err.message).toMatch(message);
    expect(err.field).toBe(field);
  });
});

describe('parseImageConfig', () => {
  it('accepts a Docker config, dropping nulls and keeping unknown fields', () => {
    const c = parseImageConfig(clone(dockerConfig));
    expect(c.architecture).toBe('amd64');
    expect(c.rootfs.diff_ids).toEqual([d('diff1')]);
    expect(c.config?.Cmd).toEqual(['sh']);
    expect(c.config?.ExposedPorts).toEqual({ '80/tcp': {} });
    expect(c.config && 'Entrypoint' in c.config).toBe(false);
    expect(c.config && 'Volumes' in c.config).toBe(false);
    expect(c.config?.Healthcheck).toEqual({ Test: ['CMD-SHELL', 'true'], Interval: 30_000_000_000, Retries: 3 });
    expect(c.history?.[1]).toEqual({ created: '2024-05-01T12:34:56Z', created_by: '/bin/sh -c #(nop)  CMD ["sh"]', empty_layer: true });
    expect((c as unknown as Record<string, unknown>)['docker_version']).toBe('24.0.7');
  });

  it('accepts a minimal OCI config', () => {
    const minimal = { architecture: 'riscv64', os: 'linux', 'os.version': '6.1', rootfs: { type: 'layers', diff_ids: [] } };
    expect(parseImageConfig(minimal)).toEqual(minimal);
  });

  it.each<[string, (c: Record<string, unknown>) => unknown, RegExp, string]>([
    ['no architecture', (c) => ({ ...c, architecture: undefined }), /architecture is missing/, 'architecture'],
    ['empty os', (c) => ({ ...c, os: '' }), /os must not be empty/, 'os'],
    ['no rootfs', (c) => ({ ...c, rootfs: undefined }), /rootfs is missing/, 'rootfs'],
    ['rootfs of another type', (c) => ({ ...c, rootfs: { type: 'zfs', diff_ids: [] } }), /rootfs\.type must be 'layers', got 'zfs'/, 'rootfs.type'],
    ['no diff_ids', (c) => ({ ...c, rootfs: { type: 'layers' } }), /rootfs\.diff_ids is missing/, 'rootfs.diff_ids'],
    [
      'a bad diff_id',
      (c) => ({ ...c, rootfs: { type: 'layers', diff_ids: [d('a'), 'sha256:XYZ'] } }),
      /rootfs\.diff_ids\[1\] 'sha256:XYZ' is not a valid digest/,
      'rootfs.diff_ids[1]',
    ],
    ['Cmd as a string', (c) => ({ ...c, config: { Cmd: 'sh' } }), /config\.Cmd must be an array of strings/, 'config.Cmd'],
    ['Env with a number', (c) => ({ ...c, config: { Env: ['A=1', 2] } }), /config\.Env\[1\] must be a string/, 'config.Env[1]'],
    ['ArgsEscaped as a string', (c) => ({ ...c, config: { ArgsEscaped: 'yes' } }), /config\.ArgsEscaped must be a boolean/, 'config.ArgsEscaped'],
    ['ExposedPorts as a list', (c) => ({ ...c, config: { ExposedPorts: { '80/tcp': [] } } }), /config\.ExposedPorts\["80\/tcp"\] must be an object/, 'config.ExposedPorts["80/tcp"]'],
    ['a bad Healthcheck', (c) => ({ ...c, config: { Healthcheck: { Retries: 1.5 } } }), /config\.Healthcheck\.Retries must be a non-negative integer/, 'config.Healthcheck.Retries'],
    ['history not an array', (c) => ({ ...c, history: {} }), /history must be an array/, 'history'],
    ['empty_layer as a string', (c) => ({ ...c, history: [{ empty_layer: 'true' }] }), /history\[0\]\.empty_layer must be a boolean/, 'history[0].empty_layer'],
  ])('rejects %s', (_name, change, message, field) => {
    const err = rejects(() => parseImageConfig(change(clone(dockerConfig))));
    expect(err.message).toMatch(/^invalid image config: /);
    expect(err.message).toMatch(message);
    expect(err.field).toBe(field);
  });
});

describe('parseOciLayout', () => {
  it('accepts version 1.0.0 only', () => {
    expect(parseOciLayout({ imageLayoutVersion: '1.0.0' })).toEqual({ imageLayoutVersion: '1.0.0' });
    expect(rejects(() => parseOciLayout({ imageLayoutVersion: '2.0.0' })).message).toMatch(/must be '1\.0\.0', got '2\.0\.0'/);
    expect(rejects(() => parseOciLayout({})).field).toBe('imageLayoutVersion');
  });
});
