import ShimCore
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// NVML's per-device queries: identity, PCI location, memory, utilization. The structs are
// written at nvml.h's offsets, which shims/nvml.c asserts (nvmlPciInfo_t, nvmlMemory_t, ...).

/// Raw little-endian stores into a caller's struct.
extension UnsafeMutableRawPointer {
  func storeField(_ value: UInt32, at offset: Int) { storeBytes(of: value, toByteOffset: offset, as: UInt32.self) }
  func storeField(_ value: UInt64, at offset: Int) { storeBytes(of: value, toByteOffset: offset, as: UInt64.self) }
  /// `text` NUL-terminated and zero-padded in a field of `capacity` bytes (truncated to fit).
  func storeField(_ text: String, at offset: Int, capacity: Int) {
    let bytes = Array(text.utf8.prefix(capacity - 1))
    for i in 0..<capacity { storeBytes(of: i < bytes.count ? bytes[i] : 0, toByteOffset: offset + i, as: UInt8.self) }
  }
}

/// `value` in upper-case hex, zero-padded to `digits`.
func nvmlHex(_ value: UInt32, _ digits: Int) -> String {
  let s = String(value, radix: 16, uppercase: true)
  return String(repeating: "0", count: max(0, digits - s.count)) + s
}

@_cdecl("vgpucore_nvmlDeviceGetIndex")
public func vgpucore_nvmlDeviceGetIndex(_ device: UnsafeMutableRawPointer?, _ index: UnsafeMutablePointer<UInt32>?)
  -> Int32
{
  guard let index else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, "nvmlDeviceGetIndex") { (_) throws(VGPUError) in
    index.pointee = 0
    return NVMLReturn.success
  }
}

/// The name the device reports (e.g. "vGPU Reference H100 80GB").
@_cdecl("vgpucore_nvmlDeviceGetName")
public func vgpucore_nvmlDeviceGetName(
  _ device: UnsafeMutableRawPointer?, _ name: UnsafeMutablePointer<CChar>?, _ length: UInt32
) -> Int32 {
  withNVMLDevice(device, "nvmlDeviceGetName") { (d) throws(VGPUError) in
    nvmlCopyString(d.info.identity.name, to: name, length: length)
  }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` from the device's 16 UUID bytes.
@_cdecl("vgpucore_nvmlDeviceGetUUID")
public func vgpucore_nvmlDeviceGetUUID(
  _ device: UnsafeMutableRawPointer?, _ uuid: UnsafeMutablePointer<CChar>?, _ length: UInt32
) -> Int32 {
  withNVMLDevice(device, "nvmlDeviceGetUUID") { (d) throws(VGPUError) in
    nvmlCopyString(d.info.identity.uuidString, to: uuid, length: length)
  }
}

/// The PCI location the device reports. Its PCI vendor/device and subsystem ids are not
/// in the identity registers, so pciDeviceId and pciSubSystemId are 0 (unknown).
func nvmlPCIInfo(_ device: UnsafeMutableRawPointer?, _ out: UnsafeMutableRawPointer?, legacy: Bool, _ call: String)
  -> Int32
{
  guard let out else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, call) { (d) throws(VGPUError) in
    let text = d.info.identity.pciBusID
    let (domain, bus, dev, function) = nvmlParsePCIBusID(text) ?? (0, 0, 0, 0)
    // nvml.h: NVML_DEVICE_PCI_BUS_ID_FMT "%08X:%02X:%02X.0", the legacy one with 4 domain digits.
    let slot = "\(nvmlHex(bus, 2)):\(nvmlHex(dev, 2)).\(nvmlHex(function, 1))"
    if legacy {
      // nvmlPciInfo_t before NVML 9 (52 bytes): busId[16], five u32, four reserved u32.
      out.storeField("\(nvmlHex(domain, 4)):\(slot)", at: 0, capacity: 16)
      for offset in stride(from: 16, to: 52, by: 4) { out.storeField(UInt32(0), at: offset) }
    } else {
      // nvmlPciInfo_t (68 bytes): busIdLegacy[16], five u32, busId[32].
      out.storeField("\(nvmlHex(domain, 4)):\(slot)", at: 0, capacity: 16)
      for offset in stride(from: 16, to: 36, by: 4) { out.storeField(UInt32(0), at: offset) }
      out.storeField("\(nvmlHex(domain, 8)):\(slot)", at: 36, capacity: 32)
    }
    out.storeField(domain, at: 16)
    out.storeField(bus, at: 20)
    out.storeField(dev, at: 24)
    return NVMLReturn.success
  }
}

@_cdecl("vgpucore_nvmlDeviceGetPciInfo")
public func vgpucore_nvmlDeviceGetPciInfo(_ device: UnsafeMutableRawPointer?, _ pci: UnsafeMutableRawPointer?) -> Int32
{
  nvmlPCIInfo(device, pci, legacy: true, "nvmlDeviceGetPciInfo")
}

@_cdecl("vgpucore_nvmlDeviceGetPciInfo_v2")
public func vgpucore_nvmlDeviceGetPciInfo_v2(_ device: UnsafeMutableRawPointer?, _ pci: UnsafeMutableRawPointer?)
  -> Int32
{
  nvmlPCIInfo(device, pci, legacy: true, "nvmlDeviceGetPciInfo_v2")
}

@_cdecl("vgpucore_nvmlDeviceGetPciInfo_v3")
public func vgpucore_nvmlDeviceGetPciInfo_v3(_ device: UnsafeMutableRawPointer?, _ pci: UnsafeMutableRawPointer?)
  -> Int32
{
  nvmlPCIInfo(device, pci, legacy: false, "nvmlDeviceGetPciInfo_v3")
}

@_cdecl("vgpucore_nvmlDeviceGetCudaComputeCapability")
public func vgpucore_nvmlDeviceGetCudaComputeCapability(
  _ device: UnsafeMutableRawPointer?, _ major: UnsafeMutablePointer<Int32>?, _ minor: UnsafeMutablePointer<Int32>?
) -> Int32 {
  guard let major, let minor else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, "nvmlDeviceGetCudaComputeCapability") { (d) throws(VGPUError) in
    major.pointee = Int32(clamping: d.info.identity.computeCapability.major)
    minor.pointee = Int32(clamping: d.info.identity.computeCapability.minor)
    return NVMLReturn.success
  }
}

/// A fact of this device answered with a constant: `value` into `out`.
func nvmlConstant(
  _ device: UnsafeMutableRawPointer?, _ out: UnsafeMutablePointer<Int32>?, _ value: Int32, _ call: String
)
  -> Int32
{
  guard let out else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, call) { (_) throws(VGPUError) in
    out.pointee = value
    return NVMLReturn.success
  }
}

/// NVML_COMPUTEMODE_DEFAULT: any number of processes share the device.
@_cdecl("vgpucore_nvmlDeviceGetComputeMode")
public func vgpucore_nvmlDeviceGetComputeMode(_ device: UnsafeMutableRawPointer?, _ mode: UnsafeMutablePointer<Int32>?)
  -> Int32
{
  nvmlConstant(device, mode, 0, "nvmlDeviceGetComputeMode")
}

/// NVML_FEATURE_DISABLED: a vGPU has no display.
@_cdecl("vgpucore_nvmlDeviceGetDisplayActive")
public func vgpucore_nvmlDeviceGetDisplayActive(
  _ device: UnsafeMutableRawPointer?, _ active: UnsafeMutablePointer<Int32>?
) -> Int32 {
  nvmlConstant(device, active, 0, "nvmlDeviceGetDisplayActive")
}

@_cdecl("vgpucore_nvmlDeviceGetDisplayMode")
public func vgpucore_nvmlDeviceGetDisplayMode(_ device: UnsafeMutableRawPointer?, _ mode: UnsafeMutablePointer<Int32>?)
  -> Int32
{
  nvmlConstant(device, mode, 0, "nvmlDeviceGetDisplayMode")
}

/// The handle is the whole device, not a MIG instance.
@_cdecl("vgpucore_nvmlDeviceIsMigDeviceHandle")
public func vgpucore_nvmlDeviceIsMigDeviceHandle(
  _ device: UnsafeMutableRawPointer?, _ isMig: UnsafeMutablePointer<Int32>?
) -> Int32 {
  nvmlConstant(device, isMig, 0, "nvmlDeviceIsMigDeviceHandle")
}

// MARK: Memory

/// nvmlMemory_t {total, free, used}: the device's memoryInfo; used = total − free.
@_cdecl("vgpucore_nvmlDeviceGetMemoryInfo")
public func vgpucore_nvmlDeviceGetMemoryInfo(_ device: UnsafeMutableRawPointer?, _ memory: UnsafeMutableRawPointer?)
  -> Int32
{
  guard let memory else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, "nvmlDeviceGetMemoryInfo") { (d) throws(VGPUError) in
    let (free, total) = try d.memoryInfo()
    memory.storeField(total, at: 0)
    memory.storeField(free, at: 8)
    memory.storeField(total - free, at: 16)
    return NVMLReturn.success
  }
}

/// nvmlMemory_v2 = sizeof(nvmlMemory_v2_t) | 2 << 24.
let nvmlMemoryV2Version: UInt32 = 0x0200_0028

/// nvmlMemory_v2_t {version, total, reserved, free, used}: the caller sets version; nothing
/// is reserved by a driver here (reserved 0, used = total − free).
@_cdecl("vgpucore_nvmlDeviceGetMemoryInfo_v2")
public func vgpucore_nvmlDeviceGetMemoryInfo_v2(
  _ device: UnsafeMutableRawPointer?, _ memory: UnsafeMutableRawPointer?
) -> Int32 {
  guard let memory else { return NVMLReturn.invalidArgument }
  guard memory.load(as: UInt32.self) == nvmlMemoryV2Version else { return NVMLReturn.argumentVersionMismatch }
  return withNVMLDevice(device, "nvmlDeviceGetMemoryInfo_v2") { (d) throws(VGPUError) in
    let (free, total) = try d.memoryInfo()
    memory.storeField(total, at: 8)
    memory.storeField(UInt64(0), at: 16)
    memory.storeField(free, at: 24)
    memory.storeField(total - free, at: 32)
    return NVMLReturn.success
  }
}

// MARK: Utilization

/// The shortest interval a utilization figure is measured over.
let utilizationMinimumInterval: UInt64 = 10_000_000

/// nvmlUtilization_t {gpu, memory}: the share of the time since the previous sample
/// (nvmlInit, or the previous call; at least 10 ms, waited for if need be) that the
/// device spent executing commands, from its busy-time counter. The device has one engine
/// whose every command — kernel, copy, memset — works on device memory, so both fields
/// carry the same figure.
@_cdecl("vgpucore_nvmlDeviceGetUtilizationRates")
public func vgpucore_nvmlDeviceGetUtilizationRates(
  _ device: UnsafeMutableRawPointer?, _ utilization: UnsafeMutableRawPointer?
) -> Int32 {
  guard let utilization else { return NVMLReturn.invalidArgument }
  return withNVMLDevice(device, "nvmlDeviceGetUtilizationRates") { (d) throws(VGPUError) in
    var busy = try d.statistics(.device).busyNanoseconds
    var now = nvmlMonotonicNanoseconds()
    var previous = NVMLState.shared.state.withLock { $0.busySample } ?? (busy: busy, at: now)
    if busy < previous.busy { previous = (busy: busy, at: now) }  // another device since (reopened)
    if now &- previous.at < utilizationMinimumInterval {
      let wait = utilizationMinimumInterval - (now &- previous.at)
      usleep(useconds_t(wait / 1000))
      busy = try d.statistics(.device).busyNanoseconds
      now = nvmlMonotonicNanoseconds()
    }
    let sample = (busy: busy, at: now)
    NVMLState.shared.state.withLock { $0.busySample = sample }
    let share = Double(busy - previous.busy) / Double(max(1, now &- previous.at))
    let percent = UInt32(min(100, max(0, (share * 100).rounded())))
    utilization.storeField(percent, at: 0)
    utilization.storeField(percent, at: 4)
    return NVMLReturn.success
  }
}
