#include "CSupport.h"

#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

// A copy whose destination bypasses the caches (SSE2 streaming stores, then
// sfence): for large copies into memory nobody reads soon, it saves the
// read-for-ownership of every destination line — glibc's memcpy does the
// same for copies larger than the cache, but a pipeline of 256 KiB chunks
// never reaches its threshold. Elsewhere, plain memcpy.
void vgpu_copy_nontemporal(void *dst, const void *src, size_t n) {
#if defined(__x86_64__)
  unsigned char *d = dst;
  const unsigned char *s = src;
  size_t head = (16 - ((uintptr_t)d & 15)) & 15;
  if (n < head + 64) {
    memcpy(d, s, n);
    return;
  }
  memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)s);
    __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
    __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
    _mm_stream_si128((__m128i *)d, a);
    _mm_stream_si128((__m128i *)(d + 16), b);
    _mm_stream_si128((__m128i *)(d + 32), c);
    _mm_stream_si128((__m128i *)(d + 48), e);
  }
  memcpy(d, s, n);
  // Streaming stores are weakly ordered: fence before anyone is told.
  _mm_sfence();
#else
  memcpy(dst, src, n);
#endif
}
