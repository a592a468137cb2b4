import CSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// A guest can store anything into the words it shares with the device:
/// its pair's state and owner pid, the doorbells, `control`, `status`. The
/// device must act only on the transitions the protocol allows, keep its
/// accounting exact, and go on serving everyone else.
@Suite struct HostileGuestTests {
  func view(_ h: Harness, _ qp: Int) -> QueuePairView {
    QueuePairView(base: h.device.region.base, layout: h.layout, index: qp)
  }

  func totals(_ h: Harness) -> StatisticsRecord {
    h.device.executor.lock.withLock { _ in h.device.executor.deviceTotals }
  }
  func pairStats(_ h: Harness, _ qp: Int) -> StatisticsRecord {
    h.device.executor.lock.withLock { _ in h.device.executor.served[qp].stats }
  }

  /// The reported crash: claim + identify, alloc(4096), store `claiming`
  /// into the own state word and wake the device, identify, free. The old
  /// device accepted the pair again, zeroed its counters but kept its
  /// memory, and the free underflowed `bytesAllocated` (a trap: every client lost the device).
  @Test func claimingStoredIntoAnActivePairChangesNothing() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    let p = h.alloc(4096)
    view(h, 0).setState(.claiming)
    h.device.servePass()
    #expect(view(h, 0).state == QueuePairState.active.rawValue, "the state word was not put back")
    #expect(h.send(QueuePairClaim.identify).status == CommandStatus.success.rawValue)
    #expect(h.send(Command.Free(address: p).entry).status == CommandStatus.success.rawValue)
    #expect(h.device.memoryInUse.allocated == 0)
    #expect(totals(h).bytesAllocated == 0)
    #expect(pairStats(h, 0).bytesAllocated == 0)
    #expect(pairStats(h, 0).allocations == 1, "the counters were reset by a second accept")
    // Many scribbles later the pair is still listed once: passes do not slow down.
    for _ in 0..<1000 {
      view(h, 0).setState(.claiming)
      h.device.servePass()
    }
    #expect(h.device.executor.lock.withLock { _ in h.device.executor.activeQueuePairs } == [0])
    let q = h.alloc(1 << 20)
    h.expect(Command.Free(address: q).entry, .success)
    #expect(totals(h).bytesAllocated == 0)
  }

  /// Variant: the free goes through another pair of the same process.
  @Test func freeThroughAnotherPairOfTheSameProcess() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 1000)
    let p = h.alloc(4096, qp: 0)
    view(h, 0).setState(.claiming)
    h.device.servePass()
    h.expect(Command.Free(address: p).entry, .success, on: 1)
    #expect(h.device.memoryInUse.allocated == 0)
    #expect(totals(h).bytesAllocated == 0)
    // Live bytes are debited from the pair that allocated them; neither wraps.
    #expect(pairStats(h, 0).bytesAllocated == 0)
    #expect(pairStats(h, 1).bytesAllocated == 0)
    h.expect(Command.Free(address: p).entry, .invalidAddress, detail: 1, on: 0)
    #expect(totals(h).bytesAllocated == 0)
  }

  /// Variant: a process stores `claiming` and its own pid into another
  /// process's active pair. The victim keeps its pair and its memory; the
  /// intruder gets neither.
  @Test func reacceptingAnotherProcessesPair() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)  // the intruder
    h.claim(1, pid: 2000)  // the victim
    let v = h.alloc(8192, qp: 1)
    view(h, 1).setState(.claiming)
    view(h, 1).setOwnerPID(1000)
    h.device.servePass()
    #expect(view(h, 1).state == QueuePairState.active.rawValue)
    #expect(h.device.executor.lock.withLock { _ in h.device.executor.served[1].pid } == 2000)
    h.expect(Command.Free(address: v).entry, .permissionDenied, detail: 1, on: 0)
    h.expect(Command.MemoryInfo().entry, .success, on: 1)
    #expect(h.device.memoryInUse.allocated == 8192)
    h.expect(Command.Free(address: v).entry, .success, on: 1)
    #expect(totals(h).bytesAllocated == 0)
    #expect(pairStats(h, 1).bytesAllocated == 0)
  }

  /// `active` or garbage stored into a free pair is put back to free; no
  /// pair is accepted without a claim and a pid.
  @Test func garbageInAFreePairIsUndone() throws {
    let h = try Harness()
    for value: UInt32 in [2, 7, 0xffff_ffff] {
      view(h, 2).block.storeBytes(of: value, toByteOffset: QueuePairBlock.state, as: UInt32.self)
      view(h, 2).setOwnerPID(1234)
      h.device.servePass()
      #expect(view(h, 2).state == QueuePairState.free.rawValue)
      #expect(view(h, 2).ownerPID == 0)
    }
    #expect(h.device.executor.lock.withLock { _ in h.device.executor.activeQueuePairs }.isEmpty)
  }

  /// `control = reset` is honoured only while the device asks for a reset;
  /// forged status and layout registers are put back.
  @Test func controlAndRegistersCannotTakeTheDeviceFromOthers() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    let p = h.alloc(4096)
    let registers = RegisterBlock(h.device.region.base)
    let status = registers.load(Register.status)
    let depth = registers.load(Register.queueDepth)
    registers.store(Register.control, ControlRequest.reset.rawValue)
    registers.store(Register.status, status ^ 0xdead)
    registers.store(Register.queueDepth, 3)
    h.device.servePass()
    #expect(registers.load(Register.control) == ControlRequest.none.rawValue)
    #expect(view(h, 0).state == QueuePairState.active.rawValue, "a reset nobody needed dropped the pair")
    #expect(h.device.executor.lock.withLock { _ in h.device.executor.restoreRegisters() } == 2)
    #expect(registers.load(Register.status) == status)
    #expect(registers.load(Register.queueDepth) == depth)
    h.expect(Command.Free(address: p).entry, .success)
  }

  /// Random stores into one pair's words, `control` and `status`, between
  /// passes, while another process works on its own pair: every one of its
  /// commands succeeds, and when both are done the accounting is exact.
  @Test func randomStoresDoNotDisturbOtherPairs() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)  // the scribbler
    h.claim(1, pid: 2000)
    let attacker = view(h, 0)
    let registers = RegisterBlock(h.device.region.base)
    var generator = SystemRandomNumberGenerator()
    let states: [UInt32] = [0, 1, 2, 3]
    var held: [UInt64] = []
    for round in 0..<3000 {
      switch UInt8.random(in: 0..<6, using: &generator) {
      case 0:
        let s = Bool.random(using: &generator) ? states.randomElement(using: &generator)! : generator.next()
        attacker.block.storeBytes(of: s, toByteOffset: QueuePairBlock.state, as: UInt32.self)
      case 1: attacker.setOwnerPID(generator.next())
      case 2: attacker.ringSubmission(tail: UInt32.random(in: 0..<(h.layout.depth * 2), using: &generator))
      case 3: attacker.ringCompletion(head: UInt32.random(in: 0..<(h.layout.depth * 2), using: &generator))
      case 4: registers.store(Register.control, Bool.random(using: &generator) ? 1 : generator.next())
      default: registers.store(Register.status, generator.next())
      }
      h.device.servePass(quick: round % 3 != 0)
      if round % 10 == 0 { h.device.executor.lock.withLock { _ in _ = h.device.executor.restoreRegisters() } }
      if held.count < 8 && Bool.random(using: &generator) {
        let c = h.send(Command.Alloc(length: UInt64.random(in: 1...(1 << 16), using: &generator)).entry, on: 1)
        #expect(c.status == CommandStatus.success.rawValue)
        held.append(c.result0)
      } else if let p = held.popLast() {
        #expect(h.send(Command.Free(address: p).entry, on: 1).status == CommandStatus.success.rawValue)
      }
    }
    for p in held { h.expect(Command.Free(address: p).entry, .success, on: 1) }
    #expect(pairStats(h, 1).bytesAllocated == 0)
    // The scribbler closes (or is closed); everything it held goes back.
    attacker.setState(.closing)
    h.device.servePass()
    #expect(h.device.memoryInUse.allocated == 0)
    #expect(totals(h).bytesAllocated == 0)
    #expect(h.device.executor.lock.withLock { _ in h.device.executor.activeQueuePairs } == [1])
  }
}
