import CSupport
import Testing
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// A BAR with one small queue pair, in ordinary memory: both sides of the
/// rings, driven by hand with the protocol's own cursors.
final class SmallBAR {
  let layout: BARLayout
  let base: UnsafeMutableRawPointer
  let view: QueuePairView

  init(depth: UInt32) {
    layout = BARLayout(queuePairs: 1, depth: depth, stagingSlotSize: 4096, slotsPerQueue: 1)
    base = .allocate(byteCount: Int(layout.regionSize), alignment: 4096)
    base.initializeMemory(as: UInt8.self, repeating: 0, count: Int(layout.regionSize))
    view = QueuePairView(base: base, layout: layout, index: 0)
  }

  deinit { base.deallocate() }
}

@Suite struct RingTests {
  /// Five laps of a four-entry ring: every command arrives once, in order,
  /// its completion is taken once, and the phase the guest expects flips
  /// each time its head wraps to 0 — so last lap's entries are never taken again.
  @Test func wrapAroundAndPhaseFlips() {
    let bar = SmallBAR(depth: 4)
    var guestTail = SubmissionCursor(depth: 4)
    var deviceHead = SubmissionCursor(depth: 4)
    var deviceTail = CompletionCursor(depth: 4)
    var guestHead = CompletionCursor(depth: 4)
    #expect(guestHead.phase == 1)
    for i in 0..<20 {
      let lap = i / 4
      // Before the device posts, the slot holds last lap's completion (or
      // nothing): not taken, because its phase is the old one.
      #expect(!guestHead.ready(in: bar.view))
      var e = Command.Alloc(length: UInt64(i) + 1).entry
      e.commandID = UInt16(i)
      guestTail.push(e, into: bar.view)
      #expect(guestTail.index == UInt32((i + 1) % 4))
      #expect(deviceHead.distance(to: guestTail.index) == 1)

      let got = deviceHead.pop(from: bar.view)
      #expect(got == e)
      #expect(deviceTail.phase == UInt16(1 - lap % 2))
      deviceTail.post(
        CompletionEntry(
          commandID: got.commandID, status: .success, result0: UInt64(i), sqHead: UInt16(deviceHead.index)),
        into: bar.view)

      let c = guestHead.take(from: bar.view)
      #expect(c?.result0 == UInt64(i))
      #expect(c?.commandID == UInt16(i))
      #expect(c?.phase == UInt16(1 - lap % 2))
      #expect(guestHead.take(from: bar.view) == nil, "a completion was taken twice")
      #expect(guestHead.phase == UInt16(1 - (i + 1) / 4 % 2))
    }
  }

  @Test func distancesWrap() {
    let c = SubmissionCursor(depth: 8, index: 6)
    #expect(c.distance(to: 2) == 4)
    #expect(c.distance(from: 2) == 4)
    #expect(c.distance(to: 6) == 0)
    #expect(SubmissionCursor(depth: 8, index: 9).index == 1, "indices are taken modulo the depth")
  }

  /// The device stops posting one short of overwriting what the guest has not consumed.
  @Test func completionRingFullAtDepthMinusOne() {
    let bar = SmallBAR(depth: 8)
    var tail = CompletionCursor(depth: 8)
    for i in 0..<7 {
      #expect(!tail.isFull(guestHead: 0), "full after \(i)")
      tail.post(CompletionEntry(status: .success), into: bar.view)
    }
    #expect(tail.isFull(guestHead: 0))
    #expect(!tail.isFull(guestHead: 1))
  }

  /// The CQ-head doorbell is written once half of the ring is consumed, or
  /// once commands in the ring plus unacknowledged completions exceed the
  /// CQ's usable slots (depth - 1).
  @Test(arguments: [
    (256, 126, 0, false), (256, 127, 0, true), (256, 10, 245, false), (256, 10, 246, true), (256, 0, 255, false),
    (256, 32, 224, true), (8, 2, 0, false), (8, 3, 0, true), (8, 1, 7, true), (2, 0, 0, true),
  ])
  func acknowledgementBatching(depth: UInt32, unacknowledged: UInt32, inRing: UInt32, expected: Bool) {
    let c = CompletionCursor(depth: depth)
    #expect(c.shouldAcknowledge(unacknowledged: unacknowledged, inRing: inRing) == expected)
  }

  /// With the rule asked after draining and before each submission doorbell
  /// (as the guest does), a guest that keeps up to the whole ring in flight
  /// never lets the device find its CQ full.
  @Test func batchedAcknowledgementsNeverFillTheRing() {
    let depth: UInt32 = 64
    let bar = SmallBAR(depth: depth)
    var guestTail = SubmissionCursor(depth: depth)
    var deviceHead = SubmissionCursor(depth: depth)
    var deviceTail = CompletionCursor(depth: depth)
    var guestHead = CompletionCursor(depth: depth)
    var acknowledged: UInt32 = 0
    var unacknowledged: UInt32 = 0
    var generator = SystemRandomNumberGenerator()
    for _ in 0..<2000 {
      // Submit a burst, up to the ring's capacity (depth - 1) in flight.
      let burst = Int.random(in: 1...Int(depth / 2), using: &generator)
      for _ in 0..<burst where guestTail.distance(from: guestHead.index) < depth - 1 {
        guestTail.push(Command.Nop().entry, into: bar.view)
      }
      // The doorbell: acknowledged first if the rule says so.
      if unacknowledged > 0
        && guestHead.shouldAcknowledge(
          unacknowledged: unacknowledged, inRing: guestTail.distance(from: guestHead.index))
      {
        acknowledged = guestHead.index
        unacknowledged = 0
      }
      // The device serves everything submitted.
      while deviceHead.index != guestTail.index {
        #expect(!deviceTail.isFull(guestHead: acknowledged), "the device found the CQ full")
        _ = deviceHead.pop(from: bar.view)
        deviceTail.post(CompletionEntry(status: .success), into: bar.view)
      }
      // The guest drains some of them, then applies the rule.
      let take = Int.random(in: 0...burst, using: &generator)
      for _ in 0..<take { if guestHead.take(from: bar.view) != nil { unacknowledged += 1 } }
      if guestHead.shouldAcknowledge(unacknowledged: unacknowledged, inRing: guestTail.distance(from: guestHead.index))
      {
        acknowledged = guestHead.index
        unacknowledged = 0
      }
    }
  }
}

@Suite struct WaitPolicyTests {
  /// The clock is read once every 32 polls: with no spin time, the 32nd poll ends the spin.
  @Test func spinReadsTheClockEvery32Polls() {
    var spin = Spin()
    var polls = 0
    while spin.keepPolling(WaitPolicy(spinNanoseconds: 0, sleepSliceNanoseconds: 1)) { polls += 1 }
    #expect(polls == Int(WaitPolicy.pollsPerClockRead) - 1)
    #expect(spin.started != 0)
    var long = Spin()
    var kept = 0
    for _ in 0..<10_000 where long.keepPolling(WaitPolicy(spinNanoseconds: 60_000_000_000, sleepSliceNanoseconds: 1)) {
      kept += 1
    }
    #expect(kept == 10_000)
  }

  @Test func restartDeadlineCountsSilence() {
    var spin = Spin()
    spin.readClock()
    let first = spin.started
    usleep(2000)
    spin.readClock()
    #expect(spin.elapsed >= 2_000_000)
    spin.restartDeadline()
    #expect(spin.elapsed == 0)
    #expect(spin.started > first)
  }

  @Test func policiesAreOrdered() {
    #expect(WaitPolicy.guest.spinNanoseconds < WaitPolicy.device.spinNanoseconds)
    #expect(WaitPolicy.guest.sleepSliceNanoseconds < WaitPolicy.guestWithInterrupt.sleepSliceNanoseconds)
    #expect(WaitPolicy.pollsPerClockRead.nonzeroBitCount == 1, "a power of two, used as a mask")
  }
}

@Suite struct ClaimTests {
  @Test func claimIsExclusiveAndReleaseCloses() {
    let bar = SmallBAR(depth: 4)
    #expect(bar.view.state == QueuePairState.free.rawValue)
    #expect(QueuePairClaim.claim(bar.view, pid: 4242))
    #expect(bar.view.state == QueuePairState.claiming.rawValue)
    #expect(bar.view.ownerPID == 4242)
    #expect(!QueuePairClaim.claim(bar.view, pid: 77), "a second guest took a claimed pair")
    #expect(bar.view.ownerPID == 4242)
    // Not accepted by any device: the deadline passes, polling as asked.
    var polls = 0
    let accepted = QueuePairClaim.awaitAcceptance(bar.view, deadline: vgpu_monotonic_ns() + 2_000_000) { polls += 1 }
    #expect(!accepted)
    #expect(polls > 0)
    bar.view.setState(.active)
    #expect(QueuePairClaim.awaitAcceptance(bar.view, deadline: vgpu_monotonic_ns()) { Issue.record("polled") })
    QueuePairClaim.release(bar.view)
    #expect(bar.view.state == QueuePairState.closing.rawValue)
  }

  @Test func claimUpToCountSkipsTakenPairs() {
    let layout = BARLayout(queuePairs: 4, depth: 4, stagingSlotSize: 4096, slotsPerQueue: 1)
    let base = UnsafeMutableRawPointer.allocate(byteCount: Int(layout.regionSize), alignment: 4096)
    defer { base.deallocate() }
    base.initializeMemory(as: UInt8.self, repeating: 0, count: Int(layout.regionSize))
    func view(_ i: Int) -> QueuePairView { QueuePairView(base: base, layout: layout, index: i) }
    #expect(QueuePairClaim.claim(view(1), pid: 1))
    #expect(QueuePairClaim.claim(upTo: 2, of: 4, pid: 2, view: view) == [0, 2])
    #expect(QueuePairClaim.claim(upTo: 5, of: 4, pid: 3, view: view) == [3])
    #expect(QueuePairClaim.claim(upTo: 1, of: 4, pid: 4, view: view) == [])
  }

  @Test func identifyNegotiation() {
    let identify = QueuePairClaim.identify
    #expect(identify.opcode == Opcode.identify.rawValue)
    #expect(Command.Identify(identify).guestVersion == ProtocolVersion.packed)
    let ok = Command.Identify.Reply(features: FeatureBits(rawValue: ~0), deviceVersion: ProtocolVersion.packed)
    let features = try? QueuePairClaim.negotiated(ok.completion).get()
    #expect(features == .all, "features beyond this guest's are dropped")
    let refused = CompletionEntry(status: .versionMismatch, result1: 0x0002_0000, detail: 1)
    guard case .failure(let refusal) = QueuePairClaim.negotiated(refused) else {
      Issue.record("a refused identify was taken as success")
      return
    }
    #expect(refusal.status == CommandStatus.versionMismatch.rawValue)
    #expect(refusal.deviceVersion == 0x0002_0000)
  }
}
