/**
 * The build cache: step key → the image the step produced. A key is the sha256 of the parent
 * image's digest, the normalized instruction (with the values of the build arguments it
 * sees) and, for COPY/ADD, the content hash of its sources. Entries are small files under
 * `<runtime root>/build-cache`, named by the key; the images themselves are ordinary
 * (untagged) images in the store, so an entry whose image was removed is simply a miss.
 * @module
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, isDigest } from '../oci/digest';
import { writeFileAtomic } from '../store/atomic';

/** What a step's cache key is made of. */
export interface StepKeyParts {
  /** The image the step starts from (manifest digest), or `scratch` with the platform. */
  parent: string;
  /** The instruction, normalized: keyword, flags and arguments with variables expanded. */
  instruction: string;
  /** Build arguments visible to a RUN step (`NAME=value`, sorted). */
  args?: readonly string[];
  /** For COPY/ADD: the content hash of the selected sources. */
  contentHash?: string;
}

/** The cache key of a step: a sha256 hex string. */
export function stepKey(parts: StepKeyParts): string {
  const doc = JSON.stringify([1, parts.parent, parts.instruction, parts.args ?? [], parts.contentHash ?? '']);
  return createHash('sha256').update(doc).digest('hex');
}

/** Step key → image digest, on disk. */
export class BuildCache {
  /** The directory holding one file per entry. */
  readonly dir: string;

  /** @param dir - where the entries live (created when first written) */
  constructor(dir: string) {
    this.dir = dir;
  }

  /** The image digest recorded for `key`, if any. */
  async get(key: string): Promise<Digest | undefined> {
    try {
      const text = (await readFile(join(this.dir, key), 'utf8')).trim();
      return isDigest(text) ? text : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Records that the step with `key` produced `image`. */
  async set(key: string, image: Digest): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(join(this.dir, key), `${image}\n`, 0o644, false);
  }
}
