/*
 * kvm/napi.c: the monitor's N-API surface. Creation, pause, snapshot and
 * destroy run on the libuv pool (they read files or wait for vCPU threads);
 * start, resume, kill and stats are immediate. The end of a VM reaches JS once,
 * through a thread-safe function called by the last vCPU thread to stop.
 * The console and the host<->guest channel are socketpairs: JS gets one end of
 * each as a file descriptor and wraps it in a net.Socket (a Duplex).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "../macros.h"
#include "kvm.h"


#define MAX_DISKS 8

struct vm_handle {
  struct vm *vm;
  napi_env env; /* the environment (main thread or worker) that made it */
  napi_threadsafe_function on_exit;
  bool tsfn_live;
  int console_host, console_js; /* socketpair ends */
  int channel_host, channel_js;
  int disk_fds[MAX_DISKS];
  int ndisks;
  bool started, destroyed, destroying;
  enum vm_exit_reason exit_reason; /* copied at exit: the VM may be freed before JS hears of it */
  char exit_detail[2048];
  struct vm_handle *next; /* live handles, for the env cleanup hook */
};

static struct vm_handle *live_handles;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

/* A monitor error: the errno's name as code, and what the monitor said as the message. */
static napi_value kvm_error(napi_env env, int err, const char *detail) {
  if (err < 0) err = -err;
  char msg[2300];
  snprintf(msg, sizeof msg, "%s: %s", nacelle_errno_name(err), detail && *detail ? detail : strerror(err));
  return nacelle_error_with_message(env, err, "kvm", NULL, msg);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Frees native resources; the JS ends of the sockets belong to JS by now. */
static void handle_release(struct vm_handle *h) {
  if (h->vm) vm_destroy(h->vm);
  h->vm = NULL;
  close_fd(&h->console_host);
  close_fd(&h->channel_host);
  for (int i = 0; i < h->ndisks; i++) close_fd(&h->disk_fds[i]);
  h->ndisks = 0;
}

static void unlink_live(struct vm_handle *h) {
  pthread_mutex_lock(&live_lock);
  for (struct vm_handle **p = &live_handles; *p; p = &(*p)->next) {
    if (*p == h) {
      *p = h->next;
      break;
    }
  }
  pthread_mutex_unlock(&live_lock);
}

/* ---- the exit event ----------------------------------------------------------- */

static void on_vm_exit(struct vm *vm, void *opaque) {
  struct vm_handle *h = opaque;
  pthread_mutex_lock(&vm->lock);
  h->exit_reason = vm->exit_reason;
  memcpy(h->exit_detail, vm->exit_detail, sizeof h->exit_detail);
  pthread_mutex_unlock(&vm->lock);
  napi_call_threadsafe_function(h->on_exit, h, napi_tsfn_nonblocking);
}

static void call_exit_js(napi_env env, napi_value js_cb, void *context, void *data) {
  struct vm_handle *h = data;
  if (!env || !h) return;
  napi_value result, v, undefined;
  napi_create_object(env, &result);
  napi_create_string_utf8(env, vm_exit_reason_name(h->exit_reason), NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, result, "reason", v);
  napi_create_string_utf8(env, h->exit_detail, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, result, "detail", v);
  napi_get_undefined(env, &undefined);
  napi_call_function(env, undefined, js_cb, 1, &result, NULL);
  if (h->tsfn_live) {
    h->tsfn_live = false;
    napi_release_threadsafe_function(h->on_exit, napi_tsfn_release);
  }
}

static void handle_finalize(napi_env env, void *data, void *hint) {
  struct vm_handle *h = data;
  if (!h->destroyed) {
    unlink_live(h);
    if (h->tsfn_live) {
      h->tsfn_live = false;
      napi_release_threadsafe_function(h->on_exit, napi_tsfn_abort);
    }
    handle_release(h);
  }
  free(h);
}

/* The environment is going away (process exit, worker end): its VMs end with it. */
static void cleanup_hook(void *arg) {
  napi_env env = arg;
  struct vm_handle *mine = NULL;
  pthread_mutex_lock(&live_lock);
  for (struct vm_handle **p = &live_handles; *p;) {
    struct vm_handle *h = *p;
    if (h->env == env) {
      *p = h->next;
      h->next = mine;
      mine = h;
    } else {
      p = &h->next;
    }
  }
  pthread_mutex_unlock(&live_lock);
  for (struct vm_handle *h = mine; h; h = h->next)
    if (h->vm) vm_kill(h->vm);
  for (struct vm_handle *h = mine; h; h = h->next) {
    handle_release(h);
    h->destroyed = true;
  }
}

static bool get_handle(napi_env env, napi_value v, struct vm_handle **out) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a VM handle");
    return false;
  }
  *out = p;
  if ((*out)->destroyed || !(*out)->vm) {
    napi_throw(env, kvm_error(env, ESRCH, "the VM has been destroyed"));
    return false;
  }
  return true;
}

/* ---- create / restore --------------------------------------------------------------- */

struct create_job {
  napi_async_work work;
  napi_deferred deferred;
  struct arena a;
  char *kernel, *initrd, *cmdline, *restore_dir;
  char *disk_paths[MAX_DISKS];
  char *disk_ids[MAX_DISKS];
  bool disk_ro[MAX_DISKS];
  int ndisks;
  bool channel;
  int64_t memory_mib;
  int32_t cpus;
  struct vm_handle *h;
  int err;
  char errmsg[2048];
};

static int socketpair_nb(int fds[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return -errno;
  fcntl(fds[0], F_SETFL, O_NONBLOCK); /* the monitor's end */
  return 0;
}

static void create_execute(napi_env env, void *data) {
  struct create_job *j = data;
  struct vm_handle *h = j->h;
  int r;
  char *err = j->errmsg;
  size_t errlen = sizeof j->errmsg;
  uint64_t mem_size = (uint64_t)j->memory_mib << 20;
  int ncpus = j->cpus;
  char memfile[4096];
  if (j->restore_dir) {
    r = snapshot_read_header(j->restore_dir, &mem_size, &ncpus, err, errlen);
    if (r < 0) goto fail;
    snprintf(memfile, sizeof memfile, "%s/memory", j->restore_dir);
  }
  struct vm_config cfg = {.mem_size = mem_size, .ncpus = ncpus, .mem_file = j->restore_dir ? memfile : NULL};
  r = vm_create(&cfg, &h->vm, err, errlen);
  if (r < 0) goto fail;
  struct vm *vm = h->vm;
  int sp[2];
  if ((r = socketpair_nb(sp)) < 0) {
    snprintf(err, errlen, "socketpair for the console: %s", strerror(-r));
    goto fail;
  }
  h->console_host = sp[0];
  h->console_js = sp[1];
  vm->serial = serial_create(vm, h->console_host, h->console_host);
  vm->i8042 = i8042_create(vm);
  if (!vm->serial || !vm->i8042) {
    r = -ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  for (int i = 0; i < j->ndisks; i++) {
    int fd = open(j->disk_paths[i], (j->disk_ro[i] ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
      r = -errno;
      snprintf(err, errlen, "open disk %s: %s", j->disk_paths[i], strerror(errno));
      goto fail;
    }
    h->disk_fds[h->ndisks++] = fd;
    r = virtio_blk_add(vm, fd, j->disk_ro[i], j->disk_ids[i] ? j->disk_ids[i] : "");
    if (r < 0) {
      snprintf(err, errlen, "adding virtio-blk for %s: %s", j->disk_paths[i], strerror(-r));
      goto fail;
    }
  }
  if (j->channel) {
    if ((r = socketpair_nb(sp)) < 0) {
      snprintf(err, errlen, "socketpair for the channel: %s", strerror(-r));
      goto fail;
    }
    h->channel_host = sp[0];
    h->channel_js = sp[1];
    r = virtio_console_add(vm, h->channel_host);
    if (r < 0) {
      snprintf(err, errlen, "adding virtio-console: %s", strerror(-r));
      goto fail;
    }
  }
  if (j->restore_dir) {
    r = vm_restore_state(vm, j->restore_dir, err, errlen);
  } else {
    struct boot_config bc = {.kernel_path = j->kernel, .initrd_path = j->initrd, .cmdline = j->cmdline};
    r = boot_load(vm, &bc, err, errlen);
  }
  if (r < 0) goto fail;
  vm->on_exit = on_vm_exit;
  vm->on_exit_opaque = h;
  j->err = 0;
  return;
fail:
  j->err = r < 0 ? -r : EIO;
}

static void create_complete(napi_env env, napi_status status, void *data) {
  struct create_job *j = data;
  struct vm_handle *h = j->h;
  if (status == napi_ok && j->err == 0) {
    napi_value result, ext, v;
    napi_create_object(env, &result);
    napi_create_external(env, h, handle_finalize, NULL, &ext);
    napi_set_named_property(env, result, "handle", ext);
    napi_create_int32(env, h->console_js, &v);
    napi_set_named_property(env, result, "consoleFd", v);
    napi_create_int32(env, h->channel_js, &v);
    napi_set_named_property(env, result, "channelFd", v);
    napi_create_int32(env, h->vm->ncpus, &v);
    napi_set_named_property(env, result, "cpus", v);
    napi_create_double(env, (double)(h->vm->mem.size >> 20), &v);
    napi_set_named_property(env, result, "memoryMiB", v);
    pthread_mutex_lock(&live_lock);
    h->next = live_handles;
    live_handles = h;
    pthread_mutex_unlock(&live_lock);
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    napi_value error = kvm_error(env, j->err ? j->err : EIO, j->errmsg);
    close_fd(&h->console_js);
    close_fd(&h->channel_js);
    handle_release(h);
    if (h->tsfn_live) napi_release_threadsafe_function(h->on_exit, napi_tsfn_abort);
    free(h);
    napi_reject_deferred(env, j->deferred, error);
  }
  napi_delete_async_work(env, j->work);
  arena_free(&j->a);
  free(j);
}

/* kvmCreate(options, onExit) -> Promise<{ handle, consoleFd, channelFd, cpus, memoryMiB }> */
static napi_value KvmCreate(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct create_job *j = calloc(1, sizeof *j);
  struct vm_handle *h = calloc(1, sizeof *h);
  if (!j || !h) {
    free(j);
    free(h);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  h->console_host = h->console_js = h->channel_host = h->channel_js = -1;
  h->env = env;
  j->h = h;
  napi_value o = argv[0], disks = NULL;
  bool ok = prop_string(env, o, "kernel", &j->a, &j->kernel) && prop_string(env, o, "initrd", &j->a, &j->initrd) &&
            prop_string(env, o, "cmdline", &j->a, &j->cmdline) &&
            prop_string(env, o, "restoreDir", &j->a, &j->restore_dir) && prop_int32(env, o, "cpus", 1, &j->cpus) &&
            prop_int64(env, o, "memoryMiB", 128, &j->memory_mib) && prop_bool(env, o, "channel", &j->channel) &&
            prop(env, o, "disks", &disks);
  if (ok && disks) {
    uint32_t n = 0;
    ok = napi_get_array_length(env, disks, &n) == napi_ok;
    if (ok && n > MAX_DISKS) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "at most 8 disks");
      ok = false;
    }
    for (uint32_t i = 0; ok && i < n; i++) {
      napi_value d;
      ok = napi_get_element(env, disks, i, &d) == napi_ok && prop_string(env, d, "path", &j->a, &j->disk_paths[i]) &&
           prop_string(env, d, "id", &j->a, &j->disk_ids[i]) && prop_bool(env, d, "readonly", &j->disk_ro[i]);
      if (ok && !j->disk_paths[i]) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "a disk needs a path");
        ok = false;
      }
      j->ndisks = (int)i + 1;
    }
  }
  if (ok && !j->kernel && !j->restore_dir) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "kernel is required");
    ok = false;
  }
  napi_value name, promise;
  if (ok) {
    ok = napi_create_string_utf8(env, "nacelle:vm-exit", NAPI_AUTO_LENGTH, &name) == napi_ok &&
         napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, call_exit_js, &h->on_exit) ==
             napi_ok;
    if (ok) {
      h->tsfn_live = true;
      napi_unref_threadsafe_function(env, h->on_exit); /* ref'd while running */
    }
  }
  if (ok) {
    promise = queue_work(env, "nacelle:vm-create", create_execute, create_complete, j, &j->work, &j->deferred);
    ok = promise != NULL;
  }
  if (!ok) {
    if (h->tsfn_live) napi_release_threadsafe_function(h->on_exit, napi_tsfn_abort);
    arena_free(&j->a);
    free(j);
    free(h);
    return NULL;
  }
  return promise;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

/* kvmStart(handle, paused?): with paused, the vCPUs park before their first instruction. */
static napi_value KvmStart(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct vm_handle *h;
  bool paused = false;
  if (!get_handle(env, argv[0], &h)) return NULL;
  napi_valuetype t;
  if (napi_typeof(env, argv[1], &t) == napi_ok && t == napi_boolean) napi_get_value_bool(env, argv[1], &paused);
  if (h->started) {
    napi_throw(env, kvm_error(env, EALREADY, "the VM was already started"));
    return NULL;
  }
  napi_ref_threadsafe_function(env, h->on_exit);
  if (paused) {
    pthread_mutex_lock(&h->vm->lock);
    h->vm->pause_requested = true;
    pthread_mutex_unlock(&h->vm->lock);
  }
  int r = vm_start(h->vm);
  if (r < 0) {
    napi_throw(env, kvm_error(env, -r, "starting the VM's threads"));
    return NULL;
  }
  h->started = true;
  return NULL;
}

static napi_value KvmResume(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct vm_handle *h;
  if (!get_handle(env, argv[0], &h)) return NULL;
  int r = vm_resume(h->vm);
  if (r < 0) napi_throw(env, kvm_error(env, -r, "the VM is not running"));
  return NULL;
}

static napi_value KvmKill(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct vm_handle *h;
  if (!get_handle(env, argv[0], &h)) return NULL;
  vm_kill(h->vm);
  return NULL;
}

static napi_value KvmCtrlAltDel(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct vm_handle *h;
  if (!get_handle(env, argv[0], &h)) return NULL;
  i8042_ctrl_alt_del(h->vm->i8042);
  return NULL;
}

static const char *const exit_names[32] = {
    [KVM_EXIT_IO] = "io", [KVM_EXIT_MMIO] = "mmio", [KVM_EXIT_HLT] = "hlt", [KVM_EXIT_SHUTDOWN] = "shutdown",
    [KVM_EXIT_INTR] = "intr", [KVM_EXIT_FAIL_ENTRY] = "failEntry", [KVM_EXIT_INTERNAL_ERROR] = "internalError",
    [KVM_EXIT_SYSTEM_EVENT] = "systemEvent", [KVM_EXIT_IRQ_WINDOW_OPEN] = "irqWindowOpen",
};

static napi_value KvmStats(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct vm_handle *h;
  if (!get_handle(env, argv[0], &h)) return NULL;
  struct vm *vm = h->vm;
  napi_value result, exits, per_vcpu, v;
  NAPI_CALL(env, napi_create_object(env, &result));
  NAPI_CALL(env, napi_create_object(env, &exits));
  NAPI_CALL(env, napi_create_array_with_length(env, (size_t)vm->ncpus, &per_vcpu));
  uint64_t totals[32] = {0};
  for (int i = 0; i < vm->ncpus; i++) {
    napi_value one;
    napi_create_object(env, &one);
    uint64_t sum = 0;
    for (int k = 0; k < 32; k++) {
      uint64_t n = __atomic_load_n(&vm->cpus[i].exits[k], __ATOMIC_RELAXED);
      totals[k] += n;
      sum += n;
    }
    napi_create_double(env, (double)sum, &v);
    napi_set_named_property(env, one, "exits", v);
    napi_create_int32(env, __atomic_load_n(&vm->cpus[i].tid, __ATOMIC_RELAXED), &v);
    napi_set_named_property(env, one, "tid", v);
    napi_set_element(env, per_vcpu, (uint32_t)i, one);
  }
  for (int k = 0; k < 32; k++) {
    if (!totals[k]) continue;
    char other[16];
    const char *name = exit_names[k];
    if (!name) {
      snprintf(other, sizeof other, "exit%d", k);
      name = other;
    }
    napi_create_double(env, (double)totals[k], &v);
    napi_set_named_property(env, exits, name, v);
  }
  napi_set_named_property(env, result, "exits", exits);
  napi_set_named_property(env, result, "vcpus", per_vcpu);
  napi_create_int32(env, __atomic_load_n(&vm->io_tid, __ATOMIC_RELAXED), &v);
  napi_set_named_property(env, result, "ioTid", v);
  napi_create_double(env, (double)vm->mem.size, &v);
  napi_set_named_property(env, result, "memoryBytes", v);
  /* resident guest pages: mincore over guest RAM, one byte per 4 KiB page */
  size_t pages = vm->mem.size / 4096, resident = 0;
  unsigned char *vec = malloc(pages);
  if (vec && mincore(vm->mem.host, vm->mem.size, vec) == 0) {
    for (size_t i = 0; i < pages; i++) resident += vec[i] & 1;
  }
  free(vec);
  napi_create_double(env, (double)resident * 4096, &v);
  napi_set_named_property(env, result, "residentBytes", v);
  napi_create_double(env, (double)virtio_error_count(vm), &v);
  napi_set_named_property(env, result, "deviceErrors", v);
  const char *last = virtio_last_error(vm);
  if (last) {
    napi_create_string_utf8(env, last, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, result, "lastDeviceError", v);
  }
  pthread_mutex_lock(&vm->lock);
  const char *state = vm->state == VM_CREATED ? "created"
                      : vm->state == VM_RUNNING ? "running"
                      : vm->state == VM_PAUSED ? "paused"
                                               : "exited";
  pthread_mutex_unlock(&vm->lock);
  napi_create_string_utf8(env, state, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, result, "state", v);
  return result;
}

/* ---- pause / snapshot / destroy (on the pool) ------------------------------------------ */

enum vm_op { OP_PAUSE, OP_SNAPSHOT, OP_DESTROY };

struct op_job {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref handle_ref;
  struct vm_handle *h;
  enum vm_op op;
  char *dir;
  int err;
  char errmsg[1024];
};

static void op_execute(napi_env env, void *data) {
  struct op_job *j = data;
  int r = 0;
  switch (j->op) {
    case OP_PAUSE:
      r = vm_pause(j->h->vm);
      if (r < 0) snprintf(j->errmsg, sizeof j->errmsg, "the VM is not running");
      break;
    case OP_SNAPSHOT:
      r = vm_snapshot(j->h->vm, j->dir, j->errmsg, sizeof j->errmsg);
      break;
    case OP_DESTROY:
      handle_release(j->h);
      break;
  }
  j->err = r < 0 ? -r : 0;
}

static void op_complete(napi_env env, napi_status status, void *data) {
  struct op_job *j = data;
  if (j->op == OP_DESTROY) {
    j->h->destroyed = true;
    if (j->h->tsfn_live) {
      j->h->tsfn_live = false;
      napi_release_threadsafe_function(j->h->on_exit, napi_tsfn_release);
    }
  }
  if (status == napi_ok && j->err == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, j->deferred, undefined);
  } else {
    napi_reject_deferred(env, j->deferred, kvm_error(env, j->err ? j->err : EIO, j->errmsg));
  }
  napi_delete_reference(env, j->handle_ref);
  napi_delete_async_work(env, j->work);
  free(j->dir);
  free(j);
}

static napi_value queue_op(napi_env env, napi_value handle, struct vm_handle *h, enum vm_op op, const char *dir) {
  struct op_job *j = calloc(1, sizeof *j);
  if (!j || (dir && !(j->dir = strdup(dir)))) {
    free(j);
    nacelle_throw_errno(env, ENOMEM, "kvm", NULL);
    return NULL;
  }
  j->h = h;
  j->op = op;
  NAPI_CALL(env, napi_create_reference(env, handle, 1, &j->handle_ref));
  return queue_work(env, "nacelle:vm-op", op_execute, op_complete, j, &j->work, &j->deferred);
}

static napi_value KvmPause(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct vm_handle *h;
  if (!get_handle(env, argv[0], &h)) return NULL;
  return queue_op(env, argv[0], h, OP_PAUSE, NULL);
}

static napi_value KvmSnapshot(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct vm_handle *h;
  struct arena a = {0};
  char *dir;
  if (!get_handle(env, argv[0], &h) || !arg_string(env, argv[1], &a, &dir)) {
    arena_free(&a);
    return NULL;
  }
  napi_value p = queue_op(env, argv[0], h, OP_SNAPSHOT, dir);
  arena_free(&a);
  return p;
}

static napi_value KvmDestroy(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  void *p = NULL;
  if (napi_get_value_external(env, argv[0], &p) != napi_ok || !p) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a VM handle");
    return NULL;
  }
  struct vm_handle *h = p;
  if (h->destroyed || h->destroying) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_deferred d;
    napi_value promise;
    NAPI_CALL(env, napi_create_promise(env, &d, &promise));
    napi_resolve_deferred(env, d, undefined);
    return promise;
  }
  h->destroying = true;
  unlink_live(h);
  if (h->vm) vm_kill(h->vm);
  return queue_op(env, argv[0], h, OP_DESTROY, NULL);
}

bool nacelle_kvm_register(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
      {"kvmCreate", NULL, KvmCreate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmStart", NULL, KvmStart, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmPause", NULL, KvmPause, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmResume", NULL, KvmResume, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmKill", NULL, KvmKill, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmCtrlAltDel", NULL, KvmCtrlAltDel, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmStats", NULL, KvmStats, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmSnapshot", NULL, KvmSnapshot, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmDestroy", NULL, KvmDestroy, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) != napi_ok) return false;
  return napi_add_env_cleanup_hook(env, cleanup_hook, env) == napi_ok;
}
