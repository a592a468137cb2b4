import CSupport
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// The guest heartbeat (2.3, docs/PROTOCOL.md §7) on an in-process device
/// whose owners are not this host's processes (a VM's): a pair whose owner
/// announced the heartbeat and stopped it is reclaimed with its memory; one
/// that keeps beating, or whose owner never announced it (a 2.2 guest),
/// is kept however long it is idle.
@Suite(.serialized) struct GuestHeartbeatTests {
  static func device(local: Bool, silence: UInt64 = 1_000_000_000) throws -> ReferenceDevice {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 64 << 20
    config.ownersAreLocalProcesses = local
    config.heartbeatSilenceNanoseconds = silence
    config.layout = BARLayout(queuePairs: 4, depth: 16, stagingSlotSize: 4096, slotsPerQueue: 2)
    return try ReferenceDevice(configuration: config)
  }

  /// Wakes the device (as a guest does after a claim or a doorbell), then waits a little.
  static func serve(_ device: ReferenceDevice) {
    let registers = RegisterBlock(device.region.base)
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    usleep(1000)
  }

  /// Claims pair `qp` and identifies, naming `features`: what the device agreed to.
  static func attach(_ device: ReferenceDevice, _ qp: Int, features: FeatureBits) -> (HandQueue, FeatureBits?) {
    var q = HandQueue(base: device.region.base, layout: device.layout, index: qp)
    guard q.claim(pid: UInt32(getpid()), serve: { serve(device) }) else { return (q, nil) }
    let c = q.send(Command.Identify(guestFeatures: features).entry, timeout: .seconds(5), serve: { serve(device) })
    guard let c, c.status == CommandStatus.success.rawValue else { return (q, nil) }
    return (q, Command.Identify.Reply(c).features)
  }

  @Test func aSilentAnnouncerIsReclaimedAndBeatersAndOldGuestsAreNot() throws {
    let device = try Self.device(local: false)
    let events = Mutex<[DeviceEvent]>([])
    device.onEvent = { e in events.withLock { $0.append(e) } }
    device.start()
    defer { device.stop() }
    let offered = FeatureBits(rawValue: RegisterBlock(device.region.base).load(Register.features))
    #expect(offered.contains(.guestHeartbeat))

    let announced = FeatureBits.all.union(.guestHeartbeat)
    // The silent one announces, takes memory (which must come back with its pair), and goes quiet.
    var (silent, silentAgreed) = Self.attach(device, 0, features: announced)
    let announcedAt = HandQueue.now()
    #expect(silentAgreed?.contains(.guestHeartbeat) == true)
    let alloc = silent.send(Command.Alloc(length: 1 << 20).entry, timeout: .seconds(5), serve: { Self.serve(device) })
    #expect(alloc?.status == CommandStatus.success.rawValue)
    #expect(device.memoryInUse.allocated >= 1 << 20)
    let (beater, beaterAgreed) = Self.attach(device, 1, features: announced)
    beater.view.beat()
    let (old, oldAgreed) = Self.attach(device, 2, features: .all)
    #expect(beaterAgreed?.contains(.guestHeartbeat) == true)
    #expect(oldAgreed == FeatureBits.all.subtracting([.sharedHostMemory, .hostWindow]), "a 2.2 guest is not made to beat")

    // 2.5 s: 2.5 times the silence. The beater beats every 100 ms meanwhile.
    var reclaimedAfter: UInt64?
    while HandQueue.now() - announcedAt < 2_500_000_000 {
      beater.view.beat()
      usleep(100_000)
      if reclaimedAfter == nil && silent.view.state == QueuePairState.free.rawValue {
        reclaimedAfter = HandQueue.now() - announcedAt
      }
    }
    let took = try #require(reclaimedAfter, "the silent pair was not reclaimed")
    print(
      "in-process: a pair whose heartbeat stopped was reclaimed \(took / 1_000_000) ms after its identify (silence 1 s)"
    )
    #expect(took >= 900_000_000 && took < 1_500_000_000)
    #expect(device.memoryInUse.allocated == 0)
    #expect(beater.view.state == QueuePairState.active.rawValue)
    #expect(old.view.state == QueuePairState.active.rawValue)
    let reasons = events.withLock { $0 }.compactMap { e -> (Int, DeviceEvent.ReleaseReason)? in
      if case .released(let qp, _, let reason, _, _) = e { return (qp, reason) }
      return nil
    }
    #expect(reasons.map(\.0) == [0] && reasons.first?.1 == .heartbeatStopped, "\(reasons)")
  }

  /// Where owners' exits are seen otherwise (this host's processes), the
  /// heartbeat is neither offered nor agreed to, and no pair is reclaimed for silence.
  @Test func aDeviceThatSeesItsOwnersDoesNotOfferIt() throws {
    let device = try Self.device(local: true)
    device.start()
    defer { device.stop() }
    let offered = FeatureBits(rawValue: RegisterBlock(device.region.base).load(Register.features))
    #expect(!offered.contains(.guestHeartbeat))
    let (q, agreed) = Self.attach(device, 0, features: FeatureBits.all.union(.guestHeartbeat))
    // Host memory is lent only on a BAR of one process's own.
    #expect(agreed == FeatureBits.all.subtracting([.sharedHostMemory, .hostWindow]))
    _ = q
  }
}
