/* Device printf and CUDA's sticky errors through libcuda.so.1.
 * argv[1]: PTX of Tests/Kernels/printf.cu; argv[2]: PTX of out_of_bounds.cu.
 *   1. print_values over 3 floats, then cuCtxSynchronize: the kernel's lines
 *      appear on stdout at the synchronization, as CUDA prints them; then
 *      "synced".
 *   2. out_of_bounds: the launch (or the next synchronization) fails with
 *      700 CUDA_ERROR_ILLEGAL_ADDRESS, and so does every later call that
 *      needs the context ("sticky", as cuda.h documents for this error).
 * Prints "step result" lines; exits 0 when every expectation held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_check.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;

CUresult cuInit(unsigned);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, int);
CUresult cuCtxSynchronize(void);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  char *printfPTX = readFile(argv[1]), *oobPTX = readFile(argv[2]);
  CUcontext ctx;
  EXPECT(cuInit(0) == 0 && cuCtxCreate_v2(&ctx, 0, 0) == 0, "init");
  CUmodule m1, m2;
  CUfunction print, oob;
  EXPECT(cuModuleLoadData(&m1, printfPTX) == 0 && cuModuleGetFunction(&print, m1, "print_values") == 0, "printf");
  EXPECT(cuModuleLoadData(&m2, oobPTX) == 0 && cuModuleGetFunction(&oob, m2, "out_of_bounds") == 0, "oob");

  float x[3] = {1.5f, -2.0f, 3.25f};
  CUdeviceptr dx;
  EXPECT(cuMemAlloc_v2(&dx, sizeof x) == 0 && cuMemcpyHtoD_v2(dx, x, sizeof x) == 0, "data");
  int n = 3;
  void *args[] = {&dx, &n};
  EXPECT(cuLaunchKernel(print, 1, 1, 1, 32, 1, 1, 0, NULL, args, NULL) == 0, "launch print_values");
  fflush(stdout);
  EXPECT(cuCtxSynchronize() == 0, "synchronize");
  printf("synced\n");

  int big = 1024;
  void *oobArgs[] = {&dx, &big};
  CUresult launch = cuLaunchKernel(oob, 1, 1, 1, 32, 1, 1, 0, NULL, oobArgs, NULL);
  CUresult sync = cuCtxSynchronize();
  printf("oob %d %d\n", launch, sync);
  EXPECT(launch == 700 || sync == 700, "the illegal address is reported: launch %d, sync %d", launch, sync);
  CUdeviceptr later;
  CUresult alloc = cuMemAlloc_v2(&later, 16);
  printf("after %d\n", alloc);
  EXPECT(alloc == 700, "the error is sticky: cuMemAlloc gave %d", alloc);
  printf(failures ? "failed\n" : "ok\n");
  return failures ? 1 : 0;
}
