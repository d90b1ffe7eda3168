/**
 * Runs in every test file's worker: once the file's tests are done, removes
 * the `<own>/nacelle` cgroup parents if they are empty. A process keeps them
 * while it lives (for the next container) and removes them in an exit hook,
 * but vitest ends its workers with a signal, so the hook never runs there.
 */
import { afterAll } from 'vitest';
import { removeEmptyCgroupParents } from '../../lib/container/cgroups';

afterAll(async () => {
  if (process.geteuid?.() === 0) await removeEmptyCgroupParents();
});
