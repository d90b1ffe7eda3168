/*
 * kvm/serial.c: an 8250/16550A UART at 0x3f8 (COM1, IRQ 4): the console.
 * What the guest transmits goes to out_fd as it is written; bytes read from
 * in_fd on the I/O thread fill a 64-byte receive FIFO, and the I/O thread stops
 * reading while the FIFO is full, so no input is dropped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvm.h"

#define SERIAL_IRQ 4
#define RX_FIFO 64

/* register offsets from 0x3f8 */
#define UART_RBR_THR 0
#define UART_IER 1
#define UART_IIR_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define LCR_DLAB 0x80
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define IER_RDI 0x01
#define IER_THRI 0x02
#define IIR_NONE 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define MCR_LOOP 0x10
#define MSR_DCD 0x80
#define MSR_DSR 0x20
#define MSR_CTS 0x10

struct serial_regs {
  uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thre_pending;
  uint8_t rx[RX_FIFO];
  uint32_t rx_head, rx_len;
};

struct serial {
  struct vm *vm;
  int out_fd, in_fd;
  pthread_mutex_t lock;
  struct serial_regs r;
  bool in_watched;
  bool in_paused;
};

static uint8_t iir(const struct serial *s) {
  uint8_t v = IIR_NONE;
  if ((s->r.ier & IER_RDI) && s->r.rx_len > 0) v = IIR_RDI;
  else if ((s->r.ier & IER_THRI) && s->r.thre_pending) v = IIR_THRI;
  if (s->r.fcr & 1) v |= 0xc0;
  return v;
}

static void update_irq(struct serial *s) {
  if ((iir(s) & 0x0f) != IIR_NONE) vm_irq_raise(s->vm, SERIAL_IRQ);
}

static void rx_push(struct serial *s, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n && s->r.rx_len < RX_FIFO; i++) {
    s->r.rx[(s->r.rx_head + s->r.rx_len) % RX_FIFO] = b[i];
    s->r.rx_len++;
  }
}

static void on_input(void *opaque) {
  struct serial *s = opaque;
  pthread_mutex_lock(&s->lock);
  size_t room = RX_FIFO - s->r.rx_len;
  if (room == 0) {
    vm_io_enable(s->vm, s->in_fd, false);
    s->in_paused = true;
  } else {
    uint8_t buf[RX_FIFO];
    ssize_t n = read(s->in_fd, buf, room);
    if (n > 0) {
      rx_push(s, buf, (size_t)n);
      update_irq(s);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      vm_io_enable(s->vm, s->in_fd, false); /* the host closed its end */
      s->in_watched = false;
    }
  }
  pthread_mutex_unlock(&s->lock);
}

struct serial *serial_create(struct vm *vm, int out_fd, int in_fd) {
  struct serial *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->vm = vm;
  s->out_fd = out_fd;
  s->in_fd = in_fd;
  s->r.lcr = 0x03;
  s->r.mcr = 0x08;
  s->r.dll = 0x0c;
  pthread_mutex_init(&s->lock, NULL);
  if (in_fd >= 0 && vm_io_watch(vm, in_fd, on_input, s) == 0) s->in_watched = true;
  return s;
}

void serial_destroy(struct serial *s) {
  pthread_mutex_destroy(&s->lock);
  free(s);
}

static void transmit(struct serial *s, uint8_t b) {
  if (s->r.mcr & MCR_LOOP) {
    rx_push(s, &b, 1);
    return;
  }
  if (s->out_fd >= 0) vm_write_all(s->vm, s->out_fd, &b, 1);
}

void serial_io(struct serial *s, uint16_t port, uint8_t *data, bool is_write) {
  unsigned off = port - 0x3f8;
  pthread_mutex_lock(&s->lock);
  bool dlab = s->r.lcr & LCR_DLAB;
  if (is_write) {
    uint8_t v = *data;
    switch (off) {
      case UART_RBR_THR:
        if (dlab) {
          s->r.dll = v;
        } else {
          transmit(s, v);
          s->r.thre_pending = 1; /* sent at once: the holding register is empty again */
          update_irq(s);
        }
        break;
      case UART_IER:
        if (dlab) {
          s->r.dlm = v;
        } else {
          bool thri_on = !(s->r.ier & IER_THRI) && (v & IER_THRI);
          s->r.ier = v & 0x0f;
          if (thri_on) s->r.thre_pending = 1;
          update_irq(s);
        }
        break;
      case UART_IIR_FCR:
        s->r.fcr = v & 0xc9;
        if (v & 0x02) s->r.rx_len = 0; /* clear receive FIFO */
        break;
      case UART_LCR: s->r.lcr = v; break;
      case UART_MCR: s->r.mcr = v & 0x1f; break;
      case UART_SCR: s->r.scr = v; break;
      default: break;
    }
  } else {
    uint8_t v = 0;
    switch (off) {
      case UART_RBR_THR:
        if (dlab) {
          v = s->r.dll;
        } else if (s->r.rx_len > 0) {
          v = s->r.rx[s->r.rx_head];
          s->r.rx_head = (s->r.rx_head + 1) % RX_FIFO;
          s->r.rx_len--;
          if (s->in_paused && s->in_watched) {
            s->in_paused = false;
            vm_io_enable(s->vm, s->in_fd, true);
          }
          update_irq(s);
        }
        break;
      case UART_IER: v = dlab ? s->r.dlm : s->r.ier; break;
      case UART_IIR_FCR:
        v = iir(s);
        if ((v & 0x0f) == IIR_THRI) s->r.thre_pending = 0; /* reading IIR acknowledges THRE */
        break;
      case UART_LCR: v = s->r.lcr; break;
      case UART_MCR: v = s->r.mcr; break;
      case UART_LSR: v = LSR_THRE | LSR_TEMT | (s->r.rx_len > 0 ? LSR_DR : 0); break;
      case UART_MSR:
        v = (s->r.mcr & MCR_LOOP) ? (uint8_t)(((s->r.mcr & 0x0c) << 4) | ((s->r.mcr & 0x03) << 4))
                                  : (MSR_DCD | MSR_DSR | MSR_CTS);
        break;
      case UART_SCR: v = s->r.scr; break;
      default: break;
    }
    *data = v;
  }
  pthread_mutex_unlock(&s->lock);
}

size_t serial_state_size(void) { return sizeof(struct serial_regs); }

void serial_save(struct serial *s, void *buf) {
  pthread_mutex_lock(&s->lock);
  memcpy(buf, &s->r, sizeof s->r);
  pthread_mutex_unlock(&s->lock);
}

void serial_load(struct serial *s, const void *buf) {
  pthread_mutex_lock(&s->lock);
  memcpy(&s->r, buf, sizeof s->r);
  if (s->r.rx_len > RX_FIFO) s->r.rx_len = 0;
  s->r.rx_head %= RX_FIFO;
  pthread_mutex_unlock(&s->lock);
}
