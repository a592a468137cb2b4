import Foundation
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
