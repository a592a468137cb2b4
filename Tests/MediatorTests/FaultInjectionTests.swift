import CSupport
import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// Faults injected into real processes: a mediator or a client SIGKILLed in
/// the middle of work, a reset request, a process playing a device that
/// answers wrongly, a doorbell storm. Clients use the default 2 s command
/// deadline (`OpenOptions.timeout`); the bounds asserted are generous
/// multiples of it, and what was measured is printed.
@Suite(.serialized) struct FaultInjectionTests {
  enum PlayedDevices { static let counter = Atomic<Int>(0) }

  /// Two clients each copy 64 MiB to the device and back, over and over;
  /// the mediator is SIGKILLed under them. Each says so and exits.
  @Test func aMediatorKilledMidCopyFailsEveryClient() throws {
    let mediator = try MediatorProcess()
    let clients = try (0..<2).map { _ in
      try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(64 << 20)", "0", "1"])
    }
    for c in clients { #expect(c.waitFor("ready", seconds: 60) != nil, "\(c.output)") }
    usleep(200_000)  // copies in flight
    let killed = Date()
    kill(mediator.process.processIdentifier, SIGKILL)
    for c in clients {
      // A client between copies makes its next 64 MiB of data (seconds in a debug build) before it notices.
      #expect(Faults.exits(c, within: 20), "a client hung after its mediator was killed: \(c.output)")
      #expect(c.process.terminationStatus == 1)
      let error = c.output.first { $0.hasPrefix("error") } ?? ""
      #expect(error.contains("has exited") && error.contains("restart vgpu-mediator"), "\(c.output)")
    }
    print(
      "mediator killed mid-copy: both clients failed within \(String(format: "%.2f", Date().timeIntervalSince(killed))) s"
    )
  }

  /// Two clients each wait on a kernel that loops; the mediator is SIGKILLed.
  @Test func aMediatorKilledMidLaunchFailsEveryClient() throws {
    let ptx = try Faults.ptxFile("endless_loop")
    defer { unlink(ptx) }
    let mediator = try MediatorProcess(arguments: ["--kernel-budget", "1000000000000"])
    let clients = try (0..<2).map { _ in
      try ClientProcess("vgpu-fault-client", ["launch", mediator.spec, ptx, "endless_loop"])
    }
    for c in clients { #expect(c.waitFor("ready", seconds: 30) != nil, "\(c.output)") }
    usleep(500_000)  // both loops run on workers; their progress extends the clients' deadlines
    let killed = Date()
    kill(mediator.process.processIdentifier, SIGKILL)
    for c in clients {
      #expect(Faults.exits(c, within: 10), "a client hung after its mediator was killed: \(c.output)")
      let error = c.output.first { $0.hasPrefix("error") } ?? ""
      #expect(error.contains("launch") && error.contains("has exited"), "\(c.output)")
    }
    print(
      "mediator killed mid-launch: both clients failed within \(String(format: "%.2f", Date().timeIntervalSince(killed))) s"
    )
  }

  /// A client SIGKILLed while its kernel loops: the kernel is cancelled (the
  /// mediator goes idle), its memory and pairs come back, and the next
  /// client's selftest passes.
  @Test func aClientKilledMidLaunchIsReclaimedAndItsKernelCancelled() throws {
    let ptx = try Faults.ptxFile("endless_loop")
    defer { unlink(ptx) }
    let mediator = try MediatorProcess(arguments: ["--kernel-budget", "1000000000000"])
    let observer = try Device.open(mediator.spec)
    defer { observer.close() }
    let before = try observer.memoryInfo().free
    let client = try ClientProcess("vgpu-fault-client", ["launch", mediator.spec, ptx, "endless_loop"])
    #expect(client.waitFor("ready", seconds: 30) != nil, "\(client.output)")
    usleep(500_000)
    #expect(try observer.memoryInfo().free < before, "the looping client holds no memory")
    let busy = Faults.cpuTicks(of: mediator, over: 1)
    let reclaim = Faults.killAndTimeReclaim(client, observer)
    #expect(reclaim != nil && reclaim! < 2, "reclaimed after \(reclaim.map { "\($0) s" } ?? "more than 5 s")")
    #expect(try waitUntil(seconds: 2) { try observer.memoryInfo().free == before })
    // The worker stopped: the mediator settles to (almost) no CPU.
    usleep(300_000)
    let idle = Faults.cpuTicks(of: mediator, over: 2)
    #expect(idle <= 10, "the mediator used \(idle) ticks in 2 s after the client was killed (a kernel still runs?)")
    let (passed, output) = try Faults.selftest(mediator.spec)
    #expect(passed, "\(output)")
    print(
      "client killed mid-launch: reclaimed in \(String(format: "%.0f", (reclaim ?? -1) * 1000)) ms;"
        + " mediator ticks per second: \(busy) while the kernel ran, \(idle / 2) after")
    #expect(mediator.stop().contains("its owner exited without closing it"))
  }

  /// A reset request while the device does not need one is dropped
  /// (docs/PROTOCOL.md §4): `control` reads 0 again, clients at work go on
  /// without an error, new clients work.
  @Test func aResetRequestTheDeviceDidNotAskForIsDropped() throws {
    let mediator = try MediatorProcess()
    let worker = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(4 << 20)", "\(64 << 20)", "2"])
    #expect(worker.waitFor("ready", seconds: 30) != nil, "\(worker.output)")
    // Its own BAR on a socket (the request can reach no other client's), the one file on shm:.
    let region =
      mediator.servesFile
      ? try MappedRegion.sharedFile(mediator.path) : try MediatorSocket.connect(mediator.path)
    let registers = RegisterBlock(region.base)
    for _ in 0..<100 {
      registers.store(Register.control, ControlRequest.reset.rawValue)
      _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
      _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
      usleep(10_000)
    }
    #expect(waitUntil(seconds: 2) { registers.load(Register.control) == ControlRequest.none.rawValue })
    #expect(worker.process.isRunning && !worker.output.contains { $0.hasPrefix("error") }, "\(worker.output)")
    let fresh = try Device.open(mediator.spec)
    try fresh.nop()
    #expect(try fresh.memoryInfo().free == (8 << 30) - (64 << 20) - 2 * (4 << 20))
    fresh.close()
  }

  /// A process plays the device and answers each way wrongly; a client of it
  /// gets an error that names what it found, within its deadline, and never
  /// crashes or hangs (the test process is that client).
  @Test(arguments: [
    ("wrong-id", "not in flight"), ("bad-status", "not a known status"), ("bad-head", "submission head"),
    ("garbage", "the device sent"), ("stale-phase", "no completion"), ("silent", "no completion"),
    ("needs-reset", "reset the device"), ("fault", "fault"),
  ])
  func aDeviceAnsweringWronglyGetsAClearError(mode: String, expected: String) throws {
    // No mode in the name: the error quotes the path.
    let path = "/dev/shm/vgpu-played-\(getpid())-\(PlayedDevices.counter.add(1, ordering: .relaxed).newValue)"
    defer { unlink(path) }
    let device = try ClientProcess("vgpu-fault-client", ["play-device", path, mode])
    defer { device.kill() }
    #expect(device.waitFor("ready", seconds: 10) != nil, "\(device.output)")
    let start = Date()
    var error: VGPUError?
    do {
      let client = try Device.open("shm:\(path)")
      defer { client.close() }
      // More commands than the ring holds: a phase that never flips shows on the second lap.
      for _ in 0..<20 { try client.nop() }
      let p = try client.allocate(4096)
      try client.copy(to: p, from: [UInt8](repeating: 1, count: 4096))
      Issue.record("every command succeeded against a device playing '\(mode)'")
    } catch let e { error = e }
    let took = Date().timeIntervalSince(start)
    // The deadline (2 s) and the open's own waits bound it.
    #expect(took < 8, "\(mode): the error came after \(took) s")
    let text = error?.description ?? ""
    #expect(text.contains(expected) && !text.contains("\n"), "\(mode): \(text)")
    print("played device '\(mode)': \(String(format: "%.2f", took)) s: \(text)")
  }

  /// A client rings its doorbells and the device's wake word millions of
  /// times with no or out-of-range tails: the others' selftests pass while it
  /// does, their NOPs still complete, and the mediator goes back to idle after.
  @Test func aDoorbellStormHurtsNoOtherClient() throws {
    let mediator = try MediatorProcess()
    let victim = try Device.open(mediator.spec)
    defer { victim.close() }
    func nopMicroseconds() throws -> Double {
      let start = Date()
      for _ in 0..<2000 { try victim.nop() }
      return Date().timeIntervalSince(start) / 2000 * 1e6
    }
    let quiet = try nopMicroseconds()
    let storm = try ClientProcess("vgpu-hostile", [mediator.spec, "8", "1", "--storm"])
    #expect(storm.waitFor("ready", seconds: 10) != nil, "\(storm.output)")
    let ticksBefore = mediator.cpuTicks
    let stormy = try nopMicroseconds()
    let (passed, output) = try Faults.selftest(mediator.spec)
    #expect(passed, "\(output)")
    let stormTicks = mediator.cpuTicks - ticksBefore
    #expect(Faults.exits(storm, within: 20), "\(storm.output.suffix(3))")
    let stats = storm.output.last { $0.hasPrefix("stats") } ?? ""
    #expect(stats.contains("rings="), "\(storm.output.suffix(3))")
    usleep(500_000)
    let after = Faults.cpuTicks(of: mediator, over: 2)
    #expect(after <= 6, "the mediator used \(after) ticks in 2 s after the storm")
    #expect(mediator.process.isRunning)
    #expect(Faults.settled(victim), "the storming client's pair was not reclaimed")
    print(
      "doorbell storm: NOP \(String(format: "%.1f", quiet)) µs quiet, \(String(format: "%.1f", stormy)) µs in the storm;"
        + " mediator \(stormTicks) ticks during, \(after) in 2 s after; \(stats)")
  }
}

extension FaultInjectionTests {
  /// A device that needs a reset (played: the reference device never needs
  /// one): both clients waiting on it get the reset remedy, not a hang; a
  /// client that does what it says (control = 1) gets a device that serves
  /// new clients (PROTOCOL.md §4).
  @Test func aDeviceThatNeedsAResetFailsEveryClientAndServesAfterOne() throws {
    let path = "/dev/shm/vgpu-played-\(getpid())-\(PlayedDevices.counter.add(1, ordering: .relaxed).newValue)"
    defer { unlink(path) }
    let device = try ClientProcess("vgpu-fault-client", ["play-device", path, "needs-reset"])
    defer { device.kill() }
    #expect(device.waitFor("ready", seconds: 10) != nil, "\(device.output)")
    var one = OpenOptions()
    one.queuePairs = 1
    let clients = try (0..<2).map { _ in try Device.open("shm:\(path)", options: one) }
    let errors = Mutex<[String]>([])
    let start = Date()
    for client in clients {
      Thread {
        do {
          try client.nop()
          errors.withLock { $0.append("the nop succeeded") }
        } catch { errors.withLock { $0.append("\(error)") } }
      }.start()
    }
    #expect(waitUntil(seconds: 8) { errors.withLock { $0.count } == 2 }, "a client hung")
    print("needs reset: both clients failed within \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
    for e in errors.withLock({ $0 }) {
      #expect(e.contains("reset the device (write 1 to its control register)"), "\(e)")
    }
    for c in clients { c.close() }

    let region = try MappedRegion.sharedFile(path)
    let registers = RegisterBlock(region.base)
    registers.store(Register.control, ControlRequest.reset.rawValue)
    #expect(waitUntil(seconds: 2) { registers.status == .ready })
    let fresh = try Device.open("shm:\(path)", options: one)
    for _ in 0..<20 { try fresh.nop() }
    fresh.close()
  }
}
