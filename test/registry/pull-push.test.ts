/**
 * Pull and push against Debian's docker-registry, checked with skopeo:
 * identical digests both ways, the same unpacked tree, only missing blobs
 * moved, mounts, chunked uploads, Docker schema 2 and multi-platform indexes.
 */
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Image } from '../../lib/image/image';
import { hostArchitecture } from '../../lib/image/images';
import { Layer } from '../../lib/image/layer';
import { digestOf } from '../../lib/oci/digest';
import { MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_TAR } from '../../lib/oci/mediatypes';
import { pullImage } from '../../lib/registry/pull';
import type { ProgressEvent } from '../../lib/registry/progress';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree, makeFixtureTree } from '../helpers/tree';
import { type TestRegistry, run, startRegistry } from './registry';

const CREATED = '2024-03-04T05:06:07Z';
const SKOPEO_TLS = ['--src-tls-verify=false', '--dest-tls-verify=false'];
// skopeo gzips uncompressed layers on the way into an OCI layout unless told not to.
const SKOPEO_KEEP = ['--dest-oci-accept-uncompressed-layers', '--preserve-digests'];

function layoutManifestDigest(layout: string): string {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  return index.manifests[0]!.digest;
}

describeRoot('registry pull/push against docker-registry and skopeo', () => {
  let dir: string;
  let registry: TestRegistry;
  let rt: Runtime;
  let img: Image;

  beforeAll(async () => {
    dir = makeTempDir('registry-pp');
    registry = await startRegistry();
    rt = await Runtime.open({ root: join(dir, 'root') });
    const base = await busyboxImage(rt, dir);
    const fixture = join(dir, 'fixture');
    mkdirSync(fixture);
    makeFixtureTree(fixture);
    const plain = join(dir, 'plain');
    mkdirSync(join(plain, 'etc'), { recursive: true });
    writeFileSync(join(plain, 'etc/motd'), 'an uncompressed layer\n');
    const withFixture = await base.withLayer(await Layer.fromDirectory(fixture), { created: CREATED, createdBy: 'fixture' });
    img = await withFixture.withLayer(await Layer.fromDirectory(plain, { compression: 'none' }), { created: CREATED, createdBy: 'plain' });
    await rt.images.tag(img, 'app:multi');
    expect(img.layers.length).toBe(3);
    expect(img.layers[2]!.mediaType).toBe(MEDIA_TYPE_OCI_LAYER_TAR);
  }, 120_000);

  afterAll(async () => {
    await registry?.stop();
    if (dir) removeTempDir(dir);
  });

  it('push → skopeo copy gives identical digests; a second push uploads nothing', async () => {
    const events: ProgressEvent[] = [];
    const result = await rt.images.push(img, `${registry.host}/app:v1`, { onProgress: (e) => events.push(e) });
    expect(result.digest).toBe(img.digest);
    expect(result.blobsUploaded.length).toBe(4);
    expect(result.bytesTransferred).toBe(img.size + img.manifest.config.size);
    for (const layer of img.layers) {
      const mine = events.filter((e) => e.digest === layer.digest);
      expect(mine.at(-1)).toMatchObject({ operation: 'push', kind: 'layer', status: 'done', done: layer.size, total: layer.size });
    }
    const out = join(dir, 'skopeo-out');
    run('skopeo', ['copy', ...SKOPEO_TLS, ...SKOPEO_KEEP, `docker://${registry.host}/app:v1`, `oci:${out}:v1`]);
    expect(layoutManifestDigest(out)).toBe(img.digest);
    for (const d of [img.id, ...img.layers.map((l) => l.digest)]) {
      const bytes = readFileSync(join(out, 'blobs', 'sha256', d.slice(7)));
      expect(digestOf(bytes)).toBe(d);
    }
    const again = await rt.images.push(img, `${registry.host}/app:v1`);
    expect(again).toMatchObject({ digest: img.digest, bytesTransferred: 0, blobsUploaded: [], blobsMounted: [] });
    expect(again.blobsPresent.length).toBe(4);
  });

  it('mounts blobs from another repository of the same registry instead of uploading', async () => {
    await rt.images.push(img, `${registry.host}/app:v1`);
    const result = await rt.images.push(img, `${registry.host}/mounted/app:v1`, { mountFrom: ['app'] });
    expect(result.blobsMounted.length).toBe(4);
    expect(result.bytesTransferred).toBe(0);
    const out = join(dir, 'skopeo-mounted');
    run('skopeo', ['copy', ...SKOPEO_TLS, ...SKOPEO_KEEP, `docker://${registry.host}/mounted/app:v1`, `oci:${out}:v1`]);
    expect(layoutManifestDigest(out)).toBe(img.digest);
  });

  it('chunked uploads and push by digest give the same content', async () => {
    const result = await rt.images.push(img, `${registry.host}/chunked/app@${img.digest}`, { chunkSize: 64 * 1024, crossMount: false });
    expect(result.digest).toBe(img.digest);
    expect(result.blobsUploaded.length).toBe(4);
    const raw = run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/chunked/app@${img.digest}`]);
    expect(digestOf(Buffer.from(raw))).toBe(img.digest);
    const out = join(dir, 'skopeo-chunked');
    run('skopeo', ['copy', ...SKOPEO_TLS, ...SKOPEO_KEEP, `docker://${registry.host}/chunked/app@${img.digest}`, `oci:${out}:v1`]);
    expect(layoutManifestDigest(out)).toBe(img.digest);
  });

  it('a reference pinning another digest is refused before anything moves', async () => {
    const other = `sha256:${'0'.repeat(64)}`;
    await expect(rt.images.push(img, `${registry.host}/app@${other}`)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('skopeo push → pull gives identical digests and the same tree; a second pull moves no bytes', async () => {
    const layout = join(dir, 'layout');
    await img.export(layout, { tags: ['skopeo/app:v2'] });
    run('skopeo', ['copy', ...SKOPEO_TLS, `oci:${layout}:v2`, `docker://${registry.host}/skopeo/app:v2`]);
    const rt2 = await Runtime.open({ root: join(dir, 'root2') });
    const events: ProgressEvent[] = [];
    const pulled = await rt2.images.pull(`${registry.host}/skopeo/app:v2`, { onProgress: (e) => events.push(e) });
    expect(pulled.digest).toBe(img.digest);
    expect(pulled.id).toBe(img.id);
    expect(pulled.tags).toEqual([`${registry.host}/skopeo/app:v2`]);
    const total = img.size + img.manifest.config.size;
    expect(events.at(-1)!.transferred).toBe(total);
    for (const layer of img.layers) {
      const mine = events.filter((e) => e.digest === layer.digest);
      expect(mine[0]).toMatchObject({ status: 'downloading', done: 0, total: layer.size });
      expect(mine.at(-1)).toMatchObject({ status: 'done', done: layer.size, total: layer.size });
    }
    const a = join(dir, 'tree-orig');
    const b = join(dir, 'tree-pulled');
    await img.unpack(a);
    await pulled.unpack(b);
    expect(describeTree(b)).toEqual(describeTree(a));

    const second = await pullImage(rt2.images, `${registry.host}/skopeo/app:v2`);
    expect(second.bytesTransferred).toBe(0);
    expect(second.blobsFetched).toEqual([]);
    expect(second.blobsPresent.length).toBe(4);
    const byDigest = await pullImage(rt2.images, `${registry.host}/skopeo/app@${img.digest}`);
    expect(byDigest.image.digest).toBe(img.digest);
    expect(byDigest.bytesTransferred).toBe(0);
  });

  it('pulls a Docker schema 2 image (skopeo --format v2s2) with identical digests', async () => {
    const layout = join(dir, 'layout-docker');
    await img.export(layout, { tags: ['docker/app:v1'] });
    run('skopeo', ['copy', ...SKOPEO_TLS, '--format', 'v2s2', `oci:${layout}:v1`, `docker://${registry.host}/docker/app:v1`]);
    const raw = run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/docker/app:v1`]);
    const rt3 = await Runtime.open({ root: join(dir, 'root3') });
    const pulled = await rt3.images.pull(`${registry.host}/docker/app:v1`);
    expect(pulled.manifest.mediaType).toBe(MEDIA_TYPE_DOCKER_MANIFEST);
    expect(pulled.digest).toBe(digestOf(Buffer.from(raw)));
    const a = join(dir, 'tree-docker-orig');
    const b = join(dir, 'tree-docker');
    await img.unpack(a);
    await pulled.unpack(b);
    expect(describeTree(b)).toEqual(describeTree(a));
    // And back: nacelle pushes the Docker manifest unchanged.
    const pushed = await rt3.images.push(pulled, `${registry.host}/docker/again:v1`);
    expect(pushed.digest).toBe(pulled.digest);
  });

  it('picks the host platform from an OCI index and a Docker manifest list, or the one asked for', async () => {
    const otherArch = hostArchitecture() === 'arm64' ? 'amd64' : 'arm64';
    const src = join(dir, 'platform-src');
    mkdirSync(join(src, 'etc'), { recursive: true });
    writeFileSync(join(src, 'etc/arch'), `${hostArchitecture()}\n`);
    const hostImg = await rt.images.fromDirectory(src, { created: CREATED });
    writeFileSync(join(src, 'etc/arch'), `${otherArch}\n`);
    const otherImg = await rt.images.fromDirectory(src, { created: CREATED, architecture: otherArch });
    const layout = join(dir, 'layout-index');
    await rt.images.export([hostImg, otherImg], layout);
    const entry = (i: Image, arch: string) => ({
      mediaType: i.manifest.mediaType,
      digest: i.digest,
      size: readFileSync(join(layout, 'blobs', 'sha256', i.digest.slice(7))).length,
      platform: { architecture: arch, os: 'linux' },
    });
    const indexBytes = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_INDEX, manifests: [entry(otherImg, otherArch), entry(hostImg, hostArchitecture())] }),
    );
    const indexDigest = digestOf(indexBytes);
    writeFileSync(join(layout, 'blobs', 'sha256', indexDigest.slice(7)), indexBytes);
    writeFileSync(
      join(layout, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: MEDIA_TYPE_OCI_INDEX, digest: indexDigest, size: indexBytes.length, annotations: { 'org.opencontainers.image.ref.name': 'multi' } }],
      }),
    );
    run('skopeo', ['copy', ...SKOPEO_TLS, '--all', `oci:${layout}:multi`, `docker://${registry.host}/multi/app:v1`]);

    const rt4 = await Runtime.open({ root: join(dir, 'root4') });
    const result = await pullImage(rt4.images, `${registry.host}/multi/app:v1`);
    expect(result.image.digest).toBe(hostImg.digest);
    expect(result.image.architecture).toBe(hostArchitecture());
    expect(result.resolvedDigest).toBe(indexDigest);
    const other = await rt4.images.pull(`${registry.host}/multi/app:v1`, { platform: `linux/${otherArch}` });
    expect(other.digest).toBe(otherImg.digest);
    const byIndexDigest = await pullImage(rt4.images, `${registry.host}/multi/app@${indexDigest}`);
    expect(byIndexDigest.image.digest).toBe(hostImg.digest);
    expect(byIndexDigest.bytesTransferred).toBe(0);
    await expect(rt4.images.pull(`${registry.host}/multi/app:v1`, { platform: 'linux/s390x' })).rejects.toMatchObject({
      code: 'ERR_NOT_FOUND',
      message: expect.stringContaining('linux/s390x') as unknown as string,
    });

    // The same as a Docker manifest list.
    run('skopeo', ['copy', ...SKOPEO_TLS, '--all', '--format', 'v2s2', `oci:${layout}:multi`, `docker://${registry.host}/multi/docker:v1`]);
    const listRaw = run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/multi/docker:v1`]);
    expect((JSON.parse(listRaw) as { mediaType: string }).mediaType).toBe(MEDIA_TYPE_DOCKER_MANIFEST_LIST);
    const fromList = await pullImage(rt4.images, `${registry.host}/multi/docker:v1`);
    expect(fromList.resolvedDigest).toBe(digestOf(Buffer.from(listRaw)));
    expect(fromList.image.architecture).toBe(hostArchitecture());
    expect(fromList.image.manifest.mediaType).toBe(MEDIA_TYPE_DOCKER_MANIFEST);
  });
});
