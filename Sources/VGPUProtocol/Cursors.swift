import CSupport

/// A position in the submission ring: the guest's tail (where it writes
/// next) or the device's head (where it reads next). Indices wrap at the
/// depth, a power of two; one entry always stays empty, so that a full ring
/// is not mistaken for an empty one (NVMe 1.4 §4.1.2).
@frozen
public struct SubmissionCursor: Sendable, Equatable {
  @usableFromInline var _index: UInt32
  @inlinable public var index: UInt32 { _index }
  public let mask: UInt32

  @inlinable public init(depth: UInt32, index: UInt32 = 0) {
    self.mask = depth &- 1
    self._index = index & mask
  }

  /// Guest: writes `entry` at the cursor and moves on (visible once the tail doorbell is rung).
  @inlinable @inline(__always)
  public mutating func push(_ entry: SubmissionEntry, into view: QueuePairView) {
    view.writeSubmission(entry, at: index)
    _index = (index &+ 1) & mask
  }

  /// Device: reads the entry at the cursor and moves on.
  @inlinable @inline(__always)
  public mutating func pop(from view: QueuePairView) -> SubmissionEntry {
    let e = view.readSubmission(at: index)
    _index = (index &+ 1) & mask
    return e
  }

  /// Device: moves past the entry at the cursor (read in part with
  /// `QueuePairView.submissionHeader`).
  @inlinable @inline(__always)
  public mutating func skip() { _index = (index &+ 1) & mask }

  /// Entries from this cursor up to `other` (going forward, wrapping).
  @inlinable @inline(__always) public func distance(to other: UInt32) -> UInt32 { (other &- index) & mask }

  /// Entries from `other` up to this cursor (going forward, wrapping).
  @inlinable @inline(__always) public func distance(from other: UInt32) -> UInt32 { (index &- other) & mask }
}

/// A position in the completion ring with its phase: the device's tail
/// (where it posts next, with the phase it writes) or the guest's head (where
/// it looks next, for the phase it expects). The phase starts at 1 and
/// inverts each time the index wraps to 0 (NVMe 1.4 §4.6, "Phase Tag"), so
/// an entry left from the last lap is never taken for a new one.
@frozen
public struct CompletionCursor: Sendable, Equatable {
  @usableFromInline var _index: UInt32
  @inlinable public var index: UInt32 { _index }
  @usableFromInline var _phase: UInt16
  @inlinable public var phase: UInt16 { _phase }
  public let mask: UInt32

  @inlinable public init(depth: UInt32) {
    self.mask = depth &- 1
    self._index = 0
    self._phase = 1
  }

  @inlinable @inline(__always) mutating func advance() {
    _index = (index &+ 1) & mask
    if index == 0 { _phase ^= 1 }
  }

  /// Device: posts `c` (its command id and submission head already set)
  /// with the current phase, tag word last, and moves on.
  @inlinable @inline(__always)
  public mutating func post(_ c: CompletionEntry, into view: QueuePairView) {
    var e = c
    e.phase = phase
    view.postCompletion(e, at: index)
    advance()
  }

  /// Guest: the completion at the cursor if the device has posted it (its
  /// phase is the expected one); moves on past it.
  @inlinable @inline(__always)
  public mutating func take(from view: QueuePairView) -> CompletionEntry? {
    guard let c = view.completion(at: index, phase: phase) else { return nil }
    advance()
    return c
  }

  /// Guest: whether a completion is waiting at the cursor, without taking it.
  @inlinable @inline(__always) public func ready(in view: QueuePairView) -> Bool {
    view.completion(at: index, phase: phase) != nil
  }

  /// Guest: whether to write the CQ-head doorbell now, with `unacknowledged`
  /// completions consumed since it was last written and `inRing` commands
  /// submitted past the consumed ones. Each write takes the doorbell's
  /// cache line from the device, so it is batched (NVMe 1.4 §4.1 lets the
  /// host free CQ entries in bulk): once half of the ring is consumed, or
  /// once the device, posting a completion for every command in the ring,
  /// could find the CQ full (they and the unacknowledged ones would take
  /// more than its `depth - 1` usable slots). Asked after draining and
  /// before each submission doorbell, this keeps the device from ever
  /// finding full a CQ that the guest has drained, however much of the
  /// ring is in flight. (A guest also writes it before it sleeps.)
  @inlinable @inline(__always)
  public func shouldAcknowledge(unacknowledged: UInt32, inRing: UInt32) -> Bool {
    unacknowledged >= mask / 2 || inRing &+ unacknowledged > mask
  }

  /// Device: whether posting one more would overwrite a completion the
  /// guest has not consumed (its head doorbell is `head`).
  @inlinable @inline(__always) public func isFull(guestHead head: UInt32) -> Bool { (index &+ 1) & mask == head }

  /// Device: how many completions may be posted before the ring is full,
  /// the guest's head doorbell being `head` (one slot always stays empty).
  @inlinable @inline(__always) public func room(guestHead head: UInt32) -> UInt32 { (head &- index &- 1) & mask }
}
