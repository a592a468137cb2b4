import Foundation
import TestSupport
import Testing
import VGPU

/// Many client processes doing mixed work at once, every byte checked; then
/// every process exits and the device's accounting is back to nothing.
@Suite struct StressTests {
  /// VGPU_STRESS_SECONDS sets another length (20 s by default).
  static let seconds = ProcessInfo.processInfo.environment["VGPU_STRESS_SECONDS"].flatMap(Double.init) ?? 20

  @Test(.timeLimit(.minutes(5))) func sixteenProcessesOfFourThreadsLeaveNothingBehind() throws {
    let ptx = try Faults.ptxFile("vector_add")
    defer { unlink(ptx) }
    // 16 processes × 2 pairs, and the observer's.
    let mediator = try MediatorProcess(arguments: ["--queue-pairs", "40"])
    let clients = try (0..<16).map { i in
      try ClientProcess("vgpu-fault-client", ["stress", mediator.spec, "\(Self.seconds)", "4", "\(i + 1)", ptx])
    }
    var totals = [String: Int]()
    for c in clients {
      #expect(Faults.exits(c, within: Self.seconds + 120), "a stress client hung: \(c.output.suffix(3))")
      #expect(c.process.terminationStatus == 0, "\(c.output.suffix(3))")
      // "ok operations=N bytes=N launches=N modules=N"
      for field in (c.output.last { $0.hasPrefix("ok ") } ?? "").split(separator: " ").dropFirst() {
        let kv = field.split(separator: "=")
        if kv.count == 2, let n = Int(kv[1]) { totals[String(kv[0]), default: 0] += n }
      }
    }
    #expect(totals["operations", default: 0] > 0 && totals["launches", default: 0] > 0, "\(totals)")
    let observer = try Device.open(
      mediator.spec,
      options: {
        var o = OpenOptions()
        o.queuePairs = 1
        return o
      }())
    defer { observer.close() }
    #expect(Faults.settled(observer), "memory, processes or queue pairs left behind")
    #expect(mediator.process.isRunning)
    print("stress: 16 processes × 4 threads for \(Self.seconds) s: \(totals.sorted { $0.key < $1.key })")
  }
}
