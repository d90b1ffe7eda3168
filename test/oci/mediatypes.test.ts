import { describe, expect, it } from 'vitest';
import { NacelleError, UnsupportedError } from '../../lib/errors';
import { digestOf } from '../../lib/oci/digest';
import * as mt from '../../lib/oci/mediatypes';

const {
  MediaTypes,
  EMPTY_JSON_DIGEST,
  baseMediaType,
  isDockerMediaType,
  isIndexMediaType,
  isLayerMediaType,
  isManifestMediaType,
  isOciMediaType,
  layerCompression,
  toDockerMediaType,
  toOciMediaType,
} = mt;

describe('media type constants', () => {
  it('spell the OCI image-spec v1.1 and Docker schema 2 strings', () => {
    expect(mt.MEDIA_TYPE_OCI_MANIFEST).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(mt.MEDIA_TYPE_OCI_INDEX).toBe('application/vnd.oci.image.index.v1+json');
    expect(mt.MEDIA_TYPE_OCI_CONFIG).toBe('application/vnd.oci.image.config.v1+json');
    expect(mt.MEDIA_TYPE_OCI_LAYER_TAR).toBe('application/vnd.oci.image.layer.v1.tar');
    expect(mt.MEDIA_TYPE_OCI_LAYER_TAR_GZIP).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
    expect(mt.MEDIA_TYPE_OCI_LAYER_TAR_ZSTD).toBe('application/vnd.oci.image.layer.v1.tar+zstd');
    expect(mt.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP).toBe(
      'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
    );
    expect(mt.MEDIA_TYPE_OCI_EMPTY_JSON).toBe('application/vnd.oci.empty.v1+json');
    expect(mt.MEDIA_TYPE_OCI_LAYOUT_HEADER).toBe('application/vnd.oci.layout.header.v1+json');
    expect(mt.MEDIA_TYPE_DOCKER_MANIFEST).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST).toBe('application/vnd.docker.distribution.manifest.list.v2+json');
    expect(mt.MEDIA_TYPE_DOCKER_CONFIG).toBe('application/vnd.docker.container.image.v1+json');
    expect(mt.MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP).toBe('application/vnd.docker.image.rootfs.diff.tar.gzip');
    expect(mt.MEDIA_TYPE_DOCKER_FOREIGN_LAYER).toBe('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip');
    expect(mt.MEDIA_TYPE_DOCKER_PLUGIN_CONFIG).toBe('application/vnd.docker.plugin.v1+json');
  });

  it('has the empty JSON digest of the bytes {}', () => {
    expect(EMPTY_JSON_DIGEST).toBe(digestOf('{}'));
  });

  it('collects every constant in MediaTypes', () => {
    const constants = Object.entries(mt)
      .filter(([k]) => k.startsWith('MEDIA_TYPE_'))
      .map(([, v]) => v as string)
      .sort();
    expect(Object.values(MediaTypes).sort()).toEqual(constants);
    expect(MediaTypes.ociManifest).toBe(mt.MEDIA_TYPE_OCI_MANIFEST);
    expect(MediaTypes.ociLayerGzip).toBe(mt.MEDIA_TYPE_OCI_LAYER_TAR_GZIP);
  });

  it('knows which family each belongs to', () => {
    for (const [key, value] of Object.entries(MediaTypes)) {
      expect(isOciMediaType(value), key).toBe(key.startsWith('oci'));
      expect(isDockerMediaType(value), key).toBe(key.startsWith('docker'));
    }
  });
});

describe('baseMediaType', () => {
  it('drops parameters, spaces and case', () => {
    expect(baseMediaType(' Application/VND.OCI.Image.Manifest.v1+JSON ; charset=utf-8')).toBe(mt.MEDIA_TYPE_OCI_MANIFEST);
    expect(isManifestMediaType(`${mt.MEDIA_TYPE_DOCKER_MANIFEST}; charset=utf-8`)).toBe(true);
  });
});

describe('toOciMediaType / toDockerMediaType', () => {
  const pairs: [string, string][] = [
    [mt.MEDIA_TYPE_DOCKER_MANIFEST, mt.MEDIA_TYPE_OCI_MANIFEST],
    [mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST, mt.MEDIA_TYPE_OCI_INDEX],
    [mt.MEDIA_TYPE_DOCKER_CONFIG, mt.MEDIA_TYPE_OCI_CONFIG],
    [mt.MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, mt.MEDIA_TYPE_OCI_LAYER_TAR_GZIP],
    [mt.MEDIA_TYPE_DOCKER_LAYER_TAR, mt.MEDIA_TYPE_OCI_LAYER_TAR],
    [mt.MEDIA_TYPE_DOCKER_FOREIGN_LAYER, mt.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP],
  ];

  it.each(pairs)('maps %s <-> %s', (docker, oci) => {
    expect(toOciMediaType(docker)).toBe(oci);
    expect(toDockerMediaType(oci)).toBe(docker);
    expect(toDockerMediaType(toOciMediaType(docker))).toBe(docker);
  });

  it('returns a type already in the target family unchanged', () => {
    expect(toOciMediaType(mt.MEDIA_TYPE_OCI_LAYER_TAR_ZSTD)).toBe(mt.MEDIA_TYPE_OCI_LAYER_TAR_ZSTD);
    expect(toDockerMediaType(mt.MEDIA_TYPE_DOCKER_PLUGIN_CONFIG)).toBe(mt.MEDIA_TYPE_DOCKER_PLUGIN_CONFIG);
  });

  it('throws UnsupportedError for unknown types and types with no counterpart', () => {
    for (const [fn, input] of [
      [toOciMediaType, 'text/plain'],
      [toDockerMediaType, 'text/plain'],
      [toOciMediaType, mt.MEDIA_TYPE_DOCKER_PLUGIN_CONFIG],
      [toDockerMediaType, mt.MEDIA_TYPE_OCI_LAYER_TAR_ZSTD],
      [toDockerMediaType, mt.MEDIA_TYPE_OCI_EMPTY_JSON],
      [toOciMediaType, 'application/vnd.docker.distribution.manifest.v1+prettyjws'],
    ] as const) {
      let err: unknown;
      try {
        fn(input);
      } catch (e) {
        err = e;
      }
      expect(err, input).toBeInstanceOf(UnsupportedError);
      expect(err).toBeInstanceOf(NacelleError);
      expect((err as UnsupportedError).code).toBe('ERR_UNSUPPORTED');
      expect((err as Error).message).toContain(input);
    }
  });
});

describe('classification', () => {
  it('recognizes manifests and indexes of both families', () => {
    expect(isManifestMediaType(mt.MEDIA_TYPE_OCI_MANIFEST)).toBe(true);
    expect(isManifestMediaType(mt.MEDIA_TYPE_DOCKER_MANIFEST)).toBe(true);
    expect(isManifestMediaType(mt.MEDIA_TYPE_OCI_INDEX)).toBe(false);
    expect(isManifestMediaType(mt.MEDIA_TYPE_OCI_CONFIG)).toBe(false);
    expect(isIndexMediaType(mt.MEDIA_TYPE_OCI_INDEX)).toBe(true);
    expect(isIndexMediaType(mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST)).toBe(true);
    expect(isIndexMediaType(mt.MEDIA_TYPE_DOCKER_MANIFEST)).toBe(false);
  });

  it('recognizes every layer type and nothing else', () => {
    const layers = Object.entries(MediaTypes)
      .filter(([k]) => /Layer(?!out)/.test(k))
      .map(([, v]) => v);
    expect(layers).toHaveLength(9);
    for (const l of layers) expect(isLayerMediaType(l), l).toBe(true);
    for (const other of [mt.MEDIA_TYPE_OCI_CONFIG, mt.MEDIA_TYPE_OCI_EMPTY_JSON, mt.MEDIA_TYPE_OCI_LAYOUT_HEADER, 'x/y']) {
      expect(isLayerMediaType(other), other).toBe(false);
    }
  });
});

describe('layerCompression', () => {
  it.each([
    [mt.MEDIA_TYPE_OCI_LAYER_TAR, 'none'],
    [mt.MEDIA_TYPE_OCI_LAYER_TAR_GZIP, 'gzip'],
    [mt.MEDIA_TYPE_OCI_LAYER_TAR_ZSTD, 'zstd'],
    [mt.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR, 'none'],
    [mt.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP, 'gzip'],
    [mt.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD, 'zstd'],
    [mt.MEDIA_TYPE_DOCKER_LAYER_TAR, 'none'],
    [mt.MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, 'gzip'],
    [mt.MEDIA_TYPE_DOCKER_FOREIGN_LAYER, 'gzip'],
  ])('%s is %s', (type, compression) => {
    expect(layerCompression(type)).toBe(compression);
  });

  it('throws UnsupportedError naming an unknown layer type', () => {
    expect(() => layerCompression('application/vnd.oci.image.layer.v1.tar+bzip2')).toThrow(UnsupportedError);
    expect(() => layerCompression('application/vnd.oci.image.layer.v1.tar+bzip2')).toThrow(/tar\+bzip2/);
    expect(() => layerCompression(mt.MEDIA_TYPE_OCI_CONFIG)).toThrow(mt.MEDIA_TYPE_OCI_CONFIG);
  });
});
