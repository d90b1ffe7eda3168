/**
 * Platforms (`linux/amd64`, `linux/arm/v7`): parsing what callers write and
 * picking the matching entry of an image index or Docker manifest list.
 * @module
 */
import { InvalidArgumentError } from '../errors';
import { hostArchitecture } from '../image/images';
import type { Descriptor, Platform } from '../oci/types';

/** A platform as callers give it: `os/arch[/variant]` or an object. */
export type PlatformInput = string | Pick<Platform, 'os' | 'architecture' | 'variant'>;

/** The platform images are pulled for by default: linux on the host's architecture. */
export function hostPlatform(): Platform {
  return { os: 'linux', architecture: hostArchitecture() };
}

/**
 * Parses `linux/arm64`, `linux/arm/v7` or `arm64` (os defaults to linux).
 * @throws {@link InvalidArgumentError} for an empty part or more than three parts
 */
export function parsePlatform(input: PlatformInput): Platform {
  if (typeof input !== 'string') {
    if (!input.os || !input.architecture) throw new InvalidArgumentError('platform needs os and architecture');
    return { os: input.os, architecture: input.architecture, ...(input.variant ? { variant: input.variant } : {}) };
  }
  const parts = input.trim().toLowerCase().split('/');
  if (parts.length === 1) parts.unshift('linux');
  if (parts.length > 3 || parts.some((p) => p === '')) {
    throw new InvalidArgumentError(`invalid platform '${input}': expected os/architecture[/variant], e.g. linux/arm64`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return { os, architecture, ...(variant ? { variant } : {}) };
}

/** `os/arch[/variant]`. */
export function formatPlatform(p: Pick<Platform, 'os' | 'architecture' | 'variant'>): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** The variant an architecture has when an index names none (arm64 is v8). */
function defaultVariant(architecture: string): string | undefined {
  return architecture === 'arm64' ? 'v8' : undefined;
}

/** Whether an index entry's platform satisfies the wanted one (a variant is checked only when wanted). */
export function platformMatches(entry: Platform | undefined, wanted: Platform): boolean {
  if (!entry) return false;
  if (entry.os !== wanted.os || entry.architecture !== wanted.architecture) return false;
  if (!wanted.variant) return true;
  return (entry.variant ?? defaultVariant(entry.architecture)) === wanted.variant;
}

/**
 * The index entry for `wanted`: the first matching one, preferring an exact
 * variant match when none was asked for but several match.
 */
export function selectPlatform(manifests: readonly Descriptor[], wanted: Platform): Descriptor | undefined {
  const matching = manifests.filter((m) => platformMatches(m.platform, wanted));
  if (!wanted.variant) {
    const plain = matching.find((m) => (m.platform?.variant ?? defaultVariant(m.platform?.architecture ?? '')) === defaultVariant(wanted.architecture));
    if (plain) return plain;
  }
  return matching[0];
}
