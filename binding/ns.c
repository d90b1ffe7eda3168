/*
 * ns.c: namespace operations on the calling thread. Node is multithreaded, so
 * joining a user or mount namespace here fails with EINVAL by design: those
 * joins belong in a spawned child (spawn_desc.join_fds).
 */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "nacelle.h"

int nacelle_setns(int fd, int nstype) {
  return setns(fd, nstype) < 0 ? -errno : 0;
}

int nacelle_sethostname(const char *name) {
  return sethostname(name, strlen(name)) < 0 ? -errno : 0;
}
