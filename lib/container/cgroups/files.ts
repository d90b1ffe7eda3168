/**
 * cgroupfs file access: reads and writes with errors that name the file and
 * the value, so `err.code` is the errno the kernel returned.
 * @module
 * @internal
 */
import { readFileSync } from 'node:fs';
import { access, open, readFile } from 'node:fs/promises';
import { SystemCallError } from '../../errors';

interface NodeErrnoError extends Error {
  code: string;
  errno: number;
  syscall?: string;
}

/** Whether `err` is a Node fs error with an errno code. */
export function isErrno(err: unknown, ...codes: string[]): err is NodeErrnoError {
  if (!(err instanceof Error)) return false;
  const code = (err as Partial<NodeErrnoError>).code;
  return typeof code === 'string' && (codes.length === 0 || codes.includes(code));
}

/** The strerror text Node puts after the code: `EINVAL: invalid argument, write` → `invalid argument`. */
function describe(err: NodeErrnoError): string {
  const m = /^[A-Z0-9_]+: ([^,]+)/.exec(err.message);
  return m?.[1] ?? err.message;
}

/** Re-throws a Node fs error as a {@link SystemCallError} whose message says what was being done. */
export function wrapFsError(err: unknown, action: string, path: string): unknown {
  if (!isErrno(err) || typeof err.errno !== 'number') return err;
  return new SystemCallError(`${err.code}: ${describe(err)}, ${action} ${path}`, {
    code: err.code,
    errno: err.errno,
    syscall: err.syscall ?? action.split(' ')[0] ?? 'unknown',
    path,
    cause: err,
  });
}

/**
 * Writes `value` to a cgroup file in one write(2), without O_CREAT or
 * O_TRUNC (cgroupfs files exist or the controller is missing).
 */
export async function writeCgroupFile(path: string, value: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'r+');
    await handle.write(value);
  } catch (err) {
    throw wrapFsError(err, `write '${value}' to`, path);
  } finally {
    await handle?.close();
  }
}

/** Reads a cgroup file, trimmed. */
export async function readCgroupFile(path: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (err) {
    throw wrapFsError(err, 'read', path);
  }
}

/** Reads a cgroup file, or returns null when it does not exist (the controller or feature is missing). */
export async function readOptional(path: string): Promise<string | null> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw wrapFsError(err, 'read', path);
  }
}

/**
 * {@link readOptional}, synchronously: for the one small file read on a
 * container's exit path, where a thread-pool round trip costs more than the read.
 */
export function readOptionalSync(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw wrapFsError(err, 'read', path);
  }
}

/** Whether a cgroup file exists (for write-only files such as cgroup.kill, which cannot be read). */
export async function fileExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw wrapFsError(err, 'access', path);
  }
}

/** A number from a cgroup file, `null` for `max` or a missing file. */
export function parseNumber(text: string | null): number | null {
  if (text === null || text === '' || text === 'max') return null;
  const n = Number(text);
  return Number.isFinite(n) ? n : null;
}

/** `key value` lines (memory.events, cpu.stat, cpuacct.stat, memory.oom_control) as a map. */
export function parseKeyed(text: string | null): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of (text ?? '').split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined && /^-?\d+$/.test(value)) out.set(key, Number(value));
  }
  return out;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
