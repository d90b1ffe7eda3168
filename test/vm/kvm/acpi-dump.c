/*
 * Writes the ACPI tables binding/kvm/acpi.c makes for a VM with NCPUS vCPUs and
 * NVIRTIO virtio devices into DIR as rsdp.dat, xsdt.dat, facp.dat, apic.dat and
 * dsdt.dat, for acpi.test.ts to check them with ACPICA's iasl.
 *   acpi-dump DIR NCPUS NVIRTIO
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvm.h"

static int dump(const char *dir, const char *name, const uint8_t *p, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, len, f) != len || fclose(f) != 0) {
    perror(path);
    return 1;
  }
  return 0;
}

static uint32_t len32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p + 4, 4);
  return v;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  static struct vm vm;
  vm.mem.size = 2 << 20;
  vm.mem.host = calloc(1, vm.mem.size);
  vm.ncpus = atoi(argv[2]);
  vm.nvirtio = atoi(argv[3]);
  uint64_t rsdp;
  if (!vm.mem.host || acpi_write(&vm, &rsdp) != 0) return 1;
  const uint8_t *r = vm.mem.host + rsdp;
  uint64_t xsdt, fadt, madt, dsdt;
  memcpy(&xsdt, r + 24, 8);
  const uint8_t *x = vm.mem.host + xsdt;
  memcpy(&fadt, x + 36, 8);
  memcpy(&madt, x + 44, 8);
  memcpy(&dsdt, vm.mem.host + fadt + 140, 8);
  int bad = dump(argv[1], "rsdp.dat", r, 36);
  bad |= dump(argv[1], "xsdt.dat", x, len32(x));
  bad |= dump(argv[1], "facp.dat", vm.mem.host + fadt, len32(vm.mem.host + fadt));
  bad |= dump(argv[1], "apic.dat", vm.mem.host + madt, len32(vm.mem.host + madt));
  bad |= dump(argv[1], "dsdt.dat", vm.mem.host + dsdt, len32(vm.mem.host + dsdt));
  printf("rsdp 0x%llx xsdt 0x%llx facp 0x%llx apic 0x%llx dsdt 0x%llx\n", (unsigned long long)rsdp,
         (unsigned long long)xsdt, (unsigned long long)fadt, (unsigned long long)madt, (unsigned long long)dsdt);
  return bad;
}
