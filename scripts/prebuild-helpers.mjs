// After prebuildify: copy the helper programs node-gyp built beside the addon
// (build/Release) into prebuilds/<platform>-<arch>/, where a published package
// finds them (lib/native.ts helperProgram).
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const programs = ['nacelle-monitor'];
const from = join('build', 'Release');
const to = join('prebuilds', `${process.platform}-${process.arch}`);
mkdirSync(to, { recursive: true });
for (const name of programs) {
  const src = join(from, name);
  if (!existsSync(src)) {
    console.error(`prebuild-helpers: ${src} is missing (node-gyp builds it from binding.gyp)`);
    process.exit(1);
  }
  copyFileSync(src, join(to, name));
}
