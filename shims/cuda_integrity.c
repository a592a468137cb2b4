/* MD2 (RFC 1319) and HMAC-MD2 for the runtime's integrity check (cuda_integrity.h). */
#include "cuda_integrity.h"

#include <string.h>

/* RFC 1319's S: a permutation of 0..255 built from the digits of pi. */
static const uint8_t pi_subst[256] = {
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19,
    98, 167, 5, 243, 192, 199, 115, 140, 152, 147, 43, 217, 188, 76, 130, 202,
    30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18,
    190, 78, 196, 214, 218, 158, 222, 73, 160, 251, 245, 142, 187, 47, 238, 122,
    169, 104, 121, 145, 21, 178, 7, 63, 148, 194, 16, 137, 11, 34, 95, 33,
    128, 127, 93, 154, 90, 144, 50, 39, 53, 62, 204, 231, 191, 247, 151, 3,
    255, 25, 48, 179, 72, 165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198,
    79, 184, 56, 210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116, 4, 241,
    69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2,
    27, 96, 37, 173, 174, 176, 185, 246, 28, 70, 97, 105, 52, 64, 126, 15,
    85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249, 206, 186, 197, 234, 38,
    44, 83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82,
    106, 220, 55, 200, 108, 193, 171, 250, 36, 225, 123, 8, 12, 189, 177, 74,
    120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254, 59, 0, 29, 57,
    242, 239, 183, 14, 102, 88, 208, 228, 166, 119, 114, 248, 235, 117, 75, 10,
    49, 68, 80, 180, 143, 237, 31, 26, 219, 153, 141, 51, 159, 17, 131, 20,
};

void vgpu_md2_init(struct vgpu_md2 *md) { memset(md, 0, sizeof *md); }

/* RFC 1319 3.4: 18 rounds over X, t carried from byte to byte and round to round. */
static void compress(struct vgpu_md2 *md) {
  uint8_t t = 0;
  for (uint8_t round = 0; round < 18; round++) {
    for (int k = 0; k < 48; k++) t = md->x[k] ^= pi_subst[t];
    t = (uint8_t)(t + round);
  }
}

/* One byte: into the block (X[16+i]) and X[32+i] = X[i] ^ byte, and into the
 * checksum (RFC 1319 3.2: L = C[i] ^= S[byte ^ L]); a full block is compressed. */
static void absorb(struct vgpu_md2 *md, uint8_t byte) {
  uint8_t i = md->count;
  md->x[16 + i] = byte;
  md->x[32 + i] = md->x[i] ^ byte;
  md->last = md->checksum[i] ^= pi_subst[byte ^ md->last];
  md->count = (uint8_t)((i + 1) & 15);
  if (md->count == 0) compress(md);
}

void vgpu_md2_update(struct vgpu_md2 *md, const void *data, size_t n, uint8_t mask) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) absorb(md, p[i] ^ mask);
}

/* RFC 1319 3.1: pad with k bytes of value k (1..16) to a whole block; 3.2:
 * append the checksum as it stood after padding. */
void vgpu_md2_final(struct vgpu_md2 *md, uint8_t digest[16]) {
  uint8_t pad = (uint8_t)(16 - md->count);
  for (uint8_t i = 0; i < pad; i++) absorb(md, pad);
  uint8_t checksum[16];
  memcpy(checksum, md->checksum, 16);
  for (int i = 0; i < 16; i++) absorb(md, checksum[i]);
  memcpy(digest, md->x, 16);
}

/* RFC 2104: H((K ^ opad) || H((K ^ ipad) || message)), ipad 0x36, opad 0x5c. */
void vgpu_integrity_hash(const uint8_t key[16], const struct vgpu_integrity_header *header,
                         const struct vgpu_integrity_device *devices, int count, uint8_t out[16]) {
  struct vgpu_md2 md;
  uint8_t inner[16];
  vgpu_md2_init(&md);
  vgpu_md2_update(&md, key, 16, 0x36);
  vgpu_md2_update(&md, header, sizeof *header, 0);
  for (int i = 0; i < count; i++) vgpu_md2_update(&md, &devices[i], sizeof devices[i], 0);
  vgpu_md2_final(&md, inner);
  vgpu_md2_init(&md);
  vgpu_md2_update(&md, key, 16, 0x5c);
  vgpu_md2_update(&md, inner, 16, 0);
  vgpu_md2_final(&md, out);
}
