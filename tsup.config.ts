import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'lib/index.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  // import.meta.url in the CJS build (lib/native.ts finds the package root with it)
  shims: true,
  target: 'node20',
  platform: 'node',
  outDir: 'dist',
});
