import ShimCore
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// Unified addressing (CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING is 1): calls
// that take an address without saying whether it is the host's or the
// device's — cuMemcpy, CU_MEMORYTYPE_UNIFIED in 2D copies, pointer
// attributes, address ranges. NVIDIA's CUDA runtime uses them for
// cudaMemcpy(…, cudaMemcpyDefault), cudaMemcpy2D, cudaPointerGetAttributes.
//
// An address is the device's when it lies in the device's address window
// (deviceAddressBase and the device's memory size after it), where the
// device validates it; every other address is the host's. The allocations
// this process made are remembered (AddressRanges) for the calls that report
// an allocation's start and size.

/// Sorted, non-overlapping [start, start + size) ranges: cuMemAlloc's and
/// cuMemAllocHost's allocations. Lookups allocate nothing.
struct AddressRanges {
  private var starts: [UInt64] = []
  private var sizes: [UInt64] = []

  /// The index of the first start above `address`.
  private func upperBound(_ address: UInt64) -> Int {
    var low = 0
    var high = starts.count
    while low < high {
      let mid = (low + high) / 2
      if starts[mid] <= address { low = mid + 1 } else { high = mid }
    }
    return low
  }

  mutating func insert(_ start: UInt64, size: UInt64) {
    let i = upperBound(start)
    starts.insert(start, at: i)
    sizes.insert(size, at: i)
  }

  /// Forgets the range starting exactly at `start`; false if there is none.
  @discardableResult
  mutating func remove(start: UInt64) -> Bool {
    let i = upperBound(start) - 1
    guard i >= 0, starts[i] == start else { return false }
    starts.remove(at: i)
    sizes.remove(at: i)
    return true
  }

  mutating func removeAll() {
    starts.removeAll()
    sizes.removeAll()
  }

  /// Whether any range shares a byte with [start, start + size).
  func overlaps(_ start: UInt64, size: UInt64) -> Bool {
    if range(containing: start) != nil { return true }
    let next = upperBound(start)
    return next < starts.count && starts[next] - start < size
  }

  /// The range `address` lies in.
  func range(containing address: UInt64) -> (start: UInt64, size: UInt64)? {
    let i = upperBound(address) - 1
    guard i >= 0, address - starts[i] < sizes[i] else { return nil }
    return (starts[i], sizes[i])
  }
}

/// Whether `address` is the device's (see above).
@inline(__always)
func isDeviceAddress(_ address: UInt64, _ device: Device) -> Bool {
  address >= deviceAddressBase && address - deviceAddressBase < device.info.identity.memorySize
}

/// One copy between any two addresses.
func copyUnified(_ dst: UInt64, _ src: UInt64, _ count: Int, _ device: Device) throws(VGPUError) {
  guard count > 0 else { return }
  switch (isDeviceAddress(dst, device), isDeviceAddress(src, device)) {
  case (true, true):
    try device.copy(to: DevicePointer(dst), from: DevicePointer(src), count: count)
  case (true, false):
    try device.copy(
      to: DevicePointer(dst), from: UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(src)), count: count)
    )
  case (false, true):
    try device.copy(
      from: DevicePointer(src),
      into: UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: UInt(dst)), count: count))
  case (false, false):
    // Host to host: CUDA copies it too.
    if let d = UnsafeMutableRawPointer(bitPattern: UInt(dst)), let s = UnsafeRawPointer(bitPattern: UInt(src)) {
      memmove(d, s, count)
    }
  }
}

/// cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount): either side host or device.
@_cdecl("vgpucore_cuMemcpy")
public func vgpucore_cuMemcpy(_ dst: UInt64, _ src: UInt64, _ count: Int) -> Int32 {
  if let refused = refusedWhileCapturing("cuMemcpy") { return refused }
  return memcpyUnified("cuMemcpy", dst, src, count)
}

func memcpyUnified(_ call: StaticString, _ dst: UInt64, _ src: UInt64, _ count: Int) -> Int32 {
  guard count >= 0, count == 0 || (dst != 0 && src != 0) else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(call) { (device) throws(VGPUError) in
    try copyUnified(dst, src, count, device)
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream): done when it returns,
/// or captured.
@_cdecl("vgpucore_cuMemcpyAsync")
public func vgpucore_cuMemcpyAsync(_ dst: UInt64, _ src: UInt64, _ count: Int, _ stream: UnsafeMutableRawPointer?)
  -> Int32
{
  guard count >= 0, count == 0 || (dst != 0 && src != 0) else { return CUDA_ERROR_INVALID_VALUE }
  if let r = captured("cuMemcpyAsync", stream, .copy(destination: dst, source: src, count: count)) { return r }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return memcpyUnified("cuMemcpyAsync", dst, src, count)
}

/// cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr
/// srcDevice, CUcontext srcContext, size_t ByteCount): one device, so
/// between two of its contexts; both must be live.
@_cdecl("vgpucore_cuMemcpyPeer")
public func vgpucore_cuMemcpyPeer(
  _ dst: UInt64, _ dstContext: UnsafeMutableRawPointer?, _ src: UInt64, _ srcContext: UnsafeMutableRawPointer?,
  _ count: Int
) -> Int32 {
  if let refused = peerContexts(dstContext, srcContext) { return refused }
  return vgpucore_cuMemcpyDtoD_v2(dst, src, count)
}

/// Nil when both contexts of a peer copy are live, else the CUresult.
func peerContexts(_ dstContext: UnsafeMutableRawPointer?, _ srcContext: UnsafeMutableRawPointer?) -> Int32? {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard context(handleKey(dstContext)) != nil, context(handleKey(srcContext)) != nil else {
    return CUDA_ERROR_INVALID_CONTEXT
  }
  return nil
}

/// cuMemcpyPeerAsync(…, size_t ByteCount, CUstream hStream): done when it returns.
@_cdecl("vgpucore_cuMemcpyPeerAsync")
public func vgpucore_cuMemcpyPeerAsync(
  _ dst: UInt64, _ dstContext: UnsafeMutableRawPointer?, _ src: UInt64, _ srcContext: UnsafeMutableRawPointer?,
  _ count: Int, _ stream: UnsafeMutableRawPointer?
) -> Int32 {
  if let refused = peerContexts(dstContext, srcContext) { return refused }
  return vgpucore_cuMemcpyDtoDAsync_v2(dst, src, count, stream)
}

// MARK: 2D copies

/// CUDA_MEMCPY2D (cuda.h), LP64 offsets: srcXInBytes 0, srcY 8,
/// srcMemoryType 16, srcHost 24, srcDevice 32, srcArray 40, srcPitch 48,
/// dstXInBytes 56, dstY 64, dstMemoryType 72, dstHost 80, dstDevice 88,
/// dstArray 96, dstPitch 104, WidthInBytes 112, Height 120.
enum Memcpy2D {
  static let src = 0, dst = 56, width = 112, height = 120
  // Within one side's half: X 0, Y 8, memory type 16, host 24, device 32, array 40, pitch 48.
  static let x = 0, y = 8, memoryType = 16, host = 24, device = 32, array = 40, pitch = 48
}

/// CUmemorytype (cuda.h).
let CU_MEMORYTYPE_HOST: UInt32 = 1
let CU_MEMORYTYPE_DEVICE: UInt32 = 2
let CU_MEMORYTYPE_ARRAY: UInt32 = 3
let CU_MEMORYTYPE_UNIFIED: UInt32 = 4

/// One side of a 2D copy: its first byte's address and its pitch, or the CUresult refusing it.
func memcpy2DSide(_ p: UnsafeRawPointer, _ side: Int) -> Result<(address: UInt64, pitch: Int), CUDAError> {
  let x = p.load(fromByteOffset: side + Memcpy2D.x, as: Int.self)
  let y = p.load(fromByteOffset: side + Memcpy2D.y, as: Int.self)
  let pitch = p.load(fromByteOffset: side + Memcpy2D.pitch, as: Int.self)
  let base: UInt64
  switch p.load(fromByteOffset: side + Memcpy2D.memoryType, as: UInt32.self) {
  case CU_MEMORYTYPE_HOST: base = p.load(fromByteOffset: side + Memcpy2D.host, as: UInt64.self)
  case CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_UNIFIED:
    base = p.load(fromByteOffset: side + Memcpy2D.device, as: UInt64.self)
  case CU_MEMORYTYPE_ARRAY: return .failure(CUDAError(CUDA_ERROR_NOT_SUPPORTED))  // no CUDA arrays here
  default: return .failure(CUDAError(CUDA_ERROR_INVALID_VALUE))
  }
  let (offset, overflow) = y.multipliedReportingOverflow(by: pitch)
  guard x >= 0, y >= 0, pitch >= 0, base != 0, !overflow else { return .failure(CUDAError(CUDA_ERROR_INVALID_VALUE)) }
  return .success((base &+ UInt64(offset) &+ UInt64(x), pitch))
}

/// A 2D copy: Height rows of WidthInBytes, each side at its own pitch; one
/// copy when both sides are contiguous.
func memcpy2D(_ call: StaticString, _ p: UnsafeRawPointer?, async stream: UnsafeMutableRawPointer?? = nil) -> Int32 {
  guard let p else { return CUDA_ERROR_INVALID_VALUE }
  let width = p.load(fromByteOffset: Memcpy2D.width, as: Int.self)
  let height = p.load(fromByteOffset: Memcpy2D.height, as: Int.self)
  guard width >= 0, height >= 0 else { return CUDA_ERROR_INVALID_VALUE }
  let src: (address: UInt64, pitch: Int)
  let dst: (address: UInt64, pitch: Int)
  switch (memcpy2DSide(p, Memcpy2D.src), memcpy2DSide(p, Memcpy2D.dst)) {
  case (.success(let s), .success(let d)): (src, dst) = (s, d)
  case (.failure(let e), _), (_, .failure(let e)): return e.result
  }
  guard height <= 1 || (src.pitch >= width && dst.pitch >= width) else { return CUDA_ERROR_INVALID_VALUE }
  if let stream {
    // Captured as one copy per row (a capture here records copies, not 2D copies).
    if let r = captured(
      call, stream, .copy(destination: dst.address, source: src.address, count: height > 0 ? width : 0))
    {
      if r != CUDA_SUCCESS { return r }
      for row in 1..<max(height, 1) {
        let node = GraphNode.copy(
          destination: dst.address &+ UInt64(row * dst.pitch), source: src.address &+ UInt64(row * src.pitch),
          count: width)
        if let r = recordCaptured(call, stream, node), r != CUDA_SUCCESS { return r }
      }
      return CUDA_SUCCESS
    }
    if case .failure(let e) = lookUpStream(stream) { return e.result }
  } else if let refused = refusedWhileCapturing(call) {
    return refused
  }
  return withDevice(call) { (device) throws(VGPUError) in
    if src.pitch == width && dst.pitch == width {
      try copyUnified(dst.address, src.address, width * height, device)
    } else {
      for row in 0..<height {
        try copyUnified(
          dst.address &+ UInt64(row * dst.pitch), src.address &+ UInt64(row * src.pitch), width, device)
      }
    }
    return CUDA_SUCCESS
  }
}

/// cuMemcpy2D_v2(const CUDA_MEMCPY2D *pCopy)
@_cdecl("vgpucore_cuMemcpy2D_v2")
public func vgpucore_cuMemcpy2D_v2(_ p: UnsafeRawPointer?) -> Int32 { memcpy2D("cuMemcpy2D", p) }

/// cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D *pCopy): alignment does not matter here.
@_cdecl("vgpucore_cuMemcpy2DUnaligned_v2")
public func vgpucore_cuMemcpy2DUnaligned_v2(_ p: UnsafeRawPointer?) -> Int32 { memcpy2D("cuMemcpy2DUnaligned", p) }

/// cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *pCopy, CUstream hStream): done when it returns, or captured.
@_cdecl("vgpucore_cuMemcpy2DAsync_v2")
public func vgpucore_cuMemcpy2DAsync_v2(_ p: UnsafeRawPointer?, _ stream: UnsafeMutableRawPointer?) -> Int32 {
  memcpy2D("cuMemcpy2DAsync", p, async: stream)
}

// MARK: Pitched allocations and address ranges

/// The pitch cuMemAllocPitch rounds rows up to: CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT.
let pitchAlignment = 512

/// cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
/// size_t Height, unsigned int ElementSizeBytes): element size 4, 8 or 16 (cuda.h).
@_cdecl("vgpucore_cuMemAllocPitch_v2")
public func vgpucore_cuMemAllocPitch_v2(
  _ dptr: UnsafeMutablePointer<UInt64>?, _ pitch: UnsafeMutablePointer<Int>?, _ width: Int, _ height: Int,
  _ elementSize: UInt32
) -> Int32 {
  guard let dptr, let pitch, width > 0, height > 0, [4, 8, 16].contains(elementSize),
    width <= Int.max - pitchAlignment
  else { return CUDA_ERROR_INVALID_VALUE }
  let rowPitch = (width + pitchAlignment - 1) / pitchAlignment * pitchAlignment
  let (bytes, overflow) = rowPitch.multipliedReportingOverflow(by: height)
  guard !overflow else { return CUDA_ERROR_OUT_OF_MEMORY }
  let result = vgpucore_cuMemAlloc_v2(dptr, bytes)
  if result == CUDA_SUCCESS { pitch.pointee = rowPitch }
  return result
}

/// cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr):
/// the allocation `dptr` lies in; either output may be NULL.
@_cdecl("vgpucore_cuMemGetAddressRange_v2")
public func vgpucore_cuMemGetAddressRange_v2(
  _ base: UnsafeMutablePointer<UInt64>?, _ size: UnsafeMutablePointer<Int>?, _ dptr: UInt64
) -> Int32 {
  withDevice("cuMemGetAddressRange") { _ in
    guard let range = cudaObjects.withLock({ $0.deviceRanges.range(containing: dptr) }) else {
      return CUDA_ERROR_NOT_FOUND
    }
    base?.pointee = range.start
    size?.pointee = Int(range.size)
    return CUDA_SUCCESS
  }
}

// MARK: Pointer attributes

/// What an address is: device memory of this process, page-locked host
/// memory from cuMemAllocHost or cuMemHostRegister, or neither (ordinary host memory).
enum PointerKind {
  case device(start: UInt64, size: UInt64)
  case host(start: UInt64, size: UInt64)
  case unregistered
}

func pointerKind(_ ptr: UInt64) -> PointerKind {
  cudaObjects.withLock { o in
    if let r = o.deviceRanges.range(containing: ptr) { return .device(start: r.start, size: r.size) }
    if let r = o.hostRanges.range(containing: ptr) { return .host(start: r.start, size: r.size) }
    if let r = o.registeredRanges.range(containing: ptr) { return .host(start: r.start, size: r.size) }
    return .unregistered
  }
}

/// Writes attribute `attribute` of `ptr` (of kind `kind`) to `data`, with
/// the C type cuda.h documents for it (CUpointer_attribute); false for an
/// attribute that does not apply (HOST_POINTER of device memory, …) or is unknown.
func writePointerAttribute(_ attribute: Int32, _ kind: PointerKind, _ ptr: UInt64, _ data: UnsafeMutableRawPointer)
  -> Bool
{
  // The boolean attributes are C ints: cudart's cudaPointerGetAttributes
  // reads IS_MANAGED as 4 bytes without clearing them first, and every
  // caller we know passes an int (cuda-python's Cython `bint`, CCCL, CUDA.jl's
  // Cuint); cuPointerSetAttribute documents SYNC_MEMOPS as an unsigned int.
  func bool(_ v: Bool) { data.storeBytes(of: v ? 1 : 0, as: UInt32.self) }
  // Memory of the process's device belongs to its primary context if there is one, else the current one.
  let owner = cudaObjects.withLock { $0.primary }
  let context = owner != 0 ? owner : (CUDAThread.current.currentContext ?? 0)
  switch (attribute, kind) {
  case (1, .unregistered): return false  // CONTEXT
  case (1, _): data.storeBytes(of: handlePointer(context), as: UnsafeMutableRawPointer?.self)
  case (2, .device): data.storeBytes(of: CU_MEMORYTYPE_DEVICE, as: UInt32.self)  // MEMORY_TYPE
  case (2, .host): data.storeBytes(of: CU_MEMORYTYPE_HOST, as: UInt32.self)
  case (2, .unregistered): return false
  case (3, .device): data.storeBytes(of: ptr, as: UInt64.self)  // DEVICE_POINTER
  case (3, _): return false  // host memory has no device address (CAN_MAP_HOST_MEMORY 0)
  case (4, .host): data.storeBytes(of: ptr, as: UInt64.self)  // HOST_POINTER
  case (4, _): return false
  case (6, .unregistered): return false  // SYNC_MEMOPS: every copy here is synchronous
  case (6, _): bool(true)
  case (7, .device(let start, _)), (7, .host(let start, _)): data.storeBytes(of: start, as: UInt64.self)  // BUFFER_ID
  case (8, .unregistered): return false  // IS_MANAGED
  case (8, _): bool(false)
  case (9, .unregistered): return false  // DEVICE_ORDINAL
  case (9, _): data.storeBytes(of: 0, as: Int32.self)
  case (11, .device(let start, _)), (11, .host(let start, _)): data.storeBytes(of: start, as: UInt64.self)  // RANGE_START_ADDR
  case (12, .device(_, let size)), (12, .host(_, let size)): data.storeBytes(of: Int(size), as: Int.self)  // RANGE_SIZE
  case (13, .unregistered): return false  // MAPPED
  case (13, _): bool(true)
  case (15, .unregistered): return false  // IS_GPU_DIRECT_RDMA_CAPABLE
  case (15, _): bool(false)
  default: return false
  }
  return true
}

/// The attributes answered here: CONTEXT 1, MEMORY_TYPE 2, DEVICE_POINTER 3,
/// HOST_POINTER 4, SYNC_MEMOPS 6, BUFFER_ID 7, IS_MANAGED 8, DEVICE_ORDINAL 9,
/// RANGE_START_ADDR 11, RANGE_SIZE 12, MAPPED 13, IS_GPU_DIRECT_RDMA_CAPABLE 15.
let answeredPointerAttributes: Set<Int32> = [1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 15]

/// cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr):
/// CUDA_ERROR_INVALID_VALUE for an address CUDA does not know, or an attribute that does not apply.
@_cdecl("vgpucore_cuPointerGetAttribute")
public func vgpucore_cuPointerGetAttribute(_ data: UnsafeMutableRawPointer?, _ attribute: Int32, _ ptr: UInt64) -> Int32
{
  guard let data else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard answeredPointerAttributes.contains(attribute) else { return CUDA_ERROR_INVALID_VALUE }
  return writePointerAttribute(attribute, pointerKind(ptr), ptr, data) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE
}

/// cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute
/// *attributes, void **data, CUdeviceptr ptr): unlike cuPointerGetAttribute,
/// an unknown address is no error: what does not apply is zero (cuda.h), and
/// MEMORY_TYPE 0 says "not CUDA's memory".
@_cdecl("vgpucore_cuPointerGetAttributes")
public func vgpucore_cuPointerGetAttributes(
  _ count: UInt32, _ attributes: UnsafePointer<Int32>?, _ data: UnsafePointer<UnsafeMutableRawPointer?>?, _ ptr: UInt64
) -> Int32 {
  guard let attributes, let data, count > 0 else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  for i in 0..<Int(count) where !answeredPointerAttributes.contains(attributes[i]) || data[i] == nil {
    return CUDA_ERROR_INVALID_VALUE
  }
  let kind = pointerKind(ptr)
  for i in 0..<Int(count) {
    guard let out = data[i] else { continue }
    if !writePointerAttribute(attributes[i], kind, ptr, out) { zeroPointerAttribute(attributes[i], out) }
  }
  return CUDA_SUCCESS
}

/// The zero of an attribute's C type.
func zeroPointerAttribute(_ attribute: Int32, _ data: UnsafeMutableRawPointer) {
  switch attribute {
  case 2: data.storeBytes(of: 0, as: UInt32.self)
  case 9: data.storeBytes(of: -2, as: Int32.self)  // DEVICE_ORDINAL: cudaInvalidDeviceId (driver_types.h)
  case 6, 8, 13, 15: data.storeBytes(of: 0, as: UInt32.self)  // booleans: C ints (writePointerAttribute)
  default: data.storeBytes(of: 0, as: UInt64.self)  // pointers, addresses, sizes, ids
  }
}
