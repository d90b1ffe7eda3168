/*
 * kvm/probe.c: what /dev/kvm offers, without creating a VM.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../nacelle.h"

static int check_ext(int fd, int cap) {
  int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

int nacelle_kvm_probe(const char *path, struct kvm_probe_result *out) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  int version = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (version < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  out->api_version = version;
  out->recommended_vcpus = check_ext(fd, KVM_CAP_NR_VCPUS);
  out->max_vcpus = check_ext(fd, KVM_CAP_MAX_VCPUS);
  if (out->max_vcpus == 0) out->max_vcpus = out->recommended_vcpus;
  out->has_irqchip = check_ext(fd, KVM_CAP_IRQCHIP) > 0;
  out->has_user_memory = check_ext(fd, KVM_CAP_USER_MEMORY) > 0;
  out->has_immediate_exit = check_ext(fd, KVM_CAP_IMMEDIATE_EXIT) > 0;
  close(fd);
  return 0;
}
