import Foundation
import Synchronization
import Testing

@testable import VGPUDevice

@Suite struct ProcessLivenessTests {
  @Test func thisProcessIsAliveAndAReusedPidIsNot() throws {
    let me = UInt32(getpid())
    let start = try #require(ProcessLiveness.startTime(me))
    #expect(ProcessLiveness.isAlive(me, startTime: start))
    #expect(!ProcessLiveness.isAlive(me, startTime: start + 1))
    #expect(!ProcessLiveness.isAlive(0, startTime: 0))
    #expect(!ProcessLiveness.isAlive(UInt32(Int32.max), startTime: 0))
  }

  @Test func anEndedChildIsNotAliveEvenAsAZombie() throws {
    let child = Process()
    child.executableURL = URL(fileURLWithPath: "/bin/sleep")
    child.arguments = ["30"]
    try child.run()
    let pid = UInt32(child.processIdentifier)
    let start = try #require(ProcessLiveness.startTime(pid))
    #expect(ProcessLiveness.isAlive(pid, startTime: start))
    // SIGKILL: the test runner's children may inherit a blocked SIGTERM (terminate()
    // then waits for sleep's natural end). Checked before and after reaping: a
    // zombie is not alive either.
    kill(child.processIdentifier, SIGKILL)
    var gone = false
    for _ in 0..<200 where !gone {
      gone = !ProcessLiveness.isAlive(pid, startTime: start)
      if !gone { usleep(10_000) }
    }
    #expect(gone)
    child.waitUntilExit()
    #expect(!ProcessLiveness.isAlive(pid, startTime: start))
  }
}

@Suite struct OwnerWatchTests {
  static func sleeper() throws -> Process {
    let child = Process()
    child.executableURL = URL(fileURLWithPath: "/bin/sleep")
    child.arguments = ["30"]
    try child.run()
    return child
  }

  /// An owner's exit is reported at once (no periodic scan), and only the
  /// queue pair it owned; one no longer watched is not reported.
  @Test func anExitIsReportedAtOnceAndAnUnwatchedOneNot() throws {
    let wakes = Mutex(0)
    let watch = try #require(OwnerWatch { wakes.withLock { $0 += 1 } }, "pidfd_open is not available here")
    defer { watch.stop() }
    let owner = try Self.sleeper()
    let other = try Self.sleeper()
    let forgotten = try Self.sleeper()
    #expect(watch.watch(queuePair: 3, pid: UInt32(owner.processIdentifier)))
    #expect(watch.watch(queuePair: 5, pid: UInt32(other.processIdentifier)))
    #expect(watch.watch(queuePair: 6, pid: UInt32(forgotten.processIdentifier)))
    watch.unwatch(queuePair: 6)
    usleep(50_000)
    #expect(!watch.hasExits && wakes.withLock { $0 } == 0)

    let killed = Date()
    kill(owner.processIdentifier, SIGKILL)
    kill(forgotten.processIdentifier, SIGKILL)
    var exited: [Int] = []
    while exited.isEmpty && Date().timeIntervalSince(killed) < 2 {
      usleep(2_000)
      exited = watch.takeExited()
    }
    let after = Date().timeIntervalSince(killed)
    #expect(exited == [3])
    #expect(after < 0.5, "reported after \(after) s")
    #expect(wakes.withLock { $0 } >= 1)
    usleep(50_000)
    #expect(watch.takeExited().isEmpty)  // not again, and not the unwatched one
    kill(other.processIdentifier, SIGKILL)
    for child in [owner, other, forgotten] { child.waitUntilExit() }
  }
}
