import { accessSync, constants, existsSync } from 'node:fs';
import { expect, it, describe } from 'vitest';
import { probeKvm } from '../../lib/vm/kvm';

describe('probeKvm', () => {
  it('agrees with the device node and the loaded modules', () => {
    const probe = probeKvm();
    expect(probe.device).toBe('/dev/kvm');
    expect(probe.modules.kvmIntel).toBe(existsSync('/sys/module/kvm_intel'));
    expect(probe.modules.kvmAmd).toBe(existsSync('/sys/module/kvm_amd'));
    expect(probe.modules.kvmPvm).toBe(existsSync('/sys/module/kvm_pvm'));
    expect(probe.hardware).toBe(probe.modules.kvmIntel || probe.modules.kvmAmd);
    let openable = true;
    try {
      accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    } catch {
      openable = false;
    }
    expect(probe.available).toBe(openable);
    if (probe.available) {
      expect(probe.apiVersion).toBe(12); // KVM_API_VERSION has been 12 since 2007
      expect(probe.maxVcpus).toBeGreaterThanOrEqual(1);
    } else {
      expect(probe.errorCode).toMatch(/^E[A-Z]+$/);
      expect(probe.reason).toContain('/dev/kvm');
      if (!existsSync('/dev/kvm')) expect(probe.errorCode).toBe('ENOENT');
    }
    console.info(`[kvm] ${JSON.stringify(probe)}`);
  });

  it('reports a path that is not a KVM device with its errno', () => {
    expect(probeKvm('/dev/null')).toMatchObject({ available: false, errorCode: 'ENOTTY' });
    expect(probeKvm('/nonexistent/kvm')).toMatchObject({ available: false, errorCode: 'ENOENT' });
  });
});
