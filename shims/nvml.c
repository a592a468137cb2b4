/* libnvidia-ml.so.1: NVML, as trampolines into libvgpucore.so (Sources/VGPUCore/NVML*.swift).
 *
 * Types and layouts are nvml.h's (NVML 12.x ABI, as nvidia-ml-py 12.570 mirrors them); the
 * core writes the structs at the offsets asserted below. Loading this library runs nothing;
 * the core is loaded on the first call (trampoline.h). */
#include <stddef.h>

#include "trampoline.h"

typedef int nvmlReturn_t; /* an enum in nvml.h: int-sized */
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef int nvmlEnableState_t;
typedef int nvmlComputeMode_t;

/* nvmlReturn_t values used here (nvml.h). */
#define NVML_SUCCESS 0
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_LIBRARY_NOT_FOUND 12

/* nvmlPciInfo_t as nvmlDeviceGetPciInfo_v3 fills it (busId widened to 32 bytes in NVML 9). */
typedef struct {
  char busIdLegacy[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
} nvmlPciInfo_t;
/* The legacy layout nvmlDeviceGetPciInfo and _v2 fill (nvidia-ml-py: nvmlPciInfo_v2_t). */
typedef struct {
  char busId[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  unsigned int reserved0, reserved1, reserved2, reserved3;
} nvmlPciInfo_v2_t;
typedef struct {
  unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
  unsigned int version; /* nvmlMemory_v2 = sizeof | 2 << 24 = 0x02000028 */
  unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
  unsigned int gpu, memory;
} nvmlUtilization_t;
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t;
typedef nvmlProcessInfo_v2_t nvmlProcessInfo_t;

/* The offsets Sources/VGPUCore/NVMLStructs.swift writes. */
_Static_assert(sizeof(nvmlPciInfo_t) == 68 && offsetof(nvmlPciInfo_t, domain) == 16 &&
                   offsetof(nvmlPciInfo_t, pciSubSystemId) == 32 && offsetof(nvmlPciInfo_t, busId) == 36,
               "nvmlPciInfo_t");
_Static_assert(sizeof(nvmlPciInfo_v2_t) == 52 && offsetof(nvmlPciInfo_v2_t, domain) == 16 &&
                   offsetof(nvmlPciInfo_v2_t, reserved0) == 36,
               "nvmlPciInfo_v2_t");
_Static_assert(sizeof(nvmlMemory_t) == 24 && offsetof(nvmlMemory_t, used) == 16, "nvmlMemory_t");
_Static_assert(sizeof(nvmlMemory_v2_t) == 0x28 && offsetof(nvmlMemory_v2_t, total) == 8 &&
                   offsetof(nvmlMemory_v2_t, reserved) == 16 && offsetof(nvmlMemory_v2_t, free) == 24 &&
                   offsetof(nvmlMemory_v2_t, used) == 32,
               "nvmlMemory_v2_t");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t");
_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16 && offsetof(nvmlProcessInfo_v1_t, usedGpuMemory) == 8,
               "nvmlProcessInfo_v1_t");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24 && offsetof(nvmlProcessInfo_v2_t, gpuInstanceId) == 16 &&
                   offsetof(nvmlProcessInfo_v2_t, computeInstanceId) == 20,
               "nvmlProcessInfo_v2_t");

/* What a call returns when the core cannot be loaded (the reason is on stderr). */
#define CORE_MISSING NVML_ERROR_LIBRARY_NOT_FOUND

/* NOT_SUPPORTED answers go through one core function, which checks that NVML is
 * initialised and logs the name (`known`: a figure no virtual device has, logged only
 * with VGPU_DEBUG; else an answerable call not answered yet, logged once). */
static nvmlReturn_t not_supported(const char *name, int known) {
  static nvmlReturn_t (*fn)(const char *, int);
  nvmlReturn_t (*f)(const char *, int) = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
  if (!f) {
    f = (nvmlReturn_t(*)(const char *, int))vgpu_core_symbol("nvmlNotSupported");
    if (!f) return CORE_MISSING;
    __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
  }
  return f(name, known);
}

/* Their parameters are nvml.h's, for the exported prototypes; the answer needs none. */
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define X(name, params, args) VGPU_TRAMPOLINE(nvmlReturn_t, name, params, args, CORE_MISSING)
#define N(name, params) \
  VGPU_API nvmlReturn_t name params { return not_supported(#name, 1); }
#define U(name, params) \
  VGPU_API nvmlReturn_t name params { return not_supported(#name, 0); }
#include "nvml.def"
#undef X
#undef N
#undef U

/* nvmlErrorString: nvml.h's texts. A pure table, here so it works without the core and
 * before nvmlInit, as NVML's does. */
VGPU_API const char *nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, because ECC is enabled";
    case 23: return "Insufficient resources";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not Ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    default: return "Unknown Error";
  }
}
