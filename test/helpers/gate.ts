/**
 * Gates for tests that need privileges or hardware. Under CI (.ci/run sets
 * NACELLE_REQUIRE_ROOT=1 / NACELLE_REQUIRE_KVM=1) a missing requirement fails
 * the suite; elsewhere the suite is skipped with the reason printed.
 */
import { describe, it } from 'vitest';
import { probeKvm } from '../../lib/vm/kvm';

type SuiteFn = () => void;

function gated(name: string, reason: string | null, requiredBy: string, fn: SuiteFn): void {
  if (reason === null) {
    describe(name, fn);
    return;
  }
  if (process.env[requiredBy] === '1') {
    describe(name, () => {
      it(`requires: ${reason}`, () => {
        throw new Error(`${name}: ${reason}, and ${requiredBy}=1 says this host must have it`);
      });
    });
    return;
  }
  console.warn(`[skip] ${name}: ${reason} (set ${requiredBy}=1 to make this a failure)`);
  describe.skip(name, fn);
}

/** Why root tests cannot run here, or null when they can. */
export function missingRoot(): string | null {
  return process.geteuid?.() === 0 ? null : 'needs root (euid 0)';
}

/** Why KVM tests cannot run here, or null when they can. */
export function missingKvm(): string | null {
  const probe = probeKvm();
  if (!probe.available) return `needs a usable /dev/kvm (${probe.reason ?? 'unavailable'})`;
  return null;
}

/** A describe() that runs only as root; fails under NACELLE_REQUIRE_ROOT=1, skips loudly otherwise. */
export function describeRoot(name: string, fn: SuiteFn): void {
  gated(name, missingRoot(), 'NACELLE_REQUIRE_ROOT', fn);
}

/** A describe() that runs only with /dev/kvm; fails under NACELLE_REQUIRE_KVM=1, skips loudly otherwise. */
export function describeKvm(name: string, fn: SuiteFn): void {
  gated(name, missingKvm(), 'NACELLE_REQUIRE_KVM', fn);
}
