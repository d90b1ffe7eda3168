/*
 * kvm/console.c: virtio-console with one port (no MULTIPORT, no features but
 * VERSION_1). Queue 0 (receiveq) is fed from fd on the I/O thread; queue 1
 * (transmitq) is written to fd on the notifying vCPU thread.
 *
 * Flow control: when the guest has no receive buffers posted, fd's watch is
 * turned off; a notify on queue 0 turns it on again. Only as many bytes are
 * read as fit in the posted buffers, so nothing is lost.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "virtio.h"

#define CONSOLE_CONFIG_SIZE 12 /* cols, rows, max_nr_ports, emerg_wr */
#define RX_MAX_READ (1u << 20)  /* bytes per receive buffer per read() */

struct console {
  int fd;
  bool watching; /* what we last asked vm_io_enable for */
  bool eof;      /* the host closed its end (or the fd failed): input is over */
  struct virtq_chain chain; /* scratch, used under the device lock */
  struct iovec iov[VIRTQ_MAX_SIZE];
};

static void set_watch(struct virtio_dev *d, struct console *k, bool on, bool force) {
  if (k->eof) on = false;
  if (k->watching == on && !force) return;
  k->watching = on;
  vm_io_enable(d->vm, k->fd, on);
}

/* I/O thread: fd is readable. */
static void console_rx(void *opaque) {
  struct virtio_dev *d = opaque;
  struct console *k = d->backend;
  pthread_mutex_lock(&d->mmio.lock);
  struct virtq *q = &d->vq[0];
  bool pushed = false;
  if (k->eof || !virtio_dev_queue_live(d, 0)) {
    set_watch(d, k, false, true);
    goto out;
  }
  for (uint32_t i = 0; i < q->num; i++) {
    int r = virtq_pop(d, 0, &k->chain);
    if (r < 0) {
      set_watch(d, k, false, true); /* broken until reset */
      break;
    }
    if (r == 0) {
      set_watch(d, k, false, false); /* no buffers: wait for a notify */
      break;
    }
    if (k->chain.wlen == 0) {
      virtio_dev_fail(d, "receive buffer without writable space in queue 0");
      set_watch(d, k, false, true);
      break;
    }
    uint64_t want = k->chain.wlen < RX_MAX_READ ? k->chain.wlen : RX_MAX_READ;
    uint64_t covered;
    int n = virtq_chain_iov(&k->chain, true, 0, want, k->iov, VIRTQ_MAX_SIZE, &covered);
    ssize_t got;
    do got = readv(k->fd, k->iov, n);
    while (got < 0 && errno == EINTR);
    if (got > 0) {
      virtq_push(q, k->chain.head, (uint32_t)got);
      pushed = true;
      continue;
    }
    virtq_unpop(q); /* keep the buffer for later */
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    /* 0: the host closed its end; other errors: the same for us */
    k->eof = true;
    set_watch(d, k, false, true);
    break;
  }
  if (pushed && virtq_want_interrupt(q)) virtio_dev_interrupt(d, VIRTIO_ISR_QUEUE);
out:
  pthread_mutex_unlock(&d->mmio.lock);
}

/* vCPU thread: the guest transmitted. */
static void console_tx(struct virtio_dev *d, struct console *k) {
  struct virtq *q = &d->vq[1];
  bool pushed = false;
  for (uint32_t i = 0; i < q->num; i++) {
    int r = virtq_pop(d, 1, &k->chain);
    if (r <= 0) break;
    bool stopping = false;
    for (int s = 0; s < k->chain.nseg && !stopping; s++) {
      const struct virtq_seg *seg = &k->chain.seg[s];
      if (seg->writable) break; /* writable parts carry nothing to send */
      if (vm_write_all(d->vm, k->fd, seg->hva, seg->len) < 0) stopping = true;
    }
    virtq_push(q, k->chain.head, 0);
    pushed = true;
    if (stopping) break;
  }
  if (pushed && virtq_want_interrupt(q)) virtio_dev_interrupt(d, VIRTIO_ISR_QUEUE);
}

static void console_notify(struct virtio_dev *d, int qi) {
  struct console *k = d->backend;
  if (qi == 0)
    set_watch(d, k, true, false); /* new receive buffers: the I/O thread fills them */
  else
    console_tx(d, k);
}

static void console_driver_ok(struct virtio_dev *d) {
  set_watch(d, d->backend, true, true);
}

static void console_loaded(struct virtio_dev *d) {
  set_watch(d, d->backend, virtio_dev_queue_live(d, 0), true);
}

static void console_destroy(struct virtio_dev *d) { free(d->backend); }

static const struct virtio_ops console_ops = {
    .name = "virtio-console",
    .device_id = VIRTIO_ID_CONSOLE,
    .nqueues = 2,
    .notify = console_notify,
    .driver_ok = console_driver_ok,
    .loaded = console_loaded,
    .destroy = console_destroy,
};

int virtio_console_add(struct vm *vm, int fd) {
  /* both slots first: once registered, the device cannot be taken back */
  if (vm->nvirtio >= KVM_MAX_MMIO_DEVS || vm->nmmio >= KVM_MAX_MMIO_DEVS ||
      vm->nwatch >= KVM_MAX_IO_WATCH)
    return -ENOSPC;
  struct console *k = calloc(1, sizeof *k);
  if (!k) return -ENOMEM;
  k->fd = fd;
  struct virtio_dev *d;
  int r = virtio_dev_add(vm, &console_ops, 0, k, &d);
  if (r < 0) {
    free(k);
    return r;
  }
  d->config_size = CONSOLE_CONFIG_SIZE; /* all zero: no size, one port */
  /*
   * If this fails the device stays in vm->virtio (freed by virtio_destroy_all)
   * with no input; the caller treats the error as fatal for the VM anyway.
   */
  r = vm_io_watch(vm, fd, console_rx, d);
  if (r < 0) {
    k->eof = true;
    return r;
  }
  k->watching = true;
  return 0;
}
