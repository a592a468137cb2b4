/* A C client of libnvidia-ml.so.1 using NVML's ABI as nvml.h declares it (types copied
 * here, as a program compiled against nvml.h sees them). Checks what the vGPU's NVML
 * answers, prints the facts, and ends with "ok" (exit 0) or the failures (exit 1).
 *
 *   nvml_client PID MIN_BYTES   PID must be listed as a compute process holding ≥ MIN_BYTES
 *
 *   cc -o nvml_client nvml_client.c -L<shims> -lnvidia-ml */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
  char busIdLegacy[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
} nvmlPciInfo_t;
typedef struct {
  char busId[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId, reserved0, reserved1, reserved2, reserved3;
} nvmlPciInfo_v2_t;
typedef struct {
  unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
  unsigned int version;
  unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24U))
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
} nvmlProcessInfo_t;

nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlShutdown(void);
const char *nvmlErrorString(nvmlReturn_t);
nvmlReturn_t nvmlSystemGetDriverVersion(char *, unsigned int);
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *);
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t, unsigned int *);
nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t, nvmlPciInfo_v2_t *);
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t, nvmlPciInfo_t *);
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t, int *, int *);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *);
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t, nvmlMemory_v2_t *);
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t, nvmlUtilization_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t, unsigned int *, nvmlProcessInfo_v1_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t, int, unsigned int *);
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t, unsigned int *);
nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t, unsigned int *);
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t, int, unsigned int *);

static int failures;

#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond);        \
      failures++;                                                    \
    }                                                                \
  } while (0)
#define RETURNS(call, want)                                                                                    \
  do {                                                                                                         \
    nvmlReturn_t r_ = (call);                                                                                  \
    if (r_ != (want)) {                                                                                        \
      fprintf(stderr, "FAIL line %d: %s returned %d (%s), expected %d\n", __LINE__, #call, r_, nvmlErrorString(r_), \
              (want));                                                                                         \
      failures++;                                                                                              \
    }                                                                                                          \
  } while (0)

int main(int argc, char **argv) {
  unsigned int want_pid = argc > 1 ? (unsigned int)strtoul(argv[1], NULL, 10) : 0;
  unsigned long long want_bytes = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
  unsigned int count = 99;

  RETURNS(nvmlDeviceGetCount_v2(&count), 1); /* NVML_ERROR_UNINITIALIZED */
  EXPECT(strcmp(nvmlErrorString(3), "Not Supported") == 0);
  EXPECT(strcmp(nvmlErrorString(12345), "Unknown Error") == 0);

  RETURNS(nvmlInit_v2(), 0);
  RETURNS(nvmlInit_v2(), 0); /* reference-counted */
  RETURNS(nvmlDeviceGetCount_v2(&count), 0);
  EXPECT(count == 1);
  nvmlDevice_t dev = NULL, other = NULL;
  RETURNS(nvmlDeviceGetHandleByIndex_v2(0, &dev), 0);
  RETURNS(nvmlDeviceGetHandleByIndex_v2(1, &other), 2); /* NVML_ERROR_INVALID_ARGUMENT */
  unsigned int index = 7;
  RETURNS(nvmlDeviceGetIndex(dev, &index), 0);
  EXPECT(index == 0);

  char name[96], uuid[96], small[4], driver[80];
  RETURNS(nvmlDeviceGetName(dev, small, sizeof small), 7); /* NVML_ERROR_INSUFFICIENT_SIZE */
  RETURNS(nvmlDeviceGetName(dev, name, sizeof name), 0);
  RETURNS(nvmlDeviceGetUUID(dev, uuid, sizeof uuid), 0);
  printf("name: %s\nuuid: %s\n", name, uuid);
  EXPECT(strncmp(uuid, "GPU-", 4) == 0 && strlen(uuid) == 40);
  RETURNS(nvmlDeviceGetHandleByUUID(uuid, &other), 0);
  EXPECT(other == dev);
  RETURNS(nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000", &other), 6); /* NOT_FOUND */
  RETURNS(nvmlSystemGetDriverVersion(driver, sizeof driver), 0);
  int cuda = 0, major = 0, minor = -1;
  RETURNS(nvmlSystemGetCudaDriverVersion_v2(&cuda), 0);
  RETURNS(nvmlDeviceGetCudaComputeCapability(dev, &major, &minor), 0);
  printf("driver: %s\ncuda: %d\ncompute capability: %d.%d\n", driver, cuda, major, minor);

  /* PCI: the new and the legacy layout, and lookups in NVML's accepted spellings. */
  nvmlPciInfo_t pci;
  nvmlPciInfo_v2_t legacy;
  memset(&pci, 0x55, sizeof pci);
  memset(&legacy, 0x55, sizeof legacy);
  RETURNS(nvmlDeviceGetPciInfo_v3(dev, &pci), 0);
  RETURNS(nvmlDeviceGetPciInfo(dev, &legacy), 0);
  printf("pci: %s %s domain=%u bus=%u device=%u\n", pci.busId, pci.busIdLegacy, pci.domain, pci.bus, pci.device);
  EXPECT(strcmp(legacy.busId, pci.busIdLegacy) == 0 && legacy.bus == pci.bus && legacy.device == pci.device);
  EXPECT(legacy.reserved0 == 0 && legacy.reserved3 == 0);
  RETURNS(nvmlDeviceGetHandleByPciBusId_v2(pci.busId, &other), 0);
  EXPECT(other == dev);
  RETURNS(nvmlDeviceGetHandleByPciBusId_v2(pci.busIdLegacy, &other), 0);
  RETURNS(nvmlDeviceGetHandleByPciBusId_v2(pci.busIdLegacy + 5, &other), 0); /* "BB:DD.F" */
  RETURNS(nvmlDeviceGetHandleByPciBusId_v2("0000:7f:1f.0", &other), 6);
  RETURNS(nvmlDeviceGetHandleByPciBusId_v2("not a bus id", &other), 2);

  /* Memory, both versions. */
  nvmlMemory_t memory;
  nvmlMemory_v2_t memory2 = {.version = nvmlMemory_v2};
  RETURNS(nvmlDeviceGetMemoryInfo(dev, &memory), 0);
  RETURNS(nvmlDeviceGetMemoryInfo_v2(dev, &memory2), 0);
  printf("memory: total=%llu free=%llu used=%llu\n", memory.total, memory.free, memory.used);
  EXPECT(memory.used == memory.total - memory.free && memory.used >= want_bytes);
  EXPECT(memory2.total == memory.total && memory2.reserved == 0 && memory2.used == memory2.total - memory2.free);
  memory2.version = 1;
  RETURNS(nvmlDeviceGetMemoryInfo_v2(dev, &memory2), 25); /* NVML_ERROR_ARGUMENT_VERSION_MISMATCH */

  /* Processes: NVML's "insufficient size" protocol, in each struct version. */
  unsigned int n = 0;
  RETURNS(nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, NULL), 7);
  EXPECT(n >= 1);
  nvmlProcessInfo_t infos[64];
  nvmlProcessInfo_v1_t infos1[64];
  memset(infos, 0, sizeof infos);
  unsigned int room = n > 0 ? n - 1 : 0;
  if (room > 0) RETURNS(nvmlDeviceGetComputeRunningProcesses_v3(dev, &room, infos), 7);
  n = 64;
  RETURNS(nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, infos), 0);
  int found = 0;
  for (unsigned int i = 0; i < n; i++) {
    printf("process v3: pid=%u used=%llu gi=%x ci=%x\n", infos[i].pid, infos[i].usedGpuMemory,
           infos[i].gpuInstanceId, infos[i].computeInstanceId);
    EXPECT(infos[i].gpuInstanceId == 0xffffffffu && infos[i].computeInstanceId == 0xffffffffu);
    if (infos[i].pid == want_pid && infos[i].usedGpuMemory >= want_bytes) found = 1;
  }
  EXPECT(found);
  unsigned int n2 = 64, n1 = 64;
  RETURNS(nvmlDeviceGetComputeRunningProcesses_v2(dev, &n2, infos), 0);
  RETURNS(nvmlDeviceGetComputeRunningProcesses(dev, &n1, infos1), 0);
  EXPECT(n2 == n && n1 == n);
  found = 0;
  for (unsigned int i = 0; i < n1; i++) {
    printf("process v1: pid=%u used=%llu\n", infos1[i].pid, infos1[i].usedGpuMemory);
    if (infos1[i].pid == want_pid && infos1[i].usedGpuMemory >= want_bytes) found = 1;
  }
  EXPECT(found);
  RETURNS(nvmlDeviceGetComputeRunningProcesses_v3(dev, NULL, infos), 2);
  unsigned int g = 5;
  RETURNS(nvmlDeviceGetGraphicsRunningProcesses_v3(dev, &g, NULL), 0);
  EXPECT(g == 0);
  g = 5;
  RETURNS(nvmlDeviceGetMPSComputeRunningProcesses_v3(dev, &g, NULL), 0);
  EXPECT(g == 0);

  nvmlUtilization_t utilization = {1000, 1000};
  RETURNS(nvmlDeviceGetUtilizationRates(dev, &utilization), 0);
  printf("utilization: gpu=%u memory=%u\n", utilization.gpu, utilization.memory);
  EXPECT(utilization.gpu <= 100 && utilization.memory <= 100);

  /* What a virtual device cannot know: NOT_SUPPORTED, nothing written. */
  unsigned int value = 12345;
  RETURNS(nvmlDeviceGetTemperature(dev, 0, &value), 3);
  RETURNS(nvmlDeviceGetPowerUsage(dev, &value), 3);
  RETURNS(nvmlDeviceGetFanSpeed(dev, &value), 3);
  RETURNS(nvmlDeviceGetClockInfo(dev, 0, &value), 3);
  EXPECT(value == 12345);

  RETURNS(nvmlShutdown(), 0);
  RETURNS(nvmlDeviceGetCount_v2(&count), 0); /* one nvmlInit still open */
  RETURNS(nvmlShutdown(), 0);
  RETURNS(nvmlShutdown(), 1);
  RETURNS(nvmlDeviceGetCount_v2(&count), 1);
  RETURNS(nvmlDeviceGetTemperature(dev, 0, &value), 1);

  if (failures) return 1;
  printf("ok\n");
  return 0;
}
