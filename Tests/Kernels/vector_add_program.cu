// A whole CUDA program, the way nvcc users write one: <<<>>> launches,
// cudaMalloc/cudaMemcpy, a __device__ global set with cudaMemcpyToSymbol, and
// a host-side check that prints PASS or FAIL (exit status 0 or 1). It will run
// against the vGPU's libcuda.so.1 once the device runs kernels; nvcc links
// cudart statically, so libcuda.so.1 is the only place it can be served.
// The kernels are the corpus's own (vector_add.cu, device_globals.cu).
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cuda_runtime.h>

#include "vector_add.cu"
#include "device_globals.cu"

static int check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    printf("FAIL: %s: %s (%d)\n", what, cudaGetErrorString(e), (int)e);
    exit(1);
  }
  return 0;
}

int main() {
  const int n = 1000;
  float a[n], b[n], c[n];
  for (int i = 0; i < n; ++i) {
    a[i] = (float)i;
    b[i] = 0.5f * i;
  }
  float *da, *db, *dc;
  check(cudaMalloc(&da, n * sizeof(float)), "cudaMalloc a");
  check(cudaMalloc(&db, n * sizeof(float)), "cudaMalloc b");
  check(cudaMalloc(&dc, n * sizeof(float)), "cudaMalloc c");
  check(cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice), "cudaMemcpy a");
  check(cudaMemcpy(db, b, sizeof b, cudaMemcpyHostToDevice), "cudaMemcpy b");
  int threads = 256, blocks = (n + threads - 1) / threads;
  vector_add<<<blocks, threads>>>(da, db, dc, n);
  check(cudaGetLastError(), "vector_add launch");
  float s = 3.0f;
  check(cudaMemcpyToSymbol(scale, &s, sizeof s), "cudaMemcpyToSymbol scale");
  scale_by_global<<<blocks, threads>>>(dc, n);
  check(cudaGetLastError(), "scale_by_global launch");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  check(cudaMemcpy(c, dc, sizeof c, cudaMemcpyDeviceToHost), "cudaMemcpy c");
  for (int i = 0; i < n; ++i) {
    float want = 3.0f * (a[i] + b[i]);
    if (fabsf(c[i] - want) > 1e-5f * fabsf(want)) {
      printf("FAIL: c[%d] = %f, want %f\n", i, c[i], want);
      return 1;
    }
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  printf("PASS\n");
  return 0;
}
