/*
 * nacelle-init: the static PID 1 of a nacelle VM.
 *
 * It mounts the pseudo filesystems, loads the kernel modules the host put in
 * the initramfs, optionally switches to a root on a block device, opens the
 * channel to the host (a virtio console), runs one command with the image's
 * env, user and workdir, forwards its stdout/stderr (and optionally stdin) as
 * frames, reaps every process (it is PID 1: orphans end up here), reports the
 * exit status and powers the VM off. The protocol is in protocol.h.
 *
 * Run as a plain process (getpid() != 1), it skips mounts, modules, hostname
 * and power-off, takes the config path from argv[1], makes itself a child
 * subreaper and exits with the command's exit code, so it can be tested in a
 * container with a FIFO, a regular file or a unix socket as the channel.
 *
 * Built with `gcc -static -O2`: the initramfs holds the image's own files, so
 * the init must not depend on any library being there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

#define MAX_LIST 4096
#define STDIN_BUFFER_LIMIT (1 << 20) /* stop reading the channel while this much stdin is queued */
#define DRAIN_TIMEOUT_MS 2000        /* after the command exits: how long to wait for pipe EOF */
#define DEVICE_WAIT_MS 5000          /* how long to wait for the channel / root device */

static int pid1;
static int channel_fd = -1;
static int channel_ok; /* 0 once a write to the host failed: stop sending */

/* ---------------------------------------------------------------- logging */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "nacelle-init: ");
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + ((size_t)m < sizeof buf - (size_t)n - 1 ? (size_t)m : sizeof buf - (size_t)n - 2);
  buf[len++] = '\n';
  /* stderr is /dev/console (ttyS0) in the VM, the caller's stderr otherwise */
  for (size_t off = 0; off < len;) {
    ssize_t w = write(2, buf + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
}

static const char *errname(int err) {
  switch (err) {
  case ENOENT: return "ENOENT";
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case ENOTDIR: return "ENOTDIR";
  case ENOEXEC: return "ENOEXEC";
  case EEXIST: return "EEXIST";
  case EINVAL: return "EINVAL";
  case ENOMEM: return "ENOMEM";
  case E2BIG: return "E2BIG";
  case ELOOP: return "ELOOP";
  case ENAMETOOLONG: return "ENAMETOOLONG";
  case EISDIR: return "EISDIR";
  case ETXTBSY: return "ETXTBSY";
  case EBUSY: return "EBUSY";
  case ENODEV: return "ENODEV";
  case ENXIO: return "ENXIO";
  case EIO: return "EIO";
  case EROFS: return "EROFS";
  case ENOSPC: return "ENOSPC";
  case ECONNREFUSED: return "ECONNREFUSED";
  case EPIPE: return "EPIPE";
  default: return "E?";
  }
}

/* ---------------------------------------------------------------- channel */

static int write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        poll(&pfd, 1, 100);
        continue;
      }
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static void send_frame(uint8_t type, const void *payload, size_t len) {
  if (channel_fd < 0 || !channel_ok) return;
  const char *p = payload;
  do {
    size_t chunk = len > NACELLE_MAX_PAYLOAD ? NACELLE_MAX_PAYLOAD : len;
    unsigned char header[NACELLE_FRAME_HEADER] = {
        type, (unsigned char)(chunk & 0xff), (unsigned char)((chunk >> 8) & 0xff),
        (unsigned char)((chunk >> 16) & 0xff), (unsigned char)((chunk >> 24) & 0xff)};
    if (write_all(channel_fd, header, sizeof header) < 0 || (chunk > 0 && write_all(channel_fd, p, chunk) < 0)) {
      logmsg("write to the host channel: %s (%s); output from now on is lost", strerror(errno), errname(errno));
      channel_ok = 0;
      return;
    }
    p += chunk;
    len -= chunk;
  } while (len > 0);
}

static void send_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void send_error(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  logmsg("%s", buf);
  send_frame(NACELLE_FRAME_ERROR, buf, (size_t)n);
}

static void send_exit(int code, int sig) {
  unsigned char p[8];
  uint32_t c = (uint32_t)code, s = (uint32_t)sig;
  for (int i = 0; i < 4; i++) {
    p[i] = (unsigned char)(c >> (8 * i));
    p[4 + i] = (unsigned char)(s >> (8 * i));
  }
  send_frame(NACELLE_FRAME_EXIT, p, sizeof p);
}

/* ---------------------------------------------------------------- config */

struct config {
  char *argv[MAX_LIST + 1];
  int argc;
  char *env[MAX_LIST + 1];
  int envc;
  gid_t groups[NGROUPS_MAX > 1024 ? 1024 : NGROUPS_MAX];
  int ngroups;
  char *modules[256];
  int nmodules;
  const char *workdir, *hostname, *channel, *root, *rootfstype, *rootflags;
  uid_t uid;
  gid_t gid;
  int stdin_forward;
};

static int parse_id(const char *key, const char *v, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (errno != 0 || *v == '\0' || *end != '\0' || n > 0xfffffffeUL) {
    logmsg("config: %s=%s is not a number", key, v);
    return -1;
  }
  *out = n;
  return 0;
}

/* Reads `key=value\0` records; the values point into the returned buffer. */
static int load_config(const char *path, struct config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->workdir = "/";
  cfg->channel = NACELLE_DEFAULT_CHANNEL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    logmsg("open config %s: %s (%s)", path, strerror(errno), errname(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    logmsg("stat config %s: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  size_t cap = (size_t)st.st_size + 1, len = 0;
  char *buf = malloc(cap + 1);
  if (!buf) {
    logmsg("config %s: out of memory", path);
    close(fd);
    return -1;
  }
  for (;;) {
    if (len == cap) {
      char *more = realloc(buf, cap * 2 + 1);
      if (!more) {
        logmsg("config %s: out of memory", path);
        close(fd);
        return -1;
      }
      buf = more;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      logmsg("read config %s: %s", path, strerror(errno));
      close(fd);
      return -1;
    }
    if (r == 0) break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = '\0'; /* a last record without its NUL still ends */
  for (size_t off = 0; off < len;) {
    char *rec = buf + off;
    size_t rlen = strlen(rec);
    off += rlen + 1;
    if (rlen == 0) continue;
    char *eq = strchr(rec, '=');
    if (!eq) {
      logmsg("config: record without '=': %.60s", rec);
      return -1;
    }
    *eq = '\0';
    const char *key = rec;
    char *value = eq + 1;
    unsigned long n;
    if (strcmp(key, "arg") == 0) {
      if (cfg->argc >= MAX_LIST) { logmsg("config: too many args"); return -1; }
      cfg->argv[cfg->argc++] = value;
    } else if (strcmp(key, "env") == 0) {
      if (cfg->envc >= MAX_LIST) { logmsg("config: too many env entries"); return -1; }
      cfg->env[cfg->envc++] = value;
    } else if (strcmp(key, "group") == 0) {
      if (cfg->ngroups >= (int)(sizeof cfg->groups / sizeof cfg->groups[0])) { logmsg("config: too many groups"); return -1; }
      if (parse_id(key, value, &n) < 0) return -1;
      cfg->groups[cfg->ngroups++] = (gid_t)n;
    } else if (strcmp(key, "module") == 0) {
      if (cfg->nmodules >= (int)(sizeof cfg->modules / sizeof cfg->modules[0])) { logmsg("config: too many modules"); return -1; }
      cfg->modules[cfg->nmodules++] = value;
    } else if (strcmp(key, "uid") == 0) {
      if (parse_id(key, value, &n) < 0) return -1;
      cfg->uid = (uid_t)n;
    } else if (strcmp(key, "gid") == 0) {
      if (parse_id(key, value, &n) < 0) return -1;
      cfg->gid = (gid_t)n;
    } else if (strcmp(key, "workdir") == 0) {
      cfg->workdir = value;
    } else if (strcmp(key, "hostname") == 0) {
      cfg->hostname = value;
    } else if (strcmp(key, "channel") == 0) {
      cfg->channel = value;
    } else if (strcmp(key, "stdin") == 0) {
      cfg->stdin_forward = strcmp(value, "1") == 0;
    } else if (strcmp(key, "root") == 0) {
      cfg->root = value;
    } else if (strcmp(key, "rootfstype") == 0) {
      cfg->rootfstype = value;
    } else if (strcmp(key, "rootflags") == 0) {
      cfg->rootflags = value;
    } /* unknown keys: ignored (forward compatibility) */
  }
  if (cfg->argc == 0) {
    logmsg("config %s: no command (no `arg` record)", path);
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- PID 1 setup */

static void ensure_dir(const char *path, mode_t mode) {
  if (mkdir(path, mode) < 0 && errno != EEXIST) logmsg("mkdir %s: %s (%s)", path, strerror(errno), errname(errno));
}

static int is_mountpoint(const char *path) {
  struct stat a, b;
  char parent[PATH_MAX];
  if (stat(path, &a) < 0) return 0;
  snprintf(parent, sizeof parent, "%s/..", path);
  if (stat(parent, &b) < 0) return 0;
  return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static void mount_fs(const char *source, const char *target, const char *type, unsigned long flags, const char *data) {
  if (is_mountpoint(target)) return;
  ensure_dir(target, 0755);
  if (mount(source, target, type, flags, data) < 0)
    logmsg("mount %s on %s: %s (%s)", type, target, strerror(errno), errname(errno));
}

/* The kernel opens /dev/console as fds 0-2 when it exists; make sure they are open. */
static void ensure_console(void) {
  for (int fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int c = open("/dev/console", O_RDWR | O_NOCTTY);
    if (c < 0) c = open("/dev/null", O_RDWR);
    if (c >= 0 && c != fd) {
      dup2(c, fd);
      close(c);
    }
  }
}

static void load_modules(struct config *cfg) {
  for (int i = 0; i < cfg->nmodules; i++) {
    const char *path = cfg->modules[i];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      logmsg("open module %s: %s (%s)", path, strerror(errno), errname(errno));
      continue;
    }
    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
      logmsg("finit_module %s: %s (%s)", path, strerror(errno), errname(errno));
    close(fd);
  }
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int wait_for_path(const char *path, int timeout_ms) {
  long deadline = now_ms() + timeout_ms;
  struct stat st;
  while (stat(path, &st) < 0) {
    if (now_ms() >= deadline) return -1;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* Mounts cfg->root and makes it `/`, carrying /dev, /proc and /sys along. */
static int switch_root(struct config *cfg) {
  const char *target = "/.nacelle/root";
  if (wait_for_path(cfg->root, DEVICE_WAIT_MS) < 0) {
    logmsg("root device %s did not appear within %d ms", cfg->root, DEVICE_WAIT_MS);
    return -1;
  }
  ensure_dir("/.nacelle", 0755);
  ensure_dir(target, 0755);
  const char *type = cfg->rootfstype ? cfg->rootfstype : "erofs";
  int readonly = strcmp(type, "erofs") == 0;
  /* A read-only image gets a writable layer in RAM on top, like a
   * container's upper dir: overlay(lower = the disk, upper = tmpfs). */
  const char *disk_at = readonly ? "/.nacelle/lower" : target;
  if (readonly) ensure_dir(disk_at, 0755);
  if (mount(cfg->root, disk_at, type, readonly ? MS_RDONLY : 0, cfg->rootflags) < 0) {
    logmsg("mount %s (%s) on %s: %s (%s)", cfg->root, type, disk_at, strerror(errno), errname(errno));
    return -1;
  }
  if (readonly) {
    ensure_dir("/.nacelle/rw", 0755);
    if (mount("tmpfs", "/.nacelle/rw", "tmpfs", 0, "mode=0755") < 0 || mkdir("/.nacelle/rw/upper", 0755) < 0 ||
        mkdir("/.nacelle/rw/work", 0755) < 0 ||
        mount("overlay", target, "overlay", 0, "lowerdir=/.nacelle/lower,upperdir=/.nacelle/rw/upper,workdir=/.nacelle/rw/work") < 0) {
      logmsg("writable layer over %s: %s (%s); the root stays read-only", cfg->root, strerror(errno), errname(errno));
      if (mount(disk_at, target, NULL, MS_BIND, NULL) < 0) {
        logmsg("bind %s on %s: %s (%s)", disk_at, target, strerror(errno), errname(errno));
        return -1;
      }
    }
  }
  static const char *carried[] = {"/dev", "/proc", "/sys"};
  for (size_t i = 0; i < sizeof carried / sizeof carried[0]; i++) {
    char dst[PATH_MAX];
    snprintf(dst, sizeof dst, "%s%s", target, carried[i]);
    if (mount(carried[i], dst, NULL, MS_MOVE, NULL) < 0) {
      logmsg("move %s to the new root: %s (%s); unmounting it", carried[i], strerror(errno), errname(errno));
      umount2(carried[i], MNT_DETACH);
    }
  }
  if (chdir(target) < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
    logmsg("switch root to %s: %s (%s)", cfg->root, strerror(errno), errname(errno));
    return -1;
  }
  return 0;
}

static void power_off(void) {
  sync();
  reboot(RB_POWER_OFF);
  logmsg("reboot(RB_POWER_OFF): %s", strerror(errno));
  for (;;) pause();
}

/* ---------------------------------------------------------------- the command */

/* What the child reports through its close-on-exec pipe when it cannot start. */
struct start_failure {
  int err;
  char step[32];
  char what[256];
};

static void child_fail(int fd, int err, const char *step, const char *what) {
  struct start_failure f;
  memset(&f, 0, sizeof f);
  f.err = err;
  snprintf(f.step, sizeof f.step, "%s", step);
  snprintf(f.what, sizeof f.what, "%s", what);
  (void)!write(fd, &f, sizeof f);
  _exit(err == ENOENT || err == ENOTDIR ? NACELLE_EXIT_NOT_FOUND : NACELLE_EXIT_CANNOT_EXEC);
}

static const char *env_get(char **env, const char *name) {
  size_t n = strlen(name);
  for (; *env; env++)
    if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') return *env + n + 1;
  return NULL;
}

/* execve with a PATH search in the command's own env, like execvpe without its /bin/sh fallback. */
static void exec_command(struct config *cfg, int errfd) {
  const char *file = cfg->argv[0];
  if (strchr(file, '/')) {
    execve(file, cfg->argv, cfg->env);
    child_fail(errfd, errno, "exec", file);
  }
  const char *path = env_get(cfg->env, "PATH");
  if (!path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  int saved = ENOENT;
  char full[PATH_MAX];
  for (const char *p = path;;) {
    const char *end = strchr(p, ':');
    size_t dlen = end ? (size_t)(end - p) : strlen(p);
    int n = dlen == 0 ? snprintf(full, sizeof full, "%s", file) : snprintf(full, sizeof full, "%.*s/%s", (int)dlen, p, file);
    if (n > 0 && (size_t)n < sizeof full) {
      execve(full, cfg->argv, cfg->env);
      if (errno != ENOENT && errno != ENOTDIR) saved = errno;
      if (errno == ENOEXEC || errno == E2BIG || errno == ENOMEM || errno == ETXTBSY) break;
    }
    if (!end) break;
    p = end + 1;
  }
  char what[256];
  if (saved == ENOENT) snprintf(what, sizeof what, "%s\" in $PATH \"%s", file, path);
  else snprintf(what, sizeof what, "%s", file);
  child_fail(errfd, saved, "exec", what);
}

/* mkdir -p, as root before the ids change: a container creates a missing
 * workdir too (Docker: owned by root, 0755). Errors are left to chdir. */
static void make_workdir(const char *dir) {
  char path[4096];
  size_t len = strlen(dir);
  if (len == 0 || len >= sizeof path) return;
  memcpy(path, dir, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (path[i] == '/' || path[i] == '\0') {
      char saved = path[i];
      path[i] = '\0';
      mkdir(path, 0755); /* EEXIST and friends: chdir reports what matters */
      path[i] = saved;
    }
  }
}

static pid_t start_command(struct config *cfg, int in_fd, int out_fd, int err_fd, int errpipe) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* child: only syscalls from here on */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  if (setsid() < 0) child_fail(errpipe, errno, "setsid", "");
  if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) child_fail(errpipe, errno, "dup2", "stdio");
  for (int fd = 3; fd < 1024; fd++)
    if (fd != errpipe) close(fd);
  if (pid1 && cfg->workdir[0] == '/') make_workdir(cfg->workdir);
  int change_ids = getuid() == 0 || getuid() != cfg->uid || getgid() != cfg->gid || cfg->ngroups > 0;
  if (change_ids) {
    if (setgroups((size_t)cfg->ngroups, cfg->groups) < 0) child_fail(errpipe, errno, "setgroups", "");
    if (setresgid(cfg->gid, cfg->gid, cfg->gid) < 0) child_fail(errpipe, errno, "setgid", "");
    if (setresuid(cfg->uid, cfg->uid, cfg->uid) < 0) child_fail(errpipe, errno, "setuid", "");
  }
  if (chdir(cfg->workdir) < 0) child_fail(errpipe, errno, "chdir", cfg->workdir);
  exec_command(cfg, errpipe);
  _exit(NACELLE_EXIT_CANNOT_EXEC);
}

/* ---------------------------------------------------------------- the loop */

struct inbuf { /* stdin bytes from the host not yet written to the command */
  char *data;
  size_t len, cap;
};

static int inbuf_push(struct inbuf *b, const char *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + len) cap *= 2;
    char *more = realloc(b->data, cap);
    if (!more) return -1;
    b->data = more;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  return 0;
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int open_channel(const char *path) {
  struct stat st;
  if (pid1 && wait_for_path(path, DEVICE_WAIT_MS) < 0) {
    logmsg("channel %s did not appear within %d ms (is virtio_console loaded and a virtconsole attached?)", path, DEVICE_WAIT_MS);
    return -1;
  }
  if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
      logmsg("channel socket path too long: %s", path);
      return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
      logmsg("connect channel %s: %s (%s)", path, strerror(errno), errname(errno));
      if (fd >= 0) close(fd);
      return -1;
    }
    return fd;
  }
  /* The node can appear before the port behind it is ready: ENODEV (hvc) or
   * ENXIO (vport) for a moment. Retry within the same bound. */
  long open_deadline = now_ms() + DEVICE_WAIT_MS;
  int fd;
  for (;;) {
    fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC | (pid1 ? 0 : O_CREAT), 0600);
    if (fd >= 0 || !pid1 || (errno != ENODEV && errno != ENXIO) || now_ms() >= open_deadline) break;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (fd < 0) {
    logmsg("open channel %s: %s (%s)", path, strerror(errno), errname(errno));
    return -1;
  }
  if (isatty(fd)) {
    /* raw: no \n -> \r\n, no echo, no line discipline in the way of binary frames */
    struct termios t;
    if (tcgetattr(fd, &t) < 0) {
      logmsg("tcgetattr %s: %s", path, strerror(errno));
    } else {
      cfmakeraw(&t);
      if (tcsetattr(fd, TCSANOW, &t) < 0) logmsg("tcsetattr %s: %s", path, strerror(errno));
    }
  }
  return fd;
}

/* Whether the channel can carry host -> guest frames (a tty or a socket; not a file or FIFO). */
static int channel_readable(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return 0;
  return S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode);
}

static void reap(pid_t main_pid, int *main_done, int *status) {
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p <= 0) {
      if (p < 0 && errno == EINTR) continue;
      return;
    }
    if (p == main_pid) {
      *main_done = 1;
      *status = st;
    }
  }
}

static int run(struct config *cfg) {
  /* SIGCHLD through a signalfd, so the poll loop sees exits; SIGPIPE off for the channel. */
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) logmsg("sigprocmask: %s", strerror(errno));
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    logmsg("signalfd: %s (%s)", strerror(errno), errname(errno));
    return NACELLE_EXIT_CANNOT_EXEC;
  }
  signal(SIGPIPE, SIG_IGN);

  int out[2], err[2], ep[2], in[2] = {-1, -1};
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0) {
    send_error("pipe: %s (%s)", strerror(errno), errname(errno));
    return NACELLE_EXIT_CANNOT_EXEC;
  }
  int forward_in = cfg->stdin_forward && channel_fd >= 0 && channel_readable(channel_fd);
  if (cfg->stdin_forward && !forward_in) logmsg("stdin forwarding needs a tty or socket channel; the command gets /dev/null");
  if (forward_in) {
    if (pipe2(in, O_CLOEXEC) < 0) {
      send_error("pipe: %s (%s)", strerror(errno), errname(errno));
      return NACELLE_EXIT_CANNOT_EXEC;
    }
  } else {
    in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in[0] < 0) {
      send_error("open /dev/null: %s (%s)", strerror(errno), errname(errno));
      return NACELLE_EXIT_CANNOT_EXEC;
    }
  }

  pid_t pid = start_command(cfg, in[0], out[1], err[1], ep[1]);
  if (pid < 0) {
    send_error("fork: %s (%s)", strerror(errno), errname(errno));
    return NACELLE_EXIT_CANNOT_EXEC;
  }
  close(out[1]);
  close(err[1]);
  close(ep[1]);
  close(in[0]);

  /* A start failure arrives on ep before EOF; success closes it at exec. */
  struct start_failure f;
  ssize_t got;
  do got = read(ep[0], &f, sizeof f);
  while (got < 0 && errno == EINTR);
  close(ep[0]);
  int failed = got == (ssize_t)sizeof f;
  if (failed) {
    f.step[sizeof f.step - 1] = '\0';
    f.what[sizeof f.what - 1] = '\0';
    if (strcmp(f.step, "exec") == 0)
      send_error("exec \"%s\": %s (%s)", f.what, strerror(f.err), errname(f.err));
    else
      send_error("%s%s%s: %s (%s)", f.step, f.what[0] ? " " : "", f.what, strerror(f.err), errname(f.err));
  }

  int in_w = in[1];
  if (in_w >= 0) set_nonblock(in_w);
  set_nonblock(out[0]);
  set_nonblock(err[0]);
  int fds_open[2] = {out[0], err[0]};
  struct inbuf ib = {0};
  int in_eof = 0; /* STDIN_EOF seen: close stdin once the buffer is written */
  char rx[NACELLE_FRAME_HEADER + NACELLE_MAX_PAYLOAD];
  size_t rxlen = 0;
  /* The host's frames (stdin, signals) come over a duplex channel: the
   * virtio port or a socket. A FIFO or a file (the channel when the init runs
   * as a plain process in a test) would hand back our own frames: read those
   * only for stdin. */
  struct stat cst;
  int duplex = channel_fd >= 0 && fstat(channel_fd, &cst) == 0 && (S_ISCHR(cst.st_mode) || S_ISSOCK(cst.st_mode));
  int read_channel = forward_in || duplex;
  int main_done = 0, status = 0;
  long drain_deadline = -1;
  static char buf[NACELLE_MAX_PAYLOAD];

  for (;;) {
    if (main_done && drain_deadline < 0) {
      /* The command is gone: like a container's PID 1 ending, nothing else outlives it. */
      if (pid1) kill(-1, SIGKILL);
      else kill(-pid, SIGKILL);
      drain_deadline = now_ms() + DRAIN_TIMEOUT_MS;
      if (in_w >= 0) { close(in_w); in_w = -1; }
      read_channel = 0;
    }
    if (main_done && fds_open[0] < 0 && fds_open[1] < 0) break;
    int timeout = -1;
    if (drain_deadline >= 0) {
      long left = drain_deadline - now_ms();
      if (left <= 0) {
        logmsg("output pipes still open %d ms after the command exited; some output may be lost", DRAIN_TIMEOUT_MS);
        break;
      }
      timeout = (int)left;
    }
    struct pollfd pfd[5];
    int n = 0, i_sig, i_out = -1, i_err = -1, i_in = -1, i_ch = -1;
    pfd[i_sig = n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    if (fds_open[0] >= 0) pfd[i_out = n++] = (struct pollfd){.fd = fds_open[0], .events = POLLIN};
    if (fds_open[1] >= 0) pfd[i_err = n++] = (struct pollfd){.fd = fds_open[1], .events = POLLIN};
    if (in_w >= 0 && ib.len > 0) pfd[i_in = n++] = (struct pollfd){.fd = in_w, .events = POLLOUT};
    if (read_channel && ib.len < STDIN_BUFFER_LIMIT) pfd[i_ch = n++] = (struct pollfd){.fd = channel_fd, .events = POLLIN};
    int r = poll(pfd, (nfds_t)n, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      logmsg("poll: %s", strerror(errno));
      break;
    }
    if (pfd[i_sig].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {}
      if (!main_done) reap(pid, &main_done, &status);
      else reap(-2, &main_done, &status);
    }
    /* Output: read until EAGAIN so a burst is forwarded before anything else happens. */
    int idx[2] = {i_out, i_err};
    for (int k = 0; k < 2; k++) {
      if (idx[k] < 0 || !pfd[idx[k]].revents) continue;
      for (;;) {
        ssize_t got2 = read(fds_open[k], buf, sizeof buf);
        if (got2 > 0) {
          send_frame(k == 0 ? NACELLE_FRAME_STDOUT : NACELLE_FRAME_STDERR, buf, (size_t)got2);
          continue;
        }
        if (got2 < 0 && errno == EINTR) continue;
        if (got2 < 0 && errno == EAGAIN) break;
        close(fds_open[k]); /* EOF or error */
        fds_open[k] = -1;
        break;
      }
    }
    if (i_in >= 0 && pfd[i_in].revents) {
      if (pfd[i_in].revents & (POLLERR | POLLHUP)) {
        close(in_w); /* the command closed its stdin: drop what is queued */
        in_w = -1;
        ib.len = 0;
      } else {
        ssize_t w = write(in_w, ib.data, ib.len);
        if (w > 0) {
          memmove(ib.data, ib.data + w, ib.len - (size_t)w);
          ib.len -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          close(in_w);
          in_w = -1;
          ib.len = 0;
        }
      }
    }
    if (i_ch >= 0 && pfd[i_ch].revents) {
      ssize_t got3 = read(channel_fd, rx + rxlen, sizeof rx - rxlen);
      if (got3 == 0 || (got3 < 0 && errno != EAGAIN && errno != EINTR)) {
        read_channel = 0; /* host closed its side: treat as stdin EOF */
        in_eof = 1;
      } else if (got3 > 0) {
        rxlen += (size_t)got3;
        size_t off = 0;
        while (rxlen - off >= NACELLE_FRAME_HEADER) {
          const unsigned char *h = (const unsigned char *)rx + off;
          uint32_t plen = (uint32_t)h[1] | (uint32_t)h[2] << 8 | (uint32_t)h[3] << 16 | (uint32_t)h[4] << 24;
          if (plen > NACELLE_MAX_PAYLOAD) {
            logmsg("host frame of %u bytes exceeds %d; closing stdin", plen, NACELLE_MAX_PAYLOAD);
            read_channel = 0;
            in_eof = 1;
            break;
          }
          if (rxlen - off < NACELLE_FRAME_HEADER + plen) break;
          if (h[0] == NACELLE_FRAME_STDIN && in_w >= 0) {
            if (inbuf_push(&ib, (const char *)h + NACELLE_FRAME_HEADER, plen) < 0) logmsg("stdin: out of memory, dropping %u bytes", plen);
          } else if (h[0] == NACELLE_FRAME_STDIN_EOF) {
            in_eof = 1;
          } else if (h[0] == NACELLE_FRAME_SIGNAL && plen == 4) {
            int32_t sig;
            memcpy(&sig, h + NACELLE_FRAME_HEADER, sizeof sig);
            /* to the command itself, as a container runtime signals its process */
            if (!main_done && sig > 0 && sig < 65 && kill(pid, sig) < 0) logmsg("kill(%d, %d): %s", (int)pid, (int)sig, strerror(errno));
          } else if (h[0] != NACELLE_FRAME_STDIN) {
            logmsg("ignoring host frame type %u", h[0]);
          }
          off += NACELLE_FRAME_HEADER + plen;
        }
        memmove(rx, rx + off, rxlen - off);
        rxlen -= off;
      }
    }
    if (in_eof && in_w >= 0 && ib.len == 0) {
      close(in_w);
      in_w = -1;
    }
  }
  free(ib.data);
  for (int k = 0; k < 2; k++)
    if (fds_open[k] >= 0) close(fds_open[k]);
  if (!main_done) {
    /* only when poll failed: collect the command anyway */
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  }
  reap(-2, &main_done, &status);
  close(sfd);

  int code, sig = 0;
  if (WIFSIGNALED(status)) {
    sig = WTERMSIG(status);
    code = 128 + sig;
  } else {
    code = WEXITSTATUS(status);
  }
  if (failed) code = (f.err == ENOENT || f.err == ENOTDIR) ? NACELLE_EXIT_NOT_FOUND : NACELLE_EXIT_CANNOT_EXEC;
  send_exit(code, sig);
  return code;
}

int main(int argc, char **argv) {
  pid1 = getpid() == 1;
  static struct config cfg;
  if (pid1) {
    mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    ensure_console();
    mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  } else if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
    logmsg("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
  }
  const char *config_path = !pid1 && argc > 1 ? argv[1] : NACELLE_CONFIG_PATH;
  int ok = load_config(config_path, &cfg) == 0;
  if (ok && pid1) {
    load_modules(&cfg);
    if (cfg.root && switch_root(&cfg) < 0) ok = 0;
    if (ok) {
      mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
      mount_fs("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
      if (cfg.root) mount_fs("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
      if (cfg.hostname && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
        logmsg("sethostname %s: %s (%s)", cfg.hostname, strerror(errno), errname(errno));
    }
  }
  /* Even a broken config gets a channel, so the host hears why. */
  channel_fd = open_channel(cfg.channel ? cfg.channel : NACELLE_DEFAULT_CHANNEL);
  channel_ok = channel_fd >= 0;
  send_frame(NACELLE_FRAME_READY, NULL, 0);
  int code;
  if (!ok) {
    send_error("nacelle-init could not start: see the console (config %s)", config_path);
    code = NACELLE_EXIT_CANNOT_EXEC;
    send_exit(code, 0);
  } else {
    if (!pid1 && cfg.hostname) logmsg("not PID 1: hostname %s not set", cfg.hostname);
    code = run(&cfg);
  }
  if (channel_fd >= 0) {
    if (isatty(channel_fd)) tcdrain(channel_fd);
    if (!pid1) close(channel_fd);
  }
  if (pid1) power_off();
  return code;
}
