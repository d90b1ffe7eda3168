import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { Runtime } from '../../lib/runtime';
import { describeRoot } from '../helpers/gate';
import { makeTempDir, removeTempDir } from '../helpers/tmp';
import { busyboxImage } from '../helpers/busybox';

async function text(s: NodeJS.ReadableStream): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

describeRoot('container smoke', () => {
  let dir: string;
  let rt: Runtime;
  beforeEach(async () => {
    dir = makeTempDir('ctr');
    rt = await Runtime.open({ root: join(dir, 'root') });
  });
  afterEach(async () => {
    for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
    removeTempDir(dir);
  });

  it('runs busybox', async () => {
    const img = await busyboxImage(rt, dir);
    const c = await rt.containers.run(img, { cmd: ['sh', '-c', 'echo pid=$$ host=$(hostname); ls /; id; cat /proc/self/status | grep -E "CapEff|Seccomp|NoNewPrivs"; ip link 2>&1 | head -3; exit 3'] });
    const [out, err, exit] = await Promise.all([text(c.stdout), text(c.stderr), c.wait()]);
    console.log(out, err, exit);
    expect(exit.exitCode).toBe(3);
  });
});
