#include "CSupport.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int vgpu_futex_wait(const void *addr, uint32_t expected, uint64_t timeout_ns) {
  struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u),
                        .tv_nsec = (long)(timeout_ns % 1000000000u)};
  long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
  if (r == 0) return 0;
  if (errno == EAGAIN) return 0;  // the word had already changed
  return -errno;
}

int vgpu_futex_wake(const void *addr, int count) {
  long r = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
  return r < 0 ? -errno : (int)r;
}
