import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A guest queue pair driven by hand, for tests that talk to a device
/// without the client library: an in-process ``ReferenceDevice`` served one
/// pass at a time, or a mediator in another process. The ring steps, the
/// claim and the identify come from VGPUProtocol (``SubmissionCursor``,
/// ``CompletionCursor``, ``QueuePairClaim``); this only strings them together.
///
/// `serve` is what makes the device move: a pass of an in-process device, or
/// a short sleep while another process serves.
public struct HandQueue {
  public let view: QueuePairView
  public private(set) var submissions: SubmissionCursor
  public private(set) var completions: CompletionCursor
  /// The command id the last ``submit(_:)`` gave its entry.
  public private(set) var lastCommandID: UInt16 = 0
  var nextCommandID: UInt16 = 100

  public init(_ view: QueuePairView) {
    self.view = view
    submissions = SubmissionCursor(depth: view.depth)
    completions = CompletionCursor(depth: view.depth)
  }

  public init(base: UnsafeMutableRawPointer, layout: BARLayout, index: Int) {
    self.init(QueuePairView(base: base, layout: layout, index: index))
  }

  /// CLOCK_MONOTONIC, in nanoseconds (the clock of ``QueuePairClaim/awaitAcceptance(_:deadline:poll:)``).
  public static func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
  }

  /// Claims the pair for `pid` and waits (calling `serve`) until the device
  /// accepts it. False when the pair was not free or the device did not
  /// accept it within `timeout`. Sends nothing: see ``identify(serve:)``.
  public func claim(pid: UInt32, timeout: Duration = .seconds(5), serve: () -> Void) -> Bool {
    guard QueuePairClaim.claim(view, pid: pid) else { return false }
    return QueuePairClaim.awaitAcceptance(view, deadline: Self.now() + Self.nanoseconds(timeout), poll: serve)
  }

  /// Sends ``QueuePairClaim/identify`` and checks the reply: the features both sides have.
  public mutating func identify(timeout: Duration = .zero, serve: () -> Void) -> Result<FeatureBits, IdentifyRefusal>? {
    send(QueuePairClaim.identify, timeout: timeout, serve: serve).map(QueuePairClaim.negotiated)
  }

  /// Hands the pair back (the device frees it on its next pass).
  public func release() { QueuePairClaim.release(view) }

  /// Writes `entry` into the submission ring with the next command id,
  /// without ringing the doorbell. Returns the command id.
  @discardableResult
  public mutating func submit(_ entry: SubmissionEntry) -> UInt16 {
    var e = entry
    e.commandID = nextCommandID
    lastCommandID = nextCommandID
    nextCommandID &+= 1
    submissions.push(e, into: view)
    return e.commandID
  }

  /// Publishes what ``submit(_:)`` wrote: the tail doorbell.
  public func ring() { view.ringSubmission(tail: submissions.index) }

  /// The next completion if the device has posted it; acknowledges it (the
  /// head doorbell) so that the device may post into its slot again.
  public mutating func take() -> CompletionEntry? {
    guard let c = completions.take(from: view) else { return nil }
    view.ringCompletion(head: completions.index)
    return c
  }

  /// Takes every completion posted so far, in order.
  public mutating func takeAll(_ body: (CompletionEntry) -> Void) {
    while let c = take() { body(c) }
  }

  /// Submits `entry`, rings, calls `serve` and takes the completion. With
  /// a `timeout`, keeps calling `serve` until the completion comes or the
  /// time is up; with none (the default), serves exactly once. Nil when no
  /// completion came. The completion's command id is ``lastCommandID``'s
  /// when the device answered this command.
  public mutating func send(_ entry: SubmissionEntry, timeout: Duration = .zero, serve: () -> Void)
    -> CompletionEntry?
  {
    submit(entry)
    ring()
    let deadline = Self.now() + Self.nanoseconds(timeout)
    while true {
      serve()
      if let c = take() { return c }
      if Self.now() > deadline { return nil }
    }
  }

  static func nanoseconds(_ d: Duration) -> UInt64 {
    let (seconds, attoseconds) = d.components
    return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds / 1_000_000_000))
  }
}
