import ShimCore
import VGPU

// Contexts. A context here holds no device state of its own: device memory,
// modules, streams and events belong to the process's connection to the
// device. What CUDA programs rely on is kept: handles, the per-thread stack
// and the current context, the primary context's retain count, and the
// device a context is on.
//
// When the last context goes (cuCtxDestroy of the last one, the primary
// context released to zero or reset, with no other), the process lets go of
// the device, as CUDA frees a destroyed context's resources: its queue pairs
// go back to the device for other processes (discovery processes such as
// Ollama's create a context, read memory and destroy it), and its memory,
// modules, streams and events are freed. The next call opens it again.

/// CU_CTX_* flags cuda.h defines (CUctx_flags_enum): scheduling (0x07),
/// MAP_HOST 0x08, LMEM_RESIZE_TO_MAX 0x10, COREDUMP_ENABLE 0x20,
/// USER_COREDUMP_ENABLE 0x40, SYNC_MEMOPS 0x80.
let contextFlagsMask: UInt32 = 0xff

/// cuCtxGetApiVersion's answer for contexts made by cuCtxCreate_v2 and later.
let contextAPIVersion: UInt32 = 3020

/// A new context on `dev`, pushed on this thread's stack (cuCtxCreate).
func createContext(_ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32, _ dev: Int32) -> Int32 {
  guard let pctx else { return CUDA_ERROR_INVALID_VALUE }
  guard flags & ~contextFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuCtxCreate") { _ in
    let handle = cudaObjects.withLock { o in
      let h = o.newHandle(.context)
      o.contexts[h] = ContextRecord(device: dev, flags: flags, primary: false)
      return h
    }
    CUDAThread.current.contexts.append(handle)
    pctx.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev); also the legacy cuCtxCreate.
@_cdecl("vgpucore_cuCtxCreate_v2")
public func vgpucore_cuCtxCreate_v2(
  _ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32, _ dev: Int32
)
  -> Int32
{
  createContext(pctx, flags, dev)
}

/// cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int
/// numParams, unsigned int flags, CUdevice dev): execution affinity (an SM
/// count limit) cannot be honoured: asking for any is
/// CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY. Ollama passes (NULL, 0).
@_cdecl("vgpucore_cuCtxCreate_v3")
public func vgpucore_cuCtxCreate_v3(
  _ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ params: UnsafeMutableRawPointer?, _ count: Int32,
  _ flags: UInt32, _ dev: Int32
) -> Int32 {
  guard count >= 0, count == 0 || params != nil else { return CUDA_ERROR_INVALID_VALUE }
  guard count == 0 else { return CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY }
  return createContext(pctx, flags, dev)
}

/// CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY (cuda.h, enum cudaError_enum).
let CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY: Int32 = 224

/// cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams,
/// unsigned int flags, CUdevice dev). CUctxCreateParams (cuda.h):
/// { CUexecAffinityParam *execAffinityParams; int numExecAffinityParams;
///   CUctxCigParam *cigParams; } — offsets 0, 8, 16 on LP64. Affinity and
/// CUDA-in-graphics sharing are not available here.
@_cdecl("vgpucore_cuCtxCreate_v4")
public func vgpucore_cuCtxCreate_v4(
  _ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ params: UnsafeRawPointer?, _ flags: UInt32, _ dev: Int32
) -> Int32 {
  if let params {
    let affinity = params.load(fromByteOffset: 0, as: UnsafeRawPointer?.self)
    let count = params.load(fromByteOffset: 8, as: Int32.self)
    let cig = params.load(fromByteOffset: 16, as: UnsafeRawPointer?.self)
    guard count >= 0, count == 0 || affinity != nil else { return CUDA_ERROR_INVALID_VALUE }
    guard count == 0 else { return CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY }
    guard cig == nil else { return CUDA_ERROR_NOT_SUPPORTED }
  }
  return createContext(pctx, flags, dev)
}

/// cuCtxDestroy_v2(CUcontext ctx): a context from cuCtxCreate; it leaves this
/// thread's stack. (The primary context is released, not destroyed.)
@_cdecl("vgpucore_cuCtxDestroy_v2")
public func vgpucore_cuCtxDestroy_v2(_ ctx: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  let handle = handleKey(ctx)
  let removed = cudaObjects.withLock { o -> Bool in
    guard let record = o.contexts[handle], !record.primary else { return false }
    // Its sticky error goes with it; other contexts keep theirs.
    o.removeContext(handle)
    return true
  }
  guard removed else { return CUDA_ERROR_INVALID_CONTEXT }
  CUDAThread.current.contexts.removeAll { $0 == handle }
  closeDeviceIfNoContexts()
  return CUDA_SUCCESS
}

/// Lets go of the device when no context is left (see above).
func closeDeviceIfNoContexts() {
  let unused = cudaObjects.withLock { o -> Bool in
    guard o.primaryRetains == 0, o.contexts.values.allSatisfy(\.primary) else { return false }
    o.modules.removeAll()
    o.deviceRanges.removeAll()
    o.registeredRanges.removeAll()
    // The contexts the errors belonged to are gone (cuda.h: a sticky error
    // lasts for the context's life); only the primary context's handle stays.
    for handle in o.contexts.keys { o.clearStickyError(context: handle) }
    o.functions.removeAll()
    o.streams.removeAll()
    o.events.removeAll()
    o.links.removeAll()
    return true
  }
  if unused { processStickyError.store(0, ordering: .relaxed) }
  // device() first: in a forked child that has not opened a device of its
  // own, it lets go of the parent's without touching the parent's queue pairs.
  if unused, case .success = ShimRuntime.shared.device() { ShimRuntime.shared.close() }
}

/// The record of a live context, or nil.
func context(_ handle: UInt) -> ContextRecord? {
  cudaObjects.withLock { $0.contexts[handle] }
}

/// cuCtxGetCurrent(CUcontext *pctx): the top of this thread's stack, or NULL.
@_cdecl("vgpucore_cuCtxGetCurrent")
public func vgpucore_cuCtxGetCurrent(_ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
  guard let pctx else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  pctx.pointee = CUDAThread.current.currentContext.flatMap(handlePointer)
  return CUDA_SUCCESS
}

/// cuCtxSetCurrent(CUcontext ctx): replaces the top of this thread's stack
/// (pushes onto an empty one); NULL unbinds the current context.
@_cdecl("vgpucore_cuCtxSetCurrent")
public func vgpucore_cuCtxSetCurrent(_ ctx: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  let thread = CUDAThread.current
  guard let ctx else {
    if !thread.contexts.isEmpty { thread.contexts.removeLast() }
    return CUDA_SUCCESS
  }
  let handle = handleKey(ctx)
  guard context(handle) != nil else { return CUDA_ERROR_INVALID_CONTEXT }
  if thread.contexts.isEmpty {
    thread.contexts.append(handle)
  } else {
    thread.contexts[thread.contexts.count - 1] = handle
  }
  return CUDA_SUCCESS
}

/// cuCtxPushCurrent_v2(CUcontext ctx)
@_cdecl("vgpucore_cuCtxPushCurrent_v2")
public func vgpucore_cuCtxPushCurrent_v2(_ ctx: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  let handle = handleKey(ctx)
  guard ctx != nil, context(handle) != nil else { return CUDA_ERROR_INVALID_CONTEXT }
  CUDAThread.current.contexts.append(handle)
  return CUDA_SUCCESS
}

/// cuCtxPopCurrent_v2(CUcontext *pctx): `pctx` may be NULL.
@_cdecl("vgpucore_cuCtxPopCurrent_v2")
public func vgpucore_cuCtxPopCurrent_v2(_ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  let thread = CUDAThread.current
  guard let top = thread.contexts.popLast() else { return CUDA_ERROR_INVALID_CONTEXT }
  pctx?.pointee = handlePointer(top)
  return CUDA_SUCCESS
}

/// The current context's record, or the CUresult for having none.
func currentContext() -> Result<ContextRecord, CUDAError> {
  guard cuInitCalled.load(ordering: .acquiring) else { return .failure(CUDAError(CUDA_ERROR_NOT_INITIALIZED)) }
  guard let handle = CUDAThread.current.currentContext, let record = context(handle) else {
    return .failure(CUDAError(CUDA_ERROR_INVALID_CONTEXT))
  }
  return .success(record)
}

/// A CUresult as an Error, for Result.
struct CUDAError: Error {
  var result: Int32
  init(_ result: Int32) { self.result = result }
}

/// cuCtxGetDevice(CUdevice *device): the current context's device.
@_cdecl("vgpucore_cuCtxGetDevice")
public func vgpucore_cuCtxGetDevice(_ device: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let device else { return CUDA_ERROR_INVALID_VALUE }
  switch currentContext() {
  case .success(let c):
    device.pointee = c.device
    return CUDA_SUCCESS
  case .failure(let e): return e.result
  }
}

/// cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx): CUDA 13's form; NULL means the current context.
@_cdecl("vgpucore_cuCtxGetDevice_v2")
public func vgpucore_cuCtxGetDevice_v2(_ device: UnsafeMutablePointer<Int32>?, _ ctx: UnsafeMutableRawPointer?) -> Int32
{
  guard ctx != nil else { return vgpucore_cuCtxGetDevice(device) }
  guard let device else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let record = context(handleKey(ctx)) else { return CUDA_ERROR_INVALID_CONTEXT }
  device.pointee = record.device
  return CUDA_SUCCESS
}

/// cuCtxGetFlags(unsigned int *flags): the current context's flags.
@_cdecl("vgpucore_cuCtxGetFlags")
public func vgpucore_cuCtxGetFlags(_ flags: UnsafeMutablePointer<UInt32>?) -> Int32 {
  guard let flags else { return CUDA_ERROR_INVALID_VALUE }
  switch currentContext() {
  case .success(let c):
    flags.pointee = c.flags
    return CUDA_SUCCESS
  case .failure(let e): return e.result
  }
}

/// cuCtxGetApiVersion(CUcontext ctx, unsigned int *version): NULL means the current context.
@_cdecl("vgpucore_cuCtxGetApiVersion")
public func vgpucore_cuCtxGetApiVersion(_ ctx: UnsafeMutableRawPointer?, _ version: UnsafeMutablePointer<UInt32>?)
  -> Int32
{
  guard let version else { return CUDA_ERROR_INVALID_VALUE }
  if ctx == nil {
    if case .failure(let e) = currentContext() { return e.result }
  } else {
    guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
    guard context(handleKey(ctx)) != nil else { return CUDA_ERROR_INVALID_CONTEXT }
  }
  version.pointee = contextAPIVersion
  return CUDA_SUCCESS
}

/// cuCtxGetStreamPriorityRange(int *leastPriority, int *greatestPriority):
/// (0, 0), no priorities (CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED is 0).
@_cdecl("vgpucore_cuCtxGetStreamPriorityRange")
public func vgpucore_cuCtxGetStreamPriorityRange(
  _ least: UnsafeMutablePointer<Int32>?, _ greatest: UnsafeMutablePointer<Int32>?
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  least?.pointee = 0
  greatest?.pointee = 0
  return CUDA_SUCCESS
}

/// cuCtxSynchronize(void): waits for all of this process's work on the
/// device. Not while a stream captures (CUDA C++ Programming Guide,
/// "Prohibited and Unhandled Operations": a context that holds a capturing
/// stream cannot be synchronized): CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, and
/// every capture is invalidated.
@_cdecl("vgpucore_cuCtxSynchronize")
public func vgpucore_cuCtxSynchronize() -> Int32 {
  if capturesInProgress.load(ordering: .relaxed) != 0 {
    let keys = cudaObjects.withLock { o in
      for key in o.captures.keys { o.captures[key]!.invalidated = true }
      return Array(o.captures.keys)
    }
    if !keys.isEmpty {
      debugLine(
        "vgpu: cuCtxSynchronize: not permitted while stream(s) \(keys.map(hexHandle).joined(separator: ", ")) "
          + "capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the captures are invalidated: end them first")
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    }
  }
  return withDevice("cuCtxSynchronize") { (device) throws(VGPUError) in
    try device.synchronize()
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuCtxSynchronize_v2(CUcontext ctx): CUDA 13's form; NULL means the
/// current context. All contexts share the process's device work, so this
/// waits for all of it, as cuCtxSynchronize does.
@_cdecl("vgpucore_cuCtxSynchronize_v2")
public func vgpucore_cuCtxSynchronize_v2(_ ctx: UnsafeMutableRawPointer?) -> Int32 {
  if ctx == nil {
    if case .failure(let e) = currentContext() { return e.result }
  } else {
    guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
    guard context(handleKey(ctx)) != nil else { return CUDA_ERROR_INVALID_CONTEXT }
  }
  return vgpucore_cuCtxSynchronize()
}

// MARK: Primary context

/// cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev): the same handle
/// every time, counted; not made current (CUDA does not either).
@_cdecl("vgpucore_cuDevicePrimaryCtxRetain")
public func vgpucore_cuDevicePrimaryCtxRetain(_ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ dev: Int32)
  -> Int32
{
  guard let pctx else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDevicePrimaryCtxRetain") { _ in
    let handle = cudaObjects.withLock { o in
      o.primaryContext(dev)
      o.primaryRetains += 1
      return o.primary
    }
    pctx.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

extension CUDAObjects {
  /// Makes the primary context's handle on first use.
  mutating func primaryContext(_ dev: Int32) {
    if primary == 0 {
      primary = newHandle(.context)
      contexts[primary] = ContextRecord(device: dev, flags: primaryFlags, primary: true)
    }
  }
}

/// The primary context's handle, made if need be but not retained: slot 2 of
/// the driver's private table 6bd5fb6c… that NVIDIA's CUDA runtime calls with
/// (CUcontext *, CUdevice) (shims/cuda_export_tables.def).
@_cdecl("vgpucore_cudartPrimaryContext")
public func vgpucore_cudartPrimaryContext(_ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ dev: Int32)
  -> Int32
{
  guard let pctx else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cudart primary context") { _ in
    let handle = cudaObjects.withLock { o in
      o.primaryContext(dev)
      return o.primary
    }
    pctx.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuDevicePrimaryCtxRelease_v2(CUdevice dev): one release; the handle stays
/// valid (CUDA keeps it for the process's life), inactive at zero.
@_cdecl("vgpucore_cuDevicePrimaryCtxRelease_v2")
public func vgpucore_cuDevicePrimaryCtxRelease_v2(_ dev: Int32) -> Int32 {
  let result = withDevice(dev, "cuDevicePrimaryCtxRelease") { _ in
    cudaObjects.withLock { o in
      guard o.primaryRetains > 0 else { return CUDA_ERROR_INVALID_CONTEXT }
      o.primaryRetains -= 1
      return CUDA_SUCCESS
    }
  }
  if result == CUDA_SUCCESS { closeDeviceIfNoContexts() }
  return result
}

/// cuDevicePrimaryCtxReset_v2(CUdevice dev): makes the primary context
/// inactive (retain count 0) after waiting for the device; with no other
/// context, the device's resources go too.
@_cdecl("vgpucore_cuDevicePrimaryCtxReset_v2")
public func vgpucore_cuDevicePrimaryCtxReset_v2(_ dev: Int32) -> Int32 {
  let result = withDevice(dev, "cuDevicePrimaryCtxReset") { (device) throws(VGPUError) in
    // A sticky error is the context's: the reset that destroys the primary
    // context's state clears it (cuDevicePrimaryCtxReset, CUDA Runtime API
    // "Error Handling": only a reset recovers). The device's work is waited
    // for first; its own failure is the error already reported.
    let sticky = cudaObjects.withLock { o in o.contexts[o.primary]?.stickyError ?? 0 }
    if sticky == 0 && processStickyError.load(ordering: .relaxed) == 0 {
      try device.synchronize()
    } else {
      _ = try? device.synchronize()
    }
    cudaObjects.withLock { o in
      o.primaryRetains = 0
      o.clearStickyError(context: o.primary)
    }
    processStickyError.store(0, ordering: .relaxed)
    return CUDA_SUCCESS
  }
  if result == CUDA_SUCCESS { closeDeviceIfNoContexts() }
  return result
}

/// cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
@_cdecl("vgpucore_cuDevicePrimaryCtxGetState")
public func vgpucore_cuDevicePrimaryCtxGetState(
  _ dev: Int32, _ flags: UnsafeMutablePointer<UInt32>?, _ active: UnsafeMutablePointer<Int32>?
) -> Int32 {
  guard let flags, let active else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDevicePrimaryCtxGetState") { _ in
    let (f, retains) = cudaObjects.withLock { ($0.primaryFlags, $0.primaryRetains) }
    flags.pointee = f
    active.pointee = retains > 0 ? 1 : 0
    return CUDA_SUCCESS
  }
}

/// cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
@_cdecl("vgpucore_cuDevicePrimaryCtxSetFlags_v2")
public func vgpucore_cuDevicePrimaryCtxSetFlags_v2(_ dev: Int32, _ flags: UInt32) -> Int32 {
  guard flags & ~contextFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDevicePrimaryCtxSetFlags") { _ in
    cudaObjects.withLock { o in
      o.primaryFlags = flags
      if o.primary != 0 { o.contexts[o.primary]?.flags = flags }
    }
    return CUDA_SUCCESS
  }
}
