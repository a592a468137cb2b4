/* Checks shims/cuda_integrity.c against published test vectors: RFC 1319's MD2
 * test suite (appendix A.5), and the intermediate states of the integrity hash
 * that the public ZLUDA project's tests state (dark_api/src/lib.rs, tests
 * integrity_check_single_pass, _pass2 … _pass5), which its MD2 state layout
 * shares with struct vgpu_md2. Prints one line per vector, "ok" at the end.
 *
 *   cc -Ishims cuda_integrity_vectors.c shims/cuda_integrity.c */
#include <stdio.h>
#include <string.h>

#include "cuda_integrity.h"

static int failures;

static void unhex(const char *hex, uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &out[i]);
}

static void expect_bytes(const char *what, const void *got, const char *hex, size_t n) {
  uint8_t want[128];
  unhex(hex, want, n);
  int ok = memcmp(got, want, n) == 0;
  printf("%s %s\n", what, ok ? "ok" : "FAIL");
  if (!ok) {
    failures++;
    printf("  want %s\n  got  ", hex);
    for (size_t i = 0; i < n; i++) printf("%02x", ((const uint8_t *)got)[i]);
    printf("\n");
  }
}

static void state(struct vgpu_md2 *md, const char *hex) { unhex(hex, (uint8_t *)md, sizeof *md); }

int main(void) {
  /* RFC 1319 A.5. */
  static const struct {
    const char *text, *digest;
  } rfc[] = {
      {"", "8350e5a3e24c153df2275c9f80692773"},
      {"a", "32ec01ec4a6dac72c0ab96fb34c0b5d1"},
      {"abc", "da853b0d3f88d99b30283a69e6ded6bb"},
      {"message digest", "ab4f496bfb2a530b219ff33031fe06b0"},
      {"abcdefghijklmnopqrstuvwxyz", "4e8ddff3650292ab5a4108c3aa47940b"},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "da33def2a42df13975352846c30338cd"},
      {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
       "d5976f79d83d3a0dc9806c3c66f3efd8"},
  };
  for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
    struct vgpu_md2 md;
    uint8_t digest[16];
    char what[64];
    vgpu_md2_init(&md);
    vgpu_md2_update(&md, rfc[i].text, strlen(rfc[i].text), 0);
    vgpu_md2_final(&md, digest);
    snprintf(what, sizeof what, "rfc1319 %zu", i);
    expect_bytes(what, digest, rfc[i].digest, 16);
  }

  /* ZLUDA's vectors: one byte (34) into a state with 0 pending. */
  struct vgpu_md2 md;
  state(&md, "0000000000000000000000000000000038c09bf7ff7f0000a361e442f66794ff18c09bf7ff7f0000a45772f7ff7f0000"
             "000000000000000000000000000000000000");
  vgpu_md2_update(&md, (const uint8_t[]){34}, 1, 0);
  expect_bytes("zluda single_pass", &md,
               "0000000000000000000000000000000022c09bf7ff7f0000a361e442f66794ff22c09bf7ff7f0000a45772f7ff7f0000"
               "570000000000000000000000000000000157",
               66);

  /* Pass 2: the key XOR ipad into a fresh state. */
  uint8_t key[16];
  unhex("146addae53a9a752aa0841360bf55a9f", key, 16);
  vgpu_md2_init(&md);
  vgpu_md2_update(&md, key, 16, 0x36);
  const char *pass2 = "8b219a49e86d1aeef237f9b54a8c3c75c71eee21cf298ae51383f4ec3304e2fdb02f09014ff7686d6946437eb62b21ed"
                      "57a110860e60441e705f67d1eb67a13d003d";
  expect_bytes("zluda pass2", &md, pass2, 66);

  /* Pass 3: the header, after pass 2. */
  state(&md, pass2);
  struct vgpu_integrity_header header = {
      .driver_version = 0x2f30,
      .version = 12082,
      .pid = 0x002fa423,
      .thread = 0xf79c1000,
      .cudart_table = (const void *)0x00007ffff6958240,
      .integrity_table = (const void *)0x00007ffff6958220,
      .function = (const void *)0x00007ffff2aaf4a0,
      .timestamp = 0x682b9cee,
  };
  vgpu_md2_update(&md, &header, sizeof header, 0);
  expect_bytes("zluda pass3", &md,
               "0afdabc9ff9ba0be4d303282744fa7489d2382a387fa6cdb9249d9b54b2b5e516ef7f94d288a640619b3e6bea4ec7e54"
               "6428d9e1d434c0a94988c96158dd66740074",
               66);

  /* Pass 4: one device (UUID as four little-endian words, PCI 0:2:0). */
  state(&md, "84fd9310c6dbb3bc49c225e7da6e226f9bbd8159c3019a7a2634390f2a5613b1f6bc7fa18f04a54d0d78ab20f82320a5"
             "3f6736e2de8ae5dfe1f20394addc9ada00da");
  struct vgpu_integrity_device device = {.pci_domain = 0, .pci_bus = 2, .pci_device = 0};
  unhex("9afe2b8aac252d38ea37aec56d71325f", device.uuid, 16);
  vgpu_md2_update(&md, &device, sizeof device, 0);
  expect_bytes("zluda pass4", &md,
               "1fd825d2dffa64c7b61aaf22b879fb960000000002000000000000007c9d46d21fd825d2ddfa64c7b61aaf22e617bd3a"
               "d7dd5f828c87ce8666afa0507a7dbbbc0c50",
               66);

  /* Pass 5: padding and checksum, and the digest. */
  state(&md, "3e4bf29571f56b5107bf4bf1040e8e0b5f4d300c0f0caefb48af23b5ea4cc2dbd7df88743958163a1f7c9b207e7e94c8"
             "8bc6b2380d077dbd90d53963eb1d4f400040");
  uint8_t digest[16];
  vgpu_md2_final(&md, digest);
  expect_bytes("zluda pass5 state", &md,
               "002353065e96f69c61aa962d2ecda858e9cac02e35ed5fcae10ecd1fd08e8b9c294d1c946bf710b0070891d61406c0ec"
               "e19c8e33d4e9435c860c724d2798917f007f",
               66);
  expect_bytes("zluda pass5 digest", digest, "002353065e96f69c61aa962d2ecda858", 16);

  printf(failures ? "FAILED %d\n" : "ok\n", failures);
  return failures != 0;
}
