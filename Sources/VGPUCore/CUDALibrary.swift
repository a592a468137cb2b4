import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// The library API (CUDA 12.0: CUlibrary, CUkernel), function and kernel
// attributes, parameter layouts, occupancy, and cuLink*.
//
// A CUlibrary is a module record (cuLibraryGetModule hands out the same
// handle) and a CUkernel is a function record (cuKernelGetFunction hands out
// the same handle): cuda.h lets a CUkernel be cast to a CUfunction, and
// cuda.core and numba-cuda launch that way. The context a kernel runs in is
// the process's one device connection, so "the function of this kernel in
// the current context" is the kernel itself.

// MARK: Libraries

/// Option arrays: counts without their arrays are CUDA_ERROR_INVALID_VALUE.
@inline(__always)
func optionsValid(_ count: UInt32, _ options: UnsafeRawPointer?, _ values: UnsafeRawPointer?) -> Bool {
  count == 0 || (options != nil && values != nil)
}

/// cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option
/// *jitOptions, void **jitOptionsValues, unsigned int numJitOptions,
/// CUlibraryOption *libraryOptions, void **libraryOptionValues, unsigned int
/// numLibraryOptions). The options tune JIT and binary retention
/// (CU_LIBRARY_BINARY_IS_PRESERVED): the image is copied to the device at
/// once, so none of them changes anything here.
@_cdecl("vgpucore_cuLibraryLoadData")
public func vgpucore_cuLibraryLoadData(
  _ library: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ code: UnsafeRawPointer?,
  _ jitOptions: UnsafeRawPointer?, _ jitValues: UnsafeRawPointer?, _ jitCount: UInt32,
  _ libraryOptions: UnsafeRawPointer?, _ libraryValues: UnsafeRawPointer?, _ libraryCount: UInt32
) -> Int32 {
  guard let library, let code, optionsValid(jitCount, jitOptions, jitValues),
    optionsValid(libraryCount, libraryOptions, libraryValues)
  else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  return loadModule("cuLibraryLoadData", library, moduleImage(at: code), library: true)
}

/// cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, ...the same options).
@_cdecl("vgpucore_cuLibraryLoadFromFile")
public func vgpucore_cuLibraryLoadFromFile(
  _ library: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ path: UnsafePointer<CChar>?,
  _ jitOptions: UnsafeRawPointer?, _ jitValues: UnsafeRawPointer?, _ jitCount: UInt32,
  _ libraryOptions: UnsafeRawPointer?, _ libraryValues: UnsafeRawPointer?, _ libraryCount: UInt32
) -> Int32 {
  guard let library, let path, optionsValid(jitCount, jitOptions, jitValues),
    optionsValid(libraryCount, libraryOptions, libraryValues)
  else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let data = readImageFile(path) else { return CUDA_ERROR_FILE_NOT_FOUND }
  return data.withUnsafeBytes { loadModule("cuLibraryLoadFromFile", library, moduleImage(inFile: $0), library: true) }
}

/// cuLibraryUnload(CUlibrary library)
@_cdecl("vgpucore_cuLibraryUnload")
public func vgpucore_cuLibraryUnload(_ library: UnsafeMutableRawPointer?) -> Int32 {
  unloadModule("cuLibraryUnload", library)
}

/// cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
@_cdecl("vgpucore_cuLibraryGetKernel")
public func vgpucore_cuLibraryGetKernel(
  _ kernel: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ library: UnsafeMutableRawPointer?,
  _ name: UnsafePointer<CChar>?
) -> Int32 {
  guard let kernel, let name else { return CUDA_ERROR_INVALID_VALUE }
  return getFunction("cuLibraryGetKernel", kernel, handleKey(library), name)
}

/// cuLibraryGetModule(CUmodule *pMod, CUlibrary library): the library's own handle.
@_cdecl("vgpucore_cuLibraryGetModule")
public func vgpucore_cuLibraryGetModule(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ library: UnsafeMutableRawPointer?
) -> Int32 {
  guard let module else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuLibraryGetModule") { _ in
    guard cudaObjects.withLock({ $0.modules[handleKey(library)] != nil }) else { return CUDA_ERROR_INVALID_HANDLE }
    module.pointee = library
    return CUDA_SUCCESS
  }
}

/// cuLibraryGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUlibrary library, const char *name)
@_cdecl("vgpucore_cuLibraryGetGlobal")
public func vgpucore_cuLibraryGetGlobal(
  _ dptr: UnsafeMutablePointer<UInt64>?, _ bytes: UnsafeMutablePointer<Int>?, _ library: UnsafeMutableRawPointer?,
  _ name: UnsafePointer<CChar>?
) -> Int32 {
  getGlobal("cuLibraryGetGlobal", dptr, bytes, library, name)
}

/// cuLibraryGetKernelCount(unsigned int *count, CUlibrary lib)
@_cdecl("vgpucore_cuLibraryGetKernelCount")
public func vgpucore_cuLibraryGetKernelCount(
  _ count: UnsafeMutablePointer<UInt32>?, _ library: UnsafeMutableRawPointer?
)
  -> Int32
{
  countKernels("cuLibraryGetKernelCount", count, handleKey(library))
}

/// cuLibraryEnumerateKernels(CUkernel *kernels, unsigned int numKernels, CUlibrary lib)
@_cdecl("vgpucore_cuLibraryEnumerateKernels")
public func vgpucore_cuLibraryEnumerateKernels(
  _ kernels: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ count: UInt32, _ library: UnsafeMutableRawPointer?
) -> Int32 {
  enumerateKernels("cuLibraryEnumerateKernels", kernels, count, handleKey(library))
}

/// cuModuleGetFunctionCount(unsigned int *count, CUmodule mod) (CUDA 12.4):
/// a module and a library are one record here, so this is cuLibraryGetKernelCount's answer.
@_cdecl("vgpucore_cuModuleGetFunctionCount")
public func vgpucore_cuModuleGetFunctionCount(
  _ count: UnsafeMutablePointer<UInt32>?, _ module: UnsafeMutableRawPointer?
)
  -> Int32
{
  countKernels("cuModuleGetFunctionCount", count, handleKey(module))
}

/// cuModuleEnumerateFunctions(CUfunction *functions, unsigned int numFunctions, CUmodule mod) (CUDA 12.4):
/// the same handles cuModuleGetFunction gives for each name.
@_cdecl("vgpucore_cuModuleEnumerateFunctions")
public func vgpucore_cuModuleEnumerateFunctions(
  _ functions: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ count: UInt32, _ module: UnsafeMutableRawPointer?
) -> Int32 {
  enumerateKernels("cuModuleEnumerateFunctions", functions, count, handleKey(module))
}

/// The number of kernels of module or library `key` (the device's moduleKernels command).
func countKernels(_ call: StaticString, _ count: UnsafeMutablePointer<UInt32>?, _ key: UInt) -> Int32 {
  guard let count else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    let module: ModuleHandle
    switch try deviceModule(call, key, device) {
    case .success(let m): module = m
    case .failure(let e): return e.result
    }
    count.pointee = UInt32(clamping: try device.kernelNames(in: module).count)
    return CUDA_SUCCESS
  }
}

/// A handle for every kernel of module or library `key`, in the device's order.
func enumerateKernels(
  _ call: StaticString, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ count: UInt32, _ key: UInt
) -> Int32 {
  guard let out else { return CUDA_ERROR_INVALID_VALUE }
  let names: [String]
  switch listKernels(call, key) {
  case .success(let n): names = n
  case .failure(let e): return e.result
  }
  // cuda.h: numKernels / numFunctions must be the count cuLibraryGetKernelCount / cuModuleGetFunctionCount gave.
  guard Int(count) == names.count else { return CUDA_ERROR_INVALID_VALUE }
  for (i, name) in names.enumerated() {
    let r = name.withCString { getFunction(call, out + i, key, $0) }
    guard r == CUDA_SUCCESS else { return r }
  }
  return CUDA_SUCCESS
}

/// The kernel names of library `key`, loading it if it has not been yet.
func listKernels(_ call: StaticString, _ key: UInt) -> Result<[String], CUDAError> {
  var names: [String] = []
  let r = withDevice(call) { (device) throws(VGPUError) in
    switch try deviceModule(call, key, device) {
    case .success(let m): names = try device.kernelNames(in: m)
    case .failure(let e): return e.result
    }
    return CUDA_SUCCESS
  }
  return r == CUDA_SUCCESS ? .success(names) : .failure(CUDAError(r))
}

// MARK: Kernels and functions

/// The record of a CUfunction or CUkernel, or the CUresult for its absence.
func lookUpFunction(_ f: UnsafeMutableRawPointer?) -> Result<FunctionRecord, CUDAError> {
  guard cuInitCalled.load(ordering: .acquiring) else { return .failure(CUDAError(CUDA_ERROR_NOT_INITIALIZED)) }
  let sticky = currentStickyError()
  if sticky != 0 { return .failure(CUDAError(sticky)) }
  guard let record = cudaObjects.withLock({ $0.functions[handleKey(f)] }) else {
    return .failure(CUDAError(CUDA_ERROR_INVALID_HANDLE))
  }
  return .success(record)
}

/// Runs `body` on the record of `f` (a CUfunction or a CUkernel).
@inline(__always)
func withFunction(_ f: UnsafeMutableRawPointer?, _ body: (FunctionRecord) -> Int32) -> Int32 {
  switch lookUpFunction(f) {
  case .success(let r): return body(r)
  case .failure(let e): return e.result
  }
}

/// Changes the record of `f` (gone meanwhile: CUDA_ERROR_INVALID_HANDLE).
func updateFunction(_ f: UnsafeMutableRawPointer?, _ change: (inout FunctionRecord) -> Void) -> Int32 {
  cudaObjects.withLock { o in
    guard o.functions[handleKey(f)] != nil else { return CUDA_ERROR_INVALID_HANDLE }
    change(&o.functions[handleKey(f)]!)
    return CUDA_SUCCESS
  }
}

/// cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel): the kernel's own handle.
@_cdecl("vgpucore_cuKernelGetFunction")
public func vgpucore_cuKernelGetFunction(
  _ function: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ kernel: UnsafeMutableRawPointer?
) -> Int32 {
  guard let function else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(kernel) { _ in
    function.pointee = kernel
    return CUDA_SUCCESS
  }
}

/// cuKernelGetLibrary(CUlibrary *pLib, CUkernel kernel)
@_cdecl("vgpucore_cuKernelGetLibrary")
public func vgpucore_cuKernelGetLibrary(
  _ library: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ kernel: UnsafeMutableRawPointer?
) -> Int32 {
  guard let library else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(kernel) { r in
    library.pointee = handlePointer(r.module)
    return CUDA_SUCCESS
  }
}

/// cuFuncGetModule(CUmodule *hmod, CUfunction hfunc)
@_cdecl("vgpucore_cuFuncGetModule")
public func vgpucore_cuFuncGetModule(
  _ module: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ function: UnsafeMutableRawPointer?
) -> Int32 {
  guard let module else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    module.pointee = handlePointer(r.module)
    return CUDA_SUCCESS
  }
}

/// cuFuncGetName(const char **name, CUfunction hfunc)
@_cdecl("vgpucore_cuFuncGetName")
public func vgpucore_cuFuncGetName(
  _ name: UnsafeMutablePointer<UnsafePointer<CChar>?>?, _ function: UnsafeMutableRawPointer?
) -> Int32 {
  guard let name else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    name.pointee = r.name
    return CUDA_SUCCESS
  }
}

/// cuKernelGetName(const char **name, CUkernel hfunc)
@_cdecl("vgpucore_cuKernelGetName")
public func vgpucore_cuKernelGetName(
  _ name: UnsafeMutablePointer<UnsafePointer<CChar>?>?, _ kernel: UnsafeMutableRawPointer?
) -> Int32 {
  vgpucore_cuFuncGetName(name, kernel)
}

/// cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t
/// *paramOffset, size_t *paramSize): CUDA_ERROR_INVALID_VALUE past the last
/// parameter, which is how callers (cuda.core) find the count.
@_cdecl("vgpucore_cuFuncGetParamInfo")
public func vgpucore_cuFuncGetParamInfo(
  _ function: UnsafeMutableRawPointer?, _ index: Int, _ offset: UnsafeMutablePointer<Int>?,
  _ size: UnsafeMutablePointer<Int>?
) -> Int32 {
  withFunction(function) { r in
    guard let slots = r.handle.layout?.slots, index >= 0, index < slots.count else { return CUDA_ERROR_INVALID_VALUE }
    offset?.pointee = Int(slots[index].offset)
    size?.pointee = Int(slots[index].size)
    return CUDA_SUCCESS
  }
}

/// cuKernelGetParamInfo(CUkernel kernel, size_t paramIndex, size_t *paramOffset, size_t *paramSize)
@_cdecl("vgpucore_cuKernelGetParamInfo")
public func vgpucore_cuKernelGetParamInfo(
  _ kernel: UnsafeMutableRawPointer?, _ index: Int, _ offset: UnsafeMutablePointer<Int>?,
  _ size: UnsafeMutablePointer<Int>?
) -> Int32 {
  vgpucore_cuFuncGetParamInfo(kernel, index, offset, size)
}

/// cuFuncGetParamCount(CUfunction func, size_t *paramCount) (CUDA 13.2)
@_cdecl("vgpucore_cuFuncGetParamCount")
public func vgpucore_cuFuncGetParamCount(_ function: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<Int>?)
  -> Int32
{
  guard let count else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    count.pointee = r.handle.layout?.slots.count ?? 0
    return CUDA_SUCCESS
  }
}

/// cuKernelGetParamCount(CUkernel kernel, size_t *paramCount) (CUDA 13.2)
@_cdecl("vgpucore_cuKernelGetParamCount")
public func vgpucore_cuKernelGetParamCount(_ kernel: UnsafeMutableRawPointer?, _ count: UnsafeMutablePointer<Int>?)
  -> Int32
{
  vgpucore_cuFuncGetParamCount(kernel, count)
}

/// CUfunction_attribute (cuda.h, CUfunction_attribute_enum).
enum FunctionAttribute: Int32 {
  case maxThreadsPerBlock = 0
  case sharedSizeBytes, constSizeBytes, localSizeBytes, numRegs, ptxVersion,
    binaryVersion, cacheModeCA, maxDynamicSharedSizeBytes, preferredSharedMemoryCarveout, clusterSizeMustBeSet,
    requiredClusterWidth, requiredClusterHeight, requiredClusterDepth, nonPortableClusterSizeAllowed,
    clusterSchedulingPolicyPreference, deviceNodeUpdateSupported, sharedMemoryMode
}

/// The device's compute capability as CU_FUNC_ATTRIBUTE_BINARY_VERSION writes it (major × 10 + minor).
func deviceBinaryVersion() -> Int32 {
  guard case .success(let d) = ShimRuntime.shared.device() else { return 0 }
  let cc = d.info.identity.computeCapability
  return Int32(clamping: cc.major * 10 + cc.minor)
}

/// An attribute's value, from the FunctionInfo the device reported.
func attribute(_ attribute: Int32, of r: FunctionRecord) -> Int32? {
  let info = r.handle.info
  switch FunctionAttribute(rawValue: attribute) {
  case .maxThreadsPerBlock?: return Int32(clamping: info?.maxThreadsPerBlock ?? UInt32(maxThreadsPerBlock))
  case .sharedSizeBytes?: return Int32(clamping: info?.sharedBytes ?? 0)
  case .constSizeBytes?: return Int32(clamping: info?.constBytes ?? 0)
  case .localSizeBytes?: return Int32(clamping: info?.localBytes ?? 0)
  case .numRegs?: return Int32(clamping: info?.registers ?? 0)
  case .ptxVersion?: return Int32(info?.ptxVersion ?? 0)
  // The code runs on this device as if built for it: a driver JIT-compiling
  // PTX reports the device's own architecture here, as does this one when
  // the device reports none (the reference device reports the PTX's .target).
  case .binaryVersion?:
    let v = Int32(info?.binaryVersion ?? 0)
    return v != 0 ? v : deviceBinaryVersion()
  case .maxDynamicSharedSizeBytes?: return r.maxDynamicShared
  case .preferredSharedMemoryCarveout?: return r.carveout
  // No -dlcm=ca, no clusters, no graph node updates, the default shared memory mode.
  case .cacheModeCA?, .clusterSizeMustBeSet?, .requiredClusterWidth?, .requiredClusterHeight?,
    .requiredClusterDepth?, .nonPortableClusterSizeAllowed?, .clusterSchedulingPolicyPreference?,
    .deviceNodeUpdateSupported?, .sharedMemoryMode?:
    return 0
  case nil: return nil
  }
}

/// cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
@_cdecl("vgpucore_cuFuncGetAttribute")
public func vgpucore_cuFuncGetAttribute(
  _ pi: UnsafeMutablePointer<Int32>?, _ attrib: Int32, _ function: UnsafeMutableRawPointer?
)
  -> Int32
{
  guard let pi else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    guard let value = attribute(attrib, of: r) else { return CUDA_ERROR_INVALID_VALUE }
    pi.pointee = value
    return CUDA_SUCCESS
  }
}

/// cuKernelGetAttribute(int *pi, CUfunction_attribute attrib, CUkernel kernel, CUdevice dev)
@_cdecl("vgpucore_cuKernelGetAttribute")
public func vgpucore_cuKernelGetAttribute(
  _ pi: UnsafeMutablePointer<Int32>?, _ attrib: Int32, _ kernel: UnsafeMutableRawPointer?, _ dev: Int32
) -> Int32 {
  guard dev == 0 else { return CUDA_ERROR_INVALID_DEVICE }
  return vgpucore_cuFuncGetAttribute(pi, attrib, kernel)
}

/// cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int
/// value): MAX_DYNAMIC_SHARED_SIZE_BYTES up to the opt-in limit less the
/// static shared memory, the carve-out as a percentage (or -1); the cluster
/// and scheduling hints are accepted, as there is nothing to schedule them on.
@_cdecl("vgpucore_cuFuncSetAttribute")
public func vgpucore_cuFuncSetAttribute(_ function: UnsafeMutableRawPointer?, _ attrib: Int32, _ value: Int32)
  -> Int32
{
  withFunction(function) { r in
    switch FunctionAttribute(rawValue: attrib) {
    case .maxDynamicSharedSizeBytes?:
      let limit = Int32(maxSharedMemoryPerBlockOptin) - Int32(clamping: r.handle.info?.sharedBytes ?? 0)
      guard value >= 0, value <= limit else { return CUDA_ERROR_INVALID_VALUE }
      return updateFunction(function) { $0.maxDynamicShared = value }
    case .preferredSharedMemoryCarveout?:
      guard value >= -1, value <= 100 else { return CUDA_ERROR_INVALID_VALUE }
      return updateFunction(function) { $0.carveout = value }
    case .nonPortableClusterSizeAllowed?, .clusterSchedulingPolicyPreference?, .sharedMemoryMode?:
      return CUDA_SUCCESS
    default:
      return CUDA_ERROR_INVALID_VALUE
    }
  }
}

/// cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev)
@_cdecl("vgpucore_cuKernelSetAttribute")
public func vgpucore_cuKernelSetAttribute(
  _ attrib: Int32, _ value: Int32, _ kernel: UnsafeMutableRawPointer?, _ dev: Int32
) -> Int32 {
  guard dev == 0 else { return CUDA_ERROR_INVALID_DEVICE }
  return vgpucore_cuFuncSetAttribute(kernel, attrib, value)
}

/// cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config): a
/// preference (cuda.h: "only a preference"); CU_FUNC_CACHE_PREFER_NONE..EQUAL is 0...3.
@_cdecl("vgpucore_cuFuncSetCacheConfig")
public func vgpucore_cuFuncSetCacheConfig(_ function: UnsafeMutableRawPointer?, _ config: Int32) -> Int32 {
  withFunction(function) { _ in (0...3).contains(config) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE }
}

/// cuKernelSetCacheConfig(CUkernel kernel, CUfunc_cache config, CUdevice dev)
@_cdecl("vgpucore_cuKernelSetCacheConfig")
public func vgpucore_cuKernelSetCacheConfig(_ kernel: UnsafeMutableRawPointer?, _ config: Int32, _ dev: Int32)
  -> Int32
{
  guard dev == 0 else { return CUDA_ERROR_INVALID_DEVICE }
  return vgpucore_cuFuncSetCacheConfig(kernel, config)
}

// MARK: Occupancy

/// The device the occupancy answers model: an H100 SXM (CUDA C++ Programming
/// Guide, "Technical Specifications per Compute Capability", 9.0): 132 SMs,
/// 2048 threads, 32 blocks, 64 K registers and 228 KiB of shared memory per
/// SM, 1 KiB of which the driver reserves per block.
let multiprocessors = 132
let threadsPerMultiprocessor = 2048
let blocksPerMultiprocessor = 32
let registersPerMultiprocessor = 65536
let sharedPerMultiprocessor = 233_472
let reservedSharedPerBlock = 1024

/// Blocks of `blockSize` threads of `r` one SM holds at once.
func occupancy(_ r: FunctionRecord, blockSize: Int, dynamicShared: Int) -> Int {
  let info = r.handle.info
  guard blockSize > 0, blockSize <= Int(info?.maxThreadsPerBlock ?? UInt32(maxThreadsPerBlock)),
    dynamicShared <= Int(r.maxDynamicShared)
  else { return 0 }
  let warps = (blockSize + 31) / 32
  var blocks = min(blocksPerMultiprocessor, threadsPerMultiprocessor / (warps * 32))
  let shared = Int(info?.sharedBytes ?? 0) + dynamicShared + reservedSharedPerBlock
  blocks = min(blocks, sharedPerMultiprocessor / shared)
  let registers = Int(info?.registers ?? 0)
  if registers > 0 {
    // Registers are allocated per warp in units of 256.
    let perWarp = (registers * 32 + 255) / 256 * 256
    blocks = min(blocks, registersPerMultiprocessor / perWarp / warps)
  }
  return blocks
}

/// cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func, int blockSize, size_t dynamicSMemSize)
@_cdecl("vgpucore_cuOccupancyMaxActiveBlocksPerMultiprocessor")
public func vgpucore_cuOccupancyMaxActiveBlocksPerMultiprocessor(
  _ blocks: UnsafeMutablePointer<Int32>?, _ function: UnsafeMutableRawPointer?, _ blockSize: Int32,
  _ dynamicShared: Int
) -> Int32 {
  vgpucore_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, function, blockSize, dynamicShared, 0)
}

/// ...WithFlags(..., unsigned int flags): CU_OCCUPANCY_DEFAULT 0 or
/// CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE 1 (which concerns caching, not the count).
@_cdecl("vgpucore_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags")
public func vgpucore_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
  _ blocks: UnsafeMutablePointer<Int32>?, _ function: UnsafeMutableRawPointer?, _ blockSize: Int32,
  _ dynamicShared: Int, _ flags: UInt32
) -> Int32 {
  guard let blocks, flags <= 1, dynamicShared >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    blocks.pointee = Int32(occupancy(r, blockSize: Int(blockSize), dynamicShared: dynamicShared))
    return CUDA_SUCCESS
  }
}

/// cuOccupancyMaxPotentialBlockSize(int *minGridSize, int *blockSize,
/// CUfunction func, CUoccupancyB2DSize blockSizeToDynamicSMemSize, size_t
/// dynamicSMemSize, int blockSizeLimit): the block size (a multiple of 32)
/// with the most resident threads per SM, the largest on a tie, and the grid
/// that fills the device with it.
@_cdecl("vgpucore_cuOccupancyMaxPotentialBlockSize")
public func vgpucore_cuOccupancyMaxPotentialBlockSize(
  _ minGrid: UnsafeMutablePointer<Int32>?, _ blockSize: UnsafeMutablePointer<Int32>?,
  _ function: UnsafeMutableRawPointer?, _ sharedFor: (@convention(c) (Int32) -> Int)?, _ dynamicShared: Int,
  _ limit: Int32
) -> Int32 {
  vgpucore_cuOccupancyMaxPotentialBlockSizeWithFlags(minGrid, blockSize, function, sharedFor, dynamicShared, limit, 0)
}

@_cdecl("vgpucore_cuOccupancyMaxPotentialBlockSizeWithFlags")
public func vgpucore_cuOccupancyMaxPotentialBlockSizeWithFlags(
  _ minGrid: UnsafeMutablePointer<Int32>?, _ blockSize: UnsafeMutablePointer<Int32>?,
  _ function: UnsafeMutableRawPointer?, _ sharedFor: (@convention(c) (Int32) -> Int)?, _ dynamicShared: Int,
  _ limit: Int32, _ flags: UInt32
) -> Int32 {
  guard let minGrid, let blockSize, flags <= 1, limit >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    let most = Int(r.handle.info?.maxThreadsPerBlock ?? UInt32(maxThreadsPerBlock))
    var size = min(limit == 0 ? most : Int(limit), most) / 32 * 32
    var best = (threads: 0, size: 0, blocks: 0)
    while size > 0 {
      let shared = sharedFor.map { $0(Int32(size)) } ?? dynamicShared
      let blocks = occupancy(r, blockSize: size, dynamicShared: shared)
      if blocks * size > best.threads { best = (blocks * size, size, blocks) }
      size -= 32
    }
    minGrid.pointee = Int32(best.blocks * multiprocessors)
    blockSize.pointee = Int32(best.size)
    return CUDA_SUCCESS
  }
}

/// cuOccupancyAvailableDynamicSMemPerBlock(size_t *dynamicSmemSize, CUfunction func, int numBlocks, int blockSize)
@_cdecl("vgpucore_cuOccupancyAvailableDynamicSMemPerBlock")
public func vgpucore_cuOccupancyAvailableDynamicSMemPerBlock(
  _ size: UnsafeMutablePointer<Int>?, _ function: UnsafeMutableRawPointer?, _ blocks: Int32, _ blockSize: Int32
) -> Int32 {
  guard let size, blocks > 0, blockSize > 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withFunction(function) { r in
    guard occupancy(r, blockSize: Int(blockSize), dynamicShared: 0) >= Int(blocks) else {
      size.pointee = 0
      return CUDA_SUCCESS
    }
    let perBlock = sharedPerMultiprocessor / Int(blocks) - reservedSharedPerBlock - Int(r.handle.info?.sharedBytes ?? 0)
    size.pointee = max(0, min(perBlock, Int(r.maxDynamicShared)))
    return CUDA_SUCCESS
  }
}

// MARK: Linking

/// CUjitInputType (cuda.h): CU_JIT_INPUT_CUBIN 0, PTX 1, FATBINARY 2, OBJECT 3, LIBRARY 4, NVVM 5.
let CU_JIT_INPUT_CUBIN: Int32 = 0
let CU_JIT_INPUT_PTX: Int32 = 1
let CU_JIT_INPUT_FATBINARY: Int32 = 2
let CU_JIT_INPUT_OBJECT: Int32 = 3
let CU_JIT_INPUT_LIBRARY: Int32 = 4
/// CUjit_option (cuda.h): the register limit, the log buffers and their sizes.
let CU_JIT_MAX_REGISTERS: Int32 = 0
let CU_JIT_INFO_LOG_BUFFER: Int32 = 3
let CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: Int32 = 4
let CU_JIT_ERROR_LOG_BUFFER: Int32 = 5
let CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: Int32 = 6

/// cuLinkCreate_v2(unsigned int numOptions, CUjit_option *options, void
/// **optionValues, CUlinkState *stateOut). Linking happens on the device's
/// side of the PTX: with one PTX input (numba-cuda's path without
/// nvJitLink), cuLinkComplete hands that PTX back as the "cubin", which
/// cuModuleLoadData and cuLibraryLoadData take. The log buffers get the
/// reason when a link cannot be done.
@_cdecl("vgpucore_cuLinkCreate_v2")
public func vgpucore_cuLinkCreate_v2(
  _ count: UInt32, _ options: UnsafePointer<Int32>?, _ values: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ state: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let state, optionsValid(count, options, values) else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  var record = LinkRecord()
  // Option values are the values themselves, cast to void * (cuda.h, CUjit_option).
  var infoBuffer: UnsafeMutableRawPointer?
  var errorBuffer: UnsafeMutableRawPointer?
  var infoSize = 0
  var errorSize = 0
  for i in 0..<Int(count) {
    switch options![i] {
    case CU_JIT_MAX_REGISTERS:
      let n = UInt32(truncatingIfNeeded: UInt(bitPattern: values![i]))
      if n > 0 { record.maxRegisters = n }
    case CU_JIT_INFO_LOG_BUFFER: infoBuffer = values![i]
    case CU_JIT_ERROR_LOG_BUFFER: errorBuffer = values![i]
    case CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES:
      infoSize = Int(UInt(bitPattern: values![i]) & 0xffff_ffff)
      record.infoLogSize = values! + i
    case CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES:
      errorSize = Int(UInt(bitPattern: values![i]) & 0xffff_ffff)
      record.errorLogSize = values! + i
    default: break
    }
  }
  if let infoBuffer { record.infoLog = UnsafeMutableRawBufferPointer(start: infoBuffer, count: infoSize) }
  if let errorBuffer { record.errorLog = UnsafeMutableRawBufferPointer(start: errorBuffer, count: errorSize) }
  let handle = cudaObjects.withLock { o in
    let h = o.newHandle(.link)
    o.links[h] = record
    return h
  }
  state.pointee = handlePointer(handle)
  return CUDA_SUCCESS
}

/// Adds one input, checking its type: what cannot be linked here is refused
/// when added, with the reason in the error log and on stderr.
func addLinkInput(
  _ call: StaticString, _ state: UnsafeMutableRawPointer?, _ type: Int32, _ bytes: [UInt8], _ name: String
)
  -> Int32
{
  // CUDA's device runtime (libcudadevrt.a) is accepted as a library, whichever type it is
  // given as: the PTX engine provides its functions (DeviceRuntimeLink.swift).
  let deviceRuntime =
    (type == CU_JIT_INPUT_LIBRARY || type == CU_JIT_INPUT_OBJECT) && DeviceRuntimeLibrary.recognizes(bytes, name: name)
  guard [CU_JIT_INPUT_PTX, CU_JIT_INPUT_CUBIN, CU_JIT_INPUT_FATBINARY].contains(type) || deviceRuntime else {
    return linkRefusal(
      call, state,
      "input '\(name)' is of CUjitInputType \(type); only PTX, cubin and fatbin inputs and CUDA's device "
        + "runtime (libcudadevrt.a) can be linked here (other objects, libraries and NVVM IR need a device linker)")
  }
  if deviceRuntime {
    return cudaObjects.withLock { o in
      guard o.links[handleKey(state)] != nil else { return CUDA_ERROR_INVALID_HANDLE }
      o.links[handleKey(state)]!.deviceRuntime = true
      return CUDA_SUCCESS
    }
  }
  return cudaObjects.withLock { o in
    guard o.links[handleKey(state)] != nil else { return CUDA_ERROR_INVALID_HANDLE }
    o.links[handleKey(state)]!.inputs.append((type, bytes, name))
    return CUDA_SUCCESS
  }
}

/// A CUjitInputType's name, for messages.
func linkInputKind(_ type: Int32) -> String {
  switch type {
  case CU_JIT_INPUT_CUBIN: "cubin"
  case CU_JIT_INPUT_PTX: "PTX"
  case CU_JIT_INPUT_FATBINARY: "fatbin"
  default: "CUjitInputType \(type)"
  }
}

/// Writes `line` to the state's error log, says it on stderr, and answers NOT_SUPPORTED.
func linkRefusal(_ call: StaticString, _ state: UnsafeMutableRawPointer?, _ line: String) -> Int32 {
  let log = cudaObjects.withLock { o in o.links[handleKey(state)].map { ($0.errorLog, $0.errorLogSize) } }
  guard let (buffer, size) = log else { return CUDA_ERROR_INVALID_HANDLE }
  let text = Array("vgpu: \(line)".utf8)
  if let buffer, buffer.count > 0 {
    let n = min(text.count, buffer.count - 1)
    buffer.copyBytes(from: text[..<n])
    buffer[n] = 0
    size?.pointee = UnsafeMutableRawPointer(bitPattern: UInt(n + 1))
  }
  ShimRuntime.printLine("vgpu: \(call): \(line) (CUDA_ERROR_NOT_SUPPORTED)")
  return CUDA_ERROR_NOT_SUPPORTED
}

/// cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void *data,
/// size_t size, const char *name, unsigned int numOptions, CUjit_option
/// *options, void **optionValues). PTX may come with or without its NUL.
@_cdecl("vgpucore_cuLinkAddData_v2")
public func vgpucore_cuLinkAddData_v2(
  _ state: UnsafeMutableRawPointer?, _ type: Int32, _ data: UnsafeRawPointer?, _ size: Int,
  _ name: UnsafePointer<CChar>?, _ count: UInt32, _ options: UnsafeRawPointer?, _ values: UnsafeRawPointer?
) -> Int32 {
  guard let data, size > 0, optionsValid(count, options, values) else { return CUDA_ERROR_INVALID_VALUE }
  return addLinkInput(
    "cuLinkAddData", state, type, [UInt8](UnsafeRawBufferPointer(start: data, count: size)),
    name.map { String(cString: $0) } ?? "(unnamed)")
}

/// cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char
/// *path, unsigned int numOptions, CUjit_option *options, void **optionValues)
@_cdecl("vgpucore_cuLinkAddFile_v2")
public func vgpucore_cuLinkAddFile_v2(
  _ state: UnsafeMutableRawPointer?, _ type: Int32, _ path: UnsafePointer<CChar>?, _ count: UInt32,
  _ options: UnsafeRawPointer?, _ values: UnsafeRawPointer?
) -> Int32 {
  guard let path, optionsValid(count, options, values) else { return CUDA_ERROR_INVALID_VALUE }
  guard var data = readImageFile(path) else { return CUDA_ERROR_FILE_NOT_FOUND }
  data.removeLast()
  return addLinkInput("cuLinkAddFile", state, type, data, String(cString: path))
}

/// cuLinkComplete(CUlinkState state, void **cubinOut, size_t *sizeOut): the
/// image, owned by the state until cuLinkDestroy. One input is handed back
/// as it is (PTX NUL-terminated). Several PTX inputs (numba's kernel plus
/// the PTX or CUDA C++ of `link=[...]`, which numba compiles to PTX with
/// NVRTC) are joined into one PTX text: the device's PTX engine resolves a
/// `.extern .func` declaration against the definition another input brings
/// (PTX ISA §11.3 "Linking Directives": .extern names a symbol defined
/// elsewhere, .visible makes it so). Several inputs of which one is a cubin
/// or fatbin would need a real device linker: CUDA_ERROR_NOT_SUPPORTED.
@_cdecl("vgpucore_cuLinkComplete")
public func vgpucore_cuLinkComplete(
  _ state: UnsafeMutableRawPointer?, _ cubin: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ size: UnsafeMutablePointer<Int>?
) -> Int32 {
  guard let cubin, let size else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let record = cudaObjects.withLock({ $0.links[handleKey(state)] }) else { return CUDA_ERROR_INVALID_HANDLE }
  if let output = record.output {
    cubin.pointee = output.baseAddress
    size.pointee = output.count
    return CUDA_SUCCESS
  }
  guard let input = record.inputs.first else {
    return linkRefusal(
      "cuLinkComplete", state,
      record.deviceRuntime
        ? "only CUDA's device runtime (libcudadevrt.a) was added: no code to link" : "nothing was added to link")
  }
  guard record.inputs.count == 1 || record.inputs.allSatisfy({ $0.type == CU_JIT_INPUT_PTX }) else {
    return linkRefusal(
      "cuLinkComplete", state,
      "\(record.inputs.count) inputs (\(record.inputs.map { "\($0.name): \(linkInputKind($0.type))" }.joined(separator: ", "))) "
        + "cannot be linked into one image here: this virtual GPU links several inputs only when all of them are "
        + "PTX (a cubin or fatbin needs the device's linker); add PTX instead")
  }
  var bytes: [UInt8] = []
  if record.inputs.count == 1 {
    bytes = input.bytes
    // PTX up to the first NUL, then exactly one.
    if input.type == CU_JIT_INPUT_PTX {
      if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
      bytes.append(0)
    }
  } else {
    for ptx in record.inputs {
      // Each text up to its first NUL, a newline between them, then exactly one NUL.
      let text = ptx.bytes.firstIndex(of: 0).map { ptx.bytes[..<$0] } ?? ptx.bytes[...]
      bytes += text
      bytes.append(0x0a)
    }
    bytes.append(0)
  }
  if let limit = record.maxRegisters, record.inputs.allSatisfy({ $0.type == CU_JIT_INPUT_PTX }) {
    bytes = PTXEntries.limitingRegisters(bytes, to: limit)
  }
  if record.deviceRuntime && record.inputs.allSatisfy({ $0.type == CU_JIT_INPUT_PTX }) {
    // Every function the PTX needs from elsewhere must be one the engine provides.
    let missing = DeviceRuntimeLibrary.undefinedFunctions(bytes).filter { !DeviceRuntimeLibrary.provided.contains($0) }
    if !missing.isEmpty {
      return linkRefusal(
        "cuLinkComplete", state,
        "the PTX calls \(missing.joined(separator: ", ")), which no input defines and which this virtual GPU's "
          + "device runtime does not provide (libcudadevrt.a's SASS cannot run here; the PTX engine provides "
          + "\(DeviceRuntimeLibrary.provided.sorted().joined(separator: ", "))); define it in a PTX input or "
          + "do without it")
    }
  }
  let output = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
  output.copyBytes(from: bytes)
  let kept = cudaObjects.withLock { o -> Bool in
    guard o.links[handleKey(state)] != nil else { return false }
    o.links[handleKey(state)]!.output = output
    return true
  }
  guard kept else {
    output.deallocate()
    return CUDA_ERROR_INVALID_HANDLE
  }
  // Nothing to say in the logs: empty strings, length 0 (cuda.h: the
  // size options are written back with what was logged).
  for (log, sizeValue) in [(record.infoLog, record.infoLogSize), (record.errorLog, record.errorLogSize)] {
    if let log, log.count > 0 { log[0] = 0 }
    sizeValue?.pointee = nil
  }
  cubin.pointee = output.baseAddress
  size.pointee = output.count
  return CUDA_SUCCESS
}

/// PTX entries' headers, as the linker touches them.
enum PTXEntries {
  /// `ptx` with `.maxnreg limit` before the body of every `.entry`: how a PTX
  /// text carries CU_JIT_MAX_REGISTERS to the device, which compiles it (PTX
  /// ISA §11.4.1: the directive bounds the registers per thread; with two, the
  /// device keeps the smaller). Comments (`//`, `/* */`) are skipped, so a word
  /// `.entry` in one is not taken for a header.
  static func limitingRegisters(_ ptx: [UInt8], to limit: UInt32) -> [UInt8] {
    let directive = Array(" .maxnreg \(limit) ".utf8)
    let entry = Array(".entry".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(ptx.count + 64)
    var i = 0
    var inHeader = false
    while i < ptx.count {
      let c = ptx[i]
      if c == UInt8(ascii: "/"), i + 1 < ptx.count, ptx[i + 1] == UInt8(ascii: "/") || ptx[i + 1] == UInt8(ascii: "*") {
        let block = ptx[i + 1] == UInt8(ascii: "*")
        var j = i + 2
        while j < ptx.count {
          if block ? (ptx[j] == UInt8(ascii: "/") && ptx[j - 1] == UInt8(ascii: "*") && j > i + 2) : ptx[j] == 0x0a {
            break
          }
          j += 1
        }
        j = min(j + (block ? 1 : 0), ptx.count)
        out += ptx[i..<j]
        i = j
        continue
      }
      if !inHeader, c == UInt8(ascii: "."), ptx[i...].starts(with: entry),
        i + entry.count < ptx.count, ptx[i + entry.count] == 0x20 || ptx[i + entry.count] == 0x09
      {
        inHeader = true
      } else if inHeader && c == UInt8(ascii: "{") {
        out += directive
        inHeader = false
      } else if inHeader && c == UInt8(ascii: ";") {
        inHeader = false  // a declaration: no body to bound
      }
      out.append(c)
      i += 1
    }
    return out
  }
}

/// cuLinkDestroy(CUlinkState state): the image cuLinkComplete gave goes with it.
@_cdecl("vgpucore_cuLinkDestroy")
public func vgpucore_cuLinkDestroy(_ state: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let record = cudaObjects.withLock({ $0.links.removeValue(forKey: handleKey(state)) }) else {
    return CUDA_ERROR_INVALID_HANDLE
  }
  record.output?.deallocate()
  return CUDA_SUCCESS
}
