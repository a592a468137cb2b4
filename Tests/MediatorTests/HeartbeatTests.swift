import Foundation
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// The guest heartbeat (protocol 2.3, docs/PROTOCOL.md §7) across real
/// processes: a mediator serving one BAR file whose owners it cannot see
/// (`--vm`: a VM's processes, whose pids mean nothing on the host; no /proc,
/// no pidfd, no socket), opened by host processes as `shm:FILE` as a VM's
/// processes open its ivshmem BAR. A client that holds memory is SIGKILLed:
/// its pair and memory come back within 2 s. A client idle for 6 s keeps
/// its pair, its memory and its data, and works after.
@Suite(.serialized) struct HeartbeatTests {
  /// A mediator serving a VM's BAR (`--vm`), and a client of it holding one
  /// queue pair, which watches what the others' exits release.
  static func vmMediatorAndObserver() throws -> (MediatorProcess, Device) {
    let mediator = try MediatorProcess(arguments: ["--vm"])
    var options = OpenOptions()
    options.queuePairs = 1
    return (mediator, try Device.open(mediator.spec, options: options))
  }

  @Test func aKilledGuestIsReclaimedWithin2sAndAnIdleOneKeepsItsPair() throws {
    let (mediator, observer) = try Self.vmMediatorAndObserver()
    defer { observer.close() }
    #expect(
      observer.info.features.contains(.guestHeartbeat),
      "features 0x\(String(observer.info.features.rawValue, radix: 16))")
    let before = try observer.memoryInfo().free

    let idleBytes = 1 << 20
    let victimBytes = 8 << 20
    // The victim first, so that the idle one's 6 s start just before the
    // kill however slowly a loaded host starts processes.
    let victim = try ClientProcess("vgpu-fault-client", ["idle", mediator.spec, "60", "\(victimBytes)"])
    let victimReady = victim.waitFor("ready", seconds: 30)
    let idle = try ClientProcess("vgpu-fault-client", ["idle", mediator.spec, "6", "\(idleBytes)"])
    let idleReady = idle.waitFor("ready", seconds: 30)
    #expect(idleReady != nil, "\(idle.output)")
    #expect(victimReady != nil, "\(victim.output)")
    // Both announced the heartbeat (bit 9) in their identify.
    for line in [idleReady, victimReady].compactMap({ $0 }) {
      let hex = line.split(separator: "0x").last.flatMap { UInt64($0, radix: 16) } ?? 0
      #expect(FeatureBits(rawValue: hex).contains(.guestHeartbeat), "\(line)")
    }
    let held = try observer.memoryInfo().free
    #expect(before - held >= UInt64(idleBytes + victimBytes))
    let idlePID = UInt32(idle.process.processIdentifier)

    // Killed without closing: nothing but its silence tells the device.
    let victimPID = UInt32(victim.process.processIdentifier)
    let killed = Date()
    victim.kill()
    var pairBack: Double?
    var memoryBack: Double?
    while Date().timeIntervalSince(killed) < 5 && (pairBack == nil || memoryBack == nil) {
      let now = Date().timeIntervalSince(killed)
      if pairBack == nil, let list = try? observer.processes(), !list.contains(where: { $0.pid == victimPID }) {
        pairBack = now
      }
      if memoryBack == nil, let free = try? observer.memoryInfo().free, free >= held + UInt64(victimBytes) {
        memoryBack = now
      }
      usleep(10_000)
    }
    print(
      "guest heartbeat (--vm mediator, shm clients): SIGKILLed client's pair reclaimed after "
        + "\(pairBack.map { String(format: "%.3f", $0) } ?? ">5") s, its \(victimBytes >> 20) MiB after "
        + "\(memoryBack.map { String(format: "%.3f", $0) } ?? ">5") s (bound 2 s; silence "
        + "\(Double(GuestHeartbeat.silenceNanoseconds) / 1e9) s, beats every \(Double(GuestHeartbeat.periodNanoseconds) / 1e9) s)"
    )
    #expect(pairBack != nil && pairBack! < 2, "the killed client's pair was not reclaimed within 2 s")
    #expect(memoryBack != nil && memoryBack! < 2, "the killed client's memory was not reclaimed within 2 s")

    // The idle one (no call for 6 s) still holds its pair and memory (unless
    // a starved test runner looks only after it finished), then reads its data back.
    let listed = try observer.processes().contains { $0.pid == idlePID }
    #expect(listed || idle.output.contains { $0.hasPrefix("ok") }, "the idle client lost its pair")
    let done = idle.waitFor("ok", seconds: 20)
    #expect(done != nil, "the idle client failed after its idle time: \(idle.output)")
    #expect(Faults.exits(idle, within: 10))
    #expect(idle.process.terminationStatus == 0, "\(idle.output)")
    #expect(try waitUntil(seconds: 5) { try observer.memoryInfo().free == before })

    let log = mediator.stop()
    let released = log.split(separator: "\n").filter { $0.contains("queue pair released") }
    #expect(
      released.contains { $0.contains("heartbeat stopped") && $0.contains("pid=\(victimPID) ") }, "\(released)")
    #expect(!released.contains { $0.contains("heartbeat stopped") && $0.contains("pid=\(idlePID) ") }, "\(released)")
  }

  /// A guest process stopped (SIGSTOP: a debugger, a shell's ^Z) for longer
  /// than the device waits cannot be told from a dead one: its pair and
  /// memory go. Continued, it is told so at its next call, rather than
  /// write into rings that may be another process's by then.
  @Test func aStoppedGuestLosesItsPairAndIsToldWhenContinued() throws {
    let (mediator, observer) = try Self.vmMediatorAndObserver()
    defer { observer.close() }
    let client = try ClientProcess("vgpu-fault-client", ["idle", mediator.spec, "1", "\(1 << 20)"])
    #expect(client.waitFor("ready", seconds: 30) != nil, "\(client.output)")
    let pid = client.process.processIdentifier
    kill(pid, SIGSTOP)
    let stopped = Date()
    let gone = waitUntil(seconds: 5) {
      !((try? observer.processes())?.contains { $0.pid == UInt32(pid) } ?? true)
    }
    let took = Date().timeIntervalSince(stopped)
    kill(pid, SIGCONT)
    #expect(gone, "a stopped client kept its pair for 5 s")
    let error = client.waitFor("error", seconds: 20)
    #expect(error?.contains("took back") == true, "\(client.output)")
    #expect(Faults.exits(client, within: 10))
    print(
      "guest heartbeat: a client stopped (SIGSTOP) lost its pair after \(String(format: "%.3f", took)) s; continued: \(error ?? "no error")"
    )
  }
}
