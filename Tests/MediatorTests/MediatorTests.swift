import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// A real `vgpu-mediator` process serving a BAR file in /dev/shm, and real
/// client processes (`vgpu-test-client`, `pcitool`) using it.
final class MediatorProcess: @unchecked Sendable {
  static let binaries: URL = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent()
  }()
  static let counter = Atomic<Int>(0)

  let path: String
  let process = Process()
  let log = Pipe()

  init(path: String? = nil, arguments: [String] = []) throws {
    self.path = path ?? "/dev/shm/vgpu-test-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
    if path == nil { unlink(self.path) }
    process.executableURL = Self.binaries.appendingPathComponent("vgpu-mediator")
    process.arguments = ["--path", self.path, "--memory", "8G"] + arguments
    process.standardError = log
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    // Ready when the BAR names this process as its server.
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
      if let region = try? Data(contentsOf: URL(fileURLWithPath: self.path), options: .alwaysMapped),
        region.count >= 4096,
        region.withUnsafeBytes({
          $0.load(fromByteOffset: Register.devicePID, as: UInt32.self) == UInt32(process.processIdentifier)
            && $0.load(fromByteOffset: Register.status, as: UInt32.self) & 1 == 1
        })
      {
        return
      }
      guard process.isRunning else { break }
      usleep(20_000)
    }
    throw MediatorError(description: "vgpu-mediator did not come up on \(self.path)")
  }

  var spec: String { "shm:\(path)" }

  /// SIGTERM, then its log once it has exited.
  @discardableResult
  func stop() -> String {
    if process.isRunning {
      process.terminate()
      process.waitUntilExit()
    }
    return String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
  }

  /// User + system CPU time so far, in clock ticks (/proc/PID/stat fields 14, 15).
  var cpuTicks: Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return -1 }
    let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
    return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
  }

  deinit {
    if process.isRunning {
      process.terminate()
      process.waitUntilExit()
    }
    unlink(path)
  }
}

struct MediatorError: Error, CustomStringConvertible { var description: String }

/// A client process whose output lines are collected as they come.
final class ClientProcess: @unchecked Sendable {
  let process = Process()
  private let lines = Mutex<[String]>([])

  init(_ tool: String, _ arguments: [String]) throws {
    process.executableURL = MediatorProcess.binaries.appendingPathComponent(tool)
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    out.fileHandleForReading.readabilityHandler = { [weak self] h in
      let text = String(decoding: h.availableData, as: UTF8.self)
      self?.lines.withLock { $0 += text.split(separator: "\n").map(String.init) }
    }
    try process.run()
  }

  var output: [String] { lines.withLock { $0 } }

  /// Waits up to `seconds` for a line starting with `prefix`.
  func waitFor(_ prefix: String, seconds: Double) -> String? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if let line = output.first(where: { $0.hasPrefix(prefix) }) { return line }
      usleep(10_000)
    }
    return nil
  }

  func kill() {
    Glibc.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  deinit { if process.isRunning { kill() } }
}

func waitUntil(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if try condition() { return true }
    usleep(20_000)
  }
  return try condition()
}

@Suite(.serialized) struct MediatorTests {
  @Test func roundTripsUpTo256MiBThroughSharedMemory() throws {
    let mediator = try MediatorProcess()
    let device = try Device.open(mediator.spec)
    #expect(device.info.identity.memorySize == 8 << 30)
    for size in [1, 4097, (3 << 20) + 1, 64 << 20, 256 << 20] {
      let data = randomBytes(size, seed: UInt64(size))
      let p = try device.allocate(size)
      try device.copy(to: p, from: data)
      #expect(sameBytes(try device.read(p, count: size), data), "size \(size)")
      try device.free(p)
    }
    #expect(try device.memoryInfo().free == 8 << 30)
    device.close()
    let log = mediator.stop()
    #expect(log.contains("client attached") && log.contains("closed by its owner"))
  }

  @Test func everyKernelThroughTheMediator() throws {
    let mediator = try MediatorProcess()
    let selftest = try ClientProcess("pcitool", ["selftest", mediator.spec])
    selftest.process.waitUntilExit()
    let output = selftest.output.joined(separator: "\n")
    #expect(selftest.process.terminationStatus == 0, "\(output)")
    for kernel in ["fill", "vector_add", "saxpy", "scale", "reduce_sum", "matmul"] { #expect(output.contains(kernel)) }
  }

  @Test func twoClientProcessesWithFourThreadsEach() throws {
    let mediator = try MediatorProcess()
    let a = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "3000001", "0", "4"])
    let b = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "1000003", "0", "4"])
    #expect(a.waitFor("ready", seconds: 20) != nil, "\(a.output)")
    #expect(b.waitFor("ready", seconds: 20) != nil, "\(b.output)")
    sleep(2)  // both keep copying and verifying every round trip
    #expect(a.process.isRunning && b.process.isRunning, "a: \(a.output) b: \(b.output)")
    #expect(!(a.output + b.output).contains { $0.hasPrefix("error") })
    a.kill()
    b.kill()
    let observer = try Device.open(mediator.spec)
    #expect(try waitUntil(seconds: 3) { try observer.memoryInfo().free == 8 << 30 })
  }

  @Test func aClientKilledMidCopyIsReclaimedAndTheOtherGoesOn() throws {
    let mediator = try MediatorProcess()
    let victim = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(64 << 20)", "\(1 << 30)", "1"])
    #expect(victim.waitFor("ready", seconds: 30) != nil, "\(victim.output)")
    let survivor = try Device.open(mediator.spec)
    let mine = try survivor.allocate(1 << 20)
    let (free, _) = try survivor.memoryInfo()
    #expect(free < (8 << 30) - (1 << 30))  // the victim's gigabyte is in use
    let survivorErrors = Mutex<[String]>([])
    let done = Atomic<Bool>(false)
    let worker = Thread {
      var round: UInt8 = 0
      while !done.load(ordering: .relaxed) {
        round &+= 1
        let data = [UInt8](repeating: round, count: 1 << 20)
        do {
          try survivor.copy(to: mine, from: data)
          if try survivor.read(mine, count: 1 << 20) != data { survivorErrors.withLock { $0.append("data differs") } }
        } catch { survivorErrors.withLock { $0.append("\(error)") } }
      }
    }
    worker.start()
    usleep(300_000)
    victim.kill()  // SIGKILL, most likely in the middle of a 64 MiB copy
    let killed = Date()
    #expect(try waitUntil(seconds: 3) { try survivor.memoryInfo().free == (8 << 30) - (1 << 20) })
    #expect(Date().timeIntervalSince(killed) < 2, "reclaimed after \(Date().timeIntervalSince(killed)) s")
    done.store(true, ordering: .relaxed)
    usleep(100_000)
    #expect(survivorErrors.withLock { $0 } == [])
    let log = mediator.stop()
    #expect(log.contains("its owner exited without closing it"))
  }

  @Test func stoppingTheMediatorFailsAWaitingClientWithinItsDeadline() throws {
    let mediator = try MediatorProcess()
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(32 << 20)", "0", "2"])
    #expect(client.waitFor("ready", seconds: 20) != nil)
    let stopped = Date()
    let log = mediator.stop()
    #expect(log.contains("stopping") && log.contains("stopped"))
    let error = client.waitFor("error", seconds: 5)
    #expect(error != nil, "\(client.output)")
    #expect(Date().timeIntervalSince(stopped) < 3)
    #expect(error?.contains("stopped answering") == true, "\(error ?? "")")
    // Opening the file now says that nobody serves it.
    do {
      _ = try Device.open(mediator.spec)
      Issue.record("opened a BAR that no mediator serves")
    } catch {
      #expect(error.description.contains("no mediator serves it"), "\(error)")
    }
  }

  @Test func aKilledMediatorIsNoticedWithoutWaitingForTheDeadline() throws {
    let mediator = try MediatorProcess()
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(32 << 20)", "0", "1"])
    #expect(client.waitFor("ready", seconds: 20) != nil)
    let killed = Date()
    kill(mediator.process.processIdentifier, SIGKILL)
    let error = client.waitFor("error", seconds: 5)
    #expect(error?.contains("has exited") == true, "\(client.output)")
    #expect(Date().timeIntervalSince(killed) < 1.5)
  }

  @Test func aSecondMediatorOnTheSameFileIsRefused() throws {
    let first = try MediatorProcess()
    let second = Process()
    second.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
    second.arguments = ["--path", first.path]
    let err = Pipe()
    second.standardError = err
    try second.run()
    second.waitUntilExit()
    let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(second.terminationStatus == 1)
    #expect(message.contains("already served by vgpu-mediator pid \(first.process.processIdentifier)"), "\(message)")
    // ... and the first goes on serving.
    let device = try Device.open(first.spec)
    try device.nop()
  }

  @Test func anIdleMediatorUsesNoCPU() throws {
    let mediator = try MediatorProcess()
    let device = try Device.open(mediator.spec)
    try device.nop()
    usleep(500_000)  // grace period
    let before = mediator.cpuTicks
    sleep(3)
    let used = mediator.cpuTicks - before
    // Ticks are 10 ms: a mediator that polled would use ~300 here.
    #expect(used >= 0 && used <= 3, "idle mediator used \(used) ticks in 3 s")
    device.close()
  }

  @Test func missingFileAndBadOptionsAreExplained() throws {
    do {
      _ = try Device.open("shm:/dev/shm/vgpu-no-such-file")
      Issue.record("opened a missing file")
    } catch {
      #expect(error.description.contains("no such file") && error.description.contains("vgpu-mediator --path"))
    }
    let bad = Process()
    bad.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
    bad.arguments = ["--depth", "100"]
    let err = Pipe()
    bad.standardError = err
    try bad.run()
    bad.waitUntilExit()
    #expect(bad.terminationStatus == 2)
    #expect(String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("power of two"))
  }
}
