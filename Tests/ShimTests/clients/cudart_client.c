/* NVIDIA's CUDA runtime, unmodified (libcudart.so.12 from the PyPI wheel
 * nvidia-cuda-runtime-cu12), over the vGPU's libcuda.so.1: built with the
 * system cc against the wheel's headers, linked against its libcudart. Checks
 * what the runtime reports against NVML and the driver API for the same
 * device, then allocates, copies 64 MiB of random data both ways, sets, copies
 * device to device, copies through unified addressing and in 2D, reads pointer
 * attributes, synchronises and frees — and that the device's accounting
 * (NVML's process list, the runtime's free memory) is back where it started.
 * One line per check ("check NAME ok" or "check NAME FAIL ..."), facts as
 * "fact NAME VALUE", "done" at the end; exit status 0 only if all passed.
 *
 *   cudart_client            the checks
 *   cudart_client --used     NVML's memory in use on device 0, nothing else
 *
 *   cc -I<wheel>/include cudart_client.c -L<wheel>/lib -l:libcudart.so.12
 *      -L<shims> -l:libnvidia-ml.so.1 -ldl */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* NVML, as nvml.h declares what is used here. */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
  char busIdLegacy[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
} nvmlPciInfo_t;
typedef struct {
  unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlShutdown(void);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t, nvmlPciInfo_t *);
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t, int *, int *);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);

/* The driver API, as cuda.h declares it, from the libcuda.so.1 the runtime loaded. */
typedef int (*cuDeviceGetName_t)(char *, int, int);
typedef int (*cuDeviceTotalMem_t)(size_t *, int);
typedef int (*cuDeviceGetAttribute_t)(int *, int, int);
typedef int (*cuDeviceGetUuid_t)(unsigned char *, int);

static int failures;
#define CHECK(name, ok, ...)                                                                                         \
  do {                                                                                                               \
    if (ok) {                                                                                                        \
      printf("check %s ok\n", name);                                                                                 \
    } else {                                                                                                         \
      failures++;                                                                                                    \
      printf("check %s FAIL: ", name);                                                                               \
      printf(__VA_ARGS__);                                                                                           \
      printf("\n");                                                                                                  \
    }                                                                                                                \
    fflush(stdout);                                                                                                  \
  } while (0)
/* A runtime call that must succeed; stops the program if it does not. */
#define CUDART(call)                                                                                                 \
  do {                                                                                                               \
    cudaError_t e_ = (call);                                                                                         \
    if (e_ != cudaSuccess) {                                                                                         \
      printf("check %s FAIL: %d %s (%s)\n", #call, (int)e_, cudaGetErrorName(e_), cudaGetErrorString(e_));          \
      printf("done\n");                                                                                              \
      exit(1);                                                                                                       \
    }                                                                                                                \
  } while (0)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static nvmlDevice_t nvml_device(void) {
  nvmlDevice_t dev = NULL;
  if (nvmlInit_v2() != 0 || nvmlDeviceGetHandleByIndex_v2(0, &dev) != 0) {
    printf("check nvml FAIL: nvmlInit_v2 / nvmlDeviceGetHandleByIndex_v2(0)\ndone\n");
    exit(1);
  }
  return dev;
}

/* What NVML says this process holds on the device (0 if not listed). */
static unsigned long long nvml_held_by_me(nvmlDevice_t dev) {
  nvmlProcessInfo_t infos[64];
  unsigned int n = 64;
  if (nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, infos) != 0) return ~0ull;
  for (unsigned int i = 0; i < n; i++)
    if (infos[i].pid == (unsigned int)getpid()) return infos[i].usedGpuMemory;
  return 0;
}

static void uuid_string(const unsigned char b[16], char out[48]) {
  snprintf(out, 48, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
           b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--used") == 0) {
    nvmlMemory_t m;
    if (nvmlDeviceGetMemoryInfo(nvml_device(), &m) != 0) return 1;
    printf("used %llu\n", m.used);
    nvmlShutdown();
    return 0;
  }
  double start = now();

  int runtime = 0, driver = 0, count = -1;
  CUDART(cudaRuntimeGetVersion(&runtime));
  CUDART(cudaDriverGetVersion(&driver));
  printf("fact runtime %d\nfact driver %d\n", runtime, driver);
  CUDART(cudaGetDeviceCount(&count));
  CHECK("device_count", count == 1, "cudaGetDeviceCount gave %d, want 1", count);

  /* Properties, against NVML and the driver API. */
  struct cudaDeviceProp prop;
  CUDART(cudaGetDeviceProperties(&prop, 0));
  char uuid[48];
  uuid_string((const unsigned char *)prop.uuid.bytes, uuid);
  printf("fact name %s\nfact total %zu\nfact cc %d.%d\nfact pci %04x:%02x:%02x\nfact uuid %s\n", prop.name,
         prop.totalGlobalMem, prop.major, prop.minor, prop.pciDomainID, prop.pciBusID, prop.pciDeviceID, uuid);

  nvmlDevice_t dev = nvml_device();
  char name[96] = "", nvml_uuid[96] = "";
  nvmlPciInfo_t pci;
  nvmlMemory_t memory;
  int major = -1, minor = -1;
  nvmlReturn_t nr = nvmlDeviceGetName(dev, name, sizeof name) | nvmlDeviceGetUUID(dev, nvml_uuid, sizeof nvml_uuid) |
                    nvmlDeviceGetPciInfo_v3(dev, &pci) | nvmlDeviceGetMemoryInfo(dev, &memory) |
                    nvmlDeviceGetCudaComputeCapability(dev, &major, &minor);
  CHECK("nvml_queries", nr == 0, "an NVML query failed");
  CHECK("props_name_nvml", strcmp(prop.name, name) == 0, "runtime '%s', NVML '%s'", prop.name, name);
  CHECK("props_memory_nvml", prop.totalGlobalMem == memory.total, "runtime %zu, NVML %llu", prop.totalGlobalMem,
        memory.total);
  CHECK("props_cc_nvml", prop.major == major && prop.minor == minor, "runtime %d.%d, NVML %d.%d", prop.major,
        prop.minor, major, minor);
  CHECK("props_pci_nvml",
        (unsigned)prop.pciDomainID == pci.domain && (unsigned)prop.pciBusID == pci.bus &&
            (unsigned)prop.pciDeviceID == pci.device,
        "runtime %x:%x:%x, NVML %x:%x:%x", prop.pciDomainID, prop.pciBusID, prop.pciDeviceID, pci.domain, pci.bus,
        pci.device);
  CHECK("props_uuid_nvml", strcmp(uuid, nvml_uuid) == 0, "runtime %s, NVML %s", uuid, nvml_uuid);

  void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  CHECK("driver_loaded", cuda != NULL, "the runtime did not load libcuda.so.1: %s", dlerror());
  if (cuda) {
    cuDeviceGetName_t getName = (cuDeviceGetName_t)dlsym(cuda, "cuDeviceGetName");
    cuDeviceTotalMem_t totalMem = (cuDeviceTotalMem_t)dlsym(cuda, "cuDeviceTotalMem_v2");
    cuDeviceGetAttribute_t attr = (cuDeviceGetAttribute_t)dlsym(cuda, "cuDeviceGetAttribute");
    cuDeviceGetUuid_t getUuid = (cuDeviceGetUuid_t)dlsym(cuda, "cuDeviceGetUuid_v2");
    char dname[256] = "";
    size_t total = 0;
    int cc[2] = {-1, -1}, loc[3] = {-1, -1, -1};
    unsigned char du[16] = {0};
    char duuid[48];
    /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR 75, _MINOR 76, PCI_DOMAIN_ID 50, PCI_BUS_ID 33, PCI_DEVICE_ID 34. */
    int r = getName(dname, sizeof dname, 0) | totalMem(&total, 0) | attr(&cc[0], 75, 0) | attr(&cc[1], 76, 0) |
            attr(&loc[0], 50, 0) | attr(&loc[1], 33, 0) | attr(&loc[2], 34, 0) | getUuid(du, 0);
    uuid_string(du, duuid);
    CHECK("driver_queries", r == 0, "a driver API query failed");
    CHECK("props_driver",
          strcmp(dname, prop.name) == 0 && total == prop.totalGlobalMem && cc[0] == prop.major &&
              cc[1] == prop.minor && loc[0] == prop.pciDomainID && loc[1] == prop.pciBusID &&
              loc[2] == prop.pciDeviceID && strcmp(duuid, uuid) == 0,
          "driver: '%s' %zu %d.%d %x:%x:%x %s", dname, total, cc[0], cc[1], loc[0], loc[1], loc[2], duuid);
  }

  /* Memory. */
  size_t free0 = 0, total0 = 0;
  CUDART(cudaMemGetInfo(&free0, &total0));
  printf("fact free %zu\n", free0);
  CHECK("mem_get_info", total0 == prop.totalGlobalMem && free0 > 0 && free0 <= total0, "free %zu total %zu", free0,
        total0);
  unsigned long long held0 = nvml_held_by_me(dev);
  CHECK("nvml_held_before", held0 == 0, "NVML lists this process with %llu bytes before cudaMalloc", held0);

  const size_t size = 64u << 20;
  void *a = NULL, *b = NULL, *c = NULL;
  CUDART(cudaMalloc(&a, size));
  CUDART(cudaMalloc(&b, size));
  CUDART(cudaMalloc(&c, size));
  CHECK("malloc", a && b && c && a != b && b != c && a != c, "pointers %p %p %p", a, b, c);
  unsigned long long held = nvml_held_by_me(dev);
  CHECK("nvml_held_after_malloc", held >= 3 * size, "NVML: this process holds %llu bytes, want >= %zu", held,
        3 * size);

  unsigned char *data = malloc(size), *back = malloc(size);
  if (!data || !back) return 1;
  FILE *random = fopen("/dev/urandom", "rb");
  size_t got = random ? fread(data, 1, size, random) : 0;
  if (random) fclose(random);
  CHECK("random_data", got == size, "read %zu of %zu bytes from /dev/urandom", got, size);

  double t = now();
  CUDART(cudaMemcpy(a, data, size, cudaMemcpyHostToDevice));
  double h2d = now() - t;
  t = now();
  CUDART(cudaMemcpy(back, a, size, cudaMemcpyDeviceToHost));
  double d2h = now() - t;
  CHECK("memcpy_roundtrip", memcmp(data, back, size) == 0, "64 MiB came back different");
  printf("fact h2d_mib_s %.0f\nfact d2h_mib_s %.0f\n", 64 / h2d, 64 / d2h);

  CUDART(cudaMemset(b, 0x5a, size));
  CUDART(cudaMemcpy(back, b, size, cudaMemcpyDeviceToHost));
  size_t bad = 0;
  for (size_t i = 0; i < size; i++) bad += back[i] != 0x5a;
  CHECK("memset", bad == 0, "%zu of %zu bytes are not 0x5a", bad, size);

  CUDART(cudaMemcpy(c, a, size, cudaMemcpyDeviceToDevice));
  CUDART(cudaDeviceSynchronize());
  CUDART(cudaMemcpy(back, c, size, cudaMemcpyDeviceToHost));
  CHECK("memcpy_device_to_device", memcmp(data, back, size) == 0, "the device-to-device copy differs");
  /* Unified addressing: the runtime leaves host-or-device to the driver. */
  const size_t part = 1u << 20;
  CUDART(cudaMemcpy(b, data + part, part, cudaMemcpyDefault));
  CUDART(cudaMemcpy(back, b, part, cudaMemcpyDefault));
  CHECK("memcpy_default", memcmp(back, data + part, part) == 0, "cudaMemcpyDefault both ways differs");
  CUDART(cudaMemcpyPeer(b, 0, (char *)a + 2 * part, 0, part));
  CUDART(cudaMemcpy(back, b, part, cudaMemcpyDeviceToHost));
  CHECK("memcpy_peer", memcmp(back, data + 2 * part, part) == 0, "cudaMemcpyPeer (device 0 to 0) differs");

  /* 2D: 64 rows of 1000 bytes, host pitch 1024 → a pitched allocation → host pitch 1200. */
  void *pitched = NULL;
  size_t pitch = 0;
  CUDART(cudaMallocPitch(&pitched, &pitch, 1000, 64));
  CHECK("malloc_pitch", pitched && pitch >= 1000 && pitch % 32 == 0, "pitch %zu", pitch);
  CUDART(cudaMemcpy2D(pitched, pitch, data, 1024, 1000, 64, cudaMemcpyHostToDevice));
  memset(back, 0, 1200 * 64);
  CUDART(cudaMemcpy2D(back, 1200, pitched, pitch, 1000, 64, cudaMemcpyDeviceToHost));
  bad = 0;
  for (size_t row = 0; row < 64; row++)
    bad += memcmp(back + row * 1200, data + row * 1024, 1000) != 0 || back[row * 1200 + 1000] != 0;
  CHECK("memcpy_2d", bad == 0, "%zu of 64 rows differ", bad);
  CUDART(cudaFree(pitched));

  /* Pointer attributes: device memory, page-locked host memory, ordinary host memory. */
  struct cudaPointerAttributes pd, ph, pu;
  void *pinned = NULL;
  CUDART(cudaMallocHost(&pinned, 4096));
  CUDART(cudaPointerGetAttributes(&pd, (char *)a + 100));
  CUDART(cudaPointerGetAttributes(&ph, pinned));
  CUDART(cudaPointerGetAttributes(&pu, data));
  CHECK("pointer_attributes",
        pd.type == cudaMemoryTypeDevice && pd.device == 0 && pd.devicePointer == (char *)a + 100 &&
            ph.type == cudaMemoryTypeHost && ph.hostPointer == pinned && pu.type == cudaMemoryTypeUnregistered,
        "device: type %d device %d %p; pinned: type %d %p; malloc: type %d", pd.type, pd.device, pd.devicePointer,
        ph.type, ph.hostPointer, pu.type);
  CUDART(cudaFreeHost(pinned));

  cudaError_t e = cudaDeviceSynchronize();
  CHECK("synchronize", e == cudaSuccess, "cudaDeviceSynchronize: %s", cudaGetErrorName(e));

  cudaError_t ea = cudaFree(a), eb = cudaFree(b), ec = cudaFree(c);
  CHECK("free", ea == cudaSuccess && eb == cudaSuccess && ec == cudaSuccess, "cudaFree: %s %s %s",
        cudaGetErrorName(ea), cudaGetErrorName(eb), cudaGetErrorName(ec));
  size_t free1 = 0, total1 = 0;
  CUDART(cudaMemGetInfo(&free1, &total1));
  printf("fact free_after %zu\n", free1);
  held = nvml_held_by_me(dev);
  CHECK("nvml_held_after_free", held == 0, "NVML: this process still holds %llu bytes", held);
  cudaError_t last = cudaGetLastError();
  CHECK("no_error_pending", last == cudaSuccess, "cudaGetLastError: %s", cudaGetErrorName(last));

  free(data);
  free(back);
  nvmlShutdown();
  printf("fact seconds %.2f\n", now() - start);
  printf(failures ? "done FAIL %d\n" : "done\n", failures);
  return failures != 0;
}
