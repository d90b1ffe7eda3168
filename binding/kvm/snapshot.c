/*
 * kvm/snapshot.c: a paused VM to a directory and back.
 *   <dir>/vm.state  header (magic, version, sizes, CRC-32 of the payload), then
 *                   per vCPU: regs, sregs, xsave, xcrs, debug regs, LAPIC, MSRs,
 *                   events, MP state; the PIC/IOAPIC, PIT and clock; serial,
 *                   i8042 and virtio state.
 *   <dir>/memory    guest RAM as is, sparse where a page is all zeroes; restore
 *                   maps it MAP_PRIVATE, so the file is never written again.
 * Anything that does not match (magic, version, CRC, sizes, vCPU or device
 * count) is refused with EINVAL and a message; nothing is half-applied because
 * the VM being restored into is new and discarded on failure.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvm.h"

#define SNAP_MAGIC "NACLSNAP"
#define SNAP_VERSION 1

struct snap_header {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t mem_size;
  uint32_t ncpus;
  uint32_t nvirtio;
  uint64_t payload_size;
  uint32_t payload_crc;
  uint32_t header_crc; /* of the bytes before this field */
};

static const uint32_t snap_msrs[] = {
    0x174, 0x175, 0x176,                  /* SYSENTER */
    0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, 0xc0000103, /* STAR..TSC_AUX */
    0x10, 0x1a0, 0x277, 0x6e0, 0x3b,      /* TSC, MISC_ENABLE, PAT, TSC_DEADLINE, TSC_ADJUST */
    0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04, /* kvmclock, async PF, steal, PV EOI */
    0x11, 0x12,                           /* old kvmclock */
};
#define NMSRS (sizeof snap_msrs / sizeof snap_msrs[0])

struct vcpu_blob {
  struct kvm_regs regs;
  struct kvm_sregs sregs;
  struct kvm_xsave xsave;
  struct kvm_xcrs xcrs;
  struct kvm_debugregs dregs;
  struct kvm_lapic_state lapic;
  struct kvm_vcpu_events events;
  struct kvm_mp_state mp;
  uint32_t nmsrs;
  struct kvm_msr_entry msrs[NMSRS];
};

struct vm_blob {
  struct kvm_irqchip chips[3];
  struct kvm_pit_state2 pit;
  struct kvm_clock_data clock;
};

/* CRC-32 (IEEE), bytewise with a table built on first use. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t crc32_buf(const void *buf, size_t len) {
  pthread_once(&crc_once, crc_init);
  const uint8_t *p = buf;
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < len; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

static size_t payload_size(struct vm *vm) {
  return (size_t)vm->ncpus * sizeof(struct vcpu_blob) + sizeof(struct vm_blob) + serial_state_size() +
         i8042_state_size() + virtio_state_size(vm);
}

static int write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* KVM_GET_MSRS or KVM_SET_MSRS for one MSR; returns what the ioctl does (1: done). */
static int msr_one(int fd, unsigned long req, struct kvm_msr_entry *e) {
  struct {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e;
  } one;
  memset(&one, 0, sizeof one);
  one.hdr.nmsrs = 1;
  one.e = *e;
  int r = ioctl(fd, req, &one);
  *e = one.e;
  return r;
}

static int save_vcpu(struct vcpu *c, struct vcpu_blob *b) {
  if (ioctl(c->fd, KVM_GET_REGS, &b->regs) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_SREGS, &b->sregs) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_XSAVE, &b->xsave) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_XCRS, &b->xcrs) < 0) memset(&b->xcrs, 0, sizeof b->xcrs);
  if (ioctl(c->fd, KVM_GET_DEBUGREGS, &b->dregs) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_LAPIC, &b->lapic) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_VCPU_EVENTS, &b->events) < 0) return -errno;
  if (ioctl(c->fd, KVM_GET_MP_STATE, &b->mp) < 0) return -errno;
  /* MSRs one at a time: KVM stops at the first one it does not know. */
  b->nmsrs = 0;
  for (size_t i = 0; i < NMSRS; i++) {
    struct kvm_msr_entry e = {.index = snap_msrs[i]};
    if (msr_one(c->fd, KVM_GET_MSRS, &e) == 1) b->msrs[b->nmsrs++] = e;
  }
  return 0;
}

static int load_vcpu(struct vcpu *c, const struct vcpu_blob *b) {
  if (ioctl(c->fd, KVM_SET_MP_STATE, &b->mp) < 0) return -errno;
  if (ioctl(c->fd, KVM_SET_REGS, &b->regs) < 0) return -errno;
  if (ioctl(c->fd, KVM_SET_SREGS, &b->sregs) < 0) return -errno;
  if (ioctl(c->fd, KVM_SET_XSAVE, &b->xsave) < 0) return -errno;
  if (b->xcrs.nr_xcrs && ioctl(c->fd, KVM_SET_XCRS, &b->xcrs) < 0) return -errno;
  if (ioctl(c->fd, KVM_SET_DEBUGREGS, &b->dregs) < 0) return -errno;
  if (ioctl(c->fd, KVM_SET_LAPIC, &b->lapic) < 0) return -errno;
  for (uint32_t i = 0; i < b->nmsrs && i < NMSRS; i++) {
    struct kvm_msr_entry e = b->msrs[i];
    if (msr_one(c->fd, KVM_SET_MSRS, &e) < 0) return -errno;
  }
  if (ioctl(c->fd, KVM_SET_VCPU_EVENTS, &b->events) < 0) return -errno;
  return 0;
}

static int write_memory(struct vm *vm, const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  int rc = 0;
  if (ftruncate(fd, (off_t)vm->mem.size) < 0) {
    rc = -errno;
    goto out;
  }
  /* Runs of non-zero pages are written; zero pages stay holes. */
  static const uint8_t zero[4096];
  uint64_t run_start = 0;
  bool in_run = false;
  for (uint64_t off = 0; off <= vm->mem.size; off += 4096) {
    bool nonzero = off < vm->mem.size && memcmp(vm->mem.host + off, zero, 4096) != 0;
    if (nonzero && !in_run) {
      run_start = off;
      in_run = true;
    } else if (!nonzero && in_run) {
      uint64_t len = off - run_start;
      const uint8_t *p = vm->mem.host + run_start;
      uint64_t pos = run_start;
      while (len) {
        ssize_t n = pwrite(fd, p, len > (1 << 30) ? (1 << 30) : len, (off_t)pos);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          rc = -errno;
          goto out;
        }
        p += n;
        pos += (uint64_t)n;
        len -= (uint64_t)n;
      }
      in_run = false;
    }
  }
  if (fsync(fd) < 0) rc = -errno;
out:
  close(fd);
  return rc;
}

int vm_snapshot(struct vm *vm, const char *dir, char *err, size_t errlen) {
  int rc = 0, fd = -1;
  uint8_t *payload = NULL;
  char path[4096];
  pthread_mutex_lock(&vm->lock);
  bool paused = vm->state == VM_PAUSED && !vm->stop_requested;
  pthread_mutex_unlock(&vm->lock);
  if (!paused) KVM_FAIL(EBUSY, "a snapshot needs a paused VM (pause() it first)");
  size_t psize = payload_size(vm);
  payload = calloc(1, psize);
  if (!payload) KVM_FAIL(ENOMEM, "out of memory");
  uint8_t *p = payload;
  for (int i = 0; i < vm->ncpus; i++, p += sizeof(struct vcpu_blob)) {
    int r = save_vcpu(&vm->cpus[i], (struct vcpu_blob *)p);
    if (r < 0) KVM_FAIL(-r, "saving vCPU %d: %s", i, strerror(-r));
  }
  struct vm_blob *vb = (struct vm_blob *)p;
  for (uint32_t i = 0; i < 3; i++) {
    vb->chips[i].chip_id = i;
    if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &vb->chips[i]) < 0) KVM_FAIL(errno, "KVM_GET_IRQCHIP %u: %s", i, strerror(errno));
  }
  if (ioctl(vm->vm_fd, KVM_GET_PIT2, &vb->pit) < 0) KVM_FAIL(errno, "KVM_GET_PIT2: %s", strerror(errno));
  if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &vb->clock) < 0) KVM_FAIL(errno, "KVM_GET_CLOCK: %s", strerror(errno));
  p += sizeof *vb;
  serial_save(vm->serial, p);
  p += serial_state_size();
  i8042_save(vm->i8042, p);
  p += i8042_state_size();
  virtio_save(vm, p);

  snprintf(path, sizeof path, "%s/memory", dir);
  int r = write_memory(vm, path);
  if (r < 0) KVM_FAIL(-r, "writing %s: %s", path, strerror(-r));

  struct snap_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, SNAP_MAGIC, 8);
  h.version = SNAP_VERSION;
  h.header_size = sizeof h;
  h.mem_size = vm->mem.size;
  h.ncpus = (uint32_t)vm->ncpus;
  h.nvirtio = (uint32_t)vm->nvirtio;
  h.payload_size = psize;
  h.payload_crc = crc32_buf(payload, psize);
  h.header_crc = crc32_buf(&h, offsetof(struct snap_header, header_crc));
  snprintf(path, sizeof path, "%s/vm.state", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) KVM_FAIL(errno, "open %s: %s", path, strerror(errno));
  if ((r = write_all(fd, &h, sizeof h)) < 0 || (r = write_all(fd, payload, psize)) < 0)
    KVM_FAIL(-r, "write %s: %s", path, strerror(-r));
  if (fsync(fd) < 0) KVM_FAIL(errno, "fsync %s: %s", path, strerror(errno));
out:
  if (fd >= 0) close(fd);
  free(payload);
  return rc;
}

int snapshot_read_header(const char *dir, uint64_t *mem_size, int *ncpus, char *err, size_t errlen) {
  int rc = 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/vm.state", dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) KVM_FAIL(errno, "open %s: %s", path, strerror(errno));
  struct snap_header h;
  ssize_t n = read(fd, &h, sizeof h);
  if (n != (ssize_t)sizeof h || memcmp(h.magic, SNAP_MAGIC, 8) != 0)
    KVM_FAIL(EINVAL, "%s is not a nacelle VM snapshot (bad magic)", path);
  if (h.version != SNAP_VERSION || h.header_size != sizeof h)
    KVM_FAIL(EINVAL, "%s: snapshot format version %u, this build reads version %u", path, h.version, SNAP_VERSION);
  if (h.header_crc != crc32_buf(&h, offsetof(struct snap_header, header_crc)))
    KVM_FAIL(EINVAL, "%s: the snapshot header is damaged (checksum mismatch)", path);
  if (h.ncpus < 1 || h.ncpus > KVM_MAX_VCPUS || h.mem_size < GUEST_RAM_MIN || h.mem_size > GUEST_RAM_MAX)
    KVM_FAIL(EINVAL, "%s: implausible snapshot (%u vCPUs, %llu bytes of memory)", path, h.ncpus, (unsigned long long)h.mem_size);
  *mem_size = h.mem_size;
  *ncpus = (int)h.ncpus;
out:
  if (fd >= 0) close(fd);
  return rc;
}

int vm_restore_state(struct vm *vm, const char *dir, char *err, size_t errlen) {
  int rc = 0, fd = -1;
  uint8_t *payload = NULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/vm.state", dir);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) KVM_FAIL(errno, "open %s: %s", path, strerror(errno));
  struct snap_header h;
  if (read(fd, &h, sizeof h) != (ssize_t)sizeof h || memcmp(h.magic, SNAP_MAGIC, 8) != 0)
    KVM_FAIL(EINVAL, "%s is not a nacelle VM snapshot (bad magic)", path);
  if (h.version != SNAP_VERSION || h.header_size != sizeof h ||
      h.header_crc != crc32_buf(&h, offsetof(struct snap_header, header_crc)))
    KVM_FAIL(EINVAL, "%s: unreadable snapshot header (version %u or checksum)", path, h.version);
  if (h.mem_size != vm->mem.size || h.ncpus != (uint32_t)vm->ncpus || h.nvirtio != (uint32_t)vm->nvirtio)
    KVM_FAIL(EINVAL, "%s: the snapshot is of a different VM (%u vCPUs, %llu MiB, %u virtio devices)", path, h.ncpus,
         (unsigned long long)(h.mem_size >> 20), h.nvirtio);
  size_t psize = payload_size(vm);
  if (h.payload_size != psize)
    KVM_FAIL(EINVAL, "%s: state size %llu does not match this build's %zu (different host or version)", path,
         (unsigned long long)h.payload_size, psize);
  payload = malloc(psize);
  if (!payload) KVM_FAIL(ENOMEM, "out of memory");
  size_t got = 0;
  while (got < psize) {
    ssize_t n = read(fd, payload + got, psize - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) KVM_FAIL(EINVAL, "%s: truncated snapshot state", path);
    got += (size_t)n;
  }
  if (crc32_buf(payload, psize) != h.payload_crc) KVM_FAIL(EINVAL, "%s: the snapshot state is damaged (checksum mismatch)", path);
  struct stat st;
  snprintf(path, sizeof path, "%s/memory", dir);
  if (stat(path, &st) < 0 || (uint64_t)st.st_size != vm->mem.size)
    KVM_FAIL(EINVAL, "%s: missing, or not the snapshot's memory size", path);

  const uint8_t *p = payload;
  const uint8_t *vcpus = p;
  p += (size_t)vm->ncpus * sizeof(struct vcpu_blob);
  const struct vm_blob *vb = (const void *)p;
  p += sizeof *vb;
  if (ioctl(vm->vm_fd, KVM_SET_PIT2, &vb->pit) < 0) KVM_FAIL(errno, "KVM_SET_PIT2: %s", strerror(errno));
  struct kvm_clock_data clock = vb->clock;
  clock.flags = 0;
  if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0) KVM_FAIL(errno, "KVM_SET_CLOCK: %s", strerror(errno));
  for (int i = 0; i < 3; i++) {
    struct kvm_irqchip chip = vb->chips[i];
    if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &chip) < 0) KVM_FAIL(errno, "KVM_SET_IRQCHIP %d: %s", i, strerror(errno));
  }
  for (int i = 0; i < vm->ncpus; i++) {
    int r = load_vcpu(&vm->cpus[i], (const struct vcpu_blob *)(vcpus + (size_t)i * sizeof(struct vcpu_blob)));
    if (r < 0) KVM_FAIL(-r, "restoring vCPU %d: %s", i, strerror(-r));
  }
  serial_load(vm->serial, p);
  p += serial_state_size();
  i8042_load(vm->i8042, p);
  p += i8042_state_size();
  if (virtio_load(vm, p, virtio_state_size(vm)) < 0) KVM_FAIL(EINVAL, "%s: the virtio device state does not match the devices given", dir);
out:
  if (fd >= 0) close(fd);
  free(payload);
  return rc;
}
