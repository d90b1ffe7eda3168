/*
 * kvm/vm.c: one VM: guest memory, the in-kernel irqchip and PIT, vCPU threads
 * running KVM_RUN, the port and MMIO buses, the I/O thread, and how a VM ends.
 *
 * Threads: one per vCPU plus one I/O thread (device input). The JS thread only
 * creates, kicks and joins them. A vCPU leaves KVM_RUN when kicked with
 * SIG_KICK, which is blocked everywhere except inside KVM_RUN (KVM_SET_SIGNAL_MASK),
 * so a kick can never be lost between the state check and the ioctl.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm.h"

#define SIG_KICK (SIGRTMIN + 6)

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static void kick_handler(int sig) { (void)sig; }
static void kick_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIG_KICK, &sa, NULL);
}

const char *vm_exit_reason_name(enum vm_exit_reason r) {
  switch (r) {
    case VM_EXIT_POWEROFF: return "poweroff";
    case VM_EXIT_RESET: return "reset";
    case VM_EXIT_CRASH: return "crash";
    case VM_EXIT_KILLED: return "killed";
    default: return "none";
  }
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *what, int e) {
  if (err && errlen) snprintf(err, errlen, fmt, what, strerror(e));
}

/* ---- exits ---------------------------------------------------------------- */

static void kick_all(struct vm *vm) {
  for (int i = 0; i < vm->ncpus; i++) {
    struct vcpu *c = &vm->cpus[i];
    if (c->thread_started) pthread_kill(c->thread, SIG_KICK);
  }
}

void vm_request_exit(struct vm *vm, enum vm_exit_reason reason, const char *detail) {
  pthread_mutex_lock(&vm->lock);
  if (vm->exit_reason == VM_EXIT_NONE) {
    vm->exit_reason = reason;
    snprintf(vm->exit_detail, sizeof vm->exit_detail, "%s", detail ? detail : "");
  }
  bool first = !vm->stop_requested;
  vm->stop_requested = true;
  pthread_cond_broadcast(&vm->cond);
  pthread_mutex_unlock(&vm->lock);
  if (first) {
    uint64_t one = 1;
    ssize_t w = write(vm->wake_fd, &one, sizeof one);
    (void)w;
    kick_all(vm);
  }
}

static int dump_regs(struct vcpu *c, char *buf, size_t cap) {
  struct kvm_regs r;
  struct kvm_sregs s;
  int n = 0;
  if (ioctl(c->fd, KVM_GET_REGS, &r) == 0) {
    n += snprintf(buf + n, cap - n,
                  "vcpu %d: rip=0x%016llx rsp=0x%016llx rflags=0x%llx\n"
                  "rax=0x%llx rbx=0x%llx rcx=0x%llx rdx=0x%llx rsi=0x%llx rdi=0x%llx rbp=0x%llx\n"
                  "r8=0x%llx r9=0x%llx r10=0x%llx r11=0x%llx r12=0x%llx r13=0x%llx r14=0x%llx r15=0x%llx",
                  c->index, r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
                  r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15);
  }
  if (n < (int)cap && ioctl(c->fd, KVM_GET_SREGS, &s) == 0) {
    n += snprintf(buf + n, cap - n,
                  "\ncr0=0x%llx cr2=0x%llx cr3=0x%llx cr4=0x%llx efer=0x%llx cs=0x%x(l=%d,db=%d) ss=0x%x idt=0x%llx/%u gdt=0x%llx/%u",
                  s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.l, s.cs.db, s.ss.selector,
                  s.idt.base, s.idt.limit, s.gdt.base, s.gdt.limit);
  }
  return n;
}

static void vcpu_crash(struct vcpu *c, const char *what) {
  char detail[sizeof c->vm->exit_detail];
  int n = snprintf(detail, sizeof detail, "%s\n", what);
  if (n < (int)sizeof detail) dump_regs(c, detail + n, sizeof detail - n);
  vm_request_exit(c->vm, VM_EXIT_CRASH, detail);
}

/* ---- buses ------------------------------------------------------------------ */

int vm_add_mmio(struct vm *vm, struct mmio_dev *dev) {
  if (vm->nmmio >= KVM_MAX_MMIO_DEVS) return -ENOSPC;
  vm->mmio[vm->nmmio++] = dev;
  return 0;
}

static void handle_pio(struct vcpu *c) {
  struct vm *vm = c->vm;
  struct kvm_run *run = c->run;
  uint8_t *base = (uint8_t *)run + run->io.data_offset;
  bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
  uint16_t port = run->io.port;
  for (uint32_t i = 0; i < run->io.count; i++) {
    uint8_t *data = base + (size_t)i * run->io.size;
    if (port >= 0x3f8 && port <= 0x3ff && vm->serial) {
      if (run->io.size == 1) serial_io(vm->serial, port, data, is_write);
      else if (!is_write) memset(data, 0xff, run->io.size);
    } else if ((port == 0x60 || port == 0x64) && vm->i8042) {
      if (run->io.size == 1) i8042_io(vm->i8042, port, data, is_write);
      else if (!is_write) memset(data, 0xff, run->io.size);
    } else if (port == ACPI_SLEEP_CONTROL_PORT && is_write) {
      uint8_t v = data[0];
      if ((v & 0x20) && ((v >> 2) & 7) == 5) vm_request_exit(vm, VM_EXIT_POWEROFF, "the guest powered off (ACPI S5)");
    } else if (port == 0x604 && is_write && run->io.size == 2) {
      uint16_t v;
      memcpy(&v, data, 2);
      if (v == 0x2000) vm_request_exit(vm, VM_EXIT_POWEROFF, "the guest powered off (port 0x604)");
    } else if (!is_write) {
      memset(data, 0xff, run->io.size); /* nothing there: an empty ISA bus reads all ones */
    }
  }
}

static void handle_mmio(struct vcpu *c) {
  struct vm *vm = c->vm;
  struct kvm_run *run = c->run;
  uint64_t addr = run->mmio.phys_addr;
  uint32_t len = run->mmio.len;
  if (len > 8) len = 8;
  for (int i = 0; i < vm->nmmio; i++) {
    struct mmio_dev *d = vm->mmio[i];
    if (addr >= d->base && addr - d->base < d->size && len <= d->size - (addr - d->base)) {
      pthread_mutex_lock(&d->lock);
      if (run->mmio.is_write) d->write(d->opaque, addr - d->base, run->mmio.data, len);
      else d->read(d->opaque, addr - d->base, run->mmio.data, len);
      pthread_mutex_unlock(&d->lock);
      return;
    }
  }
  if (!run->mmio.is_write) memset(run->mmio.data, 0xff, len);
}

/* ---- vCPU threads ------------------------------------------------------------- */

static void vcpu_exit_event(struct vcpu *c) {
  struct kvm_run *run = c->run;
  char what[512];
  switch (run->exit_reason) {
    case KVM_EXIT_IO:
      handle_pio(c);
      break;
    case KVM_EXIT_MMIO:
      handle_mmio(c);
      break;
    case KVM_EXIT_INTR:
    case KVM_EXIT_IRQ_WINDOW_OPEN:
      break;
    case KVM_EXIT_HLT:
      /* Only without an in-kernel irqchip, which we always have. */
      vcpu_crash(c, "the guest halted with no interrupt controller (KVM_EXIT_HLT)");
      break;
    case KVM_EXIT_SHUTDOWN:
      vcpu_crash(c, "triple fault (KVM_EXIT_SHUTDOWN)");
      break;
    case KVM_EXIT_FAIL_ENTRY:
      snprintf(what, sizeof what, "VM entry failed (hardware reason 0x%llx)",
               (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
      vcpu_crash(c, what);
      break;
    case KVM_EXIT_INTERNAL_ERROR: {
      const char *kind = run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? "emulation failure"
                         : run->internal.suberror == KVM_INTERNAL_ERROR_SIMUL_EX ? "exception while delivering an exception"
                         : run->internal.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV ? "event delivery failure"
                                                                                   : "internal error";
      int n = snprintf(what, sizeof what, "KVM internal error: %s (suberror %u)", kind, run->internal.suberror);
#ifdef KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
      if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION &&
          (run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
        n += snprintf(what + n, sizeof what - n, "; instruction bytes:");
        for (unsigned i = 0; i < run->emulation_failure.insn_size && i < 15 && n < (int)sizeof what; i++)
          n += snprintf(what + n, sizeof what - n, " %02x", run->emulation_failure.insn_bytes[i]);
      }
#endif
      (void)n;
      vcpu_crash(c, what);
      break;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          vm_request_exit(c->vm, VM_EXIT_POWEROFF, "the guest powered off (system event)");
          break;
        case KVM_SYSTEM_EVENT_RESET:
          vm_request_exit(c->vm, VM_EXIT_RESET, "the guest reset (system event)");
          break;
        default:
          snprintf(what, sizeof what, "guest crash (system event %u)", run->system_event.type);
          vcpu_crash(c, what);
      }
      break;
    default:
      snprintf(what, sizeof what, "unexpected KVM exit %u", run->exit_reason);
      vcpu_crash(c, what);
  }
}

static void vcpu_thread_done(struct vm *vm) {
  pthread_mutex_lock(&vm->lock);
  bool last = --vm->running_vcpus == 0;
  if (last) vm->state = VM_EXITED;
  pthread_cond_broadcast(&vm->cond);
  pthread_mutex_unlock(&vm->lock);
  if (last && vm->on_exit) vm->on_exit(vm, vm->on_exit_opaque);
}

static void *vcpu_main(void *arg) {
  struct vcpu *c = arg;
  struct vm *vm = c->vm;
  char name[16];
  snprintf(name, sizeof name, "nacelle-vcpu%d", c->index % 100);
  pthread_setname_np(pthread_self(), name); /* what ps -T and /proc/<pid>/task/<tid>/comm show */
  __atomic_store_n(&c->tid, (int)gettid(), __ATOMIC_RELAXED);
  sigset_t kick;
  sigemptyset(&kick);
  sigaddset(&kick, SIG_KICK);
  /* The thread was created with every signal blocked; inside KVM_RUN only SIG_KICK is open. */
  sigset_t during;
  pthread_sigmask(SIG_SETMASK, NULL, &during);
  sigdelset(&during, SIG_KICK);
  struct {
    struct kvm_signal_mask hdr;
    uint8_t set[8];
  } mask;
  mask.hdr.len = 8;
  memcpy(mask.set, &during, 8);
  if (ioctl(c->fd, KVM_SET_SIGNAL_MASK, &mask) < 0) {
    char what[128];
    snprintf(what, sizeof what, "KVM_SET_SIGNAL_MASK failed: %s", strerror(errno));
    vm_request_exit(vm, VM_EXIT_CRASH, what);
    vcpu_thread_done(vm);
    return NULL;
  }
  struct timespec zero = {0, 0};
  for (;;) {
    pthread_mutex_lock(&vm->lock);
    while (vm->pause_requested && !vm->stop_requested) {
      c->parked = true;
      pthread_cond_broadcast(&vm->cond);
      pthread_cond_wait(&vm->cond, &vm->lock);
    }
    c->parked = false;
    bool stop = vm->stop_requested;
    pthread_mutex_unlock(&vm->lock);
    if (stop) break;
    int r = ioctl(c->fd, KVM_RUN, 0);
    if (r < 0) {
      int e = errno;
      if (e == EINTR || e == EAGAIN) {
        while (sigtimedwait(&kick, NULL, &zero) > 0) {
        }
        c->exits[KVM_EXIT_INTR]++;
        continue;
      }
      char what[128];
      snprintf(what, sizeof what, "KVM_RUN failed: %s", strerror(e));
      vcpu_crash(c, what);
      break;
    }
    c->exits[c->run->exit_reason < 32 ? c->run->exit_reason : 31]++;
    vcpu_exit_event(c);
  }
  vcpu_thread_done(vm);
  return NULL;
}

/* ---- the I/O thread -------------------------------------------------------------- */

int vm_io_watch(struct vm *vm, int fd, io_ready_fn fn, void *opaque) {
  if (vm->nwatch >= KVM_MAX_IO_WATCH) return -ENOSPC;
  int i = vm->nwatch++;
  vm->watch[i].fd = fd;
  vm->watch[i].fn = fn;
  vm->watch[i].opaque = opaque;
  vm->watch[i].enabled = true;
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
  if (epoll_ctl(vm->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    vm->nwatch--;
    return -errno;
  }
  return 0;
}

/*
 * A disabled fd leaves the epoll set entirely: with no events asked for, epoll
 * still reports a hung-up peer on every wait, and the I/O thread would spin.
 */
void vm_io_enable(struct vm *vm, int fd, bool on) {
  pthread_mutex_lock(&vm->io_lock);
  for (int i = 0; i < vm->nwatch; i++) {
    if (vm->watch[i].fd != fd || vm->watch[i].enabled == on) continue;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(vm->epoll_fd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &ev);
    vm->watch[i].enabled = on;
  }
  pthread_mutex_unlock(&vm->io_lock);
}

static void *io_main(void *arg) {
  struct vm *vm = arg;
  pthread_setname_np(pthread_self(), "nacelle-vm-io");
  __atomic_store_n(&vm->io_tid, (int)gettid(), __ATOMIC_RELAXED);
  for (;;) {
    struct epoll_event evs[8];
    int n = epoll_wait(vm->epoll_fd, evs, 8, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    /*
     * Device input writes guest memory and device state (console receive
     * buffers): none of it may happen while the VM is paused, or a snapshot
     * would catch a device half-way. Wait here for resume; pause waits for us.
     */
    pthread_mutex_lock(&vm->lock);
    while (vm->pause_requested && !vm->stop_requested) pthread_cond_wait(&vm->cond, &vm->lock);
    bool stopping = vm->stop_requested;
    vm->io_busy = !stopping;
    pthread_mutex_unlock(&vm->lock);
    if (stopping) return NULL;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u32 == UINT32_MAX) break; /* wake_fd: the VM is stopping */
      uint32_t w = evs[i].data.u32;
      if (w < (uint32_t)vm->nwatch) {
        if (evs[i].events & (EPOLLHUP | EPOLLERR) && !(evs[i].events & EPOLLIN)) {
          vm_io_enable(vm, vm->watch[w].fd, false);
          continue;
        }
        vm->watch[w].fn(vm->watch[w].opaque);
      }
    }
    pthread_mutex_lock(&vm->lock);
    vm->io_busy = false;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
  }
  return NULL;
}

int vm_wait_writable(struct vm *vm, int fd) {
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLOUT}, {.fd = vm->wake_fd, .events = POLLIN}};
    int n = poll(p, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (p[1].revents) return -1;
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) return -1;
    if (p[0].revents & POLLOUT) return 0;
  }
}

int vm_write_all(struct vm *vm, int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w > 0) {
      p += w;
      len -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (vm_wait_writable(vm, fd) < 0) return -1;
      continue;
    }
    return -1; /* the host end is gone: drop, like a serial line with nobody listening */
  }
  return 0;
}

void vm_irq_raise(struct vm *vm, int gsi) {
  if (gsi < 0 || gsi >= 24 || vm->irqfds[gsi] < 0) return;
  uint64_t one = 1;
  ssize_t w = write(vm->irqfds[gsi], &one, sizeof one);
  (void)w;
}

/* ---- lifecycle ------------------------------------------------------------------ */

struct memslot_job {
  struct vm *vm;
  pthread_t thread;
  int err;
};

static void *memslot_main(void *arg) {
  struct memslot_job *j = arg;
  struct vm *vm = j->vm;
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = vm->mem.size, .userspace_addr = (uint64_t)(uintptr_t)vm->mem.host};
  j->err = ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0 ? errno : 0;
  return NULL;
}

/* irqfds for the GSIs in use: i8042 (1), COM1 (4) and one per virtio device. */
static int vm_irqfds(struct vm *vm) {
  int gsis[2 + KVM_MAX_MMIO_DEVS];
  int n = 0;
  gsis[n++] = 1;
  gsis[n++] = 4;
  for (int i = 0; i < vm->nvirtio && i < KVM_MAX_MMIO_DEVS; i++) gsis[n++] = GUEST_MMIO_FIRST_IRQ + i;
  for (int k = 0; k < n; k++) {
    int gsi = gsis[k];
    if (gsi >= 24 || vm->irqfds[gsi] >= 0) continue;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return -errno;
    struct kvm_irqfd irqfd = {.fd = (uint32_t)fd, .gsi = (uint32_t)gsi};
    if (ioctl(vm->vm_fd, KVM_IRQFD, &irqfd) < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    vm->irqfds[gsi] = fd;
  }
  return 0;
}

int vm_create(const struct vm_config *cfg, struct vm **out, char *err, size_t errlen) {
  pthread_once(&kick_once, kick_install);
  if (cfg->ncpus < 1) return -EINVAL;
  if (cfg->mem_size < GUEST_RAM_MIN || cfg->mem_size > GUEST_RAM_MAX) {
    if (err) snprintf(err, errlen, "guest memory must be %llu to %llu MiB, not %llu MiB", GUEST_RAM_MIN >> 20, GUEST_RAM_MAX >> 20,
                      (unsigned long long)(cfg->mem_size >> 20));
    return -EINVAL;
  }
  struct vm *vm = calloc(1, sizeof *vm);
  if (!vm) return -ENOMEM;
  vm->kvm_fd = vm->vm_fd = vm->epoll_fd = vm->wake_fd = -1;
  for (int i = 0; i < 24; i++) vm->irqfds[i] = -1;
  for (int i = 0; i < KVM_MAX_VCPUS; i++) vm->cpus[i].fd = -1;
  pthread_mutex_init(&vm->lock, NULL);
  pthread_mutex_init(&vm->io_lock, NULL);
  pthread_cond_init(&vm->cond, NULL);
  vm->ncpus = 0; /* set once the count is checked: vm_destroy walks cpus[0..ncpus) */
  vm->mem.host = MAP_FAILED;
  int e;
  struct memslot_job slot = {.vm = vm};
  bool slot_thread = false;

  vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (vm->kvm_fd < 0) {
    e = errno;
    set_err(err, errlen, "open %s: %s", "/dev/kvm", e);
    goto fail;
  }
  int maxv = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
  if (maxv <= 0) maxv = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
  if (maxv <= 0) maxv = 4;
  if (cfg->ncpus > maxv || cfg->ncpus > KVM_MAX_VCPUS) {
    e = EINVAL;
    if (err) snprintf(err, errlen, "%d vCPUs asked, but KVM allows at most %d here", cfg->ncpus, maxv < KVM_MAX_VCPUS ? maxv : KVM_MAX_VCPUS);
    goto fail;
  }
  vm->ncpus = cfg->ncpus;
  vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
  if (vm->vm_fd < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_CREATE_VM", e);
    goto fail;
  }
  fcntl(vm->vm_fd, F_SETFD, FD_CLOEXEC);
  if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_SET_TSS_ADDR", e);
    goto fail;
  }
  uint64_t idmap = 0xfffbc000ULL;
  if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_SET_IDENTITY_MAP_ADDR", e);
    goto fail;
  }
  if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_CREATE_IRQCHIP", e);
    goto fail;
  }
  /*
   * The 8259s as a BIOS leaves them: vectors 0x08 and 0x70, every line masked.
   * KVM's come up at vector 0 and unmasked, so an ISA interrupt would reach a
   * guest that never programs them (through LINT0's ExtINT) as a CPU exception.
   */
  for (uint32_t chip = KVM_IRQCHIP_PIC_MASTER; chip <= KVM_IRQCHIP_PIC_SLAVE; chip++) {
    struct kvm_irqchip pic = {.chip_id = chip};
    if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &pic) < 0) {
      e = errno;
      set_err(err, errlen, "%s: %s", "KVM_GET_IRQCHIP", e);
      goto fail;
    }
    pic.chip.pic.irq_base = chip == KVM_IRQCHIP_PIC_MASTER ? 0x08 : 0x70;
    pic.chip.pic.imr = 0xff;
    if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &pic) < 0) {
      e = errno;
      set_err(err, errlen, "%s: %s", "KVM_SET_IRQCHIP", e);
      goto fail;
    }
  }
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_CREATE_PIT2", e);
    goto fail;
  }

  /* Guest RAM: anonymous, or the snapshot's memory file mapped copy-on-write. */
  vm->mem.size = cfg->mem_size;
  if (cfg->mem_file) {
    int mfd = open(cfg->mem_file, O_RDONLY | O_CLOEXEC);
    if (mfd < 0) {
      e = errno;
      set_err(err, errlen, "open %s: %s", cfg->mem_file, e);
      goto fail;
    }
    vm->mem.host = mmap(NULL, vm->mem.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, mfd, 0);
    e = errno;
    close(mfd);
  } else {
    vm->mem.host = mmap(NULL, vm->mem.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    e = errno;
    if (vm->mem.host != MAP_FAILED) madvise(vm->mem.host, vm->mem.size, MADV_HUGEPAGE);
  }
  if (vm->mem.host == MAP_FAILED) {
    set_err(err, errlen, "%s: %s", "mmap of guest memory", e);
    goto fail;
  }
  madvise(vm->mem.host, vm->mem.size, MADV_DONTFORK);
  /*
   * Registering the memory slot waits for an SRCU grace period (milliseconds,
   * whatever the size): it runs on a thread of its own while the vCPUs are made.
   */
  slot_thread = pthread_create(&slot.thread, NULL, memslot_main, &slot) == 0;
  if (!slot_thread) memslot_main(&slot);

  vm->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  vm->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (vm->epoll_fd < 0 || vm->wake_fd < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "epoll/eventfd", e);
    goto fail_slot;
  }
  struct epoll_event wev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  if (epoll_ctl(vm->epoll_fd, EPOLL_CTL_ADD, vm->wake_fd, &wev) < 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "epoll_ctl", e);
    goto fail_slot;
  }

  int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) {
    e = errno;
    set_err(err, errlen, "%s: %s", "KVM_GET_VCPU_MMAP_SIZE", e);
    goto fail;
  }
  for (int i = 0; i < vm->ncpus; i++) {
    struct vcpu *c = &vm->cpus[i];
    c->vm = vm;
    c->index = i;
    c->run = MAP_FAILED;
    c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
    if (c->fd < 0) {
      e = errno;
      set_err(err, errlen, "%s: %s", "KVM_CREATE_VCPU", e);
      goto fail;
    }
    fcntl(c->fd, F_SETFD, FD_CLOEXEC);
    c->run_size = (size_t)run_size;
    c->run = mmap(NULL, c->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->run == MAP_FAILED) {
      e = errno;
      set_err(err, errlen, "%s: %s", "mmap of kvm_run", e);
      goto fail;
    }
    int r = vcpu_setup_cpuid_msrs(vm, c);
    if (r < 0) {
      e = -r;
      set_err(err, errlen, "%s: %s", "vCPU setup (CPUID, MSRs, LAPIC)", e);
      goto fail;
    }
  }
  if (slot_thread) pthread_join(slot.thread, NULL);
  slot_thread = false;
  if (slot.err) {
    e = slot.err;
    set_err(err, errlen, "%s: %s", "KVM_SET_USER_MEMORY_REGION", e);
    goto fail;
  }
  vm->state = VM_CREATED;
  *out = vm;
  return 0;
fail_slot:
fail:
  if (slot_thread) pthread_join(slot.thread, NULL);
  vm_destroy(vm);
  return -e;
}

int vm_start(struct vm *vm) {
  int ir = vm_irqfds(vm);
  if (ir < 0) return ir;
  ir = virtio_start(vm);
  if (ir < 0) return ir;
  pthread_mutex_lock(&vm->lock);
  if (vm->state != VM_CREATED) {
    pthread_mutex_unlock(&vm->lock);
    return -EALREADY;
  }
  vm->state = vm->pause_requested ? VM_PAUSED : VM_RUNNING;
  pthread_mutex_unlock(&vm->lock);
  /* Threads start with every signal blocked; each vCPU opens SIG_KICK inside KVM_RUN only. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = 0;
  if (pthread_create(&vm->io_thread, NULL, io_main, vm) == 0) vm->io_started = true;
  else e = EAGAIN;
  pthread_mutex_lock(&vm->lock);
  for (int i = 0; i < vm->ncpus && !e; i++) {
    struct vcpu *c = &vm->cpus[i];
    /* 256 KiB stacks: a vCPU thread only decodes exits. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&c->thread, &attr, vcpu_main, c) == 0) {
      c->thread_started = true;
      vm->running_vcpus++;
    } else {
      e = EAGAIN;
    }
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&vm->lock);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) {
    vm_request_exit(vm, VM_EXIT_CRASH, "could not start the VM's threads");
    return -e;
  }
  return 0;
}

static bool all_parked(struct vm *vm) {
  for (int i = 0; i < vm->ncpus; i++)
    if (vm->cpus[i].thread_started && !vm->cpus[i].parked && vm->state != VM_EXITED) return false;
  return true;
}

int vm_pause(struct vm *vm) {
  pthread_mutex_lock(&vm->lock);
  if (vm->stop_requested || vm->state == VM_EXITED) {
    pthread_mutex_unlock(&vm->lock);
    return -ESRCH;
  }
  vm->pause_requested = true;
  pthread_mutex_unlock(&vm->lock);
  kick_all(vm);
  pthread_mutex_lock(&vm->lock);
  while ((!all_parked(vm) || vm->io_busy) && !vm->stop_requested) pthread_cond_wait(&vm->cond, &vm->lock);
  int r = vm->stop_requested ? -ESRCH : 0;
  if (r == 0) vm->state = VM_PAUSED;
  pthread_mutex_unlock(&vm->lock);
  return r;
}

int vm_resume(struct vm *vm) {
  pthread_mutex_lock(&vm->lock);
  if (vm->stop_requested || vm->state == VM_EXITED) {
    pthread_mutex_unlock(&vm->lock);
    return -ESRCH;
  }
  vm->pause_requested = false;
  if (vm->state == VM_PAUSED) vm->state = VM_RUNNING;
  pthread_cond_broadcast(&vm->cond);
  pthread_mutex_unlock(&vm->lock);
  return 0;
}

void vm_kill(struct vm *vm) { vm_request_exit(vm, VM_EXIT_KILLED, "killed by the host"); }

void vm_destroy(struct vm *vm) {
  if (!vm) return;
  bool started = false;
  for (int i = 0; i < vm->ncpus; i++) started |= vm->cpus[i].thread_started;
  if (started || vm->io_started) vm_request_exit(vm, VM_EXIT_KILLED, "killed by the host");
  for (int i = 0; i < vm->ncpus; i++) {
    struct vcpu *c = &vm->cpus[i];
    if (c->thread_started) pthread_join(c->thread, NULL);
    c->thread_started = false;
  }
  if (vm->io_started) pthread_join(vm->io_thread, NULL);
  vm->io_started = false;
  virtio_destroy_all(vm);
  if (vm->serial) serial_destroy(vm->serial);
  if (vm->i8042) i8042_destroy(vm->i8042);
  for (int i = 0; i < vm->ncpus; i++) {
    struct vcpu *c = &vm->cpus[i];
    if (c->run && c->run != MAP_FAILED) munmap(c->run, c->run_size);
    if (c->fd >= 0) close(c->fd);
  }
  for (int i = 0; i < 24; i++)
    if (vm->irqfds[i] >= 0) close(vm->irqfds[i]);
  if (vm->epoll_fd >= 0) close(vm->epoll_fd);
  if (vm->wake_fd >= 0) close(vm->wake_fd);
  if (vm->mem.host != MAP_FAILED && vm->mem.host) munmap(vm->mem.host, vm->mem.size);
  if (vm->vm_fd >= 0) close(vm->vm_fd);
  if (vm->kvm_fd >= 0) close(vm->kvm_fd);
  pthread_mutex_destroy(&vm->lock);
  pthread_mutex_destroy(&vm->io_lock);
  pthread_cond_destroy(&vm->cond);
  free(vm);
}
