/*
 * nacelle-monitor PID STATUS-FILE
 *
 * The parent of one detached container once its creator has exec'd this
 * program (binding/spawn.c, nacelle_spawn_monitored): waits for PID, writes
 * its exit status to STATUS-FILE and exits. It has its own session, no
 * terminal, /dev/null as stdio, and ignores the signals a terminal or a
 * process group would send; SIGKILL still ends it (the status is then lost,
 * and readers say so).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "monitor.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: nacelle-monitor PID STATUS-FILE (started by nacelle for a detached container)\n");
    return 2;
  }
  char *end;
  long pid = strtol(argv[1], &end, 10);
  if (*end || pid <= 0) {
    fprintf(stderr, "nacelle-monitor: bad pid '%s'\n", argv[1]);
    return 2;
  }
  static const int ignored[] = {SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2};
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) signal(ignored[i], SIG_IGN);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL); /* the creator blocked everything around fork */
  /* Set again in case we were started by hand: orphans of a container without
   * its own pid namespace come to us, not to init. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  int err = nacelle_monitor_wait((pid_t)pid, argv[2]);
  if (err < 0 && err != -ENOENT) {
    fprintf(stderr, "nacelle-monitor: %s: %s\n", argv[2], strerror(-err));
    return 1;
  }
  return 0;
}
