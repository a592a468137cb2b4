import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// Modules, functions and kernel launches. The device runs built-in kernels
// named by a text module image ("vgpu-module 1\nkernel vector_add\n",
// docs/PROTOCOL.md §18); PTX, cubins and fatbins are CUDA_ERROR_INVALID_IMAGE.

/// CU_MODULE_EAGER_LOADING (cuda.h, CUmoduleLoadingMode_enum).
let CU_MODULE_EAGER_LOADING: Int32 = 1

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

/// Said once per process: a module image this device cannot run.
let foreignImageReported = Atomic<Bool>(false)

/// What a module image that is not ours looks like, for the message.
func describeForeignImage(_ bytes: UnsafeRawBufferPointer) -> String {
  func starts(_ prefix: [UInt8]) -> Bool { bytes.count >= prefix.count && zip(bytes, prefix).allSatisfy { $0 == $1 } }
  if starts([0x7f, 0x45, 0x4c, 0x46]) { return "a cubin (ELF)" }
  // fatbinary magic 0xBA55ED50, little-endian.
  if starts([0x50, 0xed, 0x55, 0xba]) { return "a fatbin" }
  if let first = bytes.first(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0a && $0 != 0x0d }),
    first == UInt8(ascii: "/") || first == UInt8(ascii: ".")
  {
    return "PTX"
  }
  return "an image in an unknown format"
}

/// Loads a module image of `bytes` (the prefix already checked or not).
func loadModule(
  _ call: StaticString, _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ bytes: UnsafeRawBufferPointer
)
  -> Int32
{
  let magic = Array("\(BuiltinModuleImage.magic) ".utf8)
  guard bytes.count >= magic.count, zip(bytes, magic).allSatisfy({ $0 == $1 }) else {
    if !foreignImageReported.exchange(true, ordering: .relaxed) {
      ShimRuntime.printLine(
        "vgpu: \(call): \(describeForeignImage(bytes)) was given (CUDA_ERROR_INVALID_IMAGE); this virtual GPU runs "
          + "only its built-in kernels, named by a text image such as \"vgpu-module 1\\nkernel vector_add\\n\"")
    }
    return CUDA_ERROR_INVALID_IMAGE
  }
  let image = [UInt8](bytes)
  return withDevice(call) { (device) throws(VGPUError) in
    let loaded = try device.loadModule(image)
    let handle = cudaObjects.withLock { o in
      let h = o.newHandle(.module)
      o.modules[h] = ModuleRecord(handle: loaded)
      return h
    }
    module.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// The bytes of a NUL-terminated image: for ours, up to its NUL but at most
/// one byte over the size limit (so that an oversized image is refused by the
/// device, not read on and on); for another kind (a cubin or fatbin need not
/// contain a NUL soon), enough to tell what it is: up to 16 bytes or a NUL.
func imageBytes(_ image: UnsafeRawPointer) -> UnsafeRawBufferPointer {
  let magic = Array("\(BuiltinModuleImage.magic) ".utf8)
  let p = image.assumingMemoryBound(to: UInt8.self)
  for i in 0..<magic.count where p[i] != magic[i] {
    var n = i
    while n < 16 && p[n] != 0 { n += 1 }
    return UnsafeRawBufferPointer(start: image, count: n)
  }
  return UnsafeRawBufferPointer(
    start: image, count: strnlen(image.assumingMemoryBound(to: CChar.self), BuiltinModuleImage.maxBytes + 1))
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
  return loadModule("cuModuleLoadData", module, imageBytes(image))
}

/// cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int
/// numOptions, CUjit_option *options, void **optionValues): the JIT options
/// have nothing to act on and are ignored.
@_cdecl("vgpucore_cuModuleLoadDataEx")
public func vgpucore_cuModuleLoadDataEx(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ image: UnsafeRawPointer?, _ count: UInt32,
  _ options: UnsafeMutablePointer<Int32>?, _ values: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let module, let image, count == 0 || (options != nil && values != nil) else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cuModuleLoadDataEx", module, imageBytes(image))
}

/// cuModuleLoad(CUmodule *module, const char *fname): an image in a file.
@_cdecl("vgpucore_cuModuleLoad")
public func vgpucore_cuModuleLoad(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ path: UnsafePointer<CChar>?
)
  -> Int32
{
  guard let module, let path else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let file = fopen(path, "rb") else { return CUDA_ERROR_FILE_NOT_FOUND }
  defer { fclose(file) }
  var data = [UInt8](repeating: 0, count: BuiltinModuleImage.maxBytes + 1)
  let n = data.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
  guard ferror(file) == 0 else { return CUDA_ERROR_FILE_NOT_FOUND }
  return data.withUnsafeBytes { loadModule("cuModuleLoad", module, UnsafeRawBufferPointer(rebasing: $0[..<n])) }
}

/// cuModuleUnload(CUmodule hmod): its functions become invalid too.
@_cdecl("vgpucore_cuModuleUnload")
public func vgpucore_cuModuleUnload(_ hmod: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuModuleUnload") { (device) throws(VGPUError) in
    let key = handleKey(hmod)
    let record = cudaObjects.withLock { o -> ModuleRecord? in
      guard let record = o.modules.removeValue(forKey: key) else { return nil }
      for f in record.functions { o.functions[f] = nil }
      return record
    }
    guard let record else { return CUDA_ERROR_INVALID_HANDLE }
    try device.unloadModule(record.handle)
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
  let kernelName = String(cString: name)
  return withDevice("cuModuleGetFunction") { (device) throws(VGPUError) in
    let key = handleKey(hmod)
    guard let module = cudaObjects.withLock({ $0.modules[key]?.handle }) else { return CUDA_ERROR_INVALID_HANDLE }
    let function = try device.function(kernelName, in: module)
    // Packing `kernelParams` needs the layout, which the device reports.
    guard function.layout != nil else {
      ShimRuntime.printLine(
        "vgpu: cuModuleGetFunction: the device did not report the parameter layout of '\(kernelName)' (protocol "
          + "1.3, feature functionInfo); update vgpu-mediator to this library's version")
      return CUDA_ERROR_NOT_SUPPORTED
    }
    let handle = cudaObjects.withLock { o -> UInt? in
      // Unloaded meanwhile by another thread?
      guard o.modules[key] != nil else { return nil }
      let h = o.newHandle(.function)
      o.functions[h] = FunctionRecord(handle: function, module: key)
      o.modules[key]?.functions.append(h)
      return h
    }
    guard let handle else { return CUDA_ERROR_INVALID_HANDLE }
    hfunc.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuModuleGetLoadingMode(CUmoduleLoadingMode *mode): eager (NVIDIA's
/// runtime asks, and needs an answer).
@_cdecl("vgpucore_cuModuleGetLoadingMode")
public func vgpucore_cuModuleGetLoadingMode(_ mode: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let mode else { return CUDA_ERROR_INVALID_VALUE }
  mode.pointee = CU_MODULE_EAGER_LOADING
  return CUDA_SUCCESS
}

// MARK: Launch

/// cuLaunchKernel(CUfunction f, gridDim x/y/z, blockDim x/y/z, unsigned int
/// sharedMemBytes, CUstream hStream, void **kernelParams, void **extra).
///
/// Parameters come either as `kernelParams`, one pointer per parameter (each
/// copied, at its size, to its offset in the staging slot, by the layout the
/// device reported), or as `extra` with CU_LAUNCH_PARAM_BUFFER_POINTER /
/// _SIZE (the packed buffer itself). A launch allocates nothing here.
@_cdecl("vgpucore_cuLaunchKernel")
public func vgpucore_cuLaunchKernel(
  _ f: UnsafeMutableRawPointer?, _ gridX: UInt32, _ gridY: UInt32, _ gridZ: UInt32, _ blockX: UInt32,
  _ blockY: UInt32, _ blockZ: UInt32, _ sharedMemory: UInt32, _ stream: UnsafeMutableRawPointer?,
  _ kernelParams: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard gridX > 0, gridY > 0, gridZ > 0, blockX > 0, blockY > 0, blockZ > 0,
    gridX <= maxGrid.x, gridY <= maxGrid.y, gridZ <= maxGrid.z,
    blockX <= maxBlock.x, blockY <= maxBlock.y, blockZ <= maxBlock.z,
    UInt64(blockX) * UInt64(blockY) * UInt64(blockZ) <= maxThreadsPerBlock,
    sharedMemory <= maxSharedMemoryPerBlock
  else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuLaunchKernel") { (device) throws(VGPUError) in
    let key = handleKey(f)
    guard let function = cudaObjects.withLock({ $0.functions[key] }) else { return CUDA_ERROR_INVALID_HANDLE }
    let target: StreamHandle?
    switch lookUpStream(stream) {
    case .failure(let e): return e.result
    case .success(let s): target = s
    }
    let grid = Dimensions(gridX, gridY, gridZ)
    let block = Dimensions(blockX, blockY, blockZ)
    // An `extra` that is just CU_LAUNCH_PARAM_END says nothing.
    switch (kernelParams, extra.flatMap { $0[0] == nil ? nil : $0 }) {
    case (let params?, nil):
      try device.launch(
        function.handle, grid: grid, block: block, sharedMemory: sharedMemory, arguments: params, stream: target)
    case (nil, let extra?):
      guard let buffer = packedBuffer(extra), buffer.count == function.handle.parameterSize else {
        return CUDA_ERROR_INVALID_VALUE
      }
      try device.launch(
        function.handle, grid: grid, block: block, sharedMemory: sharedMemory, parameters: buffer, stream: target)
    case (nil, nil):
      guard function.handle.parameterSize == 0 else { return CUDA_ERROR_INVALID_VALUE }
      try device.launch(
        function.handle, grid: grid, block: block, sharedMemory: sharedMemory,
        parameters: UnsafeRawBufferPointer(start: nil, count: 0), stream: target)
    case (_?, _?):
      return CUDA_ERROR_INVALID_VALUE
    }
    return CUDA_SUCCESS
  }
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
