/* An example of the vgpu C API, and a test of it: opens the device (VGPU_DEVICE, or the
 * one named on the command line), copies 1 MiB there and back, adds two vectors with a
 * vector_add kernel written in PTX, checks every result, and prints the statistics.
 *
 *   cc -o vgpu_example vgpu_example.c $(pkg-config --cflags --libs vgpu)
 *   VGPU_DEVICE=unix:/run/vgpu/vgpu0.sock ./vgpu_example
 *
 * Exit status 0 when everything checked out, 1 otherwise (the reason on stderr). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vgpu.h>

/* Stops with the call's status and the library's one-line explanation. */
#define CHECK(call)                                                                                     \
  do {                                                                                                  \
    vgpu_status s_ = (call);                                                                            \
    if (s_ != VGPU_SUCCESS) {                                                                           \
      fprintf(stderr, "%s failed: %d (%s): %s\n", #call, (int)s_, vgpu_error_string(s_),                \
              vgpu_last_error_message());                                                               \
      exit(1);                                                                                          \
    }                                                                                                   \
  } while (0)

/* vector_add(const float *a, const float *b, float *c, unsigned n): c[i] = a[i] + b[i]
 * for i = blockIdx.x * blockDim.x + threadIdx.x < n, as PTX (what nvcc -ptx writes for
 * the CUDA C; any PTX the device's compute capability covers will do). */
static const char vector_add_ptx[] =
    ".version 7.0\n"
    ".target sm_52\n"
    ".address_size 64\n"
    ".visible .entry vector_add(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .f32 %f<4>;\n"
    "  .reg .b32 %r<6>;\n"
    "  .reg .b64 %rd<8>;\n"
    "  ld.param.u64 %rd1, [a];\n"
    "  ld.param.u64 %rd2, [b];\n"
    "  ld.param.u64 %rd3, [c];\n"
    "  ld.param.u32 %r1, [n];\n"
    "  mov.u32 %r2, %ctaid.x;\n"
    "  mov.u32 %r3, %ntid.x;\n"
    "  mov.u32 %r4, %tid.x;\n"
    "  mad.lo.s32 %r5, %r2, %r3, %r4;\n"
    "  setp.ge.u32 %p1, %r5, %r1;\n"
    "  @%p1 bra DONE;\n"
    "  mul.wide.u32 %rd4, %r5, 4;\n"
    "  add.s64 %rd5, %rd1, %rd4;\n"
    "  add.s64 %rd6, %rd2, %rd4;\n"
    "  add.s64 %rd7, %rd3, %rd4;\n"
    "  ld.global.f32 %f1, [%rd5];\n"
    "  ld.global.f32 %f2, [%rd6];\n"
    "  add.rn.f32 %f3, %f1, %f2;\n"
    "  st.global.f32 [%rd7], %f3;\n"
    "DONE:\n"
    "  ret;\n"
    "}\n";

/* vector_add's parameters as PTX lays them out: each at a multiple of its size, the
 * buffer ending at the last one (28 bytes, without this struct's tail padding). */
struct vector_add_params {
  vgpu_ptr a, b, c;
  uint32_t n;
};

static void print_stats(const char *what, const vgpu_stats *s) {
  printf("%s: bytes_allocated=%llu allocations=%llu launches=%llu copies=%llu bytes_copied=%llu busy_ns=%llu "
         "commands=%llu queue_pairs=%llu\n",
         what, (unsigned long long)s->bytes_allocated, (unsigned long long)s->allocations,
         (unsigned long long)s->launches, (unsigned long long)s->copies, (unsigned long long)s->bytes_copied,
         (unsigned long long)s->busy_ns, (unsigned long long)s->commands, (unsigned long long)s->queue_pairs);
}

int main(int argc, char **argv) {
  vgpu_device *dev;
  CHECK(vgpu_open(argc > 1 ? argv[1] : NULL, &dev));

  vgpu_info info;
  CHECK(vgpu_get_info(dev, &info));
  printf("device: %s\n", info.name);
  printf("uuid: %s\n", info.uuid);
  printf("pci: %s\n", info.pci_bus_id);
  printf("memory: %llu\n", (unsigned long long)info.memory_total);
  printf("compute capability: %u.%u\n", info.compute_major, info.compute_minor);
  printf("protocol: %u.%u features 0x%llx\n", info.protocol_major, info.protocol_minor,
         (unsigned long long)info.features);

  uint64_t free_bytes, total_bytes;
  CHECK(vgpu_mem_info(dev, &free_bytes, &total_bytes));
  printf("free: %llu of %llu\n", (unsigned long long)free_bytes, (unsigned long long)total_bytes);

  /* 1 MiB round trip. */
  const size_t bytes = 1 << 20;
  unsigned char *out = malloc(bytes), *back = malloc(bytes);
  for (size_t i = 0; i < bytes; i++) out[i] = (unsigned char)(i * 2654435761u >> 13);
  vgpu_ptr buffer, copy;
  CHECK(vgpu_alloc(dev, bytes, &buffer));
  CHECK(vgpu_alloc(dev, bytes, &copy));
  CHECK(vgpu_copy_to_device(dev, buffer, out, bytes));
  CHECK(vgpu_copy_device(dev, copy, buffer, bytes));
  CHECK(vgpu_copy_from_device(dev, back, copy, bytes));
  if (memcmp(out, back, bytes) != 0) {
    fprintf(stderr, "the 1 MiB read back differs from what was written\n");
    return 1;
  }
  printf("round trip: %zu bytes verified\n", bytes);
  CHECK(vgpu_memset(dev, copy, 0xab, 1, bytes));
  CHECK(vgpu_copy_from_device(dev, back, copy, 4096));
  for (size_t i = 0; i < 4096; i++)
    if (back[i] != 0xab) {
      fprintf(stderr, "memset: byte %zu is 0x%02x\n", i, back[i]);
      return 1;
    }

  /* c = a + b on the device. */
  const uint32_t n = 100000;
  float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)), *c = malloc(n * sizeof(float));
  for (uint32_t i = 0; i < n; i++) {
    a[i] = (float)i * 0.5f;
    b[i] = 1000.0f - (float)i;
  }
  vgpu_ptr da, db, dc;
  CHECK(vgpu_alloc(dev, n * sizeof(float), &da));
  CHECK(vgpu_alloc(dev, n * sizeof(float), &db));
  CHECK(vgpu_alloc(dev, n * sizeof(float), &dc));
  CHECK(vgpu_copy_to_device(dev, da, a, n * sizeof(float)));
  CHECK(vgpu_copy_to_device(dev, db, b, n * sizeof(float)));

  vgpu_module module;
  vgpu_function vector_add;
  size_t param_size;
  CHECK(vgpu_module_load(dev, vector_add_ptx, sizeof vector_add_ptx - 1, &module));
  CHECK(vgpu_module_get_function(dev, module, "vector_add", &vector_add, &param_size));
  const size_t expected_size = offsetof(struct vector_add_params, n) + sizeof(uint32_t);
  if (param_size != expected_size) {
    fprintf(stderr, "vector_add takes %zu bytes of parameters, expected %zu\n", param_size, expected_size);
    return 1;
  }
  struct vector_add_params params = {da, db, dc, n};
  vgpu_dim3 block = {256, 1, 1}, grid = {(n + 255) / 256, 1, 1};
  CHECK(vgpu_launch(dev, vector_add, grid, block, 0, &params, param_size));
  CHECK(vgpu_synchronize(dev));
  CHECK(vgpu_copy_from_device(dev, c, dc, n * sizeof(float)));
  for (uint32_t i = 0; i < n; i++)
    if (c[i] != a[i] + b[i]) {
      fprintf(stderr, "vector_add: c[%u] = %g, expected %g\n", i, c[i], a[i] + b[i]);
      return 1;
    }
  printf("vector_add: %u elements verified\n", n);

  vgpu_stats stats;
  CHECK(vgpu_statistics(dev, VGPU_SCOPE_PROCESS, &stats));
  print_stats("process", &stats);
  CHECK(vgpu_statistics(dev, VGPU_SCOPE_DEVICE, &stats));
  print_stats("device", &stats);

  vgpu_process_info processes[16];
  size_t count;
  CHECK(vgpu_processes(dev, processes, 16, &count));
  for (size_t i = 0; i < count && i < 16; i++)
    printf("process: pid=%u queue_pairs=%u bytes_allocated=%llu launches=%llu busy_ns=%llu\n", processes[i].pid,
           processes[i].queue_pairs, (unsigned long long)processes[i].bytes_allocated,
           (unsigned long long)processes[i].launches, (unsigned long long)processes[i].busy_ns);

  CHECK(vgpu_module_unload(dev, module));
  CHECK(vgpu_free(dev, da));
  CHECK(vgpu_free(dev, db));
  CHECK(vgpu_free(dev, dc));
  CHECK(vgpu_free(dev, buffer));
  CHECK(vgpu_free(dev, copy));
  CHECK(vgpu_close(dev));
  free(out), free(back), free(a), free(b), free(c);
  printf("ok\n");
  return 0;
}
