#define _GNU_SOURCE
#include "CSupport.h"

#include <errno.h>
#include <stddef.h>
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

int vgpu_peer_credentials(int sock, uint32_t *pid, uint32_t *uid) {
  struct ucred c;
  socklen_t len = sizeof c;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return -errno;
  *pid = (uint32_t)c.pid;
  *uid = (uint32_t)c.uid;
  return 0;
}

// SCM_RIGHTS (unix(7)): `len` bytes of data with one file descriptor.
int vgpu_send_fd(int sock, const void *data, size_t len, int fd) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof control);
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
  return n == (ssize_t)len ? 0 : (n < 0 ? -errno : -EPROTO);
}

int vgpu_recv_fd(int sock, void *data, size_t len, int *fd) {
  struct iovec iov = {.iov_base = data, .iov_len = len};
  char control[CMSG_SPACE(sizeof(int))];
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  if (n < 0) return -errno;
  if (n != (ssize_t)len) return -EPROTO;
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) return -EPROTO;
  memcpy(fd, CMSG_DATA(c), sizeof *fd);
  return 0;
}
