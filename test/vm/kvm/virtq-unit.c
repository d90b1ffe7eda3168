/*
 * test/vm/kvm/virtq-unit.c: host-side unit test of the virtio devices
 * (binding/kvm/virtq.c, virtio_mmio.c, blk.c, console.c) without KVM.
 *
 * A fake struct vm whose guest RAM is a malloc'd buffer; the vm_* functions
 * the devices call are stubbed here. The test plays the guest driver through
 * the MMIO read/write callbacks, the way the vCPU loop would call them.
 *
 * Build and run (from the repository root):
 *   gcc -std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Wno-unused-parameter \
 *     -Wno-missing-field-initializers -fsanitize=address,undefined -pthread -Ibinding/kvm \
 *     test/vm/kvm/virtq-unit.c binding/kvm/virtq.c binding/kvm/virtio_mmio.c \
 *     binding/kvm/blk.c binding/kvm/console.c -o /tmp/virtq-unit && /tmp/virtq-unit
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "virtio.h"

/* ---- stubs for the core ---------------------------------------------------------- */

static int irq_count[24];
static int io_enable_calls;
static bool io_enabled_last;

void vm_irq_raise(struct vm *vm, int gsi) {
  if (gsi >= 0 && gsi < 24) irq_count[gsi]++;
}

int vm_add_mmio(struct vm *vm, struct mmio_dev *dev) {
  if (vm->nmmio >= KVM_MAX_MMIO_DEVS) return -ENOSPC;
  vm->mmio[vm->nmmio++] = dev;
  return 0;
}

int vm_io_watch(struct vm *vm, int fd, io_ready_fn fn, void *opaque) {
  if (vm->nwatch >= KVM_MAX_IO_WATCH) return -ENOSPC;
  vm->watch[vm->nwatch].fd = fd;
  vm->watch[vm->nwatch].fn = fn;
  vm->watch[vm->nwatch].opaque = opaque;
  vm->watch[vm->nwatch].enabled = true;
  vm->nwatch++;
  return 0;
}

void vm_io_enable(struct vm *vm, int fd, bool on) {
  __atomic_add_fetch(&io_enable_calls, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&io_enabled_last, on, __ATOMIC_RELAXED);
  for (int i = 0; i < vm->nwatch; i++)
    if (vm->watch[i].fd == fd) __atomic_store_n(&vm->watch[i].enabled, on, __ATOMIC_RELEASE);
}

int vm_write_all(struct vm *vm, int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      poll(&pfd, 1, 1000);
      continue;
    }
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* ---- checks ------------------------------------------------------------------------ */

static int failures, checks;
#define CHECK(cond)                                                              \
  do {                                                                           \
    checks++;                                                                    \
    if (!(cond)) {                                                               \
      failures++;                                                                \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                            \
  } while (0)

/* ---- the fake VM and a tiny driver --------------------------------------------------- */

#define RAM_SIZE (1u << 20)

static struct vm *make_vm(void) {
  struct vm *vm = calloc(1, sizeof *vm);
  vm->mem.size = RAM_SIZE;
  vm->mem.host = aligned_alloc(4096, RAM_SIZE);
  memset(vm->mem.host, 0, RAM_SIZE);
  for (int i = 0; i < 24; i++) vm->irqfds[i] = -1;
  return vm;
}

static void free_vm(struct vm *vm) {
  virtio_destroy_all(vm);
  free(vm->mem.host);
  free(vm);
}

static uint32_t rd(struct mmio_dev *m, uint64_t off) {
  uint32_t v = 0;
  pthread_mutex_lock(&m->lock);
  m->read(m->opaque, off, (uint8_t *)&v, 4);
  pthread_mutex_unlock(&m->lock);
  return v;
}

static void wr(struct mmio_dev *m, uint64_t off, uint32_t v) {
  pthread_mutex_lock(&m->lock);
  m->write(m->opaque, off, (const uint8_t *)&v, 4);
  pthread_mutex_unlock(&m->lock);
}

static uint64_t cfg64(struct mmio_dev *m, uint64_t off) {
  uint64_t v = 0;
  pthread_mutex_lock(&m->lock);
  m->read(m->opaque, 0x100 + off, (uint8_t *)&v, 8);
  pthread_mutex_unlock(&m->lock);
  return v;
}

static uint8_t *G(struct vm *vm, uint64_t gpa) { return vm->mem.host + gpa; }

/* driver-side view of one queue */
struct dq {
  struct vm *vm;
  struct mmio_dev *m;
  int qi;
  uint16_t num;
  uint64_t desc, avail, used;
  uint16_t avail_idx;
  uint16_t next_desc;
};

static struct virtq_desc *dq_desc(struct dq *q, uint16_t i) {
  return (struct virtq_desc *)G(q->vm, q->desc) + i;
}
static struct virtq_avail *dq_avail(struct dq *q) { return (void *)G(q->vm, q->avail); }
static struct virtq_used *dq_used(struct dq *q) { return (void *)G(q->vm, q->used); }

/* Status handshake; returns the Status read back after FEATURES_OK. */
static uint32_t driver_init(struct mmio_dev *m, uint32_t feat_lo, uint32_t feat_hi) {
  wr(m, 0x70, 0);
  wr(m, 0x70, 1);
  wr(m, 0x70, 3);
  wr(m, 0x24, 0);
  wr(m, 0x20, feat_lo);
  wr(m, 0x24, 1);
  wr(m, 0x20, feat_hi);
  wr(m, 0x70, 3 | 8);
  return rd(m, 0x70);
}

/* QueueSel/Num/addresses/Ready; returns QueueReady read back. */
static uint32_t queue_setup(struct dq *q, struct vm *vm, struct mmio_dev *m, int qi, uint32_t num,
                            uint64_t desc, uint64_t avail, uint64_t used) {
  memset(q, 0, sizeof *q);
  q->vm = vm;
  q->m = m;
  q->qi = qi;
  q->num = (uint16_t)num;
  q->desc = desc;
  q->avail = avail;
  q->used = used;
  if (desc + 16 * (uint64_t)num <= RAM_SIZE) memset(G(vm, desc), 0, 16 * num);
  if (avail + 6 + 2 * (uint64_t)num <= RAM_SIZE) memset(G(vm, avail), 0, 6 + 2 * num);
  if (used + 6 + 8 * (uint64_t)num <= RAM_SIZE) memset(G(vm, used), 0, 6 + 8 * num);
  wr(m, 0x30, (uint32_t)qi);
  CHECK(rd(m, 0x34) == 256);
  wr(m, 0x38, num);
  wr(m, 0x80, (uint32_t)desc);
  wr(m, 0x84, (uint32_t)(desc >> 32));
  wr(m, 0x90, (uint32_t)avail);
  wr(m, 0x94, (uint32_t)(avail >> 32));
  wr(m, 0xa0, (uint32_t)used);
  wr(m, 0xa4, (uint32_t)(used >> 32));
  wr(m, 0x44, 1);
  return rd(m, 0x44);
}

struct buf {
  uint64_t addr;
  uint32_t len;
  bool write;
};

/* Posts a chain of n buffers; returns its head. */
static uint16_t post(struct dq *q, const struct buf *b, int n) {
  uint16_t head = q->next_desc % q->num;
  for (int i = 0; i < n; i++) {
    uint16_t idx = (head + i) % q->num;
    struct virtq_desc *d = dq_desc(q, idx);
    d->addr = b[i].addr;
    d->len = b[i].len;
    d->flags = (b[i].write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
    d->next = (idx + 1) % q->num;
  }
  q->next_desc = (uint16_t)(head + n);
  struct virtq_avail *a = dq_avail(q);
  a->ring[q->avail_idx % q->num] = head;
  q->avail_idx++;
  __atomic_store_n(&a->idx, q->avail_idx, __ATOMIC_RELEASE);
  return head;
}

static void notify(struct dq *q) { wr(q->m, 0x50, (uint32_t)q->qi); }

/* ---- virtio-blk ------------------------------------------------------------------------ */

#define HDR 0x10000
#define DATA 0x11000
#define STATUS 0x20000

struct req_hdr {
  uint32_t type, reserved;
  uint64_t sector;
};

static void put_hdr(struct vm *vm, uint32_t type, uint64_t sector) {
  struct req_hdr h = {.type = type, .sector = sector};
  memcpy(G(vm, HDR), &h, sizeof h);
}

/* A three-buffer request; returns (status byte, used len) through out params. */
static void blk_req(struct dq *q, uint32_t type, uint64_t sector, uint32_t datalen, bool data_write,
                    uint8_t *status, uint32_t *used_len) {
  struct vm *vm = q->vm;
  put_hdr(vm, type, sector);
  *G(vm, STATUS) = 0xff;
  struct buf b[3] = {{HDR, 16, false}, {DATA, datalen, data_write}, {STATUS, 1, true}};
  uint16_t before = dq_used(q)->idx;
  if (datalen)
    post(q, b, 3);
  else {
    b[1] = b[2];
    post(q, b, 2);
  }
  notify(q);
  struct virtq_used *u = dq_used(q);
  CHECK((uint16_t)(u->idx - before) == 1);
  *status = *G(vm, STATUS);
  *used_len = u->ring[(uint16_t)(u->idx - 1) % q->num].len;
}

static struct mmio_dev *add_blk(struct vm *vm, int fd, bool ro, const char *id) {
  int n = vm->nmmio;
  CHECK(virtio_blk_add(vm, fd, ro, id) == 0);
  CHECK(vm->nmmio == n + 1);
  return vm->mmio[n];
}

/* fresh handshake + queue 0 of 8 entries; DRIVER_OK */
static void blk_start(struct dq *q, struct vm *vm, struct mmio_dev *m) {
  uint32_t st = driver_init(m, (1u << 9) | (1u << 2) | (1u << 6), 1);
  CHECK(st == 11);
  CHECK(queue_setup(q, vm, m, 0, 8, 0x1000, 0x2000, 0x3000) == 1);
  wr(m, 0x70, 15);
  CHECK(rd(m, 0x70) == 15);
}

static void expect_failure(struct vm *vm, struct mmio_dev *m, const char *what, uint64_t before) {
  CHECK(rd(m, 0x70) & VIRTIO_STATUS_NEEDS_RESET);
  CHECK(rd(m, 0x60) & VIRTIO_ISR_CONFIG);
  CHECK(virtio_error_count(vm) == before + 1);
  const char *e = virtio_last_error(vm);
  CHECK(e && strstr(e, what));
  if (e) printf("  error reported: %s\n", e);
}

static void test_blk(void) {
  printf("virtio-blk: read/write/flush/get-id/bounds\n");
  char path[] = "/tmp/virtq-unit-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  unlink(path);
  uint8_t pattern[64 * 1024];
  for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (uint8_t)(i * 7 + i / 512);
  CHECK(write(fd, pattern, sizeof pattern) == (ssize_t)sizeof pattern);

  struct vm *vm = make_vm();
  struct mmio_dev *m = add_blk(vm, fd, false, "serial-123");
  CHECK(m->base == GUEST_MMIO_BASE && m->size == 0x1000);
  CHECK(rd(m, 0) == 0x74726976);
  CHECK(rd(m, 4) == 2);
  CHECK(rd(m, 8) == 2);
  wr(m, 0x14, 1);
  CHECK(rd(m, 0x10) & 1); /* VERSION_1 */
  wr(m, 0x14, 0);
  uint32_t f = rd(m, 0x10);
  CHECK(f & (1u << 9));
  CHECK(f & (1u << 2));
  CHECK(!(f & (1u << 5)));
  CHECK(cfg64(m, 0) == 128); /* 64 KiB / 512 */
  CHECK((uint32_t)cfg64(m, 12) == 126);
  CHECK(rd(m, 0x200) == 0); /* beyond config */
  CHECK(rd(m, 0x1fc) == 0); /* unknown */

  struct dq q;
  blk_start(&q, vm, m);
  int irq0 = irq_count[GUEST_MMIO_FIRST_IRQ];

  uint8_t st;
  uint32_t ul;
  /* read sectors 2..3 */
  memset(G(vm, DATA), 0, 1024);
  blk_req(&q, 0, 2, 1024, true, &st, &ul);
  CHECK(st == 0);
  CHECK(ul == 1025);
  CHECK(memcmp(G(vm, DATA), pattern + 1024, 1024) == 0);
  CHECK(irq_count[GUEST_MMIO_FIRST_IRQ] == irq0 + 1);
  CHECK(rd(m, 0x60) == 1);
  wr(m, 0x64, 1);
  CHECK(rd(m, 0x60) == 0);

  /* write sector 4 */
  memset(G(vm, DATA), 0xab, 512);
  blk_req(&q, 1, 4, 512, false, &st, &ul);
  CHECK(st == 0);
  CHECK(ul == 1);
  uint8_t back[512];
  CHECK(pread(fd, back, 512, 4 * 512) == 512);
  uint8_t ab[512];
  memset(ab, 0xab, 512);
  CHECK(memcmp(back, ab, 512) == 0);

  /* flush, get-id, unsupported, out of bounds, overflowing sector */
  blk_req(&q, 4, 0, 0, false, &st, &ul);
  CHECK(st == 0);
  memset(G(vm, DATA), 0xee, 20);
  blk_req(&q, 8, 0, 20, true, &st, &ul);
  CHECK(st == 0 && ul == 21);
  CHECK(memcmp(G(vm, DATA), "serial-123\0\0\0\0\0\0\0\0\0\0", 20) == 0);
  blk_req(&q, 77, 0, 512, true, &st, &ul);
  CHECK(st == 2);
  blk_req(&q, 0, 127, 1024, true, &st, &ul); /* one sector past the end */
  CHECK(st == 1);
  blk_req(&q, 1, 128, 512, false, &st, &ul);
  CHECK(st == 1);
  blk_req(&q, 0, UINT64_MAX - 1, 1024, true, &st, &ul);
  CHECK(st == 1);
  blk_req(&q, 0, 126, 1024, true, &st, &ul); /* exactly the last two sectors */
  CHECK(st == 0);
  CHECK(memcmp(G(vm, DATA), pattern + 126 * 512, 1024) == 0);

  /* a request split over more buffers: header in two pieces, data in three */
  {
    put_hdr(vm, 0, 8);
    struct buf b[6] = {{HDR, 4, false},       {HDR + 4, 12, false},      {DATA, 100, true},
                       {DATA + 100, 400, true}, {DATA + 500, 12, true}, {STATUS, 1, true}};
    memset(G(vm, DATA), 0, 512);
    post(&q, b, 6);
    notify(&q);
    CHECK(*G(vm, STATUS) == 0);
    CHECK(memcmp(G(vm, DATA), pattern + 8 * 512, 512) == 0);
  }
  /* no interrupt when the driver suppresses it */
  {
    dq_avail(&q)->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    int before = irq_count[GUEST_MMIO_FIRST_IRQ];
    blk_req(&q, 4, 0, 0, false, &st, &ul);
    CHECK(irq_count[GUEST_MMIO_FIRST_IRQ] == before);
    dq_avail(&q)->flags = 0;
  }
  CHECK(virtio_error_count(vm) == 0);
  CHECK(virtio_last_error(vm) == NULL);

  /* the ring wraps around many times */
  for (int i = 0; i < 40; i++) {
    blk_req(&q, 0, (uint64_t)(i % 100), 512, true, &st, &ul);
    CHECK(st == 0);
  }
  CHECK(memcmp(G(vm, DATA), pattern + 39 * 512, 512) == 0);

  /* snapshot round trip */
  {
    size_t n = virtio_state_size(vm);
    uint8_t *blob = malloc(n);
    virtio_save(vm, blob);
    uint16_t used_before = dq_used(&q)->idx;
    wr(m, 0x70, 0); /* reset wipes the queue */
    CHECK(rd(m, 0x44) == 0);
    CHECK(virtio_load(vm, blob, n) == 0);
    CHECK(rd(m, 0x70) == 15);
    CHECK(rd(m, 0x44) == 1);
    blk_req(&q, 0, 1, 512, true, &st, &ul); /* continues where it was */
    CHECK(st == 0);
    CHECK(dq_used(&q)->idx == (uint16_t)(used_before + 1));
    CHECK(virtio_load(vm, blob, n - 1) == -EINVAL);
    blob[16] = 3; /* device id */
    CHECK(virtio_load(vm, blob, n) == -EINVAL);
    blob[16] = 2;
    blob[8] = 2; /* count */
    CHECK(virtio_load(vm, blob, n) == -EINVAL);
    free(blob);
  }

  char cmd[256] = "console=ttyS0";
  CHECK(virtio_cmdline(vm, cmd, sizeof cmd) == 0);
  CHECK(strcmp(cmd, "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5") == 0);
  char small[20] = "console=ttyS0";
  CHECK(virtio_cmdline(vm, small, sizeof small) == -ENAMETOOLONG);
  CHECK(strcmp(small, "console=ttyS0") == 0);

  free_vm(vm);

  /* read-only device: OUT fails, IN works, RO offered */
  printf("virtio-blk: read-only\n");
  vm = make_vm();
  m = add_blk(vm, fd, true, NULL);
  CHECK(rd(m, 0x10) & (1u << 5));
  blk_start(&q, vm, m);
  blk_req(&q, 1, 0, 512, false, &st, &ul);
  CHECK(st == 1);
  CHECK(pread(fd, back, 512, 0) == 512 && memcmp(back, pattern, 512) == 0);
  blk_req(&q, 0, 0, 512, true, &st, &ul);
  CHECK(st == 0);
  free_vm(vm);
  close(fd);
}

/* Feature negotiation and register corner cases. */
static void test_transport(int fd) {
  printf("transport: features, widths, selectors\n");
  struct vm *vm = make_vm();
  struct mmio_dev *m = add_blk(vm, fd, false, "x");
  /* an unoffered feature (bit 10) and a missing VERSION_1 are refused */
  CHECK(driver_init(m, 1u << 10, 1) == 3);
  CHECK(driver_init(m, 1u << 9, 0) == 3);
  CHECK(driver_init(m, 1u << 9, 1 | 2) == 3); /* bit 33 not offered */
  CHECK(driver_init(m, 1u << 9, 1) == 11);
  /* 16-bit register access: read 0, write ignored */
  {
    uint16_t v = 0xffff;
    pthread_mutex_lock(&m->lock);
    m->read(m->opaque, 0, (uint8_t *)&v, 2);
    pthread_mutex_unlock(&m->lock);
    CHECK(v == 0);
  }
  /* a queue that does not exist */
  wr(m, 0x30, 5);
  CHECK(rd(m, 0x34) == 0);
  wr(m, 0x44, 1);
  CHECK(rd(m, 0x44) == 0);
  wr(m, 0x50, 5); /* notify on it: ignored */
  wr(m, 0x50, 0xffffffff);
  CHECK(virtio_error_count(vm) == 0);
  /* notify before DRIVER_OK does nothing; DRIVER_OK then serves the request */
  struct dq q;
  CHECK(queue_setup(&q, vm, m, 0, 4, 0x1000, 0x2000, 0x3000) == 1);
  put_hdr(vm, 4, 0);
  *G(vm, STATUS) = 0xff;
  struct buf b[2] = {{HDR, 16, false}, {STATUS, 1, true}};
  post(&q, b, 2);
  notify(&q);
  CHECK(dq_used(&q)->idx == 0);
  wr(m, 0x70, 15);
  CHECK(dq_used(&q)->idx == 1 && *G(vm, STATUS) == 0);
  /* ring moves while ready are ignored */
  wr(m, 0x80, 0x5000);
  wr(m, 0x38, 2);
  {
    struct virtio_dev *d = vm->virtio[0];
    CHECK(d->vq[0].desc_gpa == 0x1000 && d->vq[0].num == 4);
  }
  free_vm(vm);
}

/* Each hostile pattern on a fresh device: NEEDS_RESET, config interrupt, count, message. */
static void test_hostile(int fd) {
  printf("hostile guests\n");
  struct vm *vm = make_vm();
  struct mmio_dev *m = add_blk(vm, fd, false, "x");
  struct dq q;
  uint64_t errs = 0;
  uint8_t *status = G(vm, STATUS);

  /* 1. descriptor loop: 0 -> 1 -> 0 */
  blk_start(&q, vm, m);
  put_hdr(vm, 0, 0);
  {
    struct virtq_desc *d = dq_desc(&q, 0);
    d[0] = (struct virtq_desc){HDR, 16, VIRTQ_DESC_F_NEXT, 1};
    d[1] = (struct virtq_desc){DATA, 512, VIRTQ_DESC_F_NEXT, 0};
    dq_avail(&q)->ring[0] = 0;
    dq_avail(&q)->idx = 1;
    notify(&q);
  }
  expect_failure(vm, m, "loop", errs++);
  CHECK(dq_used(&q)->idx == 0);
  /* further notifies do nothing */
  notify(&q);
  CHECK(virtio_error_count(vm) == errs);
  /* reset clears NEEDS_RESET and the queues */
  wr(m, 0x70, 0);
  CHECK(rd(m, 0x70) == 0);
  CHECK(rd(m, 0x44) == 0);

  /* 2. buffer outside RAM */
  blk_start(&q, vm, m);
  {
    struct buf b[3] = {{HDR, 16, false}, {0xffff0000ull, 512, true}, {STATUS, 1, true}};
    post(&q, b, 3);
    notify(&q);
  }
  expect_failure(vm, m, "outside guest RAM", errs++);
  wr(m, 0x70, 0);

  /* 2b. buffer straddling the end of RAM */
  blk_start(&q, vm, m);
  {
    struct buf b[3] = {{HDR, 16, false}, {RAM_SIZE - 256, 512, true}, {STATUS, 1, true}};
    post(&q, b, 3);
    notify(&q);
  }
  expect_failure(vm, m, "outside guest RAM", errs++);
  wr(m, 0x70, 0);

  /* 3. huge length */
  blk_start(&q, vm, m);
  {
    struct buf b[3] = {{HDR, 16, false}, {DATA, 0xffffffffu, true}, {STATUS, 1, true}};
    post(&q, b, 3);
    notify(&q);
  }
  expect_failure(vm, m, "outside guest RAM", errs++);
  wr(m, 0x70, 0);

  /* 4. queue size 3 */
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 3, 0x1000, 0x2000, 0x3000) == 0);
  expect_failure(vm, m, "queue size", errs++);
  wr(m, 0x70, 0);
  /* queue size 512 (> QueueNumMax) and 0 */
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 512, 0x1000, 0x2000, 0x3000) == 0);
  expect_failure(vm, m, "queue size", errs++);
  wr(m, 0x70, 0);
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 0, 0x1000, 0x2000, 0x3000) == 0);
  expect_failure(vm, m, "queue size", errs++);
  wr(m, 0x70, 0);

  /* 5. ring outside RAM (used ring straddles the end) and in the MMIO hole */
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 256, 0x1000, 0x2000, RAM_SIZE - 1024) == 0);
  expect_failure(vm, m, "outside guest RAM", errs++);
  wr(m, 0x70, 0);
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 8, 0xfffffffffffff000ull, 0x2000, 0x3000) == 0);
  expect_failure(vm, m, "outside guest RAM", errs++);
  wr(m, 0x70, 0);
  driver_init(m, 1u << 9, 1);
  CHECK(queue_setup(&q, vm, m, 0, 8, 0x1008, 0x2000, 0x3000) == 0);
  expect_failure(vm, m, "misaligned", errs++);
  wr(m, 0x70, 0);

  /* 6. avail index jumps ahead */
  blk_start(&q, vm, m);
  dq_avail(&q)->idx = 9;
  notify(&q);
  expect_failure(vm, m, "avail index", errs++);
  wr(m, 0x70, 0);

  /* 7. head out of range, next out of range */
  blk_start(&q, vm, m);
  dq_avail(&q)->ring[0] = 8;
  dq_avail(&q)->idx = 1;
  notify(&q);
  expect_failure(vm, m, "out of range", errs++);
  wr(m, 0x70, 0);
  blk_start(&q, vm, m);
  dq_desc(&q, 0)[0] = (struct virtq_desc){HDR, 16, VIRTQ_DESC_F_NEXT, 200};
  dq_avail(&q)->ring[0] = 0;
  dq_avail(&q)->idx = 1;
  notify(&q);
  expect_failure(vm, m, "out of range", errs++);
  wr(m, 0x70, 0);

  /* 8. indirect descriptor (not offered) */
  blk_start(&q, vm, m);
  dq_desc(&q, 0)[0] = (struct virtq_desc){HDR, 16, VIRTQ_DESC_F_INDIRECT, 0};
  dq_avail(&q)->ring[0] = 0;
  dq_avail(&q)->idx = 1;
  notify(&q);
  expect_failure(vm, m, "indirect", errs++);
  wr(m, 0x70, 0);

  /* 9. malformed requests: no header, no status, readable after writable */
  blk_start(&q, vm, m);
  {
    struct buf b[2] = {{HDR, 8, false}, {STATUS, 1, true}};
    post(&q, b, 2);
    notify(&q);
  }
  expect_failure(vm, m, "header", errs++);
  wr(m, 0x70, 0);
  blk_start(&q, vm, m);
  {
    struct buf b[2] = {{HDR, 16, false}, {STATUS, 1, false}};
    post(&q, b, 2);
    notify(&q);
  }
  expect_failure(vm, m, "status", errs++);
  wr(m, 0x70, 0);
  blk_start(&q, vm, m);
  {
    struct buf b[3] = {{HDR, 16, false}, {DATA, 512, true}, {STATUS, 1, false}};
    post(&q, b, 3);
    notify(&q);
  }
  expect_failure(vm, m, "readable descriptor after", errs++);
  wr(m, 0x70, 0);

  /* 10. a good request after all that works */
  blk_start(&q, vm, m);
  uint8_t st;
  uint32_t ul;
  blk_req(&q, 0, 0, 512, true, &st, &ul);
  CHECK(st == 0 && ul == 513);
  CHECK(!(rd(m, 0x70) & VIRTIO_STATUS_NEEDS_RESET));
  CHECK(virtio_error_count(vm) == errs);
  (void)status;

  /* 11. the driver cannot set NEEDS_RESET, nor clear it */
  wr(m, 0x70, 15 | 0x40);
  CHECK(rd(m, 0x70) == 15);
  free_vm(vm);
}

/* ---- virtio-console -------------------------------------------------------------------- */

static void test_console(void) {
  printf("virtio-console: receive, flow control, transmit, EOF\n");
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  struct vm *vm = make_vm();
  /* a blk device first so the console is slot 1 */
  char path[] = "/tmp/virtq-unit-XXXXXX";
  int bfd = mkstemp(path);
  unlink(path);
  CHECK(ftruncate(bfd, 4096) == 0);
  add_blk(vm, bfd, false, "b");
  CHECK(virtio_console_add(vm, sv[0]) == 0);
  struct mmio_dev *m = vm->mmio[1];
  CHECK(m->base == GUEST_MMIO_BASE + GUEST_MMIO_STRIDE);
  CHECK(rd(m, 8) == 3);
  CHECK(vm->nwatch == 1);
  io_ready_fn cb = vm->watch[0].fn;
  void *cbarg = vm->watch[0].opaque;
  const int gsi = GUEST_MMIO_FIRST_IRQ + 1;

  char cmd[256] = "";
  CHECK(virtio_cmdline(vm, cmd, sizeof cmd) == 0);
  CHECK(strcmp(cmd, " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6") == 0);

  /* input before the driver is ready: the watch is turned off, nothing is read */
  CHECK(write(sv[1], "hello world!", 12) == 12);
  cb(cbarg);
  CHECK(!vm->watch[0].enabled);

  CHECK(driver_init(m, 0, 1) == 11);
  struct dq rx, tx;
  CHECK(queue_setup(&rx, vm, m, 0, 4, 0x1000, 0x2000, 0x3000) == 1);
  CHECK(queue_setup(&tx, vm, m, 1, 4, 0x4000, 0x5000, 0x6000) == 1);
  struct buf rb = {0x30000, 8, true};
  post(&rx, &rb, 1);
  notify(&rx); /* before DRIVER_OK: nothing */
  wr(m, 0x70, 15);
  CHECK(vm->watch[0].enabled);
  int irq = irq_count[gsi];
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 1);
  CHECK(dq_used(&rx)->ring[0].len == 8);
  CHECK(memcmp(G(vm, 0x30000), "hello wo", 8) == 0);
  CHECK(irq_count[gsi] == irq + 1);
  CHECK(!vm->watch[0].enabled); /* out of buffers */
  /* calling again with no buffers reads nothing */
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 1);

  struct buf rb2 = {0x31000, 64, true};
  post(&rx, &rb2, 1);
  notify(&rx);
  CHECK(vm->watch[0].enabled);
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 2);
  CHECK(dq_used(&rx)->ring[1].len == 4);
  CHECK(memcmp(G(vm, 0x31000), "rld!", 4) == 0);
  /* EAGAIN: buffer kept, watch stays on */
  struct buf rb3 = {0x32000, 64, true};
  post(&rx, &rb3, 1);
  notify(&rx);
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 2);
  CHECK(vm->watch[0].enabled);
  CHECK(write(sv[1], "more", 4) == 4);
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 3);
  CHECK(memcmp(G(vm, 0x32000), "more", 4) == 0);

  /* transmit: two buffers in one chain */
  memcpy(G(vm, 0x40000), "ping ", 5);
  memcpy(G(vm, 0x40100), "pong", 4);
  struct buf tb[2] = {{0x40000, 5, false}, {0x40100, 4, false}};
  post(&tx, tb, 2);
  irq = irq_count[gsi];
  notify(&tx);
  CHECK(dq_used(&tx)->idx == 1);
  CHECK(irq_count[gsi] == irq + 1);
  char got[16] = {0};
  CHECK(read(sv[1], got, sizeof got) == 9);
  CHECK(memcmp(got, "ping pong", 9) == 0);

  /* hostile transmit: descriptor loop */
  uint64_t errs = virtio_error_count(vm);
  dq_desc(&tx, 2)[0] = (struct virtq_desc){0x40000, 5, VIRTQ_DESC_F_NEXT, 3};
  dq_desc(&tx, 3)[0] = (struct virtq_desc){0x40000, 5, VIRTQ_DESC_F_NEXT, 2};
  dq_avail(&tx)->ring[tx.avail_idx % 4] = 2;
  tx.avail_idx++;
  dq_avail(&tx)->idx = tx.avail_idx;
  notify(&tx);
  expect_failure(vm, m, "virtio-console: descriptor loop", errs);
  cb(cbarg); /* broken: receive stops too */
  CHECK(!vm->watch[0].enabled);
  wr(m, 0x70, 0);

  /* again, then the host closes its end */
  CHECK(driver_init(m, 0, 1) == 11);
  CHECK(queue_setup(&rx, vm, m, 0, 4, 0x1000, 0x2000, 0x3000) == 1);
  CHECK(queue_setup(&tx, vm, m, 1, 4, 0x4000, 0x5000, 0x6000) == 1);
  wr(m, 0x70, 15);
  post(&rx, &rb, 1);
  notify(&rx);
  CHECK(vm->watch[0].enabled);
  CHECK(write(sv[1], "bye", 3) == 3);
  close(sv[1]);
  cb(cbarg);
  CHECK(dq_used(&rx)->idx == 1 && memcmp(G(vm, 0x30000), "bye", 3) == 0);
  CHECK(!vm->watch[0].enabled); /* no buffers left */
  post(&rx, &rb2, 1);
  notify(&rx);
  CHECK(vm->watch[0].enabled);
  cb(cbarg); /* read() == 0 */
  CHECK(!vm->watch[0].enabled);
  CHECK(dq_used(&rx)->idx == 1); /* the buffer stays with the device */
  post(&rx, &rb3, 1);
  notify(&rx);
  CHECK(!vm->watch[0].enabled); /* never again */
  CHECK(virtio_error_count(vm) == errs + 1);

  /* snapshot mismatch: a blob from a VM with only the blk device */
  {
    struct vm *other = make_vm();
    add_blk(other, bfd, false, "b");
    size_t n = virtio_state_size(other);
    uint8_t *blob = malloc(n);
    virtio_save(other, blob);
    CHECK(virtio_load(vm, blob, n) == -EINVAL);
    free(blob);
    free_vm(other);
  }
  free_vm(vm);
  close(sv[0]);
  close(bfd);
}


/* An I/O thread and a writer race the guest: every byte arrives, in order. */
#define STREAM_BYTES 200000
static int stream_fd;
static volatile bool stream_done;

static void *stream_writer(void *arg) {
  uint8_t chunk[777];
  size_t sent = 0;
  while (sent < STREAM_BYTES) {
    size_t n = sizeof chunk;
    if (n > STREAM_BYTES - sent) n = STREAM_BYTES - sent;
    for (size_t i = 0; i < n; i++) chunk[i] = (uint8_t)((sent + i) * 31 + (sent + i) / 251);
    ssize_t w = send(stream_fd, chunk, n, MSG_NOSIGNAL);
    if (w <= 0) break;
    sent += (size_t)w;
  }
  return NULL;
}

static void *stream_io_thread(void *arg) {
  struct vm *vm = arg;
  while (!__atomic_load_n(&stream_done, __ATOMIC_ACQUIRE)) {
    if (__atomic_load_n(&vm->watch[0].enabled, __ATOMIC_ACQUIRE)) {
      struct pollfd pfd = {.fd = vm->watch[0].fd, .events = POLLIN};
      if (poll(&pfd, 1, 1) > 0) vm->watch[0].fn(vm->watch[0].opaque);
    } else {
      usleep(20);
    }
  }
  return NULL;
}

static void test_console_stream(void) {
  printf("virtio-console: threaded stream, small buffers\n");
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  struct vm *vm = make_vm();
  CHECK(virtio_console_add(vm, sv[0]) == 0);
  struct mmio_dev *m = vm->mmio[0];
  CHECK(driver_init(m, 0, 1) == 11);
  struct dq rx, tx;
  CHECK(queue_setup(&rx, vm, m, 0, 8, 0x1000, 0x2000, 0x3000) == 1);
  CHECK(queue_setup(&tx, vm, m, 1, 8, 0x4000, 0x5000, 0x6000) == 1);
  wr(m, 0x70, 15);
  stream_fd = sv[1];
  stream_done = false;
  pthread_t wt, it;
  pthread_create(&wt, NULL, stream_writer, NULL);
  pthread_create(&it, NULL, stream_io_thread, vm);
  srand(99);
  for (int i = 0; i < 8; i++) {
    struct buf b = {0x50000 + (uint64_t)i * 128, 1 + (uint32_t)(rand() % 100), true};
    post(&rx, &b, 1);
  }
  notify(&rx);
  size_t got = 0;
  uint16_t seen = 0;
  bool ok = true;
  time_t deadline = time(NULL) + 60;
  while (got < STREAM_BYTES && time(NULL) < deadline) {
    uint16_t idx = __atomic_load_n(&dq_used(&rx)->idx, __ATOMIC_ACQUIRE);
    if (idx == seen) {
      sched_yield();
      continue;
    }
    while (seen != idx) {
      struct virtq_used_elem e = dq_used(&rx)->ring[seen % 8];
      struct virtq_desc *d = dq_desc(&rx, (uint16_t)e.id);
      if (e.id >= 8 || e.len > d->len) {
        ok = false;
        break;
      }
      for (uint32_t k = 0; k < e.len; k++, got++)
        if (G(vm, d->addr)[k] != (uint8_t)(got * 31 + got / 251)) ok = false;
      seen++;
      /* give the same buffer back with a new size */
      d->len = 1 + (uint32_t)(rand() % 100);
      struct virtq_avail *a = dq_avail(&rx);
      a->ring[rx.avail_idx % 8] = (uint16_t)e.id;
      rx.avail_idx++;
      __atomic_store_n(&a->idx, rx.avail_idx, __ATOMIC_RELEASE);
      notify(&rx);
    }
    if (!ok) break;
  }
  CHECK(ok);
  CHECK(got == STREAM_BYTES);
  __atomic_store_n(&stream_done, true, __ATOMIC_RELEASE);
  shutdown(sv[1], SHUT_RDWR); /* unblocks the writer if we gave up early */
  pthread_join(wt, NULL);
  pthread_join(it, NULL);
  CHECK(virtio_error_count(vm) == 0);
  printf("  %zu bytes received\n", got);
  free_vm(vm);
  close(sv[0]);
  close(sv[1]);
}

/* Slot exhaustion. */
static void test_full(int fd) {
  printf("slots: -ENOSPC when full\n");
  struct vm *vm = make_vm();
  for (int i = 0; i < KVM_MAX_MMIO_DEVS; i++) CHECK(virtio_blk_add(vm, fd, true, NULL) == 0);
  CHECK(virtio_blk_add(vm, fd, true, NULL) == -ENOSPC);
  CHECK(virtio_console_add(vm, fd) == -ENOSPC);
  CHECK(vm->nvirtio == KVM_MAX_MMIO_DEVS);
  char cmd[64] = "x";
  CHECK(virtio_cmdline(vm, cmd, sizeof cmd) == -ENAMETOOLONG);
  CHECK(strcmp(cmd, "x") == 0);
  free_vm(vm);
}

/* Random garbage in the rings must never crash or hang. */
static void test_fuzz(int fd) {
  printf("fuzz: random rings\n");
  struct vm *vm = make_vm();
  struct mmio_dev *m = add_blk(vm, fd, false, "x");
  struct dq q;
  srand(1234);
  for (int round = 0; round < 2000; round++) {
    blk_start(&q, vm, m);
    uint8_t *p = G(vm, 0x1000);
    for (int i = 0; i < 0x3000; i++) p[i] = (uint8_t)rand();
    struct virtq_desc *d = dq_desc(&q, 0);
    for (int i = 0; i < 8; i++) {
      if (rand() % 2) d[i].addr = (uint64_t)(rand() % (RAM_SIZE * 2));
      if (rand() % 2) d[i].len = (uint32_t)(rand() % 4096);
      if (rand() % 2) d[i].next = (uint16_t)(rand() % 10);
      if (rand() % 2) d[i].flags &= 3;
    }
    dq_avail(&q)->idx = (uint16_t)(rand() % 12);
    for (int i = 0; i < 8; i++) dq_avail(&q)->ring[i] = (uint16_t)(rand() % 9);
    notify(&q);
    notify(&q);
    wr(m, 0x70, 0);
  }
  printf("  %llu errors detected over 2000 rounds\n", (unsigned long long)virtio_error_count(vm));
  free_vm(vm);
}

int main(void) {
  test_blk();
  char path[] = "/tmp/virtq-unit-XXXXXX";
  int fd = mkstemp(path);
  unlink(path);
  CHECK(ftruncate(fd, 64 * 1024) == 0);
  test_transport(fd);
  test_hostile(fd);
  test_console();
  test_console_stream();
  test_full(fd);
  test_fuzz(fd);
  close(fd);
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
