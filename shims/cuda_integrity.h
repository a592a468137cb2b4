/* The value NVIDIA's CUDA runtime checks through the driver's integrity table
 * (id d4082055…, slot 1; docs/CUDART.md). As the public ZLUDA project's dark-API
 * code documents it (dark_api/src/lib.rs, integrity_check), it is HMAC-MD2:
 * MD2 (RFC 1319) in HMAC's construction (RFC 2104, a 16-byte key = MD2's block),
 * keyed with a fixed 16 bytes, over a 48-byte header and 28 bytes per device. */
#ifndef VGPU_CUDA_INTEGRITY_H
#define VGPU_CUDA_INTEGRITY_H

#include <stddef.h>
#include <stdint.h>

/* MD2's state, laid out as ZLUDA's 66-byte working buffer is, so that its
 * published intermediate states are test vectors for this code:
 * x = RFC 1319's 48-byte X (state, block, state ^ block), then the checksum,
 * the bytes pending in the block, and the checksum's running L. */
struct vgpu_md2 {
  uint8_t x[48];
  uint8_t checksum[16];
  uint8_t count;
  uint8_t last;
};
_Static_assert(sizeof(struct vgpu_md2) == 66, "the layout ZLUDA's test vectors use");

void vgpu_md2_init(struct vgpu_md2 *md);
/* Absorbs `n` bytes, each XORed with `mask` (HMAC's ipad/opad; 0 for plain data). */
void vgpu_md2_update(struct vgpu_md2 *md, const void *data, size_t n, uint8_t mask);
/* Pads, absorbs the checksum and writes the 16-byte digest. */
void vgpu_md2_final(struct vgpu_md2 *md, uint8_t digest[16]);

/* What is hashed, in this order (ZLUDA's Pass3Input, repr(C), 48 bytes on LP64). */
struct vgpu_integrity_header {
  uint32_t driver_version; /* what cuDriverGetVersion reports */
  uint32_t version;        /* the runtime's argument, e.g. 12092 */
  uint32_t pid;            /* getpid() */
  uint32_t thread;         /* pthread_self() truncated to 32 bits (not gettid()) */
  const void *cudart_table;    /* the address of table 6bd5fb6c… */
  const void *integrity_table; /* the address of table d4082055… */
  const void *function;        /* the integrity table's slot 1 (the function called) */
  uint64_t timestamp;          /* the runtime's argument (Unix seconds) */
};
/* Then, per device (ZLUDA's DeviceHashinfo): cuDeviceGetUuid's 16 bytes and
 * cuDeviceGetAttribute 50 (PCI domain), 33 (bus), 34 (device). */
struct vgpu_integrity_device {
  uint8_t uuid[16];
  int32_t pci_domain, pci_bus, pci_device;
};
_Static_assert(sizeof(struct vgpu_integrity_header) == 48 && sizeof(struct vgpu_integrity_device) == 28,
               "the sizes the runtime hashes");

/* HMAC-MD2 with `key` over the header and `count` devices. */
void vgpu_integrity_hash(const uint8_t key[16], const struct vgpu_integrity_header *header,
                         const struct vgpu_integrity_device *devices, int count, uint8_t out[16]);

#endif
