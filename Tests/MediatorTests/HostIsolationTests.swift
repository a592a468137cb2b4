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
  /// What `vgpu-test-client scan` says about `bytes` in its own BAR from `mediator`.
  static func scan(_ mediator: MediatorProcess, for bytes: [UInt8]) throws -> String? {
    let hex = bytes.map { String(format: "%02x", $0) }.joined()
    let scanner = try ClientProcess("vgpu-test-client", ["scan", mediator.path, hex])
    scanner.process.waitUntilExit()
    return scanner.output.last
  }

  /// A client (this process) holding 1 MiB of random bytes in device memory.
  static func holding(_ mediator: MediatorProcess, seed: UInt64) throws -> (Device, DevicePointer, [UInt8]) {
    let device = try Device.open(mediator.spec)
    let data = randomBytes(1 << 20, seed: seed)
    let p = try device.allocate(data.count)
    try device.copy(to: p, from: data)
    #expect(sameBytes(try device.read(p, count: data.count), data))
    return (device, p, data)
  }

  @Test func aClientsBytesNeverAppearInAnothersBAR() throws {
    let mediator = try MediatorProcess()
    let (a, _, pattern) = try Self.holding(mediator, seed: 42)
    // And straight into this process's staging (its connections share its BAR).
    let mine = try MediatorSocket.connect(mediator.path)
    let layout = try BARLayout(reading: RegisterBlock(mine.base), size: mine.size)
    let last = mine.base + Int(layout.stagingOffset + layout.stagingSize) - 4096
    pattern.withUnsafeBytes { last.copyMemory(from: $0.baseAddress! + 8192, byteCount: 4096) }
    // Another process's whole mapping holds none of it.
    let staged = Array(pattern[8192..<8256])
    let copied = Array(pattern[(1 << 20) - 64..<(1 << 20)])
    for window in [staged, copied] {
      #expect(try Self.scan(mediator, for: window) == "absent", "another process's BAR carries the pattern")
    }
    // The scan does see its BAR: the register block's first words, which every BAR has.
    let header = (0..<8).map { mine.base.load(fromByteOffset: $0, as: UInt8.self) }
    #expect(try Self.scan(mediator, for: header) == "found")
    a.close()
  }

  @Test func controlScribblesAndAForgedPidOnOneBARLeaveOthersAlone() throws {
    let mediator = try MediatorProcess()
    let (victim, p, data) = try Self.holding(mediator, seed: 7)
    // Another process claims a pair under a forged pid, then asks for a
    // reset, zeroes the status and rings stray doorbells on its BAR.
    let hostile = try ClientProcess("vgpu-test-client", ["scribble", mediator.path, "2000"])
    #expect(hostile.waitFor("done", seconds: 20) != nil, "\(hostile.output)")
    #expect(sameBytes(try victim.read(p, count: data.count), data))
    try victim.nop()
    #expect(try victim.memoryInfo().free == (8 << 30) - UInt64(data.count))
    victim.close()
    hostile.kill()
    let log = mediator.stop()
    // The forged pid is not believed: the pair is the connecting process's.
    let forger = hostile.process.processIdentifier
    #expect(log.contains("pid=\(forger) queuePair=0 [vgpu_mediator] client attached"), "\(log.suffix(3000))")
    #expect(!log.contains("pid=1 "), "\(log.suffix(3000))")
  }

  @Test func aKilledClientsMemoryIsBackWithinASecond() throws {
    let mediator = try MediatorProcess()
    // 64 MiB held (and memset: a debug mediator under load can take longer than the client's deadline over more).
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(1 << 20)", "\(64 << 20)", "1"])
    #expect(client.waitFor("ready", seconds: 30) != nil, "\(client.output)")
    let observer = try Device.open(mediator.spec)
    #expect(try observer.memoryInfo().free <= (8 << 30) - (64 << 20))
    let killed = Date()
    client.kill()
    #expect(try waitUntil(seconds: 5) { try observer.memoryInfo().free == 8 << 30 })
    let took = Date().timeIntervalSince(killed)
    #expect(took < 1, "reclaimed after \(took) s")
    print("a SIGKILLed client's 65 MiB were back in memoryInfo \(Int(took * 1000)) ms after the kill")
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

  /// Another user (nobody, through setpriv) is refused with the reason
  /// unless admitted; without an allow-list that names it, the socket file
  /// (0660) already keeps it out.
  @Test(.enabled(if: getuid() == 0 && Tools.usable("setpriv"), "needs root and setpriv"))
  func anotherUserIsAdmittedOnlyWhenAllowed() throws {
    let setpriv = try Tools.require("setpriv")
    let pcitool = MediatorProcess.binaries.appendingPathComponent("pcitool").path
    func probeAsNobody(_ mediator: MediatorProcess) -> (status: Int32, output: String) {
      Tools.run(setpriv, ["--reuid", "65534", "--regid", "65534", "--clear-groups", pcitool, "probe", mediator.spec])
    }
    let refusing = try MediatorProcess(arguments: ["--allow-uid", "12345"])
    let refused = probeAsNobody(refusing)
    #expect(refused.status == 1, "\(refused.output)")
    #expect(
      refused.output.contains("the mediator refused this process: uid 65534")
        && refused.output.contains("admits uid 12345"), "\(refused.output)")
    let admitting = try MediatorProcess(arguments: ["--allow-uid", "65534"])
    let admitted = probeAsNobody(admitting)
    #expect(admitted.status == 0, "\(admitted.output)")
    let closed = probeAsNobody(try MediatorProcess())
    #expect(closed.status == 1 && closed.output.contains("permission denied"), "\(closed.output)")
  }

  /// A client in a PID namespace of its own (as in a container) is known by
  /// its pid on the mediator's side, not the 1 it has in there.
  @Test(.enabled(if: getuid() == 0 && Tools.usable("unshare"), "needs root and unshare"))
  func aClientInAnotherPIDNamespaceIsKnownByTheMediatorsPid() throws {
    let unshare = try Tools.require("unshare")
    let mediator = try MediatorProcess()
    let pcitool = MediatorProcess.binaries.appendingPathComponent("pcitool").path
    let r = Tools.run(unshare, ["--pid", "--fork", pcitool, "probe", mediator.spec])
    try #require(r.status == 0, "\(r.output)")
    let log = mediator.stop()
    #expect(log.contains("client attached") && !log.contains("pid=1 "), "\(log.suffix(2000))")
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
