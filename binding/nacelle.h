/*
 * The plain C interface of each kernel subsystem file. Nothing here knows N-API:
 * every function returns 0 (or a non-negative result) on success and -errno on
 * failure, and binding.c turns that into a JS value or a JS error.
 */
#ifndef NACELLE_H
#define NACELLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- spawn.c ------------------------------------------------------------ */

/* One filesystem operation the child runs, in order, before pivot_root. */
enum spawn_op_kind {
  SPAWN_OP_MOUNT = 1,   /* mount(source, target, fstype, flags, data) */
  SPAWN_OP_UMOUNT = 2,  /* umount2(target, flags) */
  SPAWN_OP_MKDIR = 3,   /* mkdir(target, mode); an existing directory is fine */
  SPAWN_OP_SYMLINK = 4, /* symlink(source, target) */
  SPAWN_OP_MKNOD = 5,   /* mknod(target, mode, dev) */
  SPAWN_OP_CHMOD = 6,   /* chmod(target, mode) */
  SPAWN_OP_CREATE = 7,  /* create an empty file (a bind-mount target); existing is fine */
};

/* Flags on an operation. */
#define SPAWN_OP_OPTIONAL 0x1 /* ENOENT on the target is not an error (masked paths) */

struct spawn_op {
  int kind;
  int op_flags;
  const char *source;
  const char *target;
  const char *fstype;
  const char *data;
  unsigned long flags; /* mount/umount flags */
  unsigned int mode;
  uint64_t dev;
};

/* Capability sets as 64-bit masks (bit n = capability n). */
struct spawn_caps {
  uint64_t bounding, effective, permitted, inheritable, ambient;
  int last_cap; /* /proc/sys/kernel/cap_last_cap */
};

struct spawn_rlimit {
  int resource;
  uint64_t soft, hard; /* UINT64_MAX = unlimited */
};

/* The flat, precomputed description of one process to start. */
struct spawn_desc {
  const char *file;          /* exec path; searched in path_env when it has no '/' */
  char *const *argv;         /* NULL-terminated */
  char *const *envp;         /* NULL-terminated */
  const char *path_env;      /* PATH value used for the search (from envp) */
  const char *cwd;           /* NULL: inherit */
  unsigned long clone_flags; /* CLONE_NEW* */
  int set_uid, set_gid, set_groups;
  uid_t uid;
  gid_t gid;
  const gid_t *groups;
  int ngroups;
  const char *uid_map;   /* written by the parent to /proc/<pid>/uid_map */
  const char *gid_map;   /* ... gid_map */
  const char *setgroups; /* "deny" / "allow" written to /proc/<pid>/setgroups first */
  int stdio[3];          /* -1: /dev/null */
  const char *hostname;
  const struct spawn_op *ops;
  int nops;
  const char *pivot_root;
  const int *join_fds; /* setns(fd, 0) in order, before anything else */
  int njoin;
  const char *const *cgroup_procs; /* cgroup.procs files the parent writes the pid to */
  int ncgroups;
  int detached;     /* no death signal; setsid() */
  int death_signal; /* PR_SET_PDEATHSIG, default SIGKILL */
  int pid_ns_fd;    /* >= 0: start the child in this pid namespace (exec into a container) */
  int set_caps;
  struct spawn_caps caps;
  const struct spawn_rlimit *rlimits;
  int nrlimits;
  int no_new_privs;
  const void *seccomp_filter; /* struct sock_filter[], or NULL */
  unsigned short seccomp_len;  /* number of instructions */
  int ctty;                    /* make fd 0 (a tty) the controlling terminal of a new session */
  int loopback_up;             /* bring up "lo" (in a new network namespace) */
  int own_mm;                  /* never share the parent's mm */
  int late_cgroup_ns;          /* set by nacelle_spawn: unshare the cgroup ns after cgroup placement */
  int pty;                     /* after pivot_root, allocate a pty in the container's /dev/pts as stdio */
  unsigned short pty_cols, pty_rows;
};

/* Which step of the spawn failed. Mirrored by SPAWN_STEPS in lib/native.ts. */
enum spawn_step {
  STEP_NONE = 0,
  STEP_CLONE,
  STEP_UID_MAP,
  STEP_GID_MAP,
  STEP_SETGROUPS_FILE,
  STEP_CGROUP,
  STEP_SYNC,
  STEP_PDEATHSIG,
  STEP_SETSID,
  STEP_SETNS,
  STEP_STDIO,
  STEP_HOSTNAME,
  STEP_OP,
  STEP_PIVOT_ROOT,
  STEP_SETGROUPS,
  STEP_SETGID,
  STEP_SETUID,
  STEP_CHDIR,
  STEP_EXEC,
  STEP_SIGNALS,
  STEP_RLIMIT,
  STEP_CAPS,
  STEP_NO_NEW_PRIVS,
  STEP_SECCOMP,
  STEP_CTTY,
  STEP_PIDNS,
  STEP_LOOPBACK,
  STEP_CGROUP_NS,
  STEP_PTY,
};

struct spawn_failure {
  int step;
  int err;   /* positive errno */
  int index; /* which op / join fd / cgroup file, -1 when none */
};

struct spawn_result {
  pid_t pid;
  int pidfd;
  int pty_master; /* the master of the pty made in the child (spawn_desc.pty), else -1 */
};

/* Start the process. On failure returns -errno and fills *fail; no child is left behind. */
int nacelle_spawn(const struct spawn_desc *desc, struct spawn_result *out, struct spawn_failure *fail);
const char *nacelle_spawn_step_syscall(int step, const struct spawn_desc *desc, int index, const char **path);

/* The monitor process of a detached container (see monitor/wait.c). */
struct monitor_info {
  pid_t pid;
  int pidfd; /* the monitor is our child: wait on it, then read the status file */
};

/* Fork a monitor that starts the process as its own child, then execs
 * `program` (nacelle-monitor) to wait for it and write its exit status to
 * status_path. out->pidfd names the process (not our child: signal it, poll
 * it; its status comes from the file). */
int nacelle_spawn_monitored(const struct spawn_desc *desc, const char *program, const char *status_path,
                            struct spawn_result *out, struct monitor_info *mon, struct spawn_failure *fail);

/* ---- process.c ---------------------------------------------------------- */

struct exit_status {
  int exited; /* 1 once reaped */
  int exit_code;
  int signal;
  int core_dumped;
};

/* Reap the process behind pidfd if it has exited (never blocks). */
int nacelle_pidfd_reap(int pidfd, struct exit_status *st);
int nacelle_pidfd_open(pid_t pid);
int nacelle_pidfd_send_signal(int pidfd, int sig);
int nacelle_pipe(int fds[2]);
int nacelle_close(int fd);

/* ---- mount.c ------------------------------------------------------------ */

int nacelle_mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data);
int nacelle_umount(const char *target, int flags);
int nacelle_pivot_root(const char *new_root, const char *put_old);

/* ---- ns.c --------------------------------------------------------------- */

int nacelle_setns(int fd, int nstype);
int nacelle_sethostname(const char *name);

/* ---- fs.c --------------------------------------------------------------- */

int nacelle_mknod(const char *path, unsigned int mode, unsigned int major, unsigned int minor);
int nacelle_lsetxattr(const char *path, const char *name, const void *value, size_t len, int flags);
/* With len 0, return the size needed. */
ssize_t nacelle_lgetxattr(const char *path, const char *name, void *buf, size_t len);
ssize_t nacelle_llistxattr(const char *path, char *buf, size_t len);
int nacelle_flock(int fd, int op);
void nacelle_dirs(int remove, char *const *paths, int n, unsigned int mode, int *errs);

/* ---- pty.c -------------------------------------------------------------- */

int nacelle_resize_pty(int fd, int cols, int rows);

/* ---- bpf.c -------------------------------------------------------------- */

/* Load a BPF_PROG_TYPE_CGROUP_DEVICE program (struct bpf_insn[count]); the
 * verifier's complaints land in log. Returns an fd (close-on-exec) or -errno. */
int nacelle_bpf_load_device_filter(const void *insns, unsigned int count, char *log, size_t log_size);
/* Attach it to a cgroup v2 directory (BPF_F_ALLOW_MULTI). */
int nacelle_bpf_attach_device_filter(const char *cgroup_dir, int prog_fd);
/* How many device programs are attached to the cgroup itself. */
int nacelle_bpf_query_device_filters(const char *cgroup_dir);

/* ---- kvm/probe.c -------------------------------------------------------- */

struct kvm_probe_result {
  int api_version;
  int max_vcpus;
  int recommended_vcpus;
  int has_irqchip;
  int has_user_memory;
  int has_immediate_exit;
};

int nacelle_kvm_probe(const char *path, struct kvm_probe_result *out);

#endif
