import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// The host's NVML (libnvidia-ml.so.1, loaded with dlopen, never linked):
/// how busy the real GPU is, which the device reports to its guests as busy
/// time (their NVML turns it into utilization). Optional: without it the
/// device's busy time is the time it spends serving commands.
public final class HostNVML: @unchecked Sendable {
  typealias Handle = OpaquePointer?
  private let getUtilization: @convention(c) (Handle, UnsafeMutablePointer<UInt32>?) -> Int32
  private let device: OpaquePointer
  /// The library's file, for logs.
  public let path: String

  /// Loads `path` and finds the GPU whose UUID is `uuid` ("GPU-…", as
  /// nvidia-smi and cuDeviceGetUuid give it). The error is one line.
  public init(path: String = "libnvidia-ml.so.1", uuid: String) throws(CUDADriverError) {
    guard let library = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
      throw CUDADriverError(
        .libraryNotFound,
        "cannot load NVML (\(path)): \(dlerror().map { String(cString: $0) } ?? "not found"); utilization will be the time spent serving commands. It comes with the NVIDIA driver."
      )
    }
    func symbol<T>(_ name: String, as: T.Type) throws(CUDADriverError) -> T {
      guard let p = dlsym(library, name) else {
        throw CUDADriverError(.missingSymbol, "NVML (\(path)) has no \(name): it is too old or not NVIDIA's")
      }
      return unsafeBitCast(p, to: T.self)
    }
    typealias Init = @convention(c) () -> Int32
    typealias ByUUID = @convention(c) (UnsafePointer<CChar>?, UnsafeMutablePointer<Handle>?) -> Int32
    let initialize = try symbol("nvmlInit_v2", as: Init.self)
    let byUUID = try symbol("nvmlDeviceGetHandleByUUID", as: ByUUID.self)
    // nvmlDeviceGetUtilizationRates(nvmlDevice_t, nvmlUtilization_t *{gpu, memory}) (nvml.h).
    getUtilization = try symbol(
      "nvmlDeviceGetUtilizationRates", as: (@convention(c) (Handle, UnsafeMutablePointer<UInt32>?) -> Int32).self)
    let r = initialize()
    guard r == 0 else {
      throw CUDADriverError(.initFailed, result: r, "nvmlInit_v2 in \(path) failed: NVML error \(r)")
    }
    var handle: Handle = nil
    let found = uuid.withCString { byUUID($0, &handle) }
    guard found == 0, let handle else {
      throw CUDADriverError(.noDevice, result: found, "NVML (\(path)) knows no GPU \(uuid): NVML error \(found)")
    }
    device = handle
    let file = vgpu_loaded_file(unsafeBitCast(getUtilization, to: UnsafeRawPointer.self))
    self.path = file.map { String(cString: $0) } ?? path
  }

  /// The share of the last sample period (1/6 s to 1 s, as the driver
  /// chooses) the GPU ran kernels, 0-100; nil when NVML cannot say.
  public func utilization() -> UInt32? {
    var rates: (UInt32, UInt32) = (0, 0)
    let r = withUnsafeMutableBytes(of: &rates) {
      getUtilization(device, $0.baseAddress!.assumingMemoryBound(to: UInt32.self))
    }
    return r == 0 ? min(rates.0, 100) : nil
  }
}

/// The GPU's busy time, integrated from NVML's utilization: each reading
/// covers the time since the previous one.
struct BusyClock {
  var busy: UInt64 = 0
  var sampled: UInt64 = 0

  mutating func advance(_ nvml: HostNVML, now: UInt64) -> UInt64 {
    // NVML's own sample period is at least 1/6 s: reading more often adds nothing.
    if sampled == 0 || now &- sampled >= 100_000_000 {
      // The first reading starts NVML's interval too (a vGPU's NVML measures from its previous call).
      let u = nvml.utilization()
      if sampled != 0, let u { busy &+= (now &- sampled) * UInt64(u) / 100 }
      sampled = now
    }
    return busy
  }
}
