// liblz4 and libzstd, the two codecs of fat binary entries (REAL-KERNELS.md §3:
// flag 0x2000 is an LZ4 *block*, 0x8000 a zstd *frame*). Debian: liblz4-dev,
// libzstd-dev (tools/setup); pkg-config names liblz4 and libzstd.
#include <lz4.h>
#include <zstd.h>

// ZSTD_CONTENTSIZE_UNKNOWN / _ERROR are `(0ULL - 1)` / `(0ULL - 2)` macros,
// which Swift does not import; zstd.h documents both values.
static inline unsigned long long vgpu_zstd_contentsize_unknown(void) { return ZSTD_CONTENTSIZE_UNKNOWN; }
static inline unsigned long long vgpu_zstd_contentsize_error(void) { return ZSTD_CONTENTSIZE_ERROR; }
