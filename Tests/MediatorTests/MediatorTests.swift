import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

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
    let error = client.waitFor("error", seconds: 5 * Sanitizer.slowdown)
    #expect(error != nil, "\(client.output)")
    // The client believes a status that says "stopping" once it has lasted
    // the status grace (1 s, GuestQueuePair.statusGraceNanoseconds) with no
    // answer: its 2 s deadline plus that grace bound the wait, and the rest is
    // slack for a loaded machine (4.7 s seen at load average 11 on 2 cores),
    // still far below anything that waits for a second deadline.
    #expect(Date().timeIntervalSince(stopped) < 8 * Sanitizer.slowdown)
    #expect(error?.contains("stopped answering") == true, "\(error ?? "")")
    // Opening the socket now says that no mediator runs: it removed its socket.
    do {
      _ = try Device.open(mediator.spec)
      Issue.record("opened a socket that no mediator serves")
    } catch {
      #expect(error.description.contains("is vgpu-mediator running?"), "\(error)")
    }
  }

  @Test func aKilledMediatorIsNoticedWithoutWaitingForTheDeadline() throws {
    let mediator = try MediatorProcess()
    // A 60 s deadline: an error well before it (and saying the mediator has
    // exited) shows the client watched the mediator's life, not its clock.
    // (A wall-clock bound of 1.5 s failed at 4.1 s on a loaded machine.)
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "\(32 << 20)", "0", "1", "60"])
    #expect(client.waitFor("ready", seconds: 20) != nil)
    let killed = Date()
    kill(mediator.process.processIdentifier, SIGKILL)
    let error = client.waitFor("error", seconds: 20)
    #expect(error?.contains("has exited") == true, "\(client.output)")
    #expect(Date().timeIntervalSince(killed) < 20)
  }

  /// A killed mediator whose parent has not reaped it yet is a zombie,
  /// which kill(pid, 0) still finds: the client notices it anyway.
  @Test func aKilledMediatorNotYetReapedIsNoticed() throws {
    let path = "/dev/shm/vgpu-zombie-\(getpid()).sock"
    unlink(path)
    defer { unlink(path) }
    // Spawned directly, so nothing reaps it until this test does.
    let binary = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator").path
    let argv = [binary, "--socket", path, "--memory", "1G", "--log-level", "error"]
    var pid: pid_t = 0
    var cArgs = argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    try #require(posix_spawn(&pid, binary, nil, nil, &cArgs, environ) == 0)
    var reaped = false
    defer {
      if !reaped {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
      }
    }
    let deadline = Date().addingTimeInterval(10)
    while (try? Device.open("unix:\(path)")) == nil && Date() < deadline { usleep(50_000) }
    // A 60 s deadline, as above: the error must come from the mediator's death.
    let client = try ClientProcess("vgpu-test-client", ["loop", "unix:\(path)", "\(32 << 20)", "0", "1", "60"])
    #expect(client.waitFor("ready", seconds: 20) != nil)
    kill(pid, SIGKILL)
    let error = client.waitFor("error", seconds: 20)
    #expect(error?.contains("has exited") == true, "\(client.output)")
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    reaped = true
  }

  @Test(arguments: [false, true]) func aSecondMediatorOnTheSameSocketOrFileIsRefused(file: Bool) throws {
    let first = try MediatorProcess(arguments: file ? ["--shared-bar"] : [])
    let second = Process()
    second.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
    second.arguments = file ? ["--shared-bar", "--path", first.path] : ["--socket", first.path]
    let err = Pipe()
    second.standardError = err
    try second.run()
    second.waitUntilExit()
    let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(second.terminationStatus == 1)
    #expect(
      message.contains(
        file
          ? "already served by vgpu-mediator pid \(first.process.processIdentifier)"
          : "is served by a running vgpu-mediator"), "\(message)")
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
      #expect(error.description.contains("no such file") && error.description.contains("vgpu-mediator --vm --path"))
    }
    do {
      _ = try Device.open("unix:/dev/shm/vgpu-no-such-socket")
      Issue.record("opened a missing socket")
    } catch {
      #expect(
        error.description.contains("no socket at /dev/shm/vgpu-no-such-socket")
          && error.description.contains("is vgpu-mediator running? start it: vgpu-mediator --socket"), "\(error)")
    }
    /// The mediator's exit status and standard error for `arguments`.
    func mediator(_ arguments: [String]) throws -> (status: Int32, stderr: String) {
      let p = Process()
      p.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
      p.arguments = arguments
      let err = Pipe()
      p.standardError = err
      try p.run()
      p.waitUntilExit()
      return (p.terminationStatus, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }
    let bad = try mediator(["--depth", "100"])
    #expect(bad.status == 2 && bad.stderr.contains("power of two"), "\(bad.stderr)")
    // The old host form, --path without --vm: told where host processes go now.
    let old = try mediator(["--path", "/dev/shm/vgpu-old-form-\(getpid())"])
    #expect(old.status == 2, "\(old.stderr)")
    #expect(old.stderr.contains("host processes connect to --socket now"), "\(old.stderr)")
  }
}
