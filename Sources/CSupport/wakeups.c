#define _GNU_SOURCE
#include "CSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

// eventfd(2): a write adds to the counter and makes the fd readable; a read
// returns the counter and clears it. Across a VM boundary these carry what a
// futex carries on one host (QEMU ivshmem: doorbell -> host eventfd, host
// eventfd -> guest MSI-X vector -> VFIO eventfd).

int vgpu_eventfd_signal(int fd) {
  uint64_t one = 1;
  ssize_t n;
  do n = write(fd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
  // EAGAIN: the counter is at its maximum, so the fd is readable already.
  return n == (ssize_t)sizeof one || (n < 0 && errno == EAGAIN) ? 0 : -errno;
}

int vgpu_eventfd_wait(int fd, uint64_t timeout_ns) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u), .tv_nsec = (long)(timeout_ns % 1000000000u)};
  int rc = ppoll(&p, 1, &ts, NULL);
  if (rc < 0) return -errno;
  if (rc == 0) return 0;
  if (!(p.revents & POLLIN)) return -EIO;
  uint64_t value;
  // Non-blocking fds: another waiter on the same fd may have cleared it first.
  if (read(fd, &value, sizeof value) < 0 && errno != EAGAIN) return -errno;
  return 1;
}

int vgpu_pwrite_u32(int fd, uint32_t value, int64_t offset) {
  ssize_t n;
  do n = pwrite(fd, &value, sizeof value, (off_t)offset);
  while (n < 0 && errno == EINTR);
  return n == (ssize_t)sizeof value ? 0 : (n < 0 ? -errno : -EIO);
}

// pidfd_open(2) (Linux 5.3): an fd that becomes readable when the process
// exits (a zombie counts). -errno on failure (ENOSYS on older kernels).
int vgpu_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : (int)fd;
#else
  (void)pid;
  return -ENOSYS;
#endif
}

int vgpu_pidfd_getfd(int pidfd, int fd) {
#ifdef SYS_pidfd_getfd
  long r = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  return r < 0 ? -errno : (int)r;
#else
  (void)pidfd;
  (void)fd;
  return -ENOSYS;
#endif
}

// 1 when `pid` has exited and waits to be reaped (state Z or X in
// /proc/PID/stat, proc(5)), else 0. Allocates nothing: a guest reads it
// while it sleeps for a completion.
int vgpu_process_is_zombie(int pid) {
  char path[32];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buffer[128];
  ssize_t n = read(fd, buffer, sizeof buffer - 1);
  close(fd);
  if (n <= 0) return 0;
  buffer[n] = 0;
  // "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
  char *close_paren = strrchr(buffer, ')');
  if (!close_paren || close_paren + 2 >= buffer + n) return 0;
  char state = close_paren[2];
  return state == 'Z' || state == 'X';
}
