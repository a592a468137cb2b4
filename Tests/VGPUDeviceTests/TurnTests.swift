import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// A pass gives each ring a turn: at most so many commands, then the next
/// ring (what a serving thread shared by many devices does, `ServingPool`).
@Suite struct TurnTests {
  @Test func aPassRunsAtMostATurnsCommandsAndTheRestOnTheNext() throws {
    let h = try Harness()
    h.claim(0)
    var q = h.queues[0]!
    for _ in 0..<6 { q.submit(Command.Nop().entry) }
    q.ring()
    let turn = Turn(commands: 4, nanoseconds: .max)
    let first = h.device.executor.lock.withLock { _ in h.device.executor.servePass(quick: false, budget: turn) }
    var taken = 0
    q.takeAll { c in
      #expect(c.status == CommandStatus.success.rawValue)
      taken += 1
    }
    #expect(first && taken == 4, "the first pass ran \(taken) of 6 commands; its turn is 4")
    _ = h.device.executor.lock.withLock { _ in h.device.executor.servePass(quick: false, budget: turn) }
    q.takeAll { _ in taken += 1 }
    #expect(taken == 6, "the second pass left \(6 - taken) commands")
    h.queues[0] = q
  }

  /// A turn of no time at all still runs one command: the turn ends after the
  /// command that passes it, so every ring makes progress.
  @Test func aTurnOutOfTimeStillRunsOneCommand() throws {
    let h = try Harness()
    h.claim(0)
    var q = h.queues[0]!
    for _ in 0..<3 { q.submit(Command.MemoryInfo().entry) }
    q.ring()
    let turn = Turn(commands: .max, nanoseconds: 0)
    var taken = 0
    for pass in 1...3 {
      _ = h.device.executor.lock.withLock { _ in h.device.executor.servePass(quick: false, budget: turn) }
      q.takeAll { _ in taken += 1 }
      #expect(taken == pass, "after pass \(pass): \(taken) commands done")
    }
    h.queues[0] = q
  }
}
