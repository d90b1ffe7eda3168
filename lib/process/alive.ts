/**
 * Whether a pid names a live process (signal 0: EPERM still means it exists).
 * A pid can be recycled: where that matters, compare start times too
 * (lib/container/state.ts).
 * @module
 * @internal
 */

/** Whether a process with this pid exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
