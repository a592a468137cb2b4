import CSupport

/// Taking and handing back a queue pair (docs/PROTOCOL.md §7), the one
/// implementation every guest uses: the client library, the benchmark's
/// direct queue, the tests. The guest moves free → claiming (a compare and
/// swap, so two guests never take the same pair) and writes its pid; the
/// device accepts (claiming → active). Then the guest sends ``Command/Identify``.
public enum QueuePairClaim {
  /// Takes `view` if it is free. Returns whether it is now this guest's claim.
  public static func claim(_ view: QueuePairView, pid: UInt32) -> Bool {
    guard view.exchangeState(from: .free, to: .claiming) else { return false }
    view.setOwnerPID(pid)
    return true
  }

  /// Claims up to `count` free pairs among the first `available` of the BAR.
  public static func claim(
    upTo count: Int, of available: Int, pid: UInt32, view: (Int) -> QueuePairView
  ) -> [Int] {
    var claimed: [Int] = []
    for qp in 0..<available where claimed.count < count {
      if claim(view(qp), pid: pid) { claimed.append(qp) }
    }
    return claimed
  }

  /// Waits until the device has accepted the claim, calling `poll` between
  /// looks (a sleep, or a pass of an in-process device). False once
  /// `deadline` (CLOCK_MONOTONIC ns) passes.
  public static func awaitAcceptance(_ view: QueuePairView, deadline: UInt64, poll: () -> Void) -> Bool {
    while view.state != QueuePairState.active.rawValue {
      if vgpu_monotonic_ns() > deadline { return false }
      poll()
    }
    return true
  }

  /// Hands a pair back the way a close does: only the device frees a pair
  /// (it reclaims what the pair held first).
  public static func release(_ view: QueuePairView) { view.setState(.closing) }

  /// The identify command a hand-driven client sends first: it names
  /// everything but coalesced completions (2.4), so that each command it
  /// sent gets a completion of its own.
  public static var identify: SubmissionEntry {
    Command.Identify(guestFeatures: FeatureBits.all.subtracting(.coalescedCompletions)).entry
  }

  /// Checks the reply to ``identify``: the features both sides have, or
  /// the device's version when it speaks another major version.
  public static func negotiated(_ c: CompletionEntry) -> Result<FeatureBits, IdentifyRefusal> {
    let reply = Command.Identify.Reply(c)
    guard c.status == CommandStatus.success.rawValue else {
      return .failure(IdentifyRefusal(status: c.status, deviceVersion: reply.deviceVersion))
    }
    return .success(reply.features.intersection(.all))
  }
}

/// A device's refusal of `identify`.
public struct IdentifyRefusal: Error, Equatable {
  public var status: UInt16
  public var deviceVersion: UInt32
}
