/*
 * spawn.c: start one process in new namespaces from a flat description.
 *
 * The child is created with clone(CLONE_VM | CLONE_PIDFD | namespaces) on a
 * stack of its own, like posix_spawn, so nothing of Node's large address space
 * is copied. Because it shares the parent's memory and thread pointer, the
 * child only makes raw system calls (rawsys.h): no malloc, no locks, no errno.
 *
 * The parent runs on a libuv pool thread (never the JS thread) and:
 *   1. writes setgroups/uid_map/gid_map and cgroup.procs while the child
 *      waits on the sync pipe;
 *   2. releases the child with one byte;
 *   3. reads the error pipe: EOF means execve succeeded (the pipe is
 *      O_CLOEXEC), a struct spawn_failure means the child stopped at a step,
 *      in which case the child is reaped here and the error returned.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <termios.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "monitor/monitor.h"
#include "nacelle.h"
#include "rawsys.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define CHILD_STACK_SIZE (256 * 1024)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct child_args {
  const struct spawn_desc *desc;
  int sync_r;
  int err_w;
  int pty_sock; /* where the child sends its pty master (SCM_RIGHTS) */
  pid_t parent;
};

/* ---- child side: raw syscalls only ------------------------------------- */

static size_t child_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

__attribute__((noreturn)) static void child_fail(const struct child_args *a, int step, long err, int index) {
  struct spawn_failure f = {.step = step, .err = (int)(err < 0 ? -err : err), .index = index};
  (void)RS3(SYS_write, a->err_w, &f, sizeof f);
  RS1(SYS_exit_group, 127);
  __builtin_unreachable();
}

/* Kernel layout of struct sigaction for rt_sigaction (same on x86_64 and arm64). */
struct kernel_sigaction {
  void *handler;
  unsigned long flags;
  void *restorer;
  unsigned long mask;
};

static void child_reset_signals(void) {
  struct kernel_sigaction dfl = {0};
  for (int sig = 1; sig < 65; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    (void)RS4(SYS_rt_sigaction, sig, &dfl, NULL, 8);
  }
}

static long child_exec_search(const struct spawn_desc *d) {
  const char *file = d->file;
  for (const char *p = file; *p; p++) {
    if (*p == '/') return RS3(SYS_execve, file, d->argv, d->envp);
  }
  const char *path = d->path_env ? d->path_env : DEFAULT_PATH;
  size_t flen = child_strlen(file);
  char buf[4096];
  long result = -ENOENT;
  int seen_eacces = 0;
  const char *dir = path;
  for (;;) {
    const char *end = dir;
    while (*end && *end != ':') end++;
    size_t dlen = (size_t)(end - dir);
    if (dlen == 0) { /* empty entry means the current directory */
      buf[0] = '.';
      dlen = 1;
    } else if (dlen + flen + 2 <= sizeof buf) {
      for (size_t i = 0; i < dlen; i++) buf[i] = dir[i];
    } else {
      dlen = 0;
    }
    if (dlen + flen + 2 <= sizeof buf && dlen > 0) {
      buf[dlen] = '/';
      for (size_t i = 0; i <= flen; i++) buf[dlen + 1 + i] = file[i];
      result = RS3(SYS_execve, buf, d->argv, d->envp);
      if (result == -EACCES) seen_eacces = 1;
      else if (result != -ENOENT && result != -ENOTDIR && result != -ENAMETOOLONG) return result;
    }
    if (!*end) break;
    dir = end + 1;
  }
  return seen_eacces ? -EACCES : -ENOENT;
}

static long child_run_op(const struct spawn_op *op) {
  long r;
  switch (op->kind) {
    case SPAWN_OP_MOUNT:
      return RS5(SYS_mount, op->source, op->target, op->fstype, op->flags, op->data);
    case SPAWN_OP_UMOUNT:
      return RS2(SYS_umount2, op->target, op->flags);
    case SPAWN_OP_MKDIR:
      r = RS3(SYS_mkdirat, AT_FDCWD, op->target, op->mode ? op->mode : 0755);
      return r == -EEXIST ? 0 : r;
    case SPAWN_OP_SYMLINK:
      return RS3(SYS_symlinkat, op->source, AT_FDCWD, op->target);
    case SPAWN_OP_MKNOD:
      return RS4(SYS_mknodat, AT_FDCWD, op->target, op->mode, op->dev);
    case SPAWN_OP_CHMOD:
      return RS3(SYS_fchmodat, AT_FDCWD, op->target, op->mode);
    case SPAWN_OP_CREATE:
      /* O_RDONLY: opening an existing file for writing would copy it up into an
       * overlay's upper dir (and show in the container's diff). */
      r = RS4(SYS_openat, AT_FDCWD, op->target, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, op->mode ? op->mode : 0644);
      if (r >= 0) {
        (void)RS1(SYS_close, r);
        return 0;
      }
      return r;
    default:
      return -EINVAL;
  }
}

static int child_main(void *arg) {
  const struct child_args *a = arg;
  const struct spawn_desc *d = a->desc;
  long r;
  char go;

  /* Signals arrive blocked (the parent blocked them before clone): reset every
   * disposition first, so no handler of Node's ever runs on this shared memory. */
  child_reset_signals();

  if (!d->detached) {
    r = RS2(SYS_prctl, PR_SET_PDEATHSIG, d->death_signal ? d->death_signal : SIGKILL);
    if (r < 0) child_fail(a, STEP_PDEATHSIG, r, -1);
    /* The parent may have died before prctl took effect. In a new pid
     * namespace getppid() is 0, so only a visible, different parent counts. */
    r = RS0(SYS_getppid);
    if (r != 0 && r != a->parent) RS1(SYS_exit_group, 1);
  }

  /* Wait for the parent: maps written, cgroups joined. EOF means it gave up. */
  do {
    r = RS3(SYS_read, a->sync_r, &go, 1);
  } while (r == -EINTR);
  if (r != 1) RS1(SYS_exit_group, 1);

  unsigned long empty = 0;
  r = RS4(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8);
  if (r < 0) child_fail(a, STEP_SIGNALS, r, -1);

  /* A cgroup namespace is rooted where the process is when it is created:
   * create it only now that the parent has placed us in our cgroups. */
  if (d->late_cgroup_ns && (r = RS1(SYS_unshare, CLONE_NEWCGROUP)) < 0) child_fail(a, STEP_CGROUP_NS, r, -1);

  if (d->detached) {
    r = RS0(SYS_setsid);
    if (r < 0) child_fail(a, STEP_SETSID, r, -1);
  }

  for (int i = 0; i < d->njoin; i++) {
    r = RS2(SYS_setns, d->join_fds[i], 0);
    if (r < 0) child_fail(a, STEP_SETNS, r, i);
  }

  /* stdio: duplicate every source above 2 first so that one target never
   * clobbers another's source, then dup3 into place (which clears CLOEXEC). */
  int tmp[3];
  for (int i = 0; i < 3; i++) {
    int src = d->stdio[i];
    if (src < 0) {
      r = RS4(SYS_openat, AT_FDCWD, "/dev/null", (i == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC, 0);
      if (r < 0) child_fail(a, STEP_STDIO, r, i);
      tmp[i] = (int)r;
      continue;
    }
    r = RS3(SYS_fcntl, src, F_DUPFD_CLOEXEC, 3);
    if (r < 0) child_fail(a, STEP_STDIO, r, i);
    tmp[i] = (int)r;
  }
  for (int i = 0; i < 3; i++) {
    r = RS3(SYS_dup3, tmp[i], i, 0);
    if (r < 0) child_fail(a, STEP_STDIO, r, i);
  }

  if (d->loopback_up) {
    /* A new network namespace starts with "lo" down; containers expect it up. */
    struct ifreq ifr;
    for (size_t i = 0; i < sizeof ifr; i++) ((char *)&ifr)[i] = 0;
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    long s = RS3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) child_fail(a, STEP_LOOPBACK, s, -1);
    if ((r = RS3(SYS_ioctl, s, SIOCGIFFLAGS, &ifr)) < 0) child_fail(a, STEP_LOOPBACK, r, -1);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if ((r = RS3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr)) < 0) child_fail(a, STEP_LOOPBACK, r, -1);
    (void)RS1(SYS_close, s);
  }

  if (d->hostname) {
    r = RS2(SYS_sethostname, d->hostname, child_strlen(d->hostname));
    if (r < 0) child_fail(a, STEP_HOSTNAME, r, -1);
  }

  for (int i = 0; i < d->nops; i++) {
    const struct spawn_op *op = &d->ops[i];
    r = child_run_op(op);
    if (r == -ENOENT && (op->op_flags & SPAWN_OP_OPTIONAL)) continue;
    if (r < 0) child_fail(a, STEP_OP, r, i);
  }

  if (d->pivot_root) {
    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching
     * "." then drops the old root without needing a directory for it. */
    if ((r = RS1(SYS_chdir, d->pivot_root)) < 0) child_fail(a, STEP_PIVOT_ROOT, r, -1);
    if ((r = RS2(SYS_pivot_root, ".", ".")) < 0) child_fail(a, STEP_PIVOT_ROOT, r, -1);
    if ((r = RS2(SYS_umount2, ".", MNT_DETACH)) < 0) child_fail(a, STEP_PIVOT_ROOT, r, -1);
    if ((r = RS1(SYS_chdir, "/")) < 0) child_fail(a, STEP_PIVOT_ROOT, r, -1);
  }

  for (int i = 0; i < d->nrlimits; i++) {
    struct rlimit64_k {
      uint64_t cur, max;
    } lim = {d->rlimits[i].soft, d->rlimits[i].hard};
    r = RS4(SYS_prlimit64, 0, d->rlimits[i].resource, &lim, NULL);
    if (r < 0) child_fail(a, STEP_RLIMIT, r, i);
  }

  if (d->set_caps) {
    /* The bounding set can only shrink, and only while we still hold CAP_SETPCAP. */
    for (int cap = 0; cap <= d->caps.last_cap && cap < 64; cap++) {
      if (d->caps.bounding & (1ULL << cap)) continue;
      r = RS2(SYS_prctl, PR_CAPBSET_DROP, cap);
      if (r < 0 && r != -EINVAL) child_fail(a, STEP_CAPS, r, cap);
    }
    /* Keep permitted capabilities across the switch to a non-root uid. */
    if (d->set_uid && (r = RS2(SYS_prctl, PR_SET_KEEPCAPS, 1)) < 0) child_fail(a, STEP_CAPS, r, -1);
  }

  /* Hand stdio to the user the process will run as, so it can reopen
   * /dev/stdout and friends (runc and crun do the same). /dev/null and
   * other devices stay as they are. */
  if (d->set_uid && d->uid != 0) {
    for (int fd = 0; fd < 3; fd++) {
      struct stat st;
      if (RS4(SYS_newfstatat, fd, "", &st, AT_EMPTY_PATH) < 0) continue;
      if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) continue;
      r = RS3(SYS_fchown, fd, d->uid, d->set_gid ? d->gid : (gid_t)-1);
      if (r < 0) child_fail(a, STEP_STDIO, r, fd);
    }
  }

  if (d->pty) {
    /* A terminal from the container's own devpts (so ttyname() works inside),
     * as stdio; its master goes to the parent over a socket (SCM_RIGHTS). */
    long m = RS4(SYS_openat, AT_FDCWD, "/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
    if (m < 0) child_fail(a, STEP_PTY, m, -1);
    int unlock = 0;
    unsigned int n = 0;
    if ((r = RS3(SYS_ioctl, m, TIOCSPTLCK, &unlock)) < 0) child_fail(a, STEP_PTY, r, -1);
    if ((r = RS3(SYS_ioctl, m, TIOCGPTN, &n)) < 0) child_fail(a, STEP_PTY, r, -1);
    struct winsize ws = {.ws_row = d->pty_rows, .ws_col = d->pty_cols};
    if ((r = RS3(SYS_ioctl, m, TIOCSWINSZ, &ws)) < 0) child_fail(a, STEP_PTY, r, -1);
    char path[32] = "/dev/pts/";
    char digits[12];
    int nd = 0;
    do {
      digits[nd++] = (char)('0' + n % 10);
      n /= 10;
    } while (n && nd < 11);
    int at = 9;
    while (nd > 0) path[at++] = digits[--nd];
    path[at] = 0;
    long sl = RS4(SYS_openat, AT_FDCWD, path, O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
    if (sl < 0) child_fail(a, STEP_PTY, sl, -1);
    if (d->set_uid && (r = RS3(SYS_fchown, sl, d->uid, d->set_gid ? d->gid : (gid_t)-1)) < 0) child_fail(a, STEP_PTY, r, -1);
    for (int fd = 0; fd < 3; fd++) {
      if ((r = RS3(SYS_dup3, sl, fd, 0)) < 0) child_fail(a, STEP_PTY, r, fd);
    }
    char control[CMSG_SPACE(sizeof(int))];
    for (size_t i = 0; i < sizeof control; i++) control[i] = 0;
    char byte = 'p';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int mfd = (int)m;
    char *data = (char *)CMSG_DATA(cm);
    for (size_t i = 0; i < sizeof mfd; i++) data[i] = ((char *)&mfd)[i];
    if ((r = RS3(SYS_sendmsg, a->pty_sock, &msg, 0)) < 0) child_fail(a, STEP_PTY, r, -1);
    (void)RS1(SYS_close, m);
    (void)RS1(SYS_close, sl);
  }

  if (d->set_groups) {
    r = RS2(SYS_setgroups, d->ngroups, d->groups);
    if (r < 0) child_fail(a, STEP_SETGROUPS, r, -1);
  }
  if (d->set_gid) {
    r = RS3(SYS_setresgid, d->gid, d->gid, d->gid);
    if (r < 0) child_fail(a, STEP_SETGID, r, -1);
  }
  if (d->set_uid) {
    r = RS3(SYS_setresuid, d->uid, d->uid, d->uid);
    if (r < 0) child_fail(a, STEP_SETUID, r, -1);
  }

  if (d->set_caps) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {
        {(uint32_t)d->caps.effective, (uint32_t)d->caps.permitted, (uint32_t)d->caps.inheritable},
        {(uint32_t)(d->caps.effective >> 32), (uint32_t)(d->caps.permitted >> 32), (uint32_t)(d->caps.inheritable >> 32)},
    };
    if ((r = RS2(SYS_capset, &hdr, data)) < 0) child_fail(a, STEP_CAPS, r, -1);
    if ((r = RS5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)) < 0 && r != -EINVAL)
      child_fail(a, STEP_CAPS, r, -1);
    for (int cap = 0; cap <= d->caps.last_cap && cap < 64; cap++) {
      if (!(d->caps.ambient & (1ULL << cap))) continue;
      r = RS5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
      if (r < 0) child_fail(a, STEP_CAPS, r, cap);
    }
  }

  if (d->cwd) {
    r = RS1(SYS_chdir, d->cwd);
    if (r < 0) child_fail(a, STEP_CHDIR, r, -1);
  }

  if (d->ctty) {
    if (!d->detached && (r = RS0(SYS_setsid)) < 0) child_fail(a, STEP_CTTY, r, -1);
    if ((r = RS3(SYS_ioctl, 0, TIOCSCTTY, 0)) < 0) child_fail(a, STEP_CTTY, r, -1);
  }

  /* Nothing the Node process opened may leak into the workload. */
  (void)RS3(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);

  if (d->no_new_privs || d->seccomp_filter) {
    if ((r = RS5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) < 0) child_fail(a, STEP_NO_NEW_PRIVS, r, -1);
  }
  if (d->seccomp_filter) {
    /* Last, so that every step above ran unfiltered; the filter must allow execve. */
    struct sock_fprog prog = {d->seccomp_len, (struct sock_filter *)d->seccomp_filter};
    if ((r = RS3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) < 0) child_fail(a, STEP_SECCOMP, r, -1);
  }

  r = child_exec_search(d);
  child_fail(a, STEP_EXEC, r, -1);
}

/* ---- parent side ------------------------------------------------------- */

static int write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  size_t len = strlen(data);
  ssize_t n = write(fd, data, len);
  int err = n < 0 ? -errno : ((size_t)n == len ? 0 : -EIO);
  close(fd);
  return err;
}

static int write_proc_file(pid_t pid, const char *name, const char *data) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
  return write_file(path, data);
}

/* The fd the child sent with SCM_RIGHTS, or -errno. */
static int receive_fd(int sock) {
  char byte;
  char control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) return -EPROTO;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof fd);
  return fd;
}

static void reap_failed_child(pid_t pid, int pidfd) {
  siginfo_t si;
  syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
  while (waitid(P_PID, (id_t)pid, &si, WEXITED) < 0 && errno == EINTR) {
  }
  close(pidfd);
}

int nacelle_spawn(const struct spawn_desc *d, struct spawn_result *out, struct spawn_failure *fail) {
  int sync_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, pty_sock[2] = {-1, -1};
  out->pty_master = -1;
  int pidfd = -1, err = 0;
  void *stack = MAP_FAILED;
  sigset_t all, old;

  fail->step = STEP_NONE;
  fail->err = 0;
  fail->index = -1;

  if (pipe2(sync_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0) {
    err = -errno;
    fail->step = STEP_CLONE;
    goto out;
  }
  stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    err = -errno;
    fail->step = STEP_CLONE;
    goto out;
  }

  if (d->pty && socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pty_sock) < 0) {
    err = -errno;
    fail->step = STEP_PTY;
    goto out;
  }
  struct child_args args = {.desc = d, .sync_r = sync_pipe[0], .err_w = err_pipe[1], .pty_sock = pty_sock[1], .parent = getpid()};

  /* Exec into a container: this pool thread enters the container's pid
   * namespace for its children only (setns(CLONE_NEWPID) changes
   * pid_for_children of the calling thread), clones, and returns. */
  int own_pidns = -1;
  if (d->pid_ns_fd >= 0) {
    own_pidns = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC);
    if (own_pidns < 0 || setns(d->pid_ns_fd, CLONE_NEWPID) < 0) {
      err = -errno;
      fail->step = STEP_PIDNS;
      if (own_pidns >= 0) close(own_pidns);
      goto out;
    }
  }

  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  /* CLONE_VM (posix_spawn's trick) avoids copying Node's page tables. The
   * price: until execve the child shares Node's mm, and an OOM kill in its
   * memory cgroup during execve would take every process sharing that mm,
   * Node included. So callers put the child in cgroups *without* a memory
   * limit and set the limit once the child has exec'd (lib/container), or ask
   * for own_mm (a full fork: ~6x slower with a large Node heap). */
  unsigned long vm = d->own_mm ? 0 : CLONE_VM;
  unsigned long flags = d->clone_flags;
  if (d->ncgroups > 0 && (flags & CLONE_NEWCGROUP)) {
    flags &= ~(unsigned long)CLONE_NEWCGROUP;
    ((struct spawn_desc *)d)->late_cgroup_ns = 1;
  }
  pid_t pid = clone(child_main, (char *)stack + CHILD_STACK_SIZE,
                    (int)(vm | CLONE_PIDFD | SIGCHLD | flags), &args, &pidfd);
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  if (own_pidns >= 0) {
    /* Going back can only fail if the kernel changed its rules; a pool thread
     * left in a container's pid namespace would be a leak, so abort loudly. */
    if (setns(own_pidns, CLONE_NEWPID) < 0) abort();
    close(own_pidns);
  }

  close(sync_pipe[0]);
  sync_pipe[0] = -1;
  close(err_pipe[1]);
  err_pipe[1] = -1;

  if (pid < 0) {
    err = -clone_errno;
    fail->step = STEP_CLONE;
    goto out;
  }

  if (d->setgroups && (err = write_proc_file(pid, "setgroups", d->setgroups)) < 0) {
    fail->step = STEP_SETGROUPS_FILE;
  } else if (d->uid_map && (err = write_proc_file(pid, "uid_map", d->uid_map)) < 0) {
    fail->step = STEP_UID_MAP;
  } else if (d->gid_map && (err = write_proc_file(pid, "gid_map", d->gid_map)) < 0) {
    fail->step = STEP_GID_MAP;
  } else {
    char pidbuf[24];
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)pid);
    for (int i = 0; i < d->ncgroups; i++) {
      if ((err = write_file(d->cgroup_procs[i], pidbuf)) < 0) {
        fail->step = STEP_CGROUP;
        fail->index = i;
        break;
      }
    }
  }
  if (err < 0) {
    fail->err = -err;
    close(sync_pipe[1]); /* the child reads EOF and leaves */
    sync_pipe[1] = -1;
    reap_failed_child(pid, pidfd);
    pidfd = -1;
    goto out;
  }

  char go = 1;
  ssize_t n;
  do {
    n = write(sync_pipe[1], &go, 1);
  } while (n < 0 && errno == EINTR);
  close(sync_pipe[1]);
  sync_pipe[1] = -1;

  struct spawn_failure child_failure;
  size_t got = 0;
  while (got < sizeof child_failure) {
    n = read(err_pipe[0], (char *)&child_failure + got, sizeof child_failure - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (got == 0) { /* EOF: execve closed the O_CLOEXEC pipe */
    out->pid = pid;
    out->pidfd = pidfd;
    if (d->pty) out->pty_master = receive_fd(pty_sock[0]);
    if (d->pty && out->pty_master < 0) { /* cannot happen unless the kernel dropped the message */
      err = out->pty_master;
      fail->step = STEP_PTY;
      out->pty_master = -1;
      reap_failed_child(pid, pidfd);
      pidfd = -1;
      goto out;
    }
    pidfd = -1;
    err = 0;
    goto out;
  }
  if (got == sizeof child_failure) {
    *fail = child_failure;
  } else {
    fail->step = STEP_SYNC;
    fail->err = EPIPE;
  }
  err = -fail->err;
  reap_failed_child(pid, pidfd);
  pidfd = -1;

out:
  if (err < 0 && fail->err == 0) fail->err = -err;
  if (sync_pipe[0] >= 0) close(sync_pipe[0]);
  if (sync_pipe[1] >= 0) close(sync_pipe[1]);
  if (err_pipe[0] >= 0) close(err_pipe[0]);
  if (err_pipe[1] >= 0) close(err_pipe[1]);
  if (pty_sock[0] >= 0) close(pty_sock[0]);
  if (pty_sock[1] >= 0) close(pty_sock[1]);
  if (stack != MAP_FAILED) munmap(stack, CHILD_STACK_SIZE);
  return err;
}

const char *nacelle_spawn_step_syscall(int step, const struct spawn_desc *d, int index, const char **path) {
  *path = NULL;
  switch (step) {
    case STEP_CLONE: return "clone";
    case STEP_UID_MAP: return "write uid_map";
    case STEP_GID_MAP: return "write gid_map";
    case STEP_SETGROUPS_FILE: return "write setgroups";
    case STEP_CGROUP:
      if (index >= 0 && index < d->ncgroups) *path = d->cgroup_procs[index];
      return "write cgroup.procs";
    case STEP_SYNC: return "read";
    case STEP_PDEATHSIG: return "prctl";
    case STEP_SETSID: return "setsid";
    case STEP_SETNS: return "setns";
    case STEP_STDIO: return "dup3";
    case STEP_HOSTNAME: return "sethostname";
    case STEP_OP:
      if (index >= 0 && index < d->nops) {
        const struct spawn_op *op = &d->ops[index];
        *path = op->target;
        switch (op->kind) {
          case SPAWN_OP_MOUNT: return "mount";
          case SPAWN_OP_UMOUNT: return "umount2";
          case SPAWN_OP_MKDIR: return "mkdir";
          case SPAWN_OP_SYMLINK: return "symlink";
          case SPAWN_OP_MKNOD: return "mknod";
          case SPAWN_OP_CHMOD: return "chmod";
          case SPAWN_OP_CREATE: return "open";
        }
      }
      return "mount";
    case STEP_PIVOT_ROOT: *path = d->pivot_root; return "pivot_root";
    case STEP_SETGROUPS: return "setgroups";
    case STEP_SETGID: return "setresgid";
    case STEP_SETUID: return "setresuid";
    case STEP_CHDIR: *path = d->cwd; return "chdir";
    case STEP_EXEC: *path = d->file; return "execve";
    case STEP_SIGNALS: return "rt_sigprocmask";
    case STEP_RLIMIT: return "prlimit";
    case STEP_CAPS: return "capset";
    case STEP_NO_NEW_PRIVS: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case STEP_SECCOMP: return "seccomp";
    case STEP_CTTY: return "ioctl(TIOCSCTTY)";
    case STEP_PIDNS: return "setns(pid)";
    case STEP_LOOPBACK: return "ioctl(SIOCSIFFLAGS lo)";
    case STEP_CGROUP_NS: return "unshare(CLONE_NEWCGROUP)";
    case STEP_PTY: return "open /dev/pts/ptmx";
    default: return "spawn";
  }
}

/* ---- monitored spawn (detached containers) ------------------------------- */

/* What the monitor process tells its creator over the report socket; the
 * container's pidfd (and pty master) travel beside it as SCM_RIGHTS. */
struct monitor_report {
  int err; /* 0 or -errno */
  struct spawn_failure fail;
  pid_t pid;
};

static int send_report(int sock, const struct monitor_report *r, const int *fds, int nfds) {
  char control[CMSG_SPACE(2 * sizeof(int))];
  struct iovec iov = {.iov_base = (void *)r, .iov_len = sizeof *r};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : 0;
}

/* Runs in the forked monitor process: a copy of Node's address space with
 * only this thread, so only plain system calls (no malloc, no locks another
 * thread may have held). Starts the container as its own child, reports,
 * then execs the small monitor program so the copy of Node's memory is
 * dropped. Never returns. */
static void monitor_main(const struct spawn_desc *d, int report, const char *program, const char *status_path) {
  struct monitor_report r;
  memset(&r, 0, sizeof r);
  r.fail.index = -1;
  if (setsid() < 0) {
    r.err = -errno;
    r.fail.step = STEP_SETSID;
  } else if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
    r.err = -errno;
    r.fail.step = STEP_PDEATHSIG;
  }
  struct spawn_result res = {.pid = -1, .pidfd = -1, .pty_master = -1};
  if (r.err == 0) r.err = nacelle_spawn(d, &res, &r.fail);
  r.pid = res.pid;
  int fds[2] = {res.pidfd, res.pty_master};
  int nfds = r.err == 0 ? (res.pty_master >= 0 ? 2 : 1) : 0;
  if (send_report(report, &r, fds, nfds) < 0 && r.err == 0) {
    /* the creator is gone before it learnt of the container: do not leave it running unowned */
    syscall(SYS_pidfd_send_signal, res.pidfd, SIGKILL, NULL, 0);
  }
  if (r.err < 0) _exit(1);
  if (res.pty_master >= 0) close(res.pty_master);

  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
  }
  if (syscall(SYS_close_range, 3, ~0U, 0) < 0) {
    for (int fd = 3; fd < 1024; fd++) close(fd);
  }
  char pidbuf[24];
  snprintf(pidbuf, sizeof pidbuf, "%d", (int)res.pid);
  char *const argv[] = {(char *)"nacelle-monitor", pidbuf, (char *)status_path, NULL};
  char *const envp[] = {NULL};
  execve(program, argv, envp);
  /* No monitor program: keep the promise from this (heavier) process. */
  sigset_t none;
  sigemptyset(&none);
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  pthread_sigmask(SIG_SETMASK, &none, NULL);
  _exit(nacelle_monitor_wait(res.pid, status_path) < 0 ? 1 : 0);
}

int nacelle_spawn_monitored(const struct spawn_desc *d, const char *program, const char *status_path,
                            struct spawn_result *out, struct monitor_info *mon, struct spawn_failure *fail) {
  int sock[2] = {-1, -1};
  int mpidfd = -1;
  sigset_t all, old;
  out->pid = -1;
  out->pidfd = -1;
  out->pty_master = -1;
  mon->pid = -1;
  mon->pidfd = -1;
  fail->step = STEP_CLONE;
  fail->err = 0;
  fail->index = -1;

  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) < 0) {
    fail->err = errno;
    return -fail->err;
  }
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  /* A fork (own mm): the monitor must outlive Node, so it cannot share its
   * memory; it execs nacelle-monitor as soon as the container runs. Raw
   * clone, so no atfork handler of Node's runs in the child. */
  long m = syscall(SYS_clone, (unsigned long)(SIGCHLD | CLONE_PIDFD), NULL, &mpidfd, NULL, 0UL);
  if (m == 0) {
    close(sock[0]);
    monitor_main(d, sock[1], program, status_path);
  }
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  close(sock[1]);
  if (m < 0) {
    close(sock[0]);
    fail->err = clone_errno;
    return -clone_errno;
  }

  struct monitor_report r;
  char control[CMSG_SPACE(2 * sizeof(int))];
  struct iovec iov = {.iov_base = &r, .iov_len = sizeof r};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  do {
    n = recvmsg(sock[0], &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  int recv_errno = errno;
  close(sock[0]);
  int fds[2] = {-1, -1};
  int nfds = 0;
  if (n > 0) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
        nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        if (nfds > 2) nfds = 2;
        memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
      }
    }
  }
  if (n != (ssize_t)sizeof r || (r.err == 0 && nfds < 1)) {
    /* The monitor died before reporting (or sent nonsense). */
    for (int i = 0; i < nfds; i++) close(fds[i]);
    reap_failed_child((pid_t)m, mpidfd);
    fail->step = STEP_SYNC;
    fail->err = n < 0 ? recv_errno : EPIPE;
    return -fail->err;
  }
  if (r.err < 0) {
    siginfo_t si;
    while (waitid(P_PID, (id_t)m, &si, WEXITED) < 0 && errno == EINTR) {
    }
    close(mpidfd);
    *fail = r.fail;
    if (fail->err == 0) fail->err = -r.err;
    return r.err;
  }
  out->pid = r.pid;
  out->pidfd = fds[0];
  out->pty_master = nfds > 1 ? fds[1] : -1;
  mon->pid = (pid_t)m;
  mon->pidfd = mpidfd;
  fail->step = STEP_NONE;
  return 0;
}
