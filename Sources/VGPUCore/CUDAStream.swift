import ShimCore
import VGPU
import VGPUProtocol

// Streams and events. Work completes before the call that submits it
// returns, so a stream is always idle and a recorded event always complete;
// the device still tracks them (handles, ownership, timestamps). Stream
// capture is in CUDAGraph.swift.

/// CU_STREAM_LEGACY and CU_STREAM_PER_THREAD (cuda.h): the two default streams.
let CU_STREAM_LEGACY: UInt = 0x1
let CU_STREAM_PER_THREAD: UInt = 0x2
/// cuStreamCreate flags (CUstream_flags_enum): CU_STREAM_DEFAULT 0, CU_STREAM_NON_BLOCKING 1.
let streamFlagsMask: UInt32 = 0x1
/// cuEventCreate flags (CUevent_flags_enum): CU_EVENT_DEFAULT 0, CU_EVENT_BLOCKING_SYNC 1,
/// CU_EVENT_DISABLE_TIMING 2, CU_EVENT_INTERPROCESS 4.
let eventFlagsMask: UInt32 = 0x7
let CU_EVENT_DISABLE_TIMING: UInt32 = 0x2

/// The device stream a CUstream names: nil for a default stream (NULL,
/// CU_STREAM_LEGACY, CU_STREAM_PER_THREAD), CUDA_ERROR_INVALID_HANDLE for an
/// unknown one. Allocates nothing.
@inline(__always)
func lookUpStream(_ stream: UnsafeMutableRawPointer?) -> Result<StreamHandle?, CUDAError> {
  let key = handleKey(stream)
  if key == 0 || key == CU_STREAM_LEGACY || key == CU_STREAM_PER_THREAD { return .success(nil) }
  guard let handle = cudaObjects.withLock({ $0.streams[key] }) else {
    return .failure(CUDAError(CUDA_ERROR_INVALID_HANDLE))
  }
  return .success(handle)
}

func lookUpEvent(_ event: UnsafeMutableRawPointer?) -> EventRecord? {
  let key = handleKey(event)
  return key == 0 ? nil : cudaObjects.withLock { $0.events[key] }
}

// MARK: Streams

func createStream(_ phStream: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32) -> Int32 {
  guard let phStream, flags & ~streamFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuStreamCreate") { (device) throws(VGPUError) in
    let stream = try device.createStream()
    let handle = cudaObjects.withLock { o in
      let h = o.newHandle(.stream)
      o.streams[h] = stream
      return h
    }
    phStream.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuStreamCreate(CUstream *phStream, unsigned int Flags)
@_cdecl("vgpucore_cuStreamCreate")
public func vgpucore_cuStreamCreate(_ phStream: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32)
  -> Int32
{
  createStream(phStream, flags)
}

/// cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int
/// priority): priorities are not supported; every stream has priority 0.
@_cdecl("vgpucore_cuStreamCreateWithPriority")
public func vgpucore_cuStreamCreateWithPriority(
  _ phStream: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32, _ priority: Int32
) -> Int32 {
  createStream(phStream, flags)
}

/// cuStreamSynchronize(CUstream hStream): a default stream waits for all of
/// this process's work (the legacy default stream synchronizes with every stream).
@_cdecl("vgpucore_cuStreamSynchronize")
public func vgpucore_cuStreamSynchronize(_ stream: UnsafeMutableRawPointer?) -> Int32 {
  if let refused = refusedOnCapturingStream("cuStreamSynchronize", stream) { return refused }
  return withDevice("cuStreamSynchronize") { (device) throws(VGPUError) in
    switch lookUpStream(stream) {
    case .failure(let e): return e.result
    case .success(let s?): try device.synchronize(s)
    case .success(nil): try device.synchronize()
    }
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuStreamQuery(CUstream hStream): always complete.
@_cdecl("vgpucore_cuStreamQuery")
public func vgpucore_cuStreamQuery(_ stream: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  if let refused = refusedOnCapturingStream("cuStreamQuery", stream) { return refused }
  return CUDA_SUCCESS
}

/// For a synchronization or query of `stream`: nil when it may go on. A
/// capturing stream cannot be synchronized or queried (CUDA C++ Programming
/// Guide, "Prohibited and Unhandled Operations"): CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
/// and its capture is invalidated. The legacy default stream would
/// synchronize with capturing streams: refused as a potentially unsafe call.
@inline(__always)
func refusedOnCapturingStream(_ call: StaticString, _ stream: UnsafeMutableRawPointer?) -> Int32? {
  guard capturesInProgress.load(ordering: .relaxed) != 0 else { return nil }
  let key = handleKey(stream)
  if key == 0 || key == CU_STREAM_LEGACY { return refuseUnsafeCall(call) }
  guard isCapturing(key) else { return nil }
  return invalidateCapture(
    key, call, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "a capturing stream cannot be synchronized or queried")
}

/// cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags):
/// the event's work is already done, so there is nothing to wait for.
@_cdecl("vgpucore_cuStreamWaitEvent")
public func vgpucore_cuStreamWaitEvent(
  _ stream: UnsafeMutableRawPointer?, _ event: UnsafeMutableRawPointer?, _ flags: UInt32
)
  -> Int32
{
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  // CU_EVENT_WAIT_DEFAULT 0, CU_EVENT_WAIT_EXTERNAL 1 (CUevent_wait_flags_enum).
  guard flags & ~1 == 0 else { return CUDA_ERROR_INVALID_VALUE }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  guard let record = lookUpEvent(event) else { return CUDA_ERROR_INVALID_HANDLE }
  // An event recorded in a capture joins the waiting stream into that
  // capture (cuda.h, cuStreamWaitEvent): a fork across streams, which a
  // capture here, one stream's sequence, cannot hold. One recorded in a
  // capture that has ended has no work until a graph records it.
  guard record.capture != 0 else { return CUDA_SUCCESS }
  let key = handleKey(stream)
  let (same, owner) = cudaObjects.withLock { o in
    (o.captures[key]?.id == record.capture, o.captures.first { $0.value.id == record.capture }?.key)
  }
  if same { return CUDA_SUCCESS }
  guard let owner else { return capturedEvent("cuStreamWaitEvent") }
  sayCaptureRefusal(
    1 << 2,
    "vgpu: cuStreamWaitEvent: joining another stream into a stream capture (waiting on an event recorded "
      + "during the capture) is not supported by this virtual GPU (CUDA_ERROR_NOT_SUPPORTED); capture on one stream")
  return invalidateCapture(owner, "cuStreamWaitEvent", CUDA_ERROR_NOT_SUPPORTED, "a fork")
}

/// cuStreamDestroy_v2(CUstream hStream); also the legacy cuStreamDestroy.
@_cdecl("vgpucore_cuStreamDestroy_v2")
public func vgpucore_cuStreamDestroy_v2(_ stream: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuStreamDestroy") { (device) throws(VGPUError) in
    let key = handleKey(stream)
    // A capture in progress ends with its stream, without a graph.
    var due: [DueDestructor] = []
    guard
      let handle = cudaObjects.withLock({ o in
        due = o.abandonCapture(key)
        return o.streams.removeValue(forKey: key)
      })
    else {
      return CUDA_ERROR_INVALID_HANDLE
    }
    runDestructors(due)
    try device.destroyStream(handle)
    return CUDA_SUCCESS
  }
}

// MARK: Events

/// cuEventCreate(CUevent *phEvent, unsigned int Flags)
@_cdecl("vgpucore_cuEventCreate")
public func vgpucore_cuEventCreate(_ phEvent: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ flags: UInt32)
  -> Int32
{
  guard let phEvent, flags & ~eventFlagsMask == 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuEventCreate") { (device) throws(VGPUError) in
    let event = try device.createEvent()
    let handle = cudaObjects.withLock { o in
      let h = o.newHandle(.event)
      o.events[h] = EventRecord(handle: event, timing: flags & CU_EVENT_DISABLE_TIMING == 0)
      return h
    }
    phEvent.pointee = handlePointer(handle)
    return CUDA_SUCCESS
  }
}

/// cuEventRecord(CUevent hEvent, CUstream hStream)
@_cdecl("vgpucore_cuEventRecord")
public func vgpucore_cuEventRecord(_ event: UnsafeMutableRawPointer?, _ stream: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuEventRecord") { (device) throws(VGPUError) in
    guard let record = lookUpEvent(event) else { return CUDA_ERROR_INVALID_HANDLE }
    if let result = captured("cuEventRecord", stream, .eventRecord(event: handleKey(event))) {
      if result == CUDA_SUCCESS {
        cudaObjects.withLock { o in o.events[handleKey(event)]?.capture = o.captures[handleKey(stream)]?.id ?? 0 }
      }
      return result
    }
    switch lookUpStream(stream) {
    case .failure(let e): return e.result
    case .success(let s): try device.record(record.handle, on: s)
    }
    if record.capture != 0 { cudaObjects.withLock { $0.events[handleKey(event)]?.capture = 0 } }
    return CUDA_SUCCESS
  }
}

/// cuEventQuery(CUevent hEvent): CUDA_SUCCESS once its work is done (at once,
/// here), CUDA_ERROR_NOT_READY before.
@_cdecl("vgpucore_cuEventQuery")
public func vgpucore_cuEventQuery(_ event: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuEventQuery") { (device) throws(VGPUError) in
    guard let record = lookUpEvent(event) else { return CUDA_ERROR_INVALID_HANDLE }
    if record.capture != 0 { return capturedEvent("cuEventQuery") }
    return try device.query(record.handle) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY
  }
}

/// cuEventSynchronize(CUevent hEvent): nothing to wait for; an event never
/// recorded counts as complete (CUDA).
@_cdecl("vgpucore_cuEventSynchronize")
public func vgpucore_cuEventSynchronize(_ event: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuEventSynchronize") { (device) throws(VGPUError) in
    guard let record = lookUpEvent(event) else { return CUDA_ERROR_INVALID_HANDLE }
    if record.capture != 0 { return capturedEvent("cuEventSynchronize") }
    _ = try device.query(record.handle)
    flushDeviceOutput(device)
    return CUDA_SUCCESS
  }
}

/// cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd):
/// milliseconds between two recorded events. An event made with
/// CU_EVENT_DISABLE_TIMING, or not recorded, is CUDA_ERROR_INVALID_HANDLE.
@_cdecl("vgpucore_cuEventElapsedTime")
public func vgpucore_cuEventElapsedTime(
  _ milliseconds: UnsafeMutablePointer<Float>?, _ start: UnsafeMutableRawPointer?, _ end: UnsafeMutableRawPointer?
) -> Int32 {
  guard let milliseconds else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice("cuEventElapsedTime") { (device) throws(VGPUError) in
    guard let a = lookUpEvent(start), let b = lookUpEvent(end), a.timing, b.timing else {
      return CUDA_ERROR_INVALID_HANDLE
    }
    do throws(VGPUError) {
      let ns = try device.elapsed(from: a.handle, to: b.handle)
      milliseconds.pointee = Float(Double(ns) / 1e6)
    } catch {
      // The device answers notReady for an event never recorded; work here is never pending.
      if error.status == .notReady { return CUDA_ERROR_INVALID_HANDLE }
      throw error
    }
    return CUDA_SUCCESS
  }
}

/// An event last recorded in a capture has no work to wait for until a
/// graph records it (cuda.h, CUDA_ERROR_CAPTURED_EVENT).
func capturedEvent(_ call: StaticString) -> Int32 {
  debugLine(
    "vgpu: \(call): the event was last recorded during a stream capture (CUDA_ERROR_CAPTURED_EVENT); "
      + "query it after a graph launch or an ordinary cuEventRecord records it")
  return CUDA_ERROR_CAPTURED_EVENT
}

/// cuEventDestroy_v2(CUevent hEvent); also the legacy cuEventDestroy.
@_cdecl("vgpucore_cuEventDestroy_v2")
public func vgpucore_cuEventDestroy_v2(_ event: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuEventDestroy") { (device) throws(VGPUError) in
    let key = handleKey(event)
    guard let record = cudaObjects.withLock({ $0.events.removeValue(forKey: key) }) else {
      return CUDA_ERROR_INVALID_HANDLE
    }
    try device.destroyEvent(record.handle)
    return CUDA_SUCCESS
  }
}

/// cuStreamGetCtx(CUstream hStream, CUcontext *pctx): the stream's context.
/// Every stream here belongs to the process's one device connection, so it is
/// the calling thread's current context, or the primary context when none is
/// current (cuda.core asks it before a cooperative launch, to check the
/// device's COOPERATIVE_LAUNCH attribute).
@_cdecl("vgpucore_cuStreamGetCtx")
public func vgpucore_cuStreamGetCtx(
  _ stream: UnsafeMutableRawPointer?, _ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard let pctx else { return CUDA_ERROR_INVALID_VALUE }
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  if let current = CUDAThread.current.currentContext {
    pctx.pointee = handlePointer(current)
    return CUDA_SUCCESS
  }
  let primary = cudaObjects.withLock { o in
    o.primaryContext(0)
    return o.primary
  }
  pctx.pointee = handlePointer(primary)
  return CUDA_SUCCESS
}

/// cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx
/// *pGreenCtx): the context as cuStreamGetCtx; no green contexts here (NULL).
@_cdecl("vgpucore_cuStreamGetCtx_v2")
public func vgpucore_cuStreamGetCtx_v2(
  _ stream: UnsafeMutableRawPointer?, _ pctx: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ green: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard pctx != nil || green != nil else { return CUDA_ERROR_INVALID_VALUE }
  green?.pointee = nil
  guard let pctx else { return CUDA_SUCCESS }
  return vgpucore_cuStreamGetCtx(stream, pctx)
}
