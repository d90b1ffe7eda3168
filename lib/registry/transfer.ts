/**
 * Helpers shared by pull and push: a bounded worker pool, and the memory of
 * which repository holds which blob (for cross-repository mounts).
 * @module
 * @internal
 */
import type { Digest } from '../oci/digest';

/** Where blobs were last seen, per registry: digest → repositories. Bounded; lost at exit. */
const knownLocations = new Map<string, Map<Digest, Set<string>>>();
const MAX_KNOWN = 10_000;

/** Notes that `repository` on `registry` holds `digest` (after a pull or push), for later mounts. */
export function rememberBlobLocation(registry: string, repository: string, digest: Digest): void {
  let byDigest = knownLocations.get(registry);
  if (!byDigest) knownLocations.set(registry, (byDigest = new Map()));
  if (byDigest.size >= MAX_KNOWN) byDigest.clear();
  let repos = byDigest.get(digest);
  if (!repos) byDigest.set(digest, (repos = new Set()));
  repos.add(repository);
}

/** Repositories of `registry` known to hold `digest`. */
export function knownBlobLocations(registry: string, digest: Digest): string[] {
  return [...(knownLocations.get(registry)?.get(digest) ?? [])];
}

/** Runs `fn` over `items`, `limit` at a time; the first failure aborts the rest, and all are settled before it is thrown. */
export async function runPool<T>(items: readonly T[], limit: number, fn: (item: T, signal: AbortSignal) => Promise<void>): Promise<void> {
  const controller = new AbortController();
  let failure: { error: unknown } | undefined;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length && !controller.signal.aborted) {
      const item = items[next++]!;
      try {
        await fn(item, controller.signal);
      } catch (error) {
        if (!failure) {
          failure = { error };
          controller.abort(error);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
}
