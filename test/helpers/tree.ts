/**
 * Fixture trees with every kind of entry a layer carries, and a comparable
 * description of a tree (for comparing unpacks with peers such as umoci).
 */
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, lutimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../../lib/native';

/** Builds a tree with files, modes, owners, links, a fifo, a device, xattrs and a long name. */
export function makeFixtureTree(dir: string, options: { devices?: boolean } = {}): void {
  const t = new Date('2024-01-02T03:04:05Z');
  mkdirSync(join(dir, 'etc'), { recursive: true });
  mkdirSync(join(dir, 'bin'), { recursive: true });
  mkdirSync(join(dir, 'empty'), { recursive: true });
  mkdirSync(join(dir, 'deep/a/b/c'), { recursive: true });
  writeFileSync(join(dir, 'etc/hostname'), 'fixture\n');
  writeFileSync(join(dir, 'etc/secret'), 'root only\n');
  chmodSync(join(dir, 'etc/secret'), 0o600);
  writeFileSync(join(dir, 'bin/tool'), '#!/bin/sh\necho tool\n');
  chmodSync(join(dir, 'bin/tool'), 0o4755);
  writeFileSync(join(dir, 'deep/a/b/c/data.bin'), Buffer.alloc(300_000, 7));
  chownSync(join(dir, 'deep/a/b/c/data.bin'), 1000, 1001);
  chownSync(join(dir, 'deep/a'), 123, 456);
  linkSync(join(dir, 'bin/tool'), join(dir, 'bin/tool-hardlink'));
  symlinkSync('../etc/hostname', join(dir, 'bin/hostname-link'));
  symlinkSync('/nonexistent/target', join(dir, 'dangling'));
  const long = 'x'.repeat(120);
  mkdirSync(join(dir, long), { recursive: true });
  writeFileSync(join(dir, long, `${'y'.repeat(130)}.txt`), 'long name\n');
  chmodSync(join(dir, 'empty'), 0o1777);
  native().lsetxattr(join(dir, 'etc/hostname'), 'user.origin', Buffer.from('fixture'));
  if (options.devices !== false) {
    native().mknod(join(dir, 'fifo'), 0o010644, 0, 0);
    native().mknod(join(dir, 'null-device'), 0o020666, 1, 3);
  }
  for (const p of ['etc/hostname', 'etc/secret', 'bin/tool', 'deep/a/b/c/data.bin', join(long, `${'y'.repeat(130)}.txt`)]) {
    utimesSync(join(dir, p), t, t);
  }
  lutimesSync(join(dir, 'bin/hostname-link'), t, t);
}

/** One line per entry: path, type, mode, owner, size/content hash or link target or device, xattrs. */
export function describeTree(root: string, options: { mtimes?: boolean; xattrs?: boolean } = {}): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const full = join(root, rel);
    for (const name of readdirSync(full).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, path));
      let what: string;
      if (st.isDirectory()) what = 'dir';
      else if (st.isSymbolicLink()) what = `link->${readlinkSync(join(root, path))}`;
      else if (st.isFile()) what = `file:${st.size}:${createHash('sha256').update(readFileSync(join(root, path))).digest('hex').slice(0, 16)}:nlink=${st.nlink}`;
      else if (st.isCharacterDevice()) what = `char:${st.rdev}`;
      else if (st.isBlockDevice()) what = `block:${st.rdev}`;
      else if (st.isFIFO()) what = 'fifo';
      else what = 'other';
      const mode = st.isSymbolicLink() ? '' : (st.mode & 0o7777).toString(8);
      let line = `${path} ${what} ${mode} ${st.uid}:${st.gid}`;
      if (options.mtimes && !st.isDirectory()) line += ` mtime=${Math.floor(st.mtimeMs / 1000)}`;
      if (options.xattrs !== false) {
        const names = native().llistxattr(join(root, path)).filter((n) => n.startsWith('user.')).sort();
        if (names.length) line += ` xattrs=${names.map((n) => `${n}=${native().lgetxattr(join(root, path), n)?.toString('hex')}`).join(',')}`;
      }
      out.push(line);
      if (st.isDirectory()) walk(path);
    }
  };
  walk('');
  return out;
}
