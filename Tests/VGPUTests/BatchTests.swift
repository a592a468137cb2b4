import Testing
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// `Device.execute(_:batch:)`: a batch is waited for with one call, and
/// says how many commands succeeded and which failed first.
@Suite struct BatchTests {
  static func open() throws -> Device {
    var options = OpenOptions.simulator()
    options.timeout = .seconds(30)
    options.queuePairs = 1
    return try Device.open("sim", options: options)
  }

  @Test func aBatchSaysHowManySucceededAndTheFirstFailure() throws {
    let device = try Self.open()
    defer { device.close() }
    // 100 commands through a ring of 256, in batches of 8: many batches in
    // flight; a bad free at 37 and 70, the first of them reported.
    var entries = [SubmissionEntry](repeating: Command.Nop().entry, count: 100)
    entries[37] = Command.Free(address: 0x1234).entry
    entries[70] = Command.Free(address: 0x5678).entry
    let outcome = try entries.withUnsafeBufferPointer { (b) throws(VGPUError) in try device.execute(b, batch: 8) }
    #expect(outcome.completed == 98)
    let error = try #require(outcome.firstError)
    guard case .device = error.kind else {
      Issue.record("not a device refusal: \(error)")
      return
    }
    // The pair is whole again: every id collected, the ring usable to the full.
    try device.withQueuePair(0) { (qp: inout GuestQueuePair) throws(VGPUError) in
      var ids: [UInt16] = []
      for _ in 0..<qp.capacity { ids.append(try qp.submit(Command.Nop().entry, "nop")) }
      qp.ring()
      for id in ids { #expect(try qp.wait(for: id, "nop").status == CommandStatus.success.rawValue) }
    }
    let none = try [SubmissionEntry]().withUnsafeBufferPointer { (b) throws(VGPUError) in try device.execute(b) }
    #expect(none.completed == 0 && none.firstError == nil)
  }

  /// NOPs in batches of every size up to the ring's half, counts that are
  /// not multiples of it, and the device's count of them.
  @Test(arguments: [1, 3, 32, 127, 500])
  func nopsInBatchesAreAllCounted(batch: Int) throws {
    let device = try Self.open()
    defer { device.close() }
    let before = try device.statistics(.queuePair).commands
    try device.nops(1000 + batch, batch: batch)
    let after = try device.statistics(.queuePair).commands
    // The NOPs and the first statistics command.
    #expect(after - before == UInt64(1000 + batch) + 1)
  }
}
