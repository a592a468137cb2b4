import ShimCore
import VGPU
import VGPUProtocol

// NVML's process lists, from the device's `processes` command (protocol 1.1): every
// process using the vGPU, with the device memory it holds.

/// nvmlProcessInfo_v1_t {pid, usedGpuMemory}: 16 bytes; nvmlProcessInfo_v2_t and
/// nvmlProcessInfo_t {pid, usedGpuMemory, gpuInstanceId, computeInstanceId}: 24 bytes.
enum NVMLProcessInfoLayout: Int {
  case v1 = 16
  case v2 = 24
}

/// gpuInstanceId / computeInstanceId of a process on a GPU without MIG (nvml.h: 0xFFFFFFFF).
let nvmlNoInstance: UInt32 = 0xffff_ffff

/// The processes NVML lists as using the device: those holding device memory or having
/// launched a kernel. A process that only opened the device (a monitor such as gpustat,
/// this process's own NVML) uses nothing yet; NVIDIA's list does not show monitors either.
func nvmlComputeProcesses(_ d: Device) throws(VGPUError) -> [ProcessRecord] {
  try d.processes().filter { $0.bytesAllocated > 0 || $0.launches > 0 }
}

/// NVML's "insufficient size" protocol: `*count` in is the room in `infos` (which may be
/// NULL), out the number of processes; too little room → NVML_ERROR_INSUFFICIENT_SIZE with
/// nothing written; no processes → success and 0, whatever the room.
func nvmlRunningProcesses(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?,
  _ layout: NVMLProcessInfoLayout, compute: Bool, _ call: String
) -> Int32 {
  guard let count else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, call) { (d) throws(VGPUError) in
    // Graphics and MPS: a vGPU runs neither, so their lists are empty.
    let records = compute ? try nvmlComputeProcesses(d) : []
    let room = count.pointee
    count.pointee = UInt32(records.count)
    if records.isEmpty { return NVMLReturn.success }
    guard let infos, room >= UInt32(records.count) else { return NVMLReturn.insufficientSize }
    for (i, r) in records.enumerated() {
      let entry = infos + i * layout.rawValue
      entry.storeField(r.pid, at: 0)
      entry.storeField(UInt32(0), at: 4)
      entry.storeField(r.bytesAllocated, at: 8)
      if layout == .v2 {
        entry.storeField(nvmlNoInstance, at: 16)
        entry.storeField(nvmlNoInstance, at: 20)
      }
    }
    return NVMLReturn.success
  }
}

@_cdecl("vgpucore_nvmlDeviceGetComputeRunningProcesses")
public func vgpucore_nvmlDeviceGetComputeRunningProcesses(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v1, compute: true, "nvmlDeviceGetComputeRunningProcesses")
}

@_cdecl("vgpucore_nvmlDeviceGetComputeRunningProcesses_v2")
public func vgpucore_nvmlDeviceGetComputeRunningProcesses_v2(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: true, "nvmlDeviceGetComputeRunningProcesses_v2")
}

@_cdecl("vgpucore_nvmlDeviceGetComputeRunningProcesses_v3")
public func vgpucore_nvmlDeviceGetComputeRunningProcesses_v3(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: true, "nvmlDeviceGetComputeRunningProcesses_v3")
}

@_cdecl("vgpucore_nvmlDeviceGetGraphicsRunningProcesses")
public func vgpucore_nvmlDeviceGetGraphicsRunningProcesses(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v1, compute: false, "nvmlDeviceGetGraphicsRunningProcesses")
}

@_cdecl("vgpucore_nvmlDeviceGetGraphicsRunningProcesses_v2")
public func vgpucore_nvmlDeviceGetGraphicsRunningProcesses_v2(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: false, "nvmlDeviceGetGraphicsRunningProcesses_v2")
}

@_cdecl("vgpucore_nvmlDeviceGetGraphicsRunningProcesses_v3")
public func vgpucore_nvmlDeviceGetGraphicsRunningProcesses_v3(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: false, "nvmlDeviceGetGraphicsRunningProcesses_v3")
}

@_cdecl("vgpucore_nvmlDeviceGetMPSComputeRunningProcesses")
public func vgpucore_nvmlDeviceGetMPSComputeRunningProcesses(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v1, compute: false, "nvmlDeviceGetMPSComputeRunningProcesses")
}

@_cdecl("vgpucore_nvmlDeviceGetMPSComputeRunningProcesses_v2")
public func vgpucore_nvmlDeviceGetMPSComputeRunningProcesses_v2(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: false, "nvmlDeviceGetMPSComputeRunningProcesses_v2")
}

@_cdecl("vgpucore_nvmlDeviceGetMPSComputeRunningProcesses_v3")
public func vgpucore_nvmlDeviceGetMPSComputeRunningProcesses_v3(
  _ device: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<UInt32>?, _ infos: UnsafeMutableRawPointer?
) -> Int32 {
  nvmlRunningProcesses(device, count, infos, .v2, compute: false, "nvmlDeviceGetMPSComputeRunningProcesses_v3")
}
