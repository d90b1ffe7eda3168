/*
 * fs.c: the file operations Node's fs module lacks: device nodes and extended
 * attributes, all without following symlinks (layers carry xattrs on links too).
 */
#include <errno.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/file.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "nacelle.h"

int nacelle_mknod(const char *path, unsigned int mode, unsigned int major, unsigned int minor) {
  return mknod(path, (mode_t)mode, makedev(major, minor)) < 0 ? -errno : 0;
}

int nacelle_lsetxattr(const char *path, const char *name, const void *value, size_t len, int flags) {
  return lsetxattr(path, name, value, len, flags) < 0 ? -errno : 0;
}

ssize_t nacelle_lgetxattr(const char *path, const char *name, void *buf, size_t len) {
  ssize_t n = lgetxattr(path, name, buf, len);
  return n < 0 ? -errno : n;
}

ssize_t nacelle_llistxattr(const char *path, char *buf, size_t len) {
  ssize_t n = llistxattr(path, buf, len);
  return n < 0 ? -errno : n;
}

/* mkdir(2) or rmdir(2) of each path, in order, stopping at nothing: errs[i]
 * gets 0 or -errno. For cgroups, where each call takes the kernel's
 * cgroup_mutex: one trip to the thread pool for all of a container's. */
void nacelle_dirs(int remove, char *const *paths, int n, unsigned int mode, int *errs) {
  for (int i = 0; i < n; i++) {
    int r = remove ? rmdir(paths[i]) : mkdir(paths[i], (mode_t)mode);
    errs[i] = r < 0 ? -errno : 0;
  }
}

/* flock(2), blocking: binding.c runs it on the libuv pool. */
int nacelle_flock(int fd, int op) {
  int r;
  do {
    r = flock(fd, op);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : 0;
}
