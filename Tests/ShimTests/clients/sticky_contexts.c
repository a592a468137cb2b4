/* A sticky error belongs to its context, not to the process, through libcuda.so.1.
 * argv[1]: PTX of Tests/Kernels/out_of_bounds.cu; argv[2]: PTX of vector_add.cu.
 *   1. Two contexts (cuCtxCreate twice). In context 1, out_of_bounds fails
 *      with 700 CUDA_ERROR_ILLEGAL_ADDRESS (at the launch or the next
 *      synchronization), and context 1's later calls return 700 too.
 *   2. Context 2 still allocates, copies and runs vector_add correctly.
 *   3. Back in context 1: still 700. Destroying it succeeds; context 2 and a
 *      new context work.
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
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxSynchronize(void);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

enum { N = 1000 };

/* vector_add in the current context: 0 when its result is right, else the failing CUresult or -1. */
static int vectorAdd(const char *ptx) {
  CUmodule m;
  CUfunction add;
  CUresult r;
  if ((r = cuModuleLoadData(&m, ptx)) || (r = cuModuleGetFunction(&add, m, "vector_add"))) return r;
  static float a[N], b[N], c[N];
  for (int i = 0; i < N; i++) a[i] = (float)i, b[i] = 2.0f * (float)i, c[i] = -1;
  CUdeviceptr da, db, dc;
  if ((r = cuMemAlloc_v2(&da, sizeof a)) || (r = cuMemAlloc_v2(&db, sizeof b)) || (r = cuMemAlloc_v2(&dc, sizeof c)))
    return r;
  if ((r = cuMemcpyHtoD_v2(da, a, sizeof a)) || (r = cuMemcpyHtoD_v2(db, b, sizeof b))) return r;
  int n = N;
  void *args[] = {&da, &db, &dc, &n};
  if ((r = cuLaunchKernel(add, (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL))) return r;
  if ((r = cuCtxSynchronize()) || (r = cuMemcpyDtoH_v2(c, dc, sizeof c))) return r;
  for (int i = 0; i < N; i++)
    if (c[i] != 3.0f * (float)i) return -1;
  if ((r = cuMemFree_v2(da)) || (r = cuMemFree_v2(db)) || (r = cuMemFree_v2(dc))) return r;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  char *oobPTX = readFile(argv[1]), *addPTX = readFile(argv[2]);
  CUcontext c1, c2;
  EXPECT(cuInit(0) == 0 && cuCtxCreate_v2(&c1, 0, 0) == 0 && cuCtxCreate_v2(&c2, 0, 0) == 0, "init");

  /* 1. The fault, in context 1. */
  EXPECT(cuCtxSetCurrent(c1) == 0, "current c1");
  CUmodule m;
  CUfunction oob;
  EXPECT(cuModuleLoadData(&m, oobPTX) == 0 && cuModuleGetFunction(&oob, m, "out_of_bounds") == 0, "oob");
  CUdeviceptr buffer;
  EXPECT(cuMemAlloc_v2(&buffer, 64) == 0, "alloc in c1");
  int big = 1024;
  void *oobArgs[] = {&buffer, &big};
  CUresult launch = cuLaunchKernel(oob, 1, 1, 1, 32, 1, 1, 0, NULL, oobArgs, NULL);
  CUresult sync = cuCtxSynchronize();
  printf("c1 oob %d %d\n", launch, sync);
  EXPECT(launch == 700 || sync == 700, "the illegal address is reported: launch %d, sync %d", launch, sync);
  CUdeviceptr p;
  CUresult alloc1 = cuMemAlloc_v2(&p, 16);
  printf("c1 after %d\n", alloc1);
  EXPECT(alloc1 == 700, "sticky in context 1: cuMemAlloc gave %d", alloc1);

  /* 2. Context 2 goes on. */
  EXPECT(cuCtxSetCurrent(c2) == 0, "current c2");
  int add2 = vectorAdd(addPTX);
  printf("c2 vector_add %d\n", add2);
  EXPECT(add2 == 0, "context 2 runs vector_add: %d", add2);

  /* 3. Context 1 is still unusable until destroyed; then others work. */
  EXPECT(cuCtxSetCurrent(c1) == 0, "current c1 again");
  CUresult again = cuCtxSynchronize();
  printf("c1 again %d\n", again);
  EXPECT(again == 700, "still sticky in context 1: cuCtxSynchronize gave %d", again);
  CUresult destroyed = cuCtxDestroy_v2(c1);
  printf("c1 destroy %d\n", destroyed);
  EXPECT(destroyed == 0, "cuCtxDestroy(c1) gave %d", destroyed);
  EXPECT(cuCtxSetCurrent(c2) == 0, "current c2 again");
  int add2again = vectorAdd(addPTX);
  CUcontext c3;
  EXPECT(cuCtxCreate_v2(&c3, 0, 0) == 0, "a third context");
  int add3 = vectorAdd(addPTX);
  printf("after destroy %d %d\n", add2again, add3);
  EXPECT(add2again == 0 && add3 == 0, "after destroying context 1: c2 %d, c3 %d", add2again, add3);
  EXPECT(cuCtxDestroy_v2(c3) == 0 && cuCtxDestroy_v2(c2) == 0, "destroy c2, c3");
  printf(failures ? "failed\n" : "ok\n");
  return failures ? 1 : 0;
}
