/*
 * guest.c: nacelle's freestanding test guest (see README.md).
 *
 * Entered from start.S through linux64_main (bzImage 64-bit entry, boot_params)
 * or pvh_main (ELF PVH entry, hvm_start_info); both reduce what they were given
 * to a struct boot_info and call guest_main, which runs the mode named by
 * nacelle.test=<mode> on the command line.
 *
 * Most modes poll; serialirq, blkirq and lapictimer take real interrupts through
 * an IDT, the in-kernel IOAPIC and LAPIC. The code is plain integer x86-64: KVM
 * may run it through its instruction emulator, so loops are short.
 */
#include "guest.h"

/* ---- libc bits gcc may call -------------------------------------------------- */

__attribute__((optimize("no-tree-loop-distribute-patterns")))
void *memset(void *d, int c, size_t n) {
  u8 *p = d;
  while (n--) *p++ = (u8)c;
  return d;
}

__attribute__((optimize("no-tree-loop-distribute-patterns")))
void *memcpy(void *d, const void *s, size_t n) {
  u8 *p = d;
  const u8 *q = s;
  while (n--) *p++ = *q++;
  return d;
}

int memcmp(const void *a, const void *b, size_t n) {
  const u8 *p = a, *q = b;
  for (; n; n--, p++, q++)
    if (*p != *q) return *p - *q;
  return 0;
}

static size_t str_len(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

static int str_eq(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

/* ---- port I/O, MMIO, machine control ---------------------------------------- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline u32 rd32(u64 addr) { return *(volatile u32 *)addr; }
static inline u16 rd16(u64 addr) { return *(volatile u16 *)addr; }
static inline u8 rd8(u64 addr) { return *(volatile u8 *)addr; }
static inline void wr32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (u64)hi << 32 | lo;
}

static void delay(u32 n) {
  for (u32 i = 0; i < n; i++) barrier();
}

static __attribute__((noreturn)) void halt_forever(void) {
  for (;;) __asm__ volatile("cli; hlt");
}

static __attribute__((noreturn)) void poweroff(void) {
  outw(0x604, 0x2000); /* PIIX4 ACPI PM1a_CNT: SLP_EN, S5 */
  halt_forever();
}

static __attribute__((noreturn)) void reset_i8042(void) {
  outb(0x64, 0xfe); /* i8042: pulse the reset line */
  halt_forever();
}

/* ---- serial (8250 at 0x3f8, polled) --------------------------------------- */

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)

static void putch(char c) {
  while (!(inb(COM1_LSR) & 0x20)) {
  }
  outb(COM1, (u8)c);
}

static void puts_(const char *s) {
  while (*s) putch(*s++);
}

static void putdec(u64 v) {
  char b[24];
  int i = 0;
  do {
    b[i++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (i) putch(b[--i]);
}

static void puthex(u64 v, int min_digits) {
  char b[16];
  int i = 0;
  do {
    b[i++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v || i < min_digits);
  while (i) putch(b[--i]);
}

static void println(const char *s) {
  puts_(s);
  putch('\n');
}

/* "<prefix><decimal>\n" */
static void print_num(const char *prefix, u64 v) {
  puts_(prefix);
  putdec(v);
  putch('\n');
}

/* first n bytes, non-printables as '.' */
static void put_printable(const void *p, size_t n) {
  const u8 *b = p;
  for (size_t i = 0; i < n; i++) putch(b[i] >= 0x20 && b[i] < 0x7f ? (char)b[i] : '.');
}

static int serial_getc(void) {
  while (!(inb(COM1_LSR) & 0x01)) {
  }
  return inb(COM1);
}

/* ---- the command line ---------------------------------------------------- */

/*
 * Finds the value of "key=" (a whole word) in cmdline, from index *pos on;
 * returns a pointer to the value (ended by a space or NUL) and moves *pos past it.
 */
static const char *cmdline_find(const char *cmdline, const char *key, size_t *pos) {
  size_t klen = str_len(key);
  for (size_t i = pos ? *pos : 0; cmdline[i]; i++) {
    if (i > 0 && cmdline[i - 1] != ' ') continue;
    if (memcmp(cmdline + i, key, klen) != 0) continue;
    if (pos) *pos = i + klen;
    return cmdline + i + klen;
  }
  return 0;
}

/* Copies a space-terminated word into out (cap bytes incl. NUL). */
static void word_copy(char *out, size_t cap, const char *s) {
  size_t n = 0;
  while (s && s[n] && s[n] != ' ' && n + 1 < cap) {
    out[n] = s[n];
    n++;
  }
  out[n] = 0;
}

/* Parses a number (decimal or 0x hex) at *s, advancing it. */
static u64 parse_num(const char **s) {
  const char *p = *s;
  u64 v = 0;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    p += 2;
    for (;;) {
      char c = *p;
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else break;
      v = v * 16 + (u64)d;
      p++;
    }
  } else {
    while (*p >= '0' && *p <= '9') v = v * 10 + (u64)(*p++ - '0');
  }
  *s = p;
  return v;
}

/* ---- virtio-mmio (modern, version 2) ------------------------------------- */

#define VIRTIO_MAGIC 0x000
#define VIRTIO_VERSION 0x004
#define VIRTIO_DEVICE_ID 0x008
#define VIRTIO_DEVICE_FEATURES 0x010
#define VIRTIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_DRIVER_FEATURES 0x020
#define VIRTIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_QUEUE_SEL 0x030
#define VIRTIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_QUEUE_NUM 0x038
#define VIRTIO_QUEUE_READY 0x044
#define VIRTIO_QUEUE_NOTIFY 0x050
#define VIRTIO_STATUS 0x070
#define VIRTIO_QUEUE_DESC_LO 0x080
#define VIRTIO_QUEUE_DESC_HI 0x084
#define VIRTIO_QUEUE_DRIVER_LO 0x090
#define VIRTIO_QUEUE_DRIVER_HI 0x094
#define VIRTIO_QUEUE_DEVICE_LO 0x0a0
#define VIRTIO_QUEUE_DEVICE_HI 0x0a4
#define VIRTIO_CONFIG 0x100

#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 0x40
#define ST_FAILED 0x80

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

#define QSIZE 8

struct virtq_desc {
  u64 addr;
  u32 len;
  u16 flags;
  u16 next;
};

struct virtq {
  struct virtq_desc desc[QSIZE]; /* 16-byte aligned (the struct is page-aligned) */
  struct {
    u16 flags, idx, ring[QSIZE], used_event;
  } avail __attribute__((aligned(16)));
  struct {
    u16 flags, idx;
    struct {
      u32 id, len;
    } ring[QSIZE];
    u16 avail_event;
  } used __attribute__((aligned(16)));
  u16 size;      /* QueueNum as set */
  u16 last_used; /* driver's copy of used.idx */
};

static struct virtq vqs[2] __attribute__((aligned(4096)));

static u64 vdev; /* base of the device in use */

/*
 * Finds the first virtio-mmio device on the command line with this DeviceID (0: none);
 * *irq (when irq is not NULL) gets its interrupt line, or 0 when none is given.
 */
static u64 virtio_find(const char *cmdline, u32 device_id, u32 *irq) {
  size_t pos = 0;
  const char *v;
  while ((v = cmdline_find(cmdline, "virtio_mmio.device=", &pos)) != 0) {
    /* <size>[KMG]@<base>:<irq>[:<id>] */
    const char *p = v;
    parse_num(&p);
    if (*p == 'K' || *p == 'k' || *p == 'M' || *p == 'm' || *p == 'G' || *p == 'g') p++;
    if (*p != '@') continue;
    p++;
    u64 base = parse_num(&p);
    if (base == 0) continue;
    u32 line = 0;
    if (*p == ':') {
      p++;
      line = (u32)parse_num(&p);
    }
    if (rd32(base + VIRTIO_MAGIC) != 0x74726976) continue; /* "virt" */
    if (rd32(base + VIRTIO_DEVICE_ID) != device_id) continue;
    if (rd32(base + VIRTIO_VERSION) != 2) {
      puts_("virtio: device at 0x");
      puthex(base, 1);
      println(" is not version 2");
      continue;
    }
    if (irq) *irq = line;
    return base;
  }
  return 0;
}

/*
 * Resets the device, negotiates VIRTIO_F_VERSION_1 only and sets FEATURES_OK.
 * Returns the low 32 offered feature bits, or -1 on failure.
 */
static i64 virtio_begin(u64 base) {
  vdev = base;
  wr32(base + VIRTIO_STATUS, 0);
  for (int i = 0; i < 1000 && rd32(base + VIRTIO_STATUS) != 0; i++) {
  }
  wr32(base + VIRTIO_STATUS, ST_ACKNOWLEDGE);
  wr32(base + VIRTIO_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
  wr32(base + VIRTIO_DEVICE_FEATURES_SEL, 1);
  u32 hi = rd32(base + VIRTIO_DEVICE_FEATURES);
  wr32(base + VIRTIO_DEVICE_FEATURES_SEL, 0);
  u32 lo = rd32(base + VIRTIO_DEVICE_FEATURES);
  if (!(hi & 1)) {
    println("virtio: VERSION_1 not offered");
    return -1;
  }
  wr32(base + VIRTIO_DRIVER_FEATURES_SEL, 1);
  wr32(base + VIRTIO_DRIVER_FEATURES, 1); /* bit 32: VIRTIO_F_VERSION_1 */
  wr32(base + VIRTIO_DRIVER_FEATURES_SEL, 0);
  wr32(base + VIRTIO_DRIVER_FEATURES, 0);
  wr32(base + VIRTIO_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
  if (!(rd32(base + VIRTIO_STATUS) & ST_FEATURES_OK)) {
    println("virtio: FEATURES_OK not accepted");
    return -1;
  }
  return lo;
}

/* Sets up queue idx with num entries (need not be valid: badq=qsize); 0 or -1. */
static int virtq_setup(u16 idx, u16 num, int check) {
  struct virtq *q = &vqs[idx];
  memset(q, 0, sizeof *q);
  q->size = num;
  wr32(vdev + VIRTIO_QUEUE_SEL, idx);
  u32 max = rd32(vdev + VIRTIO_QUEUE_NUM_MAX);
  if (check && (max < num || rd32(vdev + VIRTIO_QUEUE_READY) != 0)) {
    print_num("virtio: queue unavailable, max ", max);
    return -1;
  }
  wr32(vdev + VIRTIO_QUEUE_NUM, num);
  wr32(vdev + VIRTIO_QUEUE_DESC_LO, (u32)(u64)q->desc);
  wr32(vdev + VIRTIO_QUEUE_DESC_HI, (u32)((u64)q->desc >> 32));
  wr32(vdev + VIRTIO_QUEUE_DRIVER_LO, (u32)(u64)&q->avail);
  wr32(vdev + VIRTIO_QUEUE_DRIVER_HI, (u32)((u64)&q->avail >> 32));
  wr32(vdev + VIRTIO_QUEUE_DEVICE_LO, (u32)(u64)&q->used);
  wr32(vdev + VIRTIO_QUEUE_DEVICE_HI, (u32)((u64)&q->used >> 32));
  wr32(vdev + VIRTIO_QUEUE_READY, 1);
  return 0;
}

static void virtio_driver_ok(void) {
  wr32(vdev + VIRTIO_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
}

static void virtq_desc_set(u16 q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
  struct virtq_desc *d = &vqs[q].desc[i];
  d->addr = addr;
  d->len = len;
  d->flags = flags;
  d->next = next;
}

/* Puts head on the avail ring (as ring entry `entry`, normally head) and notifies. */
static void virtq_kick(u16 q, u16 entry) {
  struct virtq *vq = &vqs[q];
  volatile u16 *idx = &vq->avail.idx;
  vq->avail.ring[*idx % QSIZE] = entry;
  barrier();
  *idx = (u16)(*idx + 1);
  barrier();
  wr32(vdev + VIRTIO_QUEUE_NOTIFY, q);
}

/* Waits for the next used element; returns its len, or -1 after a bounded wait. */
static i64 virtq_wait(u16 q, u64 bound) {
  struct virtq *vq = &vqs[q];
  volatile u16 *uidx = &vq->used.idx;
  for (u64 i = 0; bound == 0 || i < bound; i++) {
    if (*uidx != vq->last_used) {
      barrier();
      u32 len = ((volatile u32 *)&vq->used.ring[vq->last_used % QSIZE].len)[0];
      vq->last_used++;
      return len;
    }
  }
  return -1;
}

/* ---- virtio-blk ---------------------------------------------------------------- */

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_F_RO 5

static struct {
  u32 type, reserved;
  u64 sector;
} blk_hdr __attribute__((aligned(16)));
static u8 blk_data[512] __attribute__((aligned(512)));
static volatile u8 blk_status;

/* One request on queue 0; returns the status byte (0 OK, 1 IOERR, 2 UNSUPP), or -1 on timeout. */
static int blk_request(u32 type, u64 sector) {
  blk_hdr.type = type;
  blk_hdr.reserved = 0;
  blk_hdr.sector = sector;
  blk_status = 0xff;
  virtq_desc_set(0, 0, (u64)&blk_hdr, sizeof blk_hdr, VIRTQ_DESC_F_NEXT, type == VIRTIO_BLK_T_FLUSH ? 2 : 1);
  virtq_desc_set(0, 1, (u64)blk_data, sizeof blk_data,
                 (u16)(VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0)), 2);
  virtq_desc_set(0, 2, (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0);
  barrier();
  virtq_kick(0, 0);
  if (virtq_wait(0, 5000000) < 0) {
    println("blk: timeout");
    return -1;
  }
  barrier();
  return blk_status;
}

/* Finds and initializes the virtio-blk device (queue 0 of size QSIZE); low features or -1. */
static i64 blk_init(const char *cmdline) {
  u64 base = virtio_find(cmdline, 2, 0);
  if (!base) {
    println("blk: no virtio-blk device");
    return -1;
  }
  i64 feat = virtio_begin(base);
  if (feat < 0) return -1;
  if (virtq_setup(0, QSIZE, 1) < 0) return -1;
  virtio_driver_ok();
  return feat;
}

static void mode_blk(const char *cmdline) {
  i64 feat = blk_init(cmdline);
  if (feat < 0) poweroff();
  int ro = (feat >> VIRTIO_BLK_F_RO) & 1;
  u64 capacity = (u64)rd32(vdev + VIRTIO_CONFIG) | ((u64)rd32(vdev + VIRTIO_CONFIG + 4) << 32);

  memset(blk_data, 0, sizeof blk_data);
  int st = blk_request(VIRTIO_BLK_T_IN, 0);
  if (st != 0) print_num("read status: ", (u64)st);
  puts_("sector0: ");
  put_printable(blk_data, 16);
  putch('\n');

  static const char pat[] = "nacelle-blk-test";
  for (int i = 0; i < 512; i++) blk_data[i] = (u8)pat[i % 16];
  st = blk_request(VIRTIO_BLK_T_OUT, 1);
  if (ro || st != 0) print_num("write status: ", (u64)st);
  blk_request(VIRTIO_BLK_T_FLUSH, 0);
  memset(blk_data, 0, sizeof blk_data);
  st = blk_request(VIRTIO_BLK_T_IN, 1);
  if (st != 0) print_num("read status: ", (u64)st);
  puts_("sector1: ");
  put_printable(blk_data, 16);
  putch('\n');

  st = blk_request(VIRTIO_BLK_T_IN, capacity);
  print_num("oob status: ", (u64)st);
  println("blk done");
  poweroff();
}

/* ---- badq: a misbehaving virtio-blk driver ------------------------------------ */

static void mode_badq(const char *cmdline, const char *kind) {
  int k;
  if (str_eq(kind, "loop")) k = 0;
  else if (str_eq(kind, "oob")) k = 1;
  else if (str_eq(kind, "huge")) k = 2;
  else if (str_eq(kind, "qsize")) k = 3;
  else if (str_eq(kind, "index")) k = 4;
  else {
    println("guest: unknown mode");
    poweroff();
  }

  u64 base = virtio_find(cmdline, 2, 0);
  if (!base) {
    println("blk: no virtio-blk device");
    poweroff();
  }
  if (virtio_begin(base) < 0) poweroff();
  if (virtq_setup(0, k == 3 ? 3 : QSIZE, k != 3) < 0) poweroff();
  virtio_driver_ok();

  /* a plain read of sector 0, then spoiled */
  blk_hdr.type = VIRTIO_BLK_T_IN;
  blk_hdr.sector = 0;
  blk_status = 0xff;
  virtq_desc_set(0, 0, (u64)&blk_hdr, sizeof blk_hdr, VIRTQ_DESC_F_NEXT, 1);
  virtq_desc_set(0, 1, (u64)blk_data, sizeof blk_data, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  virtq_desc_set(0, 2, (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0);
  u16 entry = 0;
  switch (k) {
  case 0: /* the data descriptor chains back to the header */
    virtq_desc_set(0, 1, (u64)blk_data, sizeof blk_data, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0);
    break;
  case 1: /* data outside guest RAM */
    virtq_desc_set(0, 1, 0x3fff0000000ULL, sizeof blk_data, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    break;
  case 2: /* a data length near 4 GiB */
    virtq_desc_set(0, 1, (u64)blk_data, 0xfffffff0u, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    break;
  case 4: /* an avail entry past the queue size */
    entry = 200;
    break;
  }
  barrier();
  virtq_kick(0, entry);

  u32 status = 0;
  for (int i = 0; i < 20000; i++) {
    status = rd32(vdev + VIRTIO_STATUS);
    if (status & ST_NEEDS_RESET) break;
  }
  puts_("status: 0x");
  puthex(status, 1);
  putch('\n');
  println(status & ST_NEEDS_RESET ? "needs-reset" : "no-reset");
  println("badq done");
  poweroff();
}

/* ---- virtio-console -------------------------------------------------------------- */

static u8 con_rx[256] __attribute__((aligned(64)));
static u8 con_tx[256] __attribute__((aligned(64)));

static void con_send(const char *a, const char *b) {
  size_t n = 0;
  while (*a && n < sizeof con_tx) con_tx[n++] = (u8)*a++;
  while (b && *b && n < sizeof con_tx - 1) con_tx[n++] = (u8)*b++;
  if (b) con_tx[n++] = '\n';
  virtq_desc_set(1, 0, (u64)con_tx, (u32)n, 0, 0);
  barrier();
  virtq_kick(1, 0);
  if (virtq_wait(1, 5000000) < 0) println("console: tx timeout");
}

static void con_post_rx(void) {
  virtq_desc_set(0, 0, (u64)con_rx, sizeof con_rx, VIRTQ_DESC_F_WRITE, 0);
  barrier();
  virtq_kick(0, 0);
}

static void mode_console(const char *cmdline) {
  u64 base = virtio_find(cmdline, 3, 0);
  if (!base) {
    println("console: no virtio-console device");
    poweroff();
  }
  if (virtio_begin(base) < 0) poweroff();
  if (virtq_setup(0, QSIZE, 1) < 0 || virtq_setup(1, QSIZE, 1) < 0) poweroff();
  virtio_driver_ok();
  con_post_rx();
  con_send("ping\n", 0);

  static char line[200];
  size_t n = 0;
  for (;;) {
    i64 len = virtq_wait(0, 0);
    int done = 0;
    for (i64 i = 0; i < len && i < (i64)sizeof con_rx; i++) {
      char c = (char)con_rx[i];
      if (c == '\n') {
        done = 1;
        break;
      }
      if (c != '\r' && n + 1 < sizeof line) line[n++] = c;
    }
    if (done) break;
    con_post_rx();
  }
  line[n] = 0;
  puts_("console got: ");
  println(line);
  con_send("pong ", line);
  println("console done");
  poweroff();
}

/* ---- smp: wake the AP with INIT/SIPI ----------------------------------------- */

#define LAPIC 0xfee00000ULL
#define AP_COUNTER 0x8ff0ULL
#define AP_TRAMPOLINE 0x8000ULL

extern const u8 ap_trampoline[], ap_trampoline_end[];

static u8 csum(u64 p, u32 n) {
  u8 s = 0;
  for (u32 i = 0; i < n; i++) s = (u8)(s + rd8(p + i));
  return s;
}

/* Looks for the "_MP_" floating pointer in [start, end). */
static u64 mp_scan(u64 start, u64 end) {
  for (u64 p = start; p + 16 <= end; p += 16)
    if (rd32(p) == 0x5f504d5f /* "_MP_" */ && csum(p, 16) == 0) return p;
  return 0;
}

/* Counts enabled processors in the MP table; *ap gets the APIC ID of one that is not the BSP. */
static int mp_cpus(u8 *ap) {
  u64 fp = mp_scan(0x9fc00, 0xa0000);
  if (!fp) {
    u64 ebda = (u64)rd16(0x40e) << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000) fp = mp_scan(ebda, ebda + 1024);
  }
  if (!fp) fp = mp_scan(0xf0000, 0x100000);
  if (!fp) return 0;
  u64 ct = rd32(fp + 4);
  if (!ct || rd32(ct) != 0x504d4350 /* "PCMP" */) return 0;
  u16 count = rd16(ct + 34);
  u16 len = rd16(ct + 4);
  u64 e = ct + 44, end = ct + len;
  int n = 0;
  for (u16 i = 0; i < count && e < end; i++) {
    u8 type = rd8(e);
    if (type == 0) {
      u8 id = rd8(e + 1), flags = rd8(e + 3);
      if (flags & 1) {
        n++;
        if (!(flags & 2) && *ap == 0xff) *ap = id;
      }
      e += 20;
    } else {
      e += 8;
    }
  }
  return n;
}

static void mode_smp(void) {
  u8 ap = 0xff;
  int n = mp_cpus(&ap);
  print_num("mp cpus: ", (u64)n);
  if (n < 2) {
    println("smp skip: one cpu");
    poweroff();
  }
  if (ap == 0xff) ap = 1;
  memcpy((void *)AP_TRAMPOLINE, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));
  *(volatile u32 *)AP_COUNTER = 0;
  barrier();

  wr32(LAPIC + 0xf0, rd32(LAPIC + 0xf0) | 0x100); /* SVR: software-enable the LAPIC */
  wr32(LAPIC + 0x310, (u32)ap << 24);
  wr32(LAPIC + 0x300, 0x00004500); /* INIT */
  delay(5000);
  wr32(LAPIC + 0x310, (u32)ap << 24);
  wr32(LAPIC + 0x300, 0x00004600 | (AP_TRAMPOLINE >> 12)); /* SIPI, vector 0x08 */

  /*
   * Wait for two changes of the counter: at least 200,000 polls (under a second where KVM
   * emulates every instruction) and, on fast hosts, at least ~1e9 TSC cycles.
   */
  u32 prev = 0;
  int changes = 0;
  u64 t0 = rdtsc();
  for (u64 i = 0; changes < 2; i++) {
    if (i >= 200000 && (i & 1023) == 0 && (rdtsc() - t0 > 1000000000ULL || i >= 400000000ULL)) break;
    u32 v = *(volatile u32 *)AP_COUNTER;
    if (v != prev) {
      prev = v;
      changes++;
    }
  }
  println(changes >= 2 ? "smp ok: ap running" : "smp fail: ap not running");
  poweroff();
}

/* ---- interrupts: IDT, LAPIC, IOAPIC ------------------------------------------ */

#define IOAPIC 0xfec00000ULL
#define LAPIC_ID 0x020
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0

#define VEC_SERIAL 0x30
#define VEC_TIMER 0x31
#define VEC_BLK 0x32

/* What isr_common (start.S) leaves on the stack, lowest address first. */
struct isr_frame {
  u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
  u64 vector, error;
  u64 rip, cs, rflags, rsp, ss;
};

struct __attribute__((packed)) idt_gate {
  u16 off_lo, sel;
  u8 ist, type; /* 0x8e: present, DPL 0, 64-bit interrupt gate */
  u16 off_mid;
  u32 off_hi, zero;
};

extern const u8 isr_stubs[]; /* 256 entries, 16 bytes apart (start.S) */

static struct idt_gate idt[256] __attribute__((aligned(16)));
static void (*irq_handler[256])(void);

void isr_dispatch(struct isr_frame *f);
void isr_dispatch(struct isr_frame *f) {
  u64 v = f->vector & 0xff;
  if (irq_handler[v]) {
    irq_handler[v]();
    return;
  }
  puts_("unexpected vector 0x");
  puthex(v, 2);
  puts_(" error 0x");
  puthex(f->error, 1);
  puts_(" rip 0x");
  puthex(f->rip, 1);
  putch('\n');
  poweroff();
}

/* Every vector gets a gate; vectors without a handler print themselves and power off. */
static void idt_load(void) {
  u16 cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  for (int v = 0; v < 256; v++) {
    u64 a = (u64)isr_stubs + 16 * (u64)v;
    idt[v].off_lo = (u16)a;
    idt[v].sel = cs;
    idt[v].ist = 0;
    idt[v].type = 0x8e;
    idt[v].off_mid = (u16)(a >> 16);
    idt[v].off_hi = (u32)(a >> 32);
    idt[v].zero = 0;
  }
  struct __attribute__((packed)) {
    u16 limit;
    u64 base;
  } idtr = {sizeof idt - 1, (u64)idt};
  __asm__ volatile("lidt %0" : : "m"(idtr));
}

static void lapic_eoi(void) { wr32(LAPIC + LAPIC_EOI, 0); }

static void ioapic_write(u32 reg, u32 v) {
  wr32(IOAPIC, reg);      /* IOREGSEL */
  wr32(IOAPIC + 0x10, v); /* IOWIN */
}

static u32 ioapic_read(u32 reg) {
  wr32(IOAPIC, reg);
  return rd32(IOAPIC + 0x10);
}

/* Pin -> vector: fixed delivery, physical destination (this CPU's APIC ID), edge, active high, unmasked. */
static void ioapic_route(u32 pin, u8 vector) {
  u32 apic_id = rd32(LAPIC + LAPIC_ID) >> 24;
  ioapic_write(0x11 + 2 * pin, apic_id << 24);
  ioapic_write(0x10 + 2 * pin, vector);
}

/*
 * The IDT, the LAPIC software-enabled (spurious vector 0xff) and the 8259 pair
 * masked, as an OS that uses the IOAPIC does: the monitor leaves KVM's PIC as
 * created (vector base 0, nothing masked) with LINT0 = ExtINT, so unmasked it
 * would also deliver ISA IRQ n as vector n, on top of the CPU exceptions.
 * Interrupts stay off (cli).
 */
static void irq_init(void) {
  idt_load();
  outb(0x21, 0xff);
  outb(0xa1, 0xff);
  wr32(LAPIC + LAPIC_SVR, 0x1ff);
  u32 ver = ioapic_read(0x01);
  puts_("ioapic: version 0x");
  puthex(ver & 0xff, 2);
  puts_(", ");
  putdec(((ver >> 16) & 0xff) + 1);
  println(" pins");
}

/* sti; hlt until *flag is nonzero (sti's one-instruction shadow covers hlt: no lost wakeup). */
static void wait_irq(volatile u32 *flag) {
  while (!*flag) __asm__ volatile("sti; hlt; cli" : : : "memory");
}

/* ---- serialirq: UART receive interrupts through IOAPIC pin 4 ---------------------- */

static volatile u32 serial_irqs, serial_empty;
static char irq_line[256];
static size_t irq_line_len;

static void serial_irq(void) {
  serial_irqs++;
  if (!(inb(COM1_LSR) & 0x01)) serial_empty++; /* raised while we drained: nothing left */
  while (inb(COM1_LSR) & 0x01) {
    char c = (char)inb(COM1);
    if (c == '\r') continue;
    if (c != '\n') {
      if (irq_line_len + 1 < sizeof irq_line) irq_line[irq_line_len++] = c;
      continue;
    }
    irq_line[irq_line_len] = 0;
    irq_line_len = 0;
    puts_("irq line: ");
    println(irq_line);
    if (str_eq(irq_line, "quit")) {
      print_num("irqs: ", serial_irqs);
      print_num("irqs without data: ", serial_empty);
      poweroff();
    }
  }
  lapic_eoi();
}

static void mode_serialirq(void) {
  irq_init();
  irq_handler[VEC_SERIAL] = serial_irq;
  ioapic_route(4, VEC_SERIAL);
  outb(COM1 + 1, 0x01); /* IER: received data available */
  outb(COM1 + 4, 0x08); /* MCR: OUT2 (gates the UART's interrupt onto the bus on a PC) */
  println("ready");
  static volatile u32 never;
  wait_irq(&never);
}

/* ---- blkirq: a virtio-blk read completed by interrupt ------------------------------- */

static volatile u32 blk_irqs, blk_isr;

static void blk_irq(void) {
  blk_irqs++;
  u32 isr = rd32(vdev + 0x060); /* InterruptStatus */
  wr32(vdev + 0x064, isr);      /* InterruptACK */
  blk_isr |= isr;
  lapic_eoi();
}

static void mode_blkirq(const char *cmdline) {
  u32 irq = 0;
  u64 base = virtio_find(cmdline, 2, &irq);
  if (!base || irq == 0 || irq > 23) {
    print_num("blkirq: no virtio-blk device with an irq, irq ", irq);
    poweroff();
  }
  print_num("blkirq irq: ", irq);
  irq_init();
  irq_handler[VEC_BLK] = blk_irq;
  ioapic_route(irq, VEC_BLK);
  if (virtio_begin(base) < 0 || virtq_setup(0, QSIZE, 1) < 0) poweroff();
  virtio_driver_ok();

  memset(blk_data, 0, sizeof blk_data);
  blk_hdr.type = VIRTIO_BLK_T_IN;
  blk_hdr.reserved = 0;
  blk_hdr.sector = 0;
  blk_status = 0xff;
  virtq_desc_set(0, 0, (u64)&blk_hdr, sizeof blk_hdr, VIRTQ_DESC_F_NEXT, 1);
  virtq_desc_set(0, 1, (u64)blk_data, sizeof blk_data, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  virtq_desc_set(0, 2, (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0);
  barrier();
  virtq_kick(0, 0);
  wait_irq(&blk_irqs);

  puts_("blkirq isr: 0x");
  puthex(blk_isr, 1);
  putch('\n');
  /* the interrupt came after the device published the used element: no polling */
  struct virtq *vq = &vqs[0];
  if (*(volatile u16 *)&vq->used.idx == vq->last_used) {
    println("blkirq: interrupt before the used ring moved");
    poweroff();
  }
  barrier();
  vq->last_used++;
  if (blk_status != 0) print_num("blkirq status: ", blk_status);
  puts_("blkirq sector0: ");
  put_printable(blk_data, 16);
  putch('\n');
  print_num("blkirq interrupts: ", blk_irqs);
  poweroff();
}

/* ---- lapictimer: the LAPIC timer, one-shot, re-armed from its handler ------------------ */

#define TIMER_COUNT 100000 /* x16 bus cycles: about 1.6 ms at KVM's 1 GHz APIC bus */

static volatile u32 timer_ticks, timer_done;

static void timer_irq(void) {
  timer_ticks++;
  if (timer_ticks >= 3) timer_done = 1;
  else wr32(LAPIC + LAPIC_TIMER_INIT, TIMER_COUNT);
  lapic_eoi();
}

static void mode_lapictimer(void) {
  irq_init();
  irq_handler[VEC_TIMER] = timer_irq;
  wr32(LAPIC + LAPIC_TIMER_DIV, 0x3);              /* divide by 16 */
  wr32(LAPIC + LAPIC_LVT_TIMER, VEC_TIMER);        /* one-shot, unmasked */
  wr32(LAPIC + LAPIC_TIMER_INIT, TIMER_COUNT);
  wait_irq(&timer_done);
  print_num("timer ticks: ", timer_ticks);
  print_num("timer current count: ", rd32(LAPIC + LAPIC_TIMER_CUR));
  poweroff();
}

/* ---- the simple modes ------------------------------------------------------------- */

/*
 * acpioff: power off the way an ACPI kernel does on a hardware-reduced machine:
 * find the RSDP in the BIOS area, follow the XSDT to the FADT, read the sleep
 * control register and \_S5's sleep type from the DSDT, write SLP_TYP | SLP_EN.
 */
static const u8 *find_sig(const u8 *from, u64 len, const char *sig, int n, u64 step) {
  for (u64 off = 0; off + (u64)n <= len; off += step) {
    int k = 0;
    while (k < n && from[off + k] == (u8)sig[k]) k++;
    if (k == n) return from + off;
  }
  return 0;
}

static void mode_acpioff(void) {
  const u8 *rsdp = find_sig((const u8 *)0xe0000, 0x20000, "RSD PTR ", 8, 16);
  if (!rsdp) {
    println("acpi: no RSDP");
    poweroff();
  }
  u64 xsdt = *(const u64 *)(rsdp + 24);
  const u8 *x = (const u8 *)xsdt;
  u32 xlen = *(const u32 *)(x + 4);
  const u8 *fadt = 0;
  for (u32 off = 36; off + 8 <= xlen; off += 8) {
    const u8 *t = (const u8 *)*(const u64 *)(x + off);
    if (t[0] == 'F' && t[1] == 'A' && t[2] == 'C' && t[3] == 'P') fadt = t;
  }
  if (!fadt) {
    println("acpi: no FADT");
    poweroff();
  }
  u32 flags = *(const u32 *)(fadt + 112);
  u64 port = *(const u64 *)(fadt + 244 + 4);
  const u8 *dsdt = (const u8 *)*(const u64 *)(fadt + 140);
  const u8 *s5 = find_sig(dsdt, *(const u32 *)(dsdt + 4), "_S5_", 4, 1);
  /* Name(_S5_, Package(){ BytePrefix n, ... }): _S5_ 0x12 pkglen count 0x0a n */
  u8 typ = s5 && s5[4] == 0x12 && s5[7] == 0x0a ? s5[8] : 0xff;
  puts_("acpi: hw-reduced ");
  putdec((flags >> 20) & 1);
  puts_(", sleep control port 0x");
  puthex(port, 1);
  puts_(", S5 type ");
  putdec(typ);
  println("");
  if (typ > 7 || port == 0 || port > 0xffff) poweroff();
  outb((u16)port, (u8)((typ << 2) | 0x20));
  println("acpi: still running after S5");
  for (;;) __asm__ volatile("hlt");
}

/*
 * cmpxchg16b: an instruction KVM's emulator lacks. On hardware virtualization
 * it simply runs; under PVM the guest ends in an emulation failure.
 */
static void mode_cmpxchg16b(void) {
  static u64 slot[2] __attribute__((aligned(16)));
  println("trying cmpxchg16b");
  u64 lo = 0, hi = 0, nlo = 1, nhi = 2;
  __asm__ volatile("lock cmpxchg16b %0" : "+m"(slot[0]), "+a"(lo), "+d"(hi) : "b"(nlo), "c"(nhi) : "memory", "cc");
  puts_("survived: ");
  putdec(slot[0]);
  println("");
  poweroff();
}

static void mode_hello(const struct boot_info *bi) {
  println("hello from guest");
  puts_("cmdline: ");
  println(bi->cmdline);
  u64 kib = 0;
  for (int i = 0; i < bi->nmap; i++)
    if (bi->map[i].type == 1) kib += bi->map[i].size >> 10;
  puts_("e820: ");
  putdec((u64)bi->nmap);
  puts_(" entries, ");
  putdec(kib);
  println(" KiB");
  poweroff();
}

static void mode_echo(void) {
  char line[256];
  size_t n = 0;
  for (;;) {
    int c = serial_getc();
    if (c == '\r') continue;
    if (c != '\n') {
      if (n + 1 < sizeof line) line[n++] = (char)c;
      continue;
    }
    line[n] = 0;
    n = 0;
    puts_("got: ");
    println(line);
    if (str_eq(line, "quit")) {
      println("bye");
      poweroff();
    }
  }
}

static void mode_ctrlaltdel(void) {
  println("waiting");
  for (;;) {
    if (!(inb(0x64) & 1)) continue;
    u8 sc = inb(0x60);
    puts_("scancode ");
    puthex(sc, 2);
    putch('\n');
    if (sc == 0x53) {
      println("ctrl-alt-del");
      reset_i8042();
    }
  }
}

static void mode_triple(void) {
  println("faulting");
  struct __attribute__((packed)) {
    u16 limit;
    u64 base;
  } idtr = {0, 0};
  __asm__ volatile("lidt %0; ud2" : : "m"(idtr));
  halt_forever();
}

static void mode_count(void) {
  u64 ticks = 0;
  for (;;) {
    for (u32 i = 0; i < 2000; i++) barrier();
    print_num("tick ", ++ticks);
  }
}

static void mode_spin(void) {
  println("spinning");
  u64 x = 1;
  for (;;) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    x ^= x >> 29;
    __asm__ volatile("" : "+r"(x));
  }
}

/* ---- entry ---------------------------------------------------------------------- */

static __attribute__((noreturn)) void guest_main(const struct boot_info *bi) {
  println(bi->entry);
  char mode[64];
  word_copy(mode, sizeof mode, cmdline_find(bi->cmdline, "nacelle.test=", 0));
  puts_("guest: ");
  println(mode);

  if (str_eq(mode, "hello")) mode_hello(bi);
  else if (str_eq(mode, "echo")) mode_echo();
  else if (str_eq(mode, "reset")) {
    println("resetting");
    reset_i8042();
  } else if (str_eq(mode, "ctrlaltdel")) mode_ctrlaltdel();
  else if (str_eq(mode, "triple")) mode_triple();
  else if (str_eq(mode, "acpioff")) mode_acpioff();
  else if (str_eq(mode, "cmpxchg16b")) mode_cmpxchg16b();
  else if (str_eq(mode, "blk")) mode_blk(bi->cmdline);
  else if (str_eq(mode, "console")) mode_console(bi->cmdline);
  else if (str_eq(mode, "smp")) mode_smp();
  else if (str_eq(mode, "count")) mode_count();
  else if (str_eq(mode, "spin")) mode_spin();
  else if (str_eq(mode, "serialirq")) mode_serialirq();
  else if (str_eq(mode, "blkirq")) mode_blkirq(bi->cmdline);
  else if (str_eq(mode, "lapictimer")) mode_lapictimer();
  else if (memcmp(mode, "badq=", 5) == 0) mode_badq(bi->cmdline, mode + 5);
  println("guest: unknown mode");
  poweroff();
}

static struct boot_info boot_info;

/* Linux 64-bit boot protocol: bp = boot_params (the zero page). */
void linux64_main(u64 bp) {
  struct boot_info *bi = &boot_info;
  bi->entry = "entry: linux64";
  u32 cmd = *(volatile u32 *)(bp + 0x228);
  bi->cmdline = cmd ? (const char *)(u64)cmd : "";
  u8 n = *(volatile u8 *)(bp + 0x1e8);
  if (n > MAX_MAP) n = MAX_MAP;
  for (int i = 0; i < n; i++) {
    const struct __attribute__((packed)) {
      u64 addr, size;
      u32 type;
    } *e = (const void *)(bp + 0x2d0 + 20 * (u64)i);
    bi->map[i].addr = e->addr;
    bi->map[i].size = e->size;
    bi->map[i].type = e->type;
  }
  bi->nmap = n;
  guest_main(bi);
}

/* PVH: si = hvm_start_info. */
void pvh_main(u32 si_addr) {
  struct boot_info *bi = &boot_info;
  const volatile u8 *si = (const volatile u8 *)(u64)si_addr;
  bi->entry = "entry: pvh";
  bi->cmdline = "";
  bi->nmap = 0;
  if (*(const volatile u32 *)si == 0x336ec578) {
    u64 cmd = *(const volatile u64 *)(si + 24);
    if (cmd) bi->cmdline = (const char *)cmd;
    u32 version = *(const volatile u32 *)(si + 4);
    if (version >= 1) {
      u64 map = *(const volatile u64 *)(si + 40);
      u32 n = *(const volatile u32 *)(si + 48);
      if (n > MAX_MAP) n = MAX_MAP;
      for (u32 i = 0; map && i < n; i++) {
        const volatile u8 *e = (const volatile u8 *)(map + 24 * (u64)i); /* addr, size, type, reserved */
        bi->map[i].addr = *(const volatile u64 *)e;
        bi->map[i].size = *(const volatile u64 *)(e + 8);
        bi->map[i].type = *(const volatile u32 *)(e + 16);
        bi->nmap = (int)i + 1;
      }
    }
  }
  guest_main(bi);
}
