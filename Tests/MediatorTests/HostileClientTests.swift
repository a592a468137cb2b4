import CSupport
import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// A client of a real mediator that stores random values into every word of
/// its BAR a client can write — its own pair's state and owner pid, its
/// doorbells, `control` and `status` — while other clients run `pcitool
/// selftest` back to back on their own BARs. None of them may fail, the
/// mediator must keep serving, and everything must be reclaimed at the end.
///
/// 60 s by default (VGPU_HOSTILE_SECONDS sets another bound).
@Suite struct HostileClientTests {
  static let seconds: Double = ProcessInfo.processInfo.environment["VGPU_HOSTILE_SECONDS"].flatMap(Double.init) ?? 60

  @Test(.timeLimit(.minutes(5))) func aScribblingClientCannotStopOthersSelftests() throws {
    let mediator = try MediatorProcess()
    let region = try MediatorSocket.connect(mediator.path)
    let registers = RegisterBlock(region.base)
    let layout = try BARLayout(reading: registers, size: region.size)
    // The scribbler is a client like any other: it claims the last pair.
    let qp = Int(layout.queuePairs) - 1
    let view = QueuePairView(base: region.base, layout: layout, index: qp)
    #expect(QueuePairClaim.claim(view, pid: UInt32(getpid())))
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    #expect(QueuePairClaim.awaitAcceptance(view, deadline: vgpu_monotonic_ns() + 5_000_000_000) { usleep(100) })

    let stop = Atomic<Bool>(false)
    let stores = Atomic<Int>(0)
    let scribbler = Thread {
      var generator = SystemRandomNumberGenerator()
      let states: [UInt32] = [0, 1, 2, 3]
      var n = 0
      while !stop.load(ordering: .relaxed) {
        switch UInt8.random(in: 0..<7, using: &generator) {
        case 0:
          let s = Bool.random(using: &generator) ? states.randomElement(using: &generator)! : generator.next()
          view.block.storeBytes(of: s, toByteOffset: QueuePairBlock.state, as: UInt32.self)
        case 1: view.setOwnerPID(Bool.random(using: &generator) ? UInt32(getpid()) : generator.next())
        case 2: view.ringSubmission(tail: UInt32.random(in: 0..<(layout.depth * 2), using: &generator))
        case 3: view.ringCompletion(head: UInt32.random(in: 0..<(layout.depth * 2), using: &generator))
        case 4: registers.store(Register.control, Bool.random(using: &generator) ? 1 : generator.next())
        case 5: registers.store(Register.status, Bool.random(using: &generator) ? 0 : generator.next())
        default:
          // And wake the device, as a client would after a store.
          _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
          _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
        }
        n += 1
        // Bursts, so the scribbler does not take a whole core of two from the clients.
        if n % 64 == 0 { usleep(50) }
      }
      stores.store(n, ordering: .relaxed)
    }
    scribbler.start()

    var runs = 0
    var failures: [String] = []
    let deadline = Date().addingTimeInterval(Self.seconds)
    while Date() < deadline && failures.isEmpty {
      // Two selftests at once, each a separate client process.
      let a = try ClientProcess("pcitool", ["selftest", mediator.spec, "--timeout", "10"])
      let b = try ClientProcess("pcitool", ["selftest", mediator.spec, "--timeout", "10", "--threads", "2"])
      for client in [a, b] {
        client.process.waitUntilExit()
        runs += 1
        if client.process.terminationStatus != 0 { failures.append(client.output.joined(separator: "\n")) }
      }
    }
    stop.store(true, ordering: .relaxed)
    while stores.load(ordering: .relaxed) == 0 { usleep(1000) }
    #expect(failures.isEmpty, "\(failures.first ?? "")")
    #expect(runs >= 2)
    #expect(mediator.process.isRunning, "the mediator died")

    // The scribbler closes its pair; then every byte is back and new clients open.
    QueuePairClaim.release(view)
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    let observer = try Device.open(mediator.spec)
    #expect(try waitUntil(seconds: 5) { try observer.memoryInfo().free == 8 << 30 })
    #expect(registers.status.contains(.ready))
    observer.close()
    let log = mediator.stop()
    #expect(!log.lowercased().contains("fatal"), "\(log.suffix(2000))")
    print("hostile client: \(stores.load(ordering: .relaxed)) stores over \(Self.seconds) s; \(runs) selftests passed")
  }

  /// The reported lock-out: a client stores 0 into `status` (over and over
  /// here, on its own BAR); new clients still open the device and work.
  @Test func aZeroedStatusDoesNotLockOutNewClients() throws {
    let mediator = try MediatorProcess()
    let region = try MediatorSocket.connect(mediator.path)
    let registers = RegisterBlock(region.base)
    let stop = Atomic<Bool>(false)
    let scribbler = Thread {
      while !stop.load(ordering: .relaxed) {
        registers.store(Register.status, 0)
        usleep(100)
      }
    }
    scribbler.start()
    defer { stop.store(true, ordering: .relaxed) }
    for _ in 0..<3 {
      let client = try Device.open(mediator.spec)
      let p = try client.allocate(4096)
      try client.copy(to: p, from: [UInt8](repeating: 7, count: 4096))
      #expect(try client.read(p, count: 4096) == [UInt8](repeating: 7, count: 4096))
      try client.free(p)
      client.close()
    }
    #expect(mediator.process.isRunning)
  }
}
