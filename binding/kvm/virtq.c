/*
 * kvm/virtq.c: split virtqueues (virtio 1.x), device side, with every guest
 * value checked: ring placement, queue size, descriptor indexes, chain length
 * (loops), buffer placement, the avail index window. Indirect descriptors are
 * not offered, so the INDIRECT flag is an error. Event idx is not offered.
 *
 * The guest may change its rings while we read them: every descriptor is
 * copied once and only the copy is checked and used.
 */
#include <endian.h>
#include <string.h>

#include "virtio.h"

static inline uint16_t load16(const uint16_t *p) {
  return le16toh(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static bool is_pow2(uint32_t n) { return n && !(n & (n - 1)); }

void virtq_reset(struct virtq *q) { memset(q, 0, sizeof *q); }

const char *virtq_map(struct virtq *q, const struct guest_mem *mem) {
  q->desc = 0;
  q->avail = 0;
  q->used = 0;
  if (!is_pow2(q->num) || q->num > VIRTQ_MAX_SIZE) return "bad queue size";
  /* alignment from the spec (2.7): descriptors 16, driver area 2, device area 4 */
  if ((q->desc_gpa & 15) || (q->avail_gpa & 1) || (q->used_gpa & 3)) return "misaligned ring";
  uint64_t n = q->num;
  void *desc = gpa_to_hva(mem, q->desc_gpa, 16 * n);
  void *avail = gpa_to_hva(mem, q->avail_gpa, 6 + 2 * n);
  void *used = gpa_to_hva(mem, q->used_gpa, 6 + 8 * n);
  if (!desc || !avail || !used) return "ring outside guest RAM";
  q->desc = desc;
  q->avail = avail;
  q->used = used;
  return 0;
}

int virtq_pop(struct virtio_dev *d, int qi, struct virtq_chain *c) {
  struct virtq *q = &d->vq[qi];
  const struct guest_mem *mem = &d->vm->mem;
  uint16_t num = (uint16_t)q->num; /* checked power of 2 <= 256 while ready */
  if (!q->ready || !q->avail) return 0;

  uint16_t avail_idx = load16(&q->avail->idx);
  uint16_t pending = (uint16_t)(avail_idx - q->last_avail_idx);
  if (pending == 0) return 0;
  if (pending > num) {
    virtio_dev_fail(d, "avail index jumped %u entries ahead in queue %d", pending, qi);
    return -1;
  }
  uint16_t head = load16(&q->avail->ring[q->last_avail_idx & (num - 1)]);
  if (head >= num) {
    virtio_dev_fail(d, "avail entry %u out of range in queue %d", head, qi);
    return -1;
  }

  c->head = head;
  c->nseg = 0;
  c->rlen = 0;
  c->wlen = 0;
  uint16_t idx = head;
  bool seen_write = false;
  for (uint32_t count = 0;; count++) {
    if (count >= num) {
      virtio_dev_fail(d, "descriptor loop in queue %d", qi);
      return -1;
    }
    /* one read of each field; only these copies are checked and used */
    const struct virtq_desc *dp = &q->desc[idx];
    uint64_t addr = le64toh(__atomic_load_n(&dp->addr, __ATOMIC_RELAXED));
    uint32_t len = le32toh(__atomic_load_n(&dp->len, __ATOMIC_RELAXED));
    uint16_t flags = le16toh(__atomic_load_n(&dp->flags, __ATOMIC_RELAXED));
    uint16_t next = le16toh(__atomic_load_n(&dp->next, __ATOMIC_RELAXED));
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      virtio_dev_fail(d, "indirect descriptor (not offered) in queue %d", qi);
      return -1;
    }
    uint8_t *hva = gpa_to_hva(mem, addr, len);
    if (!hva) {
      virtio_dev_fail(d, "buffer 0x%llx+%u outside guest RAM in queue %d",
                      (unsigned long long)addr, len, qi);
      return -1;
    }
    bool w = flags & VIRTQ_DESC_F_WRITE;
    if (!w && seen_write) {
      virtio_dev_fail(d, "readable descriptor after a writable one in queue %d", qi);
      return -1;
    }
    if (len) {
      c->seg[c->nseg].hva = hva;
      c->seg[c->nseg].len = len;
      c->seg[c->nseg].writable = w;
      c->nseg++;
      if (w)
        c->wlen += len;
      else
        c->rlen += len;
    }
    seen_write |= w;
    if (!(flags & VIRTQ_DESC_F_NEXT)) break;
    if (next >= num) {
      virtio_dev_fail(d, "descriptor index %u out of range in queue %d", next, qi);
      return -1;
    }
    idx = next;
  }
  q->last_avail_idx++;
  return 1;
}

void virtq_unpop(struct virtq *q) { q->last_avail_idx--; }

void virtq_push(struct virtq *q, uint16_t head, uint32_t len) {
  if (!q->ready || !q->used) return;
  struct virtq_used_elem *e = &q->used->ring[q->used_idx & (q->num - 1)];
  __atomic_store_n(&e->id, htole32(head), __ATOMIC_RELAXED);
  __atomic_store_n(&e->len, htole32(len), __ATOMIC_RELAXED);
  q->used_idx++;
  /* the element before the index (release) */
  __atomic_store_n(&q->used->idx, htole16(q->used_idx), __ATOMIC_RELEASE);
}

bool virtq_want_interrupt(const struct virtq *q) {
  if (!q->ready || !q->avail) return false;
  /* our used->idx store before reading the driver's flags */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return !(load16(&q->avail->flags) & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

/* Walks the readable or writable bytes of a chain from offset off. */
typedef void (*seg_fn)(uint8_t *hva, size_t n, size_t done, void *arg);

static size_t chain_walk(const struct virtq_chain *c, bool writable, uint64_t off, size_t len,
                         seg_fn fn, void *arg) {
  size_t done = 0;
  for (int i = 0; i < c->nseg && done < len; i++) {
    const struct virtq_seg *s = &c->seg[i];
    if (s->writable != writable) continue;
    if (off >= s->len) {
      off -= s->len;
      continue;
    }
    size_t n = s->len - off;
    if (n > len - done) n = len - done;
    fn(s->hva + off, n, done, arg);
    done += n;
    off = 0;
  }
  return done;
}

static void copy_out(uint8_t *hva, size_t n, size_t done, void *arg) {
  memcpy((uint8_t *)arg + done, hva, n);
}
static void copy_in(uint8_t *hva, size_t n, size_t done, void *arg) {
  memcpy(hva, (const uint8_t *)arg + done, n);
}

size_t virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, size_t len) {
  return chain_walk(c, false, off, len, copy_out, dst);
}

size_t virtq_chain_write(const struct virtq_chain *c, uint64_t off, const void *src, size_t len) {
  return chain_walk(c, true, off, len, copy_in, (void *)src);
}

int virtq_chain_iov(const struct virtq_chain *c, bool writable, uint64_t off, uint64_t len,
                    struct iovec *iov, int maxiov, uint64_t *covered) {
  int n = 0;
  uint64_t done = 0;
  for (int i = 0; i < c->nseg && done < len && n < maxiov; i++) {
    const struct virtq_seg *s = &c->seg[i];
    if (s->writable != writable) continue;
    if (off >= s->len) {
      off -= s->len;
      continue;
    }
    uint64_t take = s->len - off;
    if (take > len - done) take = len - done;
    iov[n].iov_base = s->hva + off;
    iov[n].iov_len = take;
    n++;
    done += take;
    off = 0;
  }
  if (covered) *covered = done;
  return n;
}
