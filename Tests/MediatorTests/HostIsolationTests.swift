import CSupport
import DeviceAccess
import Foundation
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// Host processes on one mediator's socket, each with a BAR of its own
/// (docs/PROTOCOL.md §23): none sees another's bytes, none's stores reach
/// another, a killed one's memory comes back at once, the memory limit holds
/// for all together, and who may connect is the allow-list's decision.
@Suite(.serialized) struct HostIsolationTests {
  /// Whether `needle` occurs anywhere in the mapping.
  static func contains(_ region: MappedRegion, _ needle: [UInt8]) -> Bool {
    needle.withUnsafeBytes { n in
      // memchr for the first byte, memcmp for the rest (memmem is a GNU extension).
      var at = UnsafeRawPointer(region.base)
      let end = at + region.size
      while end - at >= n.count, let hit = memchr(at, Int32(n[0]), end - at) {
        if end - UnsafeRawPointer(hit) >= n.count && memcmp(hit, n.baseAddress!, n.count) == 0 { return true }
        at = UnsafeRawPointer(hit) + 1
      }
      return false
    }
  }

  /// Wakes the device serving `registers`, as a client does after a store.
  static func ring(_ registers: RegisterBlock) {
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
  }

  @Test func aClientsBytesNeverAppearInAnothersBAR() throws {
    let mediator = try MediatorProcess()
    let a = try Device.open(mediator.spec)
    let pattern = randomBytes(1 << 20, seed: 42)
    let p = try a.allocate(pattern.count)
    try a.copy(to: p, from: pattern)
    #expect(sameBytes(try a.read(p, count: pattern.count), pattern))
    // A raw client that puts the pattern straight into its own staging.
    let writer = try MediatorSocket.connect(mediator.path)
    let layout = try BARLayout(reading: RegisterBlock(writer.base), size: writer.size)
    let staging = writer.base + Int(layout.stagingOffset)
    pattern.withUnsafeBytes {
      staging.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, Int(layout.stagingSize)))
    }
    let window = Array(pattern[4096..<4160])
    #expect(Self.contains(writer, window), "the writer's own BAR holds the pattern")
    // Another client's whole mapping holds none of it.
    let b = try MediatorSocket.connect(mediator.path)
    #expect(b.size == writer.size)
    #expect(!Self.contains(b, window), "another client's BAR carries the pattern")
    #expect(b.base != writer.base)
    a.close()
  }

  @Test func controlScribblesAndAForgedPidOnOneBARLeaveOthersAlone() throws {
    let mediator = try MediatorProcess()
    let victim = try Device.open(mediator.spec)
    let data = randomBytes(1 << 20, seed: 7)
    let p = try victim.allocate(data.count)
    try victim.copy(to: p, from: data)

    // The hostile client claims a pair under a forged pid, then asks for a
    // reset and zeroes the status, over and over, on its BAR.
    let hostile = try MediatorSocket.connect(mediator.path)
    let registers = RegisterBlock(hostile.base)
    let layout = try BARLayout(reading: registers, size: hostile.size)
    let view = QueuePairView(base: hostile.base, layout: layout, index: 0)
    #expect(QueuePairClaim.claim(view, pid: 1))
    Self.ring(registers)
    #expect(QueuePairClaim.awaitAcceptance(view, deadline: vgpu_monotonic_ns() + 5_000_000_000) { usleep(100) })
    for round in 0..<2000 {
      registers.store(Register.control, ControlRequest.reset.rawValue)
      registers.store(Register.status, 0)
      view.ringSubmission(tail: UInt32(round) % (layout.depth * 2))
      Self.ring(registers)
    }
    #expect(sameBytes(try victim.read(p, count: data.count), data))
    try victim.nop()
    #expect(try victim.memoryInfo().free == (8 << 30) - UInt64(data.count))
    victim.close()
    let log = mediator.stop()
    // The forged pid is not believed: the pair is the connecting process's.
    #expect(log.contains("pid=\(getpid()) queuePair=0 [vgpu_mediator] client attached"), "\(log.suffix(3000))")
    #expect(!log.contains("pid=1 "), "\(log.suffix(3000))")
  }

  @Test func aKilledClientsMemoryIsBackWithinASecond() throws {
    let mediator = try MediatorProcess()
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(1 << 20)", "\(1 << 30)", "1"])
    #expect(client.waitFor("ready", seconds: 30) != nil, "\(client.output)")
    let observer = try Device.open(mediator.spec)
    #expect(try observer.memoryInfo().free <= (8 << 30) - (1 << 30))
    client.kill()
    let killed = Date()
    #expect(try waitUntil(seconds: 5) { try observer.memoryInfo().free == 8 << 30 })
    let took = Date().timeIntervalSince(killed)
    #expect(took < 1, "reclaimed after \(took) s")
    print("a SIGKILLed client's gigabyte was back in memoryInfo after \(Int(took * 1000)) ms")
    observer.close()
    #expect(mediator.stop().contains("its socket closed"))
  }

  @Test func theMemoryLimitHoldsAcrossClients() throws {
    let mediator = try MediatorProcess()
    let a = try Device.open(mediator.spec)
    let b = try Device.open(mediator.spec)
    _ = try a.allocate(6 << 30)
    #expect(try b.memoryInfo().free == 2 << 30)
    #expect(throws: VGPUError.self) { _ = try b.allocate(3 << 30) }
    _ = try b.allocate(2 << 30)
    #expect(try a.memoryInfo().free == 0)
    a.close()
    #expect(try waitUntil(seconds: 2) { try b.memoryInfo().free == 6 << 30 })
  }

  @Test func aRefusedUserIsToldWhy() throws {
    let mediator = try MediatorProcess(arguments: ["--allow-uid", "54321"])
    let refused = #expect(throws: VGPUError.self) { _ = try Device.open(mediator.spec) }
    let text = refused?.description ?? ""
    #expect(text.contains("the mediator refused this process: uid \(getuid())"), "\(text)")
    #expect(text.contains("admits uid 54321"), "\(text)")
    #expect(mediator.stop().contains("client refused"))
  }

  @Test func aMediatorThatNeverAnswersIsAnErrorWithinTheDeadline() throws {
    // A socket that accepts connections (the kernel's backlog) and never answers.
    let path = "/dev/shm/vgpu-silent-\(getpid()).sock"
    let listener = vgpu_path_listen(path)
    try #require(listener >= 0)
    defer {
      close(listener)
      unlink(path)
    }
    var options = OpenOptions()
    options.timeout = .seconds(1)
    let started = Date()
    let silent = #expect(throws: VGPUError.self) { _ = try Device.open("unix:\(path)", options: options) }
    #expect(Date().timeIntervalSince(started) < 3)
    #expect(
      silent?.description.contains("accepted but sent no BAR within 1000 ms") == true, "\(String(describing: silent))")
  }

  @Test func theOldSharedFileFormPointsAtTheSocket() throws {
    let mediator = try MediatorProcess()
    let old = String(mediator.path.dropLast(".sock".count))
    let e = #expect(throws: VGPUError.self) { _ = try Device.open("shm:\(old)") }
    #expect(
      e?.description.contains(
        "vgpu-mediator serves host processes on a Unix socket now: VGPU_DEVICE=unix:\(mediator.path)")
        == true, "\(String(describing: e))")
  }

  /// Connection and BAR setup, as a process start pays it (reported, not asserted).
  @Test func connectToReadyTime() throws {
    let mediator = try MediatorProcess()
    var connect: [UInt64] = []
    var open: [UInt64] = []
    for _ in 0..<20 {
      var t = vgpu_monotonic_ns()
      _ = try MediatorSocket.connect(mediator.path)
      connect.append(vgpu_monotonic_ns() - t)
      t = vgpu_monotonic_ns()
      let d = try Device.open(mediator.spec)
      open.append(vgpu_monotonic_ns() - t)
      d.close()
    }
    let median = { (v: [UInt64]) in Double(v.sorted()[v.count / 2]) / 1000 }
    print(
      "unix: connect + BAR mapped: median \(median(connect)) µs; Device.open (connect, claim 2 pairs, identify): median \(median(open)) µs"
    )
  }
}
