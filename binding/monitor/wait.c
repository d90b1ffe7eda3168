/*
 * monitor/wait.c: the exit-status recorder for detached containers. The
 * monitor process is the container's parent: it reaps it (and, as a child
 * subreaper, any orphan of a container without its own pid namespace) and
 * writes the status where any process can read it, so `wait` works after the
 * creating Node process is gone (conmon's job, for one container).
 *
 * Linked into both the addon (a fallback when the monitor program cannot be
 * exec'd) and the small nacelle-monitor program.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "monitor.h"

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

int nacelle_monitor_record(const char *status_path, const siginfo_t *si) {
  char json[128];
  int len;
  if (si->si_code == CLD_EXITED) {
    len = snprintf(json, sizeof json, "{\"exitCode\":%d,\"signal\":0,\"coreDumped\":false}\n", si->si_status);
  } else {
    len = snprintf(json, sizeof json, "{\"exitCode\":null,\"signal\":%d,\"coreDumped\":%s}\n", si->si_status,
                   si->si_code == CLD_DUMPED ? "true" : "false");
  }
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", status_path) >= sizeof tmp) return -ENAMETOOLONG;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno; /* the state directory is gone: the container was removed */
  int err = write_all(fd, json, (size_t)len);
  if (close(fd) < 0 && err == 0) err = -errno;
  if (err == 0 && rename(tmp, status_path) < 0) err = -errno;
  if (err < 0) unlink(tmp);
  return err;
}

int nacelle_monitor_wait(pid_t pid, const char *status_path) {
  for (;;) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED) < 0) {
      if (errno == EINTR) continue;
      return -errno; /* ECHILD: it was never ours */
    }
    if (si.si_pid == pid) return nacelle_monitor_record(status_path, &si);
    /* an orphan reparented to us: reaped, nothing to record */
  }
}
