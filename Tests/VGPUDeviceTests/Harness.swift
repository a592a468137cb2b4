import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// Drives a reference device by hand, one pass at a time, as a guest that
/// writes submission entries itself (through ``HandQueue``): every
/// validation rule gets its error, and the device serves the next command.
final class Harness {
  let device: ReferenceDevice
  let layout: BARLayout
  var queues: [Int: HandQueue] = [:]

  init(memory: UInt64 = 1 << 30, instructionBudget: UInt64? = nil) throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = memory
    if let instructionBudget { config.kernelInstructionBudget = instructionBudget }
    config.layout = BARLayout(queuePairs: 4, depth: 8, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
    device = try ReferenceDevice(configuration: config)
    layout = config.layout
  }

  /// Claims queue pair `qp` for `pid` and sends identify unless told not to.
  func claim(_ qp: Int, pid: UInt32 = 1000, identify: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) {
    let q = HandQueue(base: device.region.base, layout: layout, index: qp)
    #expect(q.claim(pid: pid) { device.servePass() }, "queue pair \(qp) not accepted", sourceLocation: sourceLocation)
    queues[qp] = q
    if identify {
      #expect(send(QueuePairClaim.identify, on: qp).status == 0, sourceLocation: sourceLocation)
    }
  }

  /// Hands queue pair `qp` back and lets the device reclaim it.
  func release(_ qp: Int) {
    queues[qp]?.release()
    device.servePass()
  }

  /// Sends `e` on `qp`, serves one pass, and returns its completion.
  func send(_ e: SubmissionEntry, on qp: Int = 0, sourceLocation: SourceLocation = #_sourceLocation)
    -> CompletionEntry
  {
    guard var q = queues[qp] else {
      Issue.record("queue pair \(qp) was not claimed", sourceLocation: sourceLocation)
      return CompletionEntry(status: .timeout)
    }
    defer { queues[qp] = q }
    guard let c = q.send(e, serve: { device.servePass() }) else {
      Issue.record("no completion", sourceLocation: sourceLocation)
      return CompletionEntry(status: .timeout)
    }
    #expect(c.commandID == q.lastCommandID, sourceLocation: sourceLocation)
    return c
  }

  /// Sends `e`, expects `status` (and `detail`), then checks that a NOP still works.
  @discardableResult
  func expect(
    _ e: SubmissionEntry, _ status: CommandStatus, detail: UInt32? = nil, on qp: Int = 0,
    sourceLocation: SourceLocation = #_sourceLocation
  ) -> CompletionEntry {
    let c = send(e, on: qp, sourceLocation: sourceLocation)
    #expect(
      c.status == status.rawValue, "got \(CommandStatus(rawValue: c.status).map(String.init(describing:)) ?? "?")",
      sourceLocation: sourceLocation)
    if let detail { #expect(c.detail == detail, sourceLocation: sourceLocation) }
    #expect(
      send(Command.Nop().entry, on: qp, sourceLocation: sourceLocation).status == 0, "device stopped serving",
      sourceLocation: sourceLocation)
    return c
  }

  func staging(_ qp: Int = 0, offset: UInt64 = 0) -> UInt64 { layout.staging(qp) + offset }
  func stage(_ bytes: [UInt8], qp: Int = 0) {
    (device.region.base + Int(staging(qp))).copyMemory(from: bytes, byteCount: bytes.count)
  }
  func read(_ count: Int, qp: Int = 0, offset: UInt64 = 0) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: device.region.base + Int(staging(qp, offset: offset)), count: count))
  }
  /// The text of the last failed command on `qp` (errorText).
  func errorText(qp: Int = 0) -> String {
    let c = send(Command.ErrorText(staging: staging(qp), capacity: 4096).entry, on: qp)
    return String(decoding: read(Int(c.result0), qp: qp), as: UTF8.self)
  }
  func alloc(_ size: UInt64, qp: Int = 0, sourceLocation: SourceLocation = #_sourceLocation) -> UInt64 {
    let c = send(Command.Alloc(length: size).entry, on: qp, sourceLocation: sourceLocation)
    #expect(c.status == 0, sourceLocation: sourceLocation)
    return Command.Alloc.Reply(c).address
  }
}
