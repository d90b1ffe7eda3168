/**
 * Media types of OCI image-spec v1.1 and of Docker's image manifest schema 2,
 * with the mapping between the two families and the questions the rest of
 * nacelle asks about them (is this a manifest, an index, a layer; how is the
 * layer compressed).
 *
 * Every function here accepts a media type as a registry sends it in a
 * `Content-Type` header: parameters (`; charset=utf-8`), surrounding spaces and
 * letter case are ignored.
 * @module
 */
import { UnsupportedError } from '../errors';
import type { Digest } from './digest';

// ---------------------------------------------------------------- OCI image-spec v1.1

/** An OCI content descriptor on its own (`application/vnd.oci.descriptor.v1+json`). */
export const MEDIA_TYPE_OCI_DESCRIPTOR = 'application/vnd.oci.descriptor.v1+json';
/** The `oci-layout` file at the root of an OCI image layout (`application/vnd.oci.layout.header.v1+json`). */
export const MEDIA_TYPE_OCI_LAYOUT_HEADER = 'application/vnd.oci.layout.header.v1+json';
/** An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`). */
export const MEDIA_TYPE_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
/** An OCI image index, a list of manifests (`application/vnd.oci.image.index.v1+json`). */
export const MEDIA_TYPE_OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
/** An OCI image configuration (`application/vnd.oci.image.config.v1+json`). */
export const MEDIA_TYPE_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
/** An uncompressed OCI layer tar (`application/vnd.oci.image.layer.v1.tar`). */
export const MEDIA_TYPE_OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';
/** A gzip-compressed OCI layer tar (`application/vnd.oci.image.layer.v1.tar+gzip`). */
export const MEDIA_TYPE_OCI_LAYER_TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
/** A zstd-compressed OCI layer tar (`application/vnd.oci.image.layer.v1.tar+zstd`). */
export const MEDIA_TYPE_OCI_LAYER_TAR_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
/**
 * An uncompressed non-distributable OCI layer (deprecated in image-spec v1.1, still read).
 * `application/vnd.oci.image.layer.nondistributable.v1.tar`
 */
export const MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR = 'application/vnd.oci.image.layer.nondistributable.v1.tar';
/**
 * A gzip-compressed non-distributable OCI layer (deprecated in image-spec v1.1, still read).
 * `application/vnd.oci.image.layer.nondistributable.v1.tar+gzip`
 */
export const MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP =
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip';
/**
 * A zstd-compressed non-distributable OCI layer (deprecated in image-spec v1.1, still read).
 * `application/vnd.oci.image.layer.nondistributable.v1.tar+zstd`
 */
export const MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD =
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd';
/**
 * The empty JSON object `{}` (`application/vnd.oci.empty.v1+json`), used as the config or
 * layer of artifacts that have none. Its digest is {@link EMPTY_JSON_DIGEST}.
 */
export const MEDIA_TYPE_OCI_EMPTY_JSON = 'application/vnd.oci.empty.v1+json';

/** The digest of the two bytes `{}`, the content of every {@link MEDIA_TYPE_OCI_EMPTY_JSON} blob. */
export const EMPTY_JSON_DIGEST: Digest = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';

// ---------------------------------------------------------------- Docker schema 2

/** A Docker image manifest, schema 2 (`application/vnd.docker.distribution.manifest.v2+json`). */
export const MEDIA_TYPE_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
/** A Docker manifest list, the multi-platform form (`application/vnd.docker.distribution.manifest.list.v2+json`). */
export const MEDIA_TYPE_DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
/** A Docker container image configuration (`application/vnd.docker.container.image.v1+json`). */
export const MEDIA_TYPE_DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
/** A gzip-compressed Docker layer tar (`application/vnd.docker.image.rootfs.diff.tar.gzip`). */
export const MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
/** An uncompressed Docker layer tar (`application/vnd.docker.image.rootfs.diff.tar`), rare but defined by schema 2. */
export const MEDIA_TYPE_DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';
/**
 * A Docker foreign layer, fetched from the descriptor's `urls` rather than the registry
 * (`application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`).
 */
export const MEDIA_TYPE_DOCKER_FOREIGN_LAYER = 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip';
/** A Docker plugin configuration (`application/vnd.docker.plugin.v1+json`); it has no OCI equivalent. */
export const MEDIA_TYPE_DOCKER_PLUGIN_CONFIG = 'application/vnd.docker.plugin.v1+json';

/**
 * All the media types above in one object, for code that prefers
 * `MediaTypes.ociManifest` to the individual constants.
 */
export const MediaTypes = {
  /** {@link MEDIA_TYPE_OCI_DESCRIPTOR} */
  ociDescriptor: MEDIA_TYPE_OCI_DESCRIPTOR,
  /** {@link MEDIA_TYPE_OCI_LAYOUT_HEADER} */
  ociLayoutHeader: MEDIA_TYPE_OCI_LAYOUT_HEADER,
  /** {@link MEDIA_TYPE_OCI_MANIFEST} */
  ociManifest: MEDIA_TYPE_OCI_MANIFEST,
  /** {@link MEDIA_TYPE_OCI_INDEX} */
  ociIndex: MEDIA_TYPE_OCI_INDEX,
  /** {@link MEDIA_TYPE_OCI_CONFIG} */
  ociConfig: MEDIA_TYPE_OCI_CONFIG,
  /** {@link MEDIA_TYPE_OCI_LAYER_TAR} */
  ociLayer: MEDIA_TYPE_OCI_LAYER_TAR,
  /** {@link MEDIA_TYPE_OCI_LAYER_TAR_GZIP} */
  ociLayerGzip: MEDIA_TYPE_OCI_LAYER_TAR_GZIP,
  /** {@link MEDIA_TYPE_OCI_LAYER_TAR_ZSTD} */
  ociLayerZstd: MEDIA_TYPE_OCI_LAYER_TAR_ZSTD,
  /** {@link MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR} */
  ociLayerNondistributable: MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR,
  /** {@link MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP} */
  ociLayerNondistributableGzip: MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
  /** {@link MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD} */
  ociLayerNondistributableZstd: MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD,
  /** {@link MEDIA_TYPE_OCI_EMPTY_JSON} */
  ociEmptyJson: MEDIA_TYPE_OCI_EMPTY_JSON,
  /** {@link MEDIA_TYPE_DOCKER_MANIFEST} */
  dockerManifest: MEDIA_TYPE_DOCKER_MANIFEST,
  /** {@link MEDIA_TYPE_DOCKER_MANIFEST_LIST} */
  dockerManifestList: MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  /** {@link MEDIA_TYPE_DOCKER_CONFIG} */
  dockerConfig: MEDIA_TYPE_DOCKER_CONFIG,
  /** {@link MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP} */
  dockerLayerGzip: MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP,
  /** {@link MEDIA_TYPE_DOCKER_LAYER_TAR} */
  dockerLayer: MEDIA_TYPE_DOCKER_LAYER_TAR,
  /** {@link MEDIA_TYPE_DOCKER_FOREIGN_LAYER} */
  dockerForeignLayer: MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
  /** {@link MEDIA_TYPE_DOCKER_PLUGIN_CONFIG} */
  dockerPluginConfig: MEDIA_TYPE_DOCKER_PLUGIN_CONFIG,
} as const;

/** Every OCI image-spec v1.1 media type nacelle knows. */
export type OciMediaType =
  | typeof MEDIA_TYPE_OCI_DESCRIPTOR
  | typeof MEDIA_TYPE_OCI_LAYOUT_HEADER
  | typeof MEDIA_TYPE_OCI_MANIFEST
  | typeof MEDIA_TYPE_OCI_INDEX
  | typeof MEDIA_TYPE_OCI_CONFIG
  | typeof MEDIA_TYPE_OCI_LAYER_TAR
  | typeof MEDIA_TYPE_OCI_LAYER_TAR_GZIP
  | typeof MEDIA_TYPE_OCI_LAYER_TAR_ZSTD
  | typeof MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR
  | typeof MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
  | typeof MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD
  | typeof MEDIA_TYPE_OCI_EMPTY_JSON;

/** Every Docker schema 2 media type nacelle knows. */
export type DockerMediaType =
  | typeof MEDIA_TYPE_DOCKER_MANIFEST
  | typeof MEDIA_TYPE_DOCKER_MANIFEST_LIST
  | typeof MEDIA_TYPE_DOCKER_CONFIG
  | typeof MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP
  | typeof MEDIA_TYPE_DOCKER_LAYER_TAR
  | typeof MEDIA_TYPE_DOCKER_FOREIGN_LAYER
  | typeof MEDIA_TYPE_DOCKER_PLUGIN_CONFIG;

/** How a layer blob is compressed: what must be undone before its tar can be read. */
export type LayerCompression = 'gzip' | 'zstd' | 'none';

const OCI_TYPES: ReadonlySet<string> = new Set<OciMediaType>([
  MEDIA_TYPE_OCI_DESCRIPTOR,
  MEDIA_TYPE_OCI_LAYOUT_HEADER,
  MEDIA_TYPE_OCI_MANIFEST,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER_TAR,
  MEDIA_TYPE_OCI_LAYER_TAR_GZIP,
  MEDIA_TYPE_OCI_LAYER_TAR_ZSTD,
  MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR,
  MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
  MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD,
  MEDIA_TYPE_OCI_EMPTY_JSON,
]);

const DOCKER_TYPES: ReadonlySet<string> = new Set<DockerMediaType>([
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP,
  MEDIA_TYPE_DOCKER_LAYER_TAR,
  MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
  MEDIA_TYPE_DOCKER_PLUGIN_CONFIG,
]);

/** Docker → OCI; the reverse map is derived from it, so the two cannot disagree. */
const DOCKER_TO_OCI: ReadonlyMap<DockerMediaType, OciMediaType> = new Map<DockerMediaType, OciMediaType>([
  [MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST],
  [MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX],
  [MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_CONFIG],
  [MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, MEDIA_TYPE_OCI_LAYER_TAR_GZIP],
  [MEDIA_TYPE_DOCKER_LAYER_TAR, MEDIA_TYPE_OCI_LAYER_TAR],
  [MEDIA_TYPE_DOCKER_FOREIGN_LAYER, MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP],
]);

const OCI_TO_DOCKER: ReadonlyMap<OciMediaType, DockerMediaType> = new Map(
  [...DOCKER_TO_OCI].map(([docker, oci]) => [oci, docker] as const),
);

const LAYER_COMPRESSION: ReadonlyMap<string, LayerCompression> = new Map<string, LayerCompression>([
  [MEDIA_TYPE_OCI_LAYER_TAR, 'none'],
  [MEDIA_TYPE_OCI_LAYER_TAR_GZIP, 'gzip'],
  [MEDIA_TYPE_OCI_LAYER_TAR_ZSTD, 'zstd'],
  [MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR, 'none'],
  [MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP, 'gzip'],
  [MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD, 'zstd'],
  [MEDIA_TYPE_DOCKER_LAYER_TAR, 'none'],
  [MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, 'gzip'],
  [MEDIA_TYPE_DOCKER_FOREIGN_LAYER, 'gzip'],
]);

/**
 * A media type reduced to what identifies it: parameters after `;` dropped,
 * spaces trimmed, lowercased (media types are case-insensitive, RFC 6838).
 * `'Application/VND.OCI.image.manifest.v1+json; charset=utf-8'` → the manifest type.
 */
export function baseMediaType(mediaType: string): string {
  const semi = mediaType.indexOf(';');
  return (semi === -1 ? mediaType : mediaType.slice(0, semi)).trim().toLowerCase();
}

/** Whether `mediaType` is one of the OCI image-spec v1.1 media types. */
export function isOciMediaType(mediaType: string): boolean {
  return OCI_TYPES.has(baseMediaType(mediaType));
}

/** Whether `mediaType` is one of the Docker schema 2 media types. */
export function isDockerMediaType(mediaType: string): boolean {
  return DOCKER_TYPES.has(baseMediaType(mediaType));
}

/**
 * The OCI media type for a Docker schema 2 one (a manifest list becomes an
 * index, a foreign layer a non-distributable gzip layer, …). An OCI media type
 * is returned as it is, so any known type can be passed.
 * @throws An {@link UnsupportedError} for an unknown media type, or a Docker one with
 *   no OCI equivalent (the plugin config)
 */
export function toOciMediaType(mediaType: string): OciMediaType {
  const base = baseMediaType(mediaType);
  if (OCI_TYPES.has(base)) return base as OciMediaType;
  const oci = DOCKER_TO_OCI.get(base as DockerMediaType);
  if (oci !== undefined) return oci;
  if (DOCKER_TYPES.has(base)) {
    throw new UnsupportedError(`media type '${mediaType}' has no OCI equivalent`);
  }
  throw new UnsupportedError(`unknown media type '${mediaType}': cannot map it to an OCI media type`);
}

/**
 * The Docker schema 2 media type for an OCI one (an index becomes a manifest
 * list, …). A Docker media type is returned as it is.
 * @throws An {@link UnsupportedError} for an unknown media type, or an OCI one with no
 *   Docker equivalent (zstd layers, the empty JSON, the layout header, …)
 */
export function toDockerMediaType(mediaType: string): DockerMediaType {
  const base = baseMediaType(mediaType);
  if (DOCKER_TYPES.has(base)) return base as DockerMediaType;
  const docker = OCI_TO_DOCKER.get(base as OciMediaType);
  if (docker !== undefined) return docker;
  if (OCI_TYPES.has(base)) {
    throw new UnsupportedError(`media type '${mediaType}' has no Docker schema 2 equivalent`);
  }
  throw new UnsupportedError(`unknown media type '${mediaType}': cannot map it to a Docker media type`);
}

/** Whether `mediaType` is a single-image manifest: OCI image manifest or Docker schema 2 manifest. */
export function isManifestMediaType(mediaType: string): boolean {
  const base = baseMediaType(mediaType);
  return base === MEDIA_TYPE_OCI_MANIFEST || base === MEDIA_TYPE_DOCKER_MANIFEST;
}

/** Whether `mediaType` is a list of manifests: OCI image index or Docker manifest list. */
export function isIndexMediaType(mediaType: string): boolean {
  const base = baseMediaType(mediaType);
  return base === MEDIA_TYPE_OCI_INDEX || base === MEDIA_TYPE_DOCKER_MANIFEST_LIST;
}

/** Whether `mediaType` is a known layer type (OCI, OCI non-distributable, Docker, Docker foreign). */
export function isLayerMediaType(mediaType: string): boolean {
  return LAYER_COMPRESSION.has(baseMediaType(mediaType));
}

/**
 * How a layer of this media type is compressed.
 * @throws An {@link UnsupportedError} naming the media type when it is not a known layer type
 */
export function layerCompression(mediaType: string): LayerCompression {
  const compression = LAYER_COMPRESSION.get(baseMediaType(mediaType));
  if (compression === undefined) {
    throw new UnsupportedError(`unsupported layer media type '${mediaType}': not a tar, tar+gzip or tar+zstd layer`);
  }
  return compression;
}
