// Device assert: fails for exactly one thread (the one whose x[i] is not < n),
// which makes the launch fail with cudaErrorAssert (710).
// NVRTC has no C library headers; it declares assert itself.
#ifndef __CUDACC_RTC__
#include <cassert>
#endif

extern "C" __global__ void assert_less(const int* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) assert(x[i] < n);
}
