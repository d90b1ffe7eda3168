/*
 * kvm/blk.c: virtio-blk over an open file or block device. Requests are
 * served synchronously on the vCPU thread that notified the queue.
 *
 * Request chain: 16-byte header (type, reserved, sector) device-readable,
 * data, then a device-writable status byte last. The layout of the chain is
 * not assumed (the header may be split, data may share buffers).
 */
#include <endian.h>
#include <errno.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "virtio.h"

#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define BLK_SEG_MAX 126
#define BLK_ID_BYTES 20
#define BLK_CONFIG_SIZE 60 /* through write_zeroes_may_unmap + padding */

struct blk {
  int fd;
  bool readonly;
  uint64_t sectors;
  char id[BLK_ID_BYTES];
  struct virtq_chain chain; /* scratch, used under the device lock */
  struct iovec iov[VIRTQ_MAX_SIZE];
};

struct blk_req_hdr {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};

/* Reads or writes the whole iovec at off; 0 or -1. */
static int rw_full(int fd, struct iovec *iov, int n, uint64_t off, bool write) {
  while (n > 0) {
    ssize_t r = write ? pwritev(fd, iov, n, (off_t)off) : preadv(fd, iov, n, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) return -1; /* EOF inside the capacity: the file shrank */
    off += (uint64_t)r;
    while (n > 0 && (size_t)r >= iov->iov_len) {
      r -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + r;
      iov->iov_len -= (size_t)r;
    }
  }
  return 0;
}

static bool in_bounds(const struct blk *b, uint64_t sector, uint64_t bytes) {
  if (sector > b->sectors) return false;
  return bytes <= (b->sectors - sector) * 512; /* sectors*512 fits: it came from a size */
}

/* Serves one chain; returns the used length, or -1 when the chain is malformed. */
static int64_t blk_request(struct virtio_dev *d, struct blk *b, const struct virtq_chain *c) {
  if (c->rlen < sizeof(struct blk_req_hdr)) {
    virtio_dev_fail(d, "request without a header in queue 0");
    return -1;
  }
  if (c->wlen < 1) {
    virtio_dev_fail(d, "request without a writable status byte in queue 0");
    return -1;
  }
  struct blk_req_hdr h;
  virtq_chain_read(c, 0, &h, sizeof h);
  uint32_t type = le32toh(h.type);
  uint64_t sector = le64toh(h.sector);
  uint64_t wdata = c->wlen - 1; /* the status byte is the last writable byte */
  uint64_t rdata = c->rlen - sizeof h;
  uint8_t status = VIRTIO_BLK_S_OK;
  uint64_t written = 0;
  uint64_t covered;
  int n;

  switch (type) {
  case VIRTIO_BLK_T_IN:
    if (!in_bounds(b, sector, wdata)) {
      status = VIRTIO_BLK_S_IOERR;
      break;
    }
    n = virtq_chain_iov(c, true, 0, wdata, b->iov, VIRTQ_MAX_SIZE, &covered);
    if (covered != wdata || rw_full(b->fd, b->iov, n, sector * 512, false) < 0)
      status = VIRTIO_BLK_S_IOERR;
    else
      written = wdata;
    break;
  case VIRTIO_BLK_T_OUT:
    if (b->readonly || !in_bounds(b, sector, rdata)) {
      status = VIRTIO_BLK_S_IOERR;
      break;
    }
    n = virtq_chain_iov(c, false, sizeof h, rdata, b->iov, VIRTQ_MAX_SIZE, &covered);
    if (covered != rdata || rw_full(b->fd, b->iov, n, sector * 512, true) < 0)
      status = VIRTIO_BLK_S_IOERR;
    break;
  case VIRTIO_BLK_T_FLUSH:
    if (!b->readonly && fdatasync(b->fd) < 0 && errno != EINVAL) status = VIRTIO_BLK_S_IOERR;
    break;
  case VIRTIO_BLK_T_GET_ID:
    written = wdata < BLK_ID_BYTES ? wdata : BLK_ID_BYTES;
    virtq_chain_write(c, 0, b->id, (size_t)written);
    break;
  default:
    status = VIRTIO_BLK_S_UNSUPP;
    break;
  }
  virtq_chain_write(c, c->wlen - 1, &status, 1);
  written += 1;
  return written > UINT32_MAX ? UINT32_MAX : (int64_t)written;
}

static void blk_notify(struct virtio_dev *d, int qi) {
  struct blk *b = d->backend;
  struct virtq *q = &d->vq[qi];
  bool pushed = false;
  /* at most one ring's worth per notify: later buffers come with their own notify */
  for (uint32_t i = 0; i < q->num; i++) {
    int r = virtq_pop(d, qi, &b->chain);
    if (r <= 0) break;
    int64_t used = blk_request(d, b, &b->chain);
    if (used < 0) break; /* device failed: stop */
    virtq_push(q, b->chain.head, (uint32_t)used);
    pushed = true;
  }
  if (pushed && virtq_want_interrupt(q)) virtio_dev_interrupt(d, VIRTIO_ISR_QUEUE);
}

static void blk_destroy(struct virtio_dev *d) { free(d->backend); }

static const struct virtio_ops blk_ops = {
    .name = "virtio-blk",
    .device_id = VIRTIO_ID_BLOCK,
    .nqueues = 1,
    .notify = blk_notify,
    .destroy = blk_destroy,
};

static void put_le32(uint8_t *p, uint32_t v) {
  v = htole32(v);
  memcpy(p, &v, 4);
}

int virtio_blk_add(struct vm *vm, int fd, bool readonly, const char *serial_id) {
  if (vm->nvirtio >= KVM_MAX_MMIO_DEVS) return -ENOSPC;
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  uint64_t size;
  if (S_ISREG(st.st_mode)) {
    size = (uint64_t)st.st_size;
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) return -errno;
  } else {
    return -EINVAL;
  }
  struct blk *b = calloc(1, sizeof *b);
  if (!b) return -ENOMEM;
  b->fd = fd;
  b->readonly = readonly;
  b->sectors = size / 512;
  if (serial_id) /* zero-padded, unterminated when 20 bytes long */
    memcpy(b->id, serial_id, strnlen(serial_id, BLK_ID_BYTES));

  uint64_t features = (1ULL << VIRTIO_BLK_F_SEG_MAX) | (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
                      (1ULL << VIRTIO_BLK_F_FLUSH);
  if (readonly) features |= 1ULL << VIRTIO_BLK_F_RO;
  struct virtio_dev *d;
  int r = virtio_dev_add(vm, &blk_ops, features, b, &d);
  if (r < 0) {
    free(b);
    return r;
  }
  /* config: capacity @0, size_max @8, seg_max @12, geometry @16, blk_size @20 */
  uint64_t cap = htole64(b->sectors);
  memcpy(d->config, &cap, 8);
  put_le32(d->config + 12, BLK_SEG_MAX);
  put_le32(d->config + 20, 512);
  d->config_size = BLK_CONFIG_SIZE;
  return 0;
}
