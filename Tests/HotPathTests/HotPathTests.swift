import DeviceAccess
import Foundation
import MallocCounter
import TestSupport
import Testing
import VGPUProtocol
import VGPUSimulator

@testable import VGPU
@testable import VGPUDevice

/// The submit / doorbell / poll / complete / copy path allocates nothing, on
/// either side: counted by a malloc replacement, per thread.
@Suite(.serialized) struct HotPathTests {
  func allocations(_ body: () throws -> Void) rethrows -> UInt64 {
    let before = malloc_counter_thread_allocations()
    try body()
    return malloc_counter_thread_allocations() - before
  }

  /// The device the guest tests open: `sim`, or a shared-memory BAR served
  /// by a reference device in this process, as a mediator serves it. The
  /// second has a long name: formatting it costs an allocation, which the
  /// hot path must not do (the benchmark found one that `sim`, a short
  /// string, hid).
  final class Opened {
    let device: Device
    private var served: (ReferenceDevice, String)?
    init(_ kind: String) throws {
      if kind == "sim" {
        var options = OpenOptions.simulator()
        // The in-process engine under a sanitizer at load 12+ took over the 2 s silence deadline.
        options.timeout = .seconds(2 * Sanitizer.slowdown)
        device = try Device.open("sim", options: options)
        return
      }
      let path = "/dev/shm/vgpu-hot-path-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
      let region = try MappedRegion.sharedFile(path, create: 64 << 20, exclusive: true)
      var config = ReferenceDeviceConfiguration()
      config.memorySize = 64 << 20
      let reference = try ReferenceDevice(configuration: config, region: region)
      reference.announce(pid: UInt32(getpid()))
      reference.start()
      served = (reference, path)
      var options = OpenOptions()
      options.timeout = .seconds(2 * Sanitizer.slowdown)
      do { device = try Device.open("shm:" + path, options: options) } catch {
        reference.stop()
        unlink(path)
        throw error
      }
    }
    deinit {
      device.close()
      if let (reference, path) = served {
        reference.stop()
        unlink(path)
      }
    }
  }

  @Test func theCounterCounts() {
    let n = allocations { _ = [Int](repeating: 1, count: 1000 + Int.random(in: 0...1)) }
    #expect(n >= 1)
  }

  @Test(arguments: ["sim", "shm"]) func guestNOPAllocatesNothing(_ kind: String) throws {
    let opened = try Opened(kind)
    let device = opened.device
    for _ in 0..<1000 { try device.nop() }  // warm up: lazy runtime metadata, page faults
    // The batch path too: its first call instantiates generic metadata (one allocation).
    try device.nops(64, batch: 32)
    let n = try allocations { for _ in 0..<10_000 { try device.nop() } }
    #expect(n == 0, "\(n) allocations in 10000 NOP round trips")
    let batched = try allocations { try device.nops(10_000, batch: 32) }
    #expect(batched == 0)
    // The batch API, with the caller's buffer of commands.
    let entries = UnsafeMutableBufferPointer<SubmissionEntry>.allocate(capacity: 1000)
    defer { entries.deallocate() }
    entries.initialize(repeating: Command.Nop().entry)
    _ = try device.execute(UnsafeBufferPointer(entries), batch: 32)
    var outcome = BatchOutcome(completed: 0, firstError: nil)
    let executed = try allocations { outcome = try device.execute(UnsafeBufferPointer(entries), batch: 32) }
    #expect(executed == 0, "\(executed) allocations in a batch of 1000 NOPs")
    #expect(outcome.completed == 1000 && outcome.firstError == nil)
  }

  @Test(arguments: ["sim", "shm"]) func guestCopiesAllocateNothing(_ kind: String) throws {
    let opened = try Opened(kind)
    let device = opened.device
    let size = 3 << 20
    let host = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    defer { host.deallocate() }
    let p = try device.allocate(size)
    try device.copy(to: p, from: UnsafeRawBufferPointer(host))
    try device.copy(from: p, into: host)
    let n = try allocations {
      for _ in 0..<20 {
        try device.copy(to: p, from: UnsafeRawBufferPointer(host))
        try device.copy(from: p, into: host)
        try device.copy(to: p + 4096, from: p, count: 8192)
      }
    }
    #expect(n == 0, "\(n) allocations in 60 copies")
  }

  /// Copies from and to host memory shared with the device (2.4): `sim`
  /// shares it (its pairs are this process's); the lookup and the commands
  /// allocate nothing either.
  @Test func sharedHostCopiesAllocateNothing() throws {
    let opened = try Opened("sim")
    let device = opened.device
    let size = 3 << 20
    let host = try #require(try device.allocateSharedHostMemory(size))
    defer { _ = try? device.freeSharedHostMemory(host.baseAddress!) }
    let p = try device.allocate(size)
    let n = try roundTripAllocations(device, p, host)
    #expect(n == 0, "\(n) allocations in 40 copies of 3 MiB through shared host memory")
    try device.free(p)
  }

  /// Allocations in 20 round trips between `host` and `p`, after one to warm up.
  func roundTripAllocations(_ device: Device, _ p: DevicePointer, _ host: UnsafeMutableRawBufferPointer) throws
    -> UInt64
  {
    try device.copy(to: p, from: UnsafeRawBufferPointer(host))
    try device.copy(from: p, into: host)
    return try allocations {
      for _ in 0..<20 {
        try device.copy(to: p, from: UnsafeRawBufferPointer(host))
        try device.copy(from: p, into: host)
      }
    }
  }

  /// Copies from and to the page-locked window (2.4, a VM's device): the
  /// range lookup and the pipelined copies naming window offsets allocate nothing.
  @Test func windowCopiesAllocateNothing() throws {
    var vm = ReferenceDeviceConfiguration()
    vm.memorySize = 64 << 20
    vm.ownersAreLocalProcesses = false
    vm.hostWindow = 8 << 20
    var options = OpenOptions.simulator(vm)
    options.timeout = .seconds(2 * Sanitizer.slowdown)
    let device = try Device.open("sim", options: options)
    defer { device.close() }
    let size = 3 << 20
    let host = try #require(try device.allocateSharedHostMemory(size))
    defer { _ = try? device.freeSharedHostMemory(host.baseAddress!) }
    #expect(device.pageLocked(host.baseAddress!, size) != nil)
    let p = try device.allocate(size)
    let n = try roundTripAllocations(device, p, host)
    #expect(n == 0, "\(n) allocations in 40 copies of 3 MiB through the page-locked window")
    // Ordinary memory on the same device: the heartbeat's check before each command allocates nothing either.
    let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    defer { plain.deallocate() }
    let m = try roundTripAllocations(device, p, plain)
    #expect(m == 0, "\(m) allocations in 40 staged copies on a device that asks for the heartbeat")
    try device.free(p)
  }

  /// The device's side of window copies: the staging check that falls
  /// through to the window's ranges allocates nothing.
  @Test func deviceServesWindowCopiesAllocatingNothing() throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 1 << 30
    config.ownersAreLocalProcesses = false
    config.hostWindow = 1 << 20
    config.layout = BARLayout(queuePairs: 1, depth: 64, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
    let device = try ReferenceDevice(configuration: config)
    var queue = HandQueue(base: device.region.base, layout: config.layout, index: 0)
    #expect(queue.claim(pid: 1) { device.servePass() })
    let serve: () -> Void = { device.servePass() }
    #expect(try queue.identify(serve: serve)?.get().contains(.hostWindow) == true)
    let allocated = queue.send(Command.Alloc(length: 1 << 20).entry, serve: serve)
    let placed = queue.send(Command.WindowAlloc(length: 256 << 10).entry, serve: serve)
    let alloc = try #require(allocated)
    let window = try #require(placed)
    #expect(window.status == CommandStatus.success.rawValue)
    let (address, stg) = (alloc.result0, window.result0)
    let work = [
      Command.CopyToDevice(device: address, staging: stg, length: 65536).entry,
      Command.CopyFromDevice(device: address + 65536, staging: stg + 65536, length: 65536).entry,
      Command.CopyToDevice(device: address, staging: stg + 4097, length: 100_000).entry,
    ]
    var failures = 0
    func batch() -> UInt64 {
      for e in work { queue.submit(e) }
      queue.ring()
      let n = allocations { device.servePass() }
      queue.takeAll { c in failures += c.status == CommandStatus.success.rawValue ? 0 : 1 }
      return n
    }
    _ = batch()  // warm up
    var total: UInt64 = 0
    for _ in 0..<100 { total += batch() }
    #expect(total == 0, "\(total) allocations serving \(100 * work.count) window copies")
    #expect(failures == 0)
  }

  @Test(arguments: ["sim", "shm"]) func guestLaunchesAllocateNothing(_ kind: String) throws {
    let opened = try Opened(kind)
    let device = opened.device
    let n = 1024
    let p = try device.allocate(n * 4)
    let module = try device.loadModule(TestPTX.fillAndVectorAddImage)
    let fill = try device.function("fill", in: module)
    let packed = try #require(fill.layout).pack([.pointer(p.address), .f32(2), .u32(UInt32(n))])
    // kernelParams as CUDA passes them: one pointer per parameter.
    var address = p.address
    var value: Float = 3
    var count = UInt32(n)
    try withUnsafeMutableBytes(of: &address) { a in
      try withUnsafeMutableBytes(of: &value) { v in
        try withUnsafeMutableBytes(of: &count) { c in
          let arguments: [UnsafeMutableRawPointer?] = [a.baseAddress, v.baseAddress, c.baseAddress]
          try packed.withUnsafeBytes { parameters in
            try arguments.withUnsafeBufferPointer { args in
              let grid = Dimensions(UInt32(n / 256))
              let block = Dimensions(256)
              for _ in 0..<100 {  // warm up
                try device.launch(fill, grid: grid, block: block, parameters: parameters)
                try device.launch(fill, grid: grid, block: block, arguments: args.baseAddress!)
              }
              let packedCount = try allocations {
                for _ in 0..<100 { try device.launch(fill, grid: grid, block: block, parameters: parameters) }
              }
              #expect(packedCount == 0, "\(packedCount) allocations in 100 launches with a packed buffer")
              // The array overload, as the benchmark launches.
              for _ in 0..<100 { try device.launch(fill, grid: grid, block: block, parameters: packed) }
              let arrayCount = try allocations {
                for _ in 0..<100 { try device.launch(fill, grid: grid, block: block, parameters: packed) }
              }
              #expect(arrayCount == 0, "\(arrayCount) allocations in 100 launches with a [UInt8] buffer")
              let argumentCount = try allocations {
                for _ in 0..<100 { try device.launch(fill, grid: grid, block: block, arguments: args.baseAddress!) }
              }
              #expect(argumentCount == 0, "\(argumentCount) allocations in 100 launches with kernelParams")
            }
          }
        }
      }
    }
    #expect(try device.read(p, count: 4).withUnsafeBytes { $0.load(as: Float.self) } == 3)
  }

  @Test func deviceServingAllocatesNothing() throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 1 << 30
    config.layout = BARLayout(queuePairs: 1, depth: 64, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
    let device = try ReferenceDevice(configuration: config)
    var queue = HandQueue(base: device.region.base, layout: config.layout, index: 0)
    #expect(queue.claim(pid: 1) { device.servePass() })
    let serve: () -> Void = { device.servePass() }
    let negotiated = queue.identify(serve: serve)
    #expect(
      try negotiated?.get() == FeatureBits.all.subtracting([.sharedHostMemory, .hostWindow, .coalescedCompletions]))
    // Set up outside the counted region: memory.
    let stg = config.layout.staging(0)
    func setUp(_ entry: SubmissionEntry) throws -> CompletionEntry {
      let reply = queue.send(entry, serve: serve)
      let c = try #require(reply)
      #expect(c.status == CommandStatus.success.rawValue, "\(Opcode(rawValue: entry.opcode)!)")
      return c
    }
    let address = Command.Alloc.Reply(try setUp(Command.Alloc(length: 1 << 20).entry)).address

    // No launch: a PTX launch allocates on the device (the interpreter sets
    // up each launch: registers, shared memory, its caches). The guest's side
    // of a launch allocates nothing (guestLaunchesAllocateNothing).
    // A run of NOPs first: the device serves it from the entries' first
    // words, counted in one addition (issue 17).
    let work =
      Array(repeating: Command.Nop().entry, count: 16) + [
        Command.Nop().entry,
        Command.CopyToDevice(device: address, staging: stg, length: 65536).entry,
        Command.CopyFromDevice(device: address + 65536, staging: stg, length: 65536).entry,
        Command.CopyDeviceToDevice(destination: address, source: address + 4096, length: 4096).entry,
        Command.Memset(address: address + 8192, value: 0x4000_0000, elementSize: 4, count: 1024).entry,
        Command.MemoryInfo().entry,
      ]
    var failures: [String] = []
    failures.reserveCapacity(work.count)
    var completed = 0
    func batch() -> UInt64 {
      for e in work { queue.submit(e) }
      queue.ring()
      let n = allocations { device.servePass() }
      queue.takeAll { c in
        completed += 1
        if c.status != CommandStatus.success.rawValue { failures.append("command \(c.commandID): status \(c.status)") }
      }
      return n
    }
    _ = batch()  // warm up
    var total: UInt64 = 0
    for _ in 0..<100 { total += batch() }
    #expect(total == 0, "\(total) allocations serving \(100 * work.count) commands")
    #expect(completed == 101 * work.count)
    #expect(failures.isEmpty, "\(failures.prefix(10))")
    // The commands ran: the memset wrote 2.0 into 1024 floats.
    let filled = queue.send(
      Command.CopyFromDevice(device: address + 8192, staging: stg, length: 4096).entry, serve: serve)
    #expect(filled?.status == CommandStatus.success.rawValue)
    let floats = UnsafeRawBufferPointer(start: device.region.base + Int(stg), count: 4096)
    #expect((0..<1024).allSatisfy { floats.load(fromByteOffset: $0 * 4, as: Float.self) == 2 })
  }

  /// A serving pool's thread, 4 devices on it, allocates nothing in its
  /// rounds: busy ones (a client's NOPs on each), idle spins, sleeps on all
  /// wake words that time out, and wake-ups. Counted on the pool's thread,
  /// which records its count at the start of every round.
  @Test func servingPoolRoundsAllocateNothing() throws {
    let pool = ServingPool(
      threads: 1, wait: .device,
      turn: Turn(commands: ServingPool.defaultCommandsPerTurn, nanoseconds: ServingPool.defaultTurnNanoseconds),
      solo: false, allocationProbe: malloc_counter_thread_allocations)
    defer { pool.stop() }
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 64 << 20
    // Short sleeps and reaps, so an idle pause has sleeps that time out and housekeeping.
    config.wait.sleepSliceNanoseconds = 2_000_000
    config.idleSleepNanoseconds = 2_000_000
    config.reapIntervalNanoseconds = 5_000_000
    var devices: [ReferenceDevice] = []
    var paths: [String] = []
    defer {
      for d in devices { d.stop() }
      for p in paths { unlink(p) }
    }
    for i in 0..<4 {
      let path = "/dev/shm/vgpu-hot-path-pool-\(getpid())-\(i)"
      unlink(path)
      paths.append(path)
      let region = try MappedRegion.sharedFile(path, create: Int(config.layout.regionSize), exclusive: true)
      let device = try ReferenceDevice(configuration: config, region: region)
      device.announce(pid: UInt32(getpid()))
      device.start(in: pool)
      devices.append(device)
    }
    #expect(pool.devicesPerThread == [4])
    var options = OpenOptions()
    options.timeout = .seconds(2 * Sanitizer.slowdown)
    let clients = try paths.map { try Device.open("shm:" + $0, options: options) }
    defer { for c in clients { c.close() } }

    /// Waits until the thread begins a round after now, and returns its count then.
    func settled() -> (rounds: UInt64, allocations: UInt64) {
      let now = pool.probedRounds[0].rounds
      while pool.probedRounds[0].rounds < now + 2 { usleep(100) }
      return pool.probedRounds[0]
    }
    func work(_ cycles: Int) throws {
      for cycle in 0..<cycles {
        for _ in 0..<50 { for c in clients { try c.nop() } }
        try clients[cycle % 4].nops(200, batch: 16)
        // Idle: the thread spins, then sleeps (2 ms slices) until a NOP wakes it.
        usleep(20_000)
        try clients[(cycle + 1) % 4].nop()
      }
    }
    try work(8)  // warm up: lazy runtime metadata, the first sleeps and reaps
    let before = settled()
    try work(20)
    let after = settled()
    let rounds = after.rounds - before.rounds
    let n = after.allocations - before.allocations
    #expect(n == 0, "\(n) allocations on the pool's thread in \(rounds) rounds")
    #expect(rounds > 1000, "only \(rounds) rounds")
  }
}
