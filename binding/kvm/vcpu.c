/*
 * kvm/vcpu.c: what each vCPU looks like before it runs: CPUID from
 * KVM_GET_SUPPORTED_CPUID with our adjustments, boot MSRs, the LAPIC's
 * LINT0/LINT1 wiring, and the FPU's reset state.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm.h"

#define CPUID_MAX_ENTRIES 256

/* MSRs Linux expects a sane value in at boot (as Firecracker and kvmtool set them). */
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_IA32_TSC 0x10
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MISC_ENABLE_FAST_STRING 1ULL

#define APIC_LVT0 0x350
#define APIC_LVT1 0x360
#define APIC_MODE_EXTINT 0x7
#define APIC_MODE_NMI 0x4

static void adjust_cpuid(struct vm *vm, int index, struct kvm_cpuid2 *cpuid) {
  for (uint32_t i = 0; i < cpuid->nent; i++) {
    struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
    switch (e->function) {
      case 1:
        /* initial APIC id, logical processor count, HTT when more than one vCPU */
        e->ebx = (e->ebx & 0x0000ffffu) | ((uint32_t)index << 24) | ((uint32_t)(vm->ncpus & 0xff) << 16);
        if (vm->ncpus > 1) e->edx |= 1u << 28;
        else e->edx &= ~(1u << 28);
        e->ecx |= 1u << 31; /* hypervisor present */
        break;
      case 0xb:
      case 0x1f:
        /* x2APIC topology: one thread per core, every vCPU its own core */
        e->edx = (uint32_t)index;
        if (e->index == 0) {
          e->eax = 0;
          e->ebx = 1;
          e->ecx = (e->ecx & 0xffff00ffu) | (1u << 8);
        } else if (e->index == 1) {
          uint32_t shift = 0;
          while ((1u << shift) < (uint32_t)vm->ncpus) shift++;
          e->eax = shift;
          e->ebx = (uint32_t)vm->ncpus;
          e->ecx = (e->ecx & 0xffff00ffu) | (2u << 8);
        }
        break;
      case 4:
        /* cores per package - 1 in bits 31..26 */
        e->eax = (e->eax & 0x03ffffffu) | ((uint32_t)((vm->ncpus - 1) & 0x3f) << 26);
        break;
      case 6:
        e->ecx &= ~(1u << 3); /* no energy-performance bias MSR */
        break;
      default:
        break;
    }
  }
}

int vcpu_setup_cpuid_msrs(struct vm *vm, struct vcpu *c) {
  size_t sz = sizeof(struct kvm_cpuid2) + CPUID_MAX_ENTRIES * sizeof(struct kvm_cpuid_entry2);
  struct kvm_cpuid2 *cpuid = calloc(1, sz);
  if (!cpuid) return -ENOMEM;
  cpuid->nent = CPUID_MAX_ENTRIES;
  if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
    int e = errno;
    free(cpuid);
    return -e;
  }
  adjust_cpuid(vm, c->index, cpuid);
  if (ioctl(c->fd, KVM_SET_CPUID2, cpuid) < 0) {
    int e = errno;
    free(cpuid);
    return -e;
  }
  free(cpuid);

  struct {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e[10];
  } msrs;
  memset(&msrs, 0, sizeof msrs);
  const uint32_t idx[] = {MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_STAR, MSR_CSTAR,
                          MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK, MSR_LSTAR, MSR_IA32_TSC, MSR_IA32_MISC_ENABLE};
  for (int i = 0; i < 10; i++) {
    msrs.e[i].index = idx[i];
    msrs.e[i].data = idx[i] == MSR_IA32_MISC_ENABLE ? MISC_ENABLE_FAST_STRING : 0;
  }
  msrs.hdr.nmsrs = 10;
  /* KVM_SET_MSRS returns how many it set; an MSR the host does not know is skipped. */
  if (ioctl(c->fd, KVM_SET_MSRS, &msrs) < 0) return -errno;

  /* LINT0 = ExtINT (the PIC reaches the BSP), LINT1 = NMI, as a PC has them. */
  struct kvm_lapic_state lapic;
  if (ioctl(c->fd, KVM_GET_LAPIC, &lapic) < 0) return -errno;
  uint32_t lvt0, lvt1;
  memcpy(&lvt0, lapic.regs + APIC_LVT0, 4);
  memcpy(&lvt1, lapic.regs + APIC_LVT1, 4);
  lvt0 = (lvt0 & ~0x700u) | (APIC_MODE_EXTINT << 8);
  lvt1 = (lvt1 & ~0x700u) | (APIC_MODE_NMI << 8);
  memcpy(lapic.regs + APIC_LVT0, &lvt0, 4);
  memcpy(lapic.regs + APIC_LVT1, &lvt1, 4);
  if (ioctl(c->fd, KVM_SET_LAPIC, &lapic) < 0) return -errno;

  struct kvm_fpu fpu;
  memset(&fpu, 0, sizeof fpu);
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  if (ioctl(c->fd, KVM_SET_FPU, &fpu) < 0) return -errno;
  return 0;
}
