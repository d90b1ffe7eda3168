/*
 * errors.c: the error convention and argument unpacking.
 *
 * A failed system call becomes an Error shaped like Node's own fs errors:
 * message "ENOENT: no such file or directory, mount '/x'", code "ENOENT",
 * errno -2 (libuv's negative numbering, as Node uses), syscall, and path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "macros.h"

void nacelle_throw_last(napi_env env, napi_status status) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  const char *msg = info && info->error_message ? info->error_message : "N-API call failed";
  if (status == napi_string_expected || status == napi_number_expected || status == napi_boolean_expected ||
      status == napi_object_expected || status == napi_array_expected) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  } else {
    napi_throw_error(env, "ERR_NAPI", msg);
  }
}

/* The errno's name; glibc's for the few libuv does not know (ENOEXEC). */
const char *nacelle_errno_name(int err) {
  if (err < 0) err = -err;
  const char *name = uv_err_name(-err);
  if (strncmp(name, "Unknown", 7) == 0) {
    const char *g = strerrorname_np(err);
    if (g) return g;
  }
  return name;
}

/* An Error shaped like Node's fs errors (code, errno, syscall, path), with the given message. */
napi_value nacelle_error_with_message(napi_env env, int err, const char *syscall, const char *path, const char *message) {
  if (err < 0) err = -err;
  napi_value code_v, msg_v, error, v;
  napi_create_string_utf8(env, nacelle_errno_name(err), NAPI_AUTO_LENGTH, &code_v);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v);
  napi_create_error(env, code_v, msg_v, &error);
  napi_create_int32(env, -err, &v);
  napi_set_named_property(env, error, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, error, "syscall", v);
  if (path) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, error, "path", v);
  }
  return error;
}

napi_value nacelle_errno_error(napi_env env, int err, const char *syscall, const char *path) {
  if (err < 0) err = -err;
  const char *code = nacelle_errno_name(err);
  const char *desc = strncmp(uv_strerror(-err), "Unknown", 7) == 0 ? strerror(err) : uv_strerror(-err);
  char msg[1024];
  if (path)
    snprintf(msg, sizeof msg, "%s: %s, %s '%s'", code, desc, syscall, path);
  else
    snprintf(msg, sizeof msg, "%s: %s, %s", code, desc, syscall);
  return nacelle_error_with_message(env, err, syscall, path, msg);
}

void nacelle_throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  napi_throw(env, nacelle_errno_error(env, err, syscall, path));
}

/* Creates a promise and queues `data` as async work on the libuv pool. */
napi_value queue_work(napi_env env, const char *resource, napi_async_execute_callback execute,
                      napi_async_complete_callback complete, void *data, napi_async_work *work,
                      napi_deferred *deferred) {
  napi_value promise, name;
  NAPI_CALL(env, napi_create_promise(env, deferred, &promise));
  NAPI_CALL(env, napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_create_async_work(env, NULL, name, execute, complete, data, work));
  NAPI_CALL(env, napi_queue_async_work(env, *work));
  return promise;
}

void *arena_alloc(struct arena *a, size_t size) {
  if (a->len == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    void **p = realloc(a->ptrs, cap * sizeof *p);
    if (!p) return NULL;
    a->ptrs = p;
    a->cap = cap;
  }
  void *mem = calloc(1, size ? size : 1);
  if (mem) a->ptrs[a->len++] = mem;
  return mem;
}

void arena_free(struct arena *a) {
  for (size_t i = 0; i < a->len; i++) free(a->ptrs[i]);
  free(a->ptrs);
  a->ptrs = NULL;
  a->len = a->cap = 0;
}

static bool out_of_memory(napi_env env) {
  napi_throw_error(env, "ENOMEM", "out of memory");
  return false;
}

bool arg_string(napi_env env, napi_value v, struct arena *a, char **out) {
  size_t len = 0;
  NAPI_OK(env, napi_get_value_string_utf8(env, v, NULL, 0, &len));
  char *s = arena_alloc(a, len + 1);
  if (!s) return out_of_memory(env);
  NAPI_OK(env, napi_get_value_string_utf8(env, v, s, len + 1, &len));
  if (strlen(s) != len) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "strings passed to the kernel must not contain NUL bytes");
    return false;
  }
  *out = s;
  return true;
}

bool arg_string_or_null(napi_env env, napi_value v, struct arena *a, char **out) {
  napi_valuetype t;
  NAPI_OK(env, napi_typeof(env, v, &t));
  if (t == napi_undefined || t == napi_null) {
    *out = NULL;
    return true;
  }
  return arg_string(env, v, a, out);
}

bool arg_int32(napi_env env, napi_value v, int32_t *out) {
  NAPI_OK(env, napi_get_value_int32(env, v, out));
  return true;
}

bool arg_int64(napi_env env, napi_value v, int64_t *out) {
  NAPI_OK(env, napi_get_value_int64(env, v, out));
  return true;
}

bool arg_bool(napi_env env, napi_value v, bool *out) {
  NAPI_OK(env, napi_get_value_bool(env, v, out));
  return true;
}

bool prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  napi_value v;
  napi_valuetype t;
  NAPI_OK(env, napi_get_named_property(env, obj, name, &v));
  NAPI_OK(env, napi_typeof(env, v, &t));
  *out = (t == napi_undefined || t == napi_null) ? NULL : v;
  return true;
}

bool prop_string(napi_env env, napi_value obj, const char *name, struct arena *a, char **out) {
  napi_value v;
  *out = NULL;
  if (!prop(env, obj, name, &v)) return false;
  return v ? arg_string(env, v, a, out) : true;
}

bool prop_int32(napi_env env, napi_value obj, const char *name, int32_t dflt, int32_t *out) {
  napi_value v;
  *out = dflt;
  if (!prop(env, obj, name, &v)) return false;
  return v ? arg_int32(env, v, out) : true;
}

bool prop_int64(napi_env env, napi_value obj, const char *name, int64_t dflt, int64_t *out) {
  napi_value v;
  *out = dflt;
  if (!prop(env, obj, name, &v)) return false;
  return v ? arg_int64(env, v, out) : true;
}

bool prop_bool(napi_env env, napi_value obj, const char *name, bool *out) {
  napi_value v;
  *out = false;
  if (!prop(env, obj, name, &v)) return false;
  return v ? arg_bool(env, v, out) : true;
}

bool prop_string_array(napi_env env, napi_value obj, const char *name, struct arena *a, char ***out, uint32_t *len) {
  napi_value arr, item;
  *out = NULL;
  *len = 0;
  if (!prop(env, obj, name, &arr)) return false;
  if (!arr) return true;
  NAPI_OK(env, napi_get_array_length(env, arr, len));
  char **list = arena_alloc(a, (*len + 1) * sizeof(char *));
  if (!list) return out_of_memory(env);
  for (uint32_t i = 0; i < *len; i++) {
    NAPI_OK(env, napi_get_element(env, arr, i, &item));
    if (!arg_string(env, item, a, &list[i])) return false;
  }
  list[*len] = NULL;
  *out = list;
  return true;
}

bool set_int32(napi_env env, napi_value obj, const char *name, int32_t value) {
  napi_value v;
  NAPI_OK(env, napi_create_int32(env, value, &v));
  NAPI_OK(env, napi_set_named_property(env, obj, name, v));
  return true;
}

bool set_bool(napi_env env, napi_value obj, const char *name, bool value) {
  napi_value v;
  NAPI_OK(env, napi_get_boolean(env, value, &v));
  NAPI_OK(env, napi_set_named_property(env, obj, name, v));
  return true;
}
