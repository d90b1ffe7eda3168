/*
 * N-API helpers shared by binding.c and errors.c: status checks, argument
 * unpacking and the errno → JS error convention.
 */
#ifndef NACELLE_MACROS_H
#define NACELLE_MACROS_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Return NULL from an N-API callback when a call fails (an exception is pending). */
#define NAPI_CALL(env, call)                                 \
  do {                                                       \
    napi_status status_ = (call);                            \
    if (status_ != napi_ok) {                                \
      nacelle_throw_last(env, status_);                      \
      return NULL;                                           \
    }                                                        \
  } while (0)

/* Same, for helpers that return bool. */
#define NAPI_OK(env, call)                                   \
  do {                                                       \
    napi_status status_ = (call);                            \
    if (status_ != napi_ok) {                                \
      nacelle_throw_last(env, status_);                      \
      return false;                                          \
    }                                                        \
  } while (0)

#define NAPI_ARGS(n)                                                        \
  size_t argc = (n);                                                        \
  napi_value argv[(n) > 0 ? (n) : 1];                                       \
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));     \
  if (argc < (n)) {                                                         \
    napi_throw_type_error(env, "ERR_INVALID_ARG_COUNT", "expected " #n " arguments"); \
    return NULL;                                                            \
  }

/* errors.c */
const char *nacelle_errno_name(int err);
void nacelle_throw_last(napi_env env, napi_status status);
napi_value nacelle_errno_error(napi_env env, int err, const char *syscall, const char *path);
napi_value nacelle_error_with_message(napi_env env, int err, const char *syscall, const char *path, const char *message);
void nacelle_throw_errno(napi_env env, int err, const char *syscall, const char *path);

/* Creates a promise and queues `data` as async work on the libuv pool (NULL: exception pending). */
napi_value queue_work(napi_env env, const char *resource, napi_async_execute_callback execute,
                      napi_async_complete_callback complete, void *data, napi_async_work *work,
                      napi_deferred *deferred);

/* A list of allocations freed together (one per request). */
struct arena {
  void **ptrs;
  size_t len, cap;
};
void *arena_alloc(struct arena *a, size_t size);
void arena_free(struct arena *a);

/* Argument unpacking: false means a JS exception is pending. */
bool arg_string(napi_env env, napi_value v, struct arena *a, char **out);
bool arg_string_or_null(napi_env env, napi_value v, struct arena *a, char **out);
bool arg_int32(napi_env env, napi_value v, int32_t *out);
bool arg_int64(napi_env env, napi_value v, int64_t *out);
bool arg_bool(napi_env env, napi_value v, bool *out);
bool prop(napi_env env, napi_value obj, const char *name, napi_value *out); /* *out NULL when undefined/null */
bool prop_string(napi_env env, napi_value obj, const char *name, struct arena *a, char **out);
bool prop_int32(napi_env env, napi_value obj, const char *name, int32_t dflt, int32_t *out);
bool prop_int64(napi_env env, napi_value obj, const char *name, int64_t dflt, int64_t *out);
bool prop_bool(napi_env env, napi_value obj, const char *name, bool *out);
bool prop_string_array(napi_env env, napi_value obj, const char *name, struct arena *a, char ***out, uint32_t *len);

bool set_int32(napi_env env, napi_value obj, const char *name, int32_t value);
bool set_bool(napi_env env, napi_value obj, const char *name, bool value);

#endif
