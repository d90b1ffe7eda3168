/**
 * What the monitor's tests share: a collector that waits for text on a stream,
 * and a harness that builds the freestanding guest once per file, boots it in a
 * mode, and kills every VM a test left running.
 */
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { VirtualMachine, type VirtualMachineOptions } from '../../../lib/vm/machine';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
// @ts-expect-error: a plain ESM build script without types
import { buildTestGuest } from './guest/build.mjs';

/** How long any single wait on a guest may take. */
export const LIMIT_MS = 20_000;

/** Collects a stream's text and lets a test wait for a pattern in it. */
export class Collector {
  text = '';
  #waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  constructor(stream: Duplex) {
    stream.on('data', (d: Buffer) => {
      this.text += d.toString('latin1');
      this.#waiters = this.#waiters.filter((w) => {
        const m = this.text.match(w.re);
        if (m) w.resolve(m);
        return !m;
      });
    });
  }
  /** Resolves with the first match of re (in all text so far); rejects with the text's end after ms. */
  until(re: RegExp, ms = LIMIT_MS): Promise<RegExpMatchArray> {
    const m = this.text.match(re);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for ${re}; got:\n${this.text.slice(-2000)}`)), ms);
      this.#waiters.push({
        re,
        resolve: (mm) => {
          clearTimeout(t);
          resolve(mm);
        },
      });
    });
  }
}

/** The freestanding guest's two images. */
export interface TestGuest {
  bzImage: string;
  elf: string;
}

/** A booted guest and its console. */
export interface Booted {
  vm: VirtualMachine;
  out: Collector;
}

/**
 * Registers the hooks of a file's suite (call it inside describe): the guest is
 * built into a temp dir before the tests and every VM is killed after each one.
 */
export function guestHarness(label: string): {
  /** Boots the guest in `mode` (`nacelle.test=<mode>`), 32 MiB unless options say otherwise. */
  boot: (mode: string, options?: Partial<VirtualMachineOptions>) => Promise<Booted>;
  /** Registers a VM the harness should kill after the test (restored ones). */
  track: (vm: VirtualMachine) => VirtualMachine;
  /** The guest's images (after beforeAll). */
  guest: () => TestGuest;
  /** The file's temp dir (after beforeAll). */
  tmp: () => string;
} {
  let guest: TestGuest | undefined;
  let tmp: string | undefined;
  const live: VirtualMachine[] = [];
  beforeAll(async () => {
    tmp = makeTempDir(label);
    guest = (await buildTestGuest(join(tmp, 'guest'))) as TestGuest;
  });
  afterEach(async () => {
    await Promise.all(live.splice(0).map((vm) => vm.kill()));
  });
  afterAll(() => {
    if (tmp) removeTempDir(tmp);
  });
  const track = (vm: VirtualMachine): VirtualMachine => {
    live.push(vm);
    return vm;
  };
  return {
    async boot(mode, options = {}) {
      const vm = track(await VirtualMachine.create({ kernel: guest!.bzImage, cmdline: `nacelle.test=${mode}`, memoryMiB: 32, ...options }));
      const out = new Collector(vm.console);
      vm.start();
      return { vm, out };
    },
    track,
    guest: () => guest!,
    tmp: () => tmp!,
  };
}
