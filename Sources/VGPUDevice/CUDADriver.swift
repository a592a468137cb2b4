import CSupport

#if canImport(Glibc)
  import Glibc
#endif

// The host's NVIDIA driver API (libcuda.so.1), loaded at run time: the
// mediator's CUDA backend is never linked against it, so that a mediator
// built here runs (with the reference device) on a machine without the
// driver, and says clearly why `--backend cuda` cannot start there.
//
// Every entry point is resolved by the exported symbol name that cuda.h
// (CUDA 12.x) maps its API name to: `#define cuMemAlloc cuMemAlloc_v2` and
// friends. The types are cuda.h's on LP64: CUresult and enums are C ints
// (Int32), CUdevice an int, CUdeviceptr an unsigned long long (UInt64),
// size_t Int, handles (CUcontext, CUmodule, CUfunction, CUstream, CUevent)
// opaque pointers.
//
// Loading this file's module does nothing; the library is opened only by
// `CUDADriver.load`, and never closed (NVIDIA's driver does not support
// being unloaded from a process that initialised it).

/// Why the host's CUDA driver could not be used: one line that says what was
/// attempted, what was found, and what to do next.
public struct CUDADriverError: Error, CustomStringConvertible, Sendable {
  /// What went wrong, for code that must tell the cases apart.
  public enum Kind: Sendable, Equatable {
    /// dlopen failed: no such library, or not loadable.
    case libraryNotFound
    /// The library lacks an entry point every supported driver has.
    case missingSymbol
    /// cuInit failed (`result` holds its CUresult).
    case initFailed
    /// No device at the ordinal asked for.
    case noDevice
    /// Another driver call failed (`result` holds its CUresult).
    case callFailed
  }

  public let kind: Kind
  /// The CUresult of the failed call, when a call failed.
  public let result: Int32?
  public let description: String

  init(_ kind: Kind, result: Int32? = nil, _ description: String) {
    self.kind = kind
    self.result = result
    self.description = description
  }
}

/// The identity and shape of one GPU, as its driver reports them.
public struct CUDADeviceIdentity: Sendable, Equatable, CustomStringConvertible {
  /// The ordinal asked for, and the CUdevice the driver gave for it.
  public var ordinal: Int32
  public var device: Int32
  public var name: String
  /// cuDeviceGetUuid's 16 bytes (the UUID nvidia-smi shows as GPU-…).
  public var uuid: [UInt8]
  public var computeCapabilityMajor: Int32
  public var computeCapabilityMinor: Int32
  public var multiprocessorCount: Int32
  /// cuDeviceTotalMem_v2, in bytes.
  public var totalMemory: Int
  public var maxThreadsPerBlock: Int32
  public var warpSize: Int32
  /// The shared memory a block may opt in to (cuFuncSetAttribute), in bytes.
  public var maxSharedMemoryPerBlockOptin: Int32
  public var l2CacheSize: Int32
  /// In kHz; 0 where the driver no longer reports it (CUDA 13 deprecates both).
  public var clockRateKHz: Int32
  public var memoryClockRateKHz: Int32
  /// In bits.
  public var memoryBusWidth: Int32
  public var pciDomain: Int32
  public var pciBus: Int32
  public var pciDevice: Int32

  /// The UUID as nvidia-smi prints it: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
  public var uuidString: String {
    var s = "GPU-"
    for (i, b) in uuid.enumerated() {
      if i == 4 || i == 6 || i == 8 || i == 10 { s += "-" }
      s += String(b >> 4, radix: 16) + String(b & 0xf, radix: 16)
    }
    return s
  }

  /// The PCI address as lspci prints it: 0000:65:00.0.
  public var pciAddress: String {
    func hex(_ v: Int32, _ width: Int) -> String {
      let s = String(UInt32(bitPattern: v), radix: 16)
      return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(hex(pciDomain, 4)):\(hex(pciBus, 2)):\(hex(pciDevice, 2)).0"
  }

  public var description: String {
    "\(name) (\(uuidString), sm_\(computeCapabilityMajor)\(computeCapabilityMinor), \(multiprocessorCount) SMs, "
      + "\(totalMemory >> 20) MiB, PCI \(pciAddress))"
  }
}

/// The host's CUDA driver API, resolved from libcuda.so.1 with dlopen/dlsym.
///
/// Each entry point is a stored C function pointer: calling one costs what a
/// call through libcuda's own PLT costs, and allocates nothing. Optional
/// entry points (newer than the oldest supported driver) are nil when the
/// driver lacks them.
public final class CUDADriver: @unchecked Sendable {
  public typealias CUresult = Int32
  public typealias CUdevice = Int32
  public typealias CUdeviceptr = UInt64
  /// CUcontext, CUmodule, CUfunction, CUstream, CUevent.
  public typealias Handle = OpaquePointer?
  public typealias HandleOut = UnsafeMutablePointer<OpaquePointer?>?
  public typealias StringOut = UnsafeMutablePointer<UnsafePointer<CChar>?>?
  public typealias ParameterArray = UnsafeMutablePointer<UnsafeMutableRawPointer?>?

  // MARK: Entry points (cuda.h signatures)

  /// cuInit(unsigned int Flags)
  public let cuInit: @convention(c) (UInt32) -> CUresult
  /// cuDriverGetVersion(int *driverVersion)
  public let cuDriverGetVersion: @convention(c) (UnsafeMutablePointer<Int32>?) -> CUresult
  /// cuDeviceGet(CUdevice *device, int ordinal)
  public let cuDeviceGet: @convention(c) (UnsafeMutablePointer<CUdevice>?, Int32) -> CUresult
  /// cuDeviceGetCount(int *count)
  public let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>?) -> CUresult
  /// cuDeviceGetName(char *name, int len, CUdevice dev)
  public let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, CUdevice) -> CUresult
  /// cuDeviceGetUuid(CUuuid *uuid, CUdevice dev): CUuuid is 16 bytes.
  public let cuDeviceGetUuid: @convention(c) (UnsafeMutableRawPointer?, CUdevice) -> CUresult
  /// cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
  public let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>?, Int32, CUdevice) -> CUresult
  /// cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
  public let cuDeviceTotalMem: @convention(c) (UnsafeMutablePointer<Int>?, CUdevice) -> CUresult
  /// cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
  public let cuCtxCreate: @convention(c) (HandleOut, UInt32, CUdevice) -> CUresult
  /// cuCtxDestroy_v2(CUcontext ctx)
  public let cuCtxDestroy: @convention(c) (Handle) -> CUresult
  /// cuCtxSetCurrent(CUcontext ctx)
  public let cuCtxSetCurrent: @convention(c) (Handle) -> CUresult
  /// cuCtxSynchronize(void)
  public let cuCtxSynchronize: @convention(c) () -> CUresult
  /// cuCtxSetLimit(CUlimit limit, size_t value); optional (a shim may not have it).
  public let cuCtxSetLimit: (@convention(c) (Int32, Int) -> CUresult)?
  /// cuMemGetInfo_v2(size_t *free, size_t *total)
  public let cuMemGetInfo: @convention(c) (UnsafeMutablePointer<Int>?, UnsafeMutablePointer<Int>?) -> CUresult
  /// cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
  public let cuMemAlloc: @convention(c) (UnsafeMutablePointer<CUdeviceptr>?, Int) -> CUresult
  /// cuMemFree_v2(CUdeviceptr dptr)
  public let cuMemFree: @convention(c) (CUdeviceptr) -> CUresult
  /// cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
  public let cuMemHostRegister: @convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> CUresult
  /// cuMemHostUnregister(void *p)
  public let cuMemHostUnregister: @convention(c) (UnsafeMutableRawPointer?) -> CUresult
  /// cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream)
  public let cuMemcpyHtoDAsync: @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, Handle) -> CUresult
  /// cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream)
  public let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, Handle) -> CUresult
  /// cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream)
  public let cuMemcpyDtoDAsync: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Handle) -> CUresult
  /// cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream)
  public let cuMemsetD8Async: @convention(c) (CUdeviceptr, UInt8, Int, Handle) -> CUresult
  /// cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N, CUstream hStream)
  public let cuMemsetD16Async: @convention(c) (CUdeviceptr, UInt16, Int, Handle) -> CUresult
  /// cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream)
  public let cuMemsetD32Async: @convention(c) (CUdeviceptr, UInt32, Int, Handle) -> CUresult
  /// cuStreamCreate(CUstream *phStream, unsigned int Flags)
  public let cuStreamCreate: @convention(c) (HandleOut, UInt32) -> CUresult
  /// cuStreamDestroy_v2(CUstream hStream)
  public let cuStreamDestroy: @convention(c) (Handle) -> CUresult
  /// cuStreamSynchronize(CUstream hStream)
  public let cuStreamSynchronize: @convention(c) (Handle) -> CUresult
  /// cuStreamQuery(CUstream hStream): CUDA_SUCCESS when idle, CUDA_ERROR_NOT_READY (600) while busy.
  public let cuStreamQuery: @convention(c) (Handle) -> CUresult
  /// cuEventCreate(CUevent *phEvent, unsigned int Flags)
  public let cuEventCreate: @convention(c) (HandleOut, UInt32) -> CUresult
  /// cuEventDestroy_v2(CUevent hEvent)
  public let cuEventDestroy: @convention(c) (Handle) -> CUresult
  /// cuEventRecord(CUevent hEvent, CUstream hStream)
  public let cuEventRecord: @convention(c) (Handle, Handle) -> CUresult
  /// cuEventQuery(CUevent hEvent): CUDA_SUCCESS when complete, CUDA_ERROR_NOT_READY (600) before.
  public let cuEventQuery: @convention(c) (Handle) -> CUresult
  /// cuEventSynchronize(CUevent hEvent)
  public let cuEventSynchronize: @convention(c) (Handle) -> CUresult
  /// cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
  public let cuEventElapsedTime: @convention(c) (UnsafeMutablePointer<Float>?, Handle, Handle) -> CUresult
  /// cuModuleLoadData(CUmodule *module, const void *image)
  public let cuModuleLoadData: @convention(c) (HandleOut, UnsafeRawPointer?) -> CUresult
  /// cuModuleUnload(CUmodule hmod)
  public let cuModuleUnload: @convention(c) (Handle) -> CUresult
  /// cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
  public let cuModuleGetFunction: @convention(c) (HandleOut, Handle, UnsafePointer<CChar>?) -> CUresult
  /// cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name)
  public let cuModuleGetGlobal:
    @convention(c) (UnsafeMutablePointer<CUdeviceptr>?, UnsafeMutablePointer<Int>?, Handle, UnsafePointer<CChar>?) ->
      CUresult
  /// cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
  public let cuFuncGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>?, Int32, Handle) -> CUresult
  /// cuLaunchKernel(CUfunction f, gridDimX, gridDimY, gridDimZ, blockDimX,
  /// blockDimY, blockDimZ, sharedMemBytes, CUstream hStream, void
  /// **kernelParams, void **extra)
  public let cuLaunchKernel:
    @convention(c) (
      Handle, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, Handle, ParameterArray, ParameterArray
    ) -> CUresult
  /// cuGetErrorName(CUresult error, const char **pStr)
  public let cuGetErrorName: @convention(c) (CUresult, StringOut) -> CUresult
  /// cuGetErrorString(CUresult error, const char **pStr)
  public let cuGetErrorString: @convention(c) (CUresult, StringOut) -> CUresult

  // Optional: nil on drivers older than the version named.

  /// cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset, size_t *paramSize): CUDA 12.4.
  public let cuFuncGetParamInfo:
    (@convention(c) (Handle, Int, UnsafeMutablePointer<Int>?, UnsafeMutablePointer<Int>?) -> CUresult)?
  /// cuModuleGetFunctionCount(unsigned int *count, CUmodule mod): CUDA 12.4.
  public let cuModuleGetFunctionCount: (@convention(c) (UnsafeMutablePointer<UInt32>?, Handle) -> CUresult)?
  /// cuModuleEnumerateFunctions(CUfunction *functions, unsigned int numFunctions, CUmodule mod): CUDA 12.4.
  public let cuModuleEnumerateFunctions: (@convention(c) (HandleOut, UInt32, Handle) -> CUresult)?
  /// cuFuncGetName(const char **name, CUfunction hfunc): CUDA 12.3.
  public let cuFuncGetName: (@convention(c) (StringOut, Handle) -> CUresult)?
  /// cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void
  /// **kernelParams, void **extra): CUDA 12.0; cooperative launches use it.
  public let cuLaunchKernelEx: (@convention(c) (UnsafeRawPointer?, Handle, ParameterArray, ParameterArray) -> CUresult)?

  // MARK: What was loaded

  /// cuDriverGetVersion's answer: 1000 × major + 10 × minor (12080 is CUDA 12.8).
  public let version: Int32
  /// True when the library is this project's own libcuda.so.1 shim (it
  /// exports `vgpu_shim_identity`, which NVIDIA's driver does not): the
  /// mediator then drives another vGPU device ("layered mode").
  public let isVGPUShim: Bool
  /// The name `load` was given.
  public let requestedPath: String
  /// The file the library was loaded from (symbolic links resolved), as the
  /// dynamic loader found it.
  public var path: String {
    guard let name = vgpu_loaded_file(unsafeBitCast(cuInit, to: UnsafeRawPointer.self)) else { return requestedPath }
    guard let resolved = realpath(name, nil) else { return String(cString: name) }
    defer { free(resolved) }
    return String(cString: resolved)
  }

  private let library: UnsafeMutableRawPointer

  /// Opens the driver library at `path` (a bare name is looked for the way
  /// the dynamic loader does: LD_LIBRARY_PATH, then the ldconfig cache),
  /// resolves every entry point, calls cuInit(0) and cuDriverGetVersion.
  ///
  /// Call once per process; the library stays loaded for the process's life.
  public static func load(path: String = "libcuda.so.1") throws(CUDADriverError) -> CUDADriver {
    guard let library = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
      let reason = dlerror().map { String(cString: $0) } ?? "no reason given"
      let searched =
        path.contains("/")
        ? "no loadable library at \(path)"
        : "\(path) was not found on LD_LIBRARY_PATH (\(getenv("LD_LIBRARY_PATH").map { String(cString: $0) } ?? "unset"))"
          + " nor in the ldconfig cache"
      throw CUDADriverError(
        .libraryNotFound,
        "cannot load the NVIDIA CUDA driver: dlopen(\(path)) failed: \(reason); \(searched). Install the NVIDIA "
          + "driver (its libcuda.so.1; `ldconfig -p | grep libcuda` lists what the loader sees), or pass the "
          + "library's full path")
    }
    do throws(CUDADriverError) {
      let driver = try CUDADriver(library: library, requestedPath: path)
      return driver
    } catch {
      // Nothing of the driver ran when a symbol was missing: it can go.
      if error.kind == .missingSymbol { dlclose(library) }
      throw error
    }
  }

  /// Resolves the entry points, then initialises the driver.
  private init(library: UnsafeMutableRawPointer, requestedPath: String) throws(CUDADriverError) {
    self.library = library
    self.requestedPath = requestedPath
    func required<F>(_ symbol: String, since: Int32) throws(CUDADriverError) -> F {
      guard let p = dlsym(library, symbol) else {
        throw CUDADriverError(
          .missingSymbol,
          "the CUDA driver \(requestedPath) has no \(symbol): it is too old or not NVIDIA's driver (\(symbol) "
            + "appeared in CUDA \(CUDADriver.versionString(since))). Install an NVIDIA driver for CUDA 12.0 or newer "
            + "(R525+)")
      }
      return unsafeBitCast(p, to: F.self)
    }
    func optional<F>(_ symbol: String) -> F? {
      dlsym(library, symbol).map { unsafeBitCast($0, to: F.self) }
    }
    // The versions are those that introduced each exported ABI (cuda.h's
    // `#define name name_v2` mappings; CUDA's cudaTypedefs.h PFN_* names).
    cuInit = try required("cuInit", since: 2000)
    cuDriverGetVersion = try required("cuDriverGetVersion", since: 2020)
    cuDeviceGet = try required("cuDeviceGet", since: 2000)
    cuDeviceGetCount = try required("cuDeviceGetCount", since: 2000)
    cuDeviceGetName = try required("cuDeviceGetName", since: 2000)
    cuDeviceGetUuid = try required("cuDeviceGetUuid", since: 9020)
    cuDeviceGetAttribute = try required("cuDeviceGetAttribute", since: 2000)
    cuDeviceTotalMem = try required("cuDeviceTotalMem_v2", since: 3020)
    cuCtxCreate = try required("cuCtxCreate_v2", since: 3020)
    cuCtxDestroy = try required("cuCtxDestroy_v2", since: 4000)
    cuCtxSetCurrent = try required("cuCtxSetCurrent", since: 4000)
    cuCtxSynchronize = try required("cuCtxSynchronize", since: 2000)
    cuCtxSetLimit = optional("cuCtxSetLimit")
    cuMemGetInfo = try required("cuMemGetInfo_v2", since: 3020)
    cuMemAlloc = try required("cuMemAlloc_v2", since: 3020)
    cuMemFree = try required("cuMemFree_v2", since: 3020)
    cuMemHostRegister = try required("cuMemHostRegister_v2", since: 6050)
    cuMemHostUnregister = try required("cuMemHostUnregister", since: 4000)
    cuMemcpyHtoDAsync = try required("cuMemcpyHtoDAsync_v2", since: 3020)
    cuMemcpyDtoHAsync = try required("cuMemcpyDtoHAsync_v2", since: 3020)
    cuMemcpyDtoDAsync = try required("cuMemcpyDtoDAsync_v2", since: 3020)
    cuMemsetD8Async = try required("cuMemsetD8Async", since: 3020)
    cuMemsetD16Async = try required("cuMemsetD16Async", since: 3020)
    cuMemsetD32Async = try required("cuMemsetD32Async", since: 3020)
    cuStreamCreate = try required("cuStreamCreate", since: 2000)
    cuStreamDestroy = try required("cuStreamDestroy_v2", since: 4000)
    cuStreamSynchronize = try required("cuStreamSynchronize", since: 2000)
    cuStreamQuery = try required("cuStreamQuery", since: 2000)
    cuEventCreate = try required("cuEventCreate", since: 2000)
    cuEventDestroy = try required("cuEventDestroy_v2", since: 4000)
    cuEventRecord = try required("cuEventRecord", since: 2000)
    cuEventQuery = try required("cuEventQuery", since: 2000)
    cuEventSynchronize = try required("cuEventSynchronize", since: 2000)
    cuEventElapsedTime = try required("cuEventElapsedTime", since: 2000)
    cuModuleLoadData = try required("cuModuleLoadData", since: 2000)
    cuModuleUnload = try required("cuModuleUnload", since: 2000)
    cuModuleGetFunction = try required("cuModuleGetFunction", since: 2000)
    cuModuleGetGlobal = try required("cuModuleGetGlobal_v2", since: 3020)
    cuFuncGetAttribute = try required("cuFuncGetAttribute", since: 2020)
    cuLaunchKernel = try required("cuLaunchKernel", since: 4000)
    cuGetErrorName = try required("cuGetErrorName", since: 6000)
    cuGetErrorString = try required("cuGetErrorString", since: 6000)
    cuFuncGetParamInfo = optional("cuFuncGetParamInfo")
    cuModuleGetFunctionCount = optional("cuModuleGetFunctionCount")
    cuModuleEnumerateFunctions = optional("cuModuleEnumerateFunctions")
    cuFuncGetName = optional("cuFuncGetName")
    cuLaunchKernelEx = optional("cuLaunchKernelEx")
    isVGPUShim = dlsym(library, "vgpu_shim_identity") != nil

    let initialised = cuInit(0)
    guard initialised == 0 else {
      // The names come from the driver itself (cuGetErrorName works before cuInit).
      var name: UnsafePointer<CChar>?
      var text: UnsafePointer<CChar>?
      let known = cuGetErrorName(initialised, &name) == 0 && name != nil
      _ = cuGetErrorString(initialised, &text)
      let said =
        "\(known ? String(cString: name!) : "CUresult \(initialised)") (\(initialised))"
        + (text.map { ": " + String(cString: $0) } ?? "")
      throw CUDADriverError(
        .initFailed, result: initialised,
        "cuInit(0) in \(requestedPath) failed: \(said); \(CUDADriver.initHint(initialised, shim: isVGPUShim))")
    }
    var v: Int32 = 0
    let r = cuDriverGetVersion(&v)
    guard r == 0 else {
      throw CUDADriverError(
        .callFailed, result: r,
        "cuDriverGetVersion in \(requestedPath) failed with CUresult \(r) after cuInit succeeded: the driver is "
          + "broken; reinstall it")
    }
    version = v
  }

  /// What to do about a cuInit failure.
  static func initHint(_ r: Int32, shim: Bool) -> String {
    if shim {
      return "this is the vGPU shim, not NVIDIA's driver: its VGPU_DEVICE must name a running vgpu-mediator "
        + "(e.g. VGPU_DEVICE=unix:/run/vgpu/vgpu0.sock); its line on stderr says what it tried"
    }
    let visible = getenv("CUDA_VISIBLE_DEVICES").map { "'\(String(cString: $0))'" } ?? "unset"
    switch r {
    case 100:  // CUDA_ERROR_NO_DEVICE
      return "no NVIDIA GPU is visible to this process: check that nvidia-smi lists one, that /dev/nvidia0, "
        + "/dev/nvidiactl and /dev/nvidia-uvm exist and this user can open them (in a container: pass the "
        + "devices in), and CUDA_VISIBLE_DEVICES (\(visible))"
    case 34:  // CUDA_ERROR_STUB_LIBRARY
      return "this is the CUDA toolkit's stub libcuda (lib64/stubs), not the driver: take the stubs folder off "
        + "LD_LIBRARY_PATH, or install the NVIDIA driver"
    case 803:  // CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
      return "the kernel module and libcuda.so.1 are of different driver versions: reboot after a driver "
        + "update, or reinstall the driver (cat /proc/driver/nvidia/version shows the module's)"
    case 804:  // CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
      return "a CUDA forward-compatibility libcuda is in use on a GPU that does not support it: use the "
        + "driver's own libcuda.so.1"
    case 46:  // CUDA_ERROR_DEVICE_UNAVAILABLE
      return "the GPU is busy or unavailable (exclusive-process compute mode held by another process?): "
        + "nvidia-smi shows the compute mode and who holds it"
    default:
      return "check nvidia-smi and the kernel log (dmesg | grep -i nvrm) for the driver's reason"
    }
  }

  /// "12.8" for 12080.
  static func versionString(_ v: Int32) -> String { "\(v / 1000).\(v % 1000 / 10)" }

  /// The driver's version as "12.8".
  public var versionString: String { Self.versionString(version) }

  // MARK: Errors

  /// cuda.h's name for `r` (CUDA_ERROR_OUT_OF_MEMORY), or "CUresult N" for a code the driver does not know.
  public func errorName(_ r: Int32) -> String {
    var p: UnsafePointer<CChar>?
    guard cuGetErrorName(r, &p) == 0, let p else { return "CUresult \(r)" }
    return String(cString: p)
  }

  /// The driver's description of `r` ("out of memory"), or nil.
  public func errorString(_ r: Int32) -> String? {
    var p: UnsafePointer<CChar>?
    guard cuGetErrorString(r, &p) == 0, let p else { return nil }
    return String(cString: p)
  }

  /// One line: "cuMemAlloc(1048576 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory".
  public func describe(_ r: Int32, _ what: String) -> String {
    "\(what) failed: \(errorName(r)) (\(r))" + (errorString(r).map { ": " + $0 } ?? "")
  }

  // MARK: Devices

  /// cuDeviceGetCount.
  public func deviceCount() throws(CUDADriverError) -> Int32 {
    var n: Int32 = 0
    let r = cuDeviceGetCount(&n)
    guard r == 0 else { throw CUDADriverError(.callFailed, result: r, describe(r, "cuDeviceGetCount")) }
    return n
  }

  /// The name, UUID and shape of the device at `ordinal`.
  public func identity(ordinal: Int32) throws(CUDADriverError) -> CUDADeviceIdentity {
    var dev: CUdevice = 0
    let got = cuDeviceGet(&dev, ordinal)
    guard got == 0 else {
      let count = (try? deviceCount()).map(String.init) ?? "an unknown number of"
      let visible = getenv("CUDA_VISIBLE_DEVICES").map { "'\(String(cString: $0))'" } ?? "unset"
      throw CUDADriverError(
        .noDevice, result: got,
        "no CUDA device at index \(ordinal): \(describe(got, "cuDeviceGet(\(ordinal))")); the driver "
          + "(\(path)) sees \(count) device(s) (CUDA_VISIBLE_DEVICES \(visible)); pick an index below that, or check nvidia-smi"
      )
    }
    func attribute(_ attribute: Int32, _ name: String) throws(CUDADriverError) -> Int32 {
      var v: Int32 = 0
      let r = cuDeviceGetAttribute(&v, attribute, dev)
      guard r == 0 else {
        throw CUDADriverError(.callFailed, result: r, describe(r, "cuDeviceGetAttribute(\(name), device \(ordinal))"))
      }
      return v
    }
    /// For attributes newer drivers may drop: 0 when unanswered.
    func soft(_ attribute: Int32) -> Int32 {
      var v: Int32 = 0
      return cuDeviceGetAttribute(&v, attribute, dev) == 0 ? v : 0
    }
    var nameBytes = [CChar](repeating: 0, count: 256)
    var r = nameBytes.withUnsafeMutableBufferPointer { cuDeviceGetName($0.baseAddress, 255, dev) }
    guard r == 0 else { throw CUDADriverError(.callFailed, result: r, describe(r, "cuDeviceGetName(\(ordinal))")) }
    var uuid = [UInt8](repeating: 0, count: 16)
    r = uuid.withUnsafeMutableBytes { cuDeviceGetUuid($0.baseAddress, dev) }
    guard r == 0 else { throw CUDADriverError(.callFailed, result: r, describe(r, "cuDeviceGetUuid(\(ordinal))")) }
    var total = 0
    r = cuDeviceTotalMem(&total, dev)
    guard r == 0 else { throw CUDADriverError(.callFailed, result: r, describe(r, "cuDeviceTotalMem(\(ordinal))")) }
    // CUdevice_attribute values: cuda.h, enum CUdevice_attribute_enum.
    return CUDADeviceIdentity(
      ordinal: ordinal, device: dev,
      name: String(decoding: nameBytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
      uuid: uuid,
      computeCapabilityMajor: try attribute(75, "COMPUTE_CAPABILITY_MAJOR"),
      computeCapabilityMinor: try attribute(76, "COMPUTE_CAPABILITY_MINOR"),
      multiprocessorCount: try attribute(16, "MULTIPROCESSOR_COUNT"),
      totalMemory: total,
      maxThreadsPerBlock: try attribute(1, "MAX_THREADS_PER_BLOCK"),
      warpSize: try attribute(10, "WARP_SIZE"),
      maxSharedMemoryPerBlockOptin: soft(97),  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN (CUDA 9.0)
      l2CacheSize: soft(38),  // L2_CACHE_SIZE
      clockRateKHz: soft(13),  // CLOCK_RATE (deprecated)
      memoryClockRateKHz: soft(36),  // MEMORY_CLOCK_RATE (deprecated)
      memoryBusWidth: soft(37),  // GLOBAL_MEMORY_BUS_WIDTH
      pciDomain: soft(50),  // PCI_DOMAIN_ID
      pciBus: soft(33),  // PCI_BUS_ID
      pciDevice: soft(34))  // PCI_DEVICE_ID
  }
}
