/* Page-locked memory in a VM (protocol 2.4, feature hostWindow): against a
 * mediator serving a VM's BAR with a page-locked window (--vm --host-window),
 * cuMemAllocHost hands out memory inside the BAR file (argv[1]: its path),
 * as /proc/self/maps shows, and a round trip through two such buffers is
 * right; freed and allocated again, the memory comes back zeroed.
 * Linked against libcuda.so.1. Prints "ok"; exit status 0 when it is. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
CUresult cuMemAllocHost_v2(void **, size_t);
CUresult cuMemFreeHost(void *);

#define N (3 * 1024 * 1024 + 4321)
#define CHECK(call)                                  \
  do {                                               \
    CUresult r_ = (call);                            \
    if (r_ != 0) {                                   \
      printf("FAIL %s = %d\n", #call, r_);           \
      return 1;                                      \
    }                                                \
  } while (0)

/* Whether p lies in a mapping of the file at path (/proc/self/maps). */
static int inFile(const void *p, const char *path) {
  FILE *maps = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  while (maps && fgets(line, sizeof line, maps)) {
    unsigned long start, end;
    char *name = strchr(line, '/');
    if (sscanf(line, "%lx-%lx", &start, &end) != 2 || !name) continue;
    name[strcspn(name, "\n")] = 0;
    if ((unsigned long)p >= start && (unsigned long)p < end && strcmp(name, path) == 0) found = 1;
  }
  if (maps) fclose(maps);
  return found;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    printf("usage: pinned_window BAR-FILE\n");
    return 2;
  }
  CUdevice dev;
  CUcontext ctx;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuCtxCreate_v2(&ctx, 0, dev));
  unsigned char *in = NULL, *out = NULL;
  CHECK(cuMemAllocHost_v2((void **)&in, N));
  CHECK(cuMemAllocHost_v2((void **)&out, N));
  if (!inFile(in, argv[1]) || !inFile(out, argv[1]) || !inFile(in + N - 1, argv[1])) {
    printf("FAIL page-locked memory %p, %p is not in the BAR file %s\n", (void *)in, (void *)out, argv[1]);
    return 1;
  }
  for (int i = 0; i < N; i++) in[i] = (unsigned char)(i * 7 + 3);
  memset(out, 0, N);
  CUdeviceptr d;
  CHECK(cuMemAlloc_v2(&d, N));
  CHECK(cuMemcpyHtoD_v2(d, in, N));
  CHECK(cuMemcpyDtoH_v2(out, d, N));
  if (memcmp(in, out, N) != 0) {
    printf("FAIL a round trip through page-locked window memory\n");
    return 1;
  }
  CHECK(cuMemcpyDtoH_v2(out + 1000, d + 5, 100000)); /* inside it, at odd offsets */
  if (memcmp(in + 5, out + 1000, 100000) != 0) {
    printf("FAIL a part of page-locked window memory\n");
    return 1;
  }
  CHECK(cuMemFreeHost(in));
  if (cuMemFreeHost(in) != 1) {
    printf("FAIL a second cuMemFreeHost of the same memory was not refused\n");
    return 1;
  }
  /* The freed range again (the device scrubbed it): zeroed. */
  unsigned char *again = NULL;
  CHECK(cuMemAllocHost_v2((void **)&again, N));
  for (int i = 0; i < N; i++) {
    if (again[i] != 0) {
      printf("FAIL page-locked memory allocated again holds %d at %d\n", again[i], i);
      return 1;
    }
  }
  CHECK(cuMemFreeHost(again));
  CHECK(cuMemFreeHost(out));
  CHECK(cuMemFree_v2(d));
  CHECK(cuCtxDestroy_v2(ctx));
  printf("ok\n");
  return 0;
}
