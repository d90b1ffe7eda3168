// nacelle build example: a small app image from a Dockerfile, built three times to show the
// step cache: first everything is built, then nothing changed so every step is cached (same
// digest), then one copied file changes so only that step and the ones after it are built.
// `npx tsup && node examples/build.mjs` (as root: RUN steps are containers).
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime, writeBusyboxRootfs } from 'nacelle';

if (process.geteuid() !== 0) {
  console.error('nacelle build example: run as root (RUN steps need namespaces, mounts and cgroups).');
  process.exit(1);
}
if (!existsSync('/bin/busybox')) {
  console.log('installing busybox-static from Debian ...');
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'busybox-static'], { stdio: 'inherit' });
}

const work = mkdtempSync(join(tmpdir(), 'nacelle-build-example-'));
const say = (...a) => console.log(...a);

// The build context: a Dockerfile, a .dockerignore and a tiny shell "app".
const ctx = join(work, 'app');
mkdirSync(join(ctx, 'conf'), { recursive: true });
writeFileSync(
  join(ctx, 'Dockerfile'),
  `# syntax=docker/dockerfile:1
ARG BASE=busybox:example
FROM \${BASE}
ARG GREETING=hello
ENV APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY app.sh ./
COPY conf/ ./conf/
RUN echo "$GREETING from the build" > built.txt && ls -l
USER 1000:1000
EXPOSE 8080
LABEL org.example.name=demo
CMD ["/srv/app/app.sh"]
`,
);
writeFileSync(join(ctx, '.dockerignore'), '*.log\n');
writeFileSync(join(ctx, 'app.sh'), '#!/bin/sh\ncat /srv/app/built.txt; cat /srv/app/conf/settings\n');
chmodSync(join(ctx, 'app.sh'), 0o755);
writeFileSync(join(ctx, 'conf/settings'), 'color=blue\n');
writeFileSync(join(ctx, 'debug.log'), 'ignored by .dockerignore\n');

const rt = await Runtime.open({ root: join(work, 'root') });
try {
  writeBusyboxRootfs(join(work, 'rootfs'));
  await rt.images.fromDirectory(join(work, 'rootfs'), { tag: 'busybox:example', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });

  async function build(title) {
    say(`\n== ${title}`);
    const started = performance.now();
    const image = await rt.images.build(ctx, {
      tag: 'app:dev',
      onProgress: (e) => {
        if (e.kind === 'step') say(`  [${e.step}/${e.steps}] ${e.status.padEnd(6)} ${e.instruction.slice(0, 60)}  (${e.ms} ms)`);
        else if (e.kind === 'warning') say(`  warning: ${e.message}`);
      },
    });
    say(`  => ${image.tags[0]} ${image.digest.slice(0, 19)}…  ${image.layers.length} layers, ${(performance.now() - started).toFixed(0)} ms`);
    return image;
  }

  const first = await build('first build: every step runs');
  const second = await build('second build, nothing changed: every step cached');
  say(`  same digest as the first build: ${second.digest === first.digest}`);
  writeFileSync(join(ctx, 'conf/settings'), 'color=green\n');
  const third = await build('conf/settings changed: COPY conf/ and the steps after it rebuild');
  const shared = third.layers.filter((l, i) => first.layers[i]?.digest === l.digest).length;
  say(`  layers shared with the first build: ${shared} of ${third.layers.length}`);

  const c = await rt.containers.run(third, {});
  let out = '';
  for await (const chunk of c.stdout) out += chunk;
  await c.wait();
  await c.remove();
  say(`\n== running app:dev\n${out.trimEnd().replace(/^/gm, '  ')}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
