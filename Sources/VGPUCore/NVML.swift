import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// NVML (libnvidia-ml.so.1) over the vGPU: shims/nvml.c forwards each entry point to the
// vgpucore_nvml* function of the same name. This file: initialisation, the system queries,
// finding the device, and what every call shares (state, errors, strings).
//
// Answers are the device's own facts (identity registers, memory, the process list, busy
// time); what a virtual device cannot know is NVML_ERROR_NOT_SUPPORTED, never a figure.

/// nvmlReturn_t values (nvml.h).
enum NVMLReturn {
  static let success: Int32 = 0
  static let uninitialized: Int32 = 1
  static let invalidArgument: Int32 = 2
  static let notSupported: Int32 = 3
  static let noPermission: Int32 = 4
  static let notFound: Int32 = 6
  static let insufficientSize: Int32 = 7
  static let driverNotLoaded: Int32 = 9
  static let timeout: Int32 = 10
  static let gpuIsLost: Int32 = 15
  static let libRMVersionMismatch: Int32 = 18
  static let memory: Int32 = 20
  static let argumentVersionMismatch: Int32 = 25
  static let unknown: Int32 = 999

  /// The nvmlReturn_t for a failed client call.
  static func of(_ error: VGPUError) -> Int32 {
    switch error.kind {
    case .device(let status):
      switch status {
      case .invalidValue, .invalidStaging, .invalidParameters, .invalidHandle, .invalidAddress: invalidArgument
      case .notSupported, .invalidOpcode: notSupported
      case .permissionDenied: noPermission
      case .timeout: timeout
      case .deviceLost: gpuIsLost
      case .outOfMemory: memory
      case .notFound: notFound
      case .versionMismatch: libRMVersionMismatch
      default: unknown
      }
    case .timeout: timeout
    case .unavailable: gpuIsLost
    case .versionMismatch: libRMVersionMismatch
    case .invalidArgument: invalidArgument
    case .unsupported: notSupported
    case .closed: uninitialized
    case .protocolViolation: unknown
    }
  }
}

/// CLOCK_MONOTONIC in nanoseconds.
func nvmlMonotonicNanoseconds() -> UInt64 {
  var t = timespec()
  clock_gettime(CLOCK_MONOTONIC, &t)
  return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

/// What NVML keeps per process.
final class NVMLState: Sendable {
  static let shared = NVMLState()

  struct State: ~Copyable {
    /// nvmlInit calls not yet matched by nvmlShutdown: NVML reference-counts them.
    var references = 0
    /// The device's busy time and the clock when it was last sampled, for utilization.
    var busySample: (busy: UInt64, at: UInt64)?
    /// Functions whose NOT_SUPPORTED answer has been logged.
    var logged: Set<String> = []
  }
  let state = Mutex(State())

  var initialized: Bool { state.withLock { $0.references > 0 } }

  /// The one device handle: an address of ours, never dereferenced by anyone.
  nonisolated(unsafe) static let handle = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
}

/// The open device, for a call that needs it; nil with the nvmlReturn_t to give back.
func nvmlDevice(_ call: String) -> Result<Device, NVMLFailure> {
  guard NVMLState.shared.initialized else { return .failure(NVMLFailure(code: NVMLReturn.uninitialized)) }
  switch ShimRuntime.shared.device() {
  case .success(let d): return .success(d)
  case .failure(let error):
    ShimRuntime.shared.reportFailure(call, error)
    return .failure(NVMLFailure(code: NVMLReturn.driverNotLoaded))
  }
}

struct NVMLFailure: Error { var code: Int32 }

/// Runs `body` on the device a handle names, mapping failures to nvmlReturn_t.
func withNVMLDevice(
  _ handle: UnsafeMutableRawPointer?, _ call: String, _ body: (Device) throws(VGPUError) -> Int32
) -> Int32 {
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  guard let handle, handle == NVMLState.handle else { return NVMLReturn.invalidArgument }
  switch ShimRuntime.shared.device() {
  case .success(let d):
    do throws(VGPUError) { return try body(d) } catch {
      ShimRuntime.shared.reportFailure(call, error)
      return NVMLReturn.of(error)
    }
  case .failure(let error):
    // The handle came from an open device; it is gone (e.g. in a forked child that cannot reopen).
    ShimRuntime.shared.reportFailure(call, error)
    return NVMLReturn.gpuIsLost
  }
}

/// Copies `text` and its NUL into a caller's buffer of `length` bytes, as NVML's string
/// queries do: too small is NVML_ERROR_INSUFFICIENT_SIZE, nothing written.
func nvmlCopyString(_ text: String, to buffer: UnsafeMutablePointer<CChar>?, length: UInt32) -> Int32 {
  guard let buffer else { return NVMLReturn.invalidArgument }
  let bytes = Array(text.utf8)
  guard bytes.count < Int(length) else { return NVMLReturn.insufficientSize }
  for (i, b) in bytes.enumerated() { buffer[i] = CChar(bitPattern: b) }
  buffer[bytes.count] = 0
  return NVMLReturn.success
}

// MARK: Initialisation

/// nvmlInit, nvmlInit_v2, nvmlInitWithFlags: opens the device (VGPU_DEVICE, else the
/// vGPU's PCI slot). With none, NVML still initialises and reports 0 devices; one line
/// on stderr says why (a client such as gpustat then shows "no GPU", not an error).
func nvmlInitialize(_ call: String) -> Int32 {
  NVMLState.shared.state.withLock { $0.references += 1 }
  ShimRuntime.shared.hold()
  switch ShimRuntime.shared.device(retry: true) {
  case .success(let d):
    // The start of the first utilization interval.
    if let busy = try? d.statistics(.device).busyNanoseconds {
      NVMLState.shared.state.withLock { s in
        if s.busySample == nil { s.busySample = (busy, nvmlMonotonicNanoseconds()) }
      }
    }
  case .failure(let error):
    ShimRuntime.shared.reportFailure("\(call): NVML reports 0 devices because opening the vGPU", error)
  }
  return NVMLReturn.success
}

@_cdecl("vgpucore_nvmlInit")
public func vgpucore_nvmlInit() -> Int32 { nvmlInitialize("nvmlInit") }

@_cdecl("vgpucore_nvmlInit_v2")
public func vgpucore_nvmlInit_v2() -> Int32 { nvmlInitialize("nvmlInit_v2") }

/// Flags (NVML_INIT_FLAG_NO_GPUS, NVML_INIT_FLAG_NO_ATTACH) change nothing: a missing
/// device never fails initialisation here.
@_cdecl("vgpucore_nvmlInitWithFlags")
public func vgpucore_nvmlInitWithFlags(_ flags: UInt32) -> Int32 { nvmlInitialize("nvmlInitWithFlags") }

/// Ends one nvmlInit. The device stays open: it is the process's one device, which the
/// CUDA shim may be using (Ollama's runner calls nvmlShutdown while its model sits in
/// device memory); the device is released when the process exits.
@_cdecl("vgpucore_nvmlShutdown")
public func vgpucore_nvmlShutdown() -> Int32 {
  let result = NVMLState.shared.state.withLock { s in
    guard s.references > 0 else { return NVMLReturn.uninitialized }
    s.references -= 1
    return NVMLReturn.success
  }
  if result == NVMLReturn.success { ShimRuntime.shared.release() }
  return result
}

/// Answers for the entry points a virtual device has no figure for (`known` ≠ 0:
/// temperature, fans, power, clocks, ...), and for those not answered yet (`known` = 0,
/// logged on stderr once per name).
@_cdecl("vgpucore_nvmlNotSupported")
public func vgpucore_nvmlNotSupported(_ name: UnsafePointer<CChar>?, _ known: Int32) -> Int32 {
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  let function = name.map { String(cString: $0) } ?? "?"
  let debug = ShimRuntime.shared.debug
  guard known == 0 || debug else { return NVMLReturn.notSupported }
  let first = NVMLState.shared.state.withLock { $0.logged.insert(function).inserted }
  if first {
    ShimRuntime.printLine(
      known != 0
        ? "vgpu: \(function): NVML_ERROR_NOT_SUPPORTED (a virtual GPU has no such figure)"
        : "vgpu: \(function) is not implemented; it answers NVML_ERROR_NOT_SUPPORTED")
  }
  return NVMLReturn.notSupported
}

// MARK: System

/// The driver version the device reports (e.g. 570.124.06).
@_cdecl("vgpucore_nvmlSystemGetDriverVersion")
public func vgpucore_nvmlSystemGetDriverVersion(_ version: UnsafeMutablePointer<CChar>?, _ length: UInt32) -> Int32 {
  switch nvmlDevice("nvmlSystemGetDriverVersion") {
  case .success(let d): nvmlCopyString(d.info.identity.driverVersion, to: version, length: length)
  case .failure(let f): f.code
  }
}

/// NVML's own version, as NVIDIA's reads: CUDA major, then the driver version ("12.570.124.06").
@_cdecl("vgpucore_nvmlSystemGetNVMLVersion")
public func vgpucore_nvmlSystemGetNVMLVersion(_ version: UnsafeMutablePointer<CChar>?, _ length: UInt32) -> Int32 {
  switch nvmlDevice("nvmlSystemGetNVMLVersion") {
  case .success(let d):
    let id = d.info.identity
    return nvmlCopyString("\(id.cudaDriverVersion / 1000).\(id.driverVersion)", to: version, length: length)
  case .failure(let f): return f.code
  }
}

func nvmlCudaDriverVersion(_ out: UnsafeMutablePointer<Int32>?, _ call: String) -> Int32 {
  guard let out else { return NVMLReturn.invalidArgument }
  switch nvmlDevice(call) {
  case .success(let d):
    out.pointee = Int32(clamping: d.info.identity.cudaDriverVersion)
    return NVMLReturn.success
  case .failure(let f): return f.code
  }
}

/// As cuDriverGetVersion: 1000 × major + 10 × minor (12080 = 12.8), from the device.
@_cdecl("vgpucore_nvmlSystemGetCudaDriverVersion")
public func vgpucore_nvmlSystemGetCudaDriverVersion(_ version: UnsafeMutablePointer<Int32>?) -> Int32 {
  nvmlCudaDriverVersion(version, "nvmlSystemGetCudaDriverVersion")
}

@_cdecl("vgpucore_nvmlSystemGetCudaDriverVersion_v2")
public func vgpucore_nvmlSystemGetCudaDriverVersion_v2(_ version: UnsafeMutablePointer<Int32>?) -> Int32 {
  nvmlCudaDriverVersion(version, "nvmlSystemGetCudaDriverVersion_v2")
}

/// A process's name, as nvidia-smi shows it: its command (argv[0]), truncated to fit.
@_cdecl("vgpucore_nvmlSystemGetProcessName")
public func vgpucore_nvmlSystemGetProcessName(_ pid: UInt32, _ name: UnsafeMutablePointer<CChar>?, _ length: UInt32)
  -> Int32
{
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  guard let name, length > 0 else { return NVMLReturn.invalidArgument }
  var command =
    nvmlReadProcFile("/proc/\(pid)/cmdline").split(separator: 0, omittingEmptySubsequences: false).first
    .map(Array.init) ?? []
  if command.isEmpty {
    command = Array(nvmlReadProcFile("/proc/\(pid)/comm").prefix { $0 != 0x0a })
  }
  guard !command.isEmpty else { return NVMLReturn.notFound }
  let n = min(command.count, Int(length) - 1)
  for i in 0..<n { name[i] = CChar(bitPattern: command[i]) }
  name[n] = 0
  return NVMLReturn.success
}

/// The bytes of a small /proc file (empty if it cannot be read).
func nvmlReadProcFile(_ path: String) -> [UInt8] {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return [] }
  defer { close(fd) }
  var out: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 4096)
  while out.count < 1 << 16 {
    let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n <= 0 { break }
    out += chunk[0..<n]
  }
  return out
}

// MARK: Finding the device

func nvmlCount(_ count: UnsafeMutablePointer<UInt32>?, _ call: String) -> Int32 {
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  guard let count else { return NVMLReturn.invalidArgument }
  // 0 when there is no device — never a pretend one. Why was said at nvmlInit.
  count.pointee = ShimRuntime.shared.deviceIfAvailable == nil ? 0 : 1
  return NVMLReturn.success
}

@_cdecl("vgpucore_nvmlDeviceGetCount")
public func vgpucore_nvmlDeviceGetCount(_ count: UnsafeMutablePointer<UInt32>?) -> Int32 {
  nvmlCount(count, "nvmlDeviceGetCount")
}

@_cdecl("vgpucore_nvmlDeviceGetCount_v2")
public func vgpucore_nvmlDeviceGetCount_v2(_ count: UnsafeMutablePointer<UInt32>?) -> Int32 {
  nvmlCount(count, "nvmlDeviceGetCount_v2")
}

/// Hands out the device's handle if `matches` accepts the open device, else `otherwise`.
func nvmlHandle(
  _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ call: String, otherwise: Int32,
  _ matches: (Device) -> Bool
) -> Int32 {
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  guard let out else { return NVMLReturn.invalidArgument }
  guard let d = ShimRuntime.shared.deviceIfAvailable, matches(d) else { return otherwise }
  out.pointee = NVMLState.handle
  return NVMLReturn.success
}

@_cdecl("vgpucore_nvmlDeviceGetHandleByIndex")
public func vgpucore_nvmlDeviceGetHandleByIndex(
  _ index: UInt32, _ device: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  nvmlHandle(device, "nvmlDeviceGetHandleByIndex", otherwise: NVMLReturn.invalidArgument) { _ in index == 0 }
}

@_cdecl("vgpucore_nvmlDeviceGetHandleByIndex_v2")
public func vgpucore_nvmlDeviceGetHandleByIndex_v2(
  _ index: UInt32, _ device: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  nvmlHandle(device, "nvmlDeviceGetHandleByIndex_v2", otherwise: NVMLReturn.invalidArgument) { _ in index == 0 }
}

/// By `GPU-xxxxxxxx-...` (letter case ignored), as cuDeviceGetUuid and nvmlDeviceGetUUID print it.
@_cdecl("vgpucore_nvmlDeviceGetHandleByUUID")
public func vgpucore_nvmlDeviceGetHandleByUUID(
  _ uuid: UnsafePointer<CChar>?, _ device: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let uuid else { return NVMLState.shared.initialized ? NVMLReturn.invalidArgument : NVMLReturn.uninitialized }
  let wanted = String(cString: uuid).lowercased()
  return nvmlHandle(device, "nvmlDeviceGetHandleByUUID", otherwise: NVMLReturn.notFound) {
    $0.info.identity.uuidString.lowercased() == wanted
  }
}

/// `[domain:]bus:device[.function]` in hex, as NVML accepts it ("00000000:00:05.0",
/// "0000:00:05.0", "00:05.0"); nil if it is none.
func nvmlParsePCIBusID(_ text: String) -> (domain: UInt32, bus: UInt32, device: UInt32, function: UInt32)? {
  let parts = text.split(separator: ":", omittingEmptySubsequences: false)
  guard parts.count == 2 || parts.count == 3 else { return nil }
  let slot = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
  guard slot.count == 1 || slot.count == 2 else { return nil }
  func nvmlHex(_ s: Substring) -> UInt32? { s.isEmpty || s.count > 8 ? nil : UInt32(s, radix: 16) }
  guard let bus = nvmlHex(parts[parts.count - 2]), let device = nvmlHex(slot[0]) else { return nil }
  let domain = parts.count == 3 ? nvmlHex(parts[0]) : 0
  let function = slot.count == 2 ? nvmlHex(slot[1]) : 0
  guard let domain, let function else { return nil }
  return (domain, bus, device, function)
}

func nvmlHandleByPCIBusID(
  _ busID: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ call: String
) -> Int32 {
  guard NVMLState.shared.initialized else { return NVMLReturn.uninitialized }
  guard let busID, let wanted = nvmlParsePCIBusID(String(cString: busID)) else { return NVMLReturn.invalidArgument }
  return nvmlHandle(out, call, otherwise: NVMLReturn.notFound) {
    guard let ours = nvmlParsePCIBusID($0.info.identity.pciBusID) else { return false }
    return ours == wanted
  }
}

@_cdecl("vgpucore_nvmlDeviceGetHandleByPciBusId")
public func vgpucore_nvmlDeviceGetHandleByPciBusId(
  _ busID: UnsafePointer<CChar>?, _ device: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  nvmlHandleByPCIBusID(busID, device, "nvmlDeviceGetHandleByPciBusId")
}

@_cdecl("vgpucore_nvmlDeviceGetHandleByPciBusId_v2")
public func vgpucore_nvmlDeviceGetHandleByPciBusId_v2(
  _ busID: UnsafePointer<CChar>?, _ device: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  nvmlHandleByPCIBusID(busID, device, "nvmlDeviceGetHandleByPciBusId_v2")
}
