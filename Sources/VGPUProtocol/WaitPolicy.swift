import CSupport

/// How one side waits for the other: poll briefly, then sleep, telling the
/// other side first (event suppression, docs/PROTOCOL.md §11). Spinning wins
/// when the answer comes within microseconds (a wake-up costs tens of them);
/// sleeping keeps an idle side off a CPU that, on two cores, the other side needs.
public struct WaitPolicy: Sendable, Equatable {
  /// How long to poll before sleeping.
  public var spinNanoseconds: UInt64
  /// The longest single sleep, so that a stopped peer is noticed promptly.
  public var sleepSliceNanoseconds: UInt64
  /// The clock is read every this many polls (a power of two): a read costs
  /// more than a poll, and most waits end before the first one.
  public static let pollsPerClockRead: UInt32 = 32

  public init(spinNanoseconds: UInt64, sleepSliceNanoseconds: UInt64) {
    self.spinNanoseconds = spinNanoseconds
    self.sleepSliceNanoseconds = sleepSliceNanoseconds
  }

  /// A guest waiting for a completion: 20 µs, about one device pass of
  /// mixed commands, then sleeps of at most 10 ms.
  public static let guest = WaitPolicy(spinNanoseconds: 20_000, sleepSliceNanoseconds: 10_000_000)
  /// A guest whose sleep ends with an interrupt (MSI-X through a VFIO
  /// eventfd): wake-ups are not missed, so it sleeps longer.
  public static let guestWithInterrupt = WaitPolicy(spinNanoseconds: 20_000, sleepSliceNanoseconds: 100_000_000)
  /// The device waiting for commands: 50 µs (longer than a guest's turn
  /// between two commands), then sleeps of at most 100 ms while something
  /// needs polling (see ReferenceDeviceConfiguration).
  public static let device = WaitPolicy(spinNanoseconds: 50_000, sleepSliceNanoseconds: 100_000_000)
}

/// One wait in progress under a ``WaitPolicy``: counts polls and says when
/// spinning is over. Reads the clock only every ``WaitPolicy/pollsPerClockRead`` polls.
@frozen
public struct Spin: Sendable {
  @usableFromInline var polls: UInt32 = 0
  /// The first clock reading of this wait, 0 before it.
  @usableFromInline var _started: UInt64 = 0
  @inlinable public var started: UInt64 { _started }
  /// The last clock reading, 0 before the first.
  @usableFromInline var _now: UInt64 = 0
  @inlinable public var now: UInt64 { _now }

  @inlinable public init() {}

  /// Call after each empty poll: true while the wait should keep polling.
  @inlinable @inline(__always)
  public mutating func keepPolling(_ policy: WaitPolicy) -> Bool {
    polls &+= 1
    if polls & (WaitPolicy.pollsPerClockRead - 1) != 0 { return true }
    readClock()
    return now &- started < policy.spinNanoseconds
  }

  /// Reads the clock (and starts the wait's time if it had not).
  @inlinable @inline(__always) public mutating func readClock() {
    _now = vgpu_monotonic_ns()
    if started == 0 { _started = now }
  }

  /// Makes the wait's time start now (progress was seen, or work was done).
  @inlinable public mutating func restart() {
    polls = 0
    _started = 0
    _now = 0
  }

  /// Nanoseconds since the first clock reading (0 before it).
  @inlinable public var elapsed: UInt64 { started == 0 ? 0 : now &- started }

  /// Moves the start of the wait to `now`: the deadline counts silence.
  @inlinable public mutating func restartDeadline() { _started = now }
}
