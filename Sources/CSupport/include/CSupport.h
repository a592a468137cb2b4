#ifndef VGPU_CSUPPORT_H
#define VGPU_CSUPPORT_H

// Shared-memory primitives for the queue pairs. Both sides of a BAR may be
// different processes (or a VM and its host), so every access to a word the
// other side writes is an explicit atomic with a stated ordering. Swift's
// Synchronization.Atomic<T> is a non-copyable value whose storage Swift owns
// (a stored property or global), with no API to use a raw address, such as a
// word of the shared mapping, as one; futex and eventfd calls need C anyway.

#include <stdint.h>
#include <time.h>

#ifdef __linux__
#include "vgpu_vfio.h"
#endif

static inline uint32_t vgpu_load_acquire_u32(const void *p) {
  return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}
static inline uint32_t vgpu_load_relaxed_u32(const void *p) {
  return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}
static inline uint32_t vgpu_load_seqcst_u32(const void *p) {
  return __atomic_load_n((const uint32_t *)p, __ATOMIC_SEQ_CST);
}
static inline void vgpu_store_release_u32(void *p, uint32_t v) {
  __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
}
static inline void vgpu_store_relaxed_u32(void *p, uint32_t v) {
  __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELAXED);
}
static inline void vgpu_store_seqcst_u32(void *p, uint32_t v) {
  __atomic_store_n((uint32_t *)p, v, __ATOMIC_SEQ_CST);
}
static inline uint32_t vgpu_fetch_add_u32(void *p, uint32_t v) {
  return __atomic_fetch_add((uint32_t *)p, v, __ATOMIC_SEQ_CST);
}
static inline int vgpu_cas_u32(void *p, uint32_t expected, uint32_t desired) {
  return __atomic_compare_exchange_n((uint32_t *)p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST);
}
static inline uint64_t vgpu_load_acquire_u64(const void *p) {
  return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}
static inline void vgpu_store_release_u64(void *p, uint64_t v) {
  __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE);
}

// A full barrier: orders a store before a later load (Dekker-style "publish,
// then check whether the peer sleeps"), which acquire/release cannot.
static inline void vgpu_fence_seqcst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Tells the CPU this is a spin-wait (x86 PAUSE), easing the sibling hyperthread.
static inline void vgpu_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// The CPU this thread runs on, plus one (0: unknown). No system call (glibc
// reads the rseq area or asks the vDSO; about 20 ns here). A peer that finds
// the same value in the queue pair shares this core, where spinning only
// keeps it off the CPU (docs/PROTOCOL.md §11, issue 17).
// (Declared here: <sched.h> has it only under _GNU_SOURCE.)
extern int sched_getcpu(void);
static inline uint32_t vgpu_current_cpu(void) {
  int cpu = sched_getcpu();
  return cpu < 0 ? 0 : (uint32_t)cpu + 1;
}

static inline uint64_t vgpu_monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// The calling thread's id (gettid(2)): what setpriority(2) names a thread by.
int vgpu_gettid(void);

// futex(2) on a 32-bit word. Not FUTEX_PRIVATE: the word may be in a mapping
// shared with another process. Returns 0 when woken or when *addr != expected,
// -ETIMEDOUT when timeout_ns passed, -EINTR on a signal.
int vgpu_futex_wait(const void *addr, uint32_t expected, uint64_t timeout_ns);
// Wakes up to `count` waiters; returns how many were woken, or -errno.
int vgpu_futex_wake(const void *addr, int count);
// The most words one futex_waitv(2) waits on (FUTEX_WAITV_MAX).
#define VGPU_FUTEX_WAITV_MAX 128
// Waits until any of `count` shared 32-bit words is woken or differs from its
// expected value (then its index, or 0 when one had already changed), or
// timeout_ns passes (-ETIMEDOUT); -ENOSYS before Linux 5.16.
int vgpu_futex_waitv(void *const *addrs, const uint32_t *expected, int count, uint64_t timeout_ns);

// eventfd wake-ups (wakeups.c). Negative errno on failure.
// Adds 1 to the eventfd's counter.
int vgpu_eventfd_signal(int fd);
// Waits until the eventfd is readable (then clears it: 1) or timeout_ns passes (0).
int vgpu_eventfd_wait(int fd, uint64_t timeout_ns);
// Writes a 32-bit register through a device fd (VFIO region offset).
int vgpu_pwrite_u32(int fd, uint32_t value, int64_t offset);
// memcpy with streaming (cache-bypassing) stores on x86-64 (copy.c).
void vgpu_copy_nontemporal(void *dst, const void *src, size_t n);
// pidfd_open(pid, 0): readable once the process has exited.
int vgpu_pidfd_open(int pid);
// pidfd_getfd(pidfd, fd, 0) (Linux 5.6): a duplicate of descriptor `fd` of
// the process `pidfd` names, close-on-exec; -errno on failure (EBADF: not
// open there; EPERM: no ptrace access to it; ENOSYS: older kernel).
int vgpu_pidfd_getfd(int pidfd, int fd);
// 1 when pid has exited and waits to be reaped (a zombie, which kill(pid, 0)
// still finds), from /proc/PID/stat; allocates nothing.
int vgpu_process_is_zombie(int pid);
// The file of the loaded object that holds `address` (dladdr's dli_fname,
// owned by the dynamic loader: valid while the object stays loaded), or NULL.
// dladdr needs _GNU_SOURCE, which Swift's Glibc module does not define.
const char *vgpu_loaded_file(const void *address);
// Points fd 1 at a new non-blocking pipe of about `size` bytes (a host
// driver writes device printf there); *saved gets the old fd 1, the pipe's
// read end is returned. pipe2 and F_SETPIPE_SZ need _GNU_SOURCE. Negative
// errno on failure, fd 1 unchanged.
int vgpu_capture_stdout(int size, int *saved);

// File descriptors between processes (the VFIO broker): abstract-namespace
// Unix sockets, peer credentials, SCM_RIGHTS. Negative errno on failure.
#include <stddef.h>
int vgpu_abstract_listen(const char *name);
int vgpu_abstract_connect(const char *name);
int vgpu_peer_credentials(int sock, uint32_t *pid, uint32_t *uid);
// SO_PEERCRED with the group too: pid, uid and gid as the kernel saw them at connect(2).
int vgpu_peer_ucred(int sock, uint32_t *pid, uint32_t *uid, uint32_t *gid);
int vgpu_send_fd(int sock, const void *data, size_t len, int fd);
int vgpu_recv_fd(int sock, void *data, size_t len, int *fd);
// Several descriptors with one message (ivshmem server, broker).
#define VGPU_MAX_FDS 64
int vgpu_send_fds(int sock, const void *data, size_t len, const int *fds, int nfds);
int vgpu_recv_fds(int sock, void *data, size_t len, int *fds, int max, int *nfds);
// Unix sockets bound to a path in the file system. A stale socket file is
// replaced; a path that holds anything but a socket is left alone: -ENOTSOCK.
int vgpu_path_listen(const char *path);
int vgpu_path_connect(const char *path);
// A path socket with `backlog` pending connections whose file gets `mode`
// (chmod before listen(2), so no one connects under the umask's mode).
int vgpu_path_listen_mode(const char *path, int backlog, uint32_t mode);
// connect(2) to a path socket within `timeout_ns`: a full backlog is retried
// (a blocking connect would wait on it unbounded); -ETIMEDOUT past the deadline.
int vgpu_path_connect_within(const char *path, uint64_t timeout_ns);
// Whether the peer of socket `fd` hung up (POLLHUP, POLLRDHUP or POLLERR
// now, without waiting): 1, 0, or -errno. Allocates nothing.
int vgpu_socket_hung_up(int fd);
// accept4(2) with SOCK_CLOEXEC: the new connection's fd or -errno.
int vgpu_accept_cloexec(int listener);
// Waits until `fd` is readable or hung up: 1, 0 at the timeout, or -errno.
int vgpu_wait_readable(int fd, uint64_t timeout_ns);
// A memfd (memfd_create(2), MFD_CLOEXEC | MFD_ALLOW_SEALING) of `size`
// bytes, sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW),
// so the process it is passed to cannot resize it under the mapper.
int vgpu_memfd_sealed(const char *name, uint64_t size);
// fcntl(F_GET_SEALS): the seals on `fd` (F_SEAL_* bits) or -errno.
int vgpu_memfd_seals(int fd);
// The F_SEAL_* bits vgpu_memfd_sealed sets.
int vgpu_memfd_size_seals(void);

#endif
