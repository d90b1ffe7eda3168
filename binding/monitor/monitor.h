/* The detached-container monitor: see monitor/wait.c. */
#ifndef NACELLE_MONITOR_H
#define NACELLE_MONITOR_H

#include <signal.h>
#include <sys/types.h>

/* Reap children until `pid` exits, then write its status as JSON to
 * status_path (atomically: a .tmp file renamed). Returns 0 or -errno. */
int nacelle_monitor_wait(pid_t pid, const char *status_path);
int nacelle_monitor_record(const char *status_path, const siginfo_t *si);

#endif
