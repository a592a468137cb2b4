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
  /// The mediator's socket (`unix:` devices), -1 otherwise: its hang-up says
  /// the mediator is gone, whatever PID namespace it runs in.
  let serverSocket: Int32
  /// How the device is woken, and (across a VM) the eventfd this pair's
  /// MSI-X vector signals, -1 when completions are waited for on the futex.
  let wakeups: Wakeups
  let completionEventFD: Int32
  /// Why this pair could not get an interrupt, when it could not.
  let interruptNote: String?
  /// Whether the device runs on this host (shm, unix, in-process), so that
  /// its CPU numbers and ours name the same CPUs; not across a VM boundary.
  let sameHost: Bool

  /// Where the next command goes (the guest's submission tail).
  private var tail: SubmissionCursor
  /// The device's submission head, as its last completion reported it.
  private var deviceHead: UInt32 = 0
  /// Where the next completion is expected, with its phase.
  private var completions: CompletionCursor
  /// Completions consumed since the CQ-head doorbell was last written.
  private var unacknowledged: UInt32 = 0
  private var nextID: UInt16 = 0
  /// Commands submitted whose completion the caller has not yet taken with
  /// `wait(for:)`. Each holds its id slot until then (its result is kept
  /// there), so there are at most `capacity` of them.
  private var uncollected = 0
  /// Per id slot (`id & mask`): `idle`, the id of a command the device has
  /// not answered, or that id with `answered` set once its completion is in `results`.
  private let idSlots: UnsafeMutablePointer<UInt32>
  private let results: UnsafeMutablePointer<CompletionEntry>
  /// For pipelined copies: the command using each staging slot.
  private let slotCommand: UnsafeMutablePointer<UInt16>
  private(set) var broken: VGPUError?
  /// Waits that slept at once, without spinning, because the device thread
  /// last ran on this thread's CPU (issue 17).
  private(set) var waitsOnSharedCore: UInt64 = 0
  /// Whether a doorbell had to wake the device since its last answer: then
  /// the scheduler placed its thread anew, perhaps on this core, and what
  /// `deviceCPU` says is from before. Cleared when a wait ends (the answer
  /// came with the device's CPU).
  private var deviceWasAsleep = false
  /// The device's progress register when last looked at.
  private var lastProgress: UInt64 = 0
  /// When the status register was first seen saying the device is not
  /// ready, with no completion or progress since (0: not so). See
  /// `statusGraceNanoseconds`.
  private var statusBadSince: UInt64 = 0
  private static let idle = UInt32.max
  private static let answered: UInt32 = 1 << 16
  /// How long a "not ready" status must persist, with nothing coming back
  /// from the device, before it is believed. The status word sits in memory
  /// every client can write; the device puts it back within a few
  /// housekeeping passes (it is woken for that), and a device that answers
  /// is serving whatever the word says, so a co-tenant's scribble costs at
  /// most a wait, never the device. A second: long enough that a device
  /// starved of CPU for a while is not declared dead, short enough next to
  /// the command deadline; a mediator that exits is noticed at once anyway
  /// (its pid, checked while waiting).
  static let statusGraceNanoseconds: UInt64 = 1_000_000_000
  /// Status bits that say the device does not serve, whatever `ready` says.
  static let notServing: StatusRegister = [.stopping, .needsReset, .fatal]
  /// A copy chunk's wait spins for at least this long per KiB (1 GB/s) before
  /// it sleeps, when the device runs on another core and was awake: the
  /// device copies the chunk meanwhile, and a D2H chunk (the device's copy
  /// into slot lines this core last read) took 20-47 µs for 64 KiB on this
  /// machine's two cores, past the guest's 20 µs spin, so every one paid a
  /// wake-up on top (issue 17). 256 µs for a 256 KiB slot.
  static let copySpinNanosecondsPerKiB: UInt64 = 1_000
  /// Copies from device memory this large are written out with streaming stores.
  static let streamingCopyBytes = 8 << 20
  let waitPolicy: WaitPolicy

  init(
    view: QueuePairView, registers: RegisterBlock, layout: BARLayout, base: UnsafeMutableRawPointer,
    timeoutNanoseconds: UInt64, deviceName: String, serverPID: Int32 = 0, serverSocket: Int32 = -1,
    wakeups: Wakeups = .sameHost, sameHost: Bool = true
  ) {
    self.sameHost = sameHost
    self.serverPID = serverPID
    self.serverSocket = serverSocket
    self.wakeups = wakeups
    (completionEventFD, interruptNote) = wakeups.completionEventFD(queuePair: view.index)
    self.view = view
    self.registers = registers
    self.mask = layout.depth - 1
    self.tail = SubmissionCursor(depth: layout.depth)
    self.completions = CompletionCursor(depth: layout.depth)
    self.waitPolicy = completionEventFD >= 0 ? .guestWithInterrupt : .guest
    self.stagingAddress = layout.staging(view.index)
    self.staging = base + Int(stagingAddress)
    self.slotSize = Int(layout.stagingSlotSize)
    // Keep one submission slot free: a full ring would look empty (NVMe 1.4 §4.1.2).
    self.slots = min(Int(layout.slotsPerQueue), Int(layout.depth) - 1)
    self.timeoutNanoseconds = timeoutNanoseconds
    self.deviceName = deviceName
    idSlots = .allocate(capacity: Int(layout.depth))
    idSlots.initialize(repeating: Self.idle, count: Int(layout.depth))
    results = .allocate(capacity: Int(layout.depth))
    slotCommand = .allocate(capacity: Int(layout.slotsPerQueue))
  }

  deinit {
    // The vector keeps pointing at this eventfd until the pair's next owner
    // wires it again; the kernel holds its own reference meanwhile.
    if completionEventFD >= 0 { close(completionEventFD) }
    idSlots.deallocate()
    results.deallocate()
    slotCommand.deallocate()
  }

  var index: Int { view.index }
  var depth: Int { Int(mask) + 1 }
  /// Commands that may be submitted and not yet waited for: one ring entry
  /// always stays empty, so that a full ring is not mistaken for an empty
  /// one (NVMe 1.4 §4.1.2).
  var capacity: Int { Int(mask) }

  /// The staging address (BAR offset) and local pointer of slot `s`.
  @inline(__always) func slot(_ s: Int) -> (address: UInt64, pointer: UnsafeMutableRawPointer) {
    (stagingAddress + UInt64(s * slotSize), staging + s * slotSize)
  }

  // MARK: Submit

  /// Writes a command into the ring (not yet visible: see `ring`). Returns its id.
  ///
  /// At most `capacity` commands may wait to be collected: one more is a
  /// caller's error, thrown at once (waiting could not help, as only the
  /// caller's `wait(for:)` frees their places).
  mutating func submit(_ entry: SubmissionEntry, _ operation: StaticString) throws(VGPUError) -> UInt16 {
    if let broken { throw broken }
    guard uncollected < capacity else {
      throw VGPUError(
        .invalidArgument, "\(operation)", device: deviceName,
        found:
          "\(uncollected) commands on queue pair \(index) were submitted and not waited for; the ring holds \(capacity)",
        remedy: "wait for earlier commands before submitting more (a bug in the caller)")
    }
    // The ring is full of commands the device has not consumed: collect
    // completions until it has (it owes at least one, as uncollected > 0).
    while tail.distance(to: deviceHead) == 1 {
      try waitForAnyCompletion(operation)
    }
    var id = nextID
    while idSlots[Int(UInt32(id) & mask)] != Self.idle { id &+= 1 }
    nextID = id &+ 1
    var e = entry
    e.commandID = id
    tail.push(e, into: view)
    idSlots[Int(UInt32(id) & mask)] = UInt32(id)
    uncollected += 1
    return id
  }

  /// Makes submitted commands visible and wakes the device if it sleeps.
  @inline(__always) mutating func ring() {
    // The device may answer every command in the ring before the next
    // drain: with the completions not yet acknowledged, they must fit the
    // CQ (see `CompletionCursor.shouldAcknowledge`). With a deep pipeline
    // this is where the CQ-head doorbell is written, about once a batch.
    if unacknowledged > 0
      && completions.shouldAcknowledge(unacknowledged: unacknowledged, inRing: tail.distance(from: completions.index))
    {
      acknowledgeCompletions()
    }
    view.ringSubmission(tail: tail.index)
    // Seq-cst store (tail) then load (flag): the device's mirror image sees one of them.
    if registers.deviceSleeping {
      deviceWasAsleep = true
      wakeups.wakeDevice(registers)
    }
  }

  /// Submits one command, waits for it, and returns its completion if it succeeded.
  mutating func execute(_ entry: SubmissionEntry, _ operation: StaticString) throws(VGPUError) -> CompletionEntry {
    let id = try submit(entry, operation)
    ring()
    let c = try wait(for: id, operation)
    guard c.status == CommandStatus.success.rawValue else { throw failure(c, operation) }
    return c
  }

  /// The statuses whose completion the device's error text explains.
  static let explained: Set<CommandStatus> = [
    .invalidValue, .outOfMemory, .notFound, .launchFailed, .invalidImage, .invalidParameters, .illegalAddress,
    .assertTriggered, .launchTimeout, .noBinaryForGPU, .invalidPTX,
  ]

  /// Whether the device keeps the text of a failed command (2.0, feature
  /// `kernelImages`); set once identify has negotiated it.
  var deviceExplainsFailures = false
  /// The device may answer a run of NOPs with one completion (2.4,
  /// `coalescedCompletions`, agreed in identify); without it a completion
  /// that says it answers more is a protocol violation.
  var acceptsCoalescedCompletions = false

  /// The error for a failed command, with the device's own line about it
  /// when it keeps one (a PTX syntax error's line and token, the thread
  /// that touched a bad address).
  mutating func failure(_ c: CompletionEntry, _ operation: StaticString) -> VGPUError {
    var error = deviceError(c, operation)
    // Only for refusals of what was sent (an image, a name, a kernel's
    // run): a device that is stopping or lost would not answer the question.
    guard deviceExplainsFailures, let status = CommandStatus(rawValue: c.status), Self.explained.contains(status)
    else { return error }
    // The last slot: a failed command's data is not wanted any more.
    let (address, pointer) = slot(slots - 1)
    let capacity = min(slotSize, 4096)
    guard
      let id = try? submit(Command.ErrorText(staging: address, capacity: UInt64(capacity)).entry, "error text")
    else { return error }
    ring()
    guard let t = try? wait(for: id, "error text"), t.status == CommandStatus.success.rawValue,
      t.result0 > 0, t.result0 <= UInt64(capacity)
    else { return error }
    // Untrusted text: only printable, at most `capacity` bytes.
    let text = String(decoding: UnsafeRawBufferPointer(start: pointer, count: Int(t.result0)), as: UTF8.self)
      .filter { !$0.isNewline && ($0.asciiValue.map { $0 >= 0x20 } ?? true) }
    error.found += ": " + text
    return error
  }

  // MARK: Complete

  /// Waits for command `id` and hands back its completion (any status).
  ///
  /// - Parameter spinAtLeast: spin this long before sleeping if it is longer
  ///   than the policy's spin: the device's expected time for the command
  ///   (a copy chunk), so that a wait does not give up moments before the
  ///   answer and pay a wake-up for it.
  mutating func wait(for id: UInt16, _ operation: StaticString, spinAtLeast: UInt64 = 0) throws(VGPUError)
    -> CompletionEntry
  {
    let slot = Int(UInt32(id) & mask)
    try awaitAnswer(id, operation, spinAtLeast: spinAtLeast)
    precondition(idSlots[slot] == UInt32(id) | Self.answered, "waited for command \(id), which was not submitted")
    idSlots[slot] = Self.idle
    uncollected -= 1
    return results[slot]
  }

  /// Waits until command `id` is answered (its completion kept in
  /// `results`), spinning then sleeping as `wait(for:)` says.
  private mutating func awaitAnswer(_ id: UInt16, _ operation: StaticString, spinAtLeast: UInt64 = 0)
    throws(VGPUError)
  {
    let slot = Int(UInt32(id) & mask)
    // Answered already (the rest of a batch, mostly): nothing to set up.
    guard idSlots[slot] == UInt32(id) else {
      deviceWasAsleep = false
      return
    }
    var policy = waitPolicy
    // Longer only while the device is known to run (it did not need waking):
    // a device just woken may have been put on this core, where a long spin
    // would keep it off the CPU.
    if spinAtLeast > policy.spinNanoseconds && !deviceWasAsleep { policy.spinNanoseconds = spinAtLeast }
    var spin = Spin()
    var spinning = true
    var placed = false
    while idSlots[slot] == UInt32(id) {
      if let broken { throw broken }
      if try drain(operation) > 0 { continue }
      if spinning && spin.keepPolling(policy) {
        // Spin only while the device can run meanwhile: on the core the
        // device thread last ran on, a spin keeps it off the CPU until the
        // spin ends (issue 17). Looked at once a wait, at its first clock
        // read (32 polls): a quick answer never pays for the look.
        if !placed && spin.started != 0 {
          placed = true
          if sharesCoreWithDevice() {
            spinning = false
            waitsOnSharedCore &+= 1
            continue
          }
        }
        vgpu_cpu_relax()
        continue
      }
      spinning = false
      spin.readClock()
      try sleepUntilCompletion(&spin, operation)
    }
    deviceWasAsleep = false
  }

  // MARK: Batches

  /// Writes `count` commands, `entry(i)` for i in 0..<count, into the ring
  /// under consecutive ids (not yet visible: see `ring`). Returns the first id.
  ///
  /// The checks `submit` makes per command are made once: at most
  /// `capacity` commands uncollected, room in the ring.
  mutating func submitBatch(
    count: Int, _ operation: StaticString, _ entry: (Int) -> SubmissionEntry
  ) throws(VGPUError) -> UInt16 {
    if let broken { throw broken }
    guard count > 0, uncollected + count <= capacity else {
      throw VGPUError(
        .invalidArgument, "\(operation)", device: deviceName,
        found:
          "a batch of \(count) commands, with \(uncollected) on queue pair \(index) not waited for; the ring holds \(capacity)",
        remedy: "submit at most the ring's capacity at once (a bug in the caller)")
    }
    // Room for the whole batch among the entries the device has consumed.
    while (deviceHead &- tail.index &- 1) & mask < UInt32(count) {
      try waitForAnyCompletion(operation)
    }
    // Consecutive ids whose slots are free, so that the batch is waited for
    // by its first id and count. Batches collected whole leave their ids
    // consecutive, so the first place looked at is free; the search is
    // bounded all the same.
    var first = nextID
    var run = 0
    var looked = 0
    while run < count {
      if idSlots[Int(UInt32(first &+ UInt16(truncatingIfNeeded: run)) & mask)] == Self.idle {
        run += 1
      } else {
        first = first &+ UInt16(truncatingIfNeeded: run + 1)
        run = 0
      }
      looked += 1
      guard looked <= 2 * depth else {
        throw VGPUError(
          .invalidArgument, "\(operation)", device: deviceName,
          found: "no \(count) consecutive free command ids on queue pair \(index) (\(uncollected) not waited for)",
          remedy: "wait for earlier commands before submitting a batch (a bug in the caller)")
      }
    }
    for i in 0..<count {
      let id = first &+ UInt16(truncatingIfNeeded: i)
      var e = entry(i)
      e.commandID = id
      tail.push(e, into: view)
      idSlots[Int(UInt32(id) & mask)] = UInt32(id)
    }
    nextID = first &+ UInt16(truncatingIfNeeded: count)
    uncollected += count
    return first
  }

  /// Waits for the `count` commands from id `first` (one `submitBatch`) and
  /// collects them: how many succeeded, and the completion of the first
  /// that failed (in submission order), if one did.
  mutating func waitBatch(first: UInt16, count: Int, _ operation: StaticString) throws(VGPUError)
    -> (succeeded: Int, firstFailure: CompletionEntry?)
  {
    var succeeded = 0
    var firstFailure: CompletionEntry?
    for i in 0..<count {
      let id = first &+ UInt16(truncatingIfNeeded: i)
      let slot = Int(UInt32(id) & mask)
      // Mostly answered already: the first wait of a batch drains the rest.
      if idSlots[slot] == UInt32(id) { try awaitAnswer(id, operation) }
      precondition(idSlots[slot] == UInt32(id) | Self.answered, "waited for command \(id), which was not submitted")
      idSlots[slot] = Self.idle
      if results[slot].status == CommandStatus.success.rawValue {
        succeeded += 1
      } else if firstFailure == nil {
        firstFailure = results[slot]
      }
    }
    uncollected -= count
    return (succeeded, firstFailure)
  }

  /// Publishes this thread's CPU for the device and says whether the device
  /// thread last ran on it (same host only: across a VM the numbers differ).
  @inline(__always) private func sharesCoreWithDevice() -> Bool {
    guard sameHost else { return false }
    let cpu = vgpu_current_cpu()
    view.publishGuestCPU(cpu)
    return cpu != 0 && view.deviceCPU == cpu
  }

  /// Waits until at least one completion has been collected.
  private mutating func waitForAnyCompletion(_ operation: StaticString) throws(VGPUError) {
    var spin = Spin()
    spin.readClock()
    while try drain(operation) == 0 {
      if let broken { throw broken }
      spin.readClock()
      try sleepUntilCompletion(&spin, operation)
    }
  }

  /// Sleeps on the completion wake word, having said so (event suppression),
  /// for at most a slice of the remaining deadline. The deadline counts
  /// silence: while the device's progress register moves (a long command is
  /// running), the wait's start moves with it.
  private mutating func sleepUntilCompletion(_ spin: inout Spin, _ operation: StaticString) throws(VGPUError) {
    // Whether the mediator process still lives is asked (kill + /proc, about
    // 12 µs here) only once a wait has gone on a while: asked before every
    // sleep, it was most of a command's cost whenever the two sides share a
    // core and every command sleeps (issue 17). A dead mediator wakes nobody,
    // so the first sleep ends by its slice and the next look finds it.
    try checkDevice(operation, processes: spin.elapsed >= Self.livenessCheckAfterNanoseconds)
    let progress = registers.load(Register.progress)
    if progress != lastProgress {
      lastProgress = progress
      spin.restartDeadline()
      statusBadSince = 0
    }
    let waited = spin.elapsed
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
    if !completions.ready(in: view) {
      let slice = min(timeoutNanoseconds - waited, waitPolicy.sleepSliceNanoseconds)
      if completionEventFD >= 0 {
        // MSI-X → VFIO eventfd: a signal that came before this wait stays readable.
        _ = vgpu_eventfd_wait(completionEventFD, slice)
      } else {
        _ = vgpu_futex_wait(view.completionWakeWord, seen, slice)
      }
    }
    view.setGuestWaiting(false)
  }

  /// Collects every posted completion, checking each. Returns how many.
  private mutating func drain(_ operation: StaticString) throws(VGPUError) -> Int {
    var collected = 0
    var entries: UInt32 = 0
    while let c = completions.take(from: view) {
      let slot = Int(UInt32(c.commandID) & mask)
      guard idSlots[slot] == UInt32(c.commandID) else {
        throw violation(operation, "a completion for command id \(c.commandID), which is not in flight")
      }
      guard c.status <= CommandStatus.highest else {
        throw violation(operation, "status \(c.status) in the completion of command \(c.commandID), not a known status")
      }
      // The reported head must lie between the last one and our tail.
      let sqHead = UInt32(c.sqHead)
      guard sqHead <= mask, (sqHead &- deviceHead) & mask <= (tail.index &- deviceHead) & mask else {
        throw violation(
          operation,
          "submission head \(c.sqHead) outside the commands in flight (\(deviceHead)..<\(tail.index), depth \(depth))")
      }
      if c.following != 0 { try takeFollowing(c, operation) }
      deviceHead = sqHead
      results[slot] = c
      idSlots[slot] = UInt32(c.commandID) | Self.answered
      collected += 1 + Int(c.following)
      entries &+= 1
    }
    if entries > 0 {
      // The device answers: whatever the status word says, it is serving.
      statusBadSince = 0
      // The CQ-head doorbell is written in batches (also before ringing and
      // before sleeping). Each command the device has not consumed may still
      // need a completion slot.
      unacknowledged &+= entries
      if completions.shouldAcknowledge(unacknowledged: unacknowledged, inRing: tail.distance(from: deviceHead)) {
        acknowledgeCompletions()
      }
    }
    return collected
  }

  /// Marks the commands a coalesced completion answers after its own
  /// (`following`, 2.4) as answered with success, each checked to be in flight.
  private mutating func takeFollowing(_ c: CompletionEntry, _ operation: StaticString) throws(VGPUError) {
    guard acceptsCoalescedCompletions, c.status == CommandStatus.success.rawValue, c.following < mask else {
      throw violation(
        operation,
        "a completion of command \(c.commandID) answering \(c.following) more (status \(c.status)), which was not agreed or cannot be"
      )
    }
    // A while loop: a range's iterator allocates in a debug build (HotPathTests).
    var i: UInt32 = 1
    while i <= c.following {
      let id = c.commandID &+ UInt16(truncatingIfNeeded: i)
      let slot = Int(UInt32(id) & mask)
      guard idSlots[slot] == UInt32(id) else {
        throw violation(operation, "a completion answering command id \(id), which is not in flight")
      }
      results[slot] = CompletionEntry(commandID: id, status: .success, sqHead: c.sqHead)
      idSlots[slot] = UInt32(id) | Self.answered
      i &+= 1
    }
  }

  /// Writes the CQ-head doorbell: the device may reuse the slots up to it.
  @inline(__always) private mutating func acknowledgeCompletions() {
    view.ringCompletion(head: completions.index)
    unacknowledged = 0
  }

  /// How long a wait goes on before the serving process's liveness is checked.
  static let livenessCheckAfterNanoseconds: UInt64 = 1_000_000

  /// Fails if the device stopped, needs a reset, or faulted this queue pair;
  /// with `processes`, also if the mediator serving it has exited.
  private mutating func checkDevice(_ operation: StaticString, processes: Bool) throws(VGPUError) {
    let fault = view.fault
    if fault != 0 {
      throw violation(
        operation,
        "fault \(fault) on queue pair \(index): it found a doorbell index out of range and stopped serving the pair")
    }
    let status = registers.status
    // PROTOCOL.md §20: ready with stopping, needsReset or fatal is not serving either.
    if status.contains(.ready) && status.isDisjoint(with: Self.notServing) {
      statusBadSince = 0
    } else {
      // Believed only once it persists: wake the device so that it puts a
      // forged status back, and look again at the next slice.
      let now = vgpu_monotonic_ns()
      if statusBadSince == 0 { statusBadSince = now }
      wakeups.wakeDevice(registers)
      guard now &- statusBadSince >= Self.statusGraceNanoseconds else { return }
      let error = VGPUError(
        .unavailable, "\(operation)", device: deviceName,
        found: "the device stopped answering (status 0x\(String(status.rawValue, radix: 16)))",
        remedy: status.contains(.needsReset)
          ? "reset the device (write 1 to its control register), then reopen it"
          : "restart the device or mediator, then reopen")
      broken = error
      throw error
    }
    guard processes else { return }
    // A mediator killed outright leaves its status "ready": ask the kernel
    // instead. Until its parent reaps it, a dead process is a zombie, which
    // kill(pid, 0) still finds: its state in /proc says it has exited.
    if serverPID != 0 && ((kill(serverPID, 0) != 0 && errno == ESRCH) || vgpu_process_is_zombie(serverPID) == 1) {
      let error = VGPUError(
        .unavailable, "\(operation)", device: deviceName, found: "its mediator (pid \(serverPID)) has exited",
        remedy: "restart vgpu-mediator, then reopen")
      broken = error
      throw error
    }
    if serverSocket >= 0 && vgpu_socket_hung_up(serverSocket) == 1 {
      let error = VGPUError(
        .unavailable, "\(operation)", device: deviceName, found: "its mediator closed the socket (it has exited)",
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
    let status = CommandStatus(rawValue: c.status) ?? .invalidValue
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

  /// Sends a module image in slot-sized chunks (`moduleUpload`): the first
  /// starts the upload and names it; the rest go through every slot, several
  /// in flight. Returns the upload handle for `moduleLoad`.
  mutating func upload(_ image: UnsafeRawBufferPointer) throws(VGPUError) -> UInt64 {
    guard let base = image.baseAddress else { return 0 }
    let total = UInt64(image.count)
    let first = min(image.count, slotSize)
    slot(0).pointer.copyMemory(from: base, byteCount: first)
    let c = try execute(
      Command.ModuleUpload(upload: 0, staging: slot(0).address, length: UInt64(first), offset: 0, totalLength: total)
        .entry, "upload module")
    let handle = c.result1
    let rest = image.count - first
    guard rest > 0 else { return handle }
    try pipeline(rest, chunk: slotSize, "upload module") { (qp: inout Self, chunk, s, length) throws(VGPUError) in
      let offset = first + chunk * qp.slotSize
      qp.slot(s).pointer.copyMemory(from: base + offset, byteCount: length)
      return Command.ModuleUpload(
        upload: handle, staging: qp.slot(s).address, length: UInt64(length), offset: UInt64(offset)
      ).entry
    } collect: { _, _, _, _ in
    }
    return handle
  }

  /// Copies host bytes to device memory through the staging slots: while the
  /// device copies chunk k out of its slot, chunk k+1 is copied into the next.
  mutating func copyToDevice(_ destination: UInt64, from source: UnsafeRawPointer, count: Int) throws(VGPUError) {
    try pipeline(count, chunk: slotSize, "copy to device") { (qp: inout Self, chunk, s, length) throws(VGPUError) in
      qp.slot(s).pointer.copyMemory(from: source + chunk * qp.slotSize, byteCount: length)
      return Command.CopyToDevice(
        device: destination + UInt64(chunk * qp.slotSize), staging: qp.slot(s).address, length: UInt64(length)
      ).entry
    } collect: { _, _, _, _ in
    }
  }

  /// Copies device memory to host bytes: chunks land in the slots, and each
  /// is copied out as it completes while later ones are in flight.
  mutating func copyFromDevice(_ source: UInt64, into destination: UnsafeMutableRawPointer, count: Int)
    throws(VGPUError)
  {
    try pipeline(count, chunk: slotSize, "copy from device") { (qp: inout Self, chunk, s, length) throws(VGPUError) in
      Command.CopyFromDevice(
        device: source + UInt64(chunk * qp.slotSize), staging: qp.slot(s).address, length: UInt64(length)
      ).entry
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

  /// Copies host memory the process shared with the device (2.4) to device
  /// memory: the device copies each chunk straight from the shared pages.
  mutating func copyFromHost(_ destination: UInt64, from source: UnsafeRawPointer, count: Int) throws(VGPUError) {
    let host = UInt64(UInt(bitPattern: source))
    try pipeline(count, chunk: Self.sharedChunkBytes, "copy to device") { (qp: inout Self, chunk, _, length) in
      let offset = UInt64(chunk * Self.sharedChunkBytes)
      return Command.CopyFromHost(device: destination + offset, host: host + offset, length: UInt64(length)).entry
    } collect: { _, _, _, _ in
    }
  }

  /// Copies device memory to host memory the process shared with the device (2.4).
  mutating func copyToHost(_ source: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(VGPUError) {
    let host = UInt64(UInt(bitPattern: destination))
    // As for staged copies: a large copy ends in memory no cache holds.
    let streaming = count >= Self.streamingCopyBytes
    try pipeline(count, chunk: Self.sharedChunkBytes, "copy from device") { (qp: inout Self, chunk, _, length) in
      let offset = UInt64(chunk * Self.sharedChunkBytes)
      return Command.CopyToHost(
        device: source + offset, host: host + offset, length: UInt64(length), streaming: streaming
      )
      .entry
    } collect: { _, _, _, _ in
    }
  }

  /// Copies page-locked window memory (2.4) to device memory: each chunk's
  /// staging argument is its own BAR offset in the window, so the device
  /// reads it where it lies and nothing is copied into a slot.
  mutating func copyToDevice(_ destination: UInt64, fromWindow staging: UInt64, count: Int) throws(VGPUError) {
    try pipeline(count, chunk: Self.sharedChunkBytes, "copy to device") { (qp: inout Self, chunk, _, length) in
      let offset = UInt64(chunk * Self.sharedChunkBytes)
      return Command.CopyToDevice(device: destination + offset, staging: staging + offset, length: UInt64(length))
        .entry
    } collect: { _, _, _, _ in
    }
  }

  /// Copies device memory into page-locked window memory (2.4), one copy.
  mutating func copyFromDevice(_ source: UInt64, intoWindow staging: UInt64, count: Int) throws(VGPUError) {
    // As for staged copies: a large copy ends in memory no cache holds.
    let streaming = count >= Self.streamingCopyBytes
    try pipeline(count, chunk: Self.sharedChunkBytes, "copy from device") { (qp: inout Self, chunk, _, length) in
      let offset = UInt64(chunk * Self.sharedChunkBytes)
      return Command.CopyFromDevice(
        device: source + offset, staging: staging + offset, length: UInt64(length), streaming: streaming
      ).entry
    } collect: { _, _, _, _ in
    }
  }

  /// A shared-memory copy's bytes a command: as a staging slot's, so that a
  /// device serving several clients in turns (16 commands or 20 µs) keeps
  /// its turns as short as for staged copies.
  static let sharedChunkBytes = 256 << 10

  /// Runs `count` bytes in chunks of `chunk` bytes, up to `slots` chunks in
  /// flight (through the staging slots, or straight from shared memory),
  /// oldest collected first. On an error status no more chunks are
  /// started, those in flight are still collected, and the first error is thrown.
  private mutating func pipeline(
    _ count: Int, chunk chunkBytes: Int, _ operation: StaticString,
    start: (inout Self, _ chunk: Int, _ slot: Int, _ length: Int) throws(VGPUError) -> SubmissionEntry,
    collect: (borrowing Self, _ chunk: Int, _ slot: Int, _ length: Int) -> Void
  ) throws(VGPUError) {
    let chunks = (count + chunkBytes - 1) / chunkBytes
    var next = 0
    var done = 0
    var firstError: VGPUError?
    while done < chunks {
      if next < chunks && next - done < slots && firstError == nil {
        let length = min(chunkBytes, count - next * chunkBytes)
        let entry = try start(&self, next, next % slots, length)
        slotCommand[next % slots] = try submit(entry, operation)
        ring()
        next += 1
      } else {
        if next == done { break }
        let length = min(chunkBytes, count - done * chunkBytes)
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
    let spin = (UInt64(expected) * Self.copySpinNanosecondsPerKiB) >> 10
    let c = try wait(for: slotCommand[s], operation, spinAtLeast: spin)
    if c.status != CommandStatus.success.rawValue {
      if firstError == nil { firstError = deviceError(c, operation) }
    } else if c.result0 != UInt64(expected) {
      throw violation(operation, "a copy length of \(c.result0) bytes for a chunk of \(expected)")
    }
  }
}
