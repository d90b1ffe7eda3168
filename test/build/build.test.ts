import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { BuildStepError, DockerfileError, type BuildProgress } from '../../lib/build/types';
import type { Image } from '../../lib/image/image';
import { hostArchitecture } from '../../lib/image/images';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree } from '../helpers/tree';

const CREATED = '2024-05-06T07:08:09Z';

describeRoot('rt.images.build', () => {
  let dir: string;
  let rt: Runtime;
  let base: Image;
  beforeAll(async () => {
    dir = makeTempDir('build');
    rt = await Runtime.open({ root: join(dir, 'root') });
    base = await busyboxImage(rt, dir, 'busybox:test');
  });
  afterAll(() => removeTempDir(dir));

  let n = 0;
  function context(files: Record<string, string | { content: string; mode: number }>): string {
    const root = join(dir, `ctx-${n++}`);
    for (const [path, spec] of Object.entries(files)) {
      mkdirSync(join(root, path, '..'), { recursive: true });
      if (typeof spec === 'string') writeFileSync(join(root, path), spec);
      else {
        writeFileSync(join(root, path), spec.content);
        chmodSync(join(root, path), spec.mode);
      }
    }
    return root;
  }

  async function build(ctx: string, options: Parameters<Runtime['images']['build']>[1] = {}) {
    const events: BuildProgress[] = [];
    const image = await rt.images.build(ctx, { created: CREATED, ...options, onProgress: (e) => events.push(e) });
    const steps = events.filter((e): e is Extract<BuildProgress, { kind: 'step' }> => e.kind === 'step');
    return { image, events, steps, statuses: steps.map((s) => `${s.status} ${s.instruction}`) };
  }

  async function files(image: Image): Promise<string[]> {
    const out = join(dir, `unpack-${n++}`);
    await image.unpack(out);
    try {
      return describeTree(out, { xattrs: false });
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }

  it('builds RUN, COPY and config steps, then reuses every step on an unchanged rebuild', async () => {
    const ctx = context({
      Dockerfile: [
        '# syntax=docker/dockerfile:1',
        'FROM busybox:test',
        'ENV APP=/app \\',
        '    GREETING="hello world"',
        'WORKDIR $APP',
        '# a comment between steps',
        'COPY app.sh ./',
        'COPY conf/ /etc/app/',
        'RUN echo "$GREETING" > greeting && chmod 600 greeting',
        'USER 1000:1000',
        'EXPOSE 8080 53/udp',
        'LABEL org.example.name=demo "org.example.desc"="a demo"',
        'CMD ["/app/app.sh"]',
        '',
      ].join('\n'),
      'app.sh': { content: '#!/bin/sh\necho app\n', mode: 0o755 },
      'conf/a.conf': 'a=1\n',
      'conf/sub/b.conf': 'b=2\n',
    });
    const first = await build(ctx, { tag: 'app:dev' });
    expect(first.steps.map((s) => s.status)).toEqual(['cached', ...Array(9).fill('built')]);
    const img = first.image;
    expect(img.tags).toEqual(['docker.io/library/app:dev']);
    expect(img.config).toEqual({
      Cmd: ['/app/app.sh'],
      Env: ['PATH=/bin', 'APP=/app', 'GREETING=hello world'],
      WorkingDir: '/app',
      User: '1000:1000',
      ExposedPorts: { '8080/tcp': {}, '53/udp': {} },
      Labels: { 'org.example.name': 'demo', 'org.example.desc': 'a demo' },
    });
    // four layers were added (WORKDIR made /app, 2 COPY, RUN); the rest are metadata-only history entries
    expect(img.layers).toHaveLength(base.layers.length + 4);
    const added = img.history.slice(base.history.length);
    expect(added.map((h) => [h.created_by, h.empty_layer ?? false])).toEqual([
      ['ENV APP=/app GREETING=hello world', true],
      ['WORKDIR /app', false],
      ['COPY app.sh ./', false],
      ['COPY conf/ /etc/app/', false],
      ['RUN /bin/sh -c echo "$GREETING" > greeting && chmod 600 greeting', false],
      ['USER 1000:1000', true],
      ['EXPOSE 8080/tcp 53/udp', true],
      ['LABEL org.example.name=demo org.example.desc=a demo', true],
      ['CMD ["/app/app.sh"]', true],
    ]);
    const tree = await files(img);
    expect(tree).toContain(`app dir 755 0:0`);
    expect(tree.find((l) => l.startsWith('app/app.sh '))).toMatch(/^app\/app.sh file:\d+:\w+:nlink=1 755 0:0$/);
    expect(tree.find((l) => l.startsWith('app/greeting '))).toMatch(/ 600 0:0$/);
    expect(tree).toContain('etc/app/sub dir 755 0:0');
    expect(tree.find((l) => l.startsWith('etc/app/sub/b.conf '))).toMatch(/ 644 0:0$/);

    const again = await build(ctx, { tag: 'app:dev' });
    expect(again.steps.every((s) => s.status === 'cached')).toBe(true);
    expect(again.image.digest).toBe(img.digest);

    // one copied file changes: the steps before it are reused, it and the ones after are built
    writeFileSync(join(ctx, 'conf/sub/b.conf'), 'b=3\n');
    const changed = await build(ctx);
    expect(changed.steps.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', 'cached', 'built', 'built', 'built', 'built', 'built', 'built']);
    expect(changed.image.digest).not.toBe(img.digest);
    expect(changed.image.layers.slice(0, -2).map((l) => l.digest)).toEqual(img.layers.slice(0, -2).map((l) => l.digest));

    // the key covers modes, not times: a chmod rebuilds the step, a touch does not
    const { utimesSync } = await import('node:fs');
    utimesSync(join(ctx, 'app.sh'), new Date('2020-01-01'), new Date('2020-01-01'));
    expect((await build(ctx)).image.digest).toBe(changed.image.digest);
    chmodSync(join(ctx, 'app.sh'), 0o700);
    const chmodded = await build(ctx);
    expect(chmodded.steps.map((s) => s.status)).toEqual(['cached', 'cached', 'cached', ...Array(7).fill('built')]);

    // noCache builds every step again
    const fresh = await build(ctx, { noCache: true });
    expect(fresh.steps.slice(1).every((s) => s.status === 'built')).toBe(true);
  }, 120_000);

  it("lists the build's result but not its steps' intermediate images (as docker images; all: true shows them)", async () => {
    const ctx = context({ Dockerfile: 'FROM busybox:test\nENV A=1\nRUN echo hi > /hi\nLABEL x=y\n' });
    const before = new Set((await rt.images.list()).map((i) => i.digest));
    const tagged = await build(ctx, { tag: 'listed:1' });
    const untaggedCtx = context({ Dockerfile: 'FROM busybox:test\nENV B=2\nLABEL z=w\n' });
    const untagged = await build(untaggedCtx);
    const added = (await rt.images.list()).map((i) => i.digest).filter((d) => !before.has(d));
    expect(added.sort()).toEqual([tagged.image.digest, untagged.image.digest].sort());
    const all = (await rt.images.list({ all: true })).map((i) => i.digest);
    const steps = [...tagged.steps, ...untagged.steps].map((s) => s.image).filter((d) => d !== tagged.image.digest && d !== untagged.image.digest && d !== base.digest);
    expect(steps.length).toBeGreaterThan(0);
    for (const d of steps) expect(all).toContain(d);
    // a step's image is still there for the cache and by digest
    expect((await rt.images.get(steps[0]!)).digest).toBe(steps[0]);
  });

  it('passes build args, scopes ARGs per stage and keys RUN steps on their values', async () => {
    const ctx = context({
      Dockerfile: [
        'ARG BASE=busybox:test',
        'ARG VERSION=1',
        'FROM ${BASE}',
        'ARG VERSION',
        'ARG FLAVOR=plain',
        'ENV FLAVOR=env-wins',
        'RUN echo "v=$VERSION f=$FLAVOR" > /built',
        'LABEL version=${VERSION:-none} alt=${UNSET:-dflt} plus=${VERSION:+set} base=${BASE:-not-declared-here}',
        'ARG TARGETARCH',
        'LABEL arch=$TARGETARCH',
      ].join('\n'),
    });
    const one = await build(ctx);
    // BASE is a global ARG this stage does not declare again: not visible in the stage
    expect(one.image.config.Labels).toEqual({ version: '1', alt: 'dflt', plus: 'set', base: 'not-declared-here', arch: hostArchitecture() });
    expect((await files(one.image)).find((l) => l.startsWith('built '))).toBeDefined();
    const run = await rt.containers.run(one.image, { cmd: ['cat', '/built'] });
    let out = '';
    for await (const c of run.stdout) out += c;
    await run.wait();
    await run.remove();
    expect(out).toBe('v=1 f=env-wins\n');

    const two = await build(ctx, { buildArgs: { VERSION: '2' } });
    // ARG VERSION has another value, so it and every step after it are built again
    expect(two.steps.map((s) => s.status)).toEqual(['cached', 'built', 'built', 'built', 'built', 'built', 'built', 'built']);
    expect((await build(ctx, { buildArgs: { VERSION: '2' } })).image.digest).toBe(two.image.digest);
    expect(two.image.config.Labels?.version).toBe('2');
    const warned = await build(ctx, { buildArgs: { NOPE: 'x' } });
    expect(warned.events.some((e) => e.kind === 'warning' && e.message.includes('NOPE'))).toBe(true);
  }, 120_000);

  it('builds only the stages a target needs and copies between stages', async () => {
    const ctx = context({
      Dockerfile: [
        'FROM busybox:test AS build',
        'RUN mkdir -p /out && echo compiled > /out/app && chown -R 7:8 /out',
        '',
        'FROM busybox:test AS unused',
        'RUN exit 3',
        '',
        'FROM scratch AS final',
        'COPY --from=build /out/app /bin/app',
        'COPY --from=build --chown=1:2 --chmod=700 /out /opt',
        'ENTRYPOINT ["/bin/app"]',
      ].join('\n'),
    });
    const { image, steps } = await build(ctx, { target: 'final' });
    expect(steps.map((s) => s.stage)).toEqual(['build', 'build', 'final', 'final', 'final', 'final']);
    expect(image.config).toEqual({ Entrypoint: ['/bin/app'] });
    expect(await files(image)).toEqual([
      'bin dir 755 0:0',
      expect.stringMatching(/^bin\/app file:9:\w+:nlink=1 644 7:8$/),
      'opt dir 755 1:2', // made by the copy: 0755 and the --chown owner, as buildah does
      expect.stringMatching(/^opt\/app file:9:\w+:nlink=1 700 1:2$/),
    ]);
    const build1 = await build(ctx, { target: 'build' });
    expect(build1.steps).toHaveLength(2);
  }, 120_000);

  it('honours .dockerignore with exceptions, globs, ADD of a local tar, and ENTRYPOINT resetting an inherited CMD', async () => {
    const ctx = context({
      Dockerfile: ['FROM busybox:test', 'COPY . /ctx/', 'COPY *.txt /txt/', 'ADD files.tar /unpacked/', 'ENTRYPOINT ["sh"]'].join('\n'),
      '.dockerignore': '# comment\n*.log\n**/secret*\n!keep.log\nbuild\n',
      'a.txt': 'a',
      'b.txt': 'b',
      'x.log': 'log',
      'keep.log': 'keep',
      'sub/secret.key': 'k',
      'sub/deeper/secret2': 'k',
      'sub/ok': 'ok',
      'build/out': 'o',
    });
    // a small tar made by our own writer
    const tarDir = join(dir, `tar-${n++}`);
    mkdirSync(join(tarDir, 'd'), { recursive: true });
    writeFileSync(join(tarDir, 'd/in-tar'), 'from tar');
    const { packDirectory } = await import('../../lib/image/tar/pack');
    const { createWriteStream } = await import('node:fs');
    await packDirectory(tarDir, createWriteStream(join(ctx, 'files.tar')), { compression: 'none' });
    const { image } = await build(ctx);
    expect(image.config.Entrypoint).toEqual(['sh']);
    expect(image.config.Cmd).toBeUndefined(); // busybox:test had Cmd ["sh"]: ENTRYPOINT resets it
    const paths = (await files(image)).map((l) => l.split(' ')[0]!);
    const ctxFiles = paths.filter((p) => p.startsWith('ctx/')).sort();
    expect(ctxFiles).toEqual(['ctx/.dockerignore', 'ctx/Dockerfile', 'ctx/a.txt', 'ctx/b.txt', 'ctx/files.tar', 'ctx/keep.log', 'ctx/sub', 'ctx/sub/deeper', 'ctx/sub/ok']);
    expect(paths.filter((p) => p.startsWith('txt/'))).toEqual(['txt/a.txt', 'txt/b.txt']);
    expect(paths).toContain('unpacked/d/in-tar');
  }, 120_000);

  it('runs RUN as the USER, in the WORKDIR, with the SHELL, and records ONBUILD, HEALTHCHECK NONE, gzip ADD', async () => {
    const ctx = context({
      Dockerfile: [
        'FROM busybox:test',
        'WORKDIR /work',
        'RUN chown 1000:1000 /work',
        'USER 1000:1000',
        'SHELL ["/bin/sh", "-c", "-e"]',
        'RUN id -u > uid && pwd > cwd && touch made-by-user',
        'ADD data.tar.gz /data',
        'ONBUILD RUN echo triggered',
        'HEALTHCHECK NONE',
        'STOPSIGNAL SIGQUIT',
        'VOLUME /data /cache',
      ].join('\n'),
    });
    const src = join(dir, `gz-${n++}`);
    mkdirSync(join(src, 'x'), { recursive: true });
    writeFileSync(join(src, 'x/file'), 'gzipped');
    const { packDirectory } = await import('../../lib/image/tar/pack');
    const { createWriteStream } = await import('node:fs');
    await packDirectory(src, createWriteStream(join(ctx, 'data.tar.gz')));
    const { image } = await build(ctx);
    expect(image.config).toMatchObject({
      User: '1000:1000',
      WorkingDir: '/work',
      Shell: ['/bin/sh', '-c', '-e'],
      OnBuild: ['RUN echo triggered'],
      Healthcheck: { Test: ['NONE'] },
      StopSignal: 'SIGQUIT',
      Volumes: { '/data': {}, '/cache': {} },
    });
    const tree = await files(image);
    expect(tree.find((l) => l.startsWith('work/made-by-user '))).toMatch(/ 644 1000:1000$/);
    expect(tree.find((l) => l.startsWith('work/uid '))).toBeDefined();
    expect(tree.find((l) => l.startsWith('data/x/file '))).toMatch(/^data\/x\/file file:7:/);
    const c = await rt.containers.run(image, { cmd: ['cat', '/work/uid', '/work/cwd'] });
    let out = '';
    for await (const chunk of c.stdout) out += chunk;
    await c.wait();
    await c.remove();
    expect(out).toBe('1000\n/work\n');
  }, 120_000);

  it('reports bad input with the line', async () => {
    const bad = async (dockerfile: string, extra: Record<string, string> = {}, options = {}) => {
      const ctx = context({ Dockerfile: dockerfile, ...extra });
      return rt.images.build(ctx, options).then(
        () => {
          throw new Error('expected the build to fail');
        },
        (err: unknown) => err,
      );
    };
    expect(await bad('FROM busybox:test\nFROBNICATE x')).toMatchObject({ line: 2, code: 'ERR_DOCKERFILE_UNKNOWN_INSTRUCTION', message: expect.stringContaining("unknown instruction 'FROBNICATE'") });
    expect(await bad('FROM busybox:missing')).toMatchObject({ line: 1, code: 'ERR_NOT_FOUND' });
    expect(await bad('FROM busybox:test\n\nCOPY ../outside /x')).toMatchObject({ line: 3, code: 'ERR_BUILD_CONTEXT_OUTSIDE' });
    expect(await bad('FROM busybox:test\nCOPY --from=nowhere /x /x')).toMatchObject({ line: 2, code: 'ERR_NOT_FOUND' });
    expect(await bad('FROM busybox:test AS a\nCOPY --from=b /x /x\nFROM busybox:test AS b\nCOPY --from=a /y /y')).toMatchObject({ code: 'ERR_BUILD_STAGE_CYCLE' });
    expect(await bad('ARG TAG\nFROM busybox:test\nARG TAG\nRUN echo ${TAG:?needs a tag}')).toBeInstanceOf(Error); // RUN is not expanded by the builder: the shell fails it
    expect(await bad('FROM busybox:test\nARG TAG\nLABEL tag="${TAG:?is required}"')).toMatchObject({ line: 3, code: 'ERR_BUILD_ARG_REQUIRED', message: expect.stringContaining('TAG: is required') });
    expect(await bad('ADD http://example.com/x /x\n')).toBeInstanceOf(DockerfileError);
    expect(await bad('FROM busybox:test\nADD https://example.com/x /x\n')).toMatchObject({ line: 2, code: 'ERR_UNSUPPORTED' });
    expect(await bad('FROM busybox:test', {}, { target: 'nope' })).toMatchObject({ code: 'ERR_BUILD_NO_SUCH_STAGE' });
    expect(await bad('ARG IMAGE\nFROM $IMAGE')).toMatchObject({ line: 2, code: 'ERR_BUILD_ARG_REQUIRED' });
    expect(await bad('FROM busybox:test\nCOPY a b /not-a-dir', { a: 'a', b: 'b' })).toMatchObject({ line: 2, message: expect.stringContaining("ending in '/'") });
    expect(await bad('FROM busybox:test\nCOPY missing /x')).toMatchObject({ line: 2, code: 'ERR_BUILD_SOURCE_NOT_FOUND' });
    expect(await bad('FROM busybox:test\nSHELL /bin/bash -c')).toMatchObject({ line: 2, message: expect.stringContaining('JSON form') });

    const events: BuildProgress[] = [];
    const ctx = context({ Dockerfile: 'FROM busybox:test\nRUN echo about to fail && exit 7\nLABEL never=1' });
    const err = await rt.images.build(ctx, { tag: 'failing:1', onProgress: (e) => events.push(e) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BuildStepError);
    expect(err).toMatchObject({ exitCode: 7, line: 2, step: { step: 2, steps: 3 }, message: expect.stringContaining('about to fail') });
    await expect(rt.images.get('failing:1')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect(events.some((e) => e.kind === 'output' && e.data.includes('about to fail'))).toBe(true);
    expect(await rt.containers.list({ all: true })).toEqual([]);
  }, 120_000);
});
