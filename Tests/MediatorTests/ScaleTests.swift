import CSupport
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

/// No hard client limit: a process beyond the mediator's `--max-clients`
/// (on its socket) or beyond a shared BAR's queue pairs waits for a place
/// until its open deadline, gets one when a holder exits, and otherwise
/// fails saying what it found and what to do.
@Suite(.serialized) struct ScaleTests {
  /// `n` processes that each hold a place (`queuePairs` pairs) and sleep.
  static func holders(_ n: Int, _ mediator: MediatorProcess, queuePairs: Int = 1) throws -> [ClientProcess] {
    try (0..<n).map { _ in
      let h = try ClientProcess("vgpu-test-client", ["hold", mediator.spec, "\(queuePairs)"])
      #expect(h.waitFor("ready", seconds: 30) != nil, "a holder did not open: \(h.output)")
      return h
    }
  }

  /// Opens `spec` on another thread; `result` waits for it.
  final class BackgroundOpen: @unchecked Sendable {
    private let outcome = Mutex<(Result<Device, VGPUError>, UInt64)?>(nil)
    init(_ spec: String, timeout: Duration, queuePairs: Int = 2) {
      Thread.detachNewThread { [self] in
        var options = OpenOptions()
        options.timeout = timeout
        options.queuePairs = queuePairs
        let r = Result { () throws(VGPUError) in try Device.open(spec, options: options) }
        outcome.withLock { $0 = (r, vgpu_monotonic_ns()) }
      }
    }
    var finished: Bool { outcome.withLock { $0 != nil } }
    /// The open's result and when it returned (monotonic ns), once it has (a hang guard, not a timing).
    func result(within seconds: Double) -> (Result<Device, VGPUError>, UInt64)? {
      _ = waitUntil(seconds: seconds) { finished }
      return outcome.withLock { $0 }
    }
  }

  /// An open of `spec` with a 500 ms deadline that must fail: its error,
  /// which names every one of `parts`, after waiting out the deadline (not
  /// failing at once; the upper bound is only a hang guard).
  @discardableResult
  static func givesUp(_ spec: String, _ what: String, saying parts: [String]) -> VGPUError? {
    var options = OpenOptions()
    options.timeout = .milliseconds(500)
    let started = vgpu_monotonic_ns()
    let e = #expect(throws: VGPUError.self) { _ = try Device.open(spec, options: options) }
    let waited = Double(vgpu_monotonic_ns() - started) / 1e9
    let text = e?.description ?? ""
    print("\(what): \(text)")
    for part in parts { #expect(text.contains(part), "'\(part)' missing in: \(text)") }
    #expect(waited >= 0.45 && waited < 30, "gave up after \(waited) s")
    return e
  }

  @Test func aProcessBeyondMaxClientsWaitsAndIsServedWhenOneExits() throws {
    let mediator = try MediatorProcess(arguments: ["--max-clients", "4"])
    defer { mediator.stop() }
    let held = try Self.holders(4, mediator)
    let fifth = BackgroundOpen(mediator.spec, timeout: .seconds(60))
    // The mediator says it waits, and why.
    let pids = held.map { $0.process.processIdentifier }.sorted().map(String.init).joined(separator: ", ")
    #expect(
      waitUntil(seconds: 20) { mediator.log.contains("client waits for a place") },
      "\(mediator.log.suffix(2000))")
    #expect(
      mediator.log.contains("serves its maximum of 4 processes (--max-clients 4): pids \(pids)"),
      "\(mediator.log.suffix(2000))")
    #expect(!fifth.finished, "the fifth process was served while 4 held every place")
    let exited = vgpu_monotonic_ns()
    held[0].kill()
    let (result, at) = try #require(fifth.result(within: 60), "the fifth open never returned")
    let device = try result.get()
    #expect(at >= exited, "served before a place was free")
    try device.nop()
    #expect(try device.memoryInfo().free == 8 << 30)
    device.close()
  }

  @Test func aProcessBeyondMaxClientsGivesUpAtItsDeadlineSayingWhy() throws {
    let mediator = try MediatorProcess(arguments: ["--max-clients", "1"])
    defer { mediator.stop() }
    let held = try Self.holders(1, mediator)
    let holder = held[0].process.processIdentifier
    let e = Self.givesUp(
      mediator.spec, "beyond --max-clients",
      saying: [
        "serves its maximum of 1 process (--max-clients 1): pid \(holder)", "none exited within 500 ms",
        "raise vgpu-mediator --max-clients",
      ])
    #expect(e?.kind == .timeout)
    #expect(
      waitUntil(seconds: 10) { mediator.log.contains("a waiting client gave up") }, "\(mediator.log.suffix(2000))")
    // The place it waited for is there once the holder goes.
    held[0].kill()
    var patient = OpenOptions()
    patient.timeout = .seconds(30)
    let device = try Device.open(mediator.spec, options: patient)
    try device.nop()
    device.close()
  }

  /// A shared BAR (a VM's, --shared-bar): one pair per process, so the pairs
  /// bound the processes; one more waits for a pair and names who holds them.
  @Test func aSharedBARsProcessBeyondItsQueuePairsWaitsForOne() throws {
    let mediator = try MediatorProcess(arguments: ["--shared-bar", "--queue-pairs", "2"])
    defer { mediator.stop() }
    let held = try Self.holders(1, mediator, queuePairs: 2)
    let holder = held[0].process.processIdentifier
    let e = Self.givesUp(
      mediator.spec, "beyond a shared BAR's queue pairs",
      saying: [
        "all 2 queue pairs are in use (held by pid \(holder) ×2) and none was freed within",
        "start vgpu-mediator with more --queue-pairs",
      ])
    #expect(e?.kind == .unavailable)

    let next = BackgroundOpen(mediator.spec, timeout: .seconds(60), queuePairs: 1)
    usleep(200_000)
    #expect(!next.finished, "a process got a pair while another held both")
    let exited = vgpu_monotonic_ns()
    held[0].kill()
    let (result, at) = try #require(next.result(within: 60), "the waiting open never returned")
    let device = try result.get()
    #expect(at >= exited && device.info.queuePairs == 1)
    try device.nop()
    device.close()
  }

  /// Out of file descriptors (its limit lowered under it), the mediator says
  /// so once and leaves the backlog alone for a while instead of spinning on
  /// a readable listener; the processes it could not take fail, pointing at
  /// its log (at their deadline when accept(2) failed, at once when the BAR's
  /// memfd did: which comes first depends on the order of events); once
  /// processes exit, it serves again.
  @Test(.enabled(if: Tools.usable("prlimit"), Tools.missing("prlimit")))
  func outOfDescriptorsTheMediatorSaysSoOnceAndDoesNotSpin() throws {
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    let prlimit = try Tools.require("prlimit")
    let lowered = Tools.run(prlimit, ["--pid", "\(mediator.process.processIdentifier)", "--nofile=40:40"])
    try #require(lowered.status == 0, "prlimit: \(lowered.output)")
    let crowd = try (0..<24).map { _ in try ClientProcess("vgpu-test-client", ["hold", mediator.spec]) }
    #expect(
      waitUntil(seconds: 60) { crowd.allSatisfy { !$0.process.isRunning || $0.output.contains("ready") } },
      "\(crowd.map(\.output))")
    let served = crowd.filter { $0.output.contains("ready") }
    let refused = crowd.filter { !$0.process.isRunning }
    #expect(!served.isEmpty && !refused.isEmpty, "served \(served.count), failed \(refused.count) of 24")
    for r in refused {
      let text = r.output.joined()
      #expect(
        text.contains("out of file descriptors (see its log)")
          || text.contains("could not make a BAR") && text.contains("Too many open files"), "\(text)")
    }
    let log = mediator.log
    #expect(
      log.components(separatedBy: "cannot accept clients: out of file descriptors").count <= 2, "\(log.suffix(3000))")
    // Spinning on the listener would take a whole core (100 ticks a second).
    let ticks = Faults.cpuTicks(of: mediator, over: 1)
    #expect(ticks < 30, "the mediator used \(ticks) ticks in 1 s while out of descriptors")
    for c in served { c.kill() }
    var options = OpenOptions()
    options.timeout = .seconds(30)
    let device = try Device.open(mediator.spec, options: options)
    try device.nop()
    device.close()
  }
}
