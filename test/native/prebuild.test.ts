import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../lib/native';
import { makeTempDir, removeTempDir } from '../helpers/tmp';

describe('prebuilds', () => {
  let pkg: string;
  const root = packageRoot();
  beforeAll(() => {
    pkg = makeTempDir('prebuild');
    for (const entry of ['package.json', 'binding.gyp', 'binding', 'scripts']) cpSync(join(root, entry), join(pkg, entry), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(pkg, 'node_modules'));
  });
  afterAll(() => removeTempDir(pkg));

  it('npm run prebuild writes prebuilds/linux-<arch>/*.node, and the addon loads from it with build/ removed', () => {
    // The package's own script, run by npm as a user would (npm puts its node-gyp on PATH).
    const build = spawnSync('npm', ['run', 'prebuild'], { cwd: pkg, encoding: 'utf8', timeout: 180_000 });
    expect(build.status, `${build.stdout}\n${build.stderr}`).toBe(0);
    const dir = join(pkg, 'prebuilds', `linux-${process.arch}`);
    const files = readdirSync(dir).filter((f) => f.endsWith('.node'));
    expect(files.length).toBe(1);
    // the helper program ships beside it, static (no interpreter to find on the target)
    const monitor = join(dir, 'nacelle-monitor');
    expect(statSync(monitor).mode & 0o111).not.toBe(0);
    expect(readFileSync(monitor).includes(Buffer.from('/lib64/ld-linux'))).toBe(false);
    const usage = spawnSync(monitor, [], { encoding: 'utf8' });
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain('usage: nacelle-monitor');

    removeTempDir(join(pkg, 'build'));
    expect(existsSync(join(pkg, 'build'))).toBe(false);
    const load = spawnSync(
      process.execPath,
      [
        '-e',
        `const b = require(${JSON.stringify(join(root, 'node_modules/node-gyp-build'))})(${JSON.stringify(pkg)});
         console.log(typeof b.spawn);
         console.log(b.constants.CLONE_NEWPID);`,
      ],
      { encoding: 'utf8' },
    );
    expect(load.status, load.stderr).toBe(0);
    expect(load.stdout.split('\n').slice(0, 2)).toEqual(['function', String(0x20000000)]);
  }, 240_000);
});
