import CSupport
import Glibc
import Testing
import VGPUProtocol

@testable import VGPU

/// Issue 17, the guest's half: a wait publishes the guest's CPU, and sleeps
/// at once, without its spin, when the device says it last ran on that CPU
/// (a spin there would keep the device off the core it needs).
@Suite struct GuestSpinPlacementTests {
  @Test func aWaitPublishesTheGuestsCPUAndSkipsTheSpinOnTheDevicesCore() throws {
    // The rogue device serves a pass every 100 µs, so every wait begins empty.
    let rogue = try RogueDevice { _ in .answer(CompletionEntry(status: .success)) }
    defer { rogue.stop() }
    let device = try rogue.open(timeout: .seconds(5))
    defer { device.close() }
    let view = QueuePairView(base: rogue.region.base, layout: rogue.layout, index: 0)
    try device.nop()
    #expect(view.guestCPU != 0, "a wait that began empty published no CPU")
    try device.withQueuePair(0) { (qp: inout GuestQueuePair) throws(VGPUError) in
      // The rogue device publishes no CPU: the guest spins as before.
      let before = qp.waitsOnSharedCore
      _ = try qp.execute(Command.Nop().entry, "nop")
      #expect(qp.waitsOnSharedCore == before)
      // "The device last ran on your CPU": the wait skips its spin. The
      // thread may move between the two reads: a few tries.
      var skipped = false
      for _ in 0..<20 where !skipped {
        view.publishDeviceCPU(vgpu_current_cpu())
        let n = qp.waitsOnSharedCore
        _ = try qp.execute(Command.Nop().entry, "nop")
        skipped = qp.waitsOnSharedCore > n
      }
      #expect(skipped)
      #expect(qp.broken == nil)
    }
    // And the answers still come: a sleep instead of a spin loses nothing.
    try device.nops(64, batch: 8)
  }

  @Test func aGuestBehindAPCIBARPublishesNoCPU() throws {
    // Across a VM the CPU numbers are not the device's: sameHost is false
    // for a pci: device, and such a pair neither publishes nor compares.
    let rogue = try RogueDevice { _ in .answer(CompletionEntry(status: .success)) }
    defer { rogue.stop() }
    let view = QueuePairView(base: rogue.region.base, layout: rogue.layout, index: 1)
    var pair = GuestQueuePair(
      view: view, registers: rogue.registers, layout: rogue.layout, base: rogue.region.base,
      timeoutNanoseconds: 5_000_000_000, deviceName: "rogue", sameHost: false)
    #expect(QueuePairClaim.claim(view, pid: UInt32(getpid())))
    #expect(QueuePairClaim.awaitAcceptance(view, deadline: vgpu_monotonic_ns() + 5_000_000_000, poll: { usleep(50) }))
    view.publishDeviceCPU(vgpu_current_cpu())
    _ = try pair.execute(QueuePairClaim.identify, "identify")
    _ = try pair.execute(Command.Nop().entry, "nop")
    #expect(view.guestCPU == 0)
    #expect(pair.waitsOnSharedCore == 0)
    QueuePairClaim.release(view)
  }
}
