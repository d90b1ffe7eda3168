/*
 * kvm/boot.c: putting a kernel in guest memory and the BSP at its entry.
 *   - bzImage: the x86 boot protocol (>= 2.12, 64-bit entry at +0x200) with a
 *     boot_params zero page, command line, initrd and e820 map;
 *   - ELF vmlinux with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected
 *     mode entry with an hvm_start_info;
 *   - ELF vmlinux without one: the 64-bit boot protocol entry at e_entry.
 * Plus identity page tables, a GDT and an MP table so an SMP guest finds every vCPU.
 * Every offset and length read from the kernel file is checked against the file
 * and against guest RAM before anything is written.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvm.h"

/* boot_params offsets (arch/x86/include/uapi/asm/bootparam.h) */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR 0x1f1
#define BP_HDR_END 0x290
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
/* setup header fields, as offsets into boot_params and the bzImage alike */
#define HDR_SETUP_SECTS 0x1f1
#define HDR_BOOT_FLAG 0x1fe
#define HDR_JUMP 0x200
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define XLF_KERNEL_64 0x1

#define E820_RAM 1
#define E820_RESERVED 2

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578u


static int pread_full(int fd, void *buf, size_t len, off_t off) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = pread(fd, p, len, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -EIO; /* shorter than its headers say */
    p += n;
    len -= (size_t)n;
    off += n;
  }
  return 0;
}

/* ---- page tables, GDT, registers ------------------------------------------------- */

static void write_gdt_and_page_tables(struct vm *vm) {
  uint64_t *gdt = gpa_to_hva(&vm->mem, GUEST_GDT, 8 * 4);
  gdt[0] = 0;
  gdt[1] = 0x00cf9b000000ffffULL; /* 0x08: 32-bit code, flat (PVH entry) */
  gdt[2] = 0x00af9b000000ffffULL; /* 0x10: 64-bit code */
  gdt[3] = 0x00cf93000000ffffULL; /* 0x18: data, flat */
  uint64_t *pml4 = gpa_to_hva(&vm->mem, GUEST_PML4, 4096);
  uint64_t *pdpt = gpa_to_hva(&vm->mem, GUEST_PML4 + 0x1000, 4096);
  memset(pml4, 0, 4096);
  memset(pdpt, 0, 4096);
  pml4[0] = (GUEST_PML4 + 0x1000) | 0x3;
  for (uint64_t g = 0; g < 4; g++) {
    uint64_t pd_gpa = GUEST_PML4 + 0x2000 + g * 0x1000;
    uint64_t *pd = gpa_to_hva(&vm->mem, pd_gpa, 4096);
    pdpt[g] = pd_gpa | 0x3;
    for (uint64_t i = 0; i < 512; i++) pd[i] = ((g << 30) | (i << 21)) | 0x83; /* present, rw, 2 MiB */
  }
}

static struct kvm_segment seg(uint16_t sel, uint8_t type, bool code64, bool db) {
  struct kvm_segment s;
  memset(&s, 0, sizeof s);
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = sel;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = db;
  s.s = 1;
  s.l = code64;
  s.g = 1;
  return s;
}

static int set_bsp_regs(struct vm *vm, bool long_mode, uint64_t rip, uint64_t rsi, uint64_t rbx) {
  struct vcpu *c = &vm->cpus[0];
  struct kvm_sregs s;
  if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0) return -errno;
  s.gdt.base = GUEST_GDT;
  s.gdt.limit = 8 * 4 - 1;
  s.idt.base = 0;
  s.idt.limit = 0;
  if (long_mode) {
    s.cs = seg(0x10, 0xb, true, false);
    struct kvm_segment d = seg(0x18, 0x3, false, true);
    s.ds = s.es = s.fs = s.gs = s.ss = d;
    s.cr3 = GUEST_PML4;
    s.cr4 = 0x20;                           /* PAE */
    s.cr0 = 0x80000000 | 0x20 | 0x10 | 0x1; /* PG | NE | ET | PE */
    s.efer = 0x500;                         /* LME | LMA */
  } else {
    s.cs = seg(0x08, 0xb, false, true);
    struct kvm_segment d = seg(0x18, 0x3, false, true);
    s.ds = s.es = s.fs = s.gs = s.ss = d;
    s.cr0 = 0x10 | 0x1; /* ET | PE, paging off */
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
  }
  if (ioctl(c->fd, KVM_SET_SREGS, &s) < 0) return -errno;
  struct kvm_regs r;
  memset(&r, 0, sizeof r);
  r.rflags = 0x2;
  r.rip = rip;
  r.rsi = rsi;
  r.rbx = rbx;
  if (ioctl(c->fd, KVM_SET_REGS, &r) < 0) return -errno;
  return 0;
}

/* ---- e820 / memory map ------------------------------------------------------------ */

struct e820 {
  uint64_t addr, size;
  uint32_t type;
};

static int memory_map(struct vm *vm, struct e820 *m) {
  m[0] = (struct e820){0, GUEST_MPTABLE, E820_RAM};
  m[1] = (struct e820){GUEST_MPTABLE, GUEST_KERNEL - GUEST_MPTABLE, E820_RESERVED};
  m[2] = (struct e820){GUEST_KERNEL, vm->mem.size - GUEST_KERNEL, E820_RAM};
  return 3;
}

/* ---- MP table ------------------------------------------------------------------------ */

static uint8_t checksum(const uint8_t *p, size_t n) {
  uint8_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += p[i];
  return (uint8_t)-sum;
}

int mptable_write(struct vm *vm) {
  const int nirq = 24;
  size_t cfg_len = 44 + 20 * (size_t)vm->ncpus + 8 /* bus */ + 8 /* ioapic */ + 8 * nirq + 8 * 2;
  uint8_t *fp = gpa_to_hva(&vm->mem, GUEST_MPTABLE, 16 + cfg_len);
  if (!fp || GUEST_MPTABLE + 16 + cfg_len > GUEST_KERNEL) return -ENOSPC;
  memset(fp, 0, 16 + cfg_len);
  uint8_t *cfg = fp + 16;
  memcpy(fp, "_MP_", 4);
  le_put32(fp + 4, (uint32_t)(GUEST_MPTABLE + 16));
  fp[8] = 1; /* length in 16-byte units */
  fp[9] = 4; /* spec 1.4 */
  fp[10] = checksum(fp, 16);

  memcpy(cfg, "PCMP", 4);
  le_put16(cfg + 4, (uint16_t)cfg_len);
  cfg[6] = 4;
  memcpy(cfg + 8, "NACELLE ", 8);
  memcpy(cfg + 16, "MICROVM     ", 12);
  uint16_t count = 0;
  le_put32(cfg + 36, (uint32_t)LAPIC_BASE);
  uint8_t *p = cfg + 44;
  for (int i = 0; i < vm->ncpus; i++, count++, p += 20) {
    p[0] = 0; /* processor */
    p[1] = (uint8_t)i;
    p[2] = 0x14; /* LAPIC version */
    p[3] = 0x01 | (i == 0 ? 0x02 : 0); /* enabled, BSP */
    le_put32(p + 4, 0x600);                /* family 6 */
    le_put32(p + 8, 0x201);                /* FPU, APIC */
  }
  p[0] = 1; /* bus 0: ISA */
  memcpy(p + 2, "ISA   ", 6);
  p += 8, count++;
  uint8_t ioapic_id = (uint8_t)vm->ncpus;
  p[0] = 2;
  p[1] = ioapic_id;
  p[2] = 0x11;
  p[3] = 1;
  le_put32(p + 4, (uint32_t)IOAPIC_BASE);
  p += 8, count++;
  for (int irq = 0; irq < nirq; irq++, p += 8, count++) {
    p[0] = 3; /* I/O interrupt */
    p[1] = 0; /* INT */
    le_put16(p + 2, 0);
    p[4] = 0; /* ISA */
    p[5] = (uint8_t)irq;
    p[6] = ioapic_id;
    p[7] = (uint8_t)irq;
  }
  p[0] = 4; /* local interrupt: ExtINT -> LINT0 of every LAPIC */
  p[1] = 3;
  p[6] = 0xff;
  p[7] = 0;
  p += 8, count++;
  p[0] = 4; /* NMI -> LINT1 */
  p[1] = 1;
  p[6] = 0xff;
  p[7] = 1;
  p += 8, count++;
  le_put16(cfg + 34, count);
  cfg[7] = checksum(cfg, cfg_len);
  return 0;
}

/* ---- command line and initrd --------------------------------------------------------- */

static int put_cmdline(struct vm *vm, const char *cmdline, uint32_t max, char *err, size_t errlen) {
  char *dst = gpa_to_hva(&vm->mem, GUEST_CMDLINE, GUEST_CMDLINE_MAX);
  size_t cap = GUEST_CMDLINE_MAX;
  if (max && max + 1 < cap) cap = max + 1;
  int n = snprintf(dst, cap, "%s", cmdline ? cmdline : "");
  if (n < 0 || (size_t)n >= cap || virtio_cmdline(vm, dst, cap) < 0) {
    if (err) snprintf(err, errlen, "the kernel command line is longer than the kernel accepts (%zu bytes)", cap - 1);
    return -E2BIG;
  }
  return 0;
}

/* Loads the initrd at the top of RAM below limit, above kernel_end. */
static int load_initrd(struct vm *vm, const char *path, uint64_t kernel_end, uint64_t limit, uint64_t *addr,
                       uint64_t *size, char *err, size_t errlen) {
  int rc = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) KVM_FAIL(errno, "open initrd %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) < 0) KVM_FAIL(errno, "stat initrd %s: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) KVM_FAIL(EINVAL, "initrd %s is not a regular file", path);
  uint64_t top = vm->mem.size < limit ? vm->mem.size : limit;
  uint64_t len = (uint64_t)st.st_size;
  if (len == 0) KVM_FAIL(EINVAL, "initrd %s is empty", path);
  if (len > top || ((top - len) & ~0xfffULL) < kernel_end)
    KVM_FAIL(ENOSPC, "initrd %s (%llu bytes) does not fit in guest memory (%llu MiB) above the kernel", path,
         (unsigned long long)len, (unsigned long long)(vm->mem.size >> 20));
  uint64_t at = (top - len) & ~0xfffULL;
  int r = pread_full(fd, gpa_to_hva(&vm->mem, at, len), len, 0);
  if (r < 0) KVM_FAIL(-r, "read initrd %s: %s", path, strerror(-r));
  *addr = at;
  *size = len;
out:
  if (fd >= 0) close(fd);
  return rc;
}

static void fill_e820(struct vm *vm, uint8_t *bp) {
  le_put64(bp + BP_ACPI_RSDP_ADDR, GUEST_ACPI_RSDP);
  struct e820 m[4];
  int n = memory_map(vm, m);
  bp[BP_E820_ENTRIES] = (uint8_t)n;
  for (int i = 0; i < n; i++) {
    uint8_t *e = bp + BP_E820_TABLE + 20 * i;
    le_put64(e, m[i].addr);
    le_put64(e + 8, m[i].size);
    le_put32(e + 16, m[i].type);
  }
}

static void set_initrd_fields(uint8_t *bp, uint64_t addr, uint64_t size) {
  le_put32(bp + HDR_RAMDISK_IMAGE, (uint32_t)addr);
  le_put32(bp + HDR_RAMDISK_SIZE, (uint32_t)size);
  le_put32(bp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(addr >> 32));
  le_put32(bp + BP_EXT_RAMDISK_SIZE, (uint32_t)(size >> 32));
}

/* ---- bzImage ------------------------------------------------------------------------- */

static int load_bzimage(struct vm *vm, int fd, uint64_t fsize, const struct boot_config *cfg, char *err, size_t errlen) {
  int rc = 0;
  uint8_t hdr[0x400];
  int r = pread_full(fd, hdr, sizeof hdr, 0);
  if (r < 0) KVM_FAIL(-r, "read %s: %s", cfg->kernel_path, strerror(-r));
  uint16_t version = le_get16(hdr + HDR_VERSION);
  if (version < 0x020c || !(le_get16(hdr + HDR_XLOADFLAGS) & XLF_KERNEL_64))
    KVM_FAIL(ENOEXEC, "%s is a bzImage without a 64-bit entry point (boot protocol %u.%02u, needs 2.12 and XLF_KERNEL_64)",
         cfg->kernel_path, version >> 8, version & 0xff);
  unsigned setup_sects = hdr[HDR_SETUP_SECTS] ? hdr[HDR_SETUP_SECTS] : 4;
  uint64_t pm_off = (uint64_t)(setup_sects + 1) * 512;
  if (pm_off >= fsize) KVM_FAIL(ENOEXEC, "%s: setup_sects (%u) points past the end of the file", cfg->kernel_path, setup_sects);
  uint64_t pm_size = fsize - pm_off;
  uint64_t load = GUEST_KERNEL;
  uint64_t pref = le_get64(hdr + HDR_PREF_ADDRESS);
  if (!hdr[HDR_RELOCATABLE] && version >= 0x020a && pref >= GUEST_KERNEL) load = pref;
  uint64_t init_size = le_get32(hdr + HDR_INIT_SIZE);
  uint64_t span = init_size > pm_size ? init_size : pm_size;
  if (!gpa_to_hva(&vm->mem, load, span))
    KVM_FAIL(ENOSPC, "%s needs %llu MiB of guest memory at 0x%llx, more than the VM has (%llu MiB)", cfg->kernel_path,
         (unsigned long long)((span + (1 << 20) - 1) >> 20), (unsigned long long)load,
         (unsigned long long)(vm->mem.size >> 20));
  r = pread_full(fd, gpa_to_hva(&vm->mem, load, pm_size), pm_size, (off_t)pm_off);
  if (r < 0) KVM_FAIL(-r, "read %s: %s", cfg->kernel_path, strerror(-r));

  uint8_t *bp = gpa_to_hva(&vm->mem, GUEST_BOOT_PARAMS, 4096);
  memset(bp, 0, 4096);
  size_t hdr_end = 0x202 + hdr[HDR_JUMP + 1];
  if (hdr_end > BP_HDR_END) hdr_end = BP_HDR_END;
  memcpy(bp + BP_HDR, hdr + BP_HDR, hdr_end - BP_HDR);
  bp[HDR_TYPE_OF_LOADER] = 0xff;
  bp[HDR_LOADFLAGS] |= 0x01; /* LOADED_HIGH */
  le_put32(bp + HDR_CMD_LINE_PTR, (uint32_t)GUEST_CMDLINE);
  le_put32(bp + BP_EXT_CMD_LINE_PTR, 0);
  uint32_t cmdline_size = version >= 0x0206 ? le_get32(hdr + HDR_CMDLINE_SIZE) : 255;
  r = put_cmdline(vm, cfg->cmdline, cmdline_size, err, errlen);
  if (r < 0) return r;
  if (cfg->initrd_path) {
    uint64_t max = le_get32(hdr + HDR_INITRD_ADDR_MAX);
    if (max == 0) max = 0x37ffffff;
    uint64_t addr, size;
    r = load_initrd(vm, cfg->initrd_path, load + span, max + 1, &addr, &size, err, errlen);
    if (r < 0) return r;
    set_initrd_fields(bp, addr, size);
  }
  fill_e820(vm, bp);
  write_gdt_and_page_tables(vm);
  r = set_bsp_regs(vm, true, load + 0x200, GUEST_BOOT_PARAMS, 0);
  if (r < 0) KVM_FAIL(-r, "setting the boot vCPU's registers: %s", strerror(-r));
out:
  return rc;
}

/* ---- ELF vmlinux ------------------------------------------------------------------------- */

static int load_elf(struct vm *vm, int fd, uint64_t fsize, const struct boot_config *cfg, char *err, size_t errlen) {
  int rc = 0;
  Elf64_Ehdr eh;
  int r = pread_full(fd, &eh, sizeof eh, 0);
  if (r < 0) KVM_FAIL(ENOEXEC, "%s: truncated ELF header", cfg->kernel_path);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
    KVM_FAIL(ENOEXEC, "%s is an ELF file but not an x86-64 kernel (class %u, machine %u)", cfg->kernel_path,
         eh.e_ident[EI_CLASS], eh.e_machine);
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64 ||
      eh.e_phoff > fsize || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > fsize - eh.e_phoff)
    KVM_FAIL(ENOEXEC, "%s: bad ELF program headers", cfg->kernel_path);
  Elf64_Phdr ph[64];
  r = pread_full(fd, ph, eh.e_phnum * sizeof(Elf64_Phdr), (off_t)eh.e_phoff);
  if (r < 0) KVM_FAIL(ENOEXEC, "%s: truncated ELF program headers", cfg->kernel_path);
  uint64_t kernel_end = 0, pvh_entry = 0;
  int loads = 0;
  for (int i = 0; i < eh.e_phnum; i++) {
    if (ph[i].p_type == PT_LOAD) {
      if (ph[i].p_filesz > ph[i].p_memsz || ph[i].p_offset > fsize || ph[i].p_filesz > fsize - ph[i].p_offset)
        KVM_FAIL(ENOEXEC, "%s: ELF segment %d lies outside the file", cfg->kernel_path, i);
      if (ph[i].p_paddr < GUEST_KERNEL || !gpa_to_hva(&vm->mem, ph[i].p_paddr, ph[i].p_memsz))
        KVM_FAIL(ENOSPC, "%s: ELF segment %d (0x%llx, %llu bytes) does not fit in guest memory (%llu MiB)",
             cfg->kernel_path, i, (unsigned long long)ph[i].p_paddr, (unsigned long long)ph[i].p_memsz,
             (unsigned long long)(vm->mem.size >> 20));
      uint8_t *dst = gpa_to_hva(&vm->mem, ph[i].p_paddr, ph[i].p_memsz);
      r = pread_full(fd, dst, ph[i].p_filesz, (off_t)ph[i].p_offset);
      if (r < 0) KVM_FAIL(-r, "read %s: %s", cfg->kernel_path, strerror(-r));
      memset(dst + ph[i].p_filesz, 0, ph[i].p_memsz - ph[i].p_filesz);
      if (ph[i].p_paddr + ph[i].p_memsz > kernel_end) kernel_end = ph[i].p_paddr + ph[i].p_memsz;
      loads++;
    } else if (ph[i].p_type == PT_NOTE && ph[i].p_filesz <= 1 << 20 && ph[i].p_offset <= fsize &&
               ph[i].p_filesz <= fsize - ph[i].p_offset) {
      uint8_t notes[4096];
      uint64_t left = ph[i].p_filesz, off = ph[i].p_offset;
      /* Walk notes without trusting their sizes: each is re-read and bounds-checked. */
      while (left >= 12 && !pvh_entry) {
        uint8_t nh[12];
        if (pread_full(fd, nh, 12, (off_t)off) < 0) break;
        uint64_t namesz = le_get32(nh), descsz = le_get32(nh + 4), type = le_get32(nh + 8);
        uint64_t nlen = (namesz + 3) & ~3ULL, dlen = (descsz + 3) & ~3ULL;
        if (nlen > left - 12 || dlen > left - 12 - nlen) break;
        if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && descsz >= 4 && nlen + descsz <= sizeof notes &&
            pread_full(fd, notes, nlen + descsz, (off_t)(off + 12)) == 0 && memcmp(notes, "Xen", 4) == 0) {
          pvh_entry = descsz >= 8 ? le_get64(notes + nlen) : le_get32(notes + nlen);
        }
        off += 12 + nlen + dlen;
        left -= 12 + nlen + dlen;
      }
    }
  }
  if (loads == 0) KVM_FAIL(ENOEXEC, "%s: ELF file with nothing to load", cfg->kernel_path);

  uint64_t initrd_addr = 0, initrd_size = 0;
  if (pvh_entry) {
    if (!gpa_to_hva(&vm->mem, pvh_entry, 1))
      KVM_FAIL(ENOEXEC, "%s: PVH entry 0x%llx is outside guest memory", cfg->kernel_path, (unsigned long long)pvh_entry);
    r = put_cmdline(vm, cfg->cmdline, GUEST_CMDLINE_MAX - 1, err, errlen);
    if (r < 0) return r;
    if (cfg->initrd_path) {
      r = load_initrd(vm, cfg->initrd_path, kernel_end, GUEST_RAM_MAX, &initrd_addr, &initrd_size, err, errlen);
      if (r < 0) return r;
    }
    /* struct hvm_start_info, then one module entry, then the memory map */
    uint8_t *si = gpa_to_hva(&vm->mem, GUEST_PVH_INFO, 0x400);
    memset(si, 0, 0x400);
    le_put32(si + 0, HVM_START_MAGIC);
    le_put32(si + 4, 1);
    if (cfg->initrd_path) {
      le_put32(si + 12, 1);
      le_put64(si + 16, GUEST_PVH_INFO + 0x100);
      le_put64(si + 0x100, initrd_addr);
      le_put64(si + 0x108, initrd_size);
    }
    le_put64(si + 24, GUEST_CMDLINE);
    le_put64(si + 32, GUEST_ACPI_RSDP);
    struct e820 m[4];
    int n = memory_map(vm, m);
    le_put64(si + 40, GUEST_PVH_INFO + 0x200);
    le_put32(si + 48, (uint32_t)n);
    for (int i = 0; i < n; i++) {
      uint8_t *e = si + 0x200 + 24 * i;
      le_put64(e, m[i].addr);
      le_put64(e + 8, m[i].size);
      le_put32(e + 16, m[i].type);
    }
    write_gdt_and_page_tables(vm);
    r = set_bsp_regs(vm, false, pvh_entry, 0, GUEST_PVH_INFO);
    if (r < 0) KVM_FAIL(-r, "setting the boot vCPU's registers: %s", strerror(-r));
    return 0;
  }

  /* no PVH note: Linux's 64-bit boot protocol at e_entry, as for a bzImage */
  if (!gpa_to_hva(&vm->mem, eh.e_entry, 1))
    KVM_FAIL(ENOEXEC, "%s: entry point 0x%llx is outside guest memory and there is no PVH note", cfg->kernel_path,
         (unsigned long long)eh.e_entry);
  uint8_t *bp = gpa_to_hva(&vm->mem, GUEST_BOOT_PARAMS, 4096);
  memset(bp, 0, 4096);
  le_put16(bp + HDR_BOOT_FLAG, 0xaa55);
  le_put32(bp + HDR_MAGIC, 0x53726448);
  le_put16(bp + HDR_VERSION, 0x020f);
  bp[HDR_TYPE_OF_LOADER] = 0xff;
  bp[HDR_LOADFLAGS] = 0x01;
  le_put32(bp + HDR_KERNEL_ALIGNMENT, 0x1000000);
  le_put32(bp + HDR_CMD_LINE_PTR, (uint32_t)GUEST_CMDLINE);
  le_put32(bp + HDR_CMDLINE_SIZE, GUEST_CMDLINE_MAX - 1);
  r = put_cmdline(vm, cfg->cmdline, GUEST_CMDLINE_MAX - 1, err, errlen);
  if (r < 0) return r;
  if (cfg->initrd_path) {
    r = load_initrd(vm, cfg->initrd_path, kernel_end, 0x38000000ULL, &initrd_addr, &initrd_size, err, errlen);
    if (r < 0) return r;
    set_initrd_fields(bp, initrd_addr, initrd_size);
  }
  fill_e820(vm, bp);
  write_gdt_and_page_tables(vm);
  r = set_bsp_regs(vm, true, eh.e_entry, GUEST_BOOT_PARAMS, 0);
  if (r < 0) KVM_FAIL(-r, "setting the boot vCPU's registers: %s", strerror(-r));
out:
  return rc;
}

int boot_load(struct vm *vm, const struct boot_config *cfg, char *err, size_t errlen) {
  int rc = 0;
  int fd = open(cfg->kernel_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (err) snprintf(err, errlen, "open kernel %s: %s", cfg->kernel_path, strerror(e));
    return -e;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) KVM_FAIL(errno, "stat kernel %s: %s", cfg->kernel_path, strerror(errno));
  if (!S_ISREG(st.st_mode)) KVM_FAIL(EINVAL, "kernel %s is not a regular file", cfg->kernel_path);
  uint8_t head[0x210];
  memset(head, 0, sizeof head);
  ssize_t n = pread(fd, head, sizeof head, 0);
  if (n < 0) KVM_FAIL(errno, "read kernel %s: %s", cfg->kernel_path, strerror(errno));
  int r = mptable_write(vm);
  if (r < 0) KVM_FAIL(-r, "writing the MP table for %d vCPUs: %s", vm->ncpus, strerror(-r));
  uint64_t rsdp;
  r = acpi_write(vm, &rsdp);
  if (r < 0) KVM_FAIL(-r, "writing the ACPI tables: %s", strerror(-r));
  if (n >= 4 && memcmp(head, ELFMAG, SELFMAG) == 0) {
    rc = load_elf(vm, fd, (uint64_t)st.st_size, cfg, err, errlen);
  } else if (n >= 0x206 && le_get32(head + HDR_MAGIC) == 0x53726448 && (uint64_t)st.st_size > 0x400) {
    rc = load_bzimage(vm, fd, (uint64_t)st.st_size, cfg, err, errlen);
  } else {
    KVM_FAIL(ENOEXEC, "%s is not a kernel: neither a bzImage (no HdrS boot header) nor an ELF vmlinux", cfg->kernel_path);
  }
out:
  close(fd);
  return rc;
}
