/**
 * Containers across Node processes: a foreground container dies with the
 * process that started it; a detached one lives on, and any process can list,
 * exec into, stop and remove it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Image } from '../../lib/image/image';
import { Runtime } from '../../lib/runtime';
import { busyboxImage } from '../helpers/busybox';
import { describeRoot } from '../helpers/gate';
import { eventually, procState } from '../helpers/proc';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

async function text(s: Readable): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

describeRoot('containers across processes', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  beforeAll(async () => {
    dir = makeTempDir('xproc');
    rt = await Runtime.open({ root: join(dir, 'root') });
    img = await busyboxImage(rt, dir);
  });
  afterAll(async () => {
    for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
    removeTempDir(dir);
  });

  /** Runs a TypeScript snippet in a fresh Node process (vite-node) and returns its stdout. */
  function inAnotherProcess(body: string): string {
    const file = join(dir, `child-${Math.random().toString(16).slice(2)}.ts`);
    writeFileSync(
      file,
      `import { Runtime } from ${JSON.stringify(join(process.cwd(), 'lib/runtime.ts'))};\n` +
        `const rt = await Runtime.open({ root: ${JSON.stringify(join(dir, 'root'))} });\n${body}\n`,
    );
    const r = spawnSync(join(process.cwd(), 'node_modules/.bin/vite-node'), [file], { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`child process failed (${r.status}): ${r.stderr}`);
    return r.stdout.trim();
  }

  it('kills a foreground container when the process that started it exits', async () => {
    const out = inAnotherProcess(`
      const c = await rt.containers.run('busybox:test', { cmd: ['sleep', '60'], name: 'fg' });
      console.log(c.id, c.pid);
      process.exit(0);`);
    const [id, pid] = out.split('\n').at(-1)!.split(' ');
    await eventually(() => {
      const s = procState(Number(pid));
      return s === null || s === 'Z';
    }, 5000, 'the foreground container to die with its creator');
    const c = await rt.containers.get(id!);
    expect(c.status).toBe('exited');
    expect(await c.wait()).toMatchObject({ exitCode: 137, signal: 'SIGKILL' });
    await c.remove();
  });

  it('keeps a detached container running after its creator exits; another process lists, execs, attaches, stops and removes it', async () => {
    const out = inAnotherProcess(`
      const c = await rt.containers.run('busybox:test', { cmd: ['sh', '-c', 'echo started; trap "echo bye; exit 3" TERM; while true; do sleep 0.1; done'], name: 'bg', detach: true });
      console.log(c.id);`);
    const id = out.split('\n').at(-1)!;
    const listed = await rt.containers.list();
    expect(listed.map((c) => [c.id, c.name, c.status])).toEqual([[id, 'bg', 'running']]);
    const c = await rt.containers.get('bg');
    const p = await c.exec(['sh', '-c', 'echo exec-ok; hostname']);
    const [execOut, status] = await Promise.all([text(p.stdout), p.wait()]);
    expect(execOut).toBe(`exec-ok\n${id.slice(0, 12)}\n`);
    expect(status.exitCode).toBe(0);
    const attached = c.attach();
    const collected = text(attached.stdout);
    await new Promise((r) => setTimeout(r, 200));
    const exit = await c.stop({ timeout: 5 });
    // not our child: its monitor (its parent since the creator left) recorded the code
    expect(exit).toEqual({ exitCode: 3, signal: null, oomKilled: false });
    expect(await collected).toBe('started\nbye\n');
    expect((await rt.containers.list({ all: true })).map((x) => x.status)).toEqual(['exited']);
    await c.remove();
    expect(await rt.containers.list({ all: true })).toEqual([]);
  });

  it('gives the exit code of a detached container that ended after its creator left (docker wait)', async () => {
    const out = inAnotherProcess(`
      const a = await rt.containers.run('busybox:test', { cmd: ['sh', '-c', 'sleep 0.5; exit 4'], detach: true });
      const b = await rt.containers.run('busybox:test', { cmd: ['sleep', '30'], detach: true });
      const c = await rt.containers.run('busybox:test', { cmd: ['sh', '-c', 'sleep 0.5; tail /dev/zero'], memory: '32m', detach: true });
      console.log(a.id + ' ' + b.id + ' ' + c.id);`);
    const [a, b, oom] = out.split('\n').at(-1)!.split(' ') as [string, string, string];
    const ca = await rt.containers.get(a);
    const cb = await rt.containers.get(b);
    expect(await ca.wait({ timeoutMs: 10_000 })).toEqual({ exitCode: 4, signal: null, oomKilled: false });
    await cb.kill('SIGKILL');
    expect(await cb.wait({ timeoutMs: 10_000 })).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: false });
    expect(ca.state).toMatchObject({ status: 'exited', exitCode: 4 });
    const coom = await rt.containers.get(oom);
    expect(await coom.wait({ timeoutMs: 20_000 })).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: true });
    await coom.remove();
    // a third process reads the same from the state
    const again = inAnotherProcess(`console.log(JSON.stringify(await (await rt.containers.get(${JSON.stringify(a)})).wait()));`);
    expect(JSON.parse(again.split('\n').at(-1)!)).toEqual({ exitCode: 4, signal: null, oomKilled: false });
    await ca.remove();
    await cb.remove();
  });

  it('attaches to a detached container\'s stdin from another process; detaching leaves it running (docker run -di)', async () => {
    const out = inAnotherProcess(`
      const c = await rt.containers.run('busybox:test', { cmd: ['sh', '-c', 'while read line; do echo "got $line"; done; echo eof'], stdin: true, detach: true });
      console.log(c.id);`);
    const id = out.split('\n').at(-1)!;
    const c = await rt.containers.get(id);
    const first = c.attach();
    expect(first.stdin).not.toBeNull();
    const seen = text(first.stdout);
    first.stdin!.write('one\n');
    await new Promise<void>((r) => first.stdin!.end(r));
    // a second client attaches after the first left: stdin is still open
    const second = c.attach();
    second.stdin!.end('two\n');
    await eventually(() => readFileSync(join(c.dir, 'stdout.log'), 'utf8') === 'got one\ngot two\n', 5000, 'both lines');
    expect((await c.refresh()).status).toBe('running');
    await c.stop({ timeout: 1 });
    expect(await seen).toBe('got one\ngot two\n');
    // a container without stdin offers none
    expect(c.attach().stdin).toBeNull();
    await c.remove();
  });

  it('shows the image and containers to another process (ps -a after the creator is gone)', async () => {
    const c = await rt.containers.create(img, { cmd: ['true'], name: 'made-here', labels: { team: 'nacelle' } });
    const out = inAnotherProcess(`
      for (const c of await rt.containers.list({ all: true })) console.log(c.name, c.status, JSON.stringify(c.state.labels));
      console.log((await rt.images.get('busybox:test')).digest);`);
    expect(out.split('\n').slice(-2)).toEqual([`made-here created {"team":"nacelle"}`, img.digest]);
    await c.remove();
  });
});
