/*
 * mount.c: mount(2), umount2(2) and pivot_root(2) for the calling process.
 * Container rootfs setup runs the same calls inside the spawned child
 * (spawn.c); these are for the Node process itself (snapshots, tests).
 */
#include <errno.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nacelle.h"

int nacelle_mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data) {
  return mount(source, target, fstype, flags, data) < 0 ? -errno : 0;
}

int nacelle_umount(const char *target, int flags) {
  return umount2(target, flags) < 0 ? -errno : 0;
}

int nacelle_pivot_root(const char *new_root, const char *put_old) {
  return syscall(SYS_pivot_root, new_root, put_old) < 0 ? -errno : 0;
}
