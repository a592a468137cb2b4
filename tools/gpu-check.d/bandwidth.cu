// H2D and D2H bandwidth from pinned host memory (cudaMallocHost + cudaMemcpy),
// the way CUDA's bandwidthTest measures it, so that the vGPU and the host's
// own driver are timed by the same program. Usage: bandwidth [MiB] [reps]
// Prints one line: "bandwidth MiB=64 reps=N h2d_GBps=X d2h_GBps=Y" (GB = 1e9
// bytes), or "FAIL: ..." with exit status 1. Host wall clock around the
// synchronised loop, not events: it is what a program waiting on copies sees.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

static void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    printf("FAIL: %s: %s (%d)\n", what, cudaGetErrorString(e), (int)e);
    exit(1);
  }
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], nullptr, 10) : 64;
  int reps = argc > 2 ? atoi(argv[2]) : 8;
  if (mib == 0 || reps <= 0) {
    printf("FAIL: usage: bandwidth [MiB > 0] [reps > 0]\n");
    return 1;
  }
  size_t bytes = mib << 20;
  unsigned char *src, *dst, *dev;
  check(cudaMallocHost(&src, bytes), "cudaMallocHost src");
  check(cudaMallocHost(&dst, bytes), "cudaMallocHost dst");
  check(cudaMalloc(&dev, bytes), "cudaMalloc");
  for (size_t i = 0; i < bytes; ++i) src[i] = (unsigned char)(i * 2654435761u >> 24);
  memset(dst, 0, bytes);

  // One untimed round trip: first-touch costs, and proof that the bytes arrive.
  check(cudaMemcpy(dev, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D (warm-up)");
  check(cudaMemcpy(dst, dev, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H (warm-up)");
  if (memcmp(src, dst, bytes) != 0) {
    printf("FAIL: %zu MiB came back different after H2D + D2H\n", mib);
    return 1;
  }

  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) check(cudaMemcpy(dev, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after H2D");
  double h2d = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) check(cudaMemcpy(dst, dev, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after D2H");
  double d2h = seconds_since(t0);

  double total = (double)bytes * reps;
  printf("bandwidth MiB=%zu reps=%d h2d_GBps=%.2f d2h_GBps=%.2f\n", mib, reps, total / h2d / 1e9, total / d2h / 1e9);
  cudaFree(dev);
  cudaFreeHost(src);
  cudaFreeHost(dst);
  return 0;
}
