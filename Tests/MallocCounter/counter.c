// Replaces glibc's allocator entry points with counting forwarders to the
// real implementation (glibc manual, "Replacing malloc": an executable that
// defines these replaces them for the whole process, shared libraries
// included). Counts are per thread, so other test threads do not disturb a
// measurement.
#include "MallocCounter.h"

#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread uint64_t thread_allocations;
static uint64_t process_allocations;

uint64_t malloc_counter_thread_allocations(void) { return thread_allocations; }
uint64_t malloc_counter_process_allocations(void) {
  return __atomic_load_n(&process_allocations, __ATOMIC_RELAXED);
}

static inline void counted(void) {
  thread_allocations++;
  __atomic_fetch_add(&process_allocations, 1, __ATOMIC_RELAXED);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MALLOC_COUNTER_SANITIZED 1
#endif
#endif

#ifdef MALLOC_COUNTER_SANITIZED
// Under AddressSanitizer or ThreadSanitizer (tools/test --sanitize) the
// sanitizer's runtime is the allocator: replacing malloc here would take it
// away (and this code, instrumented, would run before the runtime is set up:
// the test executable crashed at startup). The runtime reports every
// allocation of its own to a hook instead, which counts the same events.
#include <sanitizer/allocator_interface.h>

static void malloc_hook(const volatile void *p, size_t n) {
  (void)p;
  (void)n;
  counted();
}
static void free_hook(const volatile void *p) { (void)p; }

__attribute__((constructor)) static void install_malloc_counter(void) {
  __sanitizer_install_malloc_and_free_hooks(malloc_hook, free_hook);
}
#else
void *malloc(size_t n) {
  counted();
  return __libc_malloc(n);
}
void *calloc(size_t n, size_t m) {
  counted();
  return __libc_calloc(n, m);
}
void *realloc(void *p, size_t n) {
  counted();
  return __libc_realloc(p, n);
}
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) {
  counted();
  return __libc_memalign(a, n);
}
void *aligned_alloc(size_t a, size_t n) {
  counted();
  return __libc_memalign(a, n);
}
int posix_memalign(void **out, size_t a, size_t n) {
  counted();
  void *p = __libc_memalign(a, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
#endif
