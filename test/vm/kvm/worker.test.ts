/**
 * VMs belong to the Node environment that made them: when a worker thread that
 * runs a VM ends, its VM ends with it (the addon's cleanup hook), and a VM of
 * the main thread runs on untouched. Nothing of a guest can take the process down.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { expect, it } from 'vitest';
import { packageRoot } from '../../../lib/native';
import { describeKvm } from '../../helpers/gate';
import { guestHarness } from './helpers';

/** The monitor's threads in this process, by the names the addon gives them. */
function monitorThreads(): { vcpu: number; io: number } {
  const names = readdirSync('/proc/self/task').map((t) => {
    try {
      return readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim();
    } catch {
      return ''; // a thread that ended while we looked
    }
  });
  return { vcpu: names.filter((n) => n.startsWith('nacelle-vcpu')).length, io: names.filter((n) => n === 'nacelle-vm-io').length };
}

describeKvm('KVM monitor in worker threads', () => {
  const h = guestHarness('kvm-worker');

  it("ends a worker's VM with the worker, and leaves the main thread's running", async () => {
    const { vm, out } = await h.boot('count');
    await out.until(/tick 2\n/);
    // The worker loads the addon itself and runs a VM whose ticks it forwards.
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const net = require('node:net');
      const addon = require('node-gyp-build')(workerData.root);
      addon.kvmCreate({ kernel: workerData.kernel, cmdline: 'nacelle.test=count', cpus: 1, memoryMiB: 16 }, () => {}).then((c) => {
        const s = new net.Socket({ fd: c.consoleFd });
        s.on('data', (d) => parentPort.postMessage(String(d)));
        addon.kvmStart(c.handle, false);
      });
      `,
      { eval: true, workerData: { root: packageRoot(), kernel: h.guest().bzImage } },
    );
    let text = '';
    await new Promise<void>((resolve, reject) => {
      worker.on('message', (m: string) => {
        text += m;
        if (/tick 2\n/.test(text)) resolve();
      });
      worker.on('error', reject);
    });
    expect(monitorThreads()).toEqual({ vcpu: 2, io: 2 });
    await worker.terminate();
    // The worker's vCPU and I/O threads were joined by the addon's cleanup hook; ours run on.
    expect(monitorThreads()).toEqual({ vcpu: 1, io: 1 });
    const seen = out.text.length;
    await out.until(new RegExp(`[\\s\\S]{${seen + 20}}`));
    expect(vm.state).toBe('running');
    expect((await vm.kill()).reason).toBe('killed');
  });

  it('a guest that crashes ends its VM, not the process: the next VM runs', async () => {
    const a = await h.boot('triple');
    expect((await a.vm.wait(20_000)).reason).toBe('crash');
    const b = await h.boot('hello');
    expect((await b.vm.wait(20_000)).reason).toBe('poweroff');
    expect(b.out.text).toContain('hello from guest');
  });
});
