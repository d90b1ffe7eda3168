// bench/spawn: start `true` in new pid+uts+ipc+mount+net namespaces and wait for it,
// nacelle's spawn vs util-linux `unshare --fork` launched by child_process, in one run.
import { spawn as cpSpawn } from 'node:child_process';
import { spawn } from 'nacelle';

const N = Number(process.env.BENCH_N ?? 200);
const env = { PATH: '/usr/bin:/bin' };

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function time(fn) {
  const samples = [];
  for (let i = 0; i < N; i++) {
    const t = process.hrtime.bigint();
    await fn();
    samples.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  return median(samples);
}

const ours = await time(async () => {
  const p = await spawn({ argv: ['true'], env, namespaces: ['pid', 'uts', 'ipc', 'mount', 'net'], stdio: ['ignore', 'ignore', 'ignore'] });
  const s = await p.wait();
  if (s.exitCode !== 0) throw new Error('true failed');
});
const peer = await time(
  () =>
    new Promise((resolve, reject) => {
      const c = cpSpawn('unshare', ['--pid', '--uts', '--ipc', '--mount', '--net', '--fork', 'true'], { stdio: 'ignore' });
      c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`unshare exited ${code}`))));
    }),
);
console.log(`spawn into 5 namespaces + wait, median of ${N}:`);
console.log(`  nacelle spawn           ${ours.toFixed(2)} ms`);
console.log(`  child_process + unshare ${peer.toFixed(2)} ms`);
console.log(`  ratio nacelle/unshare   ${(ours / peer).toFixed(2)}x`);
