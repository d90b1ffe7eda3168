/*
 * kvm/kvm.h: the monitor's internal interface, shared by the files in
 * binding/kvm/. Nothing here knows N-API (binding/kvm/napi.c does).
 *
 * Guest physical layout (the same for every VM; test guests rely on it):
 *   0x00000500  GDT: 0x10 = 64-bit code, 0x18 = data (Linux's __BOOT_CS/__BOOT_DS)
 *   0x00007000  boot_params (the zero page), rsi at the 64-bit entry
 *   0x00009000  PML4, 0xa000 PDPT, 0xb000..0xefff four page directories:
 *               the first 4 GiB identity-mapped with 2 MiB pages
 *   0x00010000  hvm_start_info + its memory map (PVH entry)
 *   0x00020000  kernel command line (up to 64 KiB)
 *   0x0009fc00  MP table (floating pointer + configuration table)
 *   0x00100000  the kernel (bzImage protected-mode part; ELF segments at their p_paddr)
 *   top of RAM  initrd, page-aligned, below the kernel's initrd_addr_max
 *   0xd0000000  virtio-mmio devices, 4 KiB apart, IRQ 5 upward, on the command line
 *   0xfec00000  IOAPIC, 0xfee00000 LAPIC (in-kernel irqchip)
 * Ports: 0x3f8 8250 UART (IRQ 4); 0x60/0x64 i8042 (IRQ 1; 0xfe to 0x64 resets);
 * a 16-bit write of 0x2000 to 0x604 powers off (QEMU's PIIX4 ACPI convention), and so
 * does S5 through the ACPI sleep control register at 0x600 (what Linux uses).
 *   0x000e0000  ACPI tables (RSDP, XSDT, FADT, MADT, DSDT), in the reserved BIOS area
 */
#ifndef NACELLE_KVM_H
#define NACELLE_KVM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define KVM_MAX_VCPUS 64
#define KVM_MAX_MMIO_DEVS 16
#define KVM_MAX_IO_WATCH 16

#define GUEST_GDT 0x500ULL
#define GUEST_BOOT_PARAMS 0x7000ULL
#define GUEST_PML4 0x9000ULL
#define GUEST_PVH_INFO 0x10000ULL
#define GUEST_CMDLINE 0x20000ULL
#define GUEST_CMDLINE_MAX 0x10000ULL
#define GUEST_MPTABLE 0x9fc00ULL
#define GUEST_ACPI_RSDP 0xe0000ULL
#define GUEST_KERNEL 0x100000ULL
#define GUEST_MMIO_BASE 0xd0000000ULL
#define GUEST_MMIO_STRIDE 0x1000ULL
#define GUEST_MMIO_FIRST_IRQ 5
#define GUEST_RAM_MAX 0xc0000000ULL /* RAM ends below the 32-bit MMIO hole */
#define GUEST_RAM_MIN (8ULL << 20)
#define IOAPIC_BASE 0xfec00000ULL
#define LAPIC_BASE 0xfee00000ULL

/* ---- helpers ----------------------------------------------------------------- */

/* Little-endian fields at any alignment (boot structures, ACPI, MP tables, snapshots). */
static inline void le_put16(uint8_t *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }
static inline void le_put32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void le_put64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline uint16_t le_get16(const uint8_t *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
static inline uint32_t le_get32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint64_t le_get64(const uint8_t *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }

/* In a function with `int rc`, `char *err, size_t errlen` and an `out:` label: say why, fail with -code. */
#define KVM_FAIL(code, ...)                      \
  do {                                           \
    if (err) snprintf(err, errlen, __VA_ARGS__); \
    rc = -(code);                                \
    goto out;                                    \
  } while (0)

/* ---- guest memory ---------------------------------------------------------- */

struct guest_mem {
  uint8_t *host;  /* mapping of guest physical 0..size */
  uint64_t size;
};

/*
 * Host address of guest range [gpa, gpa+len), or NULL when any byte of it is
 * outside guest RAM (overflow-safe). Every guest-supplied address goes through this.
 */
static inline void *gpa_to_hva(const struct guest_mem *m, uint64_t gpa, uint64_t len) {
  if (gpa > m->size || len > m->size - gpa) return 0;
  return m->host + gpa;
}

/* ---- devices --------------------------------------------------------------- */

struct vm;

/* A device on the MMIO bus, called from a vCPU thread with its own lock held. */
struct mmio_dev {
  uint64_t base, size;
  void *opaque;
  void (*read)(void *opaque, uint64_t off, uint8_t *data, uint32_t len);
  void (*write)(void *opaque, uint64_t off, const uint8_t *data, uint32_t len);
  pthread_mutex_t lock;
};

/* A file descriptor the VM's I/O thread watches for input (EPOLLIN). */
typedef void (*io_ready_fn)(void *opaque);

/* ---- the VM -------------------------------------------------------------- */

enum vm_exit_reason {
  VM_EXIT_NONE = 0,
  VM_EXIT_POWEROFF,
  VM_EXIT_RESET,
  VM_EXIT_CRASH,
  VM_EXIT_KILLED,
};

enum vm_state { VM_CREATED, VM_RUNNING, VM_PAUSED, VM_EXITED };

struct vcpu {
  struct vm *vm;
  int index;
  int fd;
  struct kvm_run *run;
  size_t run_size;
  pthread_t thread;
  bool thread_started;
  bool parked;     /* outside KVM_RUN, waiting on vm->cond (pause) */
  int tid;         /* the thread's id (for its CPU time in /proc), once it runs */
  uint64_t exits[32]; /* by KVM_EXIT_* reason (clamped) */
};

struct serial;
struct i8042;
struct virtio_dev;

struct vm {
  int kvm_fd, vm_fd;
  struct guest_mem mem;
  int ncpus;
  struct vcpu cpus[KVM_MAX_VCPUS];

  pthread_mutex_t lock; /* state, exit, pause */
  pthread_cond_t cond;
  enum vm_state state;
  bool pause_requested;
  bool stop_requested;
  bool io_busy; /* the I/O thread is running device callbacks (pause waits for it) */
  int running_vcpus;
  enum vm_exit_reason exit_reason;
  char exit_detail[2048];
  void (*on_exit)(struct vm *vm, void *opaque); /* once, from the last vCPU thread to stop */
  void *on_exit_opaque;

  struct mmio_dev *mmio[KVM_MAX_MMIO_DEVS];
  int nmmio;
  int irqfds[24]; /* eventfd per GSI, registered with KVM_IRQFD; -1 unused */

  /* the I/O thread: epoll over device input fds plus a wake eventfd */
  int epoll_fd, wake_fd;
  pthread_t io_thread;
  bool io_started;
  int io_tid;
  struct { int fd; io_ready_fn fn; void *opaque; bool enabled; } watch[KVM_MAX_IO_WATCH];
  int nwatch;
  pthread_mutex_t io_lock; /* watch[].enabled and the epoll set */

  struct serial *serial;
  struct i8042 *i8042;
  struct virtio_dev *virtio[KVM_MAX_MMIO_DEVS];
  int nvirtio;
};

/* Raises an edge on a GSI (0..23) through its irqfd. Thread-safe. */
void vm_irq_raise(struct vm *vm, int gsi);
/* Registers an MMIO device (before start). */
int vm_add_mmio(struct vm *vm, struct mmio_dev *dev);
/* Watches fd for input on the I/O thread; fn runs there. Before start. */
int vm_io_watch(struct vm *vm, int fd, io_ready_fn fn, void *opaque);
/* Turns watching fd on or off (flow control). Thread-safe. */
void vm_io_enable(struct vm *vm, int fd, bool on);
/* Ends the VM from a device or vCPU thread (first reason wins). */
void vm_request_exit(struct vm *vm, enum vm_exit_reason reason, const char *detail);
/* Blocks until fd is writable or the VM is stopping; 0, or -1 when stopping. */
int vm_wait_writable(struct vm *vm, int fd);
/* write() all of buf to a non-blocking fd, waiting while it is full; -1 when stopping. */
int vm_write_all(struct vm *vm, int fd, const void *buf, size_t len);

/* ---- serial.c: 8250 UART at 0x3f8 ------------------------------------------- */

/* out_fd receives what the guest transmits; in_fd (may equal out_fd) feeds its receiver. */
struct serial *serial_create(struct vm *vm, int out_fd, int in_fd);
void serial_destroy(struct serial *s);
void serial_io(struct serial *s, uint16_t port, uint8_t *data, bool is_write);
/* Snapshot support: a flat copy of the registers and FIFO. */
size_t serial_state_size(void);
void serial_save(struct serial *s, void *buf);
void serial_load(struct serial *s, const void *buf);

/* ---- i8042.c: reset line and Ctrl-Alt-Del --------------------------------- */

struct i8042 *i8042_create(struct vm *vm);
void i8042_destroy(struct i8042 *k);
void i8042_io(struct i8042 *k, uint16_t port, uint8_t *data, bool is_write);
/* Queues Ctrl-Alt-Del scancodes and raises IRQ 1 (stop()'s polite request). */
void i8042_ctrl_alt_del(struct i8042 *k);
size_t i8042_state_size(void);
void i8042_save(struct i8042 *k, void *buf);
void i8042_load(struct i8042 *k, const void *buf);

/* ---- virtio (virtio_mmio.c, virtq.c, blk.c, console.c) ---------------------- */

/* Adds a virtio-blk device backed by an open file; index picks its MMIO slot. */
int virtio_blk_add(struct vm *vm, int fd, bool readonly, const char *serial_id);
/* Adds a virtio-console device (one port) whose data goes to and from fd (a socket). */
int virtio_console_add(struct vm *vm, int fd);
void virtio_destroy_all(struct vm *vm);
/* Before the threads start: ioeventfds for QueueNotify, and a look at restored queues. */
int virtio_start(struct vm *vm);
/* Snapshot support for every virtio device in order (transport + queue indexes). */
size_t virtio_state_size(struct vm *vm);
void virtio_save(struct vm *vm, void *buf);
int virtio_load(struct vm *vm, const void *buf, size_t len);
/* Appends "virtio_mmio.device=4K@0x...:IRQ" for every device to cmdline. */
int virtio_cmdline(struct vm *vm, char *cmdline, size_t cap);
/* Device errors seen (bad descriptors etc.) for stats; NULL-terminated names. */
uint64_t virtio_error_count(struct vm *vm);
/* The last device error's message (e.g. "virtio-blk: descriptor loop in queue 0"), or NULL. */
const char *virtio_last_error(struct vm *vm);

/* ---- acpi.c ------------------------------------------------------------------ */

#define ACPI_SLEEP_CONTROL_PORT 0x600 /* FADT sleep control: SLP_EN | SLP_TYP 5 = power off */
#define ACPI_SLEEP_STATUS_PORT 0x601
/* Writes RSDP, XSDT, FADT, MADT and DSDT (after the devices are added); *rsdp = its address. */
int acpi_write(struct vm *vm, uint64_t *rsdp);

/* ---- boot.c ------------------------------------------------------------------ */

struct boot_config {
  const char *kernel_path;
  const char *initrd_path; /* NULL: none */
  const char *cmdline;
};
/* Loads kernel (bzImage or ELF vmlinux) and initrd, writes boot structures, sets BSP registers. */
int boot_load(struct vm *vm, const struct boot_config *cfg, char *err, size_t errlen);
/* Writes the MP table for vm->ncpus vCPUs. */
int mptable_write(struct vm *vm);

/* ---- vm.c ---------------------------------------------------------------------- */

struct vm_config {
  uint64_t mem_size;
  int ncpus;
  const char *mem_file; /* non-NULL: map this file MAP_PRIVATE as guest RAM (restore) */
};
int vm_create(const struct vm_config *cfg, struct vm **out, char *err, size_t errlen);
int vm_start(struct vm *vm);
int vm_pause(struct vm *vm);
int vm_resume(struct vm *vm);
void vm_kill(struct vm *vm);
/* Joins threads and frees everything; call after the exit callback (or instead of start). */
void vm_destroy(struct vm *vm);
int vcpu_setup_cpuid_msrs(struct vm *vm, struct vcpu *c);
const char *vm_exit_reason_name(enum vm_exit_reason r);

/* ---- snapshot.c ---------------------------------------------------------------- */

int vm_snapshot(struct vm *vm, const char *dir, char *err, size_t errlen);
/* Creates a VM from a snapshot directory, paused; devices are re-added by the caller first. */
int vm_restore_state(struct vm *vm, const char *dir, char *err, size_t errlen);
/* Reads and checks a snapshot's header: memory size and vCPU count. */
int snapshot_read_header(const char *dir, uint64_t *mem_size, int *ncpus, char *err, size_t errlen);

#endif
