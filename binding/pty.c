/*
 * pty.c: pseudo-terminals for containers with `tty: true`. The master stays
 * with Node (a stream); the slave becomes the container's stdio and
 * controlling terminal.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "nacelle.h"

int nacelle_openpty(int cols, int rows, int *master, int *slave, char *name, size_t name_len) {
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) return -errno;
  if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, name_len) != 0) {
    int err = -errno;
    close(m);
    return err ? err : -EIO;
  }
  int s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (s < 0) {
    int err = -errno;
    close(m);
    return err;
  }
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  if (ioctl(m, TIOCSWINSZ, &ws) < 0) {
    int err = -errno;
    close(s);
    close(m);
    return err;
  }
  *master = m;
  *slave = s;
  return 0;
}

int nacelle_resize_pty(int fd, int cols, int rows) {
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  return ioctl(fd, TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}
