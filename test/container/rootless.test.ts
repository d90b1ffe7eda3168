/**
 * Rootless operation: a non-root user runs a container with a single-id user
 * namespace mapping (no /etc/subuid here): root inside is that user outside.
 * The suite runs as root and drops to uid 1000 in a second Node process.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

const USER = 1000;

describeRoot('rootless containers (uid 1000, single-id mapping)', () => {
  let dir: string;
  beforeAll(() => {
    dir = makeTempDir('rootless');
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, 'home'));
    chownSync(join(dir, 'home'), USER, USER);
  });
  afterAll(() => removeTempDir(dir));

  function asUser(body: string): { stdout: string; stderr: string; status: number | null } {
    const file = join(dir, `script-${Math.random().toString(16).slice(2)}.ts`);
    writeFileSync(
      file,
      `import { Runtime } from ${JSON.stringify(join(process.cwd(), 'lib/runtime.ts'))};\n` +
        `import { writeBusyboxRootfs } from ${JSON.stringify(join(process.cwd(), 'lib/image/busybox.ts'))};\n` +
        `const home = ${JSON.stringify(join(dir, 'home'))};\n${body}\n`,
    );
    chmodSync(file, 0o644);
    const r = spawnSync(
      'setpriv',
      [`--reuid=${USER}`, `--regid=${USER}`, '--clear-groups', join(process.cwd(), 'node_modules/.bin/vite-node'), file],
      { encoding: 'utf8', timeout: 60_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: join(dir, 'home'), NACELLE_ROOT: '' } },
    );
    return { stdout: r.stdout, stderr: r.stderr, status: r.status };
  }

  it('runs a container as uid 1000: root inside, the user outside, in its own namespaces', () => {
    const r = asUser(`
      const rt = await Runtime.open();
      console.log('root=' + rt.root);
      writeBusyboxRootfs(home + '/rootfs');
      const img = await rt.images.fromDirectory(home + '/rootfs', { tag: 'busybox:rootless', config: { Cmd: ['sh'], Env: ['PATH=/bin'] } });
      const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'id -u; cat /proc/self/uid_map | tr -s " "; echo pid=$$; hostname; touch /root/made && ls -ln /root/made | tr -s " " | cut -d" " -f3; ls /dev | tr "\\\\n" " "'], hostname: 'rootless' });
      let out = ''; c.stdout.on('data', (d) => (out += d)); c.stderr.on('data', (d) => (out += 'ERR:' + d));
      const exit = await c.wait();
      console.log(out.trim());
      console.log('exit=' + exit.exitCode);
      const limited = await rt.containers.run(img, { cmd: ['true'], memory: '32m' }).catch((e) => e);
      console.log('limits=' + limited.code);
      for (const x of await rt.containers.list({ all: true })) await x.remove({ force: true });
    `);
    expect(r.stderr.split('\n').filter((l) => /Error|error/.test(l))).toEqual([]);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe(`root=${join(dir, 'home', '.local/share/nacelle')}`);
    expect(lines.slice(1, 6)).toEqual(['0', ` 0 ${USER} 1`, 'pid=1', 'rootless', '0']);
    for (const dev of ['null', 'zero', 'full', 'random', 'urandom', 'tty', 'pts', 'shm']) expect(lines[6]).toContain(dev);
    expect(lines.slice(7)).toEqual(['exit=0', 'limits=ERR_UNSUPPORTED']);
    // what the container made belongs to the user outside
    const upperOwner = spawnSync('sh', ['-c', `stat -c %u ${join(dir, 'home')}/.local/share/nacelle 2>/dev/null`], { encoding: 'utf8' }).stdout.trim();
    expect(upperOwner).toBe(String(USER));
  });
});
