/*
 * Raw system calls for code that runs in a clone(CLONE_VM) child.
 *
 * The child shares the parent's memory and thread pointer, so it must not touch
 * libc state: glibc's wrappers write the parent thread's errno, and malloc or
 * stdio could take locks another thread holds. These wrappers return -errno
 * instead and touch nothing but registers.
 */
#ifndef NACELLE_RAWSYS_H
#define NACELLE_RAWSYS_H

#include <sys/syscall.h>

#if defined(__x86_64__)
static inline long raw_syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
  register long r10 __asm__("r10") = a4;
  register long r8 __asm__("r8") = a5;
  register long r9 __asm__("r9") = a6;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
static inline long raw_syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
  register long x8 __asm__("x8") = n;
  register long x0 __asm__("x0") = a1;
  register long x1 __asm__("x1") = a2;
  register long x2 __asm__("x2") = a3;
  register long x3 __asm__("x3") = a4;
  register long x4 __asm__("x4") = a5;
  register long x5 __asm__("x5") = a6;
  __asm__ volatile("svc 0"
                   : "+r"(x0)
                   : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                   : "memory", "cc");
  return x0;
}
#else
#error "nacelle supports x86_64 and aarch64"
#endif

#define RS0(n) raw_syscall6((n), 0, 0, 0, 0, 0, 0)
#define RS1(n, a) raw_syscall6((n), (long)(a), 0, 0, 0, 0, 0)
#define RS2(n, a, b) raw_syscall6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define RS3(n, a, b, c) raw_syscall6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define RS4(n, a, b, c, d) raw_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define RS5(n, a, b, c, d, e) raw_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

#endif
