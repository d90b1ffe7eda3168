/*
 * kvm/virtio.h: virtio devices (virtio-mmio transport v2, split virtqueues,
 * virtio-blk and virtio-console backends). Internal to binding/kvm/.
 *
 * Threading: every field of struct virtio_dev is guarded by dev->mmio.lock.
 * The vCPU loop holds it around mmio read/write; backends that run on the
 * I/O thread take it themselves.
 */
#ifndef NACELLE_KVM_VIRTIO_H
#define NACELLE_KVM_VIRTIO_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "kvm.h"

/* ---- constants (virtio 1.2) ---------------------------------------------- */

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_MMIO_VERSION 2u
#define VIRTIO_MMIO_VENDOR 0x554d4551u /* "QEMU", what Linux is used to */
#define VIRTIO_MMIO_SIZE 0x1000u
#define VIRTIO_MMIO_CONFIG 0x100u

#define VIRTIO_STATUS_ACKNOWLEDGE 0x01u
#define VIRTIO_STATUS_DRIVER 0x02u
#define VIRTIO_STATUS_DRIVER_OK 0x04u
#define VIRTIO_STATUS_FEATURES_OK 0x08u
#define VIRTIO_STATUS_NEEDS_RESET 0x40u
#define VIRTIO_STATUS_FAILED 0x80u

#define VIRTIO_ISR_QUEUE 0x1u
#define VIRTIO_ISR_CONFIG 0x2u

#define VIRTIO_F_VERSION_1 32

#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_DESC_F_INDIRECT 4u
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u

#define VIRTQ_MAX_SIZE 256u   /* QueueNumMax */
#define VIRTIO_MAX_QUEUES 2   /* console: receiveq + transmitq */
#define VIRTIO_CONFIG_MAX 64  /* bytes of device config space kept */
#define VIRTIO_ERROR_MAX 128  /* bytes of the last error message */

#define VIRTIO_ID_BLOCK 2u
#define VIRTIO_ID_CONSOLE 3u

/* ---- split virtqueue (virtq.c) ---------------------------------------------- */

/* Guest-side layout, little-endian (the host is x86-64). */
struct virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct virtq_avail {
  uint16_t flags;
  uint16_t idx;
  uint16_t ring[]; /* [num], then used_event */
};
struct virtq_used_elem {
  uint32_t id;
  uint32_t len;
};
struct virtq_used {
  uint16_t flags;
  uint16_t idx;
  struct virtq_used_elem ring[]; /* [num], then avail_event */
};

struct virtq {
  uint32_t num;   /* QueueNum as the driver wrote it (checked at QueueReady) */
  bool ready;
  uint64_t desc_gpa, avail_gpa, used_gpa;
  uint16_t last_avail_idx; /* next avail entry the device consumes */
  uint16_t used_idx;       /* next used entry the device fills */
  /* host views of the rings, valid while ready */
  struct virtq_desc *desc;
  struct virtq_avail *avail;
  struct virtq_used *used;
};

/* One buffer of a descriptor chain, already translated and bounds-checked. */
struct virtq_seg {
  uint8_t *hva;
  uint32_t len;
  bool writable;
};

/* A popped descriptor chain: device-readable segments first, then writable ones. */
struct virtq_chain {
  uint16_t head;
  uint16_t nseg;
  uint64_t rlen, wlen; /* total readable / writable bytes */
  struct virtq_seg seg[VIRTQ_MAX_SIZE];
};

struct virtio_dev;

/*
 * Checks a queue's size and ring addresses against guest RAM; on success
 * fills q's host views and returns NULL, else a short reason.
 */
const char *virtq_map(struct virtq *q, const struct guest_mem *mem);
/* Forgets everything (device reset). */
void virtq_reset(struct virtq *q);
/*
 * Takes the next available chain of queue qi of d. 1: *c filled; 0: nothing
 * available; -1: the guest broke a rule (virtio_dev_fail was called).
 */
int virtq_pop(struct virtio_dev *d, int qi, struct virtq_chain *c);
/* Gives the last popped chain back (it will be popped again). */
void virtq_unpop(struct virtq *q);
/* Returns chain head to the driver with len bytes written into it. */
void virtq_push(struct virtq *q, uint16_t head, uint32_t len);
/* After a batch of pushes: true unless the driver suppressed interrupts. */
bool virtq_want_interrupt(const struct virtq *q);
/* Copies up to len bytes from the chain's readable bytes at offset off; returns bytes copied. */
size_t virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, size_t len);
/* Copies up to len bytes into the chain's writable bytes at offset off; returns bytes copied. */
size_t virtq_chain_write(const struct virtq_chain *c, uint64_t off, const void *src, size_t len);
/*
 * Describes [off, off+len) of the chain's readable (writable=false) or writable
 * bytes as an iovec array; returns the count (<= maxiov), the bytes covered in *covered.
 */
int virtq_chain_iov(const struct virtq_chain *c, bool writable, uint64_t off, uint64_t len,
                    struct iovec *iov, int maxiov, uint64_t *covered);

/* ---- the device and its transport (virtio_mmio.c) ---------------------------- */

struct virtio_ops {
  const char *name;       /* "virtio-blk": prefix of error messages */
  uint32_t device_id;
  int nqueues;
  /* QueueNotify for queue qi (valid, ready, DRIVER_OK, not broken) */
  void (*notify)(struct virtio_dev *d, int qi);
  /* DRIVER_OK was just set (optional) */
  void (*driver_ok)(struct virtio_dev *d);
  /* the driver wrote 0 to Status (optional) */
  void (*reset)(struct virtio_dev *d);
  /* after virtio_load replaced the transport state (optional) */
  void (*loaded)(struct virtio_dev *d);
  /* frees d->backend (not the fd) */
  void (*destroy)(struct virtio_dev *d);
};

struct virtio_dev {
  struct mmio_dev mmio; /* registered with vm_add_mmio; opaque = this */
  struct vm *vm;
  const struct virtio_ops *ops;
  void *backend;
  int index; /* slot: vm->virtio[index] */
  int gsi;

  uint64_t device_features, driver_features;
  uint32_t device_features_sel, driver_features_sel;
  uint32_t queue_sel;
  uint32_t status, isr, config_generation;
  bool broken; /* a guest error stopped processing until reset */
  struct virtq vq[VIRTIO_MAX_QUEUES];

  uint8_t config[VIRTIO_CONFIG_MAX];
  uint32_t config_size;

  /* QueueNotify writes that KVM turns into eventfd signals (KVM_IOEVENTFD), one per queue */
  struct virtio_notify {
    struct virtio_dev *d;
    int qi;
    int fd; /* -1: none, the MMIO exit path handles the notify */
  } notify[VIRTIO_MAX_QUEUES];
  bool restored; /* loaded from a snapshot: its queues are looked at once when the VM starts */

  uint64_t errors;     /* atomic: guest misbehaviours detected */
  uint64_t error_seq;  /* atomic: order of the last error among devices */
  char last_error[VIRTIO_ERROR_MAX];
};

/*
 * Creates a device in the next slot (vm->virtio[vm->nvirtio++]) and registers
 * its MMIO window. features: device feature bits below 32 (VERSION_1 is added).
 * The caller fills (*out)->config and config_size before the VM starts.
 * Returns 0 or -errno (-ENOSPC when the slots are full).
 */
int virtio_dev_add(struct vm *vm, const struct virtio_ops *ops, uint64_t features,
                   void *backend, struct virtio_dev **out);
/* Guest misbehaviour: NEEDS_RESET, config interrupt, counted, message kept. Lock held. */
void virtio_dev_fail(struct virtio_dev *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Sets ISR bits and raises the device's GSI. Lock held. */
void virtio_dev_interrupt(struct virtio_dev *d, uint32_t isr_bits);
/* True when queue qi may be processed: DRIVER_OK, not broken, queue ready. Lock held. */
bool virtio_dev_queue_live(const struct virtio_dev *d, int qi);

/* The most recent guest-error message of any device; NULL when none. */
const char *virtio_last_error(struct vm *vm);
/* Copies device index's last error message (locked); returns its error count, or -1. */
int64_t virtio_dev_error(struct vm *vm, int index, char *buf, size_t cap);

#endif
