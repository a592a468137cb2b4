import Foundation
import TestSupport
import Testing

/// `vgpu-bench --quick` runs end to end and writes a well-formed report with
/// every case. No timing is asserted: timings are the benchmark's business,
/// as ratios against baselines of the same run.
@Suite(.serialized) struct BenchTests {
  @Test func quickRunWritesACompleteReport() throws {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-bench-test-\(getpid())")
    defer { try? FileManager.default.removeItem(at: out) }
    let p = Process()
    p.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-bench")
    var arguments = ["--quick", "--out", out.path, "--json"]
    // The shims tools/test builds (debug); without them the discovery case says so.
    let shims = Paths.shims.appendingPathComponent("libcuda.so.1")
    if FileManager.default.fileExists(atPath: shims.path) { arguments += ["--shims", Paths.shims.path] }
    p.arguments = arguments
    let stdout = Pipe()
    p.standardOutput = stdout
    p.standardError = FileHandle.standardError  // progress: where a hang would show
    try p.run()
    let data = stdout.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()

    let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    let problems = report["problems"] as? [String] ?? []
    let figures = try #require(report["figures"] as? [[String: Any]])
    let names = Set(figures.compactMap { $0["name"] as? String })
    let expected = [
      "NOP round trip p50", "NOP round trip p99", "NOP round trip p99.9", "NOPs, 32 a doorbell",
      "launches (fill, 1 element)", "alloc + free pairs (64 KiB)", "H2D 4 KiB", "D2H 4 KiB", "D2D 4 KiB", "H2D 1 MiB",
      "D2H 1 MiB", "D2D 1 MiB", "heap allocations per NOP (client thread, shm)",
      "heap allocations per NOP (whole process, sim: client + device thread)",
      "instructions per NOP, client (shm, 1 a doorbell)", "discovery beyond empty program start-up",
      "NOP round trip p50, 2 clients (worse one)", "NOPs, 32 a doorbell, 2 clients (sum)",
      "H2D 64 MiB, 2 clients (sum)", "idle mediator: CPU", "idle client (device open, no calls): CPU",
      // The scale section (quick: 1, 2 and 4 processes).
      "4 discovery processes at once: wall", "4 at once: per-process discovery p50",
      "4 at once: per-process discovery p99",
    ]
    for name in expected { #expect(names.contains(name), "missing case \(name)") }
    // The engine section (names carry the quick run's sizes).
    for prefix in [
      "thread-instr/s: vector add", "thread-instr/s: tiled matmul",
      "thread-instr/s: shuffle+barrier reduce", "empty kernel launch round trip p50",
      "empty kernel launch round trip p99", "module load, 1 MiB fat binary", "module load, 16 MiB fat binary",
    ] {
      #expect(names.contains { $0.hasPrefix(prefix) }, "missing case \(prefix)")
    }
    // Every figure measured with its baseline has a ratio. (With --quick, a few
    // baselines are sizes the quick sweep skips, such as one client's 64 MiB copy.)
    for f in figures where f["value"] is Double {
      for c in f["comparisons"] as? [[String: Any]] ?? [] where c["value"] is Double {
        #expect(c["ratio"] is Double, "\(f["name"] ?? "?") vs \(c["baseline"] ?? "?") has no ratio")
      }
    }
    let targets = try #require(report["targets"] as? [[String: Any]])
    #expect(targets.count == 11)
    let latency = try #require(report["latency"] as? [String: [Double]])
    #expect(latency["vGPU NOP"]?.isEmpty == false)
    #expect(latency["ping-pong (shm, 2 processes)"]?.isEmpty == false)
    let bandwidth = try #require(report["bandwidth"] as? [String: Any])
    for series in ["vGPU H2D", "vGPU D2H", "socket RPC H2D", "memcpy, 1 thread (ceiling)"] {
      #expect(bandwidth[series] != nil, "missing bandwidth series \(series)")
    }
    // Only discovery and scale may be missing (no shims built); anything else is a failure.
    #expect(problems.allSatisfy { $0.hasPrefix("discovery") || $0.hasPrefix("scale") }, "\(problems)")
    let svg = try String(contentsOf: out.appendingPathComponent("plot.svg"), encoding: .utf8)
    #expect(svg.hasPrefix("<?xml") && svg.contains("</svg>") && svg.contains("<polyline"))
    #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("report.json").path))
  }
}
