import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// Stream capture and CUDA graphs (CUDA Driver API, "Stream Management" and
// "Graph Management"), as far as cuda.core's GraphBuilder (numba-cuda's
// test_cuda_driver) and a single-stream capture in C use them.
//
// While a stream captures, the work enqueued on it (kernel launches with
// their parameters copied, copies, memsets, event records) is recorded, in
// order, instead of run. Every call here completes before it returns, so one
// stream's work is a linear sequence: a captured graph is that sequence, and
// cuGraphLaunch replays it on the stream it is given, reusing what capture
// stored. Not supported (each answers CUDA_ERROR_NOT_SUPPORTED and says so on
// stderr, as the other stubs do): the explicit graph-node API
// (cuGraphCreate, cuGraphAdd*Node, node queries), graph update
// (cuGraphExecUpdate, cuGraphExec*SetParams), capture into an existing graph
// (cuStreamBeginCaptureToGraph), child graphs, conditional nodes, host nodes,
// and joining a second stream into a capture through an event (fork/join).

let CUDA_ERROR_ILLEGAL_STATE: Int32 = 401
let CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: Int32 = 900
let CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: Int32 = 901
let CUDA_ERROR_CAPTURED_EVENT: Int32 = 907
let CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: Int32 = 908

/// CUstreamCaptureMode (cuda.h).
enum CaptureMode: Int32 {
  case global = 0
  case threadLocal = 1
  case relaxed = 2
}

/// CUstreamCaptureStatus (cuda.h).
let CU_STREAM_CAPTURE_STATUS_NONE: Int32 = 0
let CU_STREAM_CAPTURE_STATUS_ACTIVE: Int32 = 1
let CU_STREAM_CAPTURE_STATUS_INVALIDATED: Int32 = 2

/// One operation of a graph. Host addresses in copies are used when the
/// graph runs, as CUDA's memcpy nodes do.
enum GraphNode {
  case kernel(
    FunctionHandle, grid: Dimensions, block: Dimensions, sharedMemory: UInt32, cooperative: Bool, parameters: [UInt8])
  case copy(destination: UInt64, source: UInt64, count: Int)
  case memset(destination: UInt64, value: UInt32, elementSize: Int, count: Int)
  case eventRecord(event: UInt)
}

/// A capture sequence in progress on one stream.
struct CaptureRecord: @unchecked Sendable {
  /// cuStreamGetCaptureInfo's id: unique in the process, never 0.
  var id: UInt64
  /// The CUgraph cuStreamEndCapture will return (cuStreamGetCaptureInfo names it before).
  var graph: UInt
  var mode: CaptureMode
  /// The thread that began it (pthread_self): a global or thread-local
  /// capture must end on it.
  var thread: pthread_t
  /// A rule of capture was broken: cuStreamEndCapture returns no graph.
  var invalidated = false
  var nodes: [GraphNode] = []
  /// The handle of the last node captured (0 before the first), and after it
  /// eight zero bytes of CUgraphEdgeData: what cuStreamGetCaptureInfo's
  /// dependencies_out and edgeData_out point at, valid while it captures.
  var dependencies: UnsafeMutablePointer<UInt>
}

/// A graph cuStreamEndCapture made, or an instantiated one (CUgraphExec):
/// the same record; an executable graph is independent of its source (cuda.h,
/// cuGraphInstantiate: the graph may be destroyed or changed afterwards).
struct GraphRecord {
  var nodes: [GraphNode] = []
  /// References it holds to user objects (cuGraphRetainUserObject), by object.
  var userObjects: [UInt: UInt32] = [:]
  /// Its stream capture has not ended: it cannot be instantiated yet.
  var capturing = false
}

/// A cuUserObjectCreate object: a destructor CUDA calls once no one holds a
/// reference (cuda.h: the caller's, and graphs' and their instantiations').
struct UserObjectRecord: @unchecked Sendable {
  var pointer: UnsafeMutableRawPointer?
  var destroy: @convention(c) (UnsafeMutableRawPointer?) -> Void
  var references: UInt32
}

/// A destructor due, to be called outside the objects lock.
typealias DueDestructor = (
  destroy: @convention(c) (UnsafeMutableRawPointer?) -> Void, pointer: UnsafeMutableRawPointer?
)

/// Capture sequences in progress in this process. While it is 0, which is
/// always unless a program captures, the calls that capture or that capture
/// prohibits cost this one atomic load.
let capturesInProgress = Atomic<Int>(0)

/// Said once per process: a refusal of the unsupported parts of capture.
let captureRefusals = Atomic<UInt64>(0)

/// Says `line` on stderr: once per `bit` in a process, every time with VGPU_DEBUG.
func sayCaptureRefusal(_ bit: UInt64, _ line: @autoclosure () -> String) {
  let first = captureRefusals.bitwiseOr(bit, ordering: .relaxed).oldValue & bit == 0
  if first || ShimRuntime.shared.debug { ShimRuntime.printLine(line()) }
}

/// Says `line` on stderr with VGPU_DEBUG set.
func debugLine(_ line: @autoclosure () -> String) {
  if ShimRuntime.shared.debug { ShimRuntime.printLine(line()) }
}

func hexHandle(_ key: UInt) -> String { "0x" + String(key, radix: 16) }

extension CUDAObjects {
  /// Whether the calling thread may make a "potentially unsafe API call"
  /// (cuda.h, cuStreamBeginCapture and cuThreadExchangeStreamCaptureMode):
  /// in the thread's interaction mode `threadMode`, not while it has a
  /// capture of its own begun in global or thread-local mode, nor (mode
  /// global) while another thread has one begun in global mode.
  func prohibits(_ threadMode: CaptureMode, thread: pthread_t) -> Bool {
    guard threadMode != .relaxed else { return false }
    for c in captures.values {
      if pthread_equal(c.thread, thread) != 0 {
        if c.mode != .relaxed { return true }
      } else if threadMode == .global && c.mode == .global {
        return true
      }
    }
    return false
  }

  /// Invalidates what `prohibits` found: the unsafe call breaks those sequences.
  mutating func invalidateProhibiting(_ threadMode: CaptureMode, thread: pthread_t) -> [UInt] {
    var keys: [UInt] = []
    for (key, c) in captures {
      let own = pthread_equal(c.thread, thread) != 0
      if (own && c.mode != .relaxed) || (!own && threadMode == .global && c.mode == .global) {
        captures[key]!.invalidated = true
        keys.append(key)
      }
    }
    return keys
  }

  /// Ends the capture on stream `key`, if any, and returns it; frees what it held.
  mutating func endCapture(_ key: UInt) -> CaptureRecord? {
    guard let c = captures.removeValue(forKey: key) else { return nil }
    c.dependencies.deallocate()
    capturesInProgress.subtract(1, ordering: .relaxed)
    return c
  }

  /// Ends the capture on stream `key` without a graph (its stream is
  /// destroyed): the graph being built goes, with its user-object references.
  mutating func abandonCapture(_ key: UInt) -> [DueDestructor] {
    guard let c = endCapture(key), let g = graphs.removeValue(forKey: c.graph) else { return [] }
    return release(g.userObjects)
  }

  /// Drops `count` references to user object `key`; its destructor when none is left.
  mutating func release(_ key: UInt, _ count: UInt32) -> DueDestructor? {
    guard let o = userObjects[key] else { return nil }
    guard o.references > count else {
      userObjects[key] = nil
      return (o.destroy, o.pointer)
    }
    userObjects[key]!.references -= count
    return nil
  }

  mutating func release(_ references: [UInt: UInt32]) -> [DueDestructor] {
    references.compactMap { release($0.key, $0.value) }
  }
}

/// Calls destructors that became due, outside the objects lock: a
/// destructor may do anything but call CUDA (cuda.h, cuUserObjectCreate).
func runDestructors(_ due: [DueDestructor]) {
  for d in due { d.destroy(d.pointer) }
}

// MARK: Checks on the calls capture affects

/// For a call that runs synchronously (a copy or memset without a stream,
/// cuMemAlloc, cuMemFree): nil when it may run, else
/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, after invalidating the capture
/// sequences that prohibit it (cuda.h, cuStreamBeginCapture: "potentially
/// unsafe API calls" are prohibited, per capture mode).
@inline(__always)
func refusedWhileCapturing(_ call: StaticString) -> Int32? {
  guard capturesInProgress.load(ordering: .relaxed) != 0 else { return nil }
  return refuseUnsafeCall(call)
}

func refuseUnsafeCall(_ call: StaticString) -> Int32? {
  let mode = CUDAThread.current.captureMode
  let me = pthread_self()
  let broken = cudaObjects.withLock { o -> [UInt]? in
    o.prohibits(mode, thread: me) ? o.invalidateProhibiting(mode, thread: me) : nil
  }
  guard let broken else { return nil }
  debugLine(
    "vgpu: \(call): not permitted while stream(s) \(broken.map(hexHandle).joined(separator: ", ")) capture in "
      + "global or thread-local mode (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the capture is invalidated: "
      + "enqueue the work on the capturing stream with the Async form, or begin the capture in relaxed mode")
  return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
}

/// For work enqueued on `stream`: nil when it is to run now; else the
/// CUresult of recording `node` into the stream's capture, or of refusing it.
/// Work on the legacy default stream while a capture prohibits unsafe calls
/// is refused as such a call (it would synchronize with the capturing stream).
@inline(__always)
func captured(_ call: StaticString, _ stream: UnsafeMutableRawPointer?, _ node: @autoclosure () -> GraphNode)
  -> Int32?
{
  guard capturesInProgress.load(ordering: .relaxed) != 0 else { return nil }
  return recordCaptured(call, stream, node())
}

func recordCaptured(_ call: StaticString, _ stream: UnsafeMutableRawPointer?, _ node: GraphNode) -> Int32? {
  let key = handleKey(stream)
  if key == 0 || key == CU_STREAM_LEGACY { return refuseUnsafeCall(call) }
  return cudaObjects.withLock { o -> Int32? in
    guard o.captures[key] != nil else { return nil }
    if o.captures[key]!.invalidated { return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED }
    let handle = o.newHandle(.graphNode)
    o.captures[key]!.nodes.append(node)
    o.captures[key]!.dependencies.pointee = handle
    return CUDA_SUCCESS
  }
}

/// Invalidates the capture on stream `key` and says why (with VGPU_DEBUG), for
/// a call that capture cannot record; returns `code`.
func invalidateCapture(_ key: UInt, _ call: StaticString, _ code: Int32, _ why: String) -> Int32 {
  cudaObjects.withLock { o in
    if o.captures[key] != nil { o.captures[key]!.invalidated = true }
  }
  debugLine("vgpu: \(call): \(why) (\(cudaErrorName(code))); the capture on stream \(hexHandle(key)) is invalidated")
  return code
}

/// Whether stream `key` captures (slow path: only while some stream does).
func isCapturing(_ key: UInt) -> Bool {
  cudaObjects.withLock { $0.captures[key] != nil }
}

// MARK: Capture

/// cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode). The
/// legacy NULL stream cannot capture (cuda.h: "Capture may not be initiated
/// if stream is CU_STREAM_LEGACY"): CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED. A
/// stream that already captures: CUDA_ERROR_ILLEGAL_STATE.
@_cdecl("vgpucore_cuStreamBeginCapture_v2")
public func vgpucore_cuStreamBeginCapture_v2(_ stream: UnsafeMutableRawPointer?, _ mode: Int32) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let mode = CaptureMode(rawValue: mode) else { return CUDA_ERROR_INVALID_VALUE }
  let key = handleKey(stream)
  if key == 0 || key == CU_STREAM_LEGACY {
    debugLine(
      "vgpu: cuStreamBeginCapture: the legacy default stream cannot capture "
        + "(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); capture on a stream made by cuStreamCreate")
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
  }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  let me = pthread_self()
  return cudaObjects.withLock { o -> Int32 in
    guard o.captures[key] == nil else { return CUDA_ERROR_ILLEGAL_STATE }
    o.captureSerial += 1
    let dependencies = UnsafeMutablePointer<UInt>.allocate(capacity: 2)
    dependencies.initialize(repeating: 0, count: 2)
    let graph = o.newHandle(.graph)
    o.graphs[graph] = GraphRecord(capturing: true)
    o.captures[key] = CaptureRecord(
      id: o.captureSerial, graph: graph, mode: mode, thread: me, dependencies: dependencies)
    capturesInProgress.add(1, ordering: .relaxed)
    return CUDA_SUCCESS
  }
}

/// cuStreamEndCapture(CUstream hStream, CUgraph *phGraph): the captured graph.
/// Not capturing: CUDA_ERROR_ILLEGAL_STATE. A global or thread-local capture
/// ended by another thread: CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD (it goes
/// on). An invalidated capture ends with *phGraph = NULL and
/// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (cuda.h: "a NULL graph will be returned").
@_cdecl("vgpucore_cuStreamEndCapture")
public func vgpucore_cuStreamEndCapture(
  _ stream: UnsafeMutableRawPointer?, _ phGraph: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let phGraph else { return CUDA_ERROR_INVALID_VALUE }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  let key = handleKey(stream)
  let me = pthread_self()
  var due: [DueDestructor] = []
  let result = cudaObjects.withLock { o -> Int32 in
    guard let c = o.captures[key] else { return CUDA_ERROR_ILLEGAL_STATE }
    if c.mode != .relaxed && pthread_equal(c.thread, me) == 0 { return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD }
    if c.invalidated {
      due = o.abandonCapture(key)
      phGraph.pointee = nil
      return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
    }
    _ = o.endCapture(key)
    o.graphs[c.graph, default: GraphRecord()].nodes = c.nodes
    o.graphs[c.graph]!.capturing = false
    phGraph.pointee = handlePointer(c.graph)
    return CUDA_SUCCESS
  }
  runDestructors(due)
  switch result {
  case CUDA_ERROR_ILLEGAL_STATE:
    debugLine(
      "vgpu: cuStreamEndCapture: stream \(hexHandle(key)) is not capturing (CUDA_ERROR_ILLEGAL_STATE); "
        + "begin with cuStreamBeginCapture")
  case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD:
    debugLine(
      "vgpu: cuStreamEndCapture: stream \(hexHandle(key))'s capture was begun on another thread in global or "
        + "thread-local mode (CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD); end it on that thread")
  case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED:
    debugLine(
      "vgpu: cuStreamEndCapture: stream \(hexHandle(key))'s capture was invalidated by an earlier call "
        + "(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED); no graph")
  default: break
  }
  return result
}

/// The capture status of `stream` (CUstreamCaptureStatus), and its record.
/// Default streams never capture here.
func captureStatus(_ stream: UnsafeMutableRawPointer?) -> Result<(Int32, CaptureRecord?), CUDAError> {
  if case .failure(let e) = lookUpStream(stream) { return .failure(e) }
  guard capturesInProgress.load(ordering: .relaxed) != 0 else { return .success((CU_STREAM_CAPTURE_STATUS_NONE, nil)) }
  guard let c = cudaObjects.withLock({ $0.captures[handleKey(stream)] }) else {
    return .success((CU_STREAM_CAPTURE_STATUS_NONE, nil))
  }
  return .success((c.invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE, c))
}

/// cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus).
/// CuPy's runtime asks before every device-to-host copy (`ndarray.get()`).
@_cdecl("vgpucore_cuStreamIsCapturing")
public func vgpucore_cuStreamIsCapturing(_ stream: UnsafeMutableRawPointer?, _ status: UnsafeMutablePointer<Int32>?)
  -> Int32
{
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let status else { return CUDA_ERROR_INVALID_VALUE }
  switch captureStatus(stream) {
  case .failure(let e): return e.result
  case .success(let (s, _)): status.pointee = s
  }
  return CUDA_SUCCESS
}

/// cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus
/// *captureStatus_out, cuuint64_t *id_out, CUgraph *graph_out, const
/// CUgraphNode **dependencies_out, size_t *numDependencies_out): every output
/// but the status optional; the rest are written only while it captures
/// (cuda.h). The dependencies are the last node captured (a capture here is
/// a sequence).
@_cdecl("vgpucore_cuStreamGetCaptureInfo_v2")
public func vgpucore_cuStreamGetCaptureInfo_v2(
  _ stream: UnsafeMutableRawPointer?, _ status: UnsafeMutablePointer<Int32>?, _ id: UnsafeMutablePointer<UInt64>?,
  _ graph: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ dependencies: UnsafeMutablePointer<UnsafeRawPointer?>?, _ count: UnsafeMutablePointer<Int>?
) -> Int32 {
  vgpucore_cuStreamGetCaptureInfo_v3(stream, status, id, graph, dependencies, nil, count)
}

/// cuStreamGetCaptureInfo_v3(…, const CUgraphNode **dependencies_out, const
/// CUgraphEdgeData **edgeData_out, size_t *numDependencies_out) (CUDA 12.3):
/// with the edges' data, all default (zero) here.
@_cdecl("vgpucore_cuStreamGetCaptureInfo_v3")
public func vgpucore_cuStreamGetCaptureInfo_v3(
  _ stream: UnsafeMutableRawPointer?, _ status: UnsafeMutablePointer<Int32>?, _ id: UnsafeMutablePointer<UInt64>?,
  _ graph: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
  _ dependencies: UnsafeMutablePointer<UnsafeRawPointer?>?, _ edgeData: UnsafeMutablePointer<UnsafeRawPointer?>?,
  _ count: UnsafeMutablePointer<Int>?
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let status else { return CUDA_ERROR_INVALID_VALUE }
  switch captureStatus(stream) {
  case .failure(let e): return e.result
  case .success(let (s, c)):
    status.pointee = s
    guard let c, s == CU_STREAM_CAPTURE_STATUS_ACTIVE else { return CUDA_SUCCESS }
    id?.pointee = c.id
    graph?.pointee = handlePointer(c.graph)
    let n = c.nodes.isEmpty ? 0 : 1
    dependencies?.pointee = UnsafeRawPointer(c.dependencies)
    edgeData?.pointee = n == 0 ? nil : UnsafeRawPointer(c.dependencies + 1)
    count?.pointee = n
    return CUDA_SUCCESS
  }
}

/// cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode): sets the
/// calling thread's interaction mode and returns the old one (cuda.h; the
/// default is global).
@_cdecl("vgpucore_cuThreadExchangeStreamCaptureMode")
public func vgpucore_cuThreadExchangeStreamCaptureMode(_ mode: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let mode, let new = CaptureMode(rawValue: mode.pointee) else { return CUDA_ERROR_INVALID_VALUE }
  let thread = CUDAThread.current
  mode.pointee = thread.captureMode.rawValue
  thread.captureMode = new
  return CUDA_SUCCESS
}

// MARK: Graphs

/// cuGraphInstantiate flags (CUgraphInstantiate_flags): AUTO_FREE_ON_LAUNCH 1
/// and USE_NODE_PRIORITY 8 mean nothing without memory-allocation nodes and
/// priorities; UPLOAD 2 (cuGraphInstantiateWithParams) has nothing to upload.
/// DEVICE_LAUNCH 4 needs launches from device code, which the device lacks.
let graphInstantiateFlagsAccepted: UInt64 = 0x1 | 0x2 | 0x8
let CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH: UInt64 = 0x4

func instantiate(
  _ call: StaticString, _ phExec: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ graph: UnsafeMutableRawPointer?,
  _ flags: UInt64
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let phExec else { return CUDA_ERROR_INVALID_VALUE }
  if flags & CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH != 0 {
    sayCaptureRefusal(
      1 << 0,
      "vgpu: \(call): CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH (graphs launched from device code) is not "
        + "supported by this virtual GPU (CUDA_ERROR_NOT_SUPPORTED); instantiate without it")
    return CUDA_ERROR_NOT_SUPPORTED
  }
  guard flags & ~graphInstantiateFlagsAccepted == 0 else {
    return CUDA_ERROR_INVALID_VALUE
  }
  let exec = cudaObjects.withLock { o -> UInt? in
    guard let g = o.graphs[handleKey(graph)], !g.capturing else { return nil }
    let h = o.newHandle(.graphExec)
    o.graphExecs[h] = g
    // The instantiation holds references of its own to the graph's user objects.
    for (object, count) in g.userObjects { o.userObjects[object]?.references += count }
    return h
  }
  guard let exec else {
    debugLine(
      "vgpu: \(call): \(hexHandle(handleKey(graph))) is not a graph of this process, or its capture has not "
        + "ended (CUDA_ERROR_INVALID_VALUE); instantiate what cuStreamEndCapture returned")
    return CUDA_ERROR_INVALID_VALUE
  }
  phExec.pointee = handlePointer(exec)
  return CUDA_SUCCESS
}

/// cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
/// unsigned long long flags); also cuda.h's cuGraphInstantiate (a macro for it).
@_cdecl("vgpucore_cuGraphInstantiateWithFlags")
public func vgpucore_cuGraphInstantiateWithFlags(
  _ phExec: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ graph: UnsafeMutableRawPointer?, _ flags: UInt64
) -> Int32 {
  instantiate("cuGraphInstantiateWithFlags", phExec, graph, flags)
}

/// cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
/// CUDA_GRAPH_INSTANTIATE_PARAMS *params). The struct (cuda.h, LP64): flags
/// @0 (cuuint64_t), hUploadStream @8, hErrNode_out @16, result_out @24
/// (CUgraphInstantiateResult: SUCCESS 0, ERROR 1, …,
/// NODE_OPERATION_NOT_SUPPORTED 3).
@_cdecl("vgpucore_cuGraphInstantiateWithParams")
public func vgpucore_cuGraphInstantiateWithParams(
  _ phExec: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ graph: UnsafeMutableRawPointer?,
  _ params: UnsafeMutableRawPointer?
) -> Int32 {
  guard let params else { return CUDA_ERROR_INVALID_VALUE }
  let flags = params.load(as: UInt64.self)
  // CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD uploads on hUploadStream: it must be a stream.
  if flags & 0x2 != 0,
    case .failure(let e) = lookUpStream(params.load(fromByteOffset: 8, as: UnsafeMutableRawPointer?.self))
  {
    return e.result
  }
  let result = instantiate("cuGraphInstantiateWithParams", phExec, graph, flags)
  params.storeBytes(of: nil, toByteOffset: 16, as: UnsafeMutableRawPointer?.self)
  params.storeBytes(
    of: result == CUDA_SUCCESS ? 0 : result == CUDA_ERROR_NOT_SUPPORTED ? 3 : 1, toByteOffset: 24, as: Int32.self)
  return result
}

/// cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream): runs the graph's
/// nodes in order on `hStream`, as if each had been enqueued there again
/// with what capture stored. A destroyed or unknown exec:
/// CUDA_ERROR_INVALID_HANDLE. Capturing a graph launch (a child graph node)
/// is not supported.
@_cdecl("vgpucore_cuGraphLaunch")
public func vgpucore_cuGraphLaunch(_ exec: UnsafeMutableRawPointer?, _ stream: UnsafeMutableRawPointer?) -> Int32 {
  withDevice("cuGraphLaunch") { (device) throws(VGPUError) in
    guard let graph = cudaObjects.withLock({ $0.graphExecs[handleKey(exec)] }) else {
      debugLine(
        "vgpu: cuGraphLaunch: \(hexHandle(handleKey(exec))) is not an instantiated graph of this process, or was "
          + "destroyed (CUDA_ERROR_INVALID_HANDLE); launch what cuGraphInstantiate returned")
      return CUDA_ERROR_INVALID_HANDLE
    }
    let target: StreamHandle?
    switch lookUpStream(stream) {
    case .failure(let e): return e.result
    case .success(let s): target = s
    }
    if capturesInProgress.load(ordering: .relaxed) != 0 {
      let key = handleKey(stream)
      if isCapturing(key) {
        sayCaptureRefusal(
          1 << 1,
          "vgpu: cuGraphLaunch: capturing a graph launch (a child graph node) is not supported by this "
            + "virtual GPU (CUDA_ERROR_NOT_SUPPORTED); launch the graph outside the capture")
        return invalidateCapture(key, "cuGraphLaunch", CUDA_ERROR_NOT_SUPPORTED, "a child graph")
      }
      if key == 0 || key == CU_STREAM_LEGACY, let refused = refuseUnsafeCall("cuGraphLaunch") { return refused }
    }
    return try replay(graph.nodes, on: target, device)
  }
}

/// Runs `nodes` in order on `stream`.
func replay(_ nodes: [GraphNode], on stream: StreamHandle?, _ device: Device) throws(VGPUError) -> Int32 {
  for node in nodes {
    switch node {
    case .kernel(let function, let grid, let block, let sharedMemory, let cooperative, let parameters):
      outputPending.store(true, ordering: .relaxed)
      do throws(VGPUError) {
        try device.launch(
          function, grid: grid, block: block, sharedMemory: sharedMemory, parameters: parameters, stream: stream,
          cooperative: cooperative)
      } catch {
        return launchFailure(error, "cuGraphLaunch")
      }
    case .copy(let destination, let source, let count):
      try copyUnified(destination, source, count, device)
    case .memset(let destination, let value, let elementSize, let count):
      try device.memset(DevicePointer(destination), value: value, elementSize: elementSize, count: count)
    case .eventRecord(let key):
      // Replaying the record makes it an ordinary recorded event again.
      guard
        let event = cudaObjects.withLock({ o -> EventRecord? in
          o.events[key]?.capture = 0
          return o.events[key]
        })
      else { return CUDA_ERROR_INVALID_HANDLE }
      try device.record(event.handle, on: stream)
    }
  }
  return CUDA_SUCCESS
}

/// cuGraphUpload(CUgraphExec hGraphExec, CUstream hStream): nothing to
/// upload ahead of a launch here; checks its arguments.
@_cdecl("vgpucore_cuGraphUpload")
public func vgpucore_cuGraphUpload(_ exec: UnsafeMutableRawPointer?, _ stream: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard cudaObjects.withLock({ $0.graphExecs[handleKey(exec)] != nil }) else { return CUDA_ERROR_INVALID_HANDLE }
  if case .failure(let e) = lookUpStream(stream) { return e.result }
  return CUDA_SUCCESS
}

/// cuGraphExecDestroy(CUgraphExec hGraphExec): with its user-object references.
@_cdecl("vgpucore_cuGraphExecDestroy")
public func vgpucore_cuGraphExecDestroy(_ exec: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard
    let due = cudaObjects.withLock({ o -> [DueDestructor]? in
      o.graphExecs.removeValue(forKey: handleKey(exec)).map { o.release($0.userObjects) }
    })
  else { return CUDA_ERROR_INVALID_HANDLE }
  runDestructors(due)
  return CUDA_SUCCESS
}

/// cuGraphDestroy(CUgraph hGraph): the graph only (its instantiations stay),
/// with its user-object references. Not while its capture goes on.
@_cdecl("vgpucore_cuGraphDestroy")
public func vgpucore_cuGraphDestroy(_ graph: UnsafeMutableRawPointer?) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  let key = handleKey(graph)
  guard
    let due = cudaObjects.withLock({ o -> [DueDestructor]? in
      guard o.graphs[key]?.capturing == false else { return nil }
      return o.release(o.graphs.removeValue(forKey: key)!.userObjects)
    })
  else { return CUDA_ERROR_INVALID_HANDLE }
  runDestructors(due)
  return CUDA_SUCCESS
}

// MARK: User objects

/// cuUserObjectCreate(CUuserObject *object_out, void *ptr, CUhostFn destroy,
/// unsigned int initialRefcount, unsigned int flags): `flags` must be
/// CU_USER_OBJECT_NO_DESTRUCTOR_SYNC (1), the only one cuda.h defines, and the count positive.
@_cdecl("vgpucore_cuUserObjectCreate")
public func vgpucore_cuUserObjectCreate(
  _ object: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ pointer: UnsafeMutableRawPointer?,
  _ destroy: (@convention(c) (UnsafeMutableRawPointer?) -> Void)?, _ references: UInt32, _ flags: UInt32
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard let object, let destroy, references > 0, flags == 1 else { return CUDA_ERROR_INVALID_VALUE }
  let h = cudaObjects.withLock { o in
    let h = o.newHandle(.userObject)
    o.userObjects[h] = UserObjectRecord(pointer: pointer, destroy: destroy, references: references)
    return h
  }
  object.pointee = handlePointer(h)
  return CUDA_SUCCESS
}

/// cuUserObjectRetain(CUuserObject object, unsigned int count)
@_cdecl("vgpucore_cuUserObjectRetain")
public func vgpucore_cuUserObjectRetain(_ object: UnsafeMutableRawPointer?, _ count: UInt32) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard count > 0 else { return CUDA_ERROR_INVALID_VALUE }
  return cudaObjects.withLock { o -> Int32 in
    guard o.userObjects[handleKey(object)] != nil else { return CUDA_ERROR_INVALID_HANDLE }
    o.userObjects[handleKey(object)]!.references += count
    return CUDA_SUCCESS
  }
}

/// cuUserObjectRelease(CUuserObject object, unsigned int count): the
/// destructor runs when the last reference goes.
@_cdecl("vgpucore_cuUserObjectRelease")
public func vgpucore_cuUserObjectRelease(_ object: UnsafeMutableRawPointer?, _ count: UInt32) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard count > 0 else { return CUDA_ERROR_INVALID_VALUE }
  guard
    let due = cudaObjects.withLock({ o -> DueDestructor?? in
      o.userObjects[handleKey(object)] == nil ? nil : .some(o.release(handleKey(object), count))
    })
  else { return CUDA_ERROR_INVALID_HANDLE }
  if let due { runDestructors([due]) }
  return CUDA_SUCCESS
}

/// cuGraphRetainUserObject(CUgraph graph, CUuserObject object, unsigned int
/// count, unsigned int flags): the graph holds `count` references, new ones,
/// or with CU_GRAPH_USER_OBJECT_MOVE (1) the caller's. A graph still being
/// captured counts (cuda.core attaches a launch's arguments to it).
@_cdecl("vgpucore_cuGraphRetainUserObject")
public func vgpucore_cuGraphRetainUserObject(
  _ graph: UnsafeMutableRawPointer?, _ object: UnsafeMutableRawPointer?, _ count: UInt32, _ flags: UInt32
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard count > 0, flags & ~1 == 0 else { return CUDA_ERROR_INVALID_VALUE }
  let (g, u) = (handleKey(graph), handleKey(object))
  return cudaObjects.withLock { o -> Int32 in
    guard o.graphs[g] != nil, o.userObjects[u] != nil else { return CUDA_ERROR_INVALID_HANDLE }
    if flags & 1 == 0 { o.userObjects[u]!.references += count }
    o.graphs[g]!.userObjects[u, default: 0] += count
    return CUDA_SUCCESS
  }
}

/// cuGraphReleaseUserObject(CUgraph graph, CUuserObject object, unsigned int
/// count): references the graph holds, no more than it holds.
@_cdecl("vgpucore_cuGraphReleaseUserObject")
public func vgpucore_cuGraphReleaseUserObject(
  _ graph: UnsafeMutableRawPointer?, _ object: UnsafeMutableRawPointer?, _ count: UInt32
) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  guard count > 0 else { return CUDA_ERROR_INVALID_VALUE }
  let (g, u) = (handleKey(graph), handleKey(object))
  var due: DueDestructor?
  let result = cudaObjects.withLock { o -> Int32 in
    guard let held = o.graphs[g]?.userObjects[u] else { return CUDA_ERROR_INVALID_HANDLE }
    guard count <= held else { return CUDA_ERROR_INVALID_VALUE }
    o.graphs[g]!.userObjects[u] = held == count ? nil : held - count
    due = o.release(u, count)
    return CUDA_SUCCESS
  }
  if let due { runDestructors([due]) }
  return result
}
