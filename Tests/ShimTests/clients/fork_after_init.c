/* Fork after the CUDA driver is in use: the parent initialises, allocates and
 * copies, then forks. The child must not use the parent's connection (its
 * queue pairs are the parent's): it initialises on its own, allocates, copies
 * and checks its data. After the child has exited, the parent's memory and
 * queues still work: it reads its data back, copies more and checks it.
 * Linked against libcuda.so.1 directly, as a CUDA program is.
 * Prints "child ok" and "parent ok"; exit status 0 when both are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);

#define N (3 << 20) /* spans several staging slots */
#define CHECK(call)                                               \
  do {                                                            \
    CUresult r_ = (call);                                         \
    if (r_ != 0) {                                                \
      printf("%s: %s = %d\n", who, #call, r_);                    \
      fflush(stdout);                                             \
      return 1;                                                   \
    }                                                             \
  } while (0)

static const char *who = "parent";

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 2654435761u >> 13) ^ (unsigned char)seed;
}

/* Allocates, copies in `seed`'s pattern, reads it back, compares. */
static int roundTrip(CUdeviceptr *keep, unsigned seed) {
  unsigned char *in = malloc(N), *out = malloc(N);
  fill(in, N, seed);
  CUdeviceptr d;
  CHECK(cuMemAlloc_v2(&d, N));
  CHECK(cuMemcpyHtoD_v2(d, in, N));
  CHECK(cuMemcpyDtoH_v2(out, d, N));
  if (memcmp(in, out, N) != 0) {
    printf("%s: data differ\n", who);
    return 1;
  }
  if (keep) *keep = d; else CHECK(cuMemFree_v2(d));
  free(in);
  free(out);
  return 0;
}

int main(void) {
  CUdevice dev;
  CUcontext ctx;
  CUdeviceptr kept;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuCtxCreate_v2(&ctx, 0, dev));
  if (roundTrip(&kept, 1)) return 1;

  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    who = "child";
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CUcontext mine;
    CHECK(cuCtxCreate_v2(&mine, 0, dev));
    if (roundTrip(NULL, 2) || roundTrip(NULL, 3)) _exit(1);
    CHECK(cuCtxDestroy_v2(mine));
    printf("child ok\n");
    fflush(stdout);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  /* The parent's memory from before the fork is intact and its queues work. */
  unsigned char *expect = malloc(N), *got = malloc(N);
  fill(expect, N, 1);
  CHECK(cuMemcpyDtoH_v2(got, kept, N));
  if (memcmp(expect, got, N) != 0) {
    printf("parent: data from before the fork differ\n");
    return 1;
  }
  if (roundTrip(NULL, 4)) return 1;
  CHECK(cuMemFree_v2(kept));
  CHECK(cuCtxDestroy_v2(ctx));
  printf("parent ok\n");
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
