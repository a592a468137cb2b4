import CSupport
import FatBinary
import PTX
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The host's real GPU as the device's backend: every command goes to the
/// NVIDIA driver through its public driver API (`CUDADriver`, loaded with
/// dlopen), one context per guest process and one stream per queue pair.
/// Device addresses are the driver's, returned unchanged to the guest
/// (pointers nested inside kernel arguments cannot be translated); module
/// images go to `cuModuleLoadData` unchanged (the driver picks the entry,
/// decompresses, JITs PTX). The executor still checks every address a
/// command names against its ledger and enforces the BAR's memory limit.
///
/// Work is queued on the pair's stream and waited for briefly on the
/// serving thread; what is still running after that (a long kernel, a big
/// copy) is finished by a worker, so it holds up no other client.
///
/// `@unchecked Sendable`: contexts, pairs and events are touched under the
/// executor's lock (serving thread) only; workers use the context and
/// stream their job was given and `printf`'s lock.
public final class CUDABackend: ExecutionBackend, @unchecked Sendable {
  let driver: CUDADriver
  let device: Int32
  /// The GPU as the driver describes it.
  public let identity: CUDADeviceIdentity

  /// One context per guest process: a fault poisons only its own.
  struct ProcessContext {
    var context: OpaquePointer
    var pairs: Int
  }
  @exclusivity(unchecked) var contexts: [UInt32: ProcessContext] = [:]
  /// Per queue pair: its process and stream (created at its first command).
  struct PairStream {
    var pid: UInt32
    var context: OpaquePointer
    var stream: OpaquePointer
  }
  @exclusivity(unchecked) var pairs: [Int: PairStream] = [:]
  @exclusivity(unchecked) var events: [UInt64: (context: OpaquePointer, event: OpaquePointer, recorded: Bool)] = [:]
  @exclusivity(unchecked) var nextEvent: UInt64 = 0
  /// cuLaunchKernel's `extra` array (serving thread only): the packed
  /// parameters go through CU_LAUNCH_PARAM_BUFFER_POINTER.
  let extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>
  let parameterSize: UnsafeMutablePointer<Int>
  /// The driver writes device `printf` text to fd 1 at sync points; it is
  /// caught here and given to the process whose sync flushed it.
  let printf: PrintfCapture?
  /// How long the serving thread waits for queued work before a worker takes over.
  let inlineWait: UInt64
  /// The host's NVML for the GPU's utilization (set before serving), which
  /// guests see as the device's busy time.
  public var nvml: HostNVML?
  @exclusivity(unchecked) var busyClock = BusyClock()

  /// Opens GPU `ordinal` through `driver`. The staging area (`staging`,
  /// the BAR's, shared with the guests) is page-locked with
  /// cuMemHostRegister, so copies are DMA from it.
  public init(
    driver: CUDADriver, ordinal: Int32, staging: UnsafeMutableRawBufferPointer?, capturePrintf: Bool = true,
    inlineWaitNanoseconds: UInt64 = 50_000
  ) throws(CUDADriverError) {
    self.driver = driver
    identity = try driver.identity(ordinal: ordinal)
    device = identity.device
    extra = .allocate(capacity: 5)
    parameterSize = .allocate(capacity: 1)
    printf = capturePrintf ? PrintfCapture() : nil
    inlineWait = inlineWaitNanoseconds
    if let staging, let base = staging.baseAddress, staging.count > 0 {
      // CU_MEMHOSTREGISTER_PORTABLE (0x01, cuda.h): pinned for every context.
      let rr = driver.cuMemHostRegister(base, staging.count, 0x01)
      if rr != 0 {
        // Copies still work from pageable memory (through the driver's bounce buffers).
        let line =
          "vgpu-mediator: warning: \(driver.describe(rr, "cuMemHostRegister(staging, \(staging.count) bytes)")); copies will be slower\n"
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
      }
    }
  }

  deinit {
    for (_, p) in pairs { _ = driver.cuStreamDestroy(p.stream) }
    for (_, c) in contexts { _ = driver.cuCtxDestroy(c.context) }
    extra.deallocate()
    parameterSize.deallocate()
  }

  /// No: cuMemcpyHtoDAsync from pageable memory first waits for the
  /// pair's stream (a long kernel would hold the serving thread), and
  /// registering a shared range for DMA would leave copies in flight when
  /// it is taken back. Shared host memory waits for that bookkeeping.
  public var finishesHostAccessOnReturn: Bool { false }

  public var name: String { "CUDA driver \(driver.version / 1000).\(driver.version % 1000 / 10) on \(identity.name)" }

  // MARK: Contexts and streams

  /// The caller's process's context, made current on this thread; created at its first command.
  func context(_ caller: BackendCaller) throws(BackendError) -> OpaquePointer {
    if let p = pairs[caller.queuePair], p.pid == caller.pid {
      try check(driver.cuCtxSetCurrent(p.context), "cuCtxSetCurrent")
      return p.context
    }
    return try stream(caller).context
  }

  /// The caller's queue pair's stream, in its process's context (made current).
  func stream(_ caller: BackendCaller) throws(BackendError) -> PairStream {
    if let p = pairs[caller.queuePair], p.pid == caller.pid {
      try check(driver.cuCtxSetCurrent(p.context), "cuCtxSetCurrent")
      return p
    }
    let ctx: OpaquePointer
    if let c = contexts[caller.pid] {
      ctx = c.context
      try check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    } else {
      var made: OpaquePointer?
      try check(driver.cuCtxCreate(&made, 0, device), "cuCtxCreate for process \(caller.pid)")
      guard let made else { throw BackendError(.launchFailed, "cuCtxCreate returned no context") }
      ctx = made
      contexts[caller.pid] = ProcessContext(context: made, pairs: 0)
    }
    var s: OpaquePointer?
    // CU_STREAM_NON_BLOCKING (0x1, cuda.h): no implicit sync with the legacy stream.
    try check(driver.cuStreamCreate(&s, 0x1), "cuStreamCreate")
    guard let s else { throw BackendError(.launchFailed, "cuStreamCreate returned no stream") }
    let p = PairStream(pid: caller.pid, context: ctx, stream: s)
    pairs[caller.queuePair] = p
    contexts[caller.pid]?.pairs += 1
    return p
  }

  public func release(queuePair: Int) {
    guard let p = pairs.removeValue(forKey: queuePair) else { return }
    _ = driver.cuCtxSetCurrent(p.context)
    _ = driver.cuStreamSynchronize(p.stream)
    printf?.drain(into: nil)
    _ = driver.cuStreamDestroy(p.stream)
    contexts[p.pid]?.pairs -= 1
    if let c = contexts[p.pid], c.pairs <= 0 {
      // The process's last pair: its context goes, and with it whatever it still held.
      for (token, e) in events where e.context == c.context {
        _ = driver.cuEventDestroy(e.event)
        events[token] = nil
      }
      _ = driver.cuCtxDestroy(c.context)
      contexts[p.pid] = nil
      printf?.forget(pid: p.pid)
    }
  }

  // MARK: Memory

  public func allocate(_ size: UInt64, alignment: UInt64, for caller: BackendCaller) throws(BackendError) -> UInt64 {
    _ = try context(caller)
    var address: UInt64 = 0
    try check(driver.cuMemAlloc(&address, Int(size)), "cuMemAlloc(\(size) bytes)")
    // cuMemAlloc aligns to at least 256 bytes (CUDA C++ Programming Guide,
    // "Device Memory Accesses"); a stricter alignment it happened to miss is refused.
    guard address % alignment == 0 else {
      _ = driver.cuMemFree(address)
      throw BackendError(
        .invalidValue, "the GPU's driver placed memory at 256-byte alignment; \(alignment) was asked for", detail: 2)
    }
    return address
  }

  public func free(_ address: UInt64, size: UInt64, for caller: BackendCaller) {
    // Another tenant may get these bytes next from the same process's
    // allocator: zero them first (on the GPU, at its bandwidth: 80 GB in
    // tens of milliseconds). A vGPU as the host driver (layered) scrubs
    // what is freed itself.
    if !driver.isVGPUShim, let s = try? stream(caller) {
      _ = driver.cuMemsetD8Async(address, 0, Int(size), s.stream)
      _ = driver.cuStreamSynchronize(s.stream)
    }
    _ = driver.cuMemFree(address)
  }

  public func write(_ address: UInt64, from source: UnsafeRawPointer, count: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  {
    let s = try stream(caller)
    try check(driver.cuMemcpyHtoDAsync(address, source, count, s.stream), "cuMemcpyHtoDAsync(\(count) bytes)")
    return try settle(s, caller)
  }

  public func read(
    _ address: UInt64, into destination: UnsafeMutableRawPointer, count: Int, streaming: Bool, for caller: BackendCaller
  ) throws(BackendError) -> (any BackendWork)? {
    let s = try stream(caller)
    try check(driver.cuMemcpyDtoHAsync(destination, address, count, s.stream), "cuMemcpyDtoHAsync(\(count) bytes)")
    return try settle(s, caller)
  }

  public func copy(to destination: UInt64, from source: UInt64, count: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  {
    let s = try stream(caller)
    try check(driver.cuMemcpyDtoDAsync(destination, source, count, s.stream), "cuMemcpyDtoDAsync(\(count) bytes)")
    return try settle(s, caller)
  }

  public func fill(_ address: UInt64, pattern: UInt64, width: Int, bytes: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  {
    let s = try stream(caller)
    let r: Int32
    switch width {
    case 1: r = driver.cuMemsetD8Async(address, UInt8(truncatingIfNeeded: pattern), bytes, s.stream)
    case 2: r = driver.cuMemsetD16Async(address, UInt16(truncatingIfNeeded: pattern), bytes / 2, s.stream)
    default: r = driver.cuMemsetD32Async(address, UInt32(truncatingIfNeeded: pattern), bytes / 4, s.stream)
    }
    try check(r, "cuMemsetD\(width * 8)Async(\(bytes) bytes)")
    return try settle(s, caller)
  }

  public func synchronize(for caller: BackendCaller) throws(BackendError) -> (any BackendWork)? {
    try settle(try stream(caller), caller)
  }

  /// Waits up to `inlineWait` for the pair's stream; done: synchronizes
  /// (which flushes `printf`) and keeps the text for the process. Still
  /// running: a worker waits for the rest.
  func settle(_ s: PairStream, _ caller: BackendCaller) throws(BackendError) -> (any BackendWork)? {
    let deadline = vgpu_monotonic_ns() &+ inlineWait
    while true {
      let r = driver.cuStreamQuery(s.stream)
      if r == 0 {
        try synchronized(s, pid: caller.pid)
        return nil
      }
      // CUDA_ERROR_NOT_READY (600): still running.
      guard r == 600 else {
        printf?.drain(into: caller.pid)
        throw error(r, "the work queued on this queue pair")
      }
      if vgpu_monotonic_ns() >= deadline { return StreamWait(backend: self, stream: s) }
    }
  }

  /// cuStreamSynchronize on a stream that is done (it returns at once and
  /// flushes the context's printf buffer), then the text for `pid`.
  func synchronized(_ s: PairStream, pid: UInt32) throws(BackendError) {
    guard let printf else {
      try check(driver.cuStreamSynchronize(s.stream), "cuStreamSynchronize")
      return
    }
    let r = printf.lock.withLock { _ in
      let r = driver.cuStreamSynchronize(s.stream)
      printf.drainLocked(into: pid)
      return r
    }
    try check(r, "cuStreamSynchronize")
  }

  /// The process's text so far: its streams that are done are synchronized
  /// first (which flushes the driver's printf buffer), so a guest that asks
  /// after its kernel ended gets the kernel's text.
  public func takeOutput(pid: UInt32, into output: inout DeviceOutput) {
    guard let printf else { return }
    for (_, p) in pairs where p.pid == pid {
      if driver.cuCtxSetCurrent(p.context) == 0, driver.cuStreamQuery(p.stream) == 0 {
        try? synchronized(p, pid: pid)
      }
    }
    printf.take(pid: pid, into: &output)
  }

  public func busyNanoseconds() -> UInt64? {
    guard let nvml else { return nil }
    return busyClock.advance(nvml, now: vgpu_monotonic_ns())
  }

  // MARK: Events

  public func createEvent(for caller: BackendCaller) throws(BackendError) -> UInt64 {
    let ctx = try context(caller)
    var e: OpaquePointer?
    try check(driver.cuEventCreate(&e, 0), "cuEventCreate")
    guard let e else { throw BackendError(.launchFailed, "cuEventCreate returned no event") }
    nextEvent &+= 1
    events[nextEvent] = (ctx, e, false)
    return nextEvent
  }

  public func destroyEvent(_ event: UInt64) {
    guard let e = events.removeValue(forKey: event) else { return }
    _ = driver.cuCtxSetCurrent(e.context)
    _ = driver.cuEventDestroy(e.event)
  }

  public func recordEvent(_ event: UInt64, for caller: BackendCaller) throws(BackendError) {
    guard let e = events[event] else { throw BackendError(.invalidHandle, "no such event", detail: 1) }
    let s = try stream(caller)
    try check(driver.cuEventRecord(e.event, s.stream), "cuEventRecord")
    events[event]?.recorded = true
  }

  public func eventCompleted(_ event: UInt64) throws(BackendError) -> Bool? {
    guard let e = events[event] else { throw BackendError(.invalidHandle, "no such event", detail: 1) }
    guard e.recorded else { return nil }
    try check(driver.cuCtxSetCurrent(e.context), "cuCtxSetCurrent")
    let r = driver.cuEventQuery(e.event)
    if r == 600 { return false }
    try check(r, "cuEventQuery")
    return true
  }

  public func elapsed(from start: UInt64, to end: UInt64) throws(BackendError) -> UInt64 {
    guard let a = events[start], a.recorded else {
      throw BackendError(.notReady, "the start event was never recorded", detail: 1)
    }
    guard let b = events[end], b.recorded else {
      throw BackendError(.notReady, "the end event was never recorded", detail: 2)
    }
    try check(driver.cuCtxSetCurrent(a.context), "cuCtxSetCurrent")
    var ms: Float = 0
    try check(driver.cuEventElapsedTime(&ms, a.event, b.event), "cuEventElapsedTime")
    return ms > 0 ? UInt64(Double(ms) * 1e6) : 0
  }

  // MARK: Modules

  public func moduleLoader(for caller: BackendCaller) throws(BackendError) -> any ModuleLoader {
    CUDAModuleLoader(backend: self, context: try context(caller))
  }

  // MARK: Errors

  func check(_ r: Int32, _ what: @autoclosure () -> String) throws(BackendError) {
    guard r == 0 else { throw error(r, what()) }
  }

  /// The driver's result as the guest gets it: the nearest status (the
  /// shim turns it back into CUDA's number) and the driver's own words.
  func error(_ r: Int32, _ what: String) -> BackendError {
    BackendError(Self.status(r), driver.describe(r, what))
  }

  /// CUresult (cuda.h, enum cudaError_enum) → the protocol's status.
  static func status(_ r: Int32) -> CommandStatus {
    switch r {
    case 1, 701: .invalidValue  // INVALID_VALUE; LAUNCH_OUT_OF_RESOURCES
    case 2: .outOfMemory
    case 3: .notInitialized
    case 4: .deviceLost  // DEINITIALIZED
    case 200: .invalidImage
    case 209: .noBinaryForGPU
    case 218: .invalidPTX
    case 400: .invalidHandle
    case 500: .notFound
    case 600: .notReady
    case 700: .illegalAddress
    case 702: .launchTimeout
    case 710: .assertTriggered
    case 801: .notSupported
    default: .launchFailed
    }
  }
}

/// A queue pair's stream still running when the serving thread stopped
/// waiting: a worker polls it (cancellable, saying the device is alive)
/// until it is done.
final class StreamWait: BackendWork, @unchecked Sendable {
  let backend: CUDABackend
  let stream: CUDABackend.PairStream
  let cancelled = Atomic<Bool>(false)

  init(backend: CUDABackend, stream: CUDABackend.PairStream) {
    self.backend = backend
    self.stream = stream
  }

  func finish(caller: BackendCaller, output: inout DeviceOutput) throws(BackendError) {
    let driver = backend.driver
    try backend.check(driver.cuCtxSetCurrent(stream.context), "cuCtxSetCurrent")
    var spins = 0
    var lastProgress = vgpu_monotonic_ns()
    while true {
      let r = driver.cuStreamQuery(stream.stream)
      if r == 0 { break }
      guard r == 600 else {
        backend.printf?.drain(into: caller.pid)
        throw backend.error(r, "the work queued on this queue pair")
      }
      if cancelled.load(ordering: .relaxed) {
        throw BackendError(.deviceLost, "stopped waiting for the GPU: the client went away or the device stops")
      }
      spins += 1
      if spins > 100 {
        var t = timespec(tv_sec: 0, tv_nsec: 50_000)
        nanosleep(&t, nil)
      }
      let now = vgpu_monotonic_ns()
      if now &- lastProgress > 10_000_000 {
        caller.reportProgress()
        lastProgress = now
      }
    }
    try backend.synchronized(stream, pid: caller.pid)
  }

  func cancel() { cancelled.store(true, ordering: .relaxed) }
}

/// A module the driver loaded, in one process's context.
final class CUDAModule: BackendModule {
  unowned let backend: CUDABackend
  let context: OpaquePointer
  let module: OpaquePointer
  /// The image's PTX, read only when the driver cannot say a kernel's
  /// parameter layout (cuFuncGetParamInfo needs driver 12.4).
  private let image: UnsafeMutableRawBufferPointer?
  private var unloaded = false

  init(backend: CUDABackend, context: OpaquePointer, module: OpaquePointer, image: UnsafeRawBufferPointer) {
    self.backend = backend
    self.context = context
    self.module = module
    if backend.driver.cuFuncGetParamInfo == nil {
      let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: image.count, alignment: 16)
      copy.copyMemory(from: image)
      self.image = copy
    } else {
      self.image = nil
    }
  }

  deinit { image?.deallocate() }

  /// The driver places the module's variables.
  var variables: [ModuleVariable] { [] }
  func bind(variableAddresses: [UInt64]) {}
  func initializer(ofVariable index: Int) throws(BackendError) -> [UInt8] { [] }

  func global(named name: String) throws(BackendError) -> PlacedVariable? {
    let driver = backend.driver
    try backend.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    var address: UInt64 = 0
    var size = 0
    let r = name.withCString { driver.cuModuleGetGlobal(&address, &size, module, $0) }
    if r == 500 { return nil }  // CUDA_ERROR_NOT_FOUND
    try backend.check(r, "cuModuleGetGlobal('\(name)')")
    return PlacedVariable(name: name, address: address, size: UInt64(size))
  }

  var kernelNames: [String] {
    let driver = backend.driver
    guard let count = driver.cuModuleGetFunctionCount, let enumerate = driver.cuModuleEnumerateFunctions,
      let nameOf = driver.cuFuncGetName, driver.cuCtxSetCurrent(context) == 0
    else { return [] }
    var n: UInt32 = 0
    guard count(&n, module) == 0, n > 0 else { return [] }
    var functions = [OpaquePointer?](repeating: nil, count: Int(n))
    guard enumerate(&functions, n, module) == 0 else { return [] }
    return functions.compactMap { f in
      var p: UnsafePointer<CChar>?
      guard nameOf(&p, f) == 0, let p else { return nil }
      return String(cString: p)
    }
  }

  func function(named name: String) throws(BackendError) -> any BackendFunction {
    let driver = backend.driver
    try backend.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    var f: OpaquePointer?
    let r = name.withCString { driver.cuModuleGetFunction(&f, module, $0) }
    if r == 500 { throw BackendError(.notFound, "no kernel '\(name)' in this module", detail: 3) }
    try backend.check(r, "cuModuleGetFunction('\(name)')")
    guard let f else { throw BackendError(.notFound, "no kernel '\(name)' in this module", detail: 3) }
    func attribute(_ a: Int32) -> UInt32 {
      var v: Int32 = 0
      return driver.cuFuncGetAttribute(&v, a, f) == 0 ? UInt32(clamping: v) : 0
    }
    let slots = try parameterSlots(f, name: name)
    let bytes = slots.map { $0.offset + $0.size }.max() ?? 0
    // CUfunction_attribute (cuda.h): MAX_THREADS_PER_BLOCK 0, SHARED_SIZE_BYTES 1,
    // CONST_SIZE_BYTES 2, LOCAL_SIZE_BYTES 3, NUM_REGS 4, PTX_VERSION 5, BINARY_VERSION 6.
    let info = FunctionInfo(
      parameterCount: UInt32(slots.count), parameterBytes: bytes, maxThreadsPerBlock: attribute(0),
      sharedBytes: attribute(1), localBytes: attribute(3), constBytes: attribute(2), registers: attribute(4),
      ptxVersion: UInt16(clamping: attribute(5)), binaryVersion: UInt16(clamping: attribute(6)))
    return CUDAFunction(backend: backend, context: context, function: f, info: info, slots: slots)
  }

  /// The kernel's parameter layout: the driver's (12.4+), else read from the image's PTX.
  private func parameterSlots(_ f: OpaquePointer, name: String) throws(BackendError) -> [ParameterSlot] {
    let driver = backend.driver
    if let info = driver.cuFuncGetParamInfo {
      var slots: [ParameterSlot] = []
      var offset = 0
      var size = 0
      // Indices past the last parameter are CUDA_ERROR_INVALID_VALUE.
      while slots.count < 4096, info(f, slots.count, &offset, &size) == 0 {
        slots.append(ParameterSlot(offset: UInt32(offset), size: UInt32(size)))
      }
      return slots
    }
    let source: PTXSource
    do throws(FatBinaryError) {
      let cc = UInt32(backend.identity.computeCapabilityMajor * 10 + backend.identity.computeCapabilityMinor)
      source = try ModuleImageLoader.ptx(
        from: UnsafeRawBufferPointer(image ?? .init(start: nil, count: 0)), computeCapability: cc)
    } catch {
      throw BackendError(
        .notSupported,
        "this driver (\(driver.version)) cannot say kernel parameter layouts (cuFuncGetParamInfo needs 12.4) and the image has no PTX to read them from: update the host's NVIDIA driver",
        detail: 3)
    }
    do throws(PTXError) {
      let k = try PTXModule(source: source.text).kernel(named: name)
      return k.parameters.map { ParameterSlot(offset: UInt32($0.offset), size: UInt32($0.size)) }
    } catch {
      throw BackendError(.invalidPTX, "reading '\(name)''s parameters from the image's PTX: \(error)", detail: 3)
    }
  }

  func unload() {
    guard !unloaded else { return }
    unloaded = true
    _ = backend.driver.cuCtxSetCurrent(context)
    _ = backend.driver.cuModuleUnload(module)
  }
}

/// A kernel of a module the driver loaded.
final class CUDAFunction: BackendFunction {
  unowned let backend: CUDABackend
  let context: OpaquePointer
  let function: OpaquePointer
  let info: FunctionInfo
  let slots: [ParameterSlot]

  init(
    backend: CUDABackend, context: OpaquePointer, function: OpaquePointer, info: FunctionInfo, slots: [ParameterSlot]
  ) {
    self.backend = backend
    self.context = context
    self.function = function
    self.info = info
    self.slots = slots
  }

  /// Queues the kernel on the pair's stream and returns: like CUDA's, a
  /// launch completes when queued; its fault reaches the guest at its next
  /// synchronizing command.
  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, caller: BackendCaller,
    output: inout DeviceOutput, inlineSlice: UInt64
  ) throws(BackendError) -> (any BackendWork)? {
    guard !geometry.cooperative || backend.driver.cuLaunchKernelEx != nil else {
      throw BackendError(
        .notSupported,
        "a cooperative launch needs the host driver's cuLaunchKernelEx (CUDA 12.0), which "
          + "\(backend.driver.path) lacks")
    }
    let s = try backend.stream(caller)
    if backend.driver.isVGPUShim {
      // A vGPU as the host driver runs the kernel inside cuLaunchKernel:
      // launched from a worker, it holds up no other client.
      return ShimLaunch(function: self, geometry: geometry, parameters: parameters, stream: s)
    }
    try enqueue(geometry, parameters: parameters, stream: s.stream, extra: backend.extra, size: backend.parameterSize)
    return nil
  }

  /// cuLaunchKernel with the packed parameters in `extra` (which `size` and
  /// the array belong to the calling thread).
  func enqueue(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, stream: OpaquePointer,
    extra: UnsafeMutablePointer<UnsafeMutableRawPointer?>, size: UnsafeMutablePointer<Int>
  ) throws(BackendError) {
    size.pointee = parameters.count
    // CU_LAUNCH_PARAM_BUFFER_POINTER (0x01), _BUFFER_SIZE (0x02), _END (0x00), cuda.h.
    extra[0] = UnsafeMutableRawPointer(bitPattern: 1)
    extra[1] = UnsafeMutableRawPointer(mutating: parameters.baseAddress)
    extra[2] = UnsafeMutableRawPointer(bitPattern: 2)
    extra[3] = UnsafeMutableRawPointer(size)
    extra[4] = nil
    let g = geometry.grid
    let b = geometry.block
    if geometry.cooperative, let launchEx = backend.driver.cuLaunchKernelEx {
      // cuLaunchCooperativeKernel takes no `extra`; cuLaunchKernelEx with
      // CU_LAUNCH_ATTRIBUTE_COOPERATIVE (2) does. CUlaunchConfig (cuda.h, LP64):
      // grid @0/4/8, block @12/16/20, sharedMemBytes @24, hStream @32, attrs
      // @40, numAttrs @48; one CUlaunchAttribute: id @0, value @8 (int cooperative).
      let r = withUnsafeTemporaryAllocation(byteCount: 56, alignment: 8) { c in
        withUnsafeTemporaryAllocation(byteCount: 72, alignment: 8) { a in
          c.initializeMemory(as: UInt8.self, repeating: 0)
          a.initializeMemory(as: UInt8.self, repeating: 0)
          a.storeBytes(of: UInt32(2), toByteOffset: 0, as: UInt32.self)
          a.storeBytes(of: Int32(1), toByteOffset: 8, as: Int32.self)
          for (k, v) in [g.x, g.y, g.z, b.x, b.y, b.z, geometry.sharedBytes].enumerated() {
            c.storeBytes(of: v, toByteOffset: 4 * k, as: UInt32.self)
          }
          c.storeBytes(of: UInt(bitPattern: stream), toByteOffset: 32, as: UInt.self)
          c.storeBytes(of: UInt(bitPattern: a.baseAddress), toByteOffset: 40, as: UInt.self)
          c.storeBytes(of: UInt32(1), toByteOffset: 48, as: UInt32.self)
          return launchEx(UnsafeRawPointer(c.baseAddress), function, nil, parameters.count > 0 ? extra : nil)
        }
      }
      try backend.check(r, "cuLaunchKernelEx (cooperative)")
      return
    }
    let r = backend.driver.cuLaunchKernel(
      function, g.x, g.y, g.z, b.x, b.y, b.z, geometry.sharedBytes, stream, nil, parameters.count > 0 ? extra : nil)
    try backend.check(r, "cuLaunchKernel")
  }
}

/// A launch through a vGPU host driver, made on a worker (its parameters
/// copied: the guest's staging slot is reused once the launch is handed over).
final class ShimLaunch: BackendWork, @unchecked Sendable {
  let function: CUDAFunction
  let geometry: KernelGeometry
  /// The packed parameters, copied once (16-byte aligned, as a kernel's are).
  let parameters: UnsafeMutableRawBufferPointer
  let stream: CUDABackend.PairStream

  init(
    function: CUDAFunction, geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, stream: CUDABackend.PairStream
  ) {
    self.function = function
    self.geometry = geometry
    self.parameters = .allocate(byteCount: max(parameters.count, 1), alignment: 16)
    self.parameters.copyMemory(from: parameters)
    self.count = parameters.count
    self.stream = stream
  }

  let count: Int

  deinit { parameters.deallocate() }

  func finish(caller: BackendCaller, output: inout DeviceOutput) throws(BackendError) {
    let backend = function.backend
    try backend.check(backend.driver.cuCtxSetCurrent(stream.context), "cuCtxSetCurrent")
    let extra = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 5)
    let size = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    defer {
      extra.deallocate()
      size.deallocate()
    }
    try function.enqueue(
      geometry, parameters: UnsafeRawBufferPointer(rebasing: parameters[..<count]), stream: stream.stream,
      extra: extra, size: size)
    try backend.synchronized(stream, pid: caller.pid)
  }

  /// The driver's call cannot be interrupted; the vGPU's own watchdog ends a runaway kernel.
  func cancel() {}
}

/// Catches what the driver writes to fd 1 (device `printf`, flushed at
/// sync points) through a pipe, and keeps it per process until fetched.
final class PrintfCapture: @unchecked Sendable {
  /// Held around a sync and the drain after it, so text goes to the process whose sync flushed it.
  let lock = Mutex(())
  private let readEnd: Int32
  /// Made after the pipe exists (a failed init frees nothing by itself) and
  /// freed in deinit: AddressSanitizer's leak check found 64 KiB lost with
  /// every CUDA backend the mediator closed.
  private let buffer: UnsafeMutableRawBufferPointer
  private var text: [UInt32: DeviceOutput] = [:]
  /// Where the mediator's own standard output went.
  let savedStandardOutput: Int32

  init?() {
    var saved: Int32 = -1
    // A kernel may print up to CUDA's 1 MiB printf FIFO at one sync: room for it.
    let r = vgpu_capture_stdout(1 << 20, &saved)
    guard r >= 0 else { return nil }
    readEnd = r
    savedStandardOutput = saved
    buffer = .allocate(byteCount: 65536, alignment: 16)
  }

  // The pipe stays: fd 1 may still point into it, and a closed read end would
  // turn the driver's next printf into SIGPIPE.
  deinit { buffer.deallocate() }

  /// Reads what is in the pipe for `pid` (nil: nobody's).
  func drain(into pid: UInt32?) {
    lock.withLock { _ in drainLocked(into: pid) }
  }

  func drainLocked(into pid: UInt32?) {
    fflush(nil)  // a driver that prints with stdio
    // One read when there is nothing (the common case), into a buffer made once.
    while true {
      let n = read(readEnd, buffer.baseAddress, buffer.count)
      guard n > 0 else { break }
      if let pid { text[pid, default: DeviceOutput()].append(UnsafeRawBufferPointer(rebasing: buffer[..<n])) }
    }
  }

  func forget(pid: UInt32) { lock.withLock { _ in text[pid] = nil } }

  func take(pid: UInt32, into output: inout DeviceOutput) {
    lock.withLock { _ in
      guard let t = text.removeValue(forKey: pid) else { return }
      output.append(t)
    }
  }
}

extension ReferenceDeviceConfiguration {
  /// Describes `gpu` to the guests: its name, compute capability, SM count
  /// and memory, and a UUID of its own for this BAR (derived from the GPU's
  /// and the BAR's path, so each VM on one GPU has a stable, distinct one).
  public mutating func adopt(_ gpu: CUDADeviceIdentity, barPath: String) {
    name = gpu.name
    memorySize = UInt64(gpu.totalMemory)
    computeCapability = (UInt32(gpu.computeCapabilityMajor), UInt32(gpu.computeCapabilityMinor))
    multiprocessorCount = UInt32(gpu.multiprocessorCount)
    uuid = Self.derivedUUID(gpu.uuid, barPath)
  }

  /// 16 bytes from two FNV-1a hashes (different offsets) of `uuid` + `path`,
  /// marked as an RFC 9562 version-8 (custom) UUID.
  static func derivedUUID(_ uuid: [UInt8], _ path: String) -> [UInt8] {
    func fnv(_ seed: UInt64) -> UInt64 {
      var h = seed
      for b in uuid + Array(path.utf8) {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3  // the FNV-1a 64-bit prime
      }
      return h
    }
    let a = fnv(0xcbf2_9ce4_8422_2325)  // the FNV-1a 64-bit offset basis
    let b = fnv(0x8422_2325_cbf2_9ce4)
    var bytes =
      (0..<8).map { UInt8(truncatingIfNeeded: a >> (8 * $0)) }
      + (0..<8).map { UInt8(truncatingIfNeeded: b >> (8 * $0)) }
    bytes[6] = bytes[6] & 0x0f | 0x80
    bytes[8] = bytes[8] & 0x3f | 0x80
    return bytes
  }
}

/// Loads images into one process's context; runs on a worker for a big
/// image (the driver may JIT its PTX for seconds).
struct CUDAModuleLoader: ModuleLoader, @unchecked Sendable {
  let backend: CUDABackend
  let context: OpaquePointer

  func load(_ image: UnsafeRawBufferPointer, for caller: BackendCaller) throws(BackendError) -> any BackendModule {
    // PTX text must end in a NUL for cuModuleLoadData; a fat binary or ELF
    // is read by its own header, so the extra byte is harmless.
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: image.count + 1, alignment: 16)
    defer { copy.deallocate() }
    copy.copyMemory(from: image)
    copy[image.count] = 0
    var module: OpaquePointer?
    let driver = backend.driver
    try backend.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    let r = driver.cuModuleLoadData(&module, copy.baseAddress)
    backend.printf?.drain(into: caller.pid)
    try backend.check(r, "cuModuleLoadData(\(image.count) bytes)")
    guard let module else { throw BackendError(.invalidImage, "cuModuleLoadData returned no module") }
    return CUDAModule(backend: backend, context: context, module: module, image: UnsafeRawBufferPointer(copy))
  }
}
