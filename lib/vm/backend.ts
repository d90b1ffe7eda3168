/**
 * Which program runs a VM: the built-in KVM monitor or qemu, and, for qemu,
 * hardware KVM or TCG emulation. `'auto'` picks and says why.
 * @module
 */
import { accessSync, constants, existsSync } from 'node:fs';
import { arch } from 'node:os';
import { delimiter, isAbsolute, join } from 'node:path';
import { NotFoundError, UnsupportedError } from '../errors';
import { native } from '../native';
import { type KvmProbe, probeKvm } from './kvm';

/** A backend a VM can run on. */
export type VmBackendName = 'kvm' | 'qemu';

/** What callers may ask for: a backend, or `'auto'`. */
export type VmBackendChoice = VmBackendName | 'auto';

/** How qemu executes guest code: hardware KVM, or TCG (its instruction translator). */
export type QemuAccel = 'kvm' | 'tcg';

/** The result of {@link chooseBackend}. */
export interface BackendSelection {
  /** The backend that will run the VM. */
  backend: VmBackendName;
  /** For qemu: the accelerator it will use. */
  accel?: QemuAccel;
  /** Why this backend (and accelerator) was chosen, in words. */
  reason: string;
  /** A short label for tables and logs: `kvm monitor`, `qemu+kvm`, `qemu+tcg`. */
  label: string;
}

/**
 * Whether the built-in KVM monitor (binding/kvm) is part of the loaded addon,
 * and why not.
 */
export function monitorAvailability(): {
  /** Whether `backend: 'kvm'` can run workloads. */
  available: boolean;
  /** Why not, when it cannot. */
  reason?: string;
} {
  try {
    if (typeof native().kvmCreate === 'function') return { available: true };
    return { available: false, reason: 'the loaded nacelle addon was built without the KVM monitor' };
  } catch (err) {
    return { available: false, reason: `the nacelle addon does not load (${(err as Error).message})` };
  }
}

/** Why hardware KVM cannot be used here, or null when it can. */
export function hardwareKvmMissing(probe: KvmProbe): string | null {
  if (!probe.available) {
    if (probe.errorCode === 'ENOENT') return `no hardware KVM: ${probe.device} missing`;
    return `no hardware KVM: ${probe.device} not usable (${probe.reason ?? probe.errorCode ?? 'unknown'})`;
  }
  if (!probe.hardware) {
    return probe.modules.kvmPvm
      ? `no hardware KVM: ${probe.device} is PVM (kvm_pvm), not VT-x/AMD-V`
      : `no hardware KVM: neither kvm_intel nor kvm_amd is loaded`;
  }
  return null;
}

/**
 * Chooses the backend. `'kvm'` needs the built-in monitor and a usable
 * /dev/kvm (throws {@link UnsupportedError} otherwise); `'qemu'` uses KVM when
 * /dev/kvm is usable and TCG when not; `'auto'` picks the monitor only where
 * the host has hardware KVM and the monitor exists, qemu otherwise.
 */
export function chooseBackend(choice: VmBackendChoice = 'auto', probe: KvmProbe = probeKvm()): BackendSelection {
  const monitor = monitorAvailability();
  const noHardware = hardwareKvmMissing(probe);
  // qemu uses KVM only on hardware virtualization: under PVM an ordinary guest
  // kernel dies on its first instruction KVM's emulator lacks, so TCG it is.
  const qemuAccel = (): { accel: QemuAccel; why: string } =>
    noHardware === null
      ? { accel: 'kvm', why: `${probe.device} has hardware virtualization, so qemu runs guests on KVM` }
      : { accel: 'tcg', why: `${noHardware}, so qemu emulates the CPU with TCG` };
  switch (choice) {
    case 'kvm': {
      if (!monitor.available) {
        throw new UnsupportedError(
          `backend 'kvm' (the built-in monitor) is not available: ${monitor.reason}${noHardware ? `, and ${noHardware}` : ''}; use backend 'qemu' or 'auto'`,
        );
      }
      if (!probe.available) throw new UnsupportedError(`backend 'kvm' needs a usable ${probe.device}: ${probe.reason ?? 'unavailable'}`);
      return { backend: 'kvm', reason: 'asked for the built-in KVM monitor', label: 'kvm monitor' };
    }
    case 'qemu': {
      const { accel, why } = qemuAccel();
      return { backend: 'qemu', accel, reason: `asked for qemu; ${why}`, label: `qemu+${accel}` };
    }
    case 'auto': {
      if (noHardware === null && monitor.available) {
        return { backend: 'kvm', reason: 'hardware KVM is present and the built-in monitor is available', label: 'kvm monitor' };
      }
      const { accel, why } = qemuAccel();
      // qemuAccel's why already names the missing hardware; say it once
      const reason = noHardware !== null ? `auto: ${why}` : `auto: hardware KVM is present but ${monitor.reason ?? 'the monitor is unavailable'}; ${why}`;
      return { backend: 'qemu', accel, reason, label: `qemu+${accel}` };
    }
    default:
      throw new UnsupportedError(`unknown VM backend '${String(choice)}' (kvm, qemu or auto)`);
  }
}

/** The qemu system emulator for this host's architecture. */
export function qemuBinaryName(): string {
  switch (arch()) {
    case 'x64':
      return 'qemu-system-x86_64';
    default:
      throw new UnsupportedError(`the qemu backend supports x86-64 hosts only, not ${arch()}`);
  }
}

/**
 * Finds the qemu binary: `$NACELLE_QEMU` when set, else `qemu-system-x86_64`
 * on `$PATH` (and /usr/bin, /usr/local/bin).
 * @throws NotFoundError saying how to install it when there is none
 */
export function findQemu(): string {
  const name = qemuBinaryName();
  const fromEnv = process.env.NACELLE_QEMU;
  const candidates: string[] = [];
  if (fromEnv) {
    if (!isAbsolute(fromEnv)) throw new NotFoundError(`NACELLE_QEMU must be an absolute path, got '${fromEnv}'`);
    candidates.push(fromEnv);
  } else {
    const dirs = [...(process.env.PATH ?? '').split(delimiter).filter((d) => isAbsolute(d)), '/usr/bin', '/usr/local/bin'];
    for (const d of new Set(dirs)) candidates.push(join(d, name));
  }
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  const where = fromEnv ? `NACELLE_QEMU=${fromEnv} is not an executable file` : `${name} is not on PATH`;
  throw new NotFoundError(
    `the qemu backend needs ${name}, but ${where}${existsSync('/etc/debian_version') ? ' (Debian: apt-get install qemu-system-x86)' : ''}`,
    { code: 'ERR_NO_QEMU' },
  );
}
