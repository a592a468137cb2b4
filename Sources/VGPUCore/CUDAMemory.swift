import ShimCore
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

// Device memory, copies and memsets, and page-locked host memory. Copies and
// memsets complete before they return; the Async forms are the same calls
// after checking their stream, or are recorded while it captures
// (CUDAGraph.swift). None of them allocates unless captured.

/// cuMemGetInfo_v2(size_t *free, size_t *total)
@_cdecl("vgpucore_cuMemGetInfo_v2")
public func vgpucore_cuMemGetInfo_v2(_ free: UnsafeMutablePointer<Int>?, _ total: UnsafeMutablePointer<Int>?) -> Int32 {
  guard let free, let total else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuMemGetInfo") { (device) throws(VGPUError) in
    let info = try device.memoryInfo()
    free.pointee = Int(clamping: info.free)
    total.pointee = Int(clamping: info.total)
    return CUDA_SUCCESS
  }
}

/// cuMemGetInfo(unsigned int *free, unsigned int *total): the CUDA 2.x entry
/// point, 32 bits wide; larger values are clamped to 4 GiB - 1.
@_cdecl("vgpucore_cuMemGetInfo")
public func vgpucore_cuMemGetInfo(_ free: UnsafeMutablePointer<UInt32>?, _ total: UnsafeMutablePointer<UInt32>?)
  -> Int32
{
  guard let free, let total else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuMemGetInfo") { (device) throws(VGPUError) in
    let info = try device.memoryInfo()
    free.pointee = UInt32(clamping: info.free)
    total.pointee = UInt32(clamping: info.total)
    return CUDA_SUCCESS
  }
}

/// cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize): 256-byte aligned; 0 bytes is CUDA_ERROR_INVALID_VALUE.
@_cdecl("vgpucore_cuMemAlloc_v2")
public func vgpucore_cuMemAlloc_v2(_ dptr: UnsafeMutablePointer<UInt64>?, _ bytes: Int) -> Int32 {
  guard let dptr, bytes > 0 else { return CUDA_ERROR_INVALID_VALUE }
  if let refused = refusedWhileCapturing("cuMemAlloc") { return refused }
  return withDevice("cuMemAlloc") { (device) throws(VGPUError) in
    let address = try device.allocate(bytes).address
    cudaObjects.withLock { $0.deviceRanges.insert(address, size: UInt64(bytes)) }
    dptr.pointee = address
    return CUDA_SUCCESS
  }
}

/// cuMemFree_v2(CUdeviceptr dptr): freeing 0 does nothing.
@_cdecl("vgpucore_cuMemFree_v2")
public func vgpucore_cuMemFree_v2(_ dptr: UInt64) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemFree") { return refused }
  return withDevice("cuMemFree") { (device) throws(VGPUError) in
    if dptr != 0 {
      try device.free(DevicePointer(dptr))
      _ = cudaObjects.withLock { $0.deviceRanges.remove(start: dptr) }
    }
    return CUDA_SUCCESS
  }
}

// MARK: Copies

/// cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
@_cdecl("vgpucore_cuMemcpyHtoD_v2")
public func vgpucore_cuMemcpyHtoD_v2(_ dst: UInt64, _ src: UnsafeRawPointer?, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemcpyHtoD") { return refused }
  return copyHtoD("cuMemcpyHtoD", dst, src, count)
}

func copyHtoD(_ call: StaticString, _ dst: UInt64, _ src: UnsafeRawPointer?, _ count: Int) -> Int32 {
  guard count >= 0, count == 0 || src != nil else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    try device.copy(to: DevicePointer(dst), from: UnsafeRawBufferPointer(start: src, count: count))
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)
@_cdecl("vgpucore_cuMemcpyDtoH_v2")
public func vgpucore_cuMemcpyDtoH_v2(_ dst: UnsafeMutableRawPointer?, _ src: UInt64, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemcpyDtoH") { return refused }
  return copyDtoH("cuMemcpyDtoH", dst, src, count)
}

func copyDtoH(_ call: StaticString, _ dst: UnsafeMutableRawPointer?, _ src: UInt64, _ count: Int) -> Int32 {
  guard count >= 0, count == 0 || dst != nil else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    try device.copy(from: DevicePointer(src), into: UnsafeMutableRawBufferPointer(start: dst, count: count))
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount)
@_cdecl("vgpucore_cuMemcpyDtoD_v2")
public func vgpucore_cuMemcpyDtoD_v2(_ dst: UInt64, _ src: UInt64, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemcpyDtoD") { return refused }
  return copyDtoD("cuMemcpyDtoD", dst, src, count)
}

func copyDtoD(_ call: StaticString, _ dst: UInt64, _ src: UInt64, _ count: Int) -> Int32 {
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    try device.copy(to: DevicePointer(dst), from: DevicePointer(src), count: count)
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuMemcpyHtoDAsync_v2(..., CUstream hStream): done when it returns, or
/// captured (the host memory is read when the graph runs).
@_cdecl("vgpucore_cuMemcpyHtoDAsync_v2")
public func vgpucore_cuMemcpyHtoDAsync_v2(
  _ dst: UInt64, _ src: UnsafeRawPointer?, _ count: Int, _ stream: UnsafeMutableRawPointer?
) -> Int32 {
  guard count >= 0, count == 0 || src != nil else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured(
    "cuMemcpyHtoDAsync", stream, .copy(destination: dst, source: UInt64(UInt(bitPattern: src)), count: count))
  {
    return r
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return copyHtoD("cuMemcpyHtoDAsync", dst, src, count)
}

/// cuMemcpyDtoHAsync_v2(..., CUstream hStream): done when it returns, or
/// captured (the host memory is written when the graph runs).
@_cdecl("vgpucore_cuMemcpyDtoHAsync_v2")
public func vgpucore_cuMemcpyDtoHAsync_v2(
  _ dst: UnsafeMutableRawPointer?, _ src: UInt64, _ count: Int, _ stream: UnsafeMutableRawPointer?
) -> Int32 {
  guard count >= 0, count == 0 || dst != nil else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured(
    "cuMemcpyDtoHAsync", stream, .copy(destination: UInt64(UInt(bitPattern: dst)), source: src, count: count))
  {
    return r
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return copyDtoH("cuMemcpyDtoHAsync", dst, src, count)
}

/// cuMemcpyDtoDAsync_v2(..., CUstream hStream): done when it returns, or captured.
@_cdecl("vgpucore_cuMemcpyDtoDAsync_v2")
public func vgpucore_cuMemcpyDtoDAsync_v2(
  _ dst: UInt64, _ src: UInt64, _ count: Int, _ stream: UnsafeMutableRawPointer?
)
  -> Int32
{
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured("cuMemcpyDtoDAsync", stream, .copy(destination: dst, source: src, count: count)) { return r }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return copyDtoD("cuMemcpyDtoDAsync", dst, src, count)
}

// MARK: Memsets

func memset(_ call: StaticString, _ dst: UInt64, _ value: UInt32, _ elementSize: Int, _ count: Int) -> Int32 {
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    if count > 0 { try device.memset(DevicePointer(dst), value: value, elementSize: elementSize, count: count) }
    return CUDA_SUCCESS
  }
}

/// cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N)
@_cdecl("vgpucore_cuMemsetD8_v2")
public func vgpucore_cuMemsetD8_v2(_ dst: UInt64, _ value: UInt8, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemsetD8") { return refused }
  return memset("cuMemsetD8", dst, UInt32(value), 1, count)
}

/// cuMemsetD16_v2(CUdeviceptr dstDevice, unsigned short us, size_t N)
@_cdecl("vgpucore_cuMemsetD16_v2")
public func vgpucore_cuMemsetD16_v2(_ dst: UInt64, _ value: UInt16, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemsetD16") { return refused }
  return memset("cuMemsetD16", dst, UInt32(value), 2, count)
}

/// cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N)
@_cdecl("vgpucore_cuMemsetD32_v2")
public func vgpucore_cuMemsetD32_v2(_ dst: UInt64, _ value: UInt32, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemsetD32") { return refused }
  return memset("cuMemsetD32", dst, value, 4, count)
}

/// cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream)
@_cdecl("vgpucore_cuMemsetD8Async")
public func vgpucore_cuMemsetD8Async(_ dst: UInt64, _ value: UInt8, _ count: Int, _ stream: UnsafeMutableRawPointer?)
  -> Int32
{
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured(
    "cuMemsetD8Async", stream, .memset(destination: dst, value: UInt32(value), elementSize: 1, count: count))
  {
    return r
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return memset("cuMemsetD8Async", dst, UInt32(value), 1, count)
}

/// cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N, CUstream hStream)
@_cdecl("vgpucore_cuMemsetD16Async")
public func vgpucore_cuMemsetD16Async(_ dst: UInt64, _ value: UInt16, _ count: Int, _ stream: UnsafeMutableRawPointer?)
  -> Int32
{
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured(
    "cuMemsetD16Async", stream, .memset(destination: dst, value: UInt32(value), elementSize: 2, count: count))
  {
    return r
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return memset("cuMemsetD16Async", dst, UInt32(value), 2, count)
}

/// cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream)
@_cdecl("vgpucore_cuMemsetD32Async")
public func vgpucore_cuMemsetD32Async(_ dst: UInt64, _ value: UInt32, _ count: Int, _ stream: UnsafeMutableRawPointer?)
  -> Int32
{
  guard count >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured(
    "cuMemsetD32Async", stream, .memset(destination: dst, value: value, elementSize: 4, count: count))
  {
    return r
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return memset("cuMemsetD32Async", dst, value, 4, count)
}

// MARK: Page-locked host memory

/// cuMemHostAlloc flags (cuda.h): CU_MEMHOSTALLOC_PORTABLE 0x01,
/// CU_MEMHOSTALLOC_DEVICEMAP 0x02, CU_MEMHOSTALLOC_WRITECOMBINED 0x04.
let hostAllocFlagsMask: UInt32 = 0x07

/// Host memory for copies, page-aligned, remembered for cuMemFreeHost.
/// Where the device can (2.4: a host process's BAR from vgpu-mediator, or
/// `sim`), memory shared with it: copies from and to it are one copy, the
/// device's, as DMA from CUDA's page-locked memory is. In a VM whose BAR has
/// a page-locked window (`vgpu-mediator --vm --host-window`), a range of
/// it, as one copy. Elsewhere (no window, a full one, a device that
/// refused) ordinary memory, whose copies are staged.
func allocateHost(_ pp: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ bytes: Int) -> Int32 {
  guard let pp, bytes > 0 else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  var shared: UnsafeMutableRawBufferPointer?
  var inWindow = false
  let r = withDevice("cuMemAllocHost") { (device) throws(VGPUError) in
    shared = try device.allocateSharedHostMemory(bytes)
    inWindow = shared?.baseAddress.map { device.isWindowMemory($0) } ?? false
    return CUDA_SUCCESS
  }
  if r == CUDA_ERROR_OUT_OF_MEMORY { return r }
  if let shared, let base = shared.baseAddress {
    cudaObjects.withLock { o in
      o.hostRanges.insert(UInt64(UInt(bitPattern: base)), size: UInt64(bytes))
      // A window range is the BAR's: negative, so that it is never unmapped here.
      o.sharedHostStarts[UInt64(UInt(bitPattern: base))] = inWindow ? -shared.count : shared.count
    }
    pp.pointee = base
    return CUDA_SUCCESS
  }
  var p: UnsafeMutableRawPointer?
  guard posix_memalign(&p, Int(sysconf(Int32(_SC_PAGESIZE))), bytes) == 0, let p else {
    return CUDA_ERROR_OUT_OF_MEMORY
  }
  cudaObjects.withLock { $0.hostRanges.insert(UInt64(UInt(bitPattern: p)), size: UInt64(bytes)) }
  pp.pointee = p
  return CUDA_SUCCESS
}

/// cuMemAllocHost_v2(void **pp, size_t bytesize)
@_cdecl("vgpucore_cuMemAllocHost_v2")
public func vgpucore_cuMemAllocHost_v2(_ pp: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ bytes: Int) -> Int32 {
  allocateHost(pp, bytes)
}

/// cuMemAllocHost(void **pp, unsigned int bytesize): the CUDA 2.x entry point.
@_cdecl("vgpucore_cuMemAllocHost")
public func vgpucore_cuMemAllocHost(_ pp: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ bytes: UInt32) -> Int32 {
  allocateHost(pp, Int(bytes))
}

/// cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags): the flags
/// are accepted and change nothing; a DEVICEMAP allocation has no device
/// address (CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY is 0).
@_cdecl("vgpucore_cuMemHostAlloc")
public func vgpucore_cuMemHostAlloc(
  _ pp: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ bytes: Int, _ flags: UInt32
)
  -> Int32
{
  guard flags & ~hostAllocFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  return allocateHost(pp, bytes)
}

/// cuMemFreeHost(void *p): only what cuMemAllocHost / cuMemHostAlloc returned.
@_cdecl("vgpucore_cuMemFreeHost")
public func vgpucore_cuMemFreeHost(_ p: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let p else { return CUDA_ERROR_INVALID_VALUE }
  let start = UInt64(UInt(bitPattern: p))
  let (known, sharedLength) = cudaObjects.withLock { o in
    (o.hostRanges.remove(start: start), o.sharedHostStarts.removeValue(forKey: start))
  }
  guard known else { return CUDA_ERROR_INVALID_VALUE }
  guard let sharedLength else {
    Glibc.free(p)
    return CUDA_SUCCESS
  }
  // Shared with the device: it unmaps its side too (its copies finish
  // before they complete, so nothing in flight reads it). A forked child's
  // device never knew it: the mapping only goes. If the device failed to
  // take it back, the mapping stays: copies there still reach the file it holds.
  var unshared = false
  let r = withDevice("cuMemFreeHost", context: false) { (device) throws(VGPUError) in
    unshared = try device.freeSharedHostMemory(p)
    return CUDA_SUCCESS
  }
  if r != CUDA_SUCCESS && r != CUDA_ERROR_NO_DEVICE { return r }
  if !unshared && sharedLength > 0 { munmap(p, sharedLength) }
  return CUDA_SUCCESS
}

// MARK: Registered host memory

/// cuMemHostRegister flags (cuda.h): CU_MEMHOSTREGISTER_PORTABLE 0x01,
/// CU_MEMHOSTREGISTER_DEVICEMAP 0x02, CU_MEMHOSTREGISTER_IOMEMORY 0x04,
/// CU_MEMHOSTREGISTER_READ_ONLY 0x08.
let hostRegisterFlagsMask: UInt32 = 0x0f

/// CUresult (cuda.h, enum cudaError_enum).
let CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: Int32 = 712
let CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: Int32 = 713

/// cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags); also
/// CUDA 4.0's cuMemHostRegister. Page-locking buys nothing here (every copy
/// goes through the BAR's staging buffers, from any host memory), so the
/// range is only recorded: for overlap and unregister checks, and for
/// pointer attributes, which report it as host memory. The flags are
/// accepted and change nothing (a DEVICEMAP range has no device address:
/// CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY is 0). Memory from
/// cuMemAllocHost is page-locked already: registering it is
/// CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, as is any overlap.
@_cdecl("vgpucore_cuMemHostRegister_v2")
public func vgpucore_cuMemHostRegister_v2(_ p: UnsafeMutableRawPointer?, _ bytes: Int, _ flags: UInt32) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let p, bytes > 0, flags & ~hostRegisterFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  let start = UInt64(UInt(bitPattern: p))
  let size = UInt64(bytes)
  guard start <= UInt64.max - size else { return CUDA_ERROR_INVALID_VALUE }
  return cudaObjects.withLock { o in
    guard !o.registeredRanges.overlaps(start, size: size), !o.hostRanges.overlaps(start, size: size) else {
      return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
    }
    o.registeredRanges.insert(start, size: size)
    return CUDA_SUCCESS
  }
}

/// cuMemHostUnregister(void *p): `p` must be the start of a registered range.
@_cdecl("vgpucore_cuMemHostUnregister")
public func vgpucore_cuMemHostUnregister(_ p: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let p else { return CUDA_ERROR_INVALID_VALUE }
  let known = cudaObjects.withLock { $0.registeredRanges.remove(start: UInt64(UInt(bitPattern: p))) }
  return known ? CUDA_SUCCESS : CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED
}
