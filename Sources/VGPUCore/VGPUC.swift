import ShimCore
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// The vgpu C API (include/vgpu.h) over the client API: shims/vgpu.c forwards each vgpu_*
// function to vgpucore_vgpu_* here. A vgpu_device * is a retained Device.

/// vgpu_status values (include/vgpu.h): the protocol's CommandStatus values, and these below 0.
enum VGPUStatusCode {
  static let success: Int32 = 0
  static let timeout: Int32 = -1
  static let protocolViolation: Int32 = -2
  static let unavailable: Int32 = -3
  static let incompatibleVersion: Int32 = -4
  static let invalidArgument: Int32 = -5
  static let unsupported: Int32 = -6
  static let closed: Int32 = -7
  static let coreMissing: Int32 = -8

  static func of(_ kind: VGPUError.Kind) -> Int32 {
    switch kind {
    case .device(let status): Int32(status.rawValue)
    case .timeout: timeout
    case .protocolViolation: protocolViolation
    case .unavailable: unavailable
    case .versionMismatch: incompatibleVersion
    case .invalidArgument: invalidArgument
    case .unsupported: unsupported
    case .closed: closed
    }
  }

  /// What vgpu_error_string says for each code.
  static func text(_ code: Int32) -> String {
    if code >= 0, code <= Int32(UInt16.max), let status = CommandStatus(rawValue: UInt16(code)) {
      return status.description
    }
    switch code {
    case timeout: return "timed out waiting for the device"
    case protocolViolation: return "the device broke the protocol"
    case unavailable: return "device unavailable"
    case incompatibleVersion: return "the device speaks another protocol version"
    case invalidArgument: return "invalid argument"
    case unsupported: return "not supported with this device"
    case closed: return "device closed, or opened by another process"
    case coreMissing: return "libvgpucore.so could not be loaded"
    default: return "unknown status \(code)"
    }
  }
}

// MARK: Errors, per thread

/// The thread's last error message: a malloc'd C string under a pthread key, freed
/// with the thread or when replaced.
let vgpucLastErrorKey: pthread_key_t = {
  var key = pthread_key_t()
  pthread_key_create(&key) { free($0) }
  return key
}()

/// "" for a thread that has had no error: one static C string, never freed.
nonisolated(unsafe) let vgpucEmptyCString: UnsafeMutablePointer<CChar> = strdup("")!

func vgpucSetLastError(_ message: String) {
  let old = pthread_getspecific(vgpucLastErrorKey)
  pthread_setspecific(vgpucLastErrorKey, strdup(message))
  free(old)
}

/// Records `error` as this thread's last and returns its status code.
func vgpucFail(_ error: VGPUError) -> Int32 {
  vgpucSetLastError(error.description)
  return VGPUStatusCode.of(error.kind)
}

/// Records an argument the caller got wrong.
func vgpucFailArgument(_ call: String, _ what: String) -> Int32 {
  vgpucSetLastError("\(call): \(what)")
  return VGPUStatusCode.invalidArgument
}

/// The strings of vgpu_error_string, made once, never freed (static for the caller).
nonisolated(unsafe) let vgpucErrorStrings: [Int32: UnsafeMutablePointer<CChar>] = {
  var table: [Int32: UnsafeMutablePointer<CChar>] = [:]
  for code in Int32(-8)...Int32(CommandStatus.allCases.count - 1) { table[code] = strdup(VGPUStatusCode.text(code))! }
  return table
}()
nonisolated(unsafe) let vgpucUnknownStatusCString: UnsafeMutablePointer<CChar> = strdup("unknown status")!

@_cdecl("vgpucore_vgpu_error_string")
public func vgpucore_vgpu_error_string(_ status: Int32) -> UnsafePointer<CChar> {
  UnsafePointer(vgpucErrorStrings[status] ?? vgpucUnknownStatusCString)
}

@_cdecl("vgpucore_vgpu_last_error_message")
public func vgpucore_vgpu_last_error_message() -> UnsafePointer<CChar> {
  UnsafePointer((pthread_getspecific(vgpucLastErrorKey)?.assumingMemoryBound(to: CChar.self)) ?? vgpucEmptyCString)
}

// MARK: Devices

/// The Device behind a handle, if the handle is usable in this process.
func vgpucDevice(_ handle: UnsafeMutableRawPointer?, _ call: String) -> Result<Device, VGPUCFailure> {
  guard let handle else { return .failure(VGPUCFailure(code: vgpucFailArgument(call, "the device is NULL"))) }
  let d = Unmanaged<Device>.fromOpaque(handle).takeUnretainedValue()
  guard d.openedBy == getpid() else {
    vgpucSetLastError(
      "\(call) on \(d.info.spec): the device was opened by process \(d.openedBy), this is \(getpid()) (a forked child); vgpu_open a device in this process"
    )
    return .failure(VGPUCFailure(code: VGPUStatusCode.closed))
  }
  return .success(d)
}

struct VGPUCFailure: Error { var code: Int32 }

/// Runs `body` on the device behind `handle`; failures become status codes and the thread's message.
func vgpucWithDevice(_ handle: UnsafeMutableRawPointer?, _ call: String, _ body: (Device) throws(VGPUError) -> Void)
  -> Int32
{
  switch vgpucDevice(handle, call) {
  case .failure(let f): return f.code
  case .success(let d):
    do throws(VGPUError) {
      try body(d)
      return VGPUStatusCode.success
    } catch { return vgpucFail(error) }
  }
}

@_cdecl("vgpucore_vgpu_open")
public func vgpucore_vgpu_open(_ name: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>?)
  -> Int32
{
  guard let out else { return vgpucFailArgument("vgpu_open", "out is NULL") }
  out.pointee = nil
  let spec = name.map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? ShimRuntime.shared.deviceName
  do throws(VGPUError) {
    let d = try Device.open(spec)
    out.pointee = Unmanaged.passRetained(d).toOpaque()
    return VGPUStatusCode.success
  } catch { return vgpucFail(error) }
}

@_cdecl("vgpucore_vgpu_close")
public func vgpucore_vgpu_close(_ handle: UnsafeMutableRawPointer?) -> Int32 {
  guard let handle else { return VGPUStatusCode.success }
  let d = Unmanaged<Device>.fromOpaque(handle).takeRetainedValue()
  // In a forked child the queue pairs are the parent's: let go without closing them.
  if d.openedBy == getpid() { d.close() } else { d.abandonAfterFork() }
  return VGPUStatusCode.success
}

/// vgpu_info's offsets (include/vgpu.h; shims/vgpu.c asserts them).
enum VGPUInfoLayout {
  static let name = 0, uuid = 64, uuidBytes = 112, pciBusID = 128, driverVersion = 144
  static let memoryTotal = 176, computeMajor = 184, computeMinor = 188, cudaDriverVersion = 192
  static let multiprocessorCount = 196, protocolMajor = 200, protocolMinor = 204, features = 208
  static let queuePairs = 216, queuePairsOnDevice = 220, size = 224
}

@_cdecl("vgpucore_vgpu_get_info")
public func vgpucore_vgpu_get_info(_ handle: UnsafeMutableRawPointer?, _ out: UnsafeMutableRawPointer?) -> Int32 {
  guard let out else { return vgpucFailArgument("vgpu_get_info", "out is NULL") }
  return vgpucWithDevice(handle, "vgpu_get_info") { (d) throws(VGPUError) in
    let i = d.info
    let L = VGPUInfoLayout.self
    out.initializeMemory(as: UInt8.self, repeating: 0, count: L.size)
    out.storeField(i.identity.name, at: L.name, capacity: 64)
    out.storeField(i.identity.uuidString, at: L.uuid, capacity: 48)
    for (k, b) in i.identity.uuid.prefix(16).enumerated() {
      out.storeBytes(of: b, toByteOffset: L.uuidBytes + k, as: UInt8.self)
    }
    out.storeField(i.identity.pciBusID, at: L.pciBusID, capacity: 16)
    out.storeField(i.identity.driverVersion, at: L.driverVersion, capacity: 32)
    out.storeField(i.identity.memorySize, at: L.memoryTotal)
    out.storeField(i.identity.computeCapability.major, at: L.computeMajor)
    out.storeField(i.identity.computeCapability.minor, at: L.computeMinor)
    out.storeField(i.identity.cudaDriverVersion, at: L.cudaDriverVersion)
    out.storeField(i.identity.multiprocessorCount, at: L.multiprocessorCount)
    out.storeField(UInt32(i.protocolVersion.major), at: L.protocolMajor)
    out.storeField(UInt32(i.protocolVersion.minor), at: L.protocolMinor)
    out.storeField(i.features.rawValue, at: L.features)
    out.storeField(UInt32(i.queuePairs), at: L.queuePairs)
    out.storeField(UInt32(i.queuePairsOnDevice), at: L.queuePairsOnDevice)
  }
}

@_cdecl("vgpucore_vgpu_mem_info")
public func vgpucore_vgpu_mem_info(
  _ handle: UnsafeMutableRawPointer?, _ free: UnsafeMutablePointer<UInt64>?, _ total: UnsafeMutablePointer<UInt64>?
) -> Int32 {
  vgpucWithDevice(handle, "vgpu_mem_info") { (d) throws(VGPUError) in
    let m = try d.memoryInfo()
    free?.pointee = m.free
    total?.pointee = m.total
  }
}

// MARK: Memory

@_cdecl("vgpucore_vgpu_alloc")
public func vgpucore_vgpu_alloc(_ handle: UnsafeMutableRawPointer?, _ bytes: Int, _ out: UnsafeMutablePointer<UInt64>?)
  -> Int32
{
  guard let out else { return vgpucFailArgument("vgpu_alloc", "out is NULL") }
  guard bytes > 0 else { return vgpucFailArgument("vgpu_alloc", "0 bytes (or more than the address space)") }
  return vgpucWithDevice(handle, "vgpu_alloc") { (d) throws(VGPUError) in out.pointee = try d.allocate(bytes).address }
}

@_cdecl("vgpucore_vgpu_free")
public func vgpucore_vgpu_free(_ handle: UnsafeMutableRawPointer?, _ pointer: UInt64) -> Int32 {
  vgpucWithDevice(handle, "vgpu_free") { (d) throws(VGPUError) in try d.free(DevicePointer(pointer)) }
}

/// `bytes` as a Swift count: a size_t above Int.max arrives negative.
func vgpucByteCount(_ bytes: Int, _ call: String) -> Int32? {
  bytes < 0 ? vgpucFailArgument(call, "\(UInt(bitPattern: bytes)) bytes is more than the address space") : nil
}

@_cdecl("vgpucore_vgpu_copy_to_device")
public func vgpucore_vgpu_copy_to_device(
  _ handle: UnsafeMutableRawPointer?, _ destination: UInt64, _ source: UnsafeRawPointer?, _ bytes: Int
) -> Int32 {
  if let bad = vgpucByteCount(bytes, "vgpu_copy_to_device") { return bad }
  guard bytes == 0 || source != nil else { return vgpucFailArgument("vgpu_copy_to_device", "src is NULL") }
  return vgpucWithDevice(handle, "vgpu_copy_to_device") { (d) throws(VGPUError) in
    try d.copy(to: DevicePointer(destination), from: UnsafeRawBufferPointer(start: source, count: bytes))
  }
}

@_cdecl("vgpucore_vgpu_copy_from_device")
public func vgpucore_vgpu_copy_from_device(
  _ handle: UnsafeMutableRawPointer?, _ destination: UnsafeMutableRawPointer?, _ source: UInt64, _ bytes: Int
) -> Int32 {
  if let bad = vgpucByteCount(bytes, "vgpu_copy_from_device") { return bad }
  guard bytes == 0 || destination != nil else { return vgpucFailArgument("vgpu_copy_from_device", "dst is NULL") }
  return vgpucWithDevice(handle, "vgpu_copy_from_device") { (d) throws(VGPUError) in
    try d.copy(from: DevicePointer(source), into: UnsafeMutableRawBufferPointer(start: destination, count: bytes))
  }
}

@_cdecl("vgpucore_vgpu_copy_device")
public func vgpucore_vgpu_copy_device(
  _ handle: UnsafeMutableRawPointer?, _ destination: UInt64, _ source: UInt64, _ bytes: Int
) -> Int32 {
  if let bad = vgpucByteCount(bytes, "vgpu_copy_device") { return bad }
  return vgpucWithDevice(handle, "vgpu_copy_device") { (d) throws(VGPUError) in
    try d.copy(to: DevicePointer(destination), from: DevicePointer(source), count: bytes)
  }
}

@_cdecl("vgpucore_vgpu_memset")
public func vgpucore_vgpu_memset(
  _ handle: UnsafeMutableRawPointer?, _ destination: UInt64, _ value: UInt32, _ elementSize: Int, _ count: Int
) -> Int32 {
  if let bad = vgpucByteCount(count, "vgpu_memset") { return bad }
  guard [1, 2, 4].contains(elementSize) else {
    return vgpucFailArgument("vgpu_memset", "element size \(elementSize); it must be 1, 2 or 4")
  }
  return vgpucWithDevice(handle, "vgpu_memset") { (d) throws(VGPUError) in
    try d.memset(DevicePointer(destination), value: value, elementSize: elementSize, count: count)
  }
}

// MARK: Modules and launches

@_cdecl("vgpucore_vgpu_module_load")
public func vgpucore_vgpu_module_load(
  _ handle: UnsafeMutableRawPointer?, _ image: UnsafeRawPointer?, _ size: Int, _ out: UnsafeMutablePointer<UInt64>?
) -> Int32 {
  guard let out else { return vgpucFailArgument("vgpu_module_load", "out is NULL") }
  guard let image, size > 0 else { return vgpucFailArgument("vgpu_module_load", "the image is NULL or empty") }
  let bytes = Array(UnsafeRawBufferPointer(start: image, count: size))
  return vgpucWithDevice(handle, "vgpu_module_load") { (d) throws(VGPUError) in
    out.pointee = try d.loadModule(bytes).raw
  }
}

@_cdecl("vgpucore_vgpu_module_unload")
public func vgpucore_vgpu_module_unload(_ handle: UnsafeMutableRawPointer?, _ module: UInt64) -> Int32 {
  vgpucWithDevice(handle, "vgpu_module_unload") { (d) throws(VGPUError) in try d.unloadModule(ModuleHandle(raw: module))
  }
}

@_cdecl("vgpucore_vgpu_module_get_function")
public func vgpucore_vgpu_module_get_function(
  _ handle: UnsafeMutableRawPointer?, _ module: UInt64, _ name: UnsafePointer<CChar>?,
  _ out: UnsafeMutablePointer<UInt64>?, _ parameterSize: UnsafeMutablePointer<Int>?
) -> Int32 {
  guard let out else { return vgpucFailArgument("vgpu_module_get_function", "out is NULL") }
  guard let name else { return vgpucFailArgument("vgpu_module_get_function", "name is NULL") }
  let text = String(cString: name)
  return vgpucWithDevice(handle, "vgpu_module_get_function") { (d) throws(VGPUError) in
    let f = try d.function(text, in: ModuleHandle(raw: module))
    out.pointee = f.raw
    parameterSize?.pointee = f.parameterSize
  }
}

@_cdecl("vgpucore_vgpu_launch")
public func vgpucore_vgpu_launch(
  _ handle: UnsafeMutableRawPointer?, _ function: UInt64, _ grid: UnsafePointer<UInt32>?,
  _ block: UnsafePointer<UInt32>?, _ sharedBytes: UInt32, _ parameters: UnsafeRawPointer?, _ parameterSize: Int
) -> Int32 {
  guard let grid, let block else { return vgpucFailArgument("vgpu_launch", "no dimensions") }
  if let bad = vgpucByteCount(parameterSize, "vgpu_launch") { return bad }
  guard parameterSize == 0 || parameters != nil else { return vgpucFailArgument("vgpu_launch", "params is NULL") }
  return vgpucWithDevice(handle, "vgpu_launch") { (d) throws(VGPUError) in
    try d.launch(
      FunctionHandle(raw: function, parameterSize: parameterSize), grid: Dimensions(grid[0], grid[1], grid[2]),
      block: Dimensions(block[0], block[1], block[2]), sharedMemory: sharedBytes,
      parameters: UnsafeRawBufferPointer(start: parameterSize == 0 ? nil : parameters, count: parameterSize))
  }
}

@_cdecl("vgpucore_vgpu_synchronize")
public func vgpucore_vgpu_synchronize(_ handle: UnsafeMutableRawPointer?) -> Int32 {
  vgpucWithDevice(handle, "vgpu_synchronize") { (d) throws(VGPUError) in try d.synchronize() }
}

// MARK: Activity

@_cdecl("vgpucore_vgpu_statistics")
public func vgpucore_vgpu_statistics(
  _ handle: UnsafeMutableRawPointer?, _ scope: Int32, _ out: UnsafeMutableRawPointer?
)
  -> Int32
{
  guard let out else { return vgpucFailArgument("vgpu_statistics", "out is NULL") }
  guard scope >= 0, let s = StatisticsScope(rawValue: UInt64(scope)) else {
    return vgpucFailArgument("vgpu_statistics", "scope \(scope); it must be 0 (process), 1 (queue pair) or 2 (device)")
  }
  return vgpucWithDevice(handle, "vgpu_statistics") { (d) throws(VGPUError) in
    // vgpu_stats is the wire format's StatisticsRecord, field for field.
    out.storeBytes(of: try d.statistics(s), as: StatisticsRecord.self)
  }
}

@_cdecl("vgpucore_vgpu_processes")
public func vgpucore_vgpu_processes(
  _ handle: UnsafeMutableRawPointer?, _ out: UnsafeMutableRawPointer?, _ capacity: Int,
  _ count: UnsafeMutablePointer<Int>?
) -> Int32 {
  guard let count else { return vgpucFailArgument("vgpu_processes", "count is NULL") }
  guard capacity == 0 || out != nil else { return vgpucFailArgument("vgpu_processes", "out is NULL") }
  return vgpucWithDevice(handle, "vgpu_processes") { (d) throws(VGPUError) in
    let records = try d.processes()
    // vgpu_process_info is the wire format's ProcessRecord, field for field.
    for (i, r) in records.prefix(max(0, capacity)).enumerated() {
      out!.storeBytes(of: r, toByteOffset: i * ProcessRecord.size, as: ProcessRecord.self)
    }
    count.pointee = records.count
  }
}
