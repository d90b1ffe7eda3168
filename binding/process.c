/*
 * process.c: pidfds, reaping and pipes. Waiting is driven by libuv polling the
 * pidfd (binding.c); this file only reaps the one process a pidfd names, so it
 * never takes another child's exit from Node's child_process.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nacelle.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int nacelle_pidfd_reap(int pidfd, struct exit_status *st) {
  siginfo_t si;
  si.si_pid = 0;
  st->exited = 0;
  for (;;) {
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG) == 0) break;
    if (errno != EINTR) return -errno;
  }
  if (si.si_pid == 0) return 0; /* still running */
  st->exited = 1;
  st->exit_code = -1;
  st->signal = 0;
  st->core_dumped = 0;
  if (si.si_code == CLD_EXITED) {
    st->exit_code = si.si_status;
  } else {
    st->signal = si.si_status;
    st->core_dumped = si.si_code == CLD_DUMPED;
  }
  return 0;
}

int nacelle_pidfd_open(pid_t pid) {
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : (int)fd;
}

int nacelle_pidfd_send_signal(int pidfd, int sig) {
  return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

int nacelle_pipe(int fds[2]) {
  return pipe2(fds, O_CLOEXEC) < 0 ? -errno : 0;
}

int nacelle_close(int fd) {
  return close(fd) < 0 ? -errno : 0;
}
