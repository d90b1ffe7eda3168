/*
 * kvm/acpi.c: ACPI tables for a hardware-reduced machine, as a micro-VM needs
 * them: RSDP -> XSDT -> FADT (HW_REDUCED_ACPI, a sleep control register so the
 * guest can power off), MADT (every vCPU's LAPIC, the IOAPIC), DSDT (each
 * virtio-mmio device as LNRO0005 with its window and interrupt, and \_S5).
 * Kernels built without VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) find their
 * devices here; every kernel finds every vCPU in the MADT.
 * The tables live in the BIOS area (0xe0000..0xfffff, reserved in the e820 map),
 * where Linux also scans for the RSDP when the boot protocol does not say.
 */
#include <errno.h>
#include <string.h>

#include "kvm.h"

#define ACPI_BASE GUEST_ACPI_RSDP
#define ACPI_END 0x100000ULL

#define FADT_HW_REDUCED (1u << 20)
#define FADT_PWR_BUTTON (1u << 4)
#define FADT_SLP_BUTTON (1u << 5)
#define BOOT_ARCH_8042 0x0002
#define BOOT_ARCH_NO_VGA 0x0004
#define BOOT_ARCH_NO_CMOS_RTC 0x0020


static uint8_t sum8(const uint8_t *p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; i++) s += p[i];
  return s;
}

/* The 36-byte header every table but the RSDP starts with; the checksum is set last. */
static void header(uint8_t *t, const char sig[4], uint32_t len, uint8_t rev) {
  memcpy(t, sig, 4);
  le_put32(t + 4, len);
  t[8] = rev;
  memcpy(t + 10, "NACELL", 6);
  memcpy(t + 16, "NACELLEV", 8);
  le_put32(t + 24, 1);
  memcpy(t + 28, "NCLE", 4);
  le_put32(t + 32, 1);
}

static void finish(uint8_t *t, uint32_t len) {
  t[9] = 0;
  t[9] = (uint8_t)-sum8(t, len);
}

/* Generic Address Structure: a byte-wide port. */
static void gas_port(uint8_t *g, uint16_t port) {
  g[0] = 1; /* SystemIO */
  g[1] = 8; /* bit width */
  g[2] = 0;
  g[3] = 1; /* byte access */
  le_put64(g + 4, port);
}

/* ---- a little AML ------------------------------------------------------------ */

struct aml {
  uint8_t *buf;
  size_t len, cap;
  bool overflow;
};

static void emit(struct aml *a, const void *p, size_t n) {
  if (a->len + n > a->cap) {
    a->overflow = true;
    return;
  }
  memcpy(a->buf + a->len, p, n);
  a->len += n;
}
static void emit1(struct aml *a, uint8_t b) { emit(a, &b, 1); }

/*
 * A package: opcode(s), PkgLength, then body. The body is built after a gap
 * of the longest PkgLength (4 bytes) and moved down once its length is known.
 */
static size_t pkg_open(struct aml *a) {
  size_t at = a->len;
  uint8_t gap[4] = {0};
  emit(a, gap, 4);
  return at;
}

static void pkg_close(struct aml *a, size_t at) {
  if (a->overflow) return;
  size_t body = a->len - at - 4;
  uint8_t enc[4];
  size_t n;
  if (body + 1 < 0x40) {
    enc[0] = (uint8_t)(body + 1);
    n = 1;
  } else if (body + 2 < 0x1000) {
    size_t total = body + 2;
    enc[0] = (uint8_t)(0x40 | (total & 0xf));
    enc[1] = (uint8_t)(total >> 4);
    n = 2;
  } else {
    size_t total = body + 3;
    enc[0] = (uint8_t)(0x80 | (total & 0xf));
    enc[1] = (uint8_t)(total >> 4);
    enc[2] = (uint8_t)(total >> 12);
    n = 3;
  }
  memmove(a->buf + at + n, a->buf + at + 4, body);
  memcpy(a->buf + at, enc, n);
  a->len = at + n + body;
}

static void name_string(struct aml *a, const char *seg) { emit(a, seg, 4); }

static void name_byte(struct aml *a, const char *seg, uint8_t v) {
  emit1(a, 0x08); /* NameOp */
  name_string(a, seg);
  emit1(a, 0x0a); /* BytePrefix */
  emit1(a, v);
}

static void name_str(struct aml *a, const char *seg, const char *s) {
  emit1(a, 0x08);
  name_string(a, seg);
  emit1(a, 0x0d); /* StringPrefix */
  emit(a, s, strlen(s) + 1);
}

/* Device(Vnnn) { _HID LNRO0005, _UID n, _CRS { Memory32Fixed, Interrupt } } */
static void virtio_device(struct aml *a, int index, uint64_t base, uint32_t irq) {
  char dev[5];
  dev[0] = 'V';
  dev[1] = (char)('0' + (index / 100) % 10);
  dev[2] = (char)('0' + (index / 10) % 10);
  dev[3] = (char)('0' + index % 10);
  dev[4] = 0;
  emit1(a, 0x5b);
  emit1(a, 0x82); /* DeviceOp */
  size_t d = pkg_open(a);
  name_string(a, dev);
  name_str(a, "_HID", "LNRO0005");
  name_byte(a, "_UID", (uint8_t)index);
  emit1(a, 0x08);
  name_string(a, "_CRS");
  uint8_t res[23];
  res[0] = 0x86; /* Memory32Fixed */
  le_put16(res + 1, 9);
  res[3] = 1; /* read-write */
  le_put32(res + 4, (uint32_t)base);
  le_put32(res + 8, (uint32_t)GUEST_MMIO_STRIDE);
  res[12] = 0x89; /* Extended Interrupt */
  le_put16(res + 13, 6);
  res[15] = 0x03; /* consumer, edge, active high, exclusive */
  res[16] = 1;
  le_put32(res + 17, irq);
  res[21] = 0x79; /* End Tag */
  res[22] = 0;
  emit1(a, 0x11); /* BufferOp */
  size_t b = pkg_open(a);
  emit1(a, 0x0a);
  emit1(a, sizeof res);
  emit(a, res, sizeof res);
  pkg_close(a, b);
  pkg_close(a, d);
}

/* ---- the tables -------------------------------------------------------------------- */

int acpi_write(struct vm *vm, uint64_t *rsdp_out) {
  uint8_t *area = gpa_to_hva(&vm->mem, ACPI_BASE, ACPI_END - ACPI_BASE);
  if (!area) return -ENOSPC;
  memset(area, 0, ACPI_END - ACPI_BASE);
  uint64_t rsdp = ACPI_BASE, xsdt = ACPI_BASE + 0x40, fadt = ACPI_BASE + 0x100, madt = ACPI_BASE + 0x300,
           dsdt = ACPI_BASE + 0x1000;
  uint8_t *p;

  /* DSDT */
  p = area + (dsdt - ACPI_BASE);
  struct aml a = {.buf = p + 36, .cap = (size_t)(ACPI_END - dsdt - 36)};
  emit1(&a, 0x08); /* Name(\_S5_, Package() { 5, 0 }): what the guest writes to power off */
  name_string(&a, "_S5_");
  emit1(&a, 0x12); /* PackageOp */
  size_t pk = pkg_open(&a);
  emit1(&a, 2);
  emit1(&a, 0x0a);
  emit1(&a, 5);
  emit1(&a, 0x00);
  pkg_close(&a, pk);
  emit1(&a, 0x10); /* Scope(\_SB_) */
  size_t sb = pkg_open(&a);
  emit1(&a, '\\');
  name_string(&a, "_SB_");
  for (int i = 0; i < vm->nvirtio; i++)
    virtio_device(&a, i, GUEST_MMIO_BASE + (uint64_t)i * GUEST_MMIO_STRIDE, (uint32_t)(GUEST_MMIO_FIRST_IRQ + i));
  pkg_close(&a, sb);
  if (a.overflow) return -ENOSPC;
  uint32_t dsdt_len = (uint32_t)(36 + a.len);
  header(p, "DSDT", dsdt_len, 2);
  finish(p, dsdt_len);

  /* MADT: LAPIC per vCPU, the IOAPIC */
  p = area + (madt - ACPI_BASE);
  uint32_t madt_len = 44 + 8 * (uint32_t)vm->ncpus + 12;
  if (madt + madt_len > dsdt) return -ENOSPC;
  header(p, "APIC", madt_len, 4);
  le_put32(p + 36, (uint32_t)LAPIC_BASE);
  le_put32(p + 40, 1); /* PCAT_COMPAT: there are 8259s */
  uint8_t *e = p + 44;
  for (int i = 0; i < vm->ncpus; i++, e += 8) {
    e[0] = 0;
    e[1] = 8;
    e[2] = (uint8_t)i; /* processor UID */
    e[3] = (uint8_t)i; /* APIC id */
    le_put32(e + 4, 1);   /* enabled */
  }
  e[0] = 1;
  e[1] = 12;
  e[2] = (uint8_t)vm->ncpus; /* IOAPIC id, after the LAPICs' */
  le_put32(e + 4, (uint32_t)IOAPIC_BASE);
  le_put32(e + 8, 0);
  finish(p, madt_len);

  /* FADT, revision 6: hardware-reduced */
  p = area + (fadt - ACPI_BASE);
  const uint32_t fadt_len = 276;
  header(p, "FACP", fadt_len, 6);
  le_put32(p + 40, (uint32_t)dsdt);
  le_put16(p + 109, BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC);
  le_put32(p + 112, FADT_HW_REDUCED | FADT_PWR_BUTTON | FADT_SLP_BUTTON);
  p[131] = 0; /* minor version */
  le_put64(p + 140, dsdt);
  gas_port(p + 244, ACPI_SLEEP_CONTROL_PORT);
  gas_port(p + 256, ACPI_SLEEP_STATUS_PORT);
  memcpy(p + 268, "NACELLE", 7); /* hypervisor vendor identity */
  finish(p, fadt_len);

  /* XSDT */
  p = area + (xsdt - ACPI_BASE);
  uint32_t xsdt_len = 36 + 8 * 2;
  header(p, "XSDT", xsdt_len, 1);
  le_put64(p + 36, fadt);
  le_put64(p + 44, madt);
  finish(p, xsdt_len);

  /* RSDP (ACPI 2.0+) */
  p = area;
  memcpy(p, "RSD PTR ", 8);
  memcpy(p + 9, "NACELL", 6);
  p[15] = 2;
  le_put32(p + 20, 36);
  le_put64(p + 24, xsdt);
  p[8] = (uint8_t)-sum8(p, 20);
  p[32] = (uint8_t)-sum8(p, 36);
  *rsdp_out = rsdp;
  return 0;
}
