/* The driver API surface of libcuda.so.1 beyond discovery, as a CUDA program
 * linked against it sees it: cuGetProcAddress's version resolution, error
 * names, contexts, attributes, PCI ids, memory, memsets, host memory,
 * streams, events, modules and launches of built-in kernels (both ways of
 * passing parameters), threads launching at once, stubs, and the heap allocations of copies and
 * launches once warm (this program counts the calling thread's by replacing
 * malloc and friends, as glibc allows an executable to).
 *
 * Prints "FAIL <what>" for every check that fails and "ok <n> checks" at the
 * end; exit status 0 when all pass. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- counting allocator (glibc manual, "Replacing malloc") ---- */
static __thread uint64_t allocations;
#ifndef VGPU_SANITIZER_PRELOADED
/* Not under tools/test --sanitize, where the sanitizer's runtime is preloaded
 * and must be the allocator: these would hand out glibc's blocks that the
 * runtime's malloc_usable_size and free then reject. The count stays 0 there;
 * the normal run checks the hot path's allocations. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
void *calloc(size_t n, size_t m) { allocations++; return __libc_calloc(n, m); }
void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { allocations++; return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
  allocations++;
  void *p = __libc_memalign(a, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
#endif

/* ---- cuda.h declarations used here ---- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct {
  char bytes[16];
} CUuuid;
typedef struct {
  void *execAffinityParams;
  int numExecAffinityParams;
  void *cigParams;
} CUctxCreateParams;

CUresult cuInit(unsigned int);
CUresult cuDriverGetVersion(int *);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuDeviceGetCount(int *);
CUresult cuDeviceGetAttribute(int *, int, CUdevice);
CUresult cuDeviceGetName(char *, int, CUdevice);
CUresult cuDeviceGetUuid(CUuuid *, CUdevice);
CUresult cuDeviceGetUuid_v2(CUuuid *, CUdevice);
CUresult cuDeviceTotalMem(unsigned int *, CUdevice);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuDeviceGetPCIBusId(char *, int, CUdevice);
CUresult cuDeviceGetByPCIBusId(CUdevice *, const char *);
CUresult cuCtxCreate(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxCreate_v3(CUcontext *, void *, int, unsigned int, CUdevice);
CUresult cuCtxCreate_v4(CUcontext *, CUctxCreateParams *, unsigned int, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuCtxGetCurrent(CUcontext *);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxPushCurrent_v2(CUcontext);
CUresult cuCtxPopCurrent_v2(CUcontext *);
CUresult cuCtxGetDevice(CUdevice *);
CUresult cuCtxSynchronize(void);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice);
CUresult cuDevicePrimaryCtxGetState(CUdevice, unsigned int *, int *);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuMemcpyDtoD_v2(CUdeviceptr, CUdeviceptr, size_t);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void *, size_t, CUstream);
CUresult cuMemcpyDtoHAsync_v2(void *, CUdeviceptr, size_t, CUstream);
CUresult cuMemsetD8_v2(CUdeviceptr, unsigned char, size_t);
CUresult cuMemsetD16_v2(CUdeviceptr, unsigned short, size_t);
CUresult cuMemsetD32_v2(CUdeviceptr, unsigned int, size_t);
CUresult cuMemAllocHost_v2(void **, size_t);
CUresult cuMemHostAlloc(void **, size_t, unsigned int);
CUresult cuMemHostRegister_v2(void *, size_t, unsigned int);
CUresult cuMemHostRegister(void *, size_t, unsigned int);
CUresult cuMemHostUnregister(void *);
CUresult cuPointerGetAttribute(void *, int, CUdeviceptr);
CUresult cuMemFreeHost(void *);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuModuleGetFunctionCount(unsigned *, CUmodule);
CUresult cuModuleEnumerateFunctions(CUfunction *, unsigned, CUmodule);
CUresult cuModuleUnload(CUmodule);
CUresult cuModuleGetLoadingMode(int *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuStreamCreate(CUstream *, unsigned int);
CUresult cuStreamSynchronize(CUstream);
CUresult cuStreamQuery(CUstream);
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int);
CUresult cuStreamDestroy_v2(CUstream);
CUresult cuEventCreate(CUevent *, unsigned int);
CUresult cuEventRecord(CUevent, CUstream);
CUresult cuEventQuery(CUevent);
CUresult cuEventSynchronize(CUevent);
CUresult cuEventElapsedTime(float *, CUevent, CUevent);
CUresult cuEventDestroy_v2(CUevent);
CUresult cuGetErrorName(CUresult, const char **);
CUresult cuGetErrorString(CUresult, const char **);
CUresult cuGetProcAddress_v2(const char *, void **, int, unsigned long long, int *);
CUresult cuMemCreate(void *, size_t, const void *, unsigned long long);

static int checks, failures;
#define EXPECT(cond, ...)                 \
  do {                                    \
    checks++;                             \
    if (!(cond)) {                        \
      failures++;                         \
      printf("FAIL line %d: ", __LINE__); \
      printf(__VA_ARGS__);                \
      printf("\n");                       \
    }                                     \
  } while (0)
#define OK(call) EXPECT((call) == 0, "%s", #call)
#define IS(call, want)                                      \
  do {                                                      \
    CUresult r_ = (call);                                   \
    EXPECT(r_ == (want), "%s = %d, want %d", #call, r_, want); \
  } while (0)

/* cuGetProcAddress(name, version) gives the symbol `want` of this library. */
static void resolves(const char *name, int version, unsigned long long flags, const char *want) {
  void *fn = (void *)1;
  int status = -1;
  CUresult r = cuGetProcAddress_v2(name, &fn, version, flags, &status);
  void *expected = dlsym(RTLD_DEFAULT, want);
  EXPECT(r == 0 && status == 0 && fn && fn == expected, "cuGetProcAddress(%s, %d, %llu) = %d, status %d, %p; %s is %p",
         name, version, flags, r, status, fn, want, expected);
}

static void procAddress(void) {
  resolves("cuInit", 2000, 0, "cuInit");
  resolves("cuInit", 12090, 0, "cuInit");
  resolves("cuCtxCreate", 3020, 0, "cuCtxCreate_v2");
  resolves("cuCtxCreate", 11040, 0, "cuCtxCreate_v3");
  resolves("cuCtxCreate", 12000, 0, "cuCtxCreate_v3");
  resolves("cuCtxCreate", 12050, 0, "cuCtxCreate_v4");
  resolves("cuCtxCreate", 2000, 0, "cuCtxCreate");
  resolves("cuMemAlloc", 3020, 0, "cuMemAlloc_v2");
  resolves("cuMemAlloc", 12090, 0, "cuMemAlloc_v2");
  resolves("cuDeviceTotalMem", 3020, 0, "cuDeviceTotalMem_v2");
  resolves("cuDeviceGetUuid", 9020, 0, "cuDeviceGetUuid");
  resolves("cuDeviceGetUuid", 11040, 0, "cuDeviceGetUuid_v2");
  resolves("cuCtxDestroy", 4000, 0, "cuCtxDestroy_v2");
  resolves("cuStreamDestroy", 4000, 0, "cuStreamDestroy_v2");
  resolves("cuMemcpyHtoD", 3020, 0, "cuMemcpyHtoD_v2");
  /* Per-thread default stream: the same functions here. */
  resolves("cuMemcpyHtoD", 7000, 2, "cuMemcpyHtoD_v2");
  resolves("cuLaunchKernel", 7000, 2, "cuLaunchKernel");
  resolves("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2");
  resolves("cuModuleGetLoadingMode", 11070, 0, "cuModuleGetLoadingMode");
  /* A stub is still found. */
  resolves("cuMemCreate", 10020, 0, "cuMemCreate");
  /* NVIDIA's runtime passes a NULL status. */
  void *fn = NULL;
  OK(cuGetProcAddress_v2("cuInit", &fn, 2000, 0, NULL));
  EXPECT(fn == dlsym(RTLD_DEFAULT, "cuInit"), "cuInit with a NULL status");
  int status = -1;
  IS(cuGetProcAddress_v2("cuNoSuchFunction", &fn, 12090, 0, &status), 500);
  EXPECT(status == 1 && fn == NULL, "unknown name: status %d (want 1, SYMBOL_NOT_FOUND), fn %p", status, fn);
  IS(cuGetProcAddress_v2("cuCtxCreate", &fn, 1000, 0, &status), 500);
  EXPECT(status == 2, "version too low: status %d (want 2, VERSION_NOT_SUFFICIENT)", status);
  IS(cuGetProcAddress_v2("cuInit", &fn, 12090, 8, &status), 1);
  IS(cuGetProcAddress_v2(NULL, &fn, 12090, 0, &status), 1);
}

static void errors(void) {
  const char *s = NULL;
  OK(cuGetErrorName(100, &s));
  EXPECT(s && strcmp(s, "CUDA_ERROR_NO_DEVICE") == 0, "name of 100: %s", s ? s : "(null)");
  OK(cuGetErrorString(801, &s));
  EXPECT(s && strcmp(s, "operation not supported") == 0, "string of 801: %s", s ? s : "(null)");
  OK(cuGetErrorString(0, &s));
  EXPECT(s && strcmp(s, "no error") == 0, "string of 0: %s", s ? s : "(null)");
  IS(cuGetErrorName(12345, &s), 1);
  EXPECT(s == NULL, "unknown code's name is NULL");
}

static void beforeInit(void) {
  int n = -1;
  IS(cuDeviceGetCount(&n), 3);
  EXPECT(n == 0, "count before cuInit: %d", n);
  CUdeviceptr d;
  IS(cuMemAlloc_v2(&d, 16), 3);
  int v = 0;
  OK(cuDriverGetVersion(&v));
  EXPECT(v == 12080, "version before cuInit: %d", v);
  IS(cuInit(1), 1);
}

static void attributes(CUdevice dev) {
  static const struct {
    int attribute, value;
  } table[] = {{1, 1024},       {2, 1024},  {3, 1024},   {4, 64},      {5, 2147483647}, {6, 65535},
               {7, 65535},      {8, 49152}, {10, 32},    {12, 65536},  {16, 132},       {18, 0},
               {37, 5120},      {38, 52428800}, {41, 1}, {75, 9},      {76, 0},         {97, 232448},
               {102, 0},        {50, 0},    {33, 0},     {34, 5}};
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    int v = -12345;
    OK(cuDeviceGetAttribute(&v, table[i].attribute, dev));
    EXPECT(v == table[i].value, "attribute %d = %d, want %d", table[i].attribute, v, table[i].value);
  }
  for (int a = 1; a < 144; a++) {
    int v;
    IS(cuDeviceGetAttribute(&v, a, dev), 0);
  }
  int v;
  IS(cuDeviceGetAttribute(&v, 144, dev), 1);
  IS(cuDeviceGetAttribute(&v, 0, dev), 1);
  IS(cuDeviceGetAttribute(&v, 1, 1), 101);
}

static void identity(CUdevice dev) {
  char pci[32];
  OK(cuDeviceGetPCIBusId(pci, sizeof pci, dev));
  EXPECT(strcmp(pci, "0000:00:05.0") == 0, "PCI bus id %s", pci);
  CUdevice other = -1;
  OK(cuDeviceGetByPCIBusId(&other, "0000:00:05.0"));
  EXPECT(other == 0, "by PCI bus id");
  OK(cuDeviceGetByPCIBusId(&other, "00000000:00:05.0"));
  OK(cuDeviceGetByPCIBusId(&other, "00:05.0"));
  IS(cuDeviceGetByPCIBusId(&other, "0000:00:06.0"), 101);
  IS(cuDeviceGetByPCIBusId(&other, "nonsense"), 1);
  char small[5];
  OK(cuDeviceGetName(small, sizeof small, dev));
  EXPECT(strlen(small) == 4, "name cut to its buffer: '%s'", small);
  CUuuid a, b;
  OK(cuDeviceGetUuid(&a, dev));
  OK(cuDeviceGetUuid_v2(&b, dev));
  EXPECT(memcmp(&a, &b, 16) == 0, "UUID and UUID_v2 agree");
  unsigned int small_total = 0;
  OK(cuDeviceTotalMem(&small_total, dev));
  size_t total = 0;
  OK(cuDeviceTotalMem_v2(&total, dev));
  EXPECT(small_total == (total > 0xffffffffu ? 0xffffffffu : total), "legacy cuDeviceTotalMem clamps: %u", small_total);
  CUdevice d;
  IS(cuDeviceGet(&d, 1), 101);
  int mode = 0;
  OK(cuModuleGetLoadingMode(&mode));
  /* Libraries load at first use, as CUDA's default (CUDA_MODULE_LOADING unset). */
  EXPECT(mode == 2, "loading mode %d (want CU_MODULE_LAZY_LOADING)", mode);
}

static void contexts(CUdevice dev) {
  CUcontext a, b, c, cur, primary1, primary2;
  OK(cuCtxCreate_v2(&a, 0, dev));
  OK(cuCtxGetCurrent(&cur));
  EXPECT(cur == a, "a new context is current");
  CUctxCreateParams params = {NULL, 0, NULL};
  OK(cuCtxCreate_v4(&b, &params, 0, dev));
  OK(cuCtxCreate_v4(&c, NULL, 0, dev));
  OK(cuCtxPopCurrent_v2(&cur));
  EXPECT(cur == c, "pop gives the top");
  OK(cuCtxGetCurrent(&cur));
  EXPECT(cur == b, "then the one below");
  OK(cuCtxSetCurrent(a));
  OK(cuCtxGetCurrent(&cur));
  EXPECT(cur == a, "set replaces the top");
  OK(cuCtxPushCurrent_v2(c));
  CUdevice d = -1;
  OK(cuCtxGetDevice(&d));
  EXPECT(d == 0, "context device %d", d);
  IS(cuCtxCreate_v3(&cur, (void *)&params, 1, 0, dev), 224);
  OK(cuDevicePrimaryCtxRetain(&primary1, dev));
  OK(cuDevicePrimaryCtxRetain(&primary2, dev));
  EXPECT(primary1 == primary2 && primary1 != a, "the primary context is one handle");
  unsigned int flags;
  int active = 0;
  OK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
  EXPECT(active == 1, "primary active");
  IS(cuCtxDestroy_v2(primary1), 201);
  OK(cuDevicePrimaryCtxRelease_v2(dev));
  OK(cuDevicePrimaryCtxRelease_v2(dev));
  OK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
  EXPECT(active == 0, "primary inactive after release");
  OK(cuCtxDestroy_v2(c));
  OK(cuCtxDestroy_v2(b));
  IS(cuCtxDestroy_v2(b), 201);
  IS(cuCtxSetCurrent((CUcontext)0x1234), 201);
  OK(cuCtxSetCurrent(a));
  /* `a` stays current for the rest. */
}

static void memory(void) {
  size_t freeBefore, total, freeAfter;
  OK(cuMemGetInfo_v2(&freeBefore, &total));
  CUdeviceptr d, e;
  enum { N = 1 << 20 };
  OK(cuMemAlloc_v2(&d, N));
  OK(cuMemAlloc_v2(&e, N));
  EXPECT(d % 256 == 0 && e % 256 == 0, "256-byte alignment");
  OK(cuMemGetInfo_v2(&freeAfter, &total));
  EXPECT(freeAfter <= freeBefore - 2 * N, "free memory drops: %zu -> %zu", freeBefore, freeAfter);
  IS(cuMemAlloc_v2(&d, 0), 1);
  unsigned char *in = malloc(N), *out = malloc(N);
  for (int i = 0; i < N; i++) in[i] = (unsigned char)(i * 7 + 3);
  OK(cuMemcpyHtoD_v2(d, in, N));
  OK(cuMemcpyDtoD_v2(e, d, N));
  memset(out, 0, N);
  OK(cuMemcpyDtoH_v2(out, e, N));
  EXPECT(memcmp(in, out, N) == 0, "HtoD, DtoD, DtoH");
  OK(cuMemsetD8_v2(e, 0xab, N));
  OK(cuMemcpyDtoH_v2(out, e, 16));
  EXPECT(out[0] == 0xab && out[15] == 0xab, "memset D8");
  OK(cuMemsetD16_v2(e, 0x1234, 8));
  uint16_t h[9];
  OK(cuMemcpyDtoH_v2(h, e, sizeof h));
  EXPECT(h[0] == 0x1234 && h[7] == 0x1234 && h[8] == 0xabab, "memset D16");
  OK(cuMemsetD32_v2(e, 0xdeadbeef, 4));
  uint32_t w[5];
  OK(cuMemcpyDtoH_v2(w, e, sizeof w));
  EXPECT(w[0] == 0xdeadbeef && w[3] == 0xdeadbeef && w[4] == 0xabababab, "memset D32");
  IS(cuMemcpyHtoD_v2(0x10, in, 16), 400);
  IS(cuMemcpyHtoDAsync_v2(d, in, 16, (CUstream)0x999), 400);
  OK(cuMemcpyHtoDAsync_v2(d, in, 16, NULL));
  OK(cuMemFree_v2(d));
  OK(cuMemFree_v2(e));
  OK(cuMemFree_v2(0));
  free(in);
  free(out);

  void *host = NULL;
  OK(cuMemAllocHost_v2(&host, 10000));
  EXPECT(host && (uintptr_t)host % 4096 == 0, "host memory page-aligned");
  memset(host, 1, 10000);
  OK(cuMemFreeHost(host));
  IS(cuMemFreeHost(host), 1);

  /* Page-locked memory is shared with the device where it can be (2.4, a
     BAR of this process's own): each copy is then the device's one copy.
     A round trip through two such buffers, not a whole number of pages. */
  enum { P = 3 * 1024 * 1024 + 4321 };
  unsigned char *pinnedIn = NULL, *pinnedOut = NULL;
  OK(cuMemAllocHost_v2((void **)&pinnedIn, P));
  OK(cuMemHostAlloc((void **)&pinnedOut, P, 0));
  for (int i = 0; i < P; i++) pinnedIn[i] = (unsigned char)(i * 7 + 3);
  memset(pinnedOut, 0, P);
  CUdeviceptr viaPinned;
  OK(cuMemAlloc_v2(&viaPinned, P));
  OK(cuMemcpyHtoD_v2(viaPinned, pinnedIn, P));
  OK(cuMemcpyDtoH_v2(pinnedOut, viaPinned, P));
  EXPECT(memcmp(pinnedIn, pinnedOut, P) == 0, "a round trip through page-locked memory");
  OK(cuMemcpyDtoH_v2(pinnedOut + 1000, viaPinned + 5, 100000)); /* inside it, at odd offsets */
  EXPECT(memcmp(pinnedIn + 5, pinnedOut + 1000, 100000) == 0, "a part of page-locked memory");
  OK(cuMemFree_v2(viaPinned));
  OK(cuMemFreeHost(pinnedIn));
  OK(cuMemFreeHost(pinnedOut));
  IS(cuMemFreeHost(pinnedOut), 1);

  OK(cuMemHostAlloc(&host, 4096, 1));

  /* Registered host memory (cuMemHostRegister): validated and recorded;
     copies from and to it work as from any host memory. */
  enum { R = 3 * 4096 };
  unsigned char *registered = aligned_alloc(4096, R);
  for (int i = 0; i < R; i++) registered[i] = (unsigned char)(i * 13 + 1);
  IS(cuMemHostRegister_v2(NULL, R, 0), 1);
  IS(cuMemHostRegister_v2(registered, 0, 0), 1);
  IS(cuMemHostRegister_v2(registered, R, 0x10), 1); /* past CU_MEMHOSTREGISTER_READ_ONLY */
  OK(cuMemHostRegister_v2(registered, R, 0x01 | 0x02 | 0x08));
  IS(cuMemHostRegister_v2(registered + 4096, 4096, 0), 712); /* inside it */
  IS(cuMemHostRegister(registered - 4096, 8192, 0), 712);    /* the legacy name; overlapping its start */
  IS(cuMemHostRegister_v2(host, 4096, 0), 712);              /* cuMemHostAlloc's memory is page-locked already */
  unsigned int memoryType = 0;
  OK(cuPointerGetAttribute(&memoryType, 2, (CUdeviceptr)(uintptr_t)(registered + 100)));
  EXPECT(memoryType == 1, "registered memory is CU_MEMORYTYPE_HOST: %u", memoryType);
  CUdeviceptr viaRegistered;
  OK(cuMemAlloc_v2(&viaRegistered, R));
  /* The boolean attributes are written as whole C ints: cudart reads
     IS_MANAGED (8) that wide without clearing it first. */
  unsigned int managed = 0xffffffffu, syncMemops = 0xffffffffu;
  OK(cuPointerGetAttribute(&managed, 8, viaRegistered));
  OK(cuPointerGetAttribute(&syncMemops, 6, viaRegistered));
  EXPECT(managed == 0 && syncMemops == 1, "IS_MANAGED %#x, SYNC_MEMOPS %#x as whole ints", managed, syncMemops);
  OK(cuMemcpyHtoD_v2(viaRegistered, registered, R));
  unsigned char *back = malloc(R);
  OK(cuMemcpyDtoH_v2(back, viaRegistered, R));
  EXPECT(memcmp(back, registered, R) == 0, "a round trip through registered memory");
  IS(cuMemHostUnregister(registered + 4096), 713);
  OK(cuMemHostUnregister(registered));
  IS(cuMemHostUnregister(registered), 713);
  OK(cuMemHostRegister(registered + 4096, 4096, 0)); /* free again */
  OK(cuMemHostUnregister(registered + 4096));
  OK(cuMemFree_v2(viaRegistered));
  free(back);
  free(registered);
  OK(cuMemFreeHost(host));
}

/* The project's kernels as PTX (fill, vector_add, saxpy, scale, reduce_sum,
 * matmul; tools/selftest-kernels.cu), generated by tools/gen-selftest-ptx. */
#include "selftest_kernels.h"
#define image selftest_ptx

static void kernels(void) {
  CUmodule m;
  OK(cuModuleLoadData(&m, image));
  CUfunction add, fill, saxpy, sum, none;
  OK(cuModuleGetFunction(&add, m, "vector_add"));
  OK(cuModuleGetFunction(&fill, m, "fill"));
  OK(cuModuleGetFunction(&saxpy, m, "saxpy"));
  OK(cuModuleGetFunction(&sum, m, "reduce_sum"));
  IS(cuModuleGetFunction(&none, m, "no_such_kernel"), 500);
  /* CUDA 12.4's enumeration: every kernel, as the handles cuModuleGetFunction gives. */
  unsigned functionCount = 0;
  OK(cuModuleGetFunctionCount(&functionCount, m));
  EXPECT(functionCount == 6, "6 selftest kernels, not %u", functionCount);
  CUfunction all[6] = {0};
  IS(cuModuleEnumerateFunctions(all, 5, m), 1);
  IS(cuModuleGetFunctionCount(NULL, m), 1);
  IS(cuModuleGetFunctionCount(&functionCount, (CUmodule)0x42), 400);
  OK(cuModuleEnumerateFunctions(all, 6, m));
  int seen = 0;
  for (int i = 0; i < 6; i++) seen += (all[i] == add) + (all[i] == fill) + (all[i] == saxpy) + (all[i] == sum);
  EXPECT(seen == 4, "cuModuleEnumerateFunctions gives cuModuleGetFunction's handles (%d of 4)", seen);
  CUmodule bad;
  /* An ELF header alone (a 64-byte cubin with no sections): sized, sent, and
     refused by the device, which runs PTX only: CUDA_ERROR_NO_BINARY_FOR_GPU. */
  static const unsigned char elf[64] = {0x7f, 'E', 'L', 'F', 2, 1, 1};
  IS(cuModuleLoadData(&bad, elf), 209);
  /* 1.x's text image of built-in kernels is no image now: refused before it is sent. */
  IS(cuModuleLoadData(&bad, "vgpu-module 1\nkernel fill\n"), 200);

  enum { N = 1000 };
  CUdeviceptr x, y, out;
  OK(cuMemAlloc_v2(&x, 4 * N));
  OK(cuMemAlloc_v2(&y, 4 * N));
  OK(cuMemAlloc_v2(&out, 4));
  CUstream s;
  OK(cuStreamCreate(&s, 0));
  /* fill x with 2.0 (kernelParams) */
  float two = 2.0f;
  unsigned n = N;
  void *fillArgs[] = {&x, &two, &n};
  OK(cuLaunchKernel(fill, (N + 255) / 256, 1, 1, 256, 1, 1, 0, s, fillArgs, NULL));
  /* y = 1.5 everywhere: fill through `extra`, a packed buffer (ptr@0 f32@8 u32@12, as PTX lays it out) */
  struct {
    CUdeviceptr dst;
    float value;
    unsigned n;
  } packed = {y, 1.5f, N};
  size_t size = sizeof packed;
  void *extra[] = {(void *)1, &packed, (void *)2, &size, (void *)0};
  OK(cuLaunchKernel(fill, 4, 1, 1, 256, 1, 1, 0, NULL, NULL, extra));
  /* y = 3 * x + y = 7.5 */
  float three = 3.0f;
  void *saxpyArgs[] = {&three, &x, &y, &n};
  OK(cuLaunchKernel(saxpy, 4, 1, 1, 256, 1, 1, 0, s, saxpyArgs, NULL));
  void *sumArgs[] = {&y, &out, &n};
  /* reduce_sum: one block, a power of two threads. */
  OK(cuLaunchKernel(sum, 1, 1, 1, 1024, 1, 1, 0, s, sumArgs, NULL));
  OK(cuStreamSynchronize(s));
  float total = 0, ys[N];
  OK(cuMemcpyDtoH_v2(&total, out, 4));
  OK(cuMemcpyDtoH_v2(ys, y, sizeof ys));
  EXPECT(ys[0] == 7.5f && ys[N - 1] == 7.5f, "saxpy: %f", ys[0]);
  EXPECT(total == 7500.0f, "reduce_sum: %f", total);

  /* Refusals. */
  IS(cuLaunchKernel(fill, 1, 1, 1, 1025, 1, 1, 0, NULL, fillArgs, NULL), 1);
  IS(cuLaunchKernel(fill, 1, 1, 1, 32, 32, 2, 0, NULL, fillArgs, NULL), 1);
  IS(cuLaunchKernel(fill, 0, 1, 1, 1, 1, 1, 0, NULL, fillArgs, NULL), 1);
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 49153, NULL, fillArgs, NULL), 1);
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), 1);
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, NULL, fillArgs, extra), 1);
  IS(cuLaunchKernel((CUfunction)0x42, 1, 1, 1, 1, 1, 1, 0, NULL, fillArgs, NULL), 400);
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, (CUstream)0x42, fillArgs, NULL), 400);
  size = 8;
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, extra), 1);
  /* (A launch on unallocated memory fails with CUDA_ERROR_ILLEGAL_ADDRESS,
     which is sticky, as CUDA's: the rest of this client could not run.) */

  /* Streams and events. */
  CUevent a, b, untimed;
  OK(cuEventCreate(&a, 0));
  OK(cuEventCreate(&b, 0));
  OK(cuEventCreate(&untimed, 2));
  OK(cuEventRecord(a, s));
  OK(cuLaunchKernel(saxpy, 4, 1, 1, 256, 1, 1, 0, s, saxpyArgs, NULL));
  OK(cuEventRecord(b, s));
  OK(cuEventRecord(untimed, s));
  OK(cuEventSynchronize(b));
  OK(cuEventQuery(b));
  OK(cuStreamQuery(s));
  OK(cuStreamWaitEvent(NULL, b, 0));
  float ms = -1;
  OK(cuEventElapsedTime(&ms, a, b));
  EXPECT(ms >= 0 && ms < 10000, "elapsed %f ms", ms);
  IS(cuEventElapsedTime(&ms, a, untimed), 400);
  OK(cuCtxSynchronize());
  OK(cuEventDestroy_v2(a));
  OK(cuEventDestroy_v2(b));
  OK(cuEventDestroy_v2(untimed));
  IS(cuEventDestroy_v2(a), 400);
  OK(cuStreamDestroy_v2(s));
  IS(cuStreamDestroy_v2(s), 400);

  /* Unloading a module takes its functions with it. */
  OK(cuModuleUnload(m));
  IS(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, NULL, fillArgs, NULL), 400);
  IS(cuModuleUnload(m), 400);
  OK(cuMemFree_v2(x));
  OK(cuMemFree_v2(y));
  OK(cuMemFree_v2(out));
}

/* Copies allocate nothing once this thread has made one; a launch allocates
 * nothing in this library either: what the count shows is the client API's
 * Device.launch (VGPU/Device+Operations.swift, two closure contexts), so the
 * bound for launches is that, and the test prints the figures. */
static void hotPath(void) {
  CUmodule m;
  CUfunction add;
  OK(cuModuleLoadData(&m, image));
  OK(cuModuleGetFunction(&add, m, "vector_add"));
  enum { N = 16384, ROUNDS = 100 };
  static float a[N], b[N], c[N];
  for (int i = 0; i < N; i++) a[i] = (float)i, b[i] = 1.0f;
  CUdeviceptr da, db, dc;
  OK(cuMemAlloc_v2(&da, sizeof a));
  OK(cuMemAlloc_v2(&db, sizeof b));
  OK(cuMemAlloc_v2(&dc, sizeof c));
  unsigned n = N;
  void *args[] = {&da, &db, &dc, &n};
  CUstream s;
  OK(cuStreamCreate(&s, 0));
  int failed = 0;
  uint64_t copies = 0, launches = 0;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < ROUNDS && !failed; i++) {
      uint64_t before = allocations;
      failed |= cuMemcpyHtoD_v2(da, a, sizeof a) | cuMemcpyHtoDAsync_v2(db, b, sizeof b, s);
      uint64_t between = allocations;
      failed |= cuLaunchKernel(add, N / 256, 1, 1, 256, 1, 1, 0, i % 2 ? s : NULL, args, NULL);
      uint64_t after = allocations;
      failed |= cuMemcpyDtoH_v2(c, dc, sizeof c);
      /* The first round warms up (this thread's state, the runtime's metadata caches). */
      if (round == 1) {
        copies += between - before + allocations - after;
        launches += after - between;
      }
    }
  }
  EXPECT(!failed, "hot path calls");
  EXPECT(c[N - 1] == (float)N, "hot path result %f", c[N - 1]);
  EXPECT(copies == 0, "%llu allocations in %d rounds of 3 copies", (unsigned long long)copies, ROUNDS);
  EXPECT(launches <= 2 * ROUNDS, "%llu allocations in %d launches", (unsigned long long)launches, ROUNDS);
  printf("hot path allocations: %llu in %d copies, %llu in %d launches\n", (unsigned long long)copies, 3 * ROUNDS,
         (unsigned long long)launches, ROUNDS);
  OK(cuStreamDestroy_v2(s));
  OK(cuModuleUnload(m));
  OK(cuMemFree_v2(da));
  OK(cuMemFree_v2(db));
  OK(cuMemFree_v2(dc));
}

/* Threads at once, each with its own data, sharing one context and one
 * module: copies and launches from several threads do not mix up. */
enum { THREADS = 4, PER_THREAD = 4096 };
static CUcontext sharedContext;
static CUfunction sharedScale;

static void *worker(void *arg) {
  intptr_t id = (intptr_t)arg;
  static __thread float data[PER_THREAD], back[PER_THREAD];
  if (cuCtxSetCurrent(sharedContext) != 0) return (void *)1;
  CUdeviceptr d;
  if (cuMemAlloc_v2(&d, sizeof data) != 0) return (void *)2;
  intptr_t bad = 0;
  for (int round = 0; round < 50 && !bad; round++) {
    for (int i = 0; i < PER_THREAD; i++) data[i] = (float)(id * 100000 + round * 1000 + i % 1000);
    float factor = (float)(id + 2);
    unsigned n = PER_THREAD;
    void *args[] = {&d, &factor, &n};
    if (cuMemcpyHtoD_v2(d, data, sizeof data) != 0 ||
        cuLaunchKernel(sharedScale, PER_THREAD / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL) != 0 ||
        cuMemcpyDtoH_v2(back, d, sizeof back) != 0)
      bad = 3;
    for (int i = 0; i < PER_THREAD && !bad; i++)
      if (back[i] != data[i] * factor) bad = 4;
  }
  cuMemFree_v2(d);
  return (void *)bad;
}

static void threads(void) {
  CUmodule m;
  OK(cuCtxGetCurrent(&sharedContext));
  OK(cuModuleLoadData(&m, image));
  OK(cuModuleGetFunction(&sharedScale, m, "scale"));
  pthread_t t[THREADS];
  for (intptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
  for (int i = 0; i < THREADS; i++) {
    void *result;
    pthread_join(t[i], &result);
    EXPECT(result == NULL, "thread %d: %ld", i, (long)(intptr_t)result);
  }
  OK(cuModuleUnload(m));
}

static void stubs(void) {
  /* A stub answers CUDA_ERROR_NOT_SUPPORTED; the test counts its stderr lines (one). */
  IS(cuMemCreate(NULL, 0, NULL, 0), 801);
  IS(cuMemCreate(NULL, 0, NULL, 0), 801);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  procAddress();
  errors();
  beforeInit();
  OK(cuInit(0));
  int count = 0;
  OK(cuDeviceGetCount(&count));
  EXPECT(count == 1, "count %d", count);
  CUdevice dev;
  OK(cuDeviceGet(&dev, 0));
  attributes(dev);
  identity(dev);
  contexts(dev);
  memory();
  kernels();
  hotPath();
  threads();
  stubs();
  CUcontext cur;
  OK(cuCtxGetCurrent(&cur));
  OK(cuCtxDestroy_v2(cur));
  printf("%s %d checks, %d failed\n", failures ? "FAILED" : "ok", checks, failures);
  return failures ? 1 : 0;
}
