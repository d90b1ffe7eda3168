/* guest.h: types and the boot view shared by guest.c's entry paths. */
#ifndef NACELLE_TEST_GUEST_H
#define NACELLE_TEST_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned long size_t;

#define barrier() __asm__ volatile("" : : : "memory")

#define MAX_MAP 128

/* One memory-map entry, whichever boot path reported it (type 1 = RAM). */
struct mem_range {
  u64 addr, size;
  u32 type;
};

/* What an entry path learned: its name line, the command line, the memory map. */
struct boot_info {
  const char *entry; /* "entry: linux64" or "entry: pvh" */
  const char *cmdline;
  int nmap;
  struct mem_range map[MAX_MAP];
};

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void linux64_main(u64 boot_params);
void pvh_main(u32 start_info);

#endif
