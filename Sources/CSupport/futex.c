#include "CSupport.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int vgpu_futex_wait(const void *addr, uint32_t expected, uint64_t timeout_ns) {
  struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u),
                        .tv_nsec = (long)(timeout_ns % 1000000000u)};
  long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
  if (r == 0) return 0;
  if (errno == EAGAIN) return 0;  // the word had already changed
  return -errno;
}

int vgpu_gettid(void) { return (int)syscall(SYS_gettid); }

int vgpu_futex_wake(const void *addr, int count) {
  long r = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
  return r < 0 ? -errno : (int)r;
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449  // the same number on x86-64 and arm64 (Linux 5.16)
#endif

// struct futex_waitv and FUTEX_32 of <linux/futex.h> (Linux 5.16), spelled
// out so that older headers build too.
struct vgpu_futex_waitv {
  uint64_t val;
  uint64_t uaddr;
  uint32_t flags;
  uint32_t reserved;
};

int vgpu_futex_waitv(void *const *addrs, const uint32_t *expected, int count, uint64_t timeout_ns) {
  if (count <= 0 || count > VGPU_FUTEX_WAITV_MAX) return -EINVAL;
  struct vgpu_futex_waitv w[VGPU_FUTEX_WAITV_MAX];
  for (int i = 0; i < count; i++) {
    w[i].val = expected[i];
    w[i].uaddr = (uint64_t)(uintptr_t)addrs[i];
    w[i].flags = 0x02;  // FUTEX2_SIZE_U32, shared (not FUTEX2_PRIVATE): the words are in other processes' mappings
    w[i].reserved = 0;
  }
  // The timeout is absolute, on the clock named (futex_waitv(2)).
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t end = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec + timeout_ns;
  struct timespec ts = {.tv_sec = (time_t)(end / 1000000000u), .tv_nsec = (long)(end % 1000000000u)};
  long r = syscall(SYS_futex_waitv, w, (unsigned)count, 0, &ts, CLOCK_MONOTONIC);
  if (r >= 0) return (int)r;
  if (errno == EAGAIN) return 0;  // a word had already changed
  return -errno;
}
