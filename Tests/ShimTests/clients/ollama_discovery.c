/* GPU discovery the way Ollama does it, against whatever libcuda.so.1 the
 * dynamic loader finds (LD_LIBRARY_PATH): dlopen by name, check the symbols
 * each generation of Ollama requires, then run the v0.12.3 sequence
 * (gpu_info_cuda.c: cuInit, version, count, per device attributes 75/76,
 * UUID, name, cuCtxCreate_v3, cuMemGetInfo_v2, cuCtxDestroy) and the v0.30
 * gpu-discover sequence (cuDeviceTotalMem_v2, cuDeviceGetPCIBusId, INTEGRATED).
 *
 * The v0.30 per-device queries run before the v0.12.3 ones, whose cuCtxDestroy
 * ends the sequence as in Ollama. Then NVML as the runner and gpu-discover
 * ask it (nvmlInit_v2, count, memory info, name, driver version, shutdown).
 *
 * Output: one fact per line, each prefixed "pid=<pid> ", so that the lines of
 * concurrent children can be told apart. With "--children N" it then spawns
 * N copies of itself at once, each discovering on its own, and waits for them;
 * "--burst N" starts N copies at once without discovering itself (Ollama's
 * discovery processes arriving together) and prints "burst N wall_us W".
 * Each discovery ends with "elapsed_us T": main() to done, in this process.
 * Exit status: 0 if everything answered, 1 otherwise. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct {
  unsigned char bytes[16];
} CUuuid;
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
  unsigned long long total, free, used;
} nvmlMemory_t;

/* cuda.h, enum CUdevice_attribute_enum */
#define CU_DEVICE_ATTRIBUTE_INTEGRATED 18
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR 75
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR 76
#define CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED 102

static const char *v0123[] = {"cuInit",          "cuDriverGetVersion", "cuDeviceGetCount", "cuDeviceGet",
                              "cuDeviceGetAttribute", "cuDeviceGetUuid", "cuDeviceGetName", "cuCtxCreate_v3",
                              "cuMemGetInfo_v2", "cuCtxDestroy",       NULL};
/* ggml-cuda (Ollama's runner, v0.12.4 and later) links libcuda.so.1 for its
 * virtual-memory pool; a missing symbol would stop the library loading. */
static const char *runner[] = {"cuDeviceGet",       "cuDeviceGetAttribute", "cuMemGetAllocationGranularity",
                               "cuMemCreate",       "cuMemAddressReserve",  "cuMemMap",
                               "cuMemSetAccess",    "cuMemUnmap",           "cuMemRelease",
                               "cuMemAddressFree",  "cuGetErrorString",     NULL};
static const char *v030[] = {"cuInit",          "cuDriverGetVersion", "cuDeviceGetCount", "cuDeviceGet",
                             "cuDeviceGetAttribute", "cuDeviceGetName", "cuDeviceTotalMem_v2",
                             "cuDeviceGetPCIBusId", NULL};

static int pid;
static unsigned long long started_ns;

static unsigned long long monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}
#define SAY(...)                  \
  do {                            \
    printf("pid=%d ", pid);       \
    printf(__VA_ARGS__);          \
    printf("\n");                 \
    fflush(stdout);               \
  } while (0)

static int check(void *lib, const char *generation, const char **names) {
  int missing = 0;
  for (int i = 0; names[i]; i++)
    if (!dlsym(lib, names[i])) {
      SAY("missing %s %s", generation, names[i]);
      missing = 1;
    }
  if (!missing) SAY("symbols %s ok", generation);
  return missing;
}

/* NVML as Ollama's runner (nvmlInit_v2, memory info, name) and v0.30's
 * gpu-discover (nvmlSystemGetDriverVersion) ask it; then "done". */
static int discover_nvml(void) {
  void *lib = dlopen("libnvidia-ml.so.1", RTLD_LAZY);
  if (!lib) {
    SAY("dlopen nvml failed: %s", dlerror());
    return 1;
  }
  nvmlReturn_t (*nvmlInit_v2)(void) = dlsym(lib, "nvmlInit_v2");
  nvmlReturn_t (*nvmlShutdown)(void) = dlsym(lib, "nvmlShutdown");
  nvmlReturn_t (*nvmlDeviceGetCount_v2)(unsigned *) = dlsym(lib, "nvmlDeviceGetCount_v2");
  nvmlReturn_t (*nvmlDeviceGetHandleByIndex_v2)(unsigned, nvmlDevice_t *) = dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
  nvmlReturn_t (*nvmlDeviceGetMemoryInfo)(nvmlDevice_t, nvmlMemory_t *) = dlsym(lib, "nvmlDeviceGetMemoryInfo");
  nvmlReturn_t (*nvmlDeviceGetName)(nvmlDevice_t, char *, unsigned) = dlsym(lib, "nvmlDeviceGetName");
  nvmlReturn_t (*nvmlSystemGetDriverVersion)(char *, unsigned) = dlsym(lib, "nvmlSystemGetDriverVersion");
  if (!nvmlInit_v2 || !nvmlShutdown || !nvmlDeviceGetCount_v2 || !nvmlDeviceGetHandleByIndex_v2 ||
      !nvmlDeviceGetMemoryInfo || !nvmlDeviceGetName || !nvmlSystemGetDriverVersion) {
    SAY("missing nvml symbols");
    return 1;
  }
  nvmlReturn_t r = nvmlInit_v2();
  if (r != 0) {
    SAY("nvmlInit_v2 err %d", r);
    return 1;
  }
  unsigned count = 0;
  char driver[96] = "";
  if ((r = nvmlDeviceGetCount_v2(&count)) != 0 || (r = nvmlSystemGetDriverVersion(driver, sizeof driver)) != 0) {
    SAY("nvml count/driver err %d", r);
    return 1;
  }
  SAY("nvml count %u driver %s", count, driver);
  for (unsigned i = 0; i < count; i++) {
    nvmlDevice_t dev;
    nvmlMemory_t memory;
    char name[96] = "";
    if ((r = nvmlDeviceGetHandleByIndex_v2(i, &dev)) != 0 || (r = nvmlDeviceGetMemoryInfo(dev, &memory)) != 0 ||
        (r = nvmlDeviceGetName(dev, name, sizeof name)) != 0) {
      SAY("nvml device %u err %d", i, r);
      return 1;
    }
    SAY("nvml device %u total %llu name %s", i, memory.total, name);
  }
  if ((r = nvmlShutdown()) != 0) {
    SAY("nvmlShutdown err %d", r);
    return 1;
  }
  SAY("done");
  SAY("elapsed_us %llu", (monotonic_ns() - started_ns) / 1000);
  return 0;
}

static int discover(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_LAZY);
  if (!lib) {
    SAY("dlopen failed: %s", dlerror());
    return 1;
  }
  int failed = check(lib, "v0.12.3", v0123) | check(lib, "runner", runner) | check(lib, "v0.30", v030);
  if (failed) return 1;

  CUresult (*cuInit)(unsigned int) = dlsym(lib, "cuInit");
  CUresult (*cuDriverGetVersion)(int *) = dlsym(lib, "cuDriverGetVersion");
  CUresult (*cuDeviceGetCount)(int *) = dlsym(lib, "cuDeviceGetCount");
  CUresult (*cuDeviceGet)(CUdevice *, int) = dlsym(lib, "cuDeviceGet");
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = dlsym(lib, "cuDeviceGetAttribute");
  CUresult (*cuDeviceGetUuid)(CUuuid *, CUdevice) = dlsym(lib, "cuDeviceGetUuid");
  CUresult (*cuDeviceGetName)(char *, int, CUdevice) = dlsym(lib, "cuDeviceGetName");
  CUresult (*cuCtxCreate_v3)(CUcontext *, void *, int, unsigned int, CUdevice) = dlsym(lib, "cuCtxCreate_v3");
  CUresult (*cuMemGetInfo_v2)(size_t *, size_t *) = dlsym(lib, "cuMemGetInfo_v2");
  CUresult (*cuCtxDestroy)(CUcontext) = dlsym(lib, "cuCtxDestroy");
  CUresult (*cuDeviceTotalMem_v2)(size_t *, CUdevice) = dlsym(lib, "cuDeviceTotalMem_v2");
  CUresult (*cuDeviceGetPCIBusId)(char *, int, CUdevice) = dlsym(lib, "cuDeviceGetPCIBusId");

  /* Both sequences start alike: cuInit, driver version, device count. */
  CUresult r = cuInit(0);
  if (r != 0) {
    SAY("cuInit err %d", r);
    return 1;
  }
  int version = 0;
  if ((r = cuDriverGetVersion(&version)) != 0) {
    SAY("cuDriverGetVersion err %d", r);
    return 1;
  }
  SAY("driver %d.%d", version / 1000, version % 1000 / 10);
  int count = 0;
  if ((r = cuDeviceGetCount(&count)) != 0) {
    SAY("cuDeviceGetCount err %d", r);
    return 1;
  }
  SAY("count %d", count);
  /* v0.30 */
  for (int i = 0; i < count; i++) {
    CUdevice dev;
    size_t total = 0;
    char pci[64] = "";
    int integrated = -1, vmm = -1;
    if ((r = cuDeviceGet(&dev, i)) != 0 || (r = cuDeviceTotalMem_v2(&total, dev)) != 0 ||
        (r = cuDeviceGetPCIBusId(pci, sizeof pci, dev)) != 0 ||
        (r = cuDeviceGetAttribute(&integrated, CU_DEVICE_ATTRIBUTE_INTEGRATED, dev)) != 0 ||
        (r = cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev)) != 0) {
      SAY("v0.30 sequence err %d", r);
      return 1;
    }
    SAY("device %d totalmem %zu pci %s integrated %d vmm %d", i, total, pci, integrated, vmm);
  }
  /* v0.12.3, per device; its cuCtxDestroy leaves this process holding no
   * context (Ollama's server is in that state when it starts a runner). */
  for (int i = 0; i < count; i++) {
    CUdevice dev;
    if ((r = cuDeviceGet(&dev, i)) != 0) {
      SAY("cuDeviceGet err %d", r);
      return 1;
    }
    int major = 0, minor = 0;
    if ((r = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)) != 0 ||
        (r = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)) != 0) {
      SAY("cuDeviceGetAttribute err %d", r);
      return 1;
    }
    SAY("device %d cc %d.%d", i, major, minor);
    CUuuid u;
    if ((r = cuDeviceGetUuid(&u, dev)) != 0) {
      SAY("cuDeviceGetUuid err %d", r);
      return 1;
    }
    const unsigned char *b = u.bytes;
    SAY("device %d uuid GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", i, b[0], b[1], b[2],
        b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    char name[256];
    if ((r = cuDeviceGetName(name, sizeof name, dev)) != 0) {
      SAY("cuDeviceGetName err %d", r);
      return 1;
    }
    SAY("device %d name %s", i, name);
    CUcontext ctx = NULL;
    if ((r = cuCtxCreate_v3(&ctx, NULL, 0, 0, dev)) != 0) {
      SAY("cuCtxCreate_v3 err %d", r);
      return 1;
    }
    size_t free = 0, total = 0;
    if ((r = cuMemGetInfo_v2(&free, &total)) != 0) {
      SAY("cuMemGetInfo_v2 err %d", r);
      return 1;
    }
    SAY("device %d free %zu total %zu", i, free, total);
    if ((r = cuCtxDestroy(ctx)) != 0) {
      SAY("cuCtxDestroy err %d", r);
      return 1;
    }
  }

  return discover_nvml();
}

/* Starts n copies of this program at once (no arguments) and waits for all. */
static int spawn_and_wait(int n, char **argv) {
  static pid_t kids[256];
  if (n > 256) n = 256;
  char *args[] = {argv[0], NULL};
  int status = 0, started = 0;
  for (; started < n; started++) {
    if (posix_spawn(&kids[started], "/proc/self/exe", NULL, NULL, args, environ) != 0) {
      SAY("spawn failed");
      status = 1;
      break;
    }
  }
  for (int i = 0; i < started; i++) {
    int s = 0;
    waitpid(kids[i], &s, 0);
    if (!WIFEXITED(s) || WEXITSTATUS(s) != 0) status = 1;
  }
  return status;
}

int main(int argc, char **argv) {
  pid = (int)getpid();
  started_ns = monotonic_ns();
  if (argc == 3 && strcmp(argv[1], "--burst") == 0) {
    int status = spawn_and_wait(atoi(argv[2]), argv);
    SAY("burst %d wall_us %llu", atoi(argv[2]), (monotonic_ns() - started_ns) / 1000);
    return status;
  }
  int children = argc == 3 && strcmp(argv[1], "--children") == 0 ? atoi(argv[2]) : 0;
  int status = discover();
  if (children <= 0) return status;
  return spawn_and_wait(children, argv) | status;
}
