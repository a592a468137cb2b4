import Testing
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// The guest's queue pair states its bound in code: a caller may keep at
/// most depth − 1 commands submitted and not waited for.
@Suite struct QueuePairInvariantTests {
  @Test func submittingPastTheRingsCapacityFailsAtOnce() throws {
    var options = OpenOptions.simulator()
    // A regression would wait this long, then fail as a timeout.
    options.timeout = .seconds(30)
    options.queuePairs = 1
    let device = try Device.open("sim", options: options)
    defer { device.close() }
    try device.withQueuePair(0) { (qp: inout GuestQueuePair) throws(VGPUError) in
      #expect(qp.capacity == device.info.queueDepth - 1)
      var ids: [UInt16] = []
      for _ in 0..<qp.capacity { ids.append(try qp.submit(Command.Nop().entry, "nop")) }
      qp.ring()
      do throws(VGPUError) {
        _ = try qp.submit(Command.Nop().entry, "nop")
        Issue.record("a command past the ring's capacity was accepted")
      } catch {
        #expect(error.kind == .invalidArgument, "\(error)")
        #expect(error.found.contains("not waited for"), "\(error)")
      }
      // Every command submitted comes back, and the pair goes on.
      for id in ids { #expect(try qp.wait(for: id, "nop").status == CommandStatus.success.rawValue) }
      #expect(qp.broken == nil)
    }
    try device.nop()
    try device.nops(3 * device.info.queueDepth, batch: 64)
  }
}
