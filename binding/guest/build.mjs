#!/usr/bin/env node
// Builds the static guest init (nacelle-init) that runs as PID 1 inside a nacelle VM.
//
//   node binding/guest/build.mjs                 -> build/guest/nacelle-init (a checkout)
//   node binding/guest/build.mjs --prebuild      -> prebuilds/guest/linux-<arch>/nacelle-init (published)
//   node binding/guest/build.mjs --out <file>    -> anywhere (tests)
//
// Needs gcc and glibc's static libraries (Debian: build-essential, which pulls in libc6-dev).
// lib/vm/guest/initramfs.ts guestInitPath() looks in $NACELLE_GUEST_INIT, then
// prebuilds/guest/linux-<arch>/nacelle-init, then build/guest/nacelle-init.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { arch } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const args = process.argv.slice(2);
let out = join(root, 'build', 'guest', 'nacelle-init');
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--prebuild') out = join(root, 'prebuilds', 'guest', `linux-${arch()}`, 'nacelle-init');
  else if (args[i] === '--out' && args[i + 1]) out = resolve(args[++i]);
  else {
    console.error(`usage: node binding/guest/build.mjs [--prebuild | --out <file>]`);
    process.exit(2);
  }
}
const cc = process.env.CC ?? 'gcc';
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
const cmd = [cc, '-static', '-O2', '-s', '-Wall', '-Wextra', '-o', tmp, join(here, 'init.c')];
const r = spawnSync(cmd[0], cmd.slice(1), { stdio: 'inherit' });
if (r.error || r.status !== 0) {
  rmSync(tmp, { force: true });
  const why = r.error ? r.error.message : `exit status ${r.status}`;
  console.error(`nacelle: building the guest init failed (${why}): ${cmd.join(' ')}`);
  console.error('nacelle: it needs gcc and static glibc (Debian: apt-get install build-essential)');
  process.exit(1);
}
renameSync(tmp, out); // atomic: a reader never sees a half-written binary
console.log(`nacelle: guest init built: ${out}`);
