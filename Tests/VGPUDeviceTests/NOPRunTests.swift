import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// A run of NOPs is served from each entry's first word and counted in one
/// addition (issue 17): the counts, ids, heads and refusals must be those
/// of commands served one by one.
@Suite struct NOPRunTests {
  /// Serves what is in the ring (one pass) and takes every completion
  /// posted, acknowledging them.
  static func serveAndTake(_ h: Harness, _ q: inout HandQueue) -> [CompletionEntry] {
    q.ring()
    h.device.servePass()
    var out: [CompletionEntry] = []
    q.takeAll { out.append($0) }
    return out
  }

  @Test func aRunOfNOPsIsCountedBeforeTheNextCommandRuns() throws {
    let h = try Harness()
    h.claim(0)
    var q = try #require(h.queues[0])
    // Five NOPs, then statistics for this pair: it sees identify and the five.
    var ids: [UInt16] = []
    for _ in 0..<5 { ids.append(q.submit(Command.Nop().entry)) }
    q.submit(Command.Statistics(scope: .queuePair, staging: h.staging()).entry)
    let first = Self.serveAndTake(h, &q)
    #expect(first.count == 6)
    #expect(first.prefix(5).map(\.commandID) == ids)
    #expect(first.allSatisfy { $0.status == CommandStatus.success.rawValue })
    // Each completion reports the head just past its own command.
    let depth = UInt16(h.layout.depth)
    #expect(first.map(\.sqHead) == (2...7).map { UInt16($0) % depth })
    let seen = (h.device.region.base + Int(h.staging())).load(as: StatisticsRecord.self)
    #expect(seen.commands == 6)
    // A NOP with a flag or a reserved word set leaves the run and is refused.
    var flagged = Command.Nop().entry
    flagged.flags = 1
    var reserved = Command.Nop().entry
    reserved.reserved = 7
    q.submit(Command.Nop().entry)
    q.submit(flagged)
    q.submit(reserved)
    q.submit(Command.Nop().entry)
    q.submit(Command.Statistics(scope: .queuePair, staging: h.staging()).entry)
    let second = Self.serveAndTake(h, &q)
    #expect(
      second.map(\.status)
        == [
          CommandStatus.success, .invalidValue, .invalidValue, .success, .success,
        ].map(\.rawValue))
    // identify, 5 NOPs, statistics, then 4 more commands (any status).
    #expect((h.device.region.base + Int(h.staging())).load(as: StatisticsRecord.self).commands == 11)
  }

  /// With coalesced completions agreed (2.4), a run of NOPs with
  /// consecutive ids gets one completion: the first id, `following` = the
  /// rest, the head past the last; other commands still get their own.
  @Test func agreedCoalescingAnswersARunWithOneCompletion() throws {
    let h = try Harness()
    h.claim(0)
    var q = try #require(h.queues[0])
    let agreed = q.send(Command.Identify().entry) { h.device.servePass() }
    #expect(agreed.map { Command.Identify.Reply($0).features.contains(.coalescedCompletions) } == true)
    // Four NOPs, statistics, two NOPs: six commands, within a ring of 8.
    var ids: [UInt16] = []
    for _ in 0..<4 { ids.append(q.submit(Command.Nop().entry)) }
    q.submit(Command.Statistics(scope: .queuePair, staging: h.staging()).entry)
    for _ in 0..<2 { ids.append(q.submit(Command.Nop().entry)) }
    let taken = NOPRunTests.serveAndTake(h, &q)
    #expect(taken.map(\.commandID) == [ids[0], ids[3] &+ 1, ids[4]])
    #expect(taken.map(\.following) == [3, 0, 1])
    #expect(taken.allSatisfy { $0.status == CommandStatus.success.rawValue })
    // Heads: past the fourth NOP (2 identifies + 4), the statistics, the last NOP.
    let depth = UInt16(h.layout.depth)
    #expect(taken.map(\.sqHead) == [6, 7, 9].map { UInt16($0) % depth })
    // Every NOP counted: the statistics saw both identifies and the first four.
    let seen = (h.device.region.base + Int(h.staging())).load(as: StatisticsRecord.self)
    #expect(seen.commands == 6)
  }

  /// The device posts no more NOP completions than the CQ has room for,
  /// reading the guest's head again once the room it knew of is used.
  @Test func aRunStopsAtAFullCompletionRingAndGoesOnOnceAcknowledged() throws {
    let h = try Harness()
    h.claim(0)
    let view = try #require(h.queues[0]).view
    let depth = h.layout.depth
    // The cursors by hand: completions are taken without acknowledging them.
    var tail = SubmissionCursor(depth: depth, index: try #require(h.queues[0]).submissions.index)
    var head = try #require(h.queues[0]).completions
    func submit(_ n: Int) {
      for _ in 0..<n { tail.push(Command.Nop().entry, into: view) }
      view.ringSubmission(tail: tail.index)
    }
    func take() -> Int {
      var n = 0
      while head.take(from: view) != nil { n += 1 }
      return n
    }
    submit(Int(depth) - 1)
    h.device.servePass()
    #expect(take() == Int(depth) - 1)
    // Not acknowledged: the CQ is full, so three more wait.
    submit(3)
    h.device.servePass()
    #expect(take() == 0)
    view.ringCompletion(head: head.index)
    h.device.servePass()
    #expect(take() == 3)
    view.ringCompletion(head: head.index)
    // Still serving: one more goes through at once.
    submit(1)
    h.device.servePass()
    #expect(take() == 1)
    #expect(view.fault == 0)
  }
}
