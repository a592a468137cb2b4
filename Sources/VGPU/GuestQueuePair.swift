import CSupport
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The guest's side of one queue pair: submission tail, completion head and
/// phase, the commands in flight, and this pair's staging window.
///
/// Everything read from the BAR is checked before use; a completion that
/// breaks the protocol, or a deadline that passes, marks the pair broken and
/// every later call fails with that error rather than trusting it again.
/// Nothing on the submit / ring / wait path allocates.
struct GuestQueuePair: ~Copyable, @unchecked Sendable {
  let view: QueuePairView
  let registers: RegisterBlock
  let mask: UInt32
  /// This pair's staging window: where it is in the BAR, and mapped here.
  let stagingAddress: UInt64
  let staging: UnsafeMutableRawPointer
  let slotSize: Int
  let slots: Int
  let timeoutNanoseconds: UInt64
  let deviceName: String
  /// The process serving the BAR (a mediator), checked while waiting; 0 in-process.
  let serverPID: Int32
  /// How the device is woken, and (across a VM) the eventfd this pair's
  /// MSI-X vector signals, -1 when completions are waited for on the futex.
  let wakeups: Wakeups
  let completionEventFD: Int32
  /// Why this pair could not get an interrupt, when it could not.
  let interruptNote: String?

  private var tail: UInt32 = 0
  private var deviceHead: UInt32 = 0
  private var completionHead: UInt32 = 0
  /// Completions consumed since the CQ-head doorbell was last written.
  private var unacknowledged: UInt32 = 0
  private var phase: UInt16 = 1
  private var nextID: UInt16 = 0
  private var inFlight = 0
  /// Per id slot (`id & mask`): the id in flight there, or `idle`.
  private let outstanding: UnsafeMutablePointer<UInt32>
  private let results: UnsafeMutablePointer<CompletionEntry>
  /// For pipelined copies: the command using each staging slot.
  private let slotCommand: UnsafeMutablePointer<UInt16>
  private(set) var broken: VGPUError?
  /// The device's progress register when last looked at.
  private var lastProgress: UInt64 = 0
  private static let idle = UInt32.max
  /// Spin this long for a completion before sleeping on the wake word.
  static let spinNanoseconds: UInt64 = 20_000
  /// Longest single sleep, so that a stopped device is noticed promptly.
  static let sleepSliceNanoseconds: UInt64 = 10_000_000
  /// Copies from device memory this large are written out with streaming stores.
  static let streamingCopyBytes = 8 << 20
  /// With an interrupt behind the sleep, wake-ups are not missed: sleep longer.
  static let interruptSleepSliceNanoseconds: UInt64 = 100_000_000

  init(
    view: QueuePairView, registers: RegisterBlock, layout: BARLayout, base: UnsafeMutableRawPointer,
    timeoutNanoseconds: UInt64, deviceName: String, serverPID: Int32 = 0, wakeups: Wakeups = .sameHost
  ) {
    self.serverPID = serverPID
    self.wakeups = wakeups
    (completionEventFD, interruptNote) = wakeups.completionEventFD(queuePair: view.index)
    self.view = view
    self.registers = registers
    self.mask = layout.depth - 1
    self.stagingAddress = layout.staging(view.index)
    self.staging = base + Int(stagingAddress)
    self.slotSize = Int(layout.stagingSlotSize)
    // Keep one submission slot free: a full ring would look empty (NVMe 1.4 §4.1.2).
    self.slots = min(Int(layout.slotsPerQueue), Int(layout.depth) - 1)
    self.timeoutNanoseconds = timeoutNanoseconds
    self.deviceName = deviceName
    outstanding = .allocate(capacity: Int(layout.depth))
    outstanding.initialize(repeating: Self.idle, count: Int(layout.depth))
    results = .allocate(capacity: Int(layout.depth))
    slotCommand = .allocate(capacity: Int(layout.slotsPerQueue))
  }

  deinit {
    // The vector keeps pointing at this eventfd until the pair's next owner
    // wires it again; the kernel holds its own reference meanwhile.
    if completionEventFD >= 0 { close(completionEventFD) }
    outstanding.deallocate()
    results.deallocate()
    slotCommand.deallocate()
  }

  var index: Int { view.index }
  var depth: Int { Int(mask) + 1 }

  /// The staging address (BAR offset) and local pointer of slot `s`.
  @inline(__always) func slot(_ s: Int) -> (address: UInt64, pointer: UnsafeMutableRawPointer) {
    (stagingAddress + UInt64(s * slotSize), staging + s * slotSize)
  }

  // MARK: Submit

  /// Writes a command into the ring (not yet visible: see `ring`). Returns its id.
  mutating func submit(_ entry: SubmissionEntry, _ operation: StaticString) throws(VGPUError) -> UInt16 {
    if broken != nil { throw broken! }
    while (tail + 1) & mask == deviceHead || inFlight >= depth - 1 {
      // The ring is full of commands the device has not consumed: make room.
      try waitForAnyCompletion(operation)
    }
    var id = nextID
    while outstanding[Int(UInt32(id) & mask)] != Self.idle { id &+= 1 }
    nextID = id &+ 1
    var e = entry
    e.commandID = id
    view.writeSubmission(e, at: tail)
    tail = (tail + 1) & mask
    outstanding[Int(UInt32(id) & mask)] = UInt32(id)
    inFlight += 1
    return id
  }

  /// Makes submitted commands visible and wakes the device if it sleeps.
  @inline(__always) func ring() {
    view.ringSubmission(tail: tail)
    // Seq-cst store (tail) then load (flag): the device's mirror image sees one of them.
    if registers.deviceSleeping { wakeups.wakeDevice(registers) }
  }

  /// Submits one command, waits for it, and returns its completion if it succeeded.
  mutating func execute(_ entry: SubmissionEntry, _ operation: StaticString) throws(VGPUError) -> CompletionEntry {
    let id = try submit(entry, operation)
    ring()
    let c = try wait(for: id, operation)
    guard c.status == Status.success.rawValue else { throw deviceError(c, operation) }
    return c
  }

  // MARK: Complete

  /// Waits for command `id` and hands back its completion (any status).
  mutating func wait(for id: UInt16, _ operation: StaticString) throws(VGPUError) -> CompletionEntry {
    let slot = Int(UInt32(id) & mask)
    // The clock is read from the 32nd empty poll on, every 32 (a read costs
    // more than a poll, and most waits end before).
    var started: UInt64 = 0
    var spinning = true
    var polls: UInt32 = 0
    while outstanding[slot] == UInt32(id) {
      if broken != nil { throw broken! }
      if try drain(operation) > 0 { continue }
      polls &+= 1
      if spinning && polls & 31 != 0 {
        vgpu_cpu_relax()
        continue
      }
      let now = vgpu_monotonic_ns()
      if started == 0 { started = now }
      if spinning && now &- started < Self.spinNanoseconds {
        vgpu_cpu_relax()
        continue
      }
      spinning = false
      try sleepUntilCompletion(started: &started, now: now, operation)
    }
    inFlight -= 1
    return results[slot]
  }

  /// Waits until at least one completion has been collected.
  private mutating func waitForAnyCompletion(_ operation: StaticString) throws(VGPUError) {
    var started = vgpu_monotonic_ns()
    while try drain(operation) == 0 {
      if broken != nil { throw broken! }
      try sleepUntilCompletion(started: &started, now: vgpu_monotonic_ns(), operation)
    }
  }

  /// Sleeps on the completion wake word, having said so (event suppression),
  /// for at most a slice of the remaining deadline. The deadline counts
  /// silence: while the device's progress register moves (a long command is
  /// running), `started` moves with it.
  private mutating func sleepUntilCompletion(started: inout UInt64, now: UInt64, _ operation: StaticString)
    throws(VGPUError)
  {
    try checkDevice(operation)
    let progress = registers.load64(Register.progress)
    if progress != lastProgress {
      lastProgress = progress
      started = now
    }
    let waited = now &- started
    guard waited < timeoutNanoseconds else {
      let error = VGPUError(
        .timeout, "\(operation)", device: deviceName,
        found: "no completion on queue pair \(index) within \(timeoutNanoseconds / 1_000_000) ms",
        remedy: "the device (or the mediator serving it) is not answering; check that it runs, then reopen",
        waitedNanoseconds: waited)
      broken = error
      throw error
    }
    if unacknowledged > 0 { acknowledgeCompletions() }
    let seen = view.completionWakeValue
    view.setGuestWaiting(true)
    vgpu_fence_seqcst()
    // Re-check after publishing the flag: the device may have posted just before.
    if view.completion(at: completionHead, phase: phase) == nil {
      if completionEventFD >= 0 {
        // MSI-X → VFIO eventfd: a signal that came before this wait stays readable.
        _ = vgpu_eventfd_wait(
          completionEventFD, min(timeoutNanoseconds - waited, Self.interruptSleepSliceNanoseconds))
      } else {
        _ = vgpu_futex_wait(
          view.completionWakeWord, seen, min(timeoutNanoseconds - waited, Self.sleepSliceNanoseconds))
      }
    }
    view.setGuestWaiting(false)
  }

  /// Collects every posted completion, checking each. Returns how many.
  private mutating func drain(_ operation: StaticString) throws(VGPUError) -> Int {
    var collected = 0
    while let c = view.completion(at: completionHead, phase: phase) {
      let slot = Int(UInt32(c.commandID) & mask)
      guard outstanding[slot] == UInt32(c.commandID) else {
        throw violation(operation, "a completion for command id \(c.commandID), which is not in flight")
      }
      guard c.status <= Status.highest else {
        throw violation(operation, "status \(c.status) in the completion of command \(c.commandID), not a known status")
      }
      // The reported head must lie between the last one and our tail.
      let sqHead = UInt32(c.sqHead)
      guard sqHead <= mask, (sqHead &- deviceHead) & mask <= (tail &- deviceHead) & mask else {
        throw violation(
          operation,
          "submission head \(c.sqHead) outside the commands in flight (\(deviceHead)..<\(tail), depth \(depth))")
      }
      deviceHead = sqHead
      results[slot] = c
      outstanding[slot] = Self.idle
      completionHead = (completionHead + 1) & mask
      if completionHead == 0 { phase ^= 1 }
      collected += 1
    }
    if collected > 0 {
      // The CQ-head doorbell is written in batches (NVMe 1.4 §4.1 lets the
      // host free CQ entries in bulk): each write takes the doorbell's cache
      // line from the device. It is written before the device could find the
      // CQ full — outstanding commands plus unacknowledged completions stay
      // under half the ring — and before sleeping.
      unacknowledged &+= UInt32(collected)
      if unacknowledged >= mask / 4 || ((tail &- completionHead) & mask) + unacknowledged >= mask / 2 {
        acknowledgeCompletions()
      }
    }
    return collected
  }

  /// Writes the CQ-head doorbell: the device may reuse the slots up to it.
  @inline(__always) private mutating func acknowledgeCompletions() {
    view.ringCompletion(head: completionHead)
    unacknowledged = 0
  }

  /// Fails if the device stopped, needs a reset, or faulted this queue pair.
  private mutating func checkDevice(_ operation: StaticString) throws(VGPUError) {
    let fault = view.fault
    if fault != 0 {
      throw violation(
        operation,
        "fault \(fault) on queue pair \(index): it found a doorbell index out of range and stopped serving the pair")
    }
    let status = registers.status
    if !status.contains(.ready) || status.contains(.stopping) {
      let error = VGPUError(
        .unavailable, "\(operation)", device: deviceName,
        found: "the device stopped answering (status 0x\(String(status.rawValue, radix: 16)))",
        remedy: status.contains(.needsReset)
          ? "reset the device (write 1 to its control register), then reopen it"
          : "restart the device or mediator, then reopen")
      broken = error
      throw error
    }
    // A mediator killed outright leaves its status "ready": ask the kernel instead.
    if serverPID != 0 && kill(serverPID, 0) != 0 && errno == ESRCH {
      let error = VGPUError(
        .unavailable, "\(operation)", device: deviceName, found: "its mediator (pid \(serverPID)) has exited",
        remedy: "restart vgpu-mediator, then reopen")
      broken = error
      throw error
    }
  }

  private mutating func violation(_ operation: StaticString, _ what: String) -> VGPUError {
    let error = VGPUError(
      .protocolViolation, "\(operation)", device: deviceName, found: "the device sent \(what)",
      remedy: "queue pair \(index) is no longer used; report this device bug, then reopen")
    broken = error
    return error
  }

  /// An error completion turned into an error that says what the device refused.
  func deviceError(_ c: CompletionEntry, _ operation: StaticString) -> VGPUError {
    let status = Status(rawValue: c.status) ?? .invalidValue
    var found = "the device answered '\(status)'"
    if c.detail != 0 { found += " (argument \(c.detail))" }
    switch status {
    case .outOfMemory: found += "; \(bytesText(c.result0)) free, largest free block \(bytesText(c.result1))"
    case .invalidParameters: found += "; the kernel takes \(c.result0) bytes of parameters, \(c.result1) were given"
    case .versionMismatch: found += "; the device speaks version \(c.result1 >> 16).\(c.result1 & 0xffff)"
    default: break
    }
    return VGPUError(.device(status), "\(operation)", device: deviceName, found: found)
  }

  // MARK: Pipelined copies

  /// Copies host bytes to device memory through the staging slots: while the
  /// device copies chunk k out of its slot, chunk k+1 is copied into the next.
  mutating func copyToDevice(_ destination: UInt64, from source: UnsafeRawPointer, count: Int) throws(VGPUError) {
    try pipeline(count, "copy to device") { (qp: inout Self, chunk, s, length) throws(VGPUError) in
      qp.slot(s).pointer.copyMemory(from: source + chunk * qp.slotSize, byteCount: length)
      return SubmissionEntry(
        .copyToDevice, destination + UInt64(chunk * qp.slotSize), qp.slot(s).address, UInt64(length))
    } collect: { _, _, _, _ in
    }
  }

  /// Copies device memory to host bytes: chunks land in the slots, and each
  /// is copied out as it completes while later ones are in flight.
  mutating func copyFromDevice(_ source: UInt64, into destination: UnsafeMutableRawPointer, count: Int)
    throws(VGPUError)
  {
    try pipeline(count, "copy from device") { (qp: inout Self, chunk, s, length) throws(VGPUError) in
      SubmissionEntry(.copyFromDevice, source + UInt64(chunk * qp.slotSize), qp.slot(s).address, UInt64(length))
    } collect: { qp, chunk, s, length in
      // A large copy ends in memory no cache holds: write around the cache.
      // (Not for the way in: the device reads the slot at once, from this
      // core's cache; measured, streaming into the slot halved H2D.)
      if count >= Self.streamingCopyBytes {
        vgpu_copy_nontemporal(destination + chunk * qp.slotSize, qp.slot(s).pointer, length)
      } else {
        (destination + chunk * qp.slotSize).copyMemory(from: qp.slot(s).pointer, byteCount: length)
      }
    }
  }

  /// Runs `count` bytes through the staging slots, up to `slots` chunks in
  /// flight, oldest collected first. On an error status no more chunks are
  /// started, those in flight are still collected, and the first error is thrown.
  private mutating func pipeline(
    _ count: Int, _ operation: StaticString,
    start: (inout Self, _ chunk: Int, _ slot: Int, _ length: Int) throws(VGPUError) -> SubmissionEntry,
    collect: (borrowing Self, _ chunk: Int, _ slot: Int, _ length: Int) -> Void
  ) throws(VGPUError) {
    let chunks = (count + slotSize - 1) / slotSize
    var next = 0
    var done = 0
    var firstError: VGPUError?
    while done < chunks {
      if next < chunks && next - done < slots && firstError == nil {
        let length = min(slotSize, count - next * slotSize)
        let entry = try start(&self, next, next % slots, length)
        slotCommand[next % slots] = try submit(entry, operation)
        ring()
        next += 1
      } else {
        if next == done { break }
        let length = min(slotSize, count - done * slotSize)
        try collectChunk(done % slots, expected: length, operation, &firstError)
        if firstError == nil { collect(self, done, done % slots, length) }
        done += 1
      }
    }
    if let firstError { throw firstError }
  }

  /// Waits for the chunk in slot `s`; an error status is remembered (the
  /// first one wins) so the rest of the pipeline can still be collected.
  private mutating func collectChunk(_ s: Int, expected: Int, _ operation: StaticString, _ firstError: inout VGPUError?)
    throws(VGPUError)
  {
    let c = try wait(for: slotCommand[s], operation)
    if c.status != Status.success.rawValue {
      if firstError == nil { firstError = deviceError(c, operation) }
    } else if c.result0 != UInt64(expected) {
      throw violation(operation, "a copy length of \(c.result0) bytes for a chunk of \(expected)")
    }
  }

  /// Marks the pair broken by a result that makes no sense (a length or count out of range).
  mutating func rejectResult(_ operation: StaticString, _ what: String) -> VGPUError {
    violation(operation, what)
  }
}
