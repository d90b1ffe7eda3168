/*
 * pty.c: terminal sizes. The pty itself is opened by the spawned child in
 * the container's own /dev/pts (spawn.c) and its master handed back to Node.
 */
#include <errno.h>
#include <sys/ioctl.h>
#include <termios.h>

#include "nacelle.h"

int nacelle_resize_pty(int fd, int cols, int rows) {
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  return ioctl(fd, TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}
