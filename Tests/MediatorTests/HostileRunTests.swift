import Foundation
import TestSupport
import Testing
import VGPU

/// The hostile-client run (tools/hostile-run for the long one): `vgpu-hostile`
/// attacks the device next to a victim that runs selftests in a loop and
/// copies a random marker through its staging. The mediator survives, every
/// selftest passes, the marker never shows in the hostile client's mapping,
/// and the hostile client's resources are back within 1 s of its SIGKILL.
@Suite struct HostileRunTests {
  /// VGPU_HOSTILE_SECONDS sets another length (60 s by default).
  static let seconds = ProcessInfo.processInfo.environment["VGPU_HOSTILE_SECONDS"].flatMap(Double.init) ?? 60

  @Test(.timeLimit(.minutes(5))) func aHostileClientNextToAVictim() throws {
    let mediator = try MediatorProcess()
    let spec = mediator.spec
    var generator = SystemRandomNumberGenerator()
    let marker = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    let seed = UInt64.random(in: 1...UInt64.max, using: &generator)
    let copier = try ClientProcess("vgpu-fault-client", ["marker", spec, "\(Self.seconds)", marker])
    let hostile = try ClientProcess("vgpu-hostile", [spec, "\(Self.seconds + 60)", "\(seed)", "--marker", marker])
    #expect(copier.waitFor("ready", seconds: 10) != nil, "\(copier.output)")
    #expect(hostile.waitFor("ready", seconds: 10) != nil, "\(hostile.output)")

    var passed = 0
    var failures: [String] = []
    let deadline = Date().addingTimeInterval(Self.seconds)
    while Date() < deadline {
      let (ok, output) = try Faults.selftest(spec)
      if ok { passed += 1 } else { failures.append(output) }
    }
    #expect(Faults.exits(copier, within: 30) && copier.process.terminationStatus == 0, "\(copier.output.suffix(3))")
    #expect(
      failures.isEmpty, "\(failures.count) of \(passed + failures.count) selftests failed: \(failures.first ?? "")")
    #expect(passed > 0)
    #expect(mediator.process.isRunning, "the mediator died: \(mediator.log.suffix(2000))")
    #expect(hostile.process.isRunning, "the hostile client stopped: \(hostile.output.suffix(3))")

    let observer = try Device.open(spec)
    defer { observer.close() }
    let reclaim = Faults.killAndTimeReclaim(hostile, observer)
    #expect(reclaim != nil && reclaim! < 1, "reclaimed after \(reclaim.map { "\($0) s" } ?? "more than 5 s")")
    #expect(Faults.settled(observer), "the hostile client's memory or pairs were left behind")

    let stats = hostile.output.last { $0.hasPrefix("stats") } ?? ""
    let leak = hostile.output.first { $0.hasPrefix("leak") }
    // On a BAR file every client shares (shm:), any client maps the others'
    // staging, so the marker is found there: that shows the check works.
    // Per-client BARs (unix:) must not leak it.
    if spec.hasPrefix("shm:") {
      withKnownIssue("shm: every client maps the whole shared BAR, the victim's staging included") {
        #expect(leak == nil, "\(leak ?? "")")
      }
    } else {
      #expect(leak == nil, "\(leak ?? "")")
    }
    print(
      "hostile run: \(passed) selftests passed, \(failures.count) failed; \(stats);"
        + " \(leak ?? "leak: none"); reclaimed in \(String(format: "%.0f", (reclaim ?? -1) * 1000)) ms")
  }
}
