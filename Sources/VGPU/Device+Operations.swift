import VGPUProtocol

extension Device {
  // MARK: Memory

  /// Free and total device memory, as `cuMemGetInfo` reports them.
  public func memoryInfo() throws(VGPUError) -> (free: UInt64, total: UInt64) {
    let c = try withQueuePair { (qp) throws(VGPUError) in try qp.execute(Command.MemoryInfo().entry, "memory info") }
    guard c.result0 <= c.result1 else {
      throw VGPUError(
        .protocolViolation, "memory info", device: info.spec.description,
        found: "the device reports \(c.result0) bytes free of \(c.result1)")
    }
    return (c.result0, c.result1)
  }

  /// Allocates `bytes` of device memory, aligned to at least 256 bytes.
  public func allocate(_ bytes: Int, alignment: Int = 0) throws(VGPUError) -> DevicePointer {
    guard bytes > 0, alignment >= 0 else {
      throw VGPUError(
        .invalidArgument, "allocate \(bytes) bytes", device: info.spec.description, found: "the size must be positive")
    }
    let c = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.Alloc(length: UInt64(bytes), alignment: UInt64(alignment)).entry, "allocate")
    }
    guard c.result0 != 0, c.result1 >= UInt64(bytes) else {
      throw VGPUError(
        .protocolViolation, "allocate \(bytesText(UInt64(bytes)))", device: info.spec.description,
        found: "the device answered address 0x\(String(c.result0, radix: 16)) of \(c.result1) bytes")
    }
    return DevicePointer(c.result0)
  }

  public func free(_ pointer: DevicePointer) throws(VGPUError) {
    _ = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.Free(address: pointer.address).entry, "free")
    }
  }

  // MARK: Copies

  /// Copies `source` into device memory at `destination`: from shared host
  /// memory or the page-locked window (`allocateSharedHostMemory`) in one
  /// copy, the device's; from any other memory through the staging slots.
  public func copy(to destination: DevicePointer, from source: UnsafeRawBufferPointer) throws(VGPUError) {
    guard let base = source.baseAddress, source.count > 0 else { return }
    switch pageLocked(base, source.count) {
    case .shared:
      return try withQueuePair { (qp) throws(VGPUError) in
        try qp.copyFromHost(destination.address, from: base, count: source.count)
      }
    case .window(let staging):
      return try withQueuePair { (qp) throws(VGPUError) in
        try qp.copyToDevice(destination.address, fromWindow: staging, count: source.count)
      }
    case nil: break
    }
    try withQueuePair { (qp) throws(VGPUError) in
      try qp.copyToDevice(destination.address, from: base, count: source.count)
    }
  }

  /// Copies device memory at `source` into `destination` (its whole length).
  public func copy(from source: DevicePointer, into destination: UnsafeMutableRawBufferPointer) throws(VGPUError) {
    guard let base = destination.baseAddress, destination.count > 0 else { return }
    switch pageLocked(base, destination.count) {
    case .shared:
      return try withQueuePair { (qp) throws(VGPUError) in
        try qp.copyToHost(source.address, into: base, count: destination.count)
      }
    case .window(let staging):
      return try withQueuePair { (qp) throws(VGPUError) in
        try qp.copyFromDevice(source.address, intoWindow: staging, count: destination.count)
      }
    case nil: break
    }
    try withQueuePair { (qp) throws(VGPUError) in
      try qp.copyFromDevice(source.address, into: base, count: destination.count)
    }
  }

  // Arrays are read through their spans: Array.withUnsafeBytes only
  // rethrows untyped errors, and Span's keeps VGPUError without a Result.
  public func copy(to destination: DevicePointer, from bytes: [UInt8]) throws(VGPUError) {
    try bytes.span.withUnsafeBytes { (b) throws(VGPUError) in try copy(to: destination, from: b) }
  }

  public func read(_ source: DevicePointer, count: Int) throws(VGPUError) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var span = out.mutableSpan
    try span.withUnsafeMutableBytes { (b) throws(VGPUError) in try copy(from: source, into: b) }
    return out
  }

  /// Copies `count` bytes between device buffers (they may overlap).
  public func copy(to destination: DevicePointer, from source: DevicePointer, count: Int) throws(VGPUError) {
    guard count > 0 else { return }
    _ = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(
        Command.CopyDeviceToDevice(destination: destination.address, source: source.address, length: UInt64(count))
          .entry,
        "copy device to device")
    }
  }

  /// Sets `count` elements of `elementSize` bytes (1, 2 or 4) to `value`, as cuMemsetD8/D16/D32.
  public func memset(_ destination: DevicePointer, value: UInt32, elementSize: Int = 1, count: Int) throws(VGPUError) {
    _ = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(
        Command.Memset(
          address: destination.address, value: UInt64(value), elementSize: UInt64(elementSize), count: UInt64(count)
        ).entry, "memset")
    }
  }

  // MARK: Modules and launches

  /// Loads a module image (docs/PROTOCOL.md, "Modules"): a fat binary, a
  /// cubin, PTX text (with its NUL or without), sent unchanged; the device
  /// chooses what to run.
  public func loadModule(_ image: [UInt8]) throws(VGPUError) -> ModuleHandle {
    try image.span.withUnsafeBytes { (b) throws(VGPUError) in try loadModule(b) }
  }

  /// Loads a module image of any size up to 512 MiB: one that fits a
  /// staging slot goes in one command; a larger one in chunks through every
  /// slot of a queue pair (`moduleUpload`), pipelined, then `moduleLoad`.
  public func loadModule(_ image: UnsafeRawBufferPointer) throws(VGPUError) -> ModuleHandle {
    let c = try withQueuePair { (qp) throws(VGPUError) -> CompletionEntry in
      if image.count <= qp.slotSize {
        let (address, pointer) = qp.slot(0)
        if let b = image.baseAddress { pointer.copyMemory(from: b, byteCount: image.count) }
        return try qp.execute(Command.ModuleLoad(staging: address, length: UInt64(image.count)).entry, "load module")
      }
      guard info.features.contains(.kernelImages) else {
        throw VGPUError(
          .unsupported, "load module", device: self.info.spec.description,
          found:
            "a \(image.count)-byte image, larger than one staging slot, and the device has no uploads (protocol 2.0)",
          remedy: "update the device or vgpu-mediator")
      }
      guard UInt64(image.count) <= Command.ModuleUpload.maximumImageBytes else {
        throw VGPUError(
          .invalidArgument, "load module", device: self.info.spec.description,
          found: "a \(image.count)-byte image; at most \(Command.ModuleUpload.maximumImageBytes >> 20) MiB are taken")
      }
      let upload = try qp.upload(image)
      return try qp.execute(Command.ModuleLoad(upload: upload).entry, "load module")
    }
    return ModuleHandle(raw: c.result0)
  }

  /// The names of a module's kernels, in the image's order
  /// (cuLibraryGetKernelCount, cuLibraryEnumerateKernels).
  public func kernelNames(in module: ModuleHandle) throws(VGPUError) -> [String] {
    guard info.features.contains(.kernelImages) else {
      throw VGPUError(
        .unsupported, "list kernels", device: info.spec.description,
        found: "the device does not list kernels (protocol 2.0, feature kernelImages)",
        remedy: "look kernels up by name, or update the device")
    }
    return try withQueuePair { (qp) throws(VGPUError) -> [String] in
      let (address, pointer) = qp.slot(0)
      let c = try qp.execute(
        Command.ModuleKernels(module: module.raw, staging: address, capacity: UInt64(qp.slotSize)).entry,
        "list kernels")
      let reply = Command.ModuleKernels.Reply(c)
      // Untrusted: within the slot, NUL-separated, no more names than the count.
      guard reply.written <= UInt64(qp.slotSize) else {
        throw VGPUError(
          .protocolViolation, "list kernels", device: self.info.spec.description,
          found: "\(reply.written) bytes of names in a \(qp.slotSize)-byte slot")
      }
      let bytes = UnsafeRawBufferPointer(start: pointer, count: Int(reply.written))
      let names = bytes.split(separator: 0, omittingEmptySubsequences: true).prefix(Int(clamping: reply.count))
      return names.map { String(decoding: $0, as: UTF8.self) }
    }
  }

  /// A module variable's device address and size (`cuModuleGetGlobal`).
  public func global(_ name: String, in module: ModuleHandle) throws(VGPUError) -> (
    address: DevicePointer, size: Int
  ) {
    let bytes = Array(name.utf8)
    let c = try withStaged(bytes, "get global") { (qp, address) throws(VGPUError) in
      try qp.execute(
        Command.ModuleGlobal(module: module.raw, name: address, nameLength: UInt64(bytes.count)).entry, "get global")
    }
    let reply = Command.ModuleGlobal.Reply(c)
    return (DevicePointer(reply.address), Int(clamping: reply.size))
  }

  /// Takes the device output (kernels' `printf`) held for this process:
  /// the bytes, and how many were dropped because the device's buffer was
  /// full. Empty when the device keeps none (before protocol 2.0).
  public func takeOutput() throws(VGPUError) -> (bytes: [UInt8], dropped: UInt64) {
    guard info.features.contains(.kernelImages) else { return ([], 0) }
    var bytes: [UInt8] = []
    var dropped: UInt64 = 0
    try withQueuePair { (qp) throws(VGPUError) in
      let (address, pointer) = qp.slot(0)
      while true {
        let c = try qp.execute(Command.Output(staging: address, capacity: UInt64(qp.slotSize)).entry, "take output")
        let reply = Command.Output.Reply(c)
        guard reply.written <= UInt64(qp.slotSize) else {
          throw VGPUError(
            .protocolViolation, "take output", device: self.info.spec.description,
            found: "the device says it wrote \(reply.written) bytes into a \(qp.slotSize)-byte slot")
        }
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: pointer, count: Int(reply.written)))
        dropped &+= UInt64(reply.dropped)
        // Bounded: what a device says is left is not believed past its 1 MiB buffer.
        if reply.remaining == 0 || reply.written == 0 || bytes.count > 4 << 20 { break }
      }
    }
    return (bytes, dropped)
  }

  public func unloadModule(_ module: ModuleHandle) throws(VGPUError) {
    _ = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.ModuleUnload(module: module.raw).entry, "unload module")
    }
  }

  /// Looks a kernel up by name in a loaded module. With feature
  /// `functionInfo`, the device also says how its parameters are laid out
  /// (``FunctionHandle/layout``), which is what packing `kernelParams` needs.
  public func function(_ name: String, in module: ModuleHandle) throws(VGPUError) -> FunctionHandle {
    let bytes = Array(name.utf8)
    let wantsLayout = info.features.contains(.functionInfo)
    let deviceName = info.spec.description
    return try withStaged(bytes, "get function") { (qp, address) throws(VGPUError) in
      // The layout comes back right after the name, in the same slot.
      let replyOffset = (bytes.count + 7) & ~7
      let capacity = wantsLayout ? max(0, qp.slotSize - replyOffset) : 0
      let c = try qp.execute(
        Command.GetFunction(
          module: module.raw, name: address, nameLength: UInt64(bytes.count),
          reply: wantsLayout ? address + UInt64(replyOffset) : 0, replyCapacity: UInt64(capacity)
        ).entry, "get function")
      let reply = Command.GetFunction.Reply(c)
      guard reply.parameterBytes <= UInt64(FunctionInfo.maximumParameterBytes) else {
        throw VGPUError(
          .protocolViolation, "get function \(name)", device: deviceName,
          found: "a parameter size of \(reply.parameterBytes) bytes")
      }
      var layout: ParameterLayout?
      var functionInfo: FunctionInfo?
      if wantsLayout {
        // Untrusted: every slot is checked to lie inside the buffer.
        guard
          let (i, l) = ParameterLayout.read(
            from: qp.slot(0).pointer + replyOffset, capacity: capacity, parameterBytes: reply.parameterBytes)
        else {
          // Fails this call only: the queue pair itself is in order.
          throw VGPUError(
            .protocolViolation, "get function \(name)", device: deviceName,
            found: "a parameter layout that does not fit its \(reply.parameterBytes)-byte buffer or the reply's room",
            remedy: "report this device bug; the function cannot be launched with kernelParams")
        }
        layout = l
        functionInfo = i
      }
      return FunctionHandle(
        raw: reply.function, parameterSize: Int(reply.parameterBytes), layout: layout, info: functionInfo)
    }
  }

  /// Launches `function` with its packed parameter buffer and waits for it to finish.
  public func launch(
    _ function: FunctionHandle, grid: Dimensions, block: Dimensions, sharedMemory: UInt32 = 0,
    parameters: [UInt8], stream: StreamHandle? = nil, cooperative: Bool = false
  ) throws(VGPUError) {
    try parameters.span.withUnsafeBytes { (p) throws(VGPUError) in
      try launch(
        function, grid: grid, block: block, sharedMemory: sharedMemory, parameters: p, stream: stream,
        cooperative: cooperative)
    }
  }

  /// Launches `function` with the packed parameters at `parameters` (the
  /// form `cuLaunchKernel` gets with CU_LAUNCH_PARAM_BUFFER_POINTER) and
  /// waits for it to finish. Allocates nothing.
  public func launch(
    _ function: FunctionHandle, grid: Dimensions, block: Dimensions, sharedMemory: UInt32 = 0,
    parameters: UnsafeRawBufferPointer, stream: StreamHandle? = nil, cooperative: Bool = false
  ) throws(VGPUError) {
    if cooperative { try requireCooperative() }
    // Closures passed straight down, never stored: a stored one would cost a heap context per launch.
    _ = try withStaged(parameters, "launch", on: stream?.queuePair) { (qp, address) throws(VGPUError) in
      try qp.execute(
        Command.Launch(
          function: function.raw, grid: grid, block: block, sharedBytes: sharedMemory,
          parameterLength: UInt32(parameters.count), parameters: address, stream: stream?.raw ?? 0,
          cooperative: cooperative
        ).entry, "launch")
    }
  }

  /// Launches `function`, packing its parameters from `arguments` (one
  /// pointer per parameter, as `cuLaunchKernel`'s `kernelParams`) by the
  /// layout the device reported, straight into the staging slot.
  public func launch(
    _ function: FunctionHandle, grid: Dimensions, block: Dimensions, sharedMemory: UInt32 = 0,
    arguments: UnsafePointer<UnsafeMutableRawPointer?>, stream: StreamHandle? = nil, cooperative: Bool = false
  ) throws(VGPUError) {
    if cooperative { try requireCooperative() }
    guard let layout = function.layout else {
      throw VGPUError(
        .unsupported, "launch", device: self.info.spec.description,
        found: "the device did not report the kernel's parameter layout (feature functionInfo, protocol 1.3)",
        remedy: "pass the packed parameter buffer instead, or update the device")
    }
    // The device's name is formatted only for an error: it costs an allocation.
    try withQueuePair(stream?.queuePair) { (qp) throws(VGPUError) in
      guard layout.bufferSize <= qp.slotSize else {
        throw VGPUError(
          .invalidArgument, "launch", device: self.info.spec.description,
          found: "\(layout.bufferSize) bytes of parameters do not fit the \(qp.slotSize)-byte staging slot")
      }
      let (address, pointer) = qp.slot(0)
      let slots = layout.slots
      var i = 0
      while i < slots.count {
        guard let value = arguments[i] else {
          throw VGPUError(
            .invalidArgument, "launch", device: self.info.spec.description,
            found: "kernel parameter \(i) is a null pointer")
        }
        (pointer + Int(slots[i].offset)).copyMemory(from: value, byteCount: Int(slots[i].size))
        i += 1
      }
      _ = try qp.execute(
        Command.Launch(
          function: function.raw, grid: grid, block: block, sharedBytes: sharedMemory,
          parameterLength: UInt32(layout.bufferSize), parameters: address, stream: stream?.raw ?? 0,
          cooperative: cooperative
        ).entry, "launch")
    }
  }

  /// Fails as unsupported, naming `what` the device lacks, unless it negotiated `feature`
  /// (which came with protocol `since`): an older device is never sent the command.
  private func requireFeature(
    _ feature: FeatureBits, _ operation: String, lacking what: String, since: String
  ) throws(VGPUError) {
    guard !info.features.contains(feature) else { return }
    let version = info.protocolVersion
    throw VGPUError(
      .unsupported, operation, device: info.spec.description,
      found:
        "the device speaks protocol \(version.major).\(version.minor) without \(what) (feature 0x\(String(feature.rawValue, radix: 16)) not negotiated)",
      remedy: "update the device or vgpu-mediator (\(what) came with protocol \(since))")
  }

  /// A cooperative launch needs protocol 2.2: an older device would refuse the launch's flag.
  private func requireCooperative() throws(VGPUError) {
    try requireFeature(.cooperativeLaunch, "launch cooperatively", lacking: "cooperative launches", since: "2.2")
  }

  /// Puts `bytes` in the first staging slot of a queue pair, then runs `body`.
  private func withStaged<R: Sendable>(
    _ bytes: [UInt8], _ operation: String, on queuePair: Int? = nil,
    _ body: (inout GuestQueuePair, UInt64) throws(VGPUError) -> R
  ) throws(VGPUError) -> R {
    try bytes.span.withUnsafeBytes { (b) throws(VGPUError) in try withStaged(b, operation, on: queuePair, body) }
  }

  private func withStaged<R: Sendable>(
    _ bytes: UnsafeRawBufferPointer, _ operation: String, on queuePair: Int? = nil,
    _ body: (inout GuestQueuePair, UInt64) throws(VGPUError) -> R
  ) throws(VGPUError) -> R {
    return try withQueuePair(queuePair) { (qp) throws(VGPUError) in
      guard bytes.count <= qp.slotSize else {
        throw VGPUError(
          .invalidArgument, operation, device: self.info.spec.description,
          found: "\(bytes.count) bytes do not fit the \(qp.slotSize)-byte staging slot")
      }
      let (address, pointer) = qp.slot(0)
      if let base = bytes.baseAddress { pointer.copyMemory(from: base, byteCount: bytes.count) }
      return try body(&qp, address)
    }
  }

  // MARK: Streams, events, synchronization

  public func createStream() throws(VGPUError) -> StreamHandle {
    // Spread streams over the queue pairs so independent streams go in parallel.
    let index = Int(nextStream.add(1, ordering: .relaxed).oldValue) % info.queuePairs
    let c = try withQueuePair(index) { (qp) throws(VGPUError) in
      try qp.execute(Command.StreamCreate().entry, "create stream")
    }
    return StreamHandle(raw: c.result0, queuePair: index)
  }

  public func destroyStream(_ stream: StreamHandle) throws(VGPUError) {
    _ = try withQueuePair(stream.queuePair) { (qp) throws(VGPUError) in
      try qp.execute(Command.StreamDestroy(stream: stream.raw).entry, "destroy stream")
    }
  }

  /// Waits for a stream's work (every call is already synchronous; this also
  /// checks with the device that the stream is live).
  public func synchronize(_ stream: StreamHandle) throws(VGPUError) {
    _ = try withQueuePair(stream.queuePair) { (qp) throws(VGPUError) in
      try qp.execute(Command.StreamSynchronize(stream: stream.raw).entry, "synchronize stream")
    }
  }

  /// Waits for all work of this client on every queue pair.
  public func synchronize() throws(VGPUError) {
    for i in 0..<info.queuePairs {
      _ = try withQueuePair(i) { (qp) throws(VGPUError) in
        try qp.execute(Command.StreamSynchronize().entry, "synchronize")
      }
    }
  }

  public func createEvent() throws(VGPUError) -> EventHandle {
    let c = try withQueuePair { (qp) throws(VGPUError) in try qp.execute(Command.EventCreate().entry, "create event")
    }
    return EventHandle(raw: c.result0)
  }

  public func destroyEvent(_ event: EventHandle) throws(VGPUError) {
    _ = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.EventDestroy(event: event.raw).entry, "destroy event")
    }
  }

  public func record(_ event: EventHandle, on stream: StreamHandle? = nil) throws(VGPUError) {
    let body = { (qp: inout GuestQueuePair) throws(VGPUError) in
      _ = try qp.execute(Command.EventRecord(event: event.raw, stream: stream?.raw ?? 0).entry, "record event")
    }
    if let stream { try withQueuePair(stream.queuePair, body) } else { try withQueuePair(body) }
  }

  /// Whether the work before the event is done (always, once recorded: calls are synchronous).
  public func query(_ event: EventHandle) throws(VGPUError) -> Bool {
    do throws(VGPUError) {
      _ = try withQueuePair { (qp) throws(VGPUError) in
        try qp.execute(Command.EventQuery(event: event.raw).entry, "query event")
      }
      return true
    } catch {
      if error.status == .notReady { return false }
      throw error
    }
  }

  /// Nanoseconds between two recorded events.
  public func elapsed(from start: EventHandle, to end: EventHandle) throws(VGPUError) -> UInt64 {
    try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.EventElapsed(start: start.raw, end: end.raw).entry, "event elapsed time")
    }.result0
  }

  // MARK: Statistics and round trips

  /// Activity counters of this process, one queue pair, or the whole device.
  public func statistics(_ scope: StatisticsScope = .process) throws(VGPUError) -> StatisticsRecord {
    try withQueuePair { (qp) throws(VGPUError) in
      let (address, pointer) = qp.slot(0)
      _ = try qp.execute(
        Command.Statistics(scope: scope, staging: address).entry, "statistics")
      return pointer.load(as: StatisticsRecord.self)
    }
  }

  /// Every process using the device (holding active queue pairs), with its
  /// memory, launches and busy time: what NVML's process lists report.
  ///
  /// Needs protocol 1.1 (feature `processList`); a 1.0 device is never sent
  /// the command, and the call fails as unsupported.
  public func processes() throws(VGPUError) -> [ProcessRecord] {
    try requireFeature(.processList, "list processes", lacking: "the process list", since: "1.1")
    return try processRecords(ProcessRecord.self, size: ProcessRecord.size, recordSize: 0)
  }

  /// Every process using the device, with its copies by direction and its
  /// commands besides what ``processes()`` gives: what `pcitool top` shows.
  ///
  /// Needs protocol 2.1 (feature `processActivity`); an older device is
  /// never sent the command, and the call fails as unsupported.
  public func processActivity() throws(VGPUError) -> [ProcessActivityRecord] {
    try requireFeature(
      .processActivity, "list processes with their activity", lacking: "activity records", since: "2.1")
    return try processRecords(
      ProcessActivityRecord.self, size: ProcessActivityRecord.size, recordSize: UInt64(ProcessActivityRecord.size))
  }

  /// Sends `processes` for records of `size` bytes and reads back those written.
  private func processRecords<R: Sendable>(_: R.Type, size: Int, recordSize: UInt64) throws(VGPUError) -> [R] {
    let name = info.spec.description
    return try withQueuePair { (qp) throws(VGPUError) in
      let (address, pointer) = qp.slot(0)
      let capacity = qp.slotSize / size
      let c = try qp.execute(
        Command.Processes(recordSize: recordSize, staging: address, length: UInt64(capacity * size)).entry,
        "list processes")
      // Checked before reading a byte: the count decides how far we read.
      guard c.result0 <= UInt64(capacity), c.result0 <= c.result1 else {
        throw VGPUError(
          .protocolViolation, "list processes", device: name,
          found: "the device wrote \(c.result0) records of \(c.result1) processes into room for \(capacity)")
      }
      return (0..<Int(c.result0)).map { pointer.loadUnaligned(fromByteOffset: $0 * size, as: R.self) }
    }
  }

  /// One command that does nothing: the protocol's round trip.
  @inline(__always)
  public func nop() throws(VGPUError) {
    _ = try withQueuePair { (qp) throws(VGPUError) in try qp.execute(Command.Nop().entry, "nop") }
  }

  /// `count` NOPs submitted together, one doorbell per batch of up to `batch`,
  /// as many batches in flight as the ring holds (see ``execute(_:batch:)``).
  /// Throws the first failure: a NOP that fails means a device in trouble.
  public func nops(_ count: Int, batch: Int = 32) throws(VGPUError) {
    let outcome = try runBatches(count, batch: batch, "nop") { _ in Command.Nop().entry }
    if let error = outcome.firstError { throw error }
  }

  /// Runs `entries` (commands built with `Command`; their ids are set here)
  /// on one queue pair, one doorbell per batch of up to `batch` of them,
  /// and waits for all of them.
  ///
  /// As many whole batches are kept in flight as the ring holds: the device
  /// works through them while the next is written (and goes on while this
  /// thread is descheduled), and each batch is waited for with one call,
  /// not one wait per command. A command that fails does not stop the
  /// rest: the outcome says how many succeeded and which failed first.
  /// Throws only when the queue pair itself fails (a deadline, a protocol
  /// violation, a lost device). Allocates nothing.
  public func execute(_ entries: UnsafeBufferPointer<SubmissionEntry>, batch: Int = 32) throws(VGPUError)
    -> BatchOutcome
  {
    guard let base = entries.baseAddress else { return BatchOutcome(completed: 0, firstError: nil) }
    return try runBatches(entries.count, batch: batch, "batch") { base[$0] }
  }

  /// `count` commands, `entry(i)`, in batches of up to `batch` (at most
  /// half the ring, so that two always fit), as many in flight as fit.
  @inline(__always)
  func runBatches(_ count: Int, batch: Int, _ operation: StaticString, _ entry: (Int) -> SubmissionEntry)
    throws(VGPUError) -> BatchOutcome
  {
    guard count > 0 else { return BatchOutcome(completed: 0, firstError: nil) }
    return try withQueuePair { (qp) throws(VGPUError) -> BatchOutcome in
      let n = max(1, min(batch, qp.capacity / 2))
      let limit = qp.capacity / n * n
      var window = BatchWindow()
      var submitted = 0
      while submitted < count || window.count > 0 {
        let k = min(n, count - submitted)
        if k > 0 && window.count + k <= limit {
          let from = submitted
          let first = try qp.submitBatch(count: k, operation) { entry(from + $0) }
          qp.ring()
          submitted += k
          // Not next to those in flight (ids were skipped): collect those first.
          if window.count > 0 && first != window.oldest &+ UInt16(truncatingIfNeeded: window.count) {
            try window.collect(window.count, from: &qp, operation)
          }
          if window.count == 0 { window.oldest = first }
          window.count += k
        } else {
          try window.collect(min(n, window.count), from: &qp, operation)
        }
      }
      return window.outcome
    }
  }
}

/// The commands of `runBatches` in flight: ids `oldest ..< oldest + count`,
/// in submission order (batches take consecutive ids). A struct with a
/// mutating method, not a local function: the variables a local function
/// captures are boxed on the heap in a debug build.
struct BatchWindow {
  var oldest: UInt16 = 0
  var count = 0
  var outcome = BatchOutcome(completed: 0, firstError: nil)

  /// Waits for the oldest `m` and adds them to the outcome.
  mutating func collect(_ m: Int, from qp: inout GuestQueuePair, _ operation: StaticString) throws(VGPUError) {
    let r = try qp.waitBatch(first: oldest, count: m, operation)
    outcome.completed += r.succeeded
    if outcome.firstError == nil, let failure = r.firstFailure {
      outcome.firstError = qp.deviceError(failure, operation)
    }
    oldest &+= UInt16(truncatingIfNeeded: m)
    count -= m
  }
}

/// What a batch of commands came to (``Device/execute(_:batch:)``).
public struct BatchOutcome: Sendable {
  /// Commands that succeeded.
  public var completed: Int
  /// The first command, in submission order, that failed, as an error
  /// saying what the device refused; nil when every one succeeded.
  public var firstError: VGPUError?

  public init(completed: Int, firstError: VGPUError?) {
    self.completed = completed
    self.firstError = firstError
  }
}
