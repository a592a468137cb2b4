// Device printf: vprintf with a format string in .global and the arguments in a
// local buffer (the float is promoted to double).
// NVRTC has no C library headers; it declares printf itself.
#ifndef __CUDACC_RTC__
#include <cstdio>
#endif

extern "C" __global__ void print_values(const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) printf("thread %d value %f\n", i, x[i]);
}
