"""What nvidia-ml-py (pynvml) reads from libnvidia-ml.so.1, printed as one JSON object.

    python nvml_pynvml.py [ALLOCATE_BYTES]

With ALLOCATE_BYTES, this process first allocates that much device memory through
libvgpu.so (ctypes), so that NVML lists it among the processes using the device.
Needs LD_LIBRARY_PATH to reach the shims and VGPU_DEVICE to name the device.
"""
import ctypes
import json
import os
import sys

import pynvml as N

out = {"pid": os.getpid()}

if len(sys.argv) > 1:
    vgpu = ctypes.CDLL("libvgpu.so")
    vgpu.vgpu_last_error_message.restype = ctypes.c_char_p
    dev = ctypes.c_void_p()
    ptr = ctypes.c_uint64()
    status = vgpu.vgpu_open(None, ctypes.byref(dev))
    if status == 0:
        status = vgpu.vgpu_alloc(dev, ctypes.c_size_t(int(sys.argv[1])), ctypes.byref(ptr))
    if status != 0:
        sys.exit("vgpu: %d %s" % (status, vgpu.vgpu_last_error_message().decode()))
    out["allocated"] = int(sys.argv[1])


def unsupported(call):
    """The NVML error a call raises, by name ("NotSupported"), or None if it answered."""
    try:
        call()
        return None
    except N.NVMLError as e:
        return type(e).__name__.replace("NVMLError_", "")


N.nvmlInit()
out["count"] = N.nvmlDeviceGetCount()
h = N.nvmlDeviceGetHandleByIndex(0)
out["name"] = N.nvmlDeviceGetName(h)
out["uuid"] = N.nvmlDeviceGetUUID(h)
out["index"] = N.nvmlDeviceGetIndex(h)
pci = N.nvmlDeviceGetPciInfo_v3(h)
out["pci"] = {
    "busId": pci.busId.decode() if isinstance(pci.busId, bytes) else pci.busId,
    "busIdLegacy": pci.busIdLegacy.decode() if isinstance(pci.busIdLegacy, bytes) else pci.busIdLegacy,
    "domain": pci.domain,
    "bus": pci.bus,
    "device": pci.device,
}
out["byPciBusId"] = N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByPciBusId(out["pci"]["busId"]))
out["byUUID"] = N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByUUID(out["uuid"]))
m = N.nvmlDeviceGetMemoryInfo(h)
out["memory"] = {"total": m.total, "free": m.free, "used": m.used}
m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
out["memory_v2"] = {"total": m2.total, "free": m2.free, "used": m2.used, "reserved": m2.reserved}
out["processes"] = [
    {"pid": p.pid, "usedGpuMemory": p.usedGpuMemory, "gpuInstanceId": p.gpuInstanceId}
    for p in N.nvmlDeviceGetComputeRunningProcesses(h)
]
out["processes_v2"] = [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses_v2(h)]
out["graphics"] = [p.pid for p in N.nvmlDeviceGetGraphicsRunningProcesses(h)]
u = N.nvmlDeviceGetUtilizationRates(h)
out["utilization"] = {"gpu": u.gpu, "memory": u.memory}
out["driver"] = N.nvmlSystemGetDriverVersion()
out["cuda"] = N.nvmlSystemGetCudaDriverVersion()
out["computeCapability"] = list(N.nvmlDeviceGetCudaComputeCapability(h))
out["errors"] = {
    "temperature": unsupported(lambda: N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU)),
    "fan": unsupported(lambda: N.nvmlDeviceGetFanSpeed(h)),
    "power": unsupported(lambda: N.nvmlDeviceGetPowerUsage(h)),
    "powerLimit": unsupported(lambda: N.nvmlDeviceGetEnforcedPowerLimit(h)),
    "clock": unsupported(lambda: N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_SM)),
    "encoder": unsupported(lambda: N.nvmlDeviceGetEncoderUtilization(h)),
    "decoder": unsupported(lambda: N.nvmlDeviceGetDecoderUtilization(h)),
}
N.nvmlShutdown()
print(json.dumps(out))
