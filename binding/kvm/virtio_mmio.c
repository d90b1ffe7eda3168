/*
 * kvm/virtio_mmio.c: the virtio-mmio transport, version 2 (virtio 1.2, 4.2.2),
 * device registration, the kernel command line, snapshots and error reports.
 *
 * Registers are 32-bit accesses; other widths and unknown offsets read 0 and
 * ignore writes. Config space (0x100 up) takes any width.
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "virtio.h"

enum {
  REG_MAGIC = 0x000,
  REG_VERSION = 0x004,
  REG_DEVICE_ID = 0x008,
  REG_VENDOR_ID = 0x00c,
  REG_DEVICE_FEATURES = 0x010,
  REG_DEVICE_FEATURES_SEL = 0x014,
  REG_DRIVER_FEATURES = 0x020,
  REG_DRIVER_FEATURES_SEL = 0x024,
  REG_QUEUE_SEL = 0x030,
  REG_QUEUE_NUM_MAX = 0x034,
  REG_QUEUE_NUM = 0x038,
  REG_QUEUE_READY = 0x044,
  REG_QUEUE_NOTIFY = 0x050,
  REG_INTERRUPT_STATUS = 0x060,
  REG_INTERRUPT_ACK = 0x064,
  REG_STATUS = 0x070,
  REG_QUEUE_DESC_LOW = 0x080,
  REG_QUEUE_DESC_HIGH = 0x084,
  REG_QUEUE_DRIVER_LOW = 0x090,
  REG_QUEUE_DRIVER_HIGH = 0x094,
  REG_QUEUE_DEVICE_LOW = 0x0a0,
  REG_QUEUE_DEVICE_HIGH = 0x0a4,
  REG_SHM_SEL = 0x0ac,
  REG_SHM_LEN_LOW = 0x0b0,
  REG_SHM_LEN_HIGH = 0x0b4,
  REG_SHM_BASE_LOW = 0x0b8,
  REG_SHM_BASE_HIGH = 0x0bc,
  REG_CONFIG_GENERATION = 0x0fc,
};

static uint64_t error_seq_counter; /* atomic, orders errors across devices */

/* ---- errors and interrupts ---------------------------------------------------- */

void virtio_dev_interrupt(struct virtio_dev *d, uint32_t isr_bits) {
  d->isr |= isr_bits;
  vm_irq_raise(d->vm, d->gsi);
}

void virtio_dev_fail(struct virtio_dev *d, const char *fmt, ...) {
  if (d->broken) return; /* already stopped; one report per episode */
  d->broken = true;
  d->status |= VIRTIO_STATUS_NEEDS_RESET;
  char msg[VIRTIO_ERROR_MAX];
  int n = snprintf(msg, sizeof msg, "%s: ", d->ops->name);
  if (n < 0 || (size_t)n >= sizeof msg) n = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + n, sizeof msg - n, fmt, ap);
  va_end(ap);
  /* readers may look without the lock: the last byte stays NUL */
  memcpy(d->last_error, msg, sizeof msg);
  d->last_error[sizeof d->last_error - 1] = 0;
  __atomic_add_fetch(&d->errors, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&d->error_seq, __atomic_add_fetch(&error_seq_counter, 1, __ATOMIC_RELAXED),
                   __ATOMIC_RELEASE);
  virtio_dev_interrupt(d, VIRTIO_ISR_CONFIG);
}

bool virtio_dev_queue_live(const struct virtio_dev *d, int qi) {
  return qi >= 0 && qi < d->ops->nqueues && !d->broken &&
         (d->status & VIRTIO_STATUS_DRIVER_OK) && d->vq[qi].ready;
}

uint64_t virtio_error_count(struct vm *vm) {
  uint64_t n = 0;
  for (int i = 0; i < vm->nvirtio; i++)
    n += __atomic_load_n(&vm->virtio[i]->errors, __ATOMIC_RELAXED);
  return n;
}

const char *virtio_last_error(struct vm *vm) {
  struct virtio_dev *best = 0;
  uint64_t best_seq = 0;
  for (int i = 0; i < vm->nvirtio; i++) {
    uint64_t seq = __atomic_load_n(&vm->virtio[i]->error_seq, __ATOMIC_ACQUIRE);
    if (seq > best_seq) {
      best_seq = seq;
      best = vm->virtio[i];
    }
  }
  return best ? best->last_error : NULL;
}

int64_t virtio_dev_error(struct vm *vm, int index, char *buf, size_t cap) {
  if (index < 0 || index >= vm->nvirtio) return -1;
  struct virtio_dev *d = vm->virtio[index];
  pthread_mutex_lock(&d->mmio.lock);
  if (buf && cap) snprintf(buf, cap, "%s", d->last_error);
  int64_t n = (int64_t)d->errors;
  pthread_mutex_unlock(&d->mmio.lock);
  return n;
}

/* ---- the register file ----------------------------------------------------------- */

static void device_reset(struct virtio_dev *d) {
  d->status = 0;
  d->driver_features = 0;
  d->device_features_sel = 0;
  d->driver_features_sel = 0;
  d->queue_sel = 0;
  d->isr = 0;
  d->broken = false;
  for (int i = 0; i < VIRTIO_MAX_QUEUES; i++) virtq_reset(&d->vq[i]);
  if (d->ops->reset) d->ops->reset(d);
}

static struct virtq *sel_queue(struct virtio_dev *d) {
  return d->queue_sel < (uint32_t)d->ops->nqueues ? &d->vq[d->queue_sel] : NULL;
}

static uint32_t reg_read(struct virtio_dev *d, uint64_t off) {
  struct virtq *q = sel_queue(d);
  switch (off) {
  case REG_MAGIC: return VIRTIO_MMIO_MAGIC;
  case REG_VERSION: return VIRTIO_MMIO_VERSION;
  case REG_DEVICE_ID: return d->ops->device_id;
  case REG_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
  case REG_DEVICE_FEATURES:
    if (d->device_features_sel == 0) return (uint32_t)d->device_features;
    if (d->device_features_sel == 1) return (uint32_t)(d->device_features >> 32);
    return 0;
  case REG_QUEUE_NUM_MAX: return q ? VIRTQ_MAX_SIZE : 0;
  case REG_QUEUE_READY: return q && q->ready ? 1 : 0;
  case REG_INTERRUPT_STATUS: return d->isr;
  case REG_STATUS: return d->status;
  case REG_SHM_LEN_LOW:
  case REG_SHM_LEN_HIGH: return 0xffffffffu; /* no shared memory regions */
  case REG_SHM_BASE_LOW:
  case REG_SHM_BASE_HIGH: return 0xffffffffu;
  case REG_CONFIG_GENERATION: return d->config_generation;
  default: return 0;
  }
}

static void set_status(struct virtio_dev *d, uint32_t val) {
  val &= 0xff;
  if (val == 0) {
    device_reset(d);
    return;
  }
  uint32_t old = d->status;
  if ((val & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
    /* only what we offer, and never legacy */
    if ((d->driver_features & ~d->device_features) ||
        !(d->driver_features & (1ULL << VIRTIO_F_VERSION_1)))
      val &= ~VIRTIO_STATUS_FEATURES_OK;
  }
  /* NEEDS_RESET stays until a reset; the driver cannot set it */
  val = (val & ~VIRTIO_STATUS_NEEDS_RESET) | (old & VIRTIO_STATUS_NEEDS_RESET);
  d->status = val;
  if ((val & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK) && !d->broken) {
    if (d->ops->driver_ok) d->ops->driver_ok(d);
    /* buffers made available before DRIVER_OK were not processed yet */
    for (int i = 0; i < d->ops->nqueues; i++)
      if (virtio_dev_queue_live(d, i)) d->ops->notify(d, i);
  }
}

static void set_addr(struct virtq *q, uint64_t *field, bool high, uint32_t val) {
  if (!q || q->ready) return; /* the driver must not move a live ring */
  if (high)
    *field = (*field & 0xffffffffULL) | ((uint64_t)val << 32);
  else
    *field = (*field & ~0xffffffffULL) | val;
}

static void reg_write(struct virtio_dev *d, uint64_t off, uint32_t val) {
  struct virtq *q = sel_queue(d);
  switch (off) {
  case REG_DEVICE_FEATURES_SEL: d->device_features_sel = val; break;
  case REG_DRIVER_FEATURES:
    if (d->status & VIRTIO_STATUS_FEATURES_OK) break; /* too late */
    if (d->driver_features_sel == 0)
      d->driver_features = (d->driver_features & ~0xffffffffULL) | val;
    else if (d->driver_features_sel == 1)
      d->driver_features = (d->driver_features & 0xffffffffULL) | ((uint64_t)val << 32);
    break;
  case REG_DRIVER_FEATURES_SEL: d->driver_features_sel = val; break;
  case REG_QUEUE_SEL: d->queue_sel = val; break;
  case REG_QUEUE_NUM:
    if (q && !q->ready) q->num = val;
    break;
  case REG_QUEUE_READY:
    if (!q) break;
    if (!(val & 1)) {
      q->ready = false;
      break;
    }
    if (q->ready) break;
    {
      const char *why = virtq_map(q, &d->vm->mem);
      if (why) {
        virtio_dev_fail(d, "%s (num %u) in queue %u", why, q->num, d->queue_sel);
        break;
      }
    }
    q->ready = true;
    break;
  case REG_QUEUE_NOTIFY:
    if (val < (uint32_t)d->ops->nqueues && virtio_dev_queue_live(d, (int)val))
      d->ops->notify(d, (int)val);
    break;
  case REG_INTERRUPT_ACK: d->isr &= ~val; break;
  case REG_STATUS: set_status(d, val); break;
  case REG_QUEUE_DESC_LOW: set_addr(q, q ? &q->desc_gpa : 0, false, val); break;
  case REG_QUEUE_DESC_HIGH: set_addr(q, q ? &q->desc_gpa : 0, true, val); break;
  case REG_QUEUE_DRIVER_LOW: set_addr(q, q ? &q->avail_gpa : 0, false, val); break;
  case REG_QUEUE_DRIVER_HIGH: set_addr(q, q ? &q->avail_gpa : 0, true, val); break;
  case REG_QUEUE_DEVICE_LOW: set_addr(q, q ? &q->used_gpa : 0, false, val); break;
  case REG_QUEUE_DEVICE_HIGH: set_addr(q, q ? &q->used_gpa : 0, true, val); break;
  default: break;
  }
}

static void mmio_read(void *opaque, uint64_t off, uint8_t *data, uint32_t len) {
  struct virtio_dev *d = opaque;
  if (off >= VIRTIO_MMIO_CONFIG) {
    uint64_t c = off - VIRTIO_MMIO_CONFIG;
    for (uint32_t i = 0; i < len; i++)
      data[i] = c + i < d->config_size ? d->config[c + i] : 0;
    return;
  }
  if (len != 4 || (off & 3)) {
    memset(data, 0, len);
    return;
  }
  uint32_t v = htole32(reg_read(d, off));
  memcpy(data, &v, 4);
}

static void mmio_write(void *opaque, uint64_t off, const uint8_t *data, uint32_t len) {
  struct virtio_dev *d = opaque;
  if (off >= VIRTIO_MMIO_CONFIG) return; /* no writable config fields offered */
  if (len != 4 || (off & 3)) return;
  uint32_t v;
  memcpy(&v, data, 4);
  reg_write(d, off, le32toh(v));
}

/* ---- devices ------------------------------------------------------------------- */

int virtio_dev_add(struct vm *vm, const struct virtio_ops *ops, uint64_t features,
                   void *backend, struct virtio_dev **out) {
  if (vm->nvirtio >= KVM_MAX_MMIO_DEVS) return -ENOSPC;
  int index = vm->nvirtio;
  int gsi = GUEST_MMIO_FIRST_IRQ + index;
  if (gsi >= (int)(sizeof vm->irqfds / sizeof vm->irqfds[0])) return -ENOSPC;
  struct virtio_dev *d = calloc(1, sizeof *d);
  if (!d) return -ENOMEM;
  d->vm = vm;
  d->ops = ops;
  d->backend = backend;
  d->index = index;
  d->gsi = gsi;
  d->device_features = (features & 0xffffffffULL) | (1ULL << VIRTIO_F_VERSION_1);
  d->mmio.base = GUEST_MMIO_BASE + (uint64_t)index * GUEST_MMIO_STRIDE;
  d->mmio.size = VIRTIO_MMIO_SIZE;
  d->mmio.opaque = d;
  d->mmio.read = mmio_read;
  d->mmio.write = mmio_write;
  for (int q = 0; q < VIRTIO_MAX_QUEUES; q++) d->notify[q] = (struct virtio_notify){.d = d, .qi = q, .fd = -1};
  int r = pthread_mutex_init(&d->mmio.lock, NULL);
  if (r) {
    free(d);
    return -r;
  }
  r = vm_add_mmio(vm, &d->mmio);
  if (r < 0) {
    pthread_mutex_destroy(&d->mmio.lock);
    free(d);
    return r;
  }
  vm->virtio[vm->nvirtio++] = d;
  *out = d;
  return 0;
}

void virtio_destroy_all(struct vm *vm) {
  for (int i = 0; i < vm->nvirtio; i++) {
    struct virtio_dev *d = vm->virtio[i];
    if (!d) continue;
    if (d->ops->destroy) d->ops->destroy(d);
    for (int q = 0; q < VIRTIO_MAX_QUEUES; q++)
      if (d->notify[q].fd >= 0) close(d->notify[q].fd);
    pthread_mutex_destroy(&d->mmio.lock);
    free(d);
    vm->virtio[i] = NULL;
  }
  vm->nvirtio = 0;
}

int virtio_cmdline(struct vm *vm, char *cmdline, size_t cap) {
  size_t len = strnlen(cmdline, cap);
  if (len >= cap) return -ENAMETOOLONG;
  size_t start = len;
  for (int i = 0; i < vm->nvirtio; i++) {
    struct virtio_dev *d = vm->virtio[i];
    int n = snprintf(cmdline + len, cap - len, " virtio_mmio.device=4K@0x%llx:%d",
                     (unsigned long long)d->mmio.base, d->gsi);
    if (n < 0 || (size_t)n >= cap - len) {
      cmdline[start] = 0;
      return -ENAMETOOLONG;
    }
    len += n;
  }
  return 0;
}

/* ---- snapshots ------------------------------------------------------------------- */
/*
 * Blob (little-endian): header { magic "NVIO", version, count, record size },
 * then one fixed-size record per device in slot order.
 */
#define SNAP_MAGIC 0x4f49564eu /* "NVIO" */
#define SNAP_VERSION 1u
#define SNAP_HEADER 16u
#define SNAP_QUEUE 40u /* num, ready, desc, avail, used, last_avail, used_idx, pad */
#define SNAP_DEVICE (48u + VIRTIO_MAX_QUEUES * SNAP_QUEUE)

struct cursor {
  uint8_t *p;
  const uint8_t *r;
};
static void put32(struct cursor *c, uint32_t v) {
  v = htole32(v);
  memcpy(c->p, &v, 4);
  c->p += 4;
}
static void put64(struct cursor *c, uint64_t v) {
  v = htole64(v);
  memcpy(c->p, &v, 8);
  c->p += 8;
}
static uint32_t get32(struct cursor *c) {
  uint32_t v;
  memcpy(&v, c->r, 4);
  c->r += 4;
  return le32toh(v);
}
static uint64_t get64(struct cursor *c) {
  uint64_t v;
  memcpy(&v, c->r, 8);
  c->r += 8;
  return le64toh(v);
}

size_t virtio_state_size(struct vm *vm) {
  return SNAP_HEADER + (size_t)vm->nvirtio * SNAP_DEVICE;
}

void virtio_save(struct vm *vm, void *buf) {
  struct cursor c = {.p = buf};
  put32(&c, SNAP_MAGIC);
  put32(&c, SNAP_VERSION);
  put32(&c, (uint32_t)vm->nvirtio);
  put32(&c, SNAP_DEVICE);
  for (int i = 0; i < vm->nvirtio; i++) {
    struct virtio_dev *d = vm->virtio[i];
    pthread_mutex_lock(&d->mmio.lock);
    put32(&c, d->ops->device_id);          /* 0 */
    put32(&c, d->status);                  /* 4 */
    put32(&c, d->isr);                     /* 8 */
    put32(&c, d->config_generation);       /* 12 */
    put32(&c, d->device_features_sel);     /* 16 */
    put32(&c, d->driver_features_sel);     /* 20 */
    put32(&c, d->queue_sel);               /* 24 */
    put32(&c, d->broken ? 1 : 0);          /* 28 */
    put64(&c, d->driver_features);         /* 32 */
    put32(&c, (uint32_t)d->ops->nqueues);  /* 40 */
    put32(&c, 0);                          /* 44 */
    for (int k = 0; k < VIRTIO_MAX_QUEUES; k++) {
      struct virtq *q = &d->vq[k];
      put32(&c, q->num);
      put32(&c, q->ready ? 1 : 0);
      put64(&c, q->desc_gpa);
      put64(&c, q->avail_gpa);
      put64(&c, q->used_gpa);
      put32(&c, q->last_avail_idx);
      put32(&c, q->used_idx);
    }
    pthread_mutex_unlock(&d->mmio.lock);
  }
}

/* Reads one device record into d (scratch copy); false when it does not fit d. */
static bool load_record(struct cursor *c, const struct virtio_dev *live, struct virtio_dev *d,
                        const struct guest_mem *mem) {
  if (get32(c) != live->ops->device_id) return false;
  d->status = get32(c) & 0xff;
  d->isr = get32(c) & 3;
  d->config_generation = get32(c);
  d->device_features_sel = get32(c);
  d->driver_features_sel = get32(c);
  d->queue_sel = get32(c);
  d->broken = get32(c) & 1;
  d->driver_features = get64(c);
  uint32_t nq = get32(c);
  get32(c);
  if (nq != (uint32_t)live->ops->nqueues) return false;
  if (d->driver_features & ~live->device_features) return false;
  for (int k = 0; k < VIRTIO_MAX_QUEUES; k++) {
    struct virtq *q = &d->vq[k];
    virtq_reset(q);
    q->num = get32(c);
    uint32_t ready = get32(c);
    q->desc_gpa = get64(c);
    q->avail_gpa = get64(c);
    q->used_gpa = get64(c);
    uint32_t la = get32(c), ui = get32(c);
    if (ready > 1 || la > 0xffff || ui > 0xffff) return false;
    q->last_avail_idx = (uint16_t)la;
    q->used_idx = (uint16_t)ui;
    if (ready) {
      if (k >= live->ops->nqueues || virtq_map(q, mem)) return false;
      q->ready = true;
    }
  }
  return true;
}

int virtio_load(struct vm *vm, const void *buf, size_t len) {
  if (!buf || len < SNAP_HEADER) return -EINVAL;
  struct cursor c = {.r = buf};
  if (get32(&c) != SNAP_MAGIC || get32(&c) != SNAP_VERSION) return -EINVAL;
  uint32_t count = get32(&c), recsize = get32(&c);
  if (count != (uint32_t)vm->nvirtio || recsize != SNAP_DEVICE) return -EINVAL;
  if (len != virtio_state_size(vm)) return -EINVAL;

  /* check everything first, then apply: a bad blob changes nothing */
  struct virtio_dev *scratch = calloc(vm->nvirtio ? vm->nvirtio : 1, sizeof *scratch);
  if (!scratch) return -ENOMEM;
  for (int i = 0; i < vm->nvirtio; i++) {
    if (!load_record(&c, vm->virtio[i], &scratch[i], &vm->mem)) {
      free(scratch);
      return -EINVAL;
    }
  }
  for (int i = 0; i < vm->nvirtio; i++) {
    struct virtio_dev *d = vm->virtio[i], *s = &scratch[i];
    pthread_mutex_lock(&d->mmio.lock);
    d->status = s->status;
    d->isr = s->isr;
    d->config_generation = s->config_generation;
    d->device_features_sel = s->device_features_sel;
    d->driver_features_sel = s->driver_features_sel;
    d->queue_sel = s->queue_sel;
    d->broken = s->broken;
    d->driver_features = s->driver_features;
    memcpy(d->vq, s->vq, sizeof d->vq);
    d->restored = true;
    if (d->ops->loaded) d->ops->loaded(d);
    pthread_mutex_unlock(&d->mmio.lock);
  }
  free(scratch);
  return 0;
}

/* ---- notifications through ioeventfd ------------------------------------------------ */

/* On the I/O thread: the guest wrote this queue's index to QueueNotify. */
static void on_notify(void *opaque) {
  struct virtio_notify *n = opaque;
  struct virtio_dev *d = n->d;
  uint64_t count;
  ssize_t r = read(n->fd, &count, sizeof count); /* non-blocking: drains the counter */
  (void)r;
  pthread_mutex_lock(&d->mmio.lock);
  if (n->qi < d->ops->nqueues && virtio_dev_queue_live(d, n->qi)) d->ops->notify(d, n->qi);
  pthread_mutex_unlock(&d->mmio.lock);
}

/*
 * Before the VM's threads start: a QueueNotify write becomes an eventfd signal
 * that KVM raises without leaving the kernel, and the I/O thread does the work,
 * so the vCPU goes on at once. Where KVM refuses (or for a queue without an
 * eventfd) the MMIO exit path still handles the write. A device restored from
 * a snapshot has its queues looked at once, since a notification pending at
 * the snapshot lived only in an eventfd.
 */
int virtio_start(struct vm *vm) {
  for (int i = 0; i < vm->nvirtio; i++) {
    struct virtio_dev *d = vm->virtio[i];
    for (int q = 0; q < d->ops->nqueues && q < VIRTIO_MAX_QUEUES; q++) {
      struct virtio_notify *n = &d->notify[q];
      if (n->fd >= 0) continue;
      int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (fd < 0) return -errno;
      struct kvm_ioeventfd io = {
          .datamatch = (uint64_t)q,
          .addr = d->mmio.base + REG_QUEUE_NOTIFY,
          .len = 4,
          .fd = fd,
          .flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
      };
      if (ioctl(vm->vm_fd, KVM_IOEVENTFD, &io) < 0) {
        close(fd); /* the MMIO exit path it is */
        continue;
      }
      if (vm_io_watch(vm, fd, on_notify, n) < 0) {
        io.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN; /* nobody would read it: give the writes back to the exit path */
        ioctl(vm->vm_fd, KVM_IOEVENTFD, &io);
        close(fd);
        continue;
      }
      n->fd = fd;
    }
    if (!d->restored) continue;
    d->restored = false;
    for (int q = 0; q < d->ops->nqueues && q < VIRTIO_MAX_QUEUES; q++) {
      if (d->notify[q].fd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(d->notify[q].fd, &one, sizeof one);
        (void)w;
      } else {
        pthread_mutex_lock(&d->mmio.lock);
        if (virtio_dev_queue_live(d, q)) d->ops->notify(d, q);
        pthread_mutex_unlock(&d->mmio.lock);
      }
    }
  }
  return 0;
}
