/*
 * binding.c: N-API glue only. Unpacks arguments, runs the subsystem functions
 * (on the libuv pool when they may block), and turns -errno into JS errors.
 * Argument policy (defaults, validation of meaning) lives in lib/native.ts.
 */
#include <errno.h>
#include <linux/sched.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <uv.h>

#include "macros.h"
#include "nacelle.h"

/* ---- spawn -------------------------------------------------------------- */

struct spawn_job {
  napi_async_work work;
  napi_deferred deferred;
  struct arena arena;
  struct spawn_desc desc;
  struct spawn_result result;
  struct spawn_failure failure;
  const char *monitor_program; /* set: a detached spawn through nacelle-monitor */
  const char *status_file;
  struct monitor_info monitor;
  int err;
};

static void spawn_execute(napi_env env, void *data) {
  struct spawn_job *job = data;
  if (job->monitor_program) {
    job->err = nacelle_spawn_monitored(&job->desc, job->monitor_program, job->status_file, &job->result, &job->monitor, &job->failure);
  } else {
    job->err = nacelle_spawn(&job->desc, &job->result, &job->failure);
  }
}

static void spawn_complete(napi_env env, napi_status status, void *data) {
  struct spawn_job *job = data;
  napi_value result;
  if (job->err == 0) {
    napi_create_object(env, &result);
    set_int32(env, result, "pid", job->result.pid);
    set_int32(env, result, "pidfd", job->result.pidfd);
    set_int32(env, result, "ptyMaster", job->result.pty_master);
    if (job->monitor_program) {
      set_int32(env, result, "monitorPid", job->monitor.pid);
      set_int32(env, result, "monitorPidfd", job->monitor.pidfd);
    }
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    const char *path = NULL;
    const char *syscall = nacelle_spawn_step_syscall(job->failure.step, &job->desc, job->failure.index, &path);
    napi_value error = nacelle_errno_error(env, job->err, syscall, path);
    set_int32(env, error, "step", job->failure.step);
    set_int32(env, error, "index", job->failure.index);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_async_work(env, job->work);
  arena_free(&job->arena);
  free(job);
}

static bool parse_int_array(napi_env env, napi_value obj, const char *name, struct arena *a, int **out, int *len) {
  napi_value arr, item;
  uint32_t n = 0;
  *out = NULL;
  *len = 0;
  if (!prop(env, obj, name, &arr)) return false;
  if (!arr) return true;
  NAPI_OK(env, napi_get_array_length(env, arr, &n));
  int *list = arena_alloc(a, (n ? n : 1) * sizeof(int));
  if (!list) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    int32_t v;
    NAPI_OK(env, napi_get_element(env, arr, i, &item));
    if (!arg_int32(env, item, &v)) return false;
    list[i] = v;
  }
  *out = list;
  *len = (int)n;
  return true;
}

static bool parse_ops(napi_env env, napi_value obj, struct arena *a, struct spawn_desc *d) {
  napi_value arr, item;
  uint32_t n = 0;
  if (!prop(env, obj, "ops", &arr)) return false;
  if (!arr) return true;
  NAPI_OK(env, napi_get_array_length(env, arr, &n));
  struct spawn_op *ops = arena_alloc(a, (n ? n : 1) * sizeof *ops);
  if (!ops) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    int32_t kind, op_flags, mode;
    int64_t flags, dev;
    NAPI_OK(env, napi_get_element(env, arr, i, &item));
    if (!prop_int32(env, item, "kind", 0, &kind) || !prop_int32(env, item, "opFlags", 0, &op_flags) ||
        !prop_int32(env, item, "mode", 0, &mode) || !prop_int64(env, item, "flags", 0, &flags) ||
        !prop_int64(env, item, "dev", 0, &dev) || !prop_string(env, item, "source", a, (char **)&ops[i].source) ||
        !prop_string(env, item, "target", a, (char **)&ops[i].target) ||
        !prop_string(env, item, "fstype", a, (char **)&ops[i].fstype) ||
        !prop_string(env, item, "data", a, (char **)&ops[i].data))
      return false;
    if (kind < SPAWN_OP_MOUNT || kind > SPAWN_OP_CREATE || !ops[i].target) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "spawn op needs a known kind and a target");
      return false;
    }
    ops[i].kind = kind;
    ops[i].op_flags = op_flags;
    ops[i].mode = (unsigned)mode;
    ops[i].flags = (unsigned long)flags;
    ops[i].dev = (uint64_t)dev;
  }
  d->ops = ops;
  d->nops = (int)n;
  return true;
}

static bool cap_mask(napi_env env, napi_value caps, const char *name, uint64_t *out) {
  napi_value arr, item;
  uint32_t n = 0;
  *out = 0;
  if (!prop(env, caps, name, &arr)) return false;
  if (!arr) return true;
  NAPI_OK(env, napi_get_array_length(env, arr, &n));
  for (uint32_t i = 0; i < n; i++) {
    int32_t cap;
    NAPI_OK(env, napi_get_element(env, arr, i, &item));
    if (!arg_int32(env, item, &cap)) return false;
    if (cap < 0 || cap > 63) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "capability number out of range");
      return false;
    }
    *out |= 1ULL << cap;
  }
  return true;
}

static bool parse_caps(napi_env env, napi_value obj, struct arena *a, struct spawn_desc *d) {
  napi_value caps;
  if (!prop(env, obj, "capabilities", &caps)) return false;
  if (!caps) return true;
  int32_t last;
  if (!cap_mask(env, caps, "bounding", &d->caps.bounding) || !cap_mask(env, caps, "effective", &d->caps.effective) ||
      !cap_mask(env, caps, "permitted", &d->caps.permitted) ||
      !cap_mask(env, caps, "inheritable", &d->caps.inheritable) || !cap_mask(env, caps, "ambient", &d->caps.ambient) ||
      !prop_int32(env, caps, "lastCap", 40, &last))
    return false;
  d->caps.last_cap = last;
  d->set_caps = 1;
  return true;
}

static bool parse_rlimits(napi_env env, napi_value obj, struct arena *a, struct spawn_desc *d) {
  napi_value arr, item;
  uint32_t n = 0;
  if (!prop(env, obj, "rlimits", &arr)) return false;
  if (!arr) return true;
  NAPI_OK(env, napi_get_array_length(env, arr, &n));
  struct spawn_rlimit *list = arena_alloc(a, (n ? n : 1) * sizeof *list);
  if (!list) return false;
  for (uint32_t i = 0; i < n; i++) {
    int32_t resource;
    double soft, hard;
    napi_value v;
    NAPI_OK(env, napi_get_element(env, arr, i, &item));
    if (!prop_int32(env, item, "resource", -1, &resource)) return false;
    NAPI_OK(env, napi_get_named_property(env, item, "soft", &v));
    NAPI_OK(env, napi_get_value_double(env, v, &soft));
    NAPI_OK(env, napi_get_named_property(env, item, "hard", &v));
    NAPI_OK(env, napi_get_value_double(env, v, &hard));
    list[i].resource = resource;
    list[i].soft = soft < 0 ? UINT64_MAX : (uint64_t)soft; /* -1 means unlimited */
    list[i].hard = hard < 0 ? UINT64_MAX : (uint64_t)hard;
  }
  d->rlimits = list;
  d->nrlimits = (int)n;
  return true;
}

static bool parse_seccomp(napi_env env, napi_value obj, struct arena *a, struct spawn_desc *d) {
  napi_value buf;
  void *data;
  size_t len;
  if (!prop(env, obj, "seccomp", &buf)) return false;
  if (!buf) return true;
  NAPI_OK(env, napi_get_buffer_info(env, buf, &data, &len));
  if (len == 0 || len % 8 != 0 || len / 8 > 4096) {
    napi_throw_range_error(env, "ERR_INVALID_ARG_VALUE", "seccomp program must be 1..4096 sock_filter instructions");
    return false;
  }
  void *copy = arena_alloc(a, len);
  if (!copy) return false;
  memcpy(copy, data, len);
  d->seccomp_filter = copy;
  d->seccomp_len = (unsigned short)(len / 8);
  return true;
}

static bool parse_spawn_desc(napi_env env, napi_value obj, struct arena *a, struct spawn_desc *d) {
  uint32_t n;
  int32_t i32;
  int64_t i64;
  bool b;
  char **strs;
  int *ints;
  int nints;

  if (!prop_string(env, obj, "file", a, (char **)&d->file)) return false;
  if (!d->file) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "spawn needs a file");
    return false;
  }
  if (!prop_string_array(env, obj, "argv", a, &strs, &n)) return false;
  if (!strs || n == 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "spawn needs a non-empty argv");
    return false;
  }
  d->argv = strs;
  if (!prop_string_array(env, obj, "env", a, &strs, &n)) return false;
  if (!strs) {
    strs = arena_alloc(a, sizeof(char *));
    if (!strs) return false;
  }
  d->envp = strs;
  d->path_env = NULL;
  for (uint32_t i = 0; i < n; i++) {
    if (strncmp(strs[i], "PATH=", 5) == 0) d->path_env = strs[i] + 5;
  }
  if (!prop_string(env, obj, "cwd", a, (char **)&d->cwd)) return false;
  if (!prop_int64(env, obj, "cloneFlags", 0, &i64)) return false;
  d->clone_flags = (unsigned long)i64;
  if (!prop_int64(env, obj, "uid", -1, &i64)) return false;
  d->set_uid = i64 >= 0;
  d->uid = (uid_t)i64;
  if (!prop_int64(env, obj, "gid", -1, &i64)) return false;
  d->set_gid = i64 >= 0;
  d->gid = (gid_t)i64;
  if (!parse_int_array(env, obj, "groups", a, &ints, &nints)) return false;
  d->set_groups = ints != NULL;
  d->groups = (const gid_t *)ints; /* gid_t and int have one size on Linux */
  d->ngroups = nints;
  if (!prop_string(env, obj, "uidMap", a, (char **)&d->uid_map) ||
      !prop_string(env, obj, "gidMap", a, (char **)&d->gid_map) ||
      !prop_string(env, obj, "setgroups", a, (char **)&d->setgroups))
    return false;
  d->stdio[0] = d->stdio[1] = d->stdio[2] = -1;
  if (!parse_int_array(env, obj, "stdio", a, &ints, &nints)) return false;
  for (int i = 0; i < nints && i < 3; i++) d->stdio[i] = ints[i];
  if (!prop_string(env, obj, "hostname", a, (char **)&d->hostname)) return false;
  if (!parse_ops(env, obj, a, d)) return false;
  if (!prop_string(env, obj, "pivotRoot", a, (char **)&d->pivot_root)) return false;
  if (!parse_int_array(env, obj, "joinFds", a, &ints, &nints)) return false;
  d->join_fds = ints;
  d->njoin = nints;
  if (!prop_string_array(env, obj, "cgroupProcs", a, &strs, &n)) return false;
  d->cgroup_procs = (const char *const *)strs;
  d->ncgroups = (int)n;
  if (!prop_bool(env, obj, "detached", &b)) return false;
  d->detached = b;
  if (!prop_int32(env, obj, "deathSignal", 0, &i32)) return false;
  d->death_signal = i32;
  if (!prop_int32(env, obj, "pidNsFd", -1, &i32)) return false;
  d->pid_ns_fd = i32;
  if (!prop_bool(env, obj, "noNewPrivs", &b)) return false;
  d->no_new_privs = b;
  if (!prop_bool(env, obj, "ctty", &b)) return false;
  d->ctty = b;
  if (!prop_bool(env, obj, "loopbackUp", &b)) return false;
  d->loopback_up = b;
  if (!prop_bool(env, obj, "ownMm", &b)) return false;
  d->own_mm = b;
  if (!prop_bool(env, obj, "pty", &b)) return false;
  d->pty = b;
  if (!prop_int32(env, obj, "ptyCols", 80, &i32)) return false;
  d->pty_cols = (unsigned short)i32;
  if (!prop_int32(env, obj, "ptyRows", 24, &i32)) return false;
  d->pty_rows = (unsigned short)i32;
  if (!parse_caps(env, obj, a, d) || !parse_rlimits(env, obj, a, d) || !parse_seccomp(env, obj, a, d)) return false;
  return true;
}

static napi_value Spawn(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct spawn_job *job = calloc(1, sizeof *job);
  if (!job) {
    nacelle_throw_errno(env, ENOMEM, "spawn", NULL);
    return NULL;
  }
  if (!parse_spawn_desc(env, argv[0], &job->arena, &job->desc) ||
      !prop_string(env, argv[0], "monitorProgram", &job->arena, (char **)&job->monitor_program) ||
      !prop_string(env, argv[0], "statusFile", &job->arena, (char **)&job->status_file)) {
    arena_free(&job->arena);
    free(job);
    return NULL;
  }
  if (job->monitor_program && (!job->status_file || !job->desc.detached)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "a monitored spawn needs statusFile and detached");
    arena_free(&job->arena);
    free(job);
    return NULL;
  }
  return queue_work(env, "nacelle:spawn", spawn_execute, spawn_complete, job, &job->work, &job->deferred);
}

/* ---- waiting on a pidfd ------------------------------------------------- */

struct wait_req {
  uv_poll_t poll;
  napi_env env;
  napi_deferred deferred;
  napi_async_context async_ctx;
  int pidfd;
};

static void wait_closed(uv_handle_t *h) {
  free(h->data);
}

static void wait_cleanup_hook(void *data) {
  struct wait_req *req = data;
  uv_poll_stop(&req->poll);
  uv_close((uv_handle_t *)&req->poll, wait_closed);
}

static void wait_settle(struct wait_req *req, int err, const struct exit_status *st) {
  napi_env env = req->env;
  napi_handle_scope hscope;
  napi_callback_scope cscope;
  napi_value resource, value;

  uv_poll_stop(&req->poll);
  napi_remove_env_cleanup_hook(env, wait_cleanup_hook, req);
  napi_open_handle_scope(env, &hscope);
  /* A callback scope so the promise's reactions (microtasks) run now. */
  napi_create_object(env, &resource);
  napi_open_callback_scope(env, resource, req->async_ctx, &cscope);
  if (err) {
    napi_reject_deferred(env, req->deferred, nacelle_errno_error(env, err, "waitid", NULL));
  } else {
    napi_create_object(env, &value);
    set_int32(env, value, "exitCode", st->exit_code);
    set_int32(env, value, "signal", st->signal);
    set_bool(env, value, "coreDumped", st->core_dumped);
    napi_resolve_deferred(env, req->deferred, value);
  }
  napi_close_callback_scope(env, cscope);
  napi_async_destroy(env, req->async_ctx);
  napi_close_handle_scope(env, hscope);
  uv_close((uv_handle_t *)&req->poll, wait_closed);
}

static void wait_on_poll(uv_poll_t *h, int status, int events) {
  struct wait_req *req = h->data;
  struct exit_status st = {0};
  if (status < 0) {
    wait_settle(req, -status, &st);
    return;
  }
  int err = nacelle_pidfd_reap(req->pidfd, &st);
  if (err < 0) wait_settle(req, -err, &st);
  else if (st.exited) wait_settle(req, 0, &st);
  /* else: spurious wake-up, keep polling */
}

static napi_value WaitPidfd(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_COUNT", "expected a pidfd");
    return NULL;
  }
  int32_t pidfd;
  bool keep_alive = true;
  if (!arg_int32(env, argv[0], &pidfd)) return NULL;
  if (argc > 1) {
    napi_valuetype t;
    NAPI_CALL(env, napi_typeof(env, argv[1], &t));
    if (t == napi_boolean && !arg_bool(env, argv[1], &keep_alive)) return NULL;
  }

  /* Already exited? Settle without touching the loop. */
  struct exit_status st = {0};
  napi_value promise, value, name;
  napi_deferred deferred;
  int err = nacelle_pidfd_reap(pidfd, &st);
  if (err < 0) {
    nacelle_throw_errno(env, -err, "waitid", NULL);
    return NULL;
  }
  NAPI_CALL(env, napi_create_promise(env, &deferred, &promise));
  if (st.exited) {
    napi_create_object(env, &value);
    set_int32(env, value, "exitCode", st.exit_code);
    set_int32(env, value, "signal", st.signal);
    set_bool(env, value, "coreDumped", st.core_dumped);
    napi_resolve_deferred(env, deferred, value);
    return promise;
  }

  uv_loop_t *loop;
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  struct wait_req *req = calloc(1, sizeof *req);
  if (!req) {
    napi_reject_deferred(env, deferred, nacelle_errno_error(env, ENOMEM, "waitid", NULL));
    return promise;
  }
  req->env = env;
  req->deferred = deferred;
  req->pidfd = pidfd;
  req->poll.data = req;
  NAPI_CALL(env, napi_create_string_utf8(env, "nacelle:wait", NAPI_AUTO_LENGTH, &name));
  napi_value resource;
  NAPI_CALL(env, napi_create_object(env, &resource));
  NAPI_CALL(env, napi_async_init(env, resource, name, &req->async_ctx));
  int r = uv_poll_init(loop, &req->poll, pidfd);
  if (r < 0) {
    napi_async_destroy(env, req->async_ctx);
    napi_reject_deferred(env, deferred, nacelle_errno_error(env, -r, "uv_poll_init", NULL));
    free(req);
    return promise;
  }
  req->poll.data = req;
  r = uv_poll_start(&req->poll, UV_READABLE, wait_on_poll);
  if (r < 0) {
    napi_async_destroy(env, req->async_ctx);
    napi_reject_deferred(env, deferred, nacelle_errno_error(env, -r, "uv_poll_start", NULL));
    uv_close((uv_handle_t *)&req->poll, wait_closed);
    return promise;
  }
  /* A waiter for a detached process must not keep the event loop alive. */
  if (!keep_alive) uv_unref((uv_handle_t *)&req->poll);
  napi_add_env_cleanup_hook(env, wait_cleanup_hook, req);
  return promise;
}

static napi_value ReapPidfd(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  int32_t pidfd;
  if (!arg_int32(env, argv[0], &pidfd)) return NULL;
  struct exit_status st = {0};
  int err = nacelle_pidfd_reap(pidfd, &st);
  if (err < 0) {
    nacelle_throw_errno(env, -err, "waitid", NULL);
    return NULL;
  }
  napi_value value;
  if (!st.exited) {
    NAPI_CALL(env, napi_get_null(env, &value));
    return value;
  }
  NAPI_CALL(env, napi_create_object(env, &value));
  set_int32(env, value, "exitCode", st.exit_code);
  set_int32(env, value, "signal", st.signal);
  set_bool(env, value, "coreDumped", st.core_dumped);
  return value;
}

/* ---- small synchronous calls ------------------------------------------- */

static napi_value PidfdOpen(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  int32_t pid;
  if (!arg_int32(env, argv[0], &pid)) return NULL;
  int fd = nacelle_pidfd_open(pid);
  if (fd < 0) {
    nacelle_throw_errno(env, -fd, "pidfd_open", NULL);
    return NULL;
  }
  napi_value v;
  NAPI_CALL(env, napi_create_int32(env, fd, &v));
  return v;
}

static napi_value PidfdSendSignal(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  int32_t pidfd, sig;
  if (!arg_int32(env, argv[0], &pidfd) || !arg_int32(env, argv[1], &sig)) return NULL;
  int err = nacelle_pidfd_send_signal(pidfd, sig);
  if (err < 0) nacelle_throw_errno(env, -err, "pidfd_send_signal", NULL);
  return NULL;
}

static napi_value Pipe(napi_env env, napi_callback_info info) {
  int fds[2];
  int err = nacelle_pipe(fds);
  if (err < 0) {
    nacelle_throw_errno(env, -err, "pipe2", NULL);
    return NULL;
  }
  napi_value arr, v;
  NAPI_CALL(env, napi_create_array_with_length(env, 2, &arr));
  for (uint32_t i = 0; i < 2; i++) {
    NAPI_CALL(env, napi_create_int32(env, fds[i], &v));
    NAPI_CALL(env, napi_set_element(env, arr, i, v));
  }
  return arr;
}

static napi_value Close(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  int32_t fd;
  if (!arg_int32(env, argv[0], &fd)) return NULL;
  int err = nacelle_close(fd);
  if (err < 0) nacelle_throw_errno(env, -err, "close", NULL);
  return NULL;
}

static napi_value PivotRoot(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct arena a = {0};
  char *new_root, *put_old;
  if (arg_string(env, argv[0], &a, &new_root) && arg_string(env, argv[1], &a, &put_old)) {
    int err = nacelle_pivot_root(new_root, put_old);
    if (err < 0) nacelle_throw_errno(env, -err, "pivot_root", new_root);
  }
  arena_free(&a);
  return NULL;
}

static napi_value Setns(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  int32_t fd, nstype;
  if (!arg_int32(env, argv[0], &fd) || !arg_int32(env, argv[1], &nstype)) return NULL;
  int err = nacelle_setns(fd, nstype);
  if (err < 0) nacelle_throw_errno(env, -err, "setns", NULL);
  return NULL;
}

static napi_value Sethostname(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct arena a = {0};
  char *name;
  if (arg_string(env, argv[0], &a, &name)) {
    int err = nacelle_sethostname(name);
    if (err < 0) nacelle_throw_errno(env, -err, "sethostname", NULL);
  }
  arena_free(&a);
  return NULL;
}

static napi_value KvmProbe(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct arena a = {0};
  char *path;
  napi_value result = NULL;
  if (arg_string(env, argv[0], &a, &path)) {
    struct kvm_probe_result r = {0};
    int err = nacelle_kvm_probe(path, &r);
    if (err < 0) {
      nacelle_throw_errno(env, -err, "open", path);
    } else if (napi_create_object(env, &result) == napi_ok) {
      set_int32(env, result, "apiVersion", r.api_version);
      set_int32(env, result, "maxVcpus", r.max_vcpus);
      set_int32(env, result, "recommendedVcpus", r.recommended_vcpus);
      set_bool(env, result, "irqchip", r.has_irqchip);
      set_bool(env, result, "userMemory", r.has_user_memory);
      set_bool(env, result, "immediateExit", r.has_immediate_exit);
    }
  }
  arena_free(&a);
  return result;
}

/* ---- device nodes and xattrs ------------------------------------------ */

static napi_value Mknod(napi_env env, napi_callback_info info) {
  NAPI_ARGS(4);
  struct arena a = {0};
  char *path;
  uint32_t mode, major, minor;
  if (arg_string(env, argv[0], &a, &path) && napi_get_value_uint32(env, argv[1], &mode) == napi_ok &&
      napi_get_value_uint32(env, argv[2], &major) == napi_ok && napi_get_value_uint32(env, argv[3], &minor) == napi_ok) {
    int err = nacelle_mknod(path, mode, major, minor);
    if (err < 0) nacelle_throw_errno(env, -err, "mknod", path);
  } else {
    nacelle_throw_last(env, napi_number_expected);
  }
  arena_free(&a);
  return NULL;
}

/* dirs(remove: boolean, paths: string[], mode) -> Promise<(string | null)[]>: errno names per path */
struct dirs_job {
  napi_async_work work;
  napi_deferred deferred;
  struct arena arena;
  char **paths;
  uint32_t n;
  int remove;
  uint32_t mode;
  int *errs;
};

static void dirs_execute(napi_env env, void *data) {
  struct dirs_job *job = data;
  nacelle_dirs(job->remove, job->paths, (int)job->n, job->mode, job->errs);
}

static void dirs_complete(napi_env env, napi_status status, void *data) {
  struct dirs_job *job = data;
  napi_value result, v;
  napi_create_array_with_length(env, job->n, &result);
  for (uint32_t i = 0; i < job->n; i++) {
    if (job->errs[i] == 0) napi_get_null(env, &v);
    else napi_create_string_utf8(env, uv_err_name(job->errs[i]), NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, result, i, v);
  }
  napi_resolve_deferred(env, job->deferred, result);
  napi_delete_async_work(env, job->work);
  arena_free(&job->arena);
  free(job);
}

static napi_value Dirs(napi_env env, napi_callback_info info) {
  NAPI_ARGS(3);
  struct dirs_job *job = calloc(1, sizeof *job);
  if (!job) {
    nacelle_throw_errno(env, ENOMEM, "dirs", NULL);
    return NULL;
  }
  bool remove = false;
  napi_value holder;
  napi_create_object(env, &holder);
  napi_set_named_property(env, holder, "paths", argv[1]);
  if (napi_get_value_bool(env, argv[0], &remove) != napi_ok || napi_get_value_uint32(env, argv[2], &job->mode) != napi_ok ||
      !prop_string_array(env, holder, "paths", &job->arena, &job->paths, &job->n) || !job->paths) {
    if (!job->paths) napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "dirs(remove: boolean, paths: string[], mode: number)");
    arena_free(&job->arena);
    free(job);
    return NULL;
  }
  job->remove = remove;
  job->errs = arena_alloc(&job->arena, (job->n ? job->n : 1) * sizeof(int));
  if (!job->errs) {
    arena_free(&job->arena);
    free(job);
    nacelle_throw_errno(env, ENOMEM, "dirs", NULL);
    return NULL;
  }
  return queue_work(env, "nacelle:dirs", dirs_execute, dirs_complete, job, &job->work, &job->deferred);
}

/* bpfLoadDeviceFilter(insns: Buffer) -> fd; the verifier's log is in the error's message. */
static napi_value BpfLoadDeviceFilter(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  void *data = NULL;
  size_t len = 0;
  if (napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok || len == 0 || len % 8 != 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "a BPF program is a non-empty Buffer of 8-byte instructions");
    return NULL;
  }
  static char log[16384];
  int fd = nacelle_bpf_load_device_filter(data, (unsigned int)(len / 8), log, sizeof log);
  if (fd < 0) {
    /* the verifier's last line before its statistics says what it refused */
    const char *line = log, *pick = log;
    size_t pick_len = 0;
    while (*line) {
      size_t n = strcspn(line, "\n");
      if (n > 0 && strncmp(line, "processed ", 10) != 0) {
        pick = line;
        pick_len = n;
      }
      line += n;
      if (*line == '\n') line++;
    }
    char what[200];
    snprintf(what, sizeof what, "bpf(BPF_PROG_LOAD): %.*s", (int)(pick_len < 150 ? pick_len : 150), pick);
    napi_value error = nacelle_errno_error(env, -fd, log[0] ? what : "bpf(BPF_PROG_LOAD)", NULL);
    napi_value text;
    napi_create_string_utf8(env, log, NAPI_AUTO_LENGTH, &text);
    napi_set_named_property(env, error, "verifierLog", text);
    napi_throw(env, error);
    return NULL;
  }
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
}

/* bpfAttachDeviceFilter(cgroupDir, progFd) */
static napi_value BpfAttachDeviceFilter(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct arena a = {0};
  char *path;
  int32_t fd;
  if (arg_string(env, argv[0], &a, &path) && arg_int32(env, argv[1], &fd)) {
    int err = nacelle_bpf_attach_device_filter(path, fd);
    if (err < 0) nacelle_throw_errno(env, -err, "bpf(BPF_PROG_ATTACH)", path);
  }
  arena_free(&a);
  return NULL;
}

/* bpfQueryDeviceFilters(cgroupDir) -> number of programs attached there */
static napi_value BpfQueryDeviceFilters(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct arena a = {0};
  char *path;
  napi_value result = NULL;
  if (arg_string(env, argv[0], &a, &path)) {
    int n = nacelle_bpf_query_device_filters(path);
    if (n < 0) nacelle_throw_errno(env, -n, "bpf(BPF_PROG_QUERY)", path);
    else napi_create_int32(env, n, &result);
  }
  arena_free(&a);
  return result;
}

static napi_value Lsetxattr(napi_env env, napi_callback_info info) {
  NAPI_ARGS(3);
  struct arena a = {0};
  char *path, *name;
  void *data = NULL;
  size_t len = 0;
  if (arg_string(env, argv[0], &a, &path) && arg_string(env, argv[1], &a, &name)) {
    if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "xattr value must be a Buffer");
    } else {
      int err = nacelle_lsetxattr(path, name, data, len, 0);
      if (err < 0) nacelle_throw_errno(env, -err, "lsetxattr", path);
    }
  }
  arena_free(&a);
  return NULL;
}

static napi_value Lgetxattr(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct arena a = {0};
  char *path, *name;
  napi_value result = NULL;
  if (arg_string(env, argv[0], &a, &path) && arg_string(env, argv[1], &a, &name)) {
    for (int attempt = 0; attempt < 4 && !result; attempt++) {
      ssize_t size = nacelle_lgetxattr(path, name, NULL, 0);
      if (size == -ENODATA) {
        napi_get_null(env, &result);
        break;
      }
      if (size < 0) {
        nacelle_throw_errno(env, (int)-size, "lgetxattr", path);
        break;
      }
      void *buf;
      napi_value b;
      if (napi_create_buffer(env, (size_t)size, &buf, &b) != napi_ok) break;
      ssize_t n = size ? nacelle_lgetxattr(path, name, buf, (size_t)size) : 0;
      if (n == -ERANGE) continue; /* grew in between: ask again */
      if (n < 0) {
        nacelle_throw_errno(env, (int)-n, "lgetxattr", path);
        break;
      }
      napi_value sliced = b;
      if (n != size) napi_create_buffer_copy(env, (size_t)n, buf, NULL, &sliced);
      result = sliced;
    }
  }
  arena_free(&a);
  return result;
}

static napi_value Llistxattr(napi_env env, napi_callback_info info) {
  NAPI_ARGS(1);
  struct arena a = {0};
  char *path;
  napi_value result = NULL;
  if (arg_string(env, argv[0], &a, &path)) {
    for (int attempt = 0; attempt < 4; attempt++) {
      ssize_t size = nacelle_llistxattr(path, NULL, 0);
      if (size < 0) {
        nacelle_throw_errno(env, (int)-size, "llistxattr", path);
        break;
      }
      char *buf = arena_alloc(&a, (size_t)size + 1);
      ssize_t n = size ? nacelle_llistxattr(path, buf, (size_t)size) : 0;
      if (n == -ERANGE) continue;
      if (n < 0) {
        nacelle_throw_errno(env, (int)-n, "llistxattr", path);
        break;
      }
      napi_create_array(env, &result);
      uint32_t idx = 0;
      for (ssize_t off = 0; off < n;) {
        size_t len = strlen(buf + off);
        napi_value s;
        napi_create_string_utf8(env, buf + off, len, &s);
        napi_set_element(env, result, idx++, s);
        off += (ssize_t)len + 1;
      }
      break;
    }
  }
  arena_free(&a);
  return result;
}

/* ---- flock: waiting happens on the pool, never the JS thread ----------- */

struct flock_job {
  napi_async_work work;
  napi_deferred deferred;
  int fd, op, err;
};

static void flock_execute(napi_env env, void *data) {
  struct flock_job *job = data;
  job->err = nacelle_flock(job->fd, job->op);
}

static void flock_complete(napi_env env, napi_status status, void *data) {
  struct flock_job *job = data;
  napi_value undefined;
  if (job->err < 0) {
    napi_reject_deferred(env, job->deferred, nacelle_errno_error(env, -job->err, "flock", NULL));
  } else {
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

/* flock(fd, op): op is LOCK_SH, LOCK_EX or LOCK_UN; resolves once held. */
static napi_value Flock(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  int32_t fd, op;
  if (!arg_int32(env, argv[0], &fd) || !arg_int32(env, argv[1], &op)) return NULL;
  struct flock_job *job = calloc(1, sizeof *job);
  if (!job) {
    nacelle_throw_errno(env, ENOMEM, "flock", NULL);
    return NULL;
  }
  job->fd = fd;
  job->op = op;
  return queue_work(env, "nacelle:flock", flock_execute, flock_complete, job, &job->work, &job->deferred);
}

/* ---- pseudo-terminals ---------------------------------------------------- */

static napi_value ResizePty(napi_env env, napi_callback_info info) {
  NAPI_ARGS(3);
  int32_t fd, cols, rows;
  if (!arg_int32(env, argv[0], &fd) || !arg_int32(env, argv[1], &cols) || !arg_int32(env, argv[2], &rows)) return NULL;
  int err = nacelle_resize_pty(fd, cols, rows);
  if (err < 0) nacelle_throw_errno(env, -err, "ioctl(TIOCSWINSZ)", NULL);
  return NULL;
}

/* ---- mount and umount on the pool -------------------------------------- */

struct mount_job {
  napi_async_work work;
  napi_deferred deferred;
  struct arena arena;
  int is_umount;
  char *source, *target, *fstype, *data;
  int64_t flags;
  int err;
};

static void mount_execute(napi_env env, void *data) {
  struct mount_job *job = data;
  job->err = job->is_umount ? nacelle_umount(job->target, (int)job->flags)
                            : nacelle_mount(job->source, job->target, job->fstype, (unsigned long)job->flags, job->data);
}

static void mount_complete(napi_env env, napi_status status, void *data) {
  struct mount_job *job = data;
  napi_value undefined;
  if (job->err < 0) {
    napi_reject_deferred(env, job->deferred,
                         nacelle_errno_error(env, -job->err, job->is_umount ? "umount2" : "mount", job->target));
  } else {
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  }
  napi_delete_async_work(env, job->work);
  arena_free(&job->arena);
  free(job);
}

static napi_value queue_mount_job(napi_env env, struct mount_job *job) {
  return queue_work(env, "nacelle:mount", mount_execute, mount_complete, job, &job->work, &job->deferred);
}

static napi_value Mount(napi_env env, napi_callback_info info) {
  NAPI_ARGS(5);
  struct mount_job *job = calloc(1, sizeof *job);
  if (!job) {
    nacelle_throw_errno(env, ENOMEM, "mount", NULL);
    return NULL;
  }
  if (!arg_string_or_null(env, argv[0], &job->arena, &job->source) ||
      !arg_string(env, argv[1], &job->arena, &job->target) ||
      !arg_string_or_null(env, argv[2], &job->arena, &job->fstype) || !arg_int64(env, argv[3], &job->flags) ||
      !arg_string_or_null(env, argv[4], &job->arena, &job->data)) {
    arena_free(&job->arena);
    free(job);
    return NULL;
  }
  return queue_mount_job(env, job);
}

static napi_value Umount(napi_env env, napi_callback_info info) {
  NAPI_ARGS(2);
  struct mount_job *job = calloc(1, sizeof *job);
  if (!job) {
    nacelle_throw_errno(env, ENOMEM, "umount2", NULL);
    return NULL;
  }
  job->is_umount = 1;
  if (!arg_string(env, argv[0], &job->arena, &job->target) || !arg_int64(env, argv[1], &job->flags)) {
    arena_free(&job->arena);
    free(job);
    return NULL;
  }
  return queue_mount_job(env, job);
}

/* ---- constants and module init ----------------------------------------- */

static bool set_const(napi_env env, napi_value obj, const char *name, int64_t value) {
  napi_value v;
  NAPI_OK(env, napi_create_int64(env, value, &v));
  NAPI_OK(env, napi_set_named_property(env, obj, name, v));
  return true;
}

static napi_value make_constants(napi_env env) {
  napi_value c;
  NAPI_CALL(env, napi_create_object(env, &c));
#define C(name) set_const(env, c, #name, name)
  C(CLONE_NEWNS); C(CLONE_NEWUTS); C(CLONE_NEWIPC); C(CLONE_NEWUSER); C(CLONE_NEWPID); C(CLONE_NEWNET);
  C(CLONE_NEWCGROUP);
  C(MS_RDONLY); C(MS_NOSUID); C(MS_NODEV); C(MS_NOEXEC); C(MS_SYNCHRONOUS); C(MS_REMOUNT); C(MS_MANDLOCK);
  C(MS_DIRSYNC); C(MS_NOATIME); C(MS_NODIRATIME); C(MS_BIND); C(MS_MOVE); C(MS_REC); C(MS_SILENT);
  C(MS_UNBINDABLE); C(MS_PRIVATE); C(MS_SLAVE); C(MS_SHARED); C(MS_RELATIME); C(MS_STRICTATIME);
  C(MNT_FORCE); C(MNT_DETACH); C(MNT_EXPIRE); C(UMOUNT_NOFOLLOW);
  C(SPAWN_OP_MOUNT); C(SPAWN_OP_UMOUNT); C(SPAWN_OP_MKDIR); C(SPAWN_OP_SYMLINK); C(SPAWN_OP_MKNOD);
  C(SPAWN_OP_CHMOD); C(SPAWN_OP_CREATE); C(SPAWN_OP_OPTIONAL);
  C(LOCK_SH); C(LOCK_EX); C(LOCK_UN);
  C(RLIMIT_CPU); C(RLIMIT_FSIZE); C(RLIMIT_DATA); C(RLIMIT_STACK); C(RLIMIT_CORE); C(RLIMIT_RSS); C(RLIMIT_NPROC);
  C(RLIMIT_NOFILE); C(RLIMIT_MEMLOCK); C(RLIMIT_AS); C(RLIMIT_LOCKS); C(RLIMIT_SIGPENDING); C(RLIMIT_MSGQUEUE);
  C(RLIMIT_NICE); C(RLIMIT_RTPRIO); C(RLIMIT_RTTIME);
#undef C
  return c;
}

bool nacelle_kvm_register(napi_env env, napi_value exports); /* kvm/napi.c */

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
      {"spawn", NULL, Spawn, NULL, NULL, NULL, napi_enumerable, NULL},
      {"waitPidfd", NULL, WaitPidfd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"reapPidfd", NULL, ReapPidfd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pidfdOpen", NULL, PidfdOpen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pidfdSendSignal", NULL, PidfdSendSignal, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pipe", NULL, Pipe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"close", NULL, Close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mount", NULL, Mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"umount", NULL, Umount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pivotRoot", NULL, PivotRoot, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setns", NULL, Setns, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sethostname", NULL, Sethostname, NULL, NULL, NULL, napi_enumerable, NULL},
      {"kvmProbe", NULL, KvmProbe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, Mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dirs", NULL, Dirs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bpfLoadDeviceFilter", NULL, BpfLoadDeviceFilter, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bpfAttachDeviceFilter", NULL, BpfAttachDeviceFilter, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bpfQueryDeviceFilters", NULL, BpfQueryDeviceFilters, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, Lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lgetxattr", NULL, Lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"llistxattr", NULL, Llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"flock", NULL, Flock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"resizePty", NULL, ResizePty, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_CALL(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  if (!nacelle_kvm_register(env, exports)) return NULL;
  napi_value constants = make_constants(env);
  if (!constants) return NULL;
  NAPI_CALL(env, napi_set_named_property(env, exports, "constants", constants));
  return exports;
}

NAPI_MODULE_INIT() {
  return Init(env, exports);
}
