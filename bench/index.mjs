// Runs every benchmark in bench/ one after another (each prints ours, the peer's, and the ratio).
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
for (const file of readdirSync(here).filter((f) => f.endsWith('.mjs') && f !== 'index.mjs').sort()) {
  if (only.length && !only.some((o) => file.startsWith(o))) continue;
  console.log(`\n== bench/${file}`);
  const r = spawnSync(process.execPath, [join(here, file)], { stdio: 'inherit' });
  if (r.status !== 0) process.exitCode = 1;
}
