/* The library and kernel API (CUDA 12.0+) as cuda.core and numba-cuda use
 * it, on the project's PTX (selftest_kernels.h, from tools/selftest-kernels.cu;
 * its fill(float *dst, float value, unsigned n)):
 * cuLibraryLoadData, cuLibraryGetKernel, a CUkernel passed as a CUfunction
 * (cuda.h allows the cast), cuKernelGetFunction, the parameter layout walked
 * with cuFuncGetParamInfo until CUDA_ERROR_INVALID_VALUE, attributes,
 * occupancy, cuLaunchKernel / cuLaunchKernelEx / cuLaunchCooperativeKernel,
 * cuLink* with one PTX input and with two (a call across them), and the
 * handles dying with their library.
 *
 * Prints "FAIL line N: ..." for every failed check, then "ok <n> checks". */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "selftest_kernels.h" /* the project's PTX (tools/gen-selftest-ptx) */

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUlib_st *CUlibrary;
typedef struct CUkern_st *CUkernel;
typedef struct CUstream_st *CUstream;
typedef struct CUlinkState_st *CUlinkState;

/* cuda.h's CUlaunchAttribute and CUlaunchConfig (CUDA 12.x/13.x, LP64). */
typedef struct {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int cooperative;
    int priority;
    struct {
      unsigned x, y, z;
    } clusterDim;
  } value;
} CUlaunchAttribute;
typedef struct {
  unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
  CUstream hStream;
  CUlaunchAttribute *attrs;
  unsigned numAttrs;
} CUlaunchConfig;
_Static_assert(sizeof(CUlaunchAttribute) == 72, "CUlaunchAttribute is 72 bytes");
_Static_assert(sizeof(CUlaunchConfig) == 56, "CUlaunchConfig is 56 bytes");

CUresult cuInit(unsigned);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, CUdevice);
CUresult cuCtxSynchronize(void);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuLibraryLoadData(CUlibrary *, const void *, void *, void **, unsigned, void *, void **, unsigned);
CUresult cuLibraryUnload(CUlibrary);
CUresult cuLibraryGetKernel(CUkernel *, CUlibrary, const char *);
CUresult cuLibraryGetModule(CUmodule *, CUlibrary);
CUresult cuLibraryGetGlobal(CUdeviceptr *, size_t *, CUlibrary, const char *);
CUresult cuLibraryGetKernelCount(unsigned *, CUlibrary);
CUresult cuLibraryEnumerateKernels(CUkernel *, unsigned, CUlibrary);
CUresult cuLibraryGetManaged(CUdeviceptr *, size_t *, CUlibrary, const char *);
CUresult cuKernelGetFunction(CUfunction *, CUkernel);
CUresult cuKernelGetLibrary(CUlibrary *, CUkernel);
CUresult cuKernelGetName(const char **, CUkernel);
CUresult cuKernelGetAttribute(int *, int, CUkernel, CUdevice);
CUresult cuKernelGetParamInfo(CUkernel, size_t, size_t *, size_t *);
CUresult cuKernelGetParamCount(CUkernel, size_t *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleUnload(CUmodule);
CUresult cuFuncGetParamInfo(CUfunction, size_t, size_t *, size_t *);
CUresult cuFuncGetParamCount(CUfunction, size_t *);
CUresult cuFuncGetAttribute(int *, int, CUfunction);
CUresult cuFuncSetAttribute(CUfunction, int, int);
CUresult cuFuncSetCacheConfig(CUfunction, int);
CUresult cuFuncGetName(const char **, CUfunction);
CUresult cuFuncGetModule(CUmodule *, CUfunction);
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *, CUfunction, int, size_t);
CUresult cuOccupancyMaxPotentialBlockSize(int *, int *, CUfunction, size_t (*)(int), size_t, int);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   CUstream, void **);
CUresult cuLinkCreate_v2(unsigned, int *, void **, CUlinkState *);
CUresult cuLinkAddData_v2(CUlinkState, int, void *, size_t, const char *, unsigned, int *, void **);
CUresult cuLinkComplete(CUlinkState, void **, size_t *);
CUresult cuLinkDestroy(CUlinkState);
CUresult cuGetProcAddress_v2(const char *, void **, int, unsigned long long, int *);

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
#define IS(call, want)                                         \
  do {                                                         \
    CUresult r_ = (call);                                      \
    EXPECT(r_ == (want), "%s = %d, want %d", #call, r_, want); \
  } while (0)

enum { N = 1000 };
static float host[N];

/* Every element of the device buffer equals v. */
static int filledWith(CUdeviceptr d, float v) {
  memset(host, 0, sizeof host);
  if (cuMemcpyDtoH_v2(host, d, sizeof host) != 0) return 0;
  for (int i = 0; i < N; i++)
    if (host[i] != v) return 0;
  return 1;
}

static const char ptx[] =
    ".version 8.8\n.target sm_52\n.address_size 64\n"
    ".visible .entry noop()\n{\n  ret;\n}\n";

int main(void) {
  CUdevice dev;
  CUcontext ctx;
  OK(cuInit(0));
  OK(cuDeviceGet(&dev, 0));
  OK(cuCtxCreate_v2(&ctx, 0, dev));

  /* cuda-bindings finds these by name and version. */
  void *fn;
  int status;
  OK(cuGetProcAddress_v2("cuLibraryGetKernel", &fn, 12000, 0, &status));
  OK(cuGetProcAddress_v2("cuKernelGetParamCount", &fn, 13020, 0, &status));
  OK(cuGetProcAddress_v2("cuLaunchKernelEx", &fn, 12090, 0, &status));

  CUlibrary lib;
  OK(cuLibraryLoadData(&lib, selftest_ptx, NULL, NULL, 0, NULL, NULL, 0));
  CUkernel kernel;
  OK(cuLibraryGetKernel(&kernel, lib, "fill"));
  CUkernel again;
  OK(cuLibraryGetKernel(&again, lib, "fill"));
  EXPECT(again == kernel, "the same name gives the same kernel");
  IS(cuLibraryGetKernel(&again, lib, "no_such_kernel"), 500);

  /* A kernel is a function here: cuKernelGetFunction, the library's module and cuModuleGetFunction agree. */
  CUfunction f;
  OK(cuKernelGetFunction(&f, kernel));
  EXPECT((void *)f == (void *)kernel, "cuKernelGetFunction gives the kernel's own handle");
  CUmodule mod;
  OK(cuLibraryGetModule(&mod, lib));
  CUfunction viaModule;
  OK(cuModuleGetFunction(&viaModule, mod, "fill"));
  EXPECT(viaModule == f, "cuModuleGetFunction on the library's module gives the same handle");
  CUlibrary owner;
  OK(cuKernelGetLibrary(&owner, kernel));
  EXPECT(owner == lib, "cuKernelGetLibrary");
  CUmodule fmod;
  OK(cuFuncGetModule(&fmod, (CUfunction)kernel));
  EXPECT(fmod == mod, "cuFuncGetModule");
  const char *name = NULL;
  OK(cuKernelGetName(&name, kernel));
  EXPECT(name && strcmp(name, "fill") == 0, "cuKernelGetName: %s", name ? name : "(null)");
  OK(cuFuncGetName(&name, f));
  EXPECT(name && strcmp(name, "fill") == 0, "cuFuncGetName: %s", name ? name : "(null)");

  /* fill(float *dst @0, float value @8, unsigned n @12): walk until CUDA_ERROR_INVALID_VALUE. */
  size_t want[][2] = {{0, 8}, {8, 4}, {12, 4}};
  size_t i = 0, offset, size;
  CUresult r;
  while ((r = cuFuncGetParamInfo((CUfunction)kernel, i, &offset, &size)) == 0) {
    EXPECT(i < 3 && offset == want[i][0] && size == want[i][1], "param %zu at %zu, %zu bytes", i, offset, size);
    i++;
  }
  EXPECT(r == 1 && i == 3, "the walk ends with CUDA_ERROR_INVALID_VALUE after 3 parameters: %d after %zu", r, i);
  OK(cuKernelGetParamInfo(kernel, 2, &offset, &size));
  EXPECT(offset == 12 && size == 4, "cuKernelGetParamInfo 2: %zu, %zu", offset, size);
  size_t count = 0;
  OK(cuFuncGetParamCount(f, &count));
  EXPECT(count == 3, "cuFuncGetParamCount %zu", count);
  OK(cuKernelGetParamCount(kernel, &count));
  EXPECT(count == 3, "cuKernelGetParamCount %zu", count);

  /* Attributes (CUfunction_attribute): from what the device reported. */
  int value = -1;
  OK(cuFuncGetAttribute(&value, 0, f));
  EXPECT(value == 1024, "MAX_THREADS_PER_BLOCK %d", value);
  OK(cuKernelGetAttribute(&value, 4, kernel, dev));
  EXPECT(value > 0 && value <= 32, "NUM_REGS %d (the PTX's registers)", value);
  OK(cuFuncGetAttribute(&value, 5, f));
  EXPECT(value == 75, "PTX_VERSION %d (the PTX's .target sm_75: its virtual architecture)", value);
  OK(cuFuncGetAttribute(&value, 6, f));
  EXPECT(value == 90, "BINARY_VERSION %d (the device's 9.0, as a driver that JIT-compiles the PTX reports it)", value);
  OK(cuFuncGetAttribute(&value, 8, f));
  EXPECT(value == 49152, "MAX_DYNAMIC_SHARED_SIZE_BYTES %d", value);
  IS(cuFuncGetAttribute(&value, 99, f), 1);
  IS(cuKernelGetAttribute(&value, 0, kernel, 1), 101);
  OK(cuFuncSetAttribute(f, 8, 100000));
  OK(cuFuncGetAttribute(&value, 8, f));
  EXPECT(value == 100000, "MAX_DYNAMIC_SHARED_SIZE_BYTES after set %d", value);
  IS(cuFuncSetAttribute(f, 8, 300000), 1);
  IS(cuFuncSetAttribute(f, 0, 1), 1);
  OK(cuFuncSetCacheConfig(f, 1));

  /* Occupancy on an H100: 2048 threads and 32 blocks per SM, 132 SMs. */
  int blocks = -1, minGrid = -1, blockSize = -1;
  OK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 256, 0));
  EXPECT(blocks == 8, "256-thread blocks per SM %d", blocks);
  OK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 32, 0));
  EXPECT(blocks == 32, "32-thread blocks per SM %d", blocks);
  OK(cuOccupancyMaxPotentialBlockSize(&minGrid, &blockSize, f, NULL, 0, 0));
  EXPECT(blockSize == 1024 && minGrid == 264, "potential block size %d, grid %d", blockSize, minGrid);

  /* Launches: a CUkernel cast to CUfunction, cuLaunchKernelEx with attributes, cooperative. */
  CUdeviceptr d;
  OK(cuMemAlloc_v2(&d, sizeof host));
  float v = 2.5f;
  unsigned n = N;
  void *args[] = {&d, &v, &n};
  OK(cuLaunchKernel((CUfunction)kernel, (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
  EXPECT(filledWith(d, 2.5f), "cuLaunchKernel with a CUkernel: %f", host[0]);

  CUlaunchAttribute attrs[3];
  memset(attrs, 0, sizeof attrs);
  attrs[0].id = 8; /* PRIORITY: nothing to prioritise against, accepted */
  attrs[0].value.priority = 0;
  attrs[1].id = 2; /* COOPERATIVE */
  attrs[1].value.cooperative = 1;
  attrs[2].id = 4; /* CLUSTER_DIMENSION 1x1x1: no cluster */
  attrs[2].value.clusterDim.x = attrs[2].value.clusterDim.y = attrs[2].value.clusterDim.z = 1;
  CUlaunchConfig config = {(N + 127) / 128, 1, 1, 128, 1, 1, 0, NULL, attrs, 3};
  v = 3.5f;
  OK(cuLaunchKernelEx(&config, (CUfunction)kernel, args, NULL));
  EXPECT(filledWith(d, 3.5f), "cuLaunchKernelEx: %f", host[0]);
  attrs[2].value.clusterDim.x = 2;
  IS(cuLaunchKernelEx(&config, f, args, NULL), 801);
  config.numAttrs = 0;
  config.sharedMemBytes = 100000; /* opted in above */
  v = 4.5f;
  OK(cuLaunchKernelEx(&config, f, args, NULL));
  EXPECT(filledWith(d, 4.5f), "cuLaunchKernelEx with 100000 bytes of dynamic shared memory: %f", host[0]);
  config.sharedMemBytes = 100001;
  IS(cuLaunchKernelEx(&config, f, args, NULL), 1);
  IS(cuLaunchKernelEx(NULL, f, args, NULL), 1);

  v = 5.5f;
  OK(cuLaunchCooperativeKernel(f, (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args));
  EXPECT(filledWith(d, 5.5f), "cuLaunchCooperativeKernel: %f", host[0]);
  /* More blocks than the device holds at once (8 per SM × 132). */
  IS(cuLaunchCooperativeKernel(f, 8 * 132 + 1, 1, 1, 256, 1, 1, 0, NULL, args), 720);
  OK(cuCtxSynchronize());

  /* The library's kernels, in the image's order: the selftest PTX holds six. */
  unsigned kernels = 0;
  OK(cuLibraryGetKernelCount(&kernels, lib));
  EXPECT(kernels == 6, "cuLibraryGetKernelCount: %u", kernels);
  CUkernel all[6];
  IS(cuLibraryEnumerateKernels(all, 5, lib), 1);
  OK(cuLibraryEnumerateKernels(all, 6, lib));
  EXPECT(all[0] == kernel, "the first kernel is fill, the same handle as cuLibraryGetKernel's");
  /* What the device cannot tell. */
  CUdeviceptr global;
  size_t bytes;
  IS(cuLibraryGetGlobal(&global, &bytes, lib, "no_such_variable"), 500);
  IS(cuLibraryGetManaged(&global, &bytes, lib, "no_such_variable"), 801);

  /* Unloading the library takes its kernels with it. */
  OK(cuLibraryUnload(lib));
  IS(cuLaunchKernel((CUfunction)kernel, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL), 400);
  IS(cuKernelGetFunction(&f, kernel), 400);
  IS(cuLibraryUnload(lib), 400);

  /* cuLink* with one PTX input (numba-cuda's path): the PTX comes back, NUL-terminated. */
  char errorLog[256] = "untouched", infoLog[256] = "untouched";
  int options[] = {3, 4, 5, 6};
  void *values[] = {infoLog, (void *)(uintptr_t)sizeof infoLog, errorLog, (void *)(uintptr_t)sizeof errorLog};
  CUlinkState link;
  OK(cuLinkCreate_v2(4, options, values, &link));
  OK(cuLinkAddData_v2(link, 1, (void *)ptx, strlen(ptx), "noop.ptx", 0, NULL, NULL));
  void *cubin = NULL;
  size_t cubinSize = 0;
  OK(cuLinkComplete(link, &cubin, &cubinSize));
  EXPECT(cubin && cubinSize == strlen(ptx) + 1 && memcmp(cubin, ptx, sizeof ptx) == 0, "linked image of %zu bytes",
         cubinSize);
  EXPECT(infoLog[0] == 0 && errorLog[0] == 0 && values[1] == NULL, "empty logs");
  /* The device judges it. */
  CUmodule linked;
  r = cuModuleLoadData(&linked, cubin);
  EXPECT(r == 0 || r == 200 || r == 209 || r == 218, "the linked PTX reaches the device: %d", r);
  OK(cuLinkDestroy(link));
  IS(cuLinkDestroy(link), 400);

  /* Two PTX inputs (numba's kernel and a `link=[...]` file): the kernel calls a
   * function only the second defines, declared .extern in the first. Linked,
   * loaded and launched, it gives twice its argument. */
  static const char caller[] =
      ".version 7.5\n.target sm_75\n.address_size 64\n"
      ".extern .func (.param .b32 ret) twice(.param .b32 x);\n"
      ".visible .entry use_twice(.param .u64 out, .param .u32 x)\n{\n"
      "  .reg .b32 %r<4>;\n  .reg .b64 %rd<2>;\n"
      "  ld.param.u64 %rd1, [out];\n  ld.param.u32 %r1, [x];\n"
      "  { .param .b32 p0; st.param.b32 [p0], %r1; .param .b32 r0;\n"
      "    call.uni (r0), twice, (p0); ld.param.b32 %r2, [r0]; }\n"
      "  st.global.u32 [%rd1], %r2;\n  ret;\n}\n";
  static const char callee[] =
      ".version 6.4\n.target sm_52\n.address_size 64\n"
      ".visible .func (.param .b32 ret) twice(.param .b32 x)\n{\n"
      "  .reg .b32 %r<3>;\n  ld.param.u32 %r1, [x];\n  shl.b32 %r2, %r1, 1;\n"
      "  st.param.b32 [ret], %r2;\n  ret;\n}\n";
  values[3] = (void *)(uintptr_t)sizeof errorLog;
  OK(cuLinkCreate_v2(4, options, values, &link));
  OK(cuLinkAddData_v2(link, 1, (void *)caller, sizeof caller, "a.ptx", 0, NULL, NULL));
  OK(cuLinkAddData_v2(link, 1, (void *)callee, strlen(callee), "b.ptx", 0, NULL, NULL));
  OK(cuLinkComplete(link, &cubin, &cubinSize));
  EXPECT(cubin && cubinSize == strlen(caller) + strlen(callee) + 3 && strlen(cubin) == cubinSize - 1,
         "one NUL-terminated PTX of %zu bytes", cubinSize);
  CUmodule two;
  CUfunction useTwice;
  OK(cuModuleLoadData(&two, cubin));
  OK(cuModuleGetFunction(&useTwice, two, "use_twice"));
  unsigned x = 21, got = 0;
  void *twiceArgs[] = {&d, &x};
  OK(cuLaunchKernel(useTwice, 1, 1, 1, 1, 1, 1, 0, NULL, twiceArgs, NULL));
  OK(cuMemcpyDtoH_v2(&got, d, sizeof got));
  EXPECT(got == 42, "the kernel called the other input's function: %u", got);
  OK(cuModuleUnload(two));
  OK(cuLinkDestroy(link));

  /* PTX with a cubin needs a device linker this driver does not have. (The
   * successful link wrote the log sizes back as 0.) */
  values[1] = (void *)(uintptr_t)sizeof infoLog;
  values[3] = (void *)(uintptr_t)sizeof errorLog;
  OK(cuLinkCreate_v2(4, options, values, &link));
  OK(cuLinkAddData_v2(link, 1, (void *)ptx, sizeof ptx, "a.ptx", 0, NULL, NULL));
  OK(cuLinkAddData_v2(link, 0, (void *)ptx, sizeof ptx, "b.cubin", 0, NULL, NULL));
  IS(cuLinkComplete(link, &cubin, &cubinSize), 801);
  EXPECT(strstr(errorLog, "a.ptx: PTX, b.cubin: cubin") != NULL, "the error log says why: %s", errorLog);
  IS(cuLinkAddData_v2(link, 3, (void *)ptx, sizeof ptx, "c.o", 0, NULL, NULL), 801);
  OK(cuLinkDestroy(link));

  /* CUDA's device runtime (libcudadevrt.a, an `ar` archive; here one that
   * has its member's name) is taken as a library: the PTX engine provides the
   * grid-wide sync numba's cg.this_grid().sync() calls, in a cooperative
   * launch. Each thread writes, the grid syncs, each reads another block's. */
  static const char devrt[] = "!<arch>\n//                                              24        `\n"
                              "cuda_device_runtime.o/\n\n";
  static const char gridSync[] =
      ".version 7.5\n.target sm_75\n.address_size 64\n"
      ".extern .func (.param .b64 r) cudaCGGetIntrinsicHandle(.param .b32 s);\n"
      ".extern .func (.param .b32 r) cudaCGSynchronize(.param .b64 h, .param .b32 f);\n"
      ".visible .entry exchange(.param .u64 a, .param .u64 b)\n{\n"
      "  .reg .b32 %r<8>;\n  .reg .b64 %rd<10>;\n"
      "  ld.param.u64 %rd1, [a];\n  ld.param.u64 %rd2, [b];\n"
      "  { .param .b32 p0; st.param.b32 [p0], 1; .param .b64 r0;\n"
      "    call.uni (r0), cudaCGGetIntrinsicHandle, (p0); ld.param.b64 %rd3, [r0]; }\n"
      "  mov.u32 %r1, %ctaid.x;\n  mov.u32 %r2, %ntid.x;\n  mov.u32 %r3, %tid.x;\n  mov.u32 %r6, %nctaid.x;\n"
      "  mad.lo.s32 %r4, %r1, %r2, %r3;\n  add.s32 %r5, %r4, 1;\n"
      "  mul.wide.s32 %rd4, %r4, 4;\n  add.s64 %rd5, %rd1, %rd4;\n  st.global.u32 [%rd5], %r5;\n"
      "  { .param .b64 p0; st.param.b64 [p0], %rd3; .param .b32 p1; st.param.b32 [p1], 0; .param .b32 r0;\n"
      "    call.uni (r0), cudaCGSynchronize, (p0, p1); ld.param.b32 %r7, [r0]; }\n"
      "  mul.lo.s32 %r6, %r6, %r2;\n  add.s32 %r5, %r4, %r2;\n  rem.u32 %r5, %r5, %r6;\n"
      "  mul.wide.u32 %rd6, %r5, 4;\n  add.s64 %rd7, %rd1, %rd6;\n  ld.global.u32 %r5, [%rd7];\n"
      "  add.s64 %rd8, %rd2, %rd4;\n  st.global.u32 [%rd8], %r5;\n  ret;\n}\n";
  values[1] = (void *)(uintptr_t)sizeof infoLog;
  values[3] = (void *)(uintptr_t)sizeof errorLog;
  OK(cuLinkCreate_v2(4, options, values, &link));
  OK(cuLinkAddData_v2(link, 1, (void *)gridSync, sizeof gridSync, "grid.ptx", 0, NULL, NULL));
  OK(cuLinkAddData_v2(link, 4, (void *)devrt, sizeof devrt - 1, "devrt", 0, NULL, NULL));
  OK(cuLinkComplete(link, &cubin, &cubinSize));
  CUmodule synced;
  CUfunction exchange;
  OK(cuModuleLoadData(&synced, cubin));
  OK(cuModuleGetFunction(&exchange, synced, "exchange"));
  CUdeviceptr ga, gb;
  OK(cuMemAlloc_v2(&ga, 128 * 4));
  OK(cuMemAlloc_v2(&gb, 128 * 4));
  void *exchangeArgs[] = {&ga, &gb};
  OK(cuLaunchCooperativeKernel(exchange, 4, 1, 1, 32, 1, 1, 0, NULL, exchangeArgs));
  unsigned seen[128];
  OK(cuMemcpyDtoH_v2(seen, gb, sizeof seen));
  int right = 1;
  for (int i = 0; i < 128; i++) right &= seen[i] == (unsigned)((i + 32) % 128 + 1);
  EXPECT(right, "after the grid sync each thread saw another block's write: %u %u", seen[0], seen[127]);
  OK(cuModuleUnload(synced));
  OK(cuMemFree_v2(ga));
  OK(cuMemFree_v2(gb));
  OK(cuLinkDestroy(link));

  /* A device-runtime function the engine does not provide is refused at
   * cuLinkComplete, named; so is an archive that is not the device runtime. */
  static const char launchesKernels[] =
      ".version 7.5\n.target sm_75\n.address_size 64\n"
      ".extern .func (.param .b64 r) cudaGetParameterBuffer(.param .b64 a, .param .b64 s);\n"
      ".visible .entry parent()\n{\n  .reg .b64 %rd<3>;\n"
      "  { .param .b64 p0; st.param.b64 [p0], 8; .param .b64 p1; st.param.b64 [p1], 8; .param .b64 r0;\n"
      "    call.uni (r0), cudaGetParameterBuffer, (p0, p1); ld.param.b64 %rd1, [r0]; }\n  ret;\n}\n";
  values[3] = (void *)(uintptr_t)sizeof errorLog;
  OK(cuLinkCreate_v2(4, options, values, &link));
  OK(cuLinkAddData_v2(link, 1, (void *)launchesKernels, sizeof launchesKernels, "cdp.ptx", 0, NULL, NULL));
  OK(cuLinkAddData_v2(link, 4, (void *)devrt, sizeof devrt - 1, "libcudadevrt.a", 0, NULL, NULL));
  IS(cuLinkComplete(link, &cubin, &cubinSize), 801);
  EXPECT(strstr(errorLog, "calls cudaGetParameterBuffer") != NULL, "the error log names it: %s", errorLog);
  static const char otherArchive[] = "!<arch>\nfoo.o/          0           0     0     644     0         `\n";
  IS(cuLinkAddData_v2(link, 4, (void *)otherArchive, sizeof otherArchive - 1, "libfoo.a", 0, NULL, NULL), 801);
  OK(cuLinkDestroy(link));

  /* The context still works. */
  OK(cuMemFree_v2(d));
  OK(cuCtxSynchronize());
  printf("ok %d checks\n", checks);
  return failures != 0;
}
