/**
 * What this host offers for hardware virtualization.
 * @module
 */
import { existsSync } from 'node:fs';
import { SystemCallError, fromNativeError } from '../errors';
import { native } from '../native';

/** Which KVM modules the host kernel has loaded (from /sys/module). */
export interface KvmModules {
  /** The KVM core. */
  kvm: boolean;
  /** Intel VT-x. */
  kvmIntel: boolean;
  /** AMD-V. */
  kvmAmd: boolean;
  /** PVM: KVM without hardware virtualization, for nested clouds. */
  kvmPvm: boolean;
}

/** The result of {@link probeKvm}. */
export interface KvmProbe {
  /** The device that was probed, usually `/dev/kvm`. */
  device: string;
  /** Whether the device opened and answered KVM_GET_API_VERSION. */
  available: boolean;
  /** KVM API version (12 on every current kernel), when available. */
  apiVersion?: number;
  /** KVM_CAP_MAX_VCPUS, when available. */
  maxVcpus?: number;
  /** KVM_CAP_NR_VCPUS (the recommended maximum), when available. */
  recommendedVcpus?: number;
  /** Whether the in-kernel irqchip is offered. */
  irqchip?: boolean;
  /** Why the device is not usable (errno name and message), when it is not. */
  reason?: string;
  /** The errno name of the failure, e.g. `ENOENT` when there is no /dev/kvm. */
  errorCode?: string;
  /** Which KVM backend modules the host kernel has loaded. */
  modules: KvmModules;
  /**
   * True when guests run on hardware virtualization (kvm_intel or kvm_amd).
   * False under PVM, where only PVM-patched guest kernels run natively and
   * everything else goes through KVM's instruction emulator.
   */
  hardware: boolean;
}

/**
 * Opens the KVM device and reports what it offers, without creating a VM.
 * Never throws for a missing or unusable device: `available` is false and
 * `reason` says why.
 */
export function probeKvm(device = '/dev/kvm'): KvmProbe {
  const modules = {
    kvm: existsSync('/sys/module/kvm'),
    kvmIntel: existsSync('/sys/module/kvm_intel'),
    kvmAmd: existsSync('/sys/module/kvm_amd'),
    kvmPvm: existsSync('/sys/module/kvm_pvm'),
  };
  const hardware = modules.kvmIntel || modules.kvmAmd;
  try {
    const r = native().kvmProbe(device);
    return {
      device,
      available: true,
      apiVersion: r.apiVersion,
      maxVcpus: r.maxVcpus,
      recommendedVcpus: r.recommendedVcpus,
      irqchip: r.irqchip,
      modules,
      hardware,
    };
  } catch (err) {
    const e = fromNativeError(err);
    if (!(e instanceof SystemCallError)) throw e;
    return { device, available: false, reason: e.message, errorCode: e.code, modules, hardware };
  }
}
