import CSupport
import DeviceAccess
import Foundation
import Synchronization
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// A device that breaks the protocol on purpose. It lays out a BAR like the
/// reference device, accepts queue pairs, answers `identify` correctly, and
/// answers every other command as `reply` says.
final class RogueDevice: @unchecked Sendable {
  enum Reply {
    case answer(CompletionEntry)
    /// Post it, but with this sqHead / phase instead of the right ones.
    case answerWith(CompletionEntry, sqHead: UInt16?, flipPhase: Bool)
    case silent
  }

  let region: MappedRegion
  let layout = BARLayout(queuePairs: 2, depth: 8, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
  let registers: RegisterBlock
  let reply: @Sendable (SubmissionEntry) -> Reply
  let acceptQueuePairs: Bool
  private let running = Atomic<Bool>(true)
  private var thread: Thread?

  init(
    acceptQueuePairs: Bool = true, configure: (RegisterBlock) -> Void = { _ in },
    reply: @escaping @Sendable (SubmissionEntry) -> Reply
  )
    throws
  {
    var config = ReferenceDeviceConfiguration()
    config.layout = layout
    config.memorySize = 1 << 20
    // Borrow the reference device's register layout, then serve the BAR ourselves.
    let template = try ReferenceDevice(configuration: config)
    region = template.region
    registers = RegisterBlock(region.base)
    registers.store(Register.status, StatusRegister.ready.rawValue)
    self.reply = reply
    self.acceptQueuePairs = acceptQueuePairs
    configure(registers)
    // Weak: the thread ends soon after the test lets go of the device.
    let t = Thread { [weak self] in
      while let device = self, device.running.load(ordering: .relaxed) {
        device.servePass()
        usleep(100)
      }
    }
    thread = t
    t.start()
  }

  func stop() { running.store(false, ordering: .relaxed) }
  deinit { stop() }

  private lazy var submissions = [SubmissionCursor](repeating: SubmissionCursor(depth: layout.depth), count: 2)
  private lazy var completions = [CompletionCursor](repeating: CompletionCursor(depth: layout.depth), count: 2)

  private func servePass() {
    for qp in 0..<2 {
      let view = QueuePairView(base: region.base, layout: layout, index: qp)
      if view.state == QueuePairState.claiming.rawValue && acceptQueuePairs {
        view.resetRings()
        submissions[qp] = SubmissionCursor(depth: layout.depth)
        completions[qp] = CompletionCursor(depth: layout.depth)
        view.setState(.active)
      }
      if view.state == QueuePairState.closing.rawValue { view.setState(.free) }
      guard view.state == QueuePairState.active.rawValue else { continue }
      while submissions[qp].index != view.submissionTail {
        let e = submissions[qp].pop(from: view)
        var r: Reply =
          e.opcode == Opcode.identify.rawValue
          ? .answer(
            Command.Identify.Reply(
              features: Command.Identify(e).guestFeatures, deviceVersion: ProtocolVersion.packed
            ).completion)
          : reply(e)
        if case .answer(let c) = r { r = .answerWith(c, sqHead: nil, flipPhase: false) }
        guard case .answerWith(var c, let sqHead, let stale) = r else { continue }
        if c.commandID == 0 { c.commandID = e.commandID }
        c.sqHead = sqHead ?? UInt16(submissions[qp].index)
        if stale {
          // A completion carrying the last lap's phase, in the slot the guest
          // looks at next: the guest must not take it (the cursor does not move).
          c.phase = completions[qp].phase == 0 ? 1 : 0
          view.postCompletion(c, at: completions[qp].index)
        } else {
          completions[qp].post(c, into: view)
        }
        view.wakeGuest()
      }
    }
  }

  func open(timeout: Duration = .milliseconds(300)) throws(VGPUError) -> Device {
    var options = OpenOptions()
    options.timeout = timeout
    options.queuePairs = 1
    return try Device(spec: .simulated, region: region, options: options)
  }
}

func elapsed(_ body: () throws -> Void) rethrows -> Double {
  let start = vgpu_monotonic_ns()
  try body()
  return Double(vgpu_monotonic_ns() - start) / 1e9
}

@Suite struct MisbehavingDeviceTests {
  func expectError(
    _ kind: VGPUError.Kind, containing words: [String] = [], _ body: () throws -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    do {
      try body()
      Issue.record("no error", sourceLocation: sourceLocation)
    } catch let error as VGPUError {
      #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
      for w in words { #expect(error.description.contains(w), "\(error)", sourceLocation: sourceLocation) }
    } catch {
      Issue.record("not a VGPUError: \(error)", sourceLocation: sourceLocation)
    }
  }

  @Test func wrongMagic() throws {
    let rogue = try RogueDevice(configure: { $0.store(Register.magic, 0xdead_beef) }) { _ in .silent }
    expectError(.protocolViolation, containing: ["magic is 0xdeadbeef"]) { _ = try rogue.open() }
  }

  @Test func otherMajorVersion() throws {
    let rogue = try RogueDevice(configure: { $0.store(Register.version, 1 << 16 | 3) }) { _ in .silent }
    expectError(.versionMismatch, containing: ["1.3"]) { _ = try rogue.open() }
  }

  @Test func layoutOutOfRange() throws {
    let rogue = try RogueDevice(configure: { $0.store(Register.queueDepth, 3) }) { _ in .silent }
    expectError(.protocolViolation, containing: ["queue depth"]) { _ = try rogue.open() }
    let big = try RogueDevice(configure: { $0.store(Register.stagingOffset, 1 << 40) }) { _ in .silent }
    expectError(.protocolViolation, containing: ["staging"]) { _ = try big.open() }
    let overlap = try RogueDevice(configure: { $0.store(Register.queueAreaOffset, 4096) }) { _ in .silent }
    expectError(.protocolViolation) { _ = try overlap.open() }
  }

  @Test func neverAnswersTimesOutWithinTheDefaultDeadline() throws {
    let rogue = try RogueDevice { _ in .silent }
    let device = try rogue.open(timeout: OpenOptions().timeout)
    let seconds = elapsed {
      expectError(.timeout, containing: ["no completion", "waited"]) { try device.nop() }
    }
    #expect(seconds >= 1.9 && seconds < 3.5, "took \(seconds) s")
    // The pair is no longer trusted: later calls fail at once, not after another deadline.
    let again = elapsed { expectError(.timeout) { try device.nop() } }
    #expect(again < 1)
  }

  @Test func neverAcceptsTheQueuePair() throws {
    let rogue = try RogueDevice(acceptQueuePairs: false) { _ in .silent }
    let seconds = elapsed { expectError(.timeout, containing: ["did not accept queue pair"]) { _ = try rogue.open() } }
    #expect(seconds < 3)
  }

  @Test func unknownCommandID() throws {
    let rogue = try RogueDevice { e in .answer(CompletionEntry(commandID: e.commandID &+ 3, status: .success)) }
    let device = try rogue.open()
    expectError(.protocolViolation, containing: ["not in flight"]) { try device.nop() }
  }

  @Test func stalePhase() throws {
    let rogue = try RogueDevice { _ in
      .answerWith(CompletionEntry(commandID: 0, status: .success), sqHead: nil, flipPhase: true)
    }
    let device = try rogue.open()
    expectError(.timeout) { try device.nop() }
  }

  @Test func submissionHeadOutOfRange() throws {
    let rogue = try RogueDevice { _ in
      .answerWith(CompletionEntry(commandID: 0, status: .success), sqHead: 200, flipPhase: false)
    }
    let device = try rogue.open()
    expectError(.protocolViolation, containing: ["submission head 200"]) { try device.nop() }
  }

  @Test func unknownStatus() throws {
    let rogue = try RogueDevice { e in
      var c = CompletionEntry(commandID: 0, status: .success)
      c.status = 999
      return .answer(c)
    }
    let device = try rogue.open()
    expectError(.protocolViolation, containing: ["status 999"]) { try device.nop() }
  }

  @Test func lengthsOutOfRange() throws {
    let rogue = try RogueDevice { e in
      switch Opcode(rawValue: e.opcode) {
      case .copyFromDevice: .answer(CompletionEntry(commandID: 0, status: .success, result0: e.a2 + 1))
      case .memoryInfo: .answer(CompletionEntry(commandID: 0, status: .success, result0: 2 << 30, result1: 1 << 30))
      case .alloc: .answer(CompletionEntry(commandID: 0, status: .success, result0: 0x1000, result1: 1))
      default: .answer(CompletionEntry(commandID: 0, status: .success))
      }
    }
    let a = try rogue.open()
    expectError(.protocolViolation, containing: ["copy length"]) { _ = try a.read(DevicePointer(0x1000), count: 100) }
    a.close()
    let b = try rogue.open()
    expectError(.protocolViolation, containing: ["free of"]) { _ = try b.memoryInfo() }
    expectError(.protocolViolation, containing: ["of 1 bytes"]) { _ = try b.allocate(4096) }
  }

  @Test func deviceStopsWhileAClientWaits() throws {
    let rogue = try RogueDevice { _ in .silent }
    let device = try rogue.open(timeout: .seconds(10))
    DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) {
      rogue.registers.store(Register.status, StatusRegister.stopping.rawValue)
    }
    let seconds = elapsed { expectError(.unavailable, containing: ["stopped answering"]) { try device.nop() } }
    // Noticed within a sleep slice or so, not at the 10 s deadline (loose: the machine is shared).
    #expect(seconds < 3, "took \(seconds) s")
  }

  @Test func referenceDeviceStoppedMeansUnavailableNotAHang() throws {
    var options = OpenOptions.simulator()
    options.timeout = .seconds(10)
    let device = try Device.open("sim", options: options)
    let server = try #require(
      Mirror(reflecting: device).children.first { $0.label == "simulated" }?.value as? ReferenceDevice)
    server.stop()
    let seconds = elapsed { expectError(.unavailable) { try device.nop() } }
    #expect(seconds < 3, "took \(seconds) s")
  }
}
