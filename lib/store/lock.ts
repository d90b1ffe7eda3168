/**
 * Locks that hold across processes (flock(2) on a lock file) and within this
 * one (a promise queue, since flock locks belong to open files, not threads).
 * @module
 * @internal
 */
import { open, type FileHandle } from 'node:fs/promises';
import { fromNativeError } from '../errors';
import { native } from '../native';

/** Shared (many holders) or exclusive (one holder). */
export type LockMode = 'shared' | 'exclusive';

/**
 * A readers/writer lock on one file. In-process callers queue on a promise
 * chain; the process as a whole holds flock(2) on the file while any holder
 * is inside, so another process sees the same semantics.
 */
export class FileLock {
  /** The lock file. */
  readonly path: string;
  #queue: Promise<void> = Promise.resolve();
  #shared = 0;
  #sharedDone: Promise<void> | undefined;
  #releaseShared: (() => void) | undefined;
  #handle: FileHandle | undefined;

  /** @param path - the lock file; created if missing, never removed */
  constructor(path: string) {
    this.path = path;
  }

  async #flock(mode: LockMode): Promise<void> {
    this.#handle ??= await open(this.path, 'a');
    const c = native().constants;
    try {
      await native().flock(this.#handle.fd, mode === 'shared' ? c.LOCK_SH : c.LOCK_EX);
    } catch (err) {
      throw fromNativeError(err);
    }
  }

  async #unflock(): Promise<void> {
    const h = this.#handle;
    this.#handle = undefined;
    if (h) await h.close(); // closing drops the flock
  }

  /** Runs `fn` holding the lock in `mode`. */
  async with<T>(mode: LockMode, fn: () => Promise<T>): Promise<T> {
    if (mode === 'shared') return this.#withShared(fn);
    let release!: () => void;
    const previous = this.#queue;
    this.#queue = new Promise<void>((r) => (release = r));
    await previous;
    try {
      await this.#flock('exclusive');
      try {
        return await fn();
      } finally {
        await this.#unflock();
      }
    } finally {
      release();
    }
  }

  async #withShared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#shared === 0) {
      // The first shared holder takes a turn in the queue; later ones join it
      // until the last leaves.
      let release!: () => void;
      const previous = this.#queue;
      this.#queue = new Promise<void>((r) => (release = r));
      this.#releaseShared = release;
      this.#sharedDone = previous.then(() => this.#flock('shared'));
    }
    this.#shared++;
    try {
      await this.#sharedDone;
      return await fn();
    } finally {
      if (--this.#shared === 0) {
        await this.#unflock();
        this.#releaseShared?.();
        this.#releaseShared = undefined;
        this.#sharedDone = undefined;
      }
    }
  }
}
