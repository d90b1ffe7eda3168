/**
 * nacelle's builds against buildah's (Debian): the same Dockerfiles from the same busybox base
 * must give the same config fields and the same file tree (modes, owners, contents).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { umount } from '../../lib/host/mount';
import type { Image } from '../../lib/image/image';
import { packDirectory } from '../../lib/image/tar/pack';
import type { ContainerConfig } from '../../lib/oci/types';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot, missingRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { describeTree } from '../helpers/tree';

function missingBuildah(): string | null {
  const r = spawnSync('buildah', ['--version'], { encoding: 'utf8' });
  return r.error || r.status !== 0 ? 'needs buildah (apt-get install buildah)' : null;
}

/** describeRoot, and buildah must be installed (a failure under NACELLE_REQUIRE_ROOT=1, a loud skip elsewhere). */
function describeBuildah(name: string, fn: () => void): void {
  const reason = missingRoot() === null ? missingBuildah() : null;
  if (reason === null) return describeRoot(name, fn);
  if (process.env.NACELLE_REQUIRE_ROOT === '1') {
    describe(name, () => {
      it(`requires: ${reason}`, () => {
        throw new Error(`${name}: ${reason}, and NACELLE_REQUIRE_ROOT=1 says this host must have it`);
      });
    });
    return;
  }
  console.warn(`[skip] ${name}: ${reason}`);
  describe.skip(name, fn);
}

/** The config fields both builders must agree on; absent, null and empty count as the same. */
const FIELDS = ['Env', 'Cmd', 'Entrypoint', 'WorkingDir', 'User', 'ExposedPorts', 'Volumes', 'Labels', 'StopSignal', 'Healthcheck'] as const;

function comparable(config: ContainerConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of FIELDS) {
    let v: unknown = config[f];
    if (f === 'Labels' && v) {
      // buildah stamps its own version on every image it builds: a known, expected difference
      const { 'io.buildah.version': _version, ...rest } = v as Record<string, string>;
      v = rest;
    }
    if (f === 'ExposedPorts' && v) {
      // buildah keeps a range (`7100-7102/tcp`) as one key; Docker expands it into one key a
      // port, and so does nacelle: a known difference, compared after expanding buildah's
      const expanded: Record<string, unknown> = {};
      for (const key of Object.keys(v as object)) {
        const m = /^(\d+)-(\d+)(\/\w+)?$/.exec(key);
        if (!m) expanded[key] = {};
        else for (let p = Number(m[1]); p <= Number(m[2]); p++) expanded[`${p}${m[3] ?? '/tcp'}`] = {};
      }
      v = expanded;
    }
    if (v === null || v === '' || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && v !== null && Object.keys(v).length === 0)) continue;
    out[f] = v;
  }
  return out;
}

const DOCKERFILES: Record<string, string> = {
  app: `
ARG BASE=busybox:test
FROM $BASE
ENV APP_HOME=/srv/app \\
    MODE="production build"
WORKDIR $APP_HOME
COPY --chown=1000:1000 app.sh ./bin/
COPY --chmod=600 secret.conf /etc/app/
COPY conf /etc/app/conf
COPY *.txt notes/
ADD bundle.tar /opt/bundle/
RUN mkdir -p /var/data && echo "$MODE" > /var/data/mode && chmod 640 /var/data/mode && rm /etc/app/conf/drop.me
USER 1000:1000
EXPOSE 8080 9000/udp
VOLUME ["/var/data"]
LABEL org.example.name="demo app" org.example.tier=web
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/srv/app/bin/app.sh", "--health"]
ENTRYPOINT ["/srv/app/bin/app.sh"]
CMD ["--serve"]
`,
  multistage: `
ARG BASE=busybox:test
FROM $BASE AS builder
RUN mkdir -p /out/lib && echo built > /out/lib/artifact && chmod 750 /out/lib && chown -R 5:6 /out
SHELL ["/bin/sh", "-ec"]
RUN echo shell-form > /out/shell

FROM $BASE
COPY --from=builder /out /usr/local/
COPY --from=builder --chown=2:3 /out/lib/artifact /opt/artifact
COPY --from=builder --chown=2:3 --chmod=700 /out /opt/out2
ENTRYPOINT echo entry
`,
  semantics: `
ARG BASE=busybox:test
ARG UNUSED_GLOBAL=g
FROM $BASE
ARG PORT=7000
ENV LEGACY value with spaces
ENV PORT_ENV=$PORT OTHER="\${PORT_ENV:-unset}"
WORKDIR /data
WORKDIR sub/dir
COPY --chown=app:staff conf ./conf/
COPY . /ctx/
RUN touch /tmp/x && rm /tmp/x && mkdir -p /var/cache/app
USER app
EXPOSE $PORT 7100-7102/tcp
VOLUME /var/cache/app /var/log
LABEL "quoted key"="quoted value" empty=""
CMD echo "shell form $PORT"
ENTRYPOINT ["/bin/sh", "-c"]
STOPSIGNAL 9
HEALTHCHECK CMD wget -q -O- localhost:$PORT || exit 1
`,
};

describeBuildah('builds compared with buildah', () => {
  let dir: string;
  let rt: Runtime;
  let base: Image;
  let baseArchive: string;
  let storage: string[];

  function buildah(args: string[]): string {
    try {
      return execFileSync('buildah', [...storage, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000, env: { ...process.env, BUILDAH_ISOLATION: 'chroot' } });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw new Error(`buildah ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
    }
  }

  beforeAll(async () => {
    dir = makeTempDir('buildah');
    rt = await Runtime.open({ root: join(dir, 'root') });
    base = await busyboxImage(rt, dir, 'busybox:test');
    baseArchive = join(dir, 'busybox.oci.tar');
    await base.export(baseArchive, { format: 'oci-archive' });
    storage = ['--root', join(dir, 'buildah-root'), '--runroot', join(dir, 'buildah-runroot'), '--storage-driver', 'vfs'];
  }, 60_000);

  afterAll(async () => {
    if (!dir) return;
    try {
      buildah(['rm', '--all']);
      buildah(['rmi', '--all', '--force']);
    } catch {
      // nothing built
    }
    // buildah may leave mounts under its root and runroot: unmount them before deleting
    const ours = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => !!m && m.startsWith(`${dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of ours) await umount(m, { detach: true }).catch(() => undefined);
    removeTempDir(dir);
  }, 60_000);

  async function context(name: string): Promise<string> {
    const ctx = join(dir, `ctx-${name}`);
    mkdirSync(join(ctx, 'conf/nested'), { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), DOCKERFILES[name]!);
    writeFileSync(join(ctx, 'app.sh'), '#!/bin/sh\necho "app $*"\n');
    chmodSync(join(ctx, 'app.sh'), 0o755);
    writeFileSync(join(ctx, 'secret.conf'), 'token=1\n');
    writeFileSync(join(ctx, 'conf/main.conf'), 'main\n');
    writeFileSync(join(ctx, 'conf/drop.me'), 'dropped by RUN\n');
    writeFileSync(join(ctx, 'conf/nested/deep.conf'), 'deep\n');
    chmodSync(join(ctx, 'conf/nested'), 0o750);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'b.txt'), 'b\n');
    writeFileSync(join(ctx, '.dockerignore'), '*.log\nconf/nested\n!conf/nested/deep.conf\n');
    writeFileSync(join(ctx, 'debug.log'), 'ignored\n');
    const tarSrc = join(dir, `tar-${name}`);
    mkdirSync(join(tarSrc, 'share'), { recursive: true });
    writeFileSync(join(tarSrc, 'share/readme'), 'from the tar\n');
    chmodSync(join(tarSrc, 'share/readme'), 0o444);
    await packDirectory(tarSrc, createWriteStream(join(ctx, 'bundle.tar')), { compression: 'none' });
    return ctx;
  }

  async function tree(image: Image, label: string): Promise<string[]> {
    const out = join(dir, `unpack-${label}`);
    await image.unpack(out);
    return describeTree(out, { xattrs: false });
  }

  /**
   * buildah (chroot isolation) leaves the mount points of its RUN steps in the image: empty
   * /dev, /proc, /sys, /run and empty /etc/hostname, /etc/hosts, /etc/resolv.conf. nacelle
   * mounts those from its init layer, outside the image. A known difference: these exact
   * entries are dropped from buildah's tree when the base image does not have them.
   */
  function withoutBuildahMountPoints(entries: string[], baseEntries: string[]): string[] {
    const points = new Set(['dev', 'proc', 'sys', 'run', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf']);
    const inBase = new Set(baseEntries.map((l) => l.split(' ')[0]));
    return entries.filter((l) => {
      const path = l.split(' ')[0]!;
      return !points.has(path) || inBase.has(path);
    });
  }

  for (const name of Object.keys(DOCKERFILES)) {
    it(`gives the same config and files as buildah for the '${name}' Dockerfile`, async () => {
      const ctx = await context(name);
      const ours = await rt.images.build(ctx, { tag: `ours-${name}:1` });

      // Docker format: buildah leaves HEALTHCHECK (and SHELL, ONBUILD) out of OCI-format images
      buildah(['bud', '--format', 'docker', '--isolation', 'chroot', '--network', 'host', '--build-arg', `BASE=oci-archive:${baseArchive}`, '-t', `peer-${name}:1`, ctx]);
      const archive = join(dir, `peer-${name}.tar`);
      buildah(['push', `peer-${name}:1`, `docker-archive:${archive}:peer-${name}:1`]);
      const [theirs] = await rt.images.import(archive);
      expect(theirs).toBeDefined();

      expect(comparable(ours.config)).toEqual(comparable(theirs!.config));
      const baseTree = await tree(base, `base-${name}`);
      expect(await tree(ours, `ours-${name}`)).toEqual(withoutBuildahMountPoints(await tree(theirs!, `theirs-${name}`), baseTree));
    }, 180_000);
  }
});
