#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "CSupport.h"

int vgpu_capture_stdout(int size, int *saved) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return -errno;
  // A bigger pipe holds a whole printf FIFO (1 MiB by default) between drains;
  // the kernel may refuse (pipe-max-size), which only costs more drains.
  (void)fcntl(fds[1], F_SETPIPE_SZ, size);
  fflush(stdout);
  int old = dup(1);
  if (old < 0 || dup2(fds[1], 1) < 0) {
    int e = errno;
    if (old >= 0) close(old);
    close(fds[0]);
    close(fds[1]);
    return -e;
  }
  // The write end must block for the driver (a full pipe waits for a drain).
  (void)fcntl(1, F_SETFL, fcntl(1, F_GETFL) & ~O_NONBLOCK);
  close(fds[1]);
  *saved = old;
  return fds[0];
}
