import CSupport
import DeviceAccess
import Foundation
import TestSupport
import VGPUProtocol

/// A process that plays the device on a BAR file it creates: a right
/// register block, claims accepted, identify answered, and then every other
/// command answered the way `mode` says, wrongly. The guest library must
/// turn each into an error that says what it found, never a crash or a hang
/// (the idea of Fuzz/Sources/guest-completions, with a real client process
/// and real futex wake-ups across processes).
struct PlayedDevice {
  enum Mode: String, CaseIterable {
    /// A completion for a command id that is not in flight.
    case wrongID = "wrong-id"
    /// A status beyond the highest the protocol defines.
    case badStatus = "bad-status"
    /// A submission head outside the commands in flight.
    case badHead = "bad-head"
    /// Random bytes in every field, with the right phase so that the guest reads them.
    case garbage
    /// Right answers whose phase never flips: after the first lap they look old.
    case stalePhase = "stale-phase"
    /// Accepts and identifies, then answers nothing.
    case silent
    /// Sets `needsReset` in the status register at the first command after
    /// identify and answers nothing; on a reset request (`control` = 1) drops
    /// every pair, says ready, and serves rightly from then on (PROTOCOL.md §4).
    case needsReset = "needs-reset"
    /// Sets the pair's fault word, as a device does for a broken doorbell.
    case fault
  }

  let path: String
  let mode: Mode
  /// Small rings, so a few commands go round the completion ring (`stalePhase`).
  let layout = BARLayout(queuePairs: 2, depth: 8, stagingSlotSize: 64 << 10, slotsPerQueue: 2)

  /// Per queue pair: where the device reads next, and how many completions it has posted.
  struct Pair {
    var head: SubmissionCursor
    var posted: UInt32 = 0
    var identified = false
  }

  func serve() -> Never {
    unlink(path)
    let region: MappedRegion
    do { region = try MappedRegion.sharedFile(path, create: Int(layout.regionSize)) } catch {
      fail("cannot create the BAR file \(path): \(error)")
    }
    let registers = RegisterBlock(region.base)
    registers.store(Register.magic, vgpuMagic)
    registers.store(Register.version, ProtocolVersion.packed)
    registers.store(Register.features, FeatureBits.all.rawValue)
    layout.write(to: registers)
    DeviceIdentity(
      name: "played device (\(mode.rawValue))", uuid: [UInt8](repeating: 0x42, count: 16), pciBusID: "0000:00:05.0",
      computeCapability: (7, 5), memorySize: 1 << 30, cudaDriverVersion: 12080, multiprocessorCount: 1,
      driverVersion: "0.0"
    ).write(to: registers)
    registers.store(Register.devicePID, UInt32(getpid()))
    let views = (0..<Int(layout.queuePairs)).map { QueuePairView(base: region.base, layout: layout, index: $0) }
    for v in views { v.setState(.free) }
    registers.store(Register.status, StatusRegister.ready.rawValue)
    say("ready")
    var pairs = views.map { _ in Pair(head: SubmissionCursor(depth: layout.depth)) }
    var random = SystemRandomNumberGenerator()
    var wasReset = false
    // Polls every 200 µs: a test device for a few seconds, not a model of manners.
    while true {
      if registers.load(Register.control) != ControlRequest.none.rawValue {
        let request = registers.load(Register.control)
        registers.store(Register.control, ControlRequest.none.rawValue)
        if request == ControlRequest.reset.rawValue
          && StatusRegister(rawValue: registers.load(Register.status)).contains(.needsReset)
        {
          for v in views where v.state != QueuePairState.free.rawValue {
            v.resetRings()
            v.setOwnerPID(0)
            v.setState(.free)
            v.wakeGuest()
          }
          registers.store(Register.status, StatusRegister.ready.rawValue)
          wasReset = true
        }
      }
      for (qp, view) in views.enumerated() {
        switch view.state {
        case QueuePairState.claiming.rawValue where view.ownerPID != 0:
          view.resetRings()
          pairs[qp] = Pair(head: SubmissionCursor(depth: layout.depth))
          _ = view.exchangeState(from: .claiming, to: .active)
        case QueuePairState.closing.rawValue:
          view.resetRings()
          view.setOwnerPID(0)
          view.setState(.free)
        case QueuePairState.active.rawValue:
          let tail = view.submissionTail & (layout.depth - 1)
          while pairs[qp].head.index != tail {
            let e = pairs[qp].head.pop(from: view)
            answer(e, &pairs[qp], view, registers, &random, wasReset: wasReset)
          }
        default: break
        }
      }
      usleep(200)
    }
  }

  func answer(
    _ e: SubmissionEntry, _ pair: inout Pair, _ view: QueuePairView, _ registers: RegisterBlock,
    _ random: inout SystemRandomNumberGenerator, wasReset: Bool
  ) {
    var c = CompletionEntry(status: .success)
    if e.opcode == Opcode.identify.rawValue && !pair.identified && mode != .garbage {
      pair.identified = true
      c =
        Command.Identify.Reply(
          features: FeatureBits.all.intersection(FeatureBits(rawValue: e.a1)), deviceVersion: ProtocolVersion.packed
        ).completion
    } else if !wasReset {  // after a reset, every other command succeeds
      switch mode {
      case .wrongID: c.commandID = e.commandID &+ 1
      case .badStatus: c.status = CommandStatus.highest &+ 7
      case .badHead: c.sqHead = UInt16(layout.depth) &+ 3
      case .garbage:
        c = CompletionEntry(status: .success, result0: random.next(), result1: random.next())
        c.detail = random.next()
        c.status = random.next()
        c.sqHead = random.next()
        c.commandID = random.next()
      case .stalePhase: break
      case .silent: return
      case .needsReset:
        registers.store(Register.status, StatusRegister.ready.union(.needsReset).rawValue)
        return
      case .fault:
        view.setFault(.tailOutOfRange)
        view.wakeGuest()
        return
      }
    }
    if mode != .wrongID && mode != .garbage { c.commandID = e.commandID }
    if mode != .badHead && mode != .garbage { c.sqHead = UInt16(pair.head.index) }
    // NVMe 1.4 §4.6: the phase inverts on each lap; `stalePhase` never inverts it.
    let lap = pair.posted / layout.depth
    c.phase = mode == .stalePhase || lap & 1 == 0 ? 1 : 0
    view.postCompletion(c, at: pair.posted & (layout.depth - 1))
    pair.posted &+= 1
    view.wakeGuest()
  }
}
