import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol

@testable import VGPU

/// Several devices served by one thread of a `ServingPool` (what the socket
/// mediator does for its host processes), each with clients of its own.
@Suite(.serialized) struct ServingPoolTests {
  /// `count` devices on BAR files in /dev/shm, started in `pool`; a missed
  /// wake-up would stall a client for `sleepSlice` (the test would notice).
  static func devices(
    _ count: Int, in pool: ServingPool, memory: UInt64 = 1 << 30, sleepSlice: UInt64 = 20_000_000_000
  ) throws -> ([ReferenceDevice], [String]) {
    var configuration = ReferenceDeviceConfiguration()
    configuration.memorySize = memory
    configuration.wait.sleepSliceNanoseconds = sleepSlice
    configuration.idleSleepNanoseconds = sleepSlice
    configuration.kernelWorkers = 1
    var devices: [ReferenceDevice] = []
    var paths: [String] = []
    for i in 0..<count {
      let path = "/dev/shm/vgpu-pool-test-\(getpid())-\(i)"
      unlink(path)
      let region = try MappedRegion.sharedFile(path, create: Int(configuration.layout.regionSize))
      let device = try ReferenceDevice(configuration: configuration, region: region)
      // Clients check that the serving process lives: this one.
      device.announce(pid: UInt32(getpid()))
      device.start(in: pool)
      devices.append(device)
      paths.append(path)
    }
    return (devices, paths)
  }

  /// Runs `body` with `count` devices on a pool of `threads`, then stops them all.
  static func withDevices(
    _ count: Int, threads: Int, memory: UInt64 = 1 << 30,
    _ body: (ServingPool, [ReferenceDevice], [String]) throws -> Void
  ) throws {
    let pool = ServingPool(threads: threads)
    defer { pool.stop() }
    let (devices, paths) = try Self.devices(count, in: pool, memory: memory)
    defer {
      for d in devices { d.stop() }
      for p in paths { unlink(p) }
    }
    try body(pool, devices, paths)
  }

  @Test func oneThreadServesEveryDevicesClientsAtOnce() throws {
    try Self.withDevices(4, threads: 1) { pool, devices, paths in
      #expect(pool.devicesPerThread == [4])
      let failures = Mutex<[String]>([])
      // Two clients per device, each copying its own data through and back.
      DispatchQueue.concurrentPerform(iterations: 8) { t in
        do {
          let device = try Device.open("shm:\(paths[t % 4])")
          defer { device.close() }
          for round in 0..<5 {
            let size = 4096 + (t * 7919 + round * 104_729) % (1 << 20)
            let data = randomBytes(size, seed: UInt64(t * 100 + round))
            let p = try device.allocate(size)
            try device.copy(to: p, from: data)
            try device.nops(200)
            if try device.read(p, count: size) != data {
              failures.withLock { $0.append("client \(t) round \(round): data differs") }
            }
            try device.free(p)
          }
        } catch {
          failures.withLock { $0.append("client \(t): \(error)") }
        }
      }
      #expect(failures.withLock { $0 } == [])
      for (i, d) in devices.enumerated() {
        #expect(d.memoryInUse.allocated == 0, "device \(i) still holds memory")
      }
    }
  }

  @Test func aStoppedDeviceLeavesThePoolAndTheOthersServeOn() throws {
    try Self.withDevices(3, threads: 2) { pool, devices, paths in
      #expect(pool.devicesPerThread.sorted() == [1, 2])
      let clients = try paths.map { try Device.open("shm:\($0)") }
      defer { for c in clients { c.close() } }
      for c in clients { try c.nop() }
      devices[0].stop()
      #expect(pool.devicesPerThread.reduce(0, +) == 2)
      // The stopped device's client is told; the others are served as before.
      #expect(throws: VGPUError.self) { try clients[0].nop() }
      for c in clients.dropFirst() {
        let p = try c.allocate(1 << 16)
        try c.memset(p, value: 0xab, count: 1 << 16)
        #expect(try c.read(p, count: 1 << 16) == [UInt8](repeating: 0xab, count: 1 << 16))
        try c.free(p)
      }
    }
  }

  /// The pool's thread sleeps on all its devices' wake words at once: after
  /// it fell asleep, a command on any one device wakes it (a sleep slice of
  /// 20 s means a missed wake-up would take that long).
  @Test func anIdlePoolWakesForAnyOfItsDevices() throws {
    try Self.withDevices(3, threads: 1) { pool, _, paths in
      let clients = try paths.map { try Device.open("shm:\($0)") }
      defer { for c in clients { c.close() } }
      for round in 0..<6 {
        // Past the device's 50 µs spin and the guest's: both sleep.
        usleep(30_000)
        let started = DispatchTime.now().uptimeNanoseconds
        try clients[(round * 2) % 3].nop()
        let took = DispatchTime.now().uptimeNanoseconds - started
        #expect(took < 5_000_000_000, "round \(round): a NOP after an idle pause took \(took / 1_000_000) ms")
      }
      // Asleep, not polling: the thread's CPU time stands still while idle.
      usleep(10_000)
      let before = pool.cpuNanoseconds[0]
      usleep(300_000)
      let used = pool.cpuNanoseconds[0] - before
      #expect(used < 30_000_000, "the idle pool's thread used \(used / 1_000_000) ms of CPU in 300 ms")
    }
  }

  /// After a sleep, only the devices whose wake word moved get a full pass
  /// (the others are woken "for another"): a device woken for its
  /// neighbour's doorbell must still notice a client that claims a pair on
  /// it right after, and serve it (a claim missed until the next sleep
  /// slice would take 20 s).
  @Test func aDeviceWokenForAnotherStillTakesItsOwnNewClient() throws {
    try Self.withDevices(2, threads: 1) { _, _, paths in
      let first = try Device.open("shm:\(paths[0])")
      defer { first.close() }
      for round in 0..<4 {
        // Both sleep; the first device's NOP wakes the thread by its word only.
        usleep(30_000)
        try first.nop()
        let started = DispatchTime.now().uptimeNanoseconds
        let second = try Device.open("shm:\(paths[1])")
        try second.nop()
        second.close()
        let took = DispatchTime.now().uptimeNanoseconds - started
        #expect(took < 5_000_000_000, "round \(round): opening the other device took \(took / 1_000_000) ms")
      }
    }
  }

  /// More devices than one futex_waitv takes (128 words, the thread's own
  /// among them): the thread then naps a millisecond at a time, and still
  /// answers each device after an idle pause (a missed one would take the
  /// 20 s sleep slice).
  @Test func moreDevicesThanOneFutexWaitvTakesAreStillServed() throws {
    try Self.withDevices(130, threads: 1, memory: 64 << 20) { pool, _, paths in
      #expect(pool.devicesPerThread == [130])
      for i in [0, 64, 129] {
        let client = try Device.open("shm:\(paths[i])")
        defer { client.close() }
        usleep(30_000)
        let started = DispatchTime.now().uptimeNanoseconds
        try client.nop()
        let took = DispatchTime.now().uptimeNanoseconds - started
        #expect(took < 5_000_000_000, "device \(i): a NOP after an idle pause took \(took / 1_000_000) ms")
      }
    }
  }
}
