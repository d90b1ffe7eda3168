/*
 * bpf.c: device access policy on cgroup v2, where there is no devices
 * controller: a BPF_PROG_TYPE_CGROUP_DEVICE program (compiled in
 * lib/container/cgroups/devices.ts) is loaded and attached to the
 * container's cgroup. The kernel detaches it when the cgroup is removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nacelle.h"

static long sys_bpf(int cmd, union bpf_attr *attr) {
  return syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

int nacelle_bpf_load_device_filter(const void *insns, unsigned int count, char *log, size_t log_size) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
  attr.insns = (uint64_t)(uintptr_t)insns;
  attr.insn_cnt = count;
  attr.license = (uint64_t)(uintptr_t) "GPL";
  if (log && log_size > 0) {
    log[0] = '\0';
    attr.log_buf = (uint64_t)(uintptr_t)log;
    attr.log_size = (uint32_t)log_size;
    attr.log_level = 1;
  }
  long fd = sys_bpf(BPF_PROG_LOAD, &attr);
  if (fd < 0 && errno == ENOSPC && log) {
    /* the verifier's log did not fit: load again without it, for the errno alone */
    attr.log_buf = 0;
    attr.log_size = 0;
    attr.log_level = 0;
    fd = sys_bpf(BPF_PROG_LOAD, &attr);
  }
  if (fd >= 0) {
    if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0) {
      int err = errno;
      close((int)fd);
      return -err;
    }
  }
  return fd < 0 ? -errno : (int)fd;
}

int nacelle_bpf_attach_device_filter(const char *cgroup_dir, int prog_fd) {
  int cg = open(cgroup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) return -errno;
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.target_fd = (uint32_t)cg;
  attr.attach_bpf_fd = (uint32_t)prog_fd;
  attr.attach_type = BPF_CGROUP_DEVICE;
  /* MULTI: programs of ancestors (systemd's, a parent runtime's) still run too */
  attr.attach_flags = BPF_F_ALLOW_MULTI;
  int err = sys_bpf(BPF_PROG_ATTACH, &attr) < 0 ? -errno : 0;
  close(cg);
  return err;
}

int nacelle_bpf_query_device_filters(const char *cgroup_dir) {
  int cg = open(cgroup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) return -errno;
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.query.target_fd = (uint32_t)cg;
  attr.query.attach_type = BPF_CGROUP_DEVICE;
  int err = sys_bpf(BPF_PROG_QUERY, &attr) < 0 ? -errno : (int)attr.query.prog_cnt;
  close(cg);
  return err;
}
