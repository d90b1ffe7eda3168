/**
 * The static guest init: built with gcc -static (no PT_INTERP), then run as
 * a plain process inside a nacelle container (not PID 1 there: it skips the
 * mounts and power-off), with a regular file or a unix socket as its channel.
 * Frames are decoded with the host side's FrameDecoder.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { type Server, type Socket, createServer } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../../lib/image/image';
import { Runtime } from '../../../lib/runtime';
import { type GuestConfig, encodeGuestConfig } from '../../../lib/vm/guest/initramfs';
import { type Frame, FrameDecoder, FrameType, decodeExit, encodeFrame, encodeStdin } from '../../../lib/vm/protocol';
import { busyboxImage } from '../../helpers/busybox';
import { describeRoot } from '../../helpers/gate';
import { makeTempDir, removeTempDir } from '../../helpers/tmp';
import { initFixture } from './fixtures';

/** Whether an ELF file has a PT_INTERP program header (needs a dynamic loader). */
function hasInterpreter(elf: Buffer): boolean {
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (elf.readUInt32LE(phoff + i * phentsize) === 3) return true;
  return false;
}

async function text(s: Readable): Promise<string> {
  let out = '';
  for await (const c of s) out += String(c);
  return out;
}

/** What one guest run sent over its channel, grouped. */
interface Decoded {
  frames: Frame[];
  stdout: Buffer;
  stderr: Buffer;
  errors: string[];
  exit?: { exitCode: number; signal: number };
}

function decode(bytes: Buffer): Decoded {
  const frames = new FrameDecoder().push(bytes);
  const out: Decoded = { frames, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), errors: [] };
  const so: Buffer[] = [];
  const se: Buffer[] = [];
  for (const f of frames) {
    if (f.type === FrameType.STDOUT) so.push(f.payload);
    else if (f.type === FrameType.STDERR) se.push(f.payload);
    else if (f.type === FrameType.ERROR) out.errors.push(f.payload.toString());
    else if (f.type === FrameType.EXIT) out.exit = decodeExit(f.payload);
  }
  out.stdout = Buffer.concat(so);
  out.stderr = Buffer.concat(se);
  return out;
}

describe('guest init binary', () => {
  let init: { path: string; cleanup: () => void };
  beforeAll(() => {
    init = initFixture();
  });
  afterAll(() => init.cleanup());

  it('is a static x86-64 ELF executable without an interpreter', () => {
    const elf = readFileSync(init.path);
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(elf.readUInt16LE(0x10)).toBe(2); // ET_EXEC: not PIE, no loader
    expect(hasInterpreter(elf)).toBe(false);
    const described = execFileSync('file', ['-b', init.path], { encoding: 'utf8' });
    expect(described).toMatch(/statically linked/);
  });

  it('builds from a clean checkout with the documented command', () => {
    const dir = makeTempDir('guest-build');
    try {
      const out = join(dir, 'init');
      const log = execFileSync(process.execPath, [join(process.cwd(), 'binding/guest/build.mjs'), '--out', out], { encoding: 'utf8' });
      expect(log).toContain(out);
      expect(hasInterpreter(readFileSync(out))).toBe(false);
    } finally {
      removeTempDir(dir);
    }
  }, 60_000);
});

describeRoot('guest init as a plain process in a container', () => {
  let dir: string;
  let rt: Runtime;
  let img: Image;
  let init: { path: string; cleanup: () => void };
  let seq = 0;
  beforeAll(async () => {
    dir = makeTempDir('guest-init');
    init = initFixture();
    rt = await Runtime.open({ root: join(dir, 'root') });
    img = await busyboxImage(rt, dir);
    writeFileSync(join(dir, 'init'), readFileSync(init.path), { mode: 0o755 });
  });
  afterAll(async () => {
    try {
      for (const c of await rt.containers.list({ all: true })) await c.remove({ force: true });
    } finally {
      init.cleanup();
      removeTempDir(dir);
    }
  });

  const base: GuestConfig = { argv: ['true'], env: ['PATH=/bin'], workdir: '/', uid: 0, gid: 0, hostname: 'guest' };

  /** Runs the init in a container with a regular file as its channel; returns its frames and exit status. */
  async function runInit(config: Partial<GuestConfig>, channel?: string) {
    const n = ++seq;
    const chan = channel ?? `/n/chan-${n}`;
    writeFileSync(join(dir, `cfg-${n}`), encodeGuestConfig({ ...base, ...config }, { channel: chan }));
    // `; echo` keeps sh from exec'ing the init, so it is not PID 1 of the container
    const c = await rt.containers.run(img, { cmd: ['sh', '-c', `/n/init /n/cfg-${n}; echo "rc=$?"`], volumes: [{ host: dir, container: '/n' }] });
    const [stdout, stderr, exit] = await Promise.all([text(c.stdout), text(c.stderr), c.wait()]);
    await c.remove({ force: true });
    const file = join(dir, `chan-${n}`);
    const decoded = channel === undefined && existsSync(file) ? decode(readFileSync(file)) : undefined;
    return { stdout, stderr, exit, decoded };
  }

  it('runs echo: READY, STDOUT, EXIT 0, in that order', async () => {
    const r = await runInit({ argv: ['echo', 'hello', 'world'] });
    expect(r.stdout).toBe('rc=0\n');
    expect(r.decoded?.frames.map((f) => f.type)).toEqual([FrameType.READY, FrameType.STDOUT, FrameType.EXIT]);
    expect(r.decoded?.stdout.toString()).toBe('hello world\n');
    expect(r.decoded?.exit).toEqual({ exitCode: 0, signal: 0 });
  });

  it('reports exit 3, and a signal death as 128+sig with the signal', async () => {
    const three = await runInit({ argv: ['sh', '-c', 'exit 3'] });
    expect(three.decoded?.exit).toEqual({ exitCode: 3, signal: 0 });
    expect(three.stdout).toBe('rc=3\n');
    const killed = await runInit({ argv: ['sh', '-c', 'kill -TERM $$'] });
    expect(killed.decoded?.exit).toEqual({ exitCode: 143, signal: 15 });
  });

  it('answers a missing command with ERROR and 127, like a container', async () => {
    const abs = await runInit({ argv: ['/bin/nope'] });
    expect(abs.decoded?.errors).toEqual(['exec "/bin/nope": No such file or directory (ENOENT)']);
    expect(abs.decoded?.exit).toEqual({ exitCode: 127, signal: 0 });
    expect(abs.stdout).toBe('rc=127\n');
    expect(abs.stderr).toContain('nacelle-init: exec "/bin/nope"');
    const searched = await runInit({ argv: ['nope'], env: ['PATH=/usr/bin:/bin'] });
    expect(searched.decoded?.errors[0]).toMatch(/^exec "nope" in \$PATH "\/usr\/bin:\/bin": No such file or directory \(ENOENT\)$/);
    expect(searched.decoded?.exit?.exitCode).toBe(127);
    const notExecutable = await runInit({ argv: ['/etc/passwd'] });
    expect(notExecutable.decoded?.errors[0]).toMatch(/EACCES/);
    expect(notExecutable.decoded?.exit?.exitCode).toBe(126);
    const badDir = await runInit({ argv: ['true'], workdir: '/no/such/dir' });
    expect(badDir.decoded?.errors[0]).toBe('chdir /no/such/dir: No such file or directory (ENOENT)');
  });

  it('keeps stdout and stderr apart', async () => {
    const r = await runInit({ argv: ['sh', '-c', 'echo out1; echo err1 >&2; echo out2; echo err2 >&2'] });
    expect(r.decoded?.stdout.toString()).toBe('out1\nout2\n');
    expect(r.decoded?.stderr.toString()).toBe('err1\nerr2\n');
  });

  it('forwards 1 MiB on stdout and on stderr at once, byte for byte', async () => {
    const r = await runInit({ argv: ['sh', '-c', 'yes 0123456789abcdef | head -c 1048576 & yes ERR | head -c 1048576 >&2; wait'] });
    const line = Buffer.from('0123456789abcdef\n');
    const expected = Buffer.alloc(1 << 20);
    for (let i = 0; i < expected.length; i += line.length) line.copy(expected, i);
    expect(r.decoded?.stdout.length).toBe(1 << 20);
    expect(r.decoded?.stdout.equals(expected)).toBe(true);
    expect(r.decoded?.stderr.length).toBe(1 << 20);
    expect(r.decoded?.stderr.toString().replaceAll('ERR\n', '')).toMatch(/^(E|ER)?$/);
    for (const f of r.decoded?.frames ?? []) expect(f.payload.length).toBeLessThanOrEqual(65536);
    expect(r.decoded?.exit).toEqual({ exitCode: 0, signal: 0 });
  });

  it('sets the exact env, workdir, uid, gid and groups', async () => {
    const r = await runInit({
      argv: ['sh', '-c', 'pwd; id -u; id -g; id -G; env | grep -v -E "^(PWD|SHLVL|_)=" | sort'],
      env: ['PATH=/bin', 'FOO=bar baz'],
      workdir: '/tmp',
      uid: 1000,
      gid: 1001,
      groups: [50, 60],
    });
    expect(r.decoded?.stdout.toString()).toBe('/tmp\n1000\n1001\n1001 50 60\nFOO=bar baz\nPATH=/bin\n');
  });

  it('reaps orphans and ends what the command left running when it exits', async () => {
    const t0 = Date.now();
    const r = await runInit({
      argv: ['sh', '-c', '(sh -c "exit 0" &); (sleep 30 &); sleep 0.5; grep -l "^State:.*Z" /proc/[0-9]*/status 2>/dev/null | wc -l'],
    });
    expect(r.decoded?.stdout.toString().trim()).toBe('0'); // no zombies: the init reaped the orphan
    expect(r.decoded?.exit).toEqual({ exitCode: 0, signal: 0 });
    expect(Date.now() - t0).toBeLessThan(10_000); // the orphaned sleep 30 did not hold it up
  });

  describe('over a unix socket (stdin forwarding)', () => {
    let server: Server;
    let conns: Array<(s: Socket) => void> = [];
    beforeAll(async () => {
      server = createServer((s) => conns.shift()?.(s));
      await new Promise<void>((resolve) => server.listen(join(dir, 'sock'), resolve));
    });
    afterAll(async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    /** Runs the init against the socket; `feed` is called on READY with the connection. */
    async function runSocket(config: Partial<GuestConfig>, feed: (s: Socket) => void) {
      const got = new Promise<Decoded>((resolve, reject) => {
        conns.push((s) => {
          const chunks: Buffer[] = [];
          let ready = false;
          const dec = new FrameDecoder();
          s.on('data', (c: Buffer) => {
            chunks.push(c);
            if (!ready && dec.push(c).some((f) => f.type === FrameType.READY)) {
              ready = true;
              feed(s);
            }
          });
          // a guest that exits while the host still writes stdin closes the socket: EPIPE is expected
          s.on('error', (err: NodeJS.ErrnoException) => {
            if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
          });
          s.on('close', () => resolve(decode(Buffer.concat(chunks))));
        });
      });
      const r = await runInit({ ...config, stdin: true }, '/n/sock');
      return { ...r, decoded: await got };
    }

    it('forwards STDIN frames and STDIN_EOF to the command', async () => {
      const r = await runSocket({ argv: ['sh', '-c', 'cat; echo "[eof]"'] }, (s) => {
        for (const f of encodeStdin(Buffer.from('line one\nline two\n'))) s.write(f);
        s.write(encodeFrame(FrameType.STDIN_EOF));
      });
      expect(r.decoded.stdout.toString()).toBe('line one\nline two\n[eof]\n');
      expect(r.decoded.exit).toEqual({ exitCode: 0, signal: 0 });
    });

    it('copes with a command that never reads stdin', async () => {
      const r = await runSocket({ argv: ['sh', '-c', 'sleep 0.5; echo done'] }, (s) => {
        for (const f of encodeStdin(Buffer.alloc(4 << 20, 0x61))) s.write(f);
      });
      expect(r.decoded.stdout.toString()).toBe('done\n');
      expect(r.decoded.exit).toEqual({ exitCode: 0, signal: 0 });
    });

    it('passes 1 MiB through stdin to stdout intact', async () => {
      const data = Buffer.alloc(1 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 10)) & 0xff;
      const r = await runSocket({ argv: ['cat'] }, (s) => {
        for (const f of encodeStdin(data)) s.write(f);
        s.write(encodeFrame(FrameType.STDIN_EOF));
      });
      expect(r.decoded.stdout.length).toBe(data.length);
      expect(r.decoded.stdout.equals(data)).toBe(true);
    });
  });
});
