/*
 * kvm/i8042.c: enough of the PS/2 controller for what a micro-VM needs: the
 * reset line (0xfe to the command port ends the VM with 'reset', which is how
 * Linux reboots with reboot=k) and a keyboard that can type Ctrl-Alt-Del, the
 * polite shutdown request stop() sends.
 */
#include <stdlib.h>
#include <string.h>

#include "kvm.h"

#define I8042_IRQ 1
#define STATUS_OBF 0x01
#define STATUS_SYS 0x04
#define STATUS_CMD 0x08
#define CMDBYTE_KBD_INT 0x01
#define CMDBYTE_XLAT 0x40

struct i8042_regs {
  uint8_t status, cmdbyte, pending_cmd, outport;
  uint8_t buf[16];
  uint32_t head, len;
};

struct i8042 {
  struct vm *vm;
  pthread_mutex_t lock;
  struct i8042_regs r;
};

struct i8042 *i8042_create(struct vm *vm) {
  struct i8042 *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->vm = vm;
  k->r.status = STATUS_SYS;
  k->r.cmdbyte = CMDBYTE_KBD_INT | CMDBYTE_XLAT | 0x04;
  k->r.outport = 0x01;
  pthread_mutex_init(&k->lock, NULL);
  return k;
}

void i8042_destroy(struct i8042 *k) {
  pthread_mutex_destroy(&k->lock);
  free(k);
}

static void push(struct i8042 *k, uint8_t b) {
  if (k->r.len >= sizeof k->r.buf) return;
  k->r.buf[(k->r.head + k->r.len) % sizeof k->r.buf] = b;
  k->r.len++;
  k->r.status |= STATUS_OBF;
}

static void kick(struct i8042 *k) {
  if (k->r.len > 0 && (k->r.cmdbyte & CMDBYTE_KBD_INT)) vm_irq_raise(k->vm, I8042_IRQ);
}

void i8042_ctrl_alt_del(struct i8042 *k) {
  pthread_mutex_lock(&k->lock);
  /* scan code set 1 (what the guest sees with translation on): Ctrl, Alt, Delete make codes */
  push(k, 0x1d);
  push(k, 0x38);
  push(k, 0xe0);
  push(k, 0x53);
  kick(k);
  pthread_mutex_unlock(&k->lock);
}

void i8042_io(struct i8042 *k, uint16_t port, uint8_t *data, bool is_write) {
  pthread_mutex_lock(&k->lock);
  if (port == 0x64) {
    if (!is_write) {
      *data = k->r.status;
    } else {
      uint8_t cmd = *data;
      k->r.status |= STATUS_CMD;
      switch (cmd) {
        case 0x20: push(k, k->r.cmdbyte); break; /* read command byte */
        case 0x60:                                 /* write command byte: next data byte */
        case 0xd1:                                 /* write output port: next data byte */
          k->r.pending_cmd = cmd;
          break;
        case 0xaa: push(k, 0x55); break; /* self test passed */
        case 0xab: push(k, 0x00); break; /* keyboard interface test passed */
        case 0xad: k->r.cmdbyte |= 0x10; break;
        case 0xae: k->r.cmdbyte &= (uint8_t)~0x10; break;
        case 0xd0: push(k, k->r.outport); break;
        case 0xfe:
          pthread_mutex_unlock(&k->lock);
          vm_request_exit(k->vm, VM_EXIT_RESET, "the guest reset the machine (i8042 pulse, port 0x64 <- 0xfe)");
          return;
        default: break;
      }
    }
  } else { /* 0x60 */
    if (!is_write) {
      if (k->r.len > 0) {
        *data = k->r.buf[k->r.head];
        k->r.head = (k->r.head + 1) % sizeof k->r.buf;
        k->r.len--;
      } else {
        *data = 0;
      }
      if (k->r.len == 0) k->r.status &= (uint8_t)~STATUS_OBF;
      kick(k);
    } else {
      k->r.status &= (uint8_t)~STATUS_CMD;
      if (k->r.pending_cmd == 0x60) {
        k->r.cmdbyte = *data;
      } else if (k->r.pending_cmd == 0xd1) {
        k->r.outport = *data;
        if (!(*data & 0x01)) { /* bit 0 low: the CPU reset line */
          k->r.pending_cmd = 0;
          pthread_mutex_unlock(&k->lock);
          vm_request_exit(k->vm, VM_EXIT_RESET, "the guest reset the machine (i8042 output port)");
          return;
        }
      } else {
        /* a keyboard command: acknowledge it (0xff reset also reports self-test ok) */
        push(k, 0xfa);
        if (*data == 0xff) push(k, 0xaa);
        kick(k);
      }
      k->r.pending_cmd = 0;
    }
  }
  pthread_mutex_unlock(&k->lock);
}

size_t i8042_state_size(void) { return sizeof(struct i8042_regs); }

void i8042_save(struct i8042 *k, void *buf) {
  pthread_mutex_lock(&k->lock);
  memcpy(buf, &k->r, sizeof k->r);
  pthread_mutex_unlock(&k->lock);
}

void i8042_load(struct i8042 *k, const void *buf) {
  pthread_mutex_lock(&k->lock);
  memcpy(&k->r, buf, sizeof k->r);
  if (k->r.len > sizeof k->r.buf) k->r.len = 0;
  k->r.head %= sizeof k->r.buf;
  pthread_mutex_unlock(&k->lock);
}
