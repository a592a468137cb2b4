/* The vgpu C API's failures: each gives its status code and a one-line message that says
 * what happened, the message is per thread, and the device keeps working afterwards.
 *
 *   vgpu_errors MISSING_DEVICE   (the device itself comes from VGPU_DEVICE)
 *
 * Prints "ok" and exits 0 when every check passed; else the failures, exit 1. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vgpu.h>

#include "selftest_kernels.h" /* the project's PTX (tools/gen-selftest-ptx) */

static int failures;

#define EXPECT(cond)                                                                            \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      fprintf(stderr, "FAIL line %d: %s (last error: %s)\n", __LINE__, #cond, vgpu_last_error_message()); \
      failures++;                                                                               \
    }                                                                                           \
  } while (0)
#define RETURNS(call, want)                                                                                 \
  do {                                                                                                      \
    vgpu_status s_ = (call);                                                                                \
    if (s_ != (want)) {                                                                                     \
      fprintf(stderr, "FAIL line %d: %s returned %d (%s: %s), expected %d\n", __LINE__, #call, (int)s_,     \
              vgpu_error_string(s_), vgpu_last_error_message(), (int)(want));                               \
      failures++;                                                                                           \
    }                                                                                                       \
  } while (0)

static void *other_thread(void *arg) {
  (void)arg;
  /* This thread has failed nothing: its message is empty. */
  return (void *)(uintptr_t)(strcmp(vgpu_last_error_message(), "") == 0);
}

int main(int argc, char **argv) {
  EXPECT(strcmp(vgpu_last_error_message(), "") == 0);
  EXPECT(strcmp(vgpu_error_string(VGPU_ERROR_OUT_OF_MEMORY), "out of device memory") == 0);
  EXPECT(strlen(vgpu_error_string(VGPU_ERROR_TIMEOUT)) > 0);
  EXPECT(strlen(vgpu_error_string(12345)) > 0);

  vgpu_device *dev = (vgpu_device *)1;
  RETURNS(vgpu_open(argc > 1 ? argv[1] : "shm:/dev/shm/vgpu-missing", &dev), VGPU_ERROR_UNAVAILABLE);
  EXPECT(dev == NULL);
  printf("missing device: %s\n", vgpu_last_error_message());
  EXPECT(strstr(vgpu_last_error_message(), "vgpu-mediator") != NULL);
  RETURNS(vgpu_open("no such thing", &dev), VGPU_ERROR_INVALID_ARGUMENT);

  RETURNS(vgpu_open(NULL, &dev), VGPU_SUCCESS);
  if (!dev) return 1;
  pthread_t t;
  void *clean = NULL;
  pthread_create(&t, NULL, other_thread, NULL);
  pthread_join(t, &clean);
  EXPECT(clean != NULL);

  vgpu_ptr p = 0;
  RETURNS(vgpu_alloc(dev, 0, &p), VGPU_ERROR_INVALID_ARGUMENT);
  RETURNS(vgpu_alloc(dev, 1ull << 50, &p), VGPU_ERROR_OUT_OF_MEMORY);
  printf("out of memory: %s\n", vgpu_last_error_message());
  RETURNS(vgpu_alloc(dev, 4096, &p), VGPU_SUCCESS);
  char buffer[8192];
  RETURNS(vgpu_copy_to_device(dev, p, buffer, sizeof buffer), VGPU_ERROR_INVALID_ADDRESS);
  RETURNS(vgpu_copy_to_device(dev, p, NULL, 16), VGPU_ERROR_INVALID_ARGUMENT);
  RETURNS(vgpu_free(dev, p + 256), VGPU_ERROR_INVALID_ADDRESS);
  RETURNS(vgpu_memset(dev, p, 0, 3, 16), VGPU_ERROR_INVALID_ARGUMENT);
  RETURNS(vgpu_statistics(dev, (vgpu_scope)7, NULL), VGPU_ERROR_INVALID_ARGUMENT);

  /* 1.x's text image of built-in kernels is no image now; the project's PTX is. */
  static const char bad_image[] = "vgpu-module 1\nkernel fill\n";
  vgpu_module module;
  vgpu_function fill;
  RETURNS(vgpu_module_load(dev, bad_image, sizeof bad_image - 1, &module), VGPU_ERROR_INVALID_IMAGE);
  RETURNS(vgpu_module_load(dev, selftest_ptx, sizeof selftest_ptx - 1, &module), VGPU_SUCCESS);
  RETURNS(vgpu_module_get_function(dev, module, "no_such_kernel", &fill, NULL), VGPU_ERROR_NOT_FOUND);
  RETURNS(vgpu_module_get_function(dev, module, "fill", &fill, NULL), VGPU_SUCCESS);
  /* fill(float *dst, float value, unsigned n): 16 bytes, dst@0 value@8 n@12. */
  struct {
    vgpu_ptr dst;
    float value;
    uint32_t n;
  } params = {p, 2.0f, 1024};
  vgpu_dim3 grid = {4, 1, 1}, block = {256, 1, 1};
  RETURNS(vgpu_launch(dev, fill, grid, block, 0, &params, 8), VGPU_ERROR_INVALID_PARAMETERS);
  printf("wrong parameters: %s\n", vgpu_last_error_message());
  RETURNS(vgpu_launch(dev, module, grid, block, 0, &params, sizeof params), VGPU_ERROR_INVALID_HANDLE);
  RETURNS(vgpu_launch(dev, fill, grid, block, 0, &params, sizeof params), VGPU_SUCCESS);
  float back[1024];
  RETURNS(vgpu_copy_from_device(dev, back, p, sizeof back), VGPU_SUCCESS);
  EXPECT(back[0] == 2.0f && back[1023] == 2.0f);

  /* The process list: the count alone, then too little room. */
  size_t count = 0;
  vgpu_process_info one;
  RETURNS(vgpu_processes(dev, NULL, 0, &count), VGPU_SUCCESS);
  EXPECT(count >= 1);
  RETURNS(vgpu_processes(dev, &one, 1, &count), VGPU_SUCCESS);
  RETURNS(vgpu_processes(dev, NULL, 1, &count), VGPU_ERROR_INVALID_ARGUMENT);

  RETURNS(vgpu_close(dev), VGPU_SUCCESS);
  RETURNS(vgpu_close(NULL), VGPU_SUCCESS);
  RETURNS(vgpu_get_info(NULL, NULL), VGPU_ERROR_INVALID_ARGUMENT);
  if (failures) return 1;
  printf("ok\n");
  return 0;
}
