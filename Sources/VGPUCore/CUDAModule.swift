import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// Modules, libraries, functions and kernels (CUDA_ERROR_* per cuda.h).
//
// Every way CUDA has to load device code ends in one `loadModule`:
// cuModuleLoad/LoadData/LoadDataEx/LoadFatBinary, cuLibraryLoadData/
// LoadFromFile, and the CUDA runtime's private CUDART_INTERFACE slots 1, 6
// and 8 (shims/cuda_export_tables.def). The image is handed over as a bare
// pointer; it is sized by its kind (ModuleImageSizer: a fatbin wrapper
// followed to its fatbin, a fat binary's header and files, an ELF's
// sections, PTX up to its NUL) and sent unchanged: the device judges it and
// says why when it cannot run it (the device's line comes back in the
// error).

/// CU_MODULE_EAGER_LOADING, CU_MODULE_LAZY_LOADING (cuda.h, CUmoduleLoadingMode_enum).
let CU_MODULE_EAGER_LOADING: Int32 = 1
let CU_MODULE_LAZY_LOADING: Int32 = 2

/// Whether libraries load at their first use: CUDA_MODULE_LOADING=EAGER
/// turns it off, as it does for NVIDIA's driver (CUDA C++ Programming Guide,
/// "Lazy Loading"; LAZY is the Linux default since CUDA 12.2). Read at the
/// first load, not when the library is loaded.
let lazyLoading: Bool = {
  guard let mode = getenv("CUDA_MODULE_LOADING") else { return true }
  return String(cString: mode) != "EAGER"
}()

/// cuLaunchKernel's `extra` keys (cuda.h): CU_LAUNCH_PARAM_END_AS_INT 0x00,
/// CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT 0x01, CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT 0x02.
let CU_LAUNCH_PARAM_END: UInt = 0x00
let CU_LAUNCH_PARAM_BUFFER_POINTER: UInt = 0x01
let CU_LAUNCH_PARAM_BUFFER_SIZE: UInt = 0x02

/// Launch limits, as cuDeviceGetAttribute reports them.
let maxThreadsPerBlock: UInt64 = 1024
let maxBlock: (x: UInt32, y: UInt32, z: UInt32) = (1024, 1024, 64)
let maxGrid: (x: UInt32, y: UInt32, z: UInt32) = (2_147_483_647, 65535, 65535)
let maxSharedMemoryPerBlock: UInt32 = 49152
/// What a block may use after cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)
/// on an H100 (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 227 KiB;
/// CUDA C++ Programming Guide, "Compute Capability 9.0": 228 KiB per SM, 1 KiB
/// of it reserved per block).
let maxSharedMemoryPerBlockOptin: UInt32 = 232_448

/// Said once per process: an image whose kind could not be told or sized.
let foreignImageReported = Atomic<Bool>(false)
/// Device refusals of images said so far (the first few, then only with VGPU_DEBUG:
/// cuSPARSELt 0.6 alone loads thousands of fatbins, most for other GPUs).
let refusedImagesReported = Atomic<Int>(0)
let refusedImagesShown = 8

/// The image at `image`, sized by its kind, or why it cannot be sized (no
/// kind this driver knows, headers that do not add up).
func moduleImage(at image: UnsafeRawPointer) -> Result<(ModuleImageKind, UnsafeRawBufferPointer), ModuleImageSizeError>
{
  do throws(ModuleImageSizeError) {
    let extent = try ModuleImageSizer.extent(at: image)
    return .success((extent.kind, extent.bytes))
  } catch {
    return .failure(error)
  }
}

/// Where the image in `file` (its bytes plus one NUL the caller appended, so
/// that PTX read from a file is terminated) ends.
func moduleImage(inFile bytes: UnsafeRawBufferPointer) -> Result<
  (ModuleImageKind, UnsafeRawBufferPointer), ModuleImageSizeError
> {
  do throws(ModuleImageSizeError) {
    let extent = try ModuleImageSizer.extent(of: bytes)
    return .success((extent.kind, extent.bytes))
  } catch {
    return .failure(error)
  }
}

/// Loads a sized image and makes a module (or library) handle for it. A
/// library's image is copied and loaded at its first use (ModuleRecord).
func loadModule(
  _ call: StaticString, _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
  _ sized: Result<(ModuleImageKind, UnsafeRawBufferPointer), ModuleImageSizeError>, library: Bool = false
) -> Int32 {
  return withDevice(call) { (device) throws(VGPUError) in
    let kind: ModuleImageKind
    let bytes: UnsafeRawBufferPointer
    switch sized {
    case .success(let s): (kind, bytes) = s
    case .failure(let error):
      if ShimRuntime.shared.debug || !foreignImageReported.exchange(true, ordering: .relaxed) {
        ShimRuntime.printLine(
          "vgpu: \(call): \(error) (CUDA_ERROR_INVALID_IMAGE); pass a fat binary, a cubin or NUL-terminated PTX")
      }
      return CUDA_ERROR_INVALID_IMAGE
    }
    var record: ModuleRecord
    if library && lazyLoading {
      record = ModuleRecord(handle: nil, library: true)
      record.pending = (kind, [UInt8](bytes))
    } else {
      switch try send(call, device, kind, bytes) {
      case .success(let loaded): record = ModuleRecord(handle: loaded, library: library)
      case .failure(let e): return e.result
      }
    }
    let handle = cudaObjects.withLock { o in
      let h = o.newHandle(.module)
      o.modules[h] = record
      return h
    }
    module.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// Sends an image to the device; a refusal is the device's status, with its line on stderr.
func send(_ call: StaticString, _ device: Device, _ kind: ModuleImageKind, _ bytes: UnsafeRawBufferPointer)
  throws(VGPUError) -> Result<ModuleHandle, CUDAError>
{
  do throws(VGPUError) {
    return .success(try device.loadModule(bytes))
  } catch {
    guard let status = error.status else { throw error }
    if ShimRuntime.shared.debug || refusedImagesReported.add(1, ordering: .relaxed).oldValue < refusedImagesShown {
      ShimRuntime.printLine(
        "vgpu: \(call): the device refused a \(bytes.count)-byte \(kind) image "
          + "(\(cudaErrorName(status.cudaResult))): \(error)")
    }
    return .failure(CUDAError(status.cudaResult))
  }
}

/// The device module of module or library `key`, loading a library's image
/// on its first use; CUDA_ERROR_INVALID_HANDLE for no such module.
func deviceModule(_ call: StaticString, _ key: UInt, _ device: Device) throws(VGPUError) -> Result<
  ModuleHandle, CUDAError
> {
  let state = cudaObjects.withLock { o -> Result<ModuleHandle, CUDAError>? in
    guard let m = o.modules[key] else { return .failure(CUDAError(CUDA_ERROR_INVALID_HANDLE)) }
    if let h = m.handle { return .success(h) }
    if m.failure != 0 { return .failure(CUDAError(m.failure)) }
    return nil
  }
  if let state { return state }
  guard let pending = cudaObjects.withLock({ $0.modules[key]?.pending }) else {
    return try deviceModule(call, key, device)  // loaded or unloaded meanwhile
  }
  let result = try pending.bytes.span.withUnsafeBytes { (b) throws(VGPUError) in
    try send(call, device, pending.kind, b)
  }
  // Another thread may have loaded it meanwhile, or unloaded the library.
  let (kept, duplicate) = cudaObjects.withLock { o -> (Result<ModuleHandle, CUDAError>, ModuleHandle?) in
    let loaded = try? result.get()
    guard o.modules[key] != nil else { return (.failure(CUDAError(CUDA_ERROR_INVALID_HANDLE)), loaded) }
    if let h = o.modules[key]!.handle { return (.success(h), loaded) }
    switch result {
    case .success(let h):
      o.modules[key]!.handle = h
      o.modules[key]!.pending = nil
    case .failure(let e): o.modules[key]!.failure = e.result
    }
    return (result, nil)
  }
  if let duplicate { try? device.unloadModule(duplicate) }
  return kept
}

/// cuda.h's name for a CUresult this file returns, for messages.
func cudaErrorName(_ code: Int32) -> String {
  switch code {
  case CUDA_ERROR_INVALID_VALUE: "CUDA_ERROR_INVALID_VALUE"
  case CUDA_ERROR_INVALID_IMAGE: "CUDA_ERROR_INVALID_IMAGE"
  case CUDA_ERROR_NO_BINARY_FOR_GPU: "CUDA_ERROR_NO_BINARY_FOR_GPU"
  case CUDA_ERROR_INVALID_PTX: "CUDA_ERROR_INVALID_PTX"
  case CUDA_ERROR_NOT_FOUND: "CUDA_ERROR_NOT_FOUND"
  case CUDA_ERROR_ILLEGAL_ADDRESS: "CUDA_ERROR_ILLEGAL_ADDRESS"
  case CUDA_ERROR_LAUNCH_TIMEOUT: "CUDA_ERROR_LAUNCH_TIMEOUT"
  case CUDA_ERROR_ASSERT: "CUDA_ERROR_ASSERT"
  case CUDA_ERROR_LAUNCH_FAILED: "CUDA_ERROR_LAUNCH_FAILED"
  case CUDA_ERROR_NOT_SUPPORTED: "CUDA_ERROR_NOT_SUPPORTED"
  case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"
  case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"
  default: "CUresult \(code)"
  }
}

/// A whole file, plus one NUL (PTX files have none); nil if it cannot be read.
func readImageFile(_ path: UnsafePointer<CChar>) -> [UInt8]? {
  guard let file = fopen(path, "rb") else { return nil }
  defer { fclose(file) }
  var data: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 1 << 20)
  while true {
    let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
    data.append(contentsOf: chunk[..<n])
    if n < chunk.count { break }
  }
  guard ferror(file) == 0 else { return nil }
  data.append(0)
  return data
}

/// cuModuleLoadData(CUmodule *module, const void *image)
@_cdecl("vgpucore_cuModuleLoadData")
public func vgpucore_cuModuleLoadData(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ image: UnsafeRawPointer?
)
  -> Int32
{
  guard let module, let image else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cuModuleLoadData", module, moduleImage(at: image))
}

/// cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int
/// numOptions, CUjit_option *options, void **optionValues): the JIT options
/// tune a compiler this side does not run (the device compiles) and are ignored.
@_cdecl("vgpucore_cuModuleLoadDataEx")
public func vgpucore_cuModuleLoadDataEx(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ image: UnsafeRawPointer?, _ count: UInt32,
  _ options: UnsafeMutablePointer<Int32>?, _ values: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let module, let image, count == 0 || (options != nil && values != nil) else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cuModuleLoadDataEx", module, moduleImage(at: image))
}

/// cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin): any image
/// kind, as NVIDIA's driver takes (cuSPARSELt 0.6 loads its kernels this way).
@_cdecl("vgpucore_cuModuleLoadFatBinary")
public func vgpucore_cuModuleLoadFatBinary(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ image: UnsafeRawPointer?
) -> Int32 {
  guard let module, let image else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cuModuleLoadFatBinary", module, moduleImage(at: image))
}

/// cuModuleLoad(CUmodule *module, const char *fname): an image in a file, of any size.
@_cdecl("vgpucore_cuModuleLoad")
public func vgpucore_cuModuleLoad(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ path: UnsafePointer<CChar>?
)
  -> Int32
{
  guard let module, let path else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let data = readImageFile(path) else { return CUDA_ERROR_FILE_NOT_FOUND }
  return data.withUnsafeBytes { loadModule("cuModuleLoad", module, moduleImage(inFile: $0)) }
}

/// The CUDA runtime's CUDART_INTERFACE slots 1, 6 and 8 (cuda_export.c), all
/// loading the fat binary an nvcc program registered: `image` is its
/// `__fatBinC_Wrapper_t` (slots 1 and 6) or the fatbin itself (slot 8).
/// The extra arguments of slots 6 and 8 are shown with VGPU_DEBUG and not
/// otherwise used (docs/CUDART.md, "Modules").
@_cdecl("vgpucore_cudartLoadModule")
public func vgpucore_cudartLoadModule(
  _ slot: Int32, _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ image: UnsafeRawPointer?,
  _ a: UnsafeRawPointer?, _ b: UnsafeRawPointer?, _ c: UInt32
) -> Int32 {
  if ShimRuntime.shared.debug {
    let kind = image.map { ModuleImageSizer.kind(at: $0).description } ?? "NULL"
    ShimRuntime.printLine(
      "vgpu: cudart slot \(slot): module \(module.map { "\($0)" } ?? "NULL"), image \(image.map { "\($0)" } ?? "NULL") "
        + "(\(kind)), extra \(a.map { "\($0)" } ?? "NULL") \(b.map { "\($0)" } ?? "NULL") \(c)")
  }
  guard let module, let image else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cudart module registration", module, moduleImage(at: image))
}

/// Unloads a module or library; its functions and kernels become invalid too.
func unloadModule(_ call: StaticString, _ hmod: UnsafeMutableRawPointer?) -> Int32 {
  withDevice(call) { (device) throws(VGPUError) in
    let key = handleKey(hmod)
    let record = cudaObjects.withLock { o -> ModuleRecord? in
      guard let record = o.modules.removeValue(forKey: key) else { return nil }
      for f in record.functions.values { o.functions[f] = nil }
      return record
    }
    guard let record else { return CUDA_ERROR_INVALID_HANDLE }
    if let h = record.handle { try device.unloadModule(h) }
    return CUDA_SUCCESS
  }
}

/// cuModuleUnload(CUmodule hmod)
@_cdecl("vgpucore_cuModuleUnload")
public func vgpucore_cuModuleUnload(_ hmod: UnsafeMutableRawPointer?) -> Int32 {
  unloadModule("cuModuleUnload", hmod)
}

/// Kernel names as C strings for cuFuncGetName/cuKernelGetName: one copy per
/// distinct name for the process's life, so a name handed out stays valid.
let internedNames = Mutex<[String: UnsafePointer<CChar>]>([:])
func intern(_ name: String) -> UnsafePointer<CChar> {
  internedNames.withLock { names in
    if let p = names[name] { return p }
    let p = UnsafePointer(strdup(name)!)
    names[name] = p
    return p
  }
}

/// The function `name` of module `key`: the handle already made for it, or a
/// new one from the device (which reports its layout and attributes).
func getFunction(
  _ call: StaticString, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ key: UInt,
  _ name: UnsafePointer<CChar>
) -> Int32 {
  let kernelName = String(cString: name)
  return withDevice(call) { (device) throws(VGPUError) in
    if let existing = cudaObjects.withLock({ $0.modules[key]?.functions[kernelName] }) {
      out.pointee = handlePointer(existing)
      return CUDA_SUCCESS
    }
    let module: ModuleHandle
    switch try deviceModule(call, key, device) {
    case .success(let m): module = m
    case .failure(let e): return e.result
    }
    let function: FunctionHandle
    do throws(VGPUError) { function = try device.function(kernelName, in: module) } catch {
      // A kernel whose PTX the device cannot run (the rest of its module loaded) is said
      // like a refused image, in one line; a name the module lacks stays silent (programs probe).
      if error.status == .invalidPTX,
        ShimRuntime.shared.debug || refusedImagesReported.add(1, ordering: .relaxed).oldValue < refusedImagesShown
      {
        ShimRuntime.printLine(
          "vgpu: \(call): the device cannot run kernel '\(kernelName)' (CUDA_ERROR_INVALID_PTX): \(error)")
      }
      throw error
    }
    // Packing `kernelParams` needs the layout, which the device reports.
    guard function.layout != nil else {
      ShimRuntime.printLine(
        "vgpu: \(call): the device did not report the parameter layout of '\(kernelName)' (protocol "
          + "1.3, feature functionInfo); update vgpu-mediator to this library's version")
      return CUDA_ERROR_NOT_SUPPORTED
    }
    let staticShared = Int32(clamping: function.info?.sharedBytes ?? 0)
    let cName = intern(kernelName)
    let handle = cudaObjects.withLock { o -> UInt? in
      // Unloaded meanwhile by another thread?
      guard o.modules[key] != nil else { return nil }
      // Or looked up meanwhile: keep the first handle.
      if let h = o.modules[key]?.functions[kernelName] { return h }
      let h = o.newHandle(.function)
      o.functions[h] = FunctionRecord(
        handle: function, module: key, name: cName,
        maxDynamicShared: max(0, Int32(maxSharedMemoryPerBlock) - staticShared))
      o.modules[key]?.functions[kernelName] = h
      return h
    }
    guard let handle else { return CUDA_ERROR_INVALID_HANDLE }
    out.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name):
/// CUDA_ERROR_NOT_FOUND for a kernel the module does not name.
@_cdecl("vgpucore_cuModuleGetFunction")
public func vgpucore_cuModuleGetFunction(
  _ hfunc: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ hmod: UnsafeMutableRawPointer?,
  _ name: UnsafePointer<CChar>?
) -> Int32 {
  guard let hfunc, let name else { return CUDA_ERROR_INVALID_VALUE }
  return getFunction("cuModuleGetFunction", hfunc, handleKey(hmod), name)
}

/// A module variable's address and size (`dptr` and `bytes` may be NULL).
func getGlobal(
  _ call: StaticString, _ dptr: UnsafeMutablePointer<UInt64>?, _ bytes: UnsafeMutablePointer<Int>?,
  _ hmod: UnsafeMutableRawPointer?, _ name: UnsafePointer<CChar>?
) -> Int32 {
  guard let name else { return CUDA_ERROR_INVALID_VALUE }
  let variable = String(cString: name)
  return withDevice(call) { (device) throws(VGPUError) in
    let module: ModuleHandle
    switch try deviceModule(call, handleKey(hmod), device) {
    case .success(let m): module = m
    case .failure(let e): return e.result
    }
    let (address, size) = try device.global(variable, in: module)
    dptr?.pointee = address.address
    bytes?.pointee = size
    return CUDA_SUCCESS
  }
}

/// cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name):
/// a `__device__`/`__constant__` variable, allocated and initialised by the device at load.
@_cdecl("vgpucore_cuModuleGetGlobal_v2")
public func vgpucore_cuModuleGetGlobal_v2(
  _ dptr: UnsafeMutablePointer<UInt64>?, _ bytes: UnsafeMutablePointer<Int>?, _ hmod: UnsafeMutableRawPointer?,
  _ name: UnsafePointer<CChar>?
) -> Int32 {
  getGlobal("cuModuleGetGlobal", dptr, bytes, hmod, name)
}

/// cuModuleGetLoadingMode(CUmoduleLoadingMode *mode): lazy unless
/// CUDA_MODULE_LOADING=EAGER (NVIDIA's runtime asks, and needs an answer).
@_cdecl("vgpucore_cuModuleGetLoadingMode")
public func vgpucore_cuModuleGetLoadingMode(_ mode: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let mode else { return CUDA_ERROR_INVALID_VALUE }
  mode.pointee = lazyLoading ? CU_MODULE_LAZY_LOADING : CU_MODULE_EAGER_LOADING
  return CUDA_SUCCESS
}

// MARK: Launch

/// Whether a launch happened since device output was last taken: a
/// synchronization asks the device for `printf` output only then, so copies
/// in a program that launches nothing cost no extra command.
let outputPending = Atomic<Bool>(false)
/// Said once per process: the device dropped output.
let droppedOutputReported = Atomic<Bool>(false)

/// Writes the device's `printf` output to stdout (fd 1, where CUDA's driver
/// writes it, at the synchronization points the CUDA C++ Programming Guide
/// lists under "Formatted Output": kernel launch sync, cuCtxSynchronize,
/// cuStreamSynchronize, cuEventSynchronize, blocking copies).
func flushDeviceOutput(_ device: Device) {
  guard outputPending.exchange(false, ordering: .relaxed) else { return }
  guard let (bytes, dropped) = try? device.takeOutput() else { return }
  bytes.withUnsafeBytes { b in
    var done = 0
    while done < b.count {
      let n = write(1, b.baseAddress! + done, b.count - done)
      if n <= 0 { break }
      done += n
    }
  }
  if dropped > 0 && !droppedOutputReported.exchange(true, ordering: .relaxed) {
    ShimRuntime.printLine(
      "vgpu: the device dropped \(dropped) bytes of kernel printf output (its buffer was full before a "
        + "synchronization took it); synchronize more often to keep all of it")
  }
}

/// Said once per process: the first sticky launch error.
let stickyReported = Atomic<Bool>(false)

/// The CUresult for a launch the device failed. The four statuses CUDA
/// documents as leaving the context unusable become its sticky error.
func launchFailure(_ error: VGPUError, _ call: StaticString) -> Int32 {
  guard let status = error.status else { return cudaResult(error, call) }
  switch status {
  case .illegalAddress, .assertTriggered, .launchTimeout, .launchFailed:
    let code = status.cudaResult
    // The context current on this thread is the one the launch ran in.
    let current = CUDAThread.current.currentContext
    let primary = cudaObjects.withLock { o -> Bool? in
      guard let current, o.setStickyError(code, context: current) else { return nil }
      return o.contexts[current]?.primary
    }
    if primary == nil { processStickyError.store(code, ordering: .relaxed) }
    if !stickyReported.exchange(true, ordering: .relaxed) {
      let until =
        switch primary {
        case true?: "until cuDevicePrimaryCtxReset or the process ends"
        case false?: "until it is destroyed (cuCtxDestroy); other contexts go on"
        case nil: "(no context was current, so every context of this process) until the process ends"
        }
      ShimRuntime.printLine(
        "vgpu: \(call): \(error) (\(cudaErrorName(code))); as in CUDA, the context is now unusable: every "
          + "later call that needs it returns \(code) \(until)")
    }
    return code
  default:
    return cudaResult(error, call)
  }
}

/// What a launch asks for, apart from the function and its parameters.
struct LaunchShape {
  var grid: Dimensions
  var block: Dimensions
  var sharedMemory: UInt32
  var stream: UnsafeMutableRawPointer?
  var cooperative = false
}

/// The one launch path: cuLaunchKernel, cuLaunchKernelEx, cuLaunchCooperativeKernel.
///
/// Parameters come either as `kernelParams`, one pointer per parameter (each
/// copied, at its size, to its offset in the staging slot, by the layout the
/// device reported), or as `extra` with CU_LAUNCH_PARAM_BUFFER_POINTER /
/// _SIZE (the packed buffer itself). A launch allocates nothing here.
@inline(__always)
func launch(
  _ call: StaticString, _ f: UnsafeMutableRawPointer?, _ shape: LaunchShape,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  let (grid, block) = (shape.grid, shape.block)
  guard grid.x > 0, grid.y > 0, grid.z > 0, block.x > 0, block.y > 0, block.z > 0,
    grid.x <= maxGrid.x, grid.y <= maxGrid.y, grid.z <= maxGrid.z,
    block.x <= maxBlock.x, block.y <= maxBlock.y, block.z <= maxBlock.z,
    UInt64(block.x) * UInt64(block.y) * UInt64(block.z) <= maxThreadsPerBlock
  else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    let key = handleKey(f)
    guard let function = cudaObjects.withLock({ $0.functions[key] }) else { return CUDA_ERROR_INVALID_HANDLE }
    // Dynamic shared memory past the function's limit (48 KiB less its
    // static shared memory, or what cuFuncSetAttribute opted in to) is
    // CUDA_ERROR_INVALID_VALUE, as cuLaunchKernel documents.
    guard shape.sharedMemory <= UInt32(max(0, function.maxDynamicShared)) else { return CUDA_ERROR_INVALID_VALUE }
    let threads = UInt64(block.x) * UInt64(block.y) * UInt64(block.z)
    guard threads <= UInt64(function.handle.info?.maxThreadsPerBlock ?? UInt32(maxThreadsPerBlock)) else {
      return CUDA_ERROR_INVALID_VALUE
    }
    if shape.cooperative {
      // Every block of a cooperative grid must be resident at once (cuda.h,
      // cuLaunchCooperativeKernel).
      let perSM = occupancy(function, blockSize: Int(threads), dynamicShared: Int(shape.sharedMemory))
      guard UInt64(grid.x) * UInt64(grid.y) * UInt64(grid.z) <= UInt64(perSM * multiprocessors) else {
        return CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
      }
    }
    if capturesInProgress.load(ordering: .relaxed) != 0,
      let result = captureLaunch(call, function.handle, shape, kernelParams, extra)
    {
      return result
    }
    let target: StreamHandle?
    switch lookUpStream(shape.stream) {
    case .failure(let e): return e.result
    case .success(let s): target = s
    }
    outputPending.store(true, ordering: .relaxed)
    do throws(VGPUError) {
      // An `extra` that is just CU_LAUNCH_PARAM_END says nothing.
      switch (kernelParams, extra.flatMap { $0[0] == nil ? nil : $0 }) {
      case (let params?, nil):
        try device.launch(
          function.handle, grid: grid, block: block, sharedMemory: shape.sharedMemory, arguments: params,
          stream: target, cooperative: shape.cooperative)
      case (nil, let extra?):
        // The buffer is the parameters laid out as a C struct (cuda.h,
        // CU_LAUNCH_PARAM_BUFFER_POINTER): its sizeof may add tail padding
        // past the last parameter, which the kernel does not take.
        guard let buffer = packedBuffer(extra), buffer.count >= function.handle.parameterSize else {
          return CUDA_ERROR_INVALID_VALUE
        }
        try device.launch(
          function.handle, grid: grid, block: block, sharedMemory: shape.sharedMemory,
          parameters: UnsafeRawBufferPointer(rebasing: buffer[..<function.handle.parameterSize]), stream: target,
          cooperative: shape.cooperative)
      case (nil, nil):
        guard function.handle.parameterSize == 0 else { return CUDA_ERROR_INVALID_VALUE }
        try device.launch(
          function.handle, grid: grid, block: block, sharedMemory: shape.sharedMemory,
          parameters: UnsafeRawBufferPointer(start: nil, count: 0), stream: target,
          cooperative: shape.cooperative)
      case (_?, _?):
        return CUDA_ERROR_INVALID_VALUE
      }
    } catch {
      return launchFailure(error, call)
    }
    return CUDA_SUCCESS
  }
}

/// A launch onto a capturing stream: its parameters packed now (cuda.h,
/// cuLaunchKernel: "kernel parameters are copied at the time of the call")
/// and recorded. Nil when the stream does not capture.
func captureLaunch(
  _ call: StaticString, _ function: FunctionHandle, _ shape: LaunchShape,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32? {
  let key = handleKey(shape.stream)
  if key == 0 || key == CU_STREAM_LEGACY { return refuseUnsafeCall(call) }
  guard isCapturing(key) else { return nil }
  var parameters: [UInt8]
  switch (kernelParams, extra.flatMap { $0[0] == nil ? nil : $0 }) {
  case (let params?, nil):
    guard let layout = function.layout else { return CUDA_ERROR_NOT_SUPPORTED }
    parameters = [UInt8](repeating: 0, count: layout.bufferSize)
    for (i, slot) in layout.slots.enumerated() {
      guard let value = params[i] else { return CUDA_ERROR_INVALID_VALUE }
      parameters.withUnsafeMutableBytes { b in
        (b.baseAddress! + Int(slot.offset)).copyMemory(from: value, byteCount: Int(slot.size))
      }
    }
  case (nil, let extra?):
    guard let buffer = packedBuffer(extra), buffer.count >= function.parameterSize else {
      return CUDA_ERROR_INVALID_VALUE
    }
    parameters = Array(buffer[..<function.parameterSize])
  case (nil, nil):
    guard function.parameterSize == 0 else { return CUDA_ERROR_INVALID_VALUE }
    parameters = []
  case (_?, _?):
    return CUDA_ERROR_INVALID_VALUE
  }
  return recordCaptured(
    call, shape.stream,
    .kernel(
      function, grid: shape.grid, block: shape.block, sharedMemory: shape.sharedMemory, cooperative: shape.cooperative,
      parameters: parameters))
}

/// cuLaunchKernel(CUfunction f, gridDim x/y/z, blockDim x/y/z, unsigned int
/// sharedMemBytes, CUstream hStream, void **kernelParams, void **extra). `f`
/// may be a CUkernel (cuda.h: "a CUkernel can be cast to CUfunction").
@_cdecl("vgpucore_cuLaunchKernel")
public func vgpucore_cuLaunchKernel(
  _ f: UnsafeMutableRawPointer?, _ gridX: UInt32, _ gridY: UInt32, _ gridZ: UInt32, _ blockX: UInt32,
  _ blockY: UInt32, _ blockZ: UInt32, _ sharedMemory: UInt32, _ stream: UnsafeMutableRawPointer?,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  let shape = LaunchShape(
    grid: Dimensions(gridX, gridY, gridZ), block: Dimensions(blockX, blockY, blockZ), sharedMemory: sharedMemory,
    stream: stream)
  return launch("cuLaunchKernel", f, shape, kernelParams, extra)
}

/// cuLaunchCooperativeKernel(CUfunction f, grid, block, sharedMemBytes,
/// hStream, void **kernelParams): no `extra`; the grid must fit the device at once.
@_cdecl("vgpucore_cuLaunchCooperativeKernel")
public func vgpucore_cuLaunchCooperativeKernel(
  _ f: UnsafeMutableRawPointer?, _ gridX: UInt32, _ gridY: UInt32, _ gridZ: UInt32, _ blockX: UInt32,
  _ blockY: UInt32, _ blockZ: UInt32, _ sharedMemory: UInt32, _ stream: UnsafeMutableRawPointer?,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  let shape = LaunchShape(
    grid: Dimensions(gridX, gridY, gridZ), block: Dimensions(blockX, blockY, blockZ), sharedMemory: sharedMemory,
    stream: stream, cooperative: true)
  return launch("cuLaunchCooperativeKernel", f, shape, kernelParams, nil)
}

/// CUlaunchAttributeID values (cuda.h, CUlaunchAttributeID_enum).
enum LaunchAttribute: Int32 {
  case ignore = 0
  case accessPolicyWindow, cooperative, synchronizationPolicy, clusterDimension,
    clusterSchedulingPolicyPreference, programmaticStreamSerialization, programmaticEvent, priority,
    memSyncDomainMap, memSyncDomain, preferredClusterDimension, launchCompletionEvent, deviceUpdatableKernelNode,
    preferredSharedMemoryCarveout
  case nvlinkUtilCentricScheduling = 16
  case portableClusterSizeMode, sharedMemoryMode
}

/// Said once per process per refused attribute kind.
let refusedLaunchAttributes = Atomic<UInt64>(0)

/// cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void
/// **kernelParams, void **extra). CUlaunchConfig (cuda.h, LP64): grid x/y/z
/// @0/4/8, block x/y/z @12/16/20, sharedMemBytes @24, hStream @32, attrs @40,
/// numAttrs @48. A CUlaunchAttribute is 72 bytes: id @0, value (a 64-byte
/// union) @8.
///
/// Attributes that only tune scheduling or caching (access policy, priority,
/// memory sync domains, carve-out, programmatic serialization — every launch
/// here completes before the next starts) are accepted and ignored;
/// cooperative is honoured; clusters other than 1×1×1 and the event
/// attributes are refused with CUDA_ERROR_NOT_SUPPORTED and one line.
@_cdecl("vgpucore_cuLaunchKernelEx")
public func vgpucore_cuLaunchKernelEx(
  _ config: UnsafeRawPointer?, _ f: UnsafeMutableRawPointer?,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let config else { return CUDA_ERROR_INVALID_VALUE }
  func u32(_ offset: Int) -> UInt32 { config.load(fromByteOffset: offset, as: UInt32.self) }
  var shape = LaunchShape(
    grid: Dimensions(u32(0), u32(4), u32(8)), block: Dimensions(u32(12), u32(16), u32(20)), sharedMemory: u32(24),
    stream: config.load(fromByteOffset: 32, as: UnsafeMutableRawPointer?.self))
  let attributes = config.load(fromByteOffset: 40, as: UnsafeRawPointer?.self)
  let count = Int(u32(48))
  guard count == 0 || attributes != nil else { return CUDA_ERROR_INVALID_VALUE }
  for i in 0..<count {
    let a = attributes! + 72 * i
    let id = a.load(as: Int32.self)
    let value = a + 8
    let refusal: String?
    switch LaunchAttribute(rawValue: id) {
    case .ignore?, .accessPolicyWindow?, .synchronizationPolicy?, .clusterSchedulingPolicyPreference?,
      .programmaticStreamSerialization?, .priority?, .memSyncDomainMap?, .memSyncDomain?,
      .preferredSharedMemoryCarveout?, .nvlinkUtilCentricScheduling?, .portableClusterSizeMode?,
      .sharedMemoryMode?:
      refusal = nil
    case .cooperative?:
      shape.cooperative = value.load(as: Int32.self) != 0
      refusal = nil
    case .clusterDimension?, .preferredClusterDimension?:
      // clusterDim {x, y, z}: one block per cluster is no cluster at all.
      let (x, y, z) = (
        value.load(as: UInt32.self), value.load(fromByteOffset: 4, as: UInt32.self),
        value.load(fromByteOffset: 8, as: UInt32.self)
      )
      refusal = x <= 1 && y <= 1 && z <= 1 ? nil : "thread block clusters (\(x)×\(y)×\(z))"
    case .programmaticEvent?, .launchCompletionEvent?:
      refusal = "events triggered from inside a kernel (launch attribute \(id))"
    case .deviceUpdatableKernelNode?:
      refusal = "device-updatable graph kernel nodes"
    case nil:
      refusal = "launch attribute \(id), unknown to this driver"
    }
    if let refusal {
      let bit: UInt64 = 1 << UInt64(min(max(id, 0), 63))
      if refusedLaunchAttributes.bitwiseOr(bit, ordering: .relaxed).oldValue & bit == 0 {
        ShimRuntime.printLine(
          "vgpu: cuLaunchKernelEx: \(refusal) are not supported by this virtual GPU (CUDA_ERROR_NOT_SUPPORTED); "
            + "launch without that attribute")
      }
      return CUDA_ERROR_NOT_SUPPORTED
    }
  }
  return launch("cuLaunchKernelEx", f, shape, kernelParams, extra)
}

/// The packed parameter buffer `extra` names: CU_LAUNCH_PARAM_BUFFER_POINTER
/// and _SIZE, key/value pairs up to CU_LAUNCH_PARAM_END (nil if malformed).
@inline(__always)
func packedBuffer(_ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> UnsafeRawBufferPointer? {
  var pointer: UnsafeMutableRawPointer?
  var size: Int?
  var i = 0
  // A bound against a missing end.
  while i < 64 {
    let k = UInt(bitPattern: extra[i])
    if k == CU_LAUNCH_PARAM_END { break }
    switch k {
    case CU_LAUNCH_PARAM_BUFFER_POINTER: pointer = extra[i + 1]
    case CU_LAUNCH_PARAM_BUFFER_SIZE:
      guard let p = extra[i + 1] else { return nil }
      size = p.load(as: Int.self)
    default: return nil
    }
    i += 2
  }
  guard i < 64, let pointer, let size, size >= 0 else { return nil }
  return UnsafeRawBufferPointer(start: pointer, count: size)
}
