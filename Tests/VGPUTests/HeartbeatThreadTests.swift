import CSupport
import Foundation
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// The guest's side of the heartbeat (2.3): a thread per opened device that
/// beats at its period and no more often, only for a device that asks for
/// it, and that is gone when the device is closed.
@Suite(.serialized) struct HeartbeatThreadTests {
  /// The thread alone, on a queue pair of a BAR in plain memory, at a 50 ms period.
  @Test func beatsAtItsPeriodAndStopsAtOnce() throws {
    let layout = BARLayout(queuePairs: 2, depth: 2, stagingSlotSize: 4096, slotsPerQueue: 1)
    let bar = UnsafeMutableRawPointer.allocate(byteCount: Int(layout.regionSize), alignment: 4096)
    defer { bar.deallocate() }
    bar.initializeMemory(as: UInt8.self, repeating: 0, count: Int(layout.regionSize))
    let views = (0..<2).map { QueuePairView(base: bar, layout: layout, index: $0) }
    let pid = UInt32(getpid())
    // Claimed, not yet accepted: nothing to beat for.
    for view in views {
      view.setState(.claiming)
      view.setOwnerPID(pid)
    }
    let thread = try #require(HeartbeatThread(views: views, pid: pid, periodNanoseconds: 50_000_000))
    usleep(120_000)
    #expect(views.map(\.heartbeat) == [0, 0])
    for view in views { view.setState(.active) }
    usleep(525_000)
    let beats = views.map(\.heartbeat)
    // One per 50 ms once accepted: 10 or 11 in 525 ms; a loaded host delays some, none comes early.
    #expect(beats[0] == beats[1] && (6...11).contains(beats[0]), "\(beats)")
    #expect(!thread.lost)
    // The device takes pair 1 back (as for a silent heartbeat): the thread
    // beats for it no more, and says so.
    views[1].setOwnerPID(0)
    views[1].setState(.free)
    #expect(thread.lost)
    let taken = views[1].heartbeat
    usleep(120_000)
    #expect(views[1].heartbeat == taken && views[0].heartbeat > beats[0])
    let start = vgpu_monotonic_ns()
    thread.stop()
    let stopped = vgpu_monotonic_ns() - start
    #expect(stopped < 40_000_000, "stop took \(stopped / 1_000_000) ms: it must not wait out the period")
    let after = views.map(\.heartbeat)
    usleep(150_000)
    #expect(views.map(\.heartbeat) == after, "a beat after stop()")
    thread.stop()  // twice: nothing
  }

  /// A device that cannot see this process asks for the heartbeat: the
  /// client's pairs beat every 400 ms while it is open, idle or not.
  @Test func anOpenDeviceBeatsOnlyWhenTheDeviceAsks() throws {
    var blind = ReferenceDeviceConfiguration()
    blind.memorySize = 64 << 20
    blind.ownersAreLocalProcesses = false
    var options = OpenOptions.simulator(blind)
    options.queuePairs = 2
    let device = try Device.open("sim", options: options)
    #expect(device.info.features.contains(.guestHeartbeat))
    let views = try (0..<device.info.queuePairs).map { i in try device.withQueuePair(i) { $0.view } }
    let first = views.map(\.heartbeat)
    usleep(1_300_000)
    let beats = zip(views.map(\.heartbeat), first).map { $0 &- $1 }
    // 1.3 s at 400 ms: 3 beats (2 if the thread is late), never more.
    #expect(beats.allSatisfy { (2...4).contains($0) }, "\(beats)")
    let start = vgpu_monotonic_ns()
    device.close()
    #expect(vgpu_monotonic_ns() - start < 1_000_000_000)

    // The default sim sees its owners: no heartbeat asked for, none sent.
    let seeing = try Device.open("sim", options: .simulator())
    defer { seeing.close() }
    #expect(!seeing.info.features.contains(.guestHeartbeat))
    let quiet = try (0..<seeing.info.queuePairs).map { i in try seeing.withQueuePair(i) { $0.view } }
    usleep(500_000)
    #expect(quiet.allSatisfy { $0.heartbeat == 0 })
  }
}
