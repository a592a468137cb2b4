#define _GNU_SOURCE
#include "CSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

// An abstract-namespace Unix socket (Linux unix(7)): a name, no file, gone
// when the last holder closes it — so a broker that dies leaves nothing behind.
static socklen_t abstract_address(struct sockaddr_un *a, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t n = strnlen(name, sizeof a->sun_path - 2);
  memcpy(a->sun_path + 1, name, n);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

int vgpu_abstract_listen(const char *name) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  struct sockaddr_un a;
  socklen_t len = abstract_address(&a, name);
  if (bind(s, (struct sockaddr *)&a, len) != 0 || listen(s, 16) != 0) {
    int e = errno;
    close(s);
    return -e;
  }
  return s;
}

int vgpu_abstract_connect(const char *name) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  struct sockaddr_un a;
  socklen_t len = abstract_address(&a, name);
  if (connect(s, (struct sockaddr *)&a, len) != 0) {
    int e = errno;
    close(s);
    return -e;
  }
  return s;
}

int vgpu_peer_ucred(int sock, uint32_t *pid, uint32_t *uid, uint32_t *gid) {
  struct ucred c;
  socklen_t len = sizeof c;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return -errno;
  *pid = (uint32_t)c.pid;
  *uid = (uint32_t)c.uid;
  *gid = (uint32_t)c.gid;
  return 0;
}

int vgpu_peer_credentials(int sock, uint32_t *pid, uint32_t *uid) {
  uint32_t gid;
  return vgpu_peer_ucred(sock, pid, uid, &gid);
}

// SCM_RIGHTS (unix(7)): `len` bytes of data with up to VGPU_MAX_FDS file
// descriptors (none when nfds is 0: a plain message).
int vgpu_send_fds(int sock, const void *data, size_t len, const int *fds, int nfds) {
  if (nfds < 0 || nfds > VGPU_MAX_FDS) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  char control[CMSG_SPACE(sizeof(int) * VGPU_MAX_FDS)];
  memset(control, 0, sizeof control);
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    m.msg_control = control;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
  return n == (ssize_t)len ? 0 : (n < 0 ? -errno : -EPROTO);
}

int vgpu_send_fd(int sock, const void *data, size_t len, int fd) { return vgpu_send_fds(sock, data, len, &fd, 1); }

// Receives exactly `len` bytes and the descriptors that came with them
// (*nfds of them, at most `max`; extra ones are closed). 0 bytes: -EPIPE.
int vgpu_recv_fds(int sock, void *data, size_t len, int *fds, int max, int *nfds) {
  struct iovec iov = {.iov_base = data, .iov_len = len};
  char control[CMSG_SPACE(sizeof(int) * VGPU_MAX_FDS)];
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  do n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (n < 0 && errno == EINTR);
  *nfds = 0;
  if (n < 0) return -errno;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (*nfds < max) fds[(*nfds)++] = fd; else close(fd);
    }
  }
  // A short or empty message is refused; the fds that came with it are closed
  // here, since the caller throws the message away and would leak them.
  if (n == 0 || n != (ssize_t)len) {
    for (int i = 0; i < *nfds; i++) {
      close(fds[i]);
      fds[i] = -1;
    }
    *nfds = 0;
    return n == 0 ? -EPIPE : -EPROTO;
  }
  return 0;
}

int vgpu_recv_fd(int sock, void *data, size_t len, int *fd) {
  int n = 0;
  int rc = vgpu_recv_fds(sock, data, len, fd, 1, &n);
  if (rc != 0) return rc;
  if (n != 1) *fd = -1;
  return n == 1 ? 0 : -EPROTO;
}

// A Unix socket address for a path in the file system; -ENAMETOOLONG if it does not fit.
static int path_address(struct sockaddr_un *a, const char *path) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof a->sun_path) return -ENAMETOOLONG;
  strcpy(a->sun_path, path);
  return 0;
}

// A Unix socket bound to a path (the ivshmem server's; QEMU connects to it).
// A stale socket file left by a dead server is replaced; a live one is not.
int vgpu_path_listen(const char *path) { return vgpu_path_listen_mode(path, 4, 0); }

int vgpu_path_listen_mode(const char *path, int backlog, uint32_t mode) {
  struct sockaddr_un a;
  if (path_address(&a, path) != 0) return -ENAMETOOLONG;
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
    if (errno != EADDRINUSE) goto fail;
    int probe = vgpu_path_connect(path);
    if (probe >= 0) {
      close(probe);
      close(s);
      return -EADDRINUSE;
    }
    /* Only a stale socket is ours to replace: a regular file or a folder
     * named by mistake is someone's, and stays. */
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
      close(s);
      return -ENOTSOCK;
    }
    unlink(path);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) goto fail;
  }
  if (mode != 0 && chmod(path, (mode_t)mode) != 0) goto fail;
  if (listen(s, backlog) != 0) goto fail;
  return s;
fail:;
  int e = errno;
  close(s);
  return -e;
}

int vgpu_path_connect(const char *path) {
  struct sockaddr_un a;
  if (path_address(&a, path) != 0) return -ENAMETOOLONG;
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    int e = errno;
    close(s);
    return -e;
  }
  return s;
}

static uint64_t monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int vgpu_path_connect_within(const char *path, uint64_t timeout_ns) {
  struct sockaddr_un a;
  if (path_address(&a, path) != 0) return -ENAMETOOLONG;
  uint64_t deadline = monotonic_ns() + timeout_ns;
  for (;;) {
    // Non-blocking: unix(7) says a full backlog makes connect fail with
    // EAGAIN then, where a blocking one would wait without bound.
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return -errno;
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
      int flags = fcntl(s, F_GETFL);
      if (flags < 0 || fcntl(s, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(s);
        return -e;
      }
      return s;
    }
    int e = errno;
    close(s);
    if (e != EAGAIN) return -e;
    if (monotonic_ns() >= deadline) return -ETIMEDOUT;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 1000000};
    nanosleep(&pause, NULL);
  }
}

int vgpu_wait_readable(int fd, uint64_t timeout_ns) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  uint64_t deadline = monotonic_ns() + timeout_ns;
  for (;;) {
    uint64_t now = monotonic_ns();
    uint64_t left = now < deadline ? deadline - now : 0;
    struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u), .tv_nsec = (long)(left % 1000000000u)};
    int rc = ppoll(&p, 1, &ts, NULL);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return -errno;
    return rc > 0 ? 1 : 0;
  }
}

int vgpu_memfd_size_seals(void) { return F_SEAL_SHRINK | F_SEAL_GROW; }

int vgpu_memfd_sealed(const char *name, uint64_t size) {
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  if (ftruncate(fd, (off_t)size) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

int vgpu_memfd_seals(int fd) {
  int seals = fcntl(fd, F_GET_SEALS);
  return seals < 0 ? -errno : seals;
}

int vgpu_socket_hung_up(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  int rc = poll(&p, 1, 0);
  if (rc < 0) return -errno;
  return rc > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) ? 1 : 0;
}

int vgpu_accept_cloexec(int listener) {
  int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  return fd < 0 ? -errno : fd;
}
