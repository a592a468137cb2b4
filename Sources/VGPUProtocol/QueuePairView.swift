import CSupport

/// Pointers to one queue pair's words and rings inside a mapped BAR, with the
/// ordered accesses each side needs. A plain struct: building one costs nothing,
/// and nothing here allocates, so it sits on the hot path of both sides.
///
/// Ring indices handed to these accessors must already be below `depth`; the
/// callers check values read from the other side before using them.
public struct QueuePairView: @unchecked Sendable {
  public let block: UnsafeMutableRawPointer
  public let doorbell: UnsafeMutableRawPointer
  public let submissions: UnsafeMutableRawPointer
  public let completions: UnsafeMutableRawPointer
  public let depth: UInt32
  public let index: Int

  public init(base: UnsafeMutableRawPointer, layout: BARLayout, index: Int) {
    self.index = index
    self.depth = layout.depth
    block = base + layout.queuePair(index)
    doorbell = base + layout.doorbell(index)
    submissions = base + layout.submissionRing(index)
    completions = base + layout.completionRing(index)
  }

  // MARK: Queue pair words

  @inlinable @inline(__always) public var state: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.state) }
  @inlinable @inline(__always) public func setState(_ s: QueuePairState) {
    vgpu_store_seqcst_u32(block + QueuePairBlock.state, s.rawValue)
  }
  /// Moves the state from `from` to `to` if no one else did first.
  @inlinable @inline(__always) public func exchangeState(from: QueuePairState, to: QueuePairState) -> Bool {
    vgpu_cas_u32(block + QueuePairBlock.state, from.rawValue, to.rawValue) != 0
  }
  @inlinable @inline(__always) public var ownerPID: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.ownerPID) }
  @inlinable @inline(__always) public func setOwnerPID(_ pid: UInt32) {
    vgpu_store_release_u32(block + QueuePairBlock.ownerPID, pid)
  }
  @inlinable @inline(__always) public var fault: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.fault) }
  @inlinable @inline(__always) public func setFault(_ f: QueuePairFault) {
    vgpu_store_release_u32(block + QueuePairBlock.fault, f.rawValue)
  }

  // MARK: Doorbells (guest-written)

  @inlinable @inline(__always) public var submissionTail: UInt32 {
    vgpu_load_acquire_u32(doorbell + Doorbell.submissionTail)
  }
  /// Publishes new commands. Sequentially consistent, so that the guest's
  /// following read of `deviceSleeping` cannot be ordered before it.
  @inlinable @inline(__always) public func ringSubmission(tail: UInt32) {
    vgpu_store_seqcst_u32(doorbell + Doorbell.submissionTail, tail)
  }
  @inlinable @inline(__always) public var completionHead: UInt32 {
    vgpu_load_acquire_u32(doorbell + Doorbell.completionHead)
  }
  @inlinable @inline(__always) public func ringCompletion(head: UInt32) {
    vgpu_store_release_u32(doorbell + Doorbell.completionHead, head)
  }

  // MARK: Submission ring

  /// Guest: writes a command into slot `slot`; made visible by `ringSubmission`.
  @inlinable @inline(__always) public func writeSubmission(_ e: SubmissionEntry, at slot: UInt32) {
    (submissions + Int(slot) * SubmissionEntry.size).storeBytes(of: e, as: SubmissionEntry.self)
  }
  /// Device: reads the command in slot `slot` (after an acquire load of the tail).
  @inlinable @inline(__always) public func readSubmission(at slot: UInt32) -> SubmissionEntry {
    (submissions + Int(slot) * SubmissionEntry.size).load(as: SubmissionEntry.self)
  }

  /// Device: the first word of the command in slot `slot` (opcode @0,
  /// flags @1, command id @2, reserved @4, little-endian), for a look at
  /// what it is before reading the rest.
  @inlinable @inline(__always) public func submissionHeader(at slot: UInt32) -> UInt64 {
    (submissions + Int(slot) * SubmissionEntry.size).load(as: UInt64.self)
  }

  // MARK: Completion ring

  /// Device: writes a completion, its tag word (command id, phase) last with release order.
  @inlinable @inline(__always) public func postCompletion(_ e: CompletionEntry, at slot: UInt32) {
    let p = completions + Int(slot) * CompletionEntry.size
    p.storeBytes(of: e.result0, toByteOffset: 0, as: UInt64.self)
    p.storeBytes(of: e.result1, toByteOffset: 8, as: UInt64.self)
    p.storeBytes(of: e.detail, toByteOffset: 16, as: UInt32.self)
    p.storeBytes(of: e.status, toByteOffset: 20, as: UInt16.self)
    p.storeBytes(of: e.sqHead, toByteOffset: 22, as: UInt16.self)
    p.storeBytes(of: e.following, toByteOffset: 28, as: UInt32.self)
    vgpu_store_release_u32(p + CompletionEntry.tagOffset, UInt32(e.commandID) | UInt32(e.phase) << 16)
  }

  /// Guest: the completion in `slot` if its phase bit is `phase`, else nil.
  @inlinable @inline(__always) public func completion(at slot: UInt32, phase: UInt16) -> CompletionEntry? {
    let p = completions + Int(slot) * CompletionEntry.size
    let tag = vgpu_load_acquire_u32(p + CompletionEntry.tagOffset)
    guard UInt16(truncatingIfNeeded: tag >> 16) & 1 == phase else { return nil }
    var e = p.load(as: CompletionEntry.self)
    e.commandID = UInt16(truncatingIfNeeded: tag)
    e.phase = UInt16(truncatingIfNeeded: tag >> 16)
    return e
  }

  /// Clears both rings and the device's words; device side, while nobody uses the pair.
  public func resetRings() {
    submissions.initializeMemory(as: UInt8.self, repeating: 0, count: Int(depth) * SubmissionEntry.size)
    completions.initializeMemory(as: UInt8.self, repeating: 0, count: Int(depth) * CompletionEntry.size)
    vgpu_store_release_u32(doorbell + Doorbell.submissionTail, 0)
    vgpu_store_release_u32(doorbell + Doorbell.completionHead, 0)
    vgpu_store_release_u32(block + QueuePairBlock.fault, 0)
    vgpu_store_release_u32(block + QueuePairBlock.guestWaiting, 0)
    vgpu_store_release_u32(block + QueuePairBlock.heartbeat, 0)
    vgpu_store_release_u32(block + QueuePairBlock.guestCPU, 0)
    vgpu_store_release_u32(block + QueuePairBlock.deviceCPU, 0)
  }

  // MARK: Guest heartbeat (2.3)

  /// Device: the guest's heartbeat word (any value; only its changes count).
  @inlinable @inline(__always) public var heartbeat: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.heartbeat) }
  /// Guest: one beat (atomic +1, so that a process's beats never go back).
  @inlinable @inline(__always) public func beat() {
    _ = vgpu_fetch_add_u32(block + QueuePairBlock.heartbeat, 1)
  }

  // MARK: Where each side runs (spin or sleep)

  /// The guest's CPU + 1 (0 unknown): untrusted, only a hint.
  @inlinable @inline(__always) public var guestCPU: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.guestCPU) }
  /// The device's CPU + 1 (0 unknown): untrusted, only a hint.
  @inlinable @inline(__always) public var deviceCPU: UInt32 { vgpu_load_acquire_u32(block + QueuePairBlock.deviceCPU) }
  /// Stores `cpu` as the guest's CPU if it changed (the line is the guest's own).
  @inlinable @inline(__always) public func publishGuestCPU(_ cpu: UInt32) {
    if guestCPU != cpu { vgpu_store_release_u32(block + QueuePairBlock.guestCPU, cpu) }
  }
  /// Stores `cpu` as the device's CPU if it changed (the line is the device's own).
  @inlinable @inline(__always) public func publishDeviceCPU(_ cpu: UInt32) {
    if deviceCPU != cpu { vgpu_store_release_u32(block + QueuePairBlock.deviceCPU, cpu) }
  }

  // MARK: Waking (event suppression)

  @inlinable @inline(__always) public var guestWaiting: Bool {
    vgpu_load_seqcst_u32(block + QueuePairBlock.guestWaiting) != 0
  }
  @inlinable @inline(__always) public func setGuestWaiting(_ waiting: Bool) {
    vgpu_store_seqcst_u32(block + QueuePairBlock.guestWaiting, waiting ? 1 : 0)
  }
  @inlinable @inline(__always) public var completionWakeWord: UnsafeMutableRawPointer {
    block + QueuePairBlock.completionWake
  }
  @inlinable @inline(__always) public var completionWakeValue: UInt32 { vgpu_load_acquire_u32(completionWakeWord) }
  /// Device: tells a sleeping guest that completions are there.
  @inlinable @inline(__always) public func wakeGuest() {
    _ = vgpu_fetch_add_u32(completionWakeWord, 1)
    _ = vgpu_futex_wake(completionWakeWord, Int32.max)
  }
}
