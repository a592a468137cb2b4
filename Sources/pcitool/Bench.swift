import ArgumentParser
import BenchKit
import Foundation
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

extension PCITool {
  struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Measure a vGPU against baselines measured in the same run, as ratios.",
      discussion: """
        Cases, each with its baseline:
          NOP round trip p50, p99     vs a cache-line ping-pong between two processes \
        over a /dev/shm mapping (busy polling), p50, p99
          NOPs batched 32 a doorbell  vs that ping-pong's round trips per second
          H2D and D2H of 64, 256 MiB  vs single-thread memcpy of the same size

        ratio = value / baseline: for latencies lower is better, for rates higher. \
        The machine is shared and noisy; compare ratios, never absolute times. Build \
        with -c release for numbers that mean something. About 10-20 s; --quick \
        takes a fraction of the samples (for tests).

        This is the quick per-device check. The full suite (socket RPC baseline, \
        SPSC ring, sizes 4 KiB-1 GiB, discovery, two clients, callgrind, idle CPU, \
        JSON report and plot) is tools/bench.
        """)

    @OptionGroup var target: DeviceArgument

    @Flag(name: .long, help: "Take far fewer samples: for tests, not for numbers.")
    var quick = false

    @OptionGroup var output: JSONOption

    func run() throws {
      let choice = try target.chosen()
      let device = try openDevice(choice, timeout: target.timeout)
      defer { device.close() }
      if !output.json { print(choice.line) }
      // The measuring code is vgpu-bench's (BenchKit); this is its quick per-device subset.
      let plan = Plan(quick: quick)
      let t = DeviceTarget(device)
      var cases: [BenchCase] = []
      var problems: [String] = []
      func measured<T>(_ what: String, _ body: () throws -> T) -> T? {
        do { return try body() } catch {
          problems.append("\(what): \(error)")
          return nil
        }
      }

      // The baseline first, while the device is idle (the simulated one sleeps).
      // Interleaved in blocks, so both see the same placements of the two vCPUs.
      let both = measured("ping-pong baseline and NOP round trip") {
        try PingPong.measure(plan, child: ["_pingpong"], against: { try device.nop() })
      }
      let pingPong = both?.pingPong
      let nop = both?.other
      let baselineName = "shm ping-pong between 2 processes"
      cases.append(
        BenchCase(
          name: "NOP round trip p50", unit: "ns", value: nop?.p50, baseline: pingPong?.latency.p50,
          baselineName: baselineName + ", p50"))
      cases.append(
        BenchCase(
          name: "NOP round trip p99", unit: "ns", value: nop?.p99, baseline: pingPong?.latency.p99,
          baselineName: baselineName + ", p99"))
      let rate = measured("batched NOPs") { try Cases.batched(t, plan) }
      cases.append(
        BenchCase(
          name: "NOPs, 32 a doorbell", unit: "commands/s", value: rate, baseline: pingPong?.roundTripsPerSecond,
          baselineName: "round trips/s of that ping-pong"))
      let sizes = [64 << 20, 256 << 20]
      // memcpy sampled in turn with the copies (Cases.copies).
      let measuredCopies = measured("copies") { try Cases.copies(t, plan, sizes: sizes, d2d: false) }
      let copies = measuredCopies?.mine
      for (i, bytes) in sizes.enumerated() {
        let size = exactBytesText(bytes)
        let memcpyName = "memcpy \(size), 1 thread"
        let m = measuredCopies?.memcpy[i].gbPerSecond
        cases.append(
          BenchCase(
            name: "H2D \(size)", unit: "GB/s", value: copies?.h2d[i].gbPerSecond, baseline: m, baselineName: memcpyName)
        )
        cases.append(
          BenchCase(
            name: "D2H \(size)", unit: "GB/s", value: copies?.d2h[i].gbPerSecond, baseline: m, baselineName: memcpyName)
        )
      }

      let report = BenchReport(
        device: choice.device, choice: choice.reason, quick: quick, build: buildKind,
        samples: nop?.samples ?? 0, baselineSamples: pingPong?.latency.samples ?? 0, cases: cases, problems: problems)
      if output.json { try printJSON(report) } else { print(report.text) }
      if !problems.isEmpty {
        throw ToolError(status: .failure, description: "bench on \(choice.device): " + problems.joined(separator: "; "))
      }
    }
  }
}

#if DEBUG
  let buildKind = "debug"
#else
  let buildKind = "release"
#endif

struct BenchCase: Encodable {
  var name: String
  var unit: String
  var value: Double?
  var baseline: Double?
  var baselineName: String
  /// value / baseline.
  var ratio: Double?

  init(name: String, unit: String, value: Double?, baseline: Double?, baselineName: String) {
    self.name = name
    self.unit = unit
    self.value = value
    self.baseline = baseline
    self.baselineName = baselineName
    if let value, let baseline, baseline > 0 { ratio = value / baseline }
  }

  func format(_ v: Double?) -> String {
    guard let v else { return "n/a" }
    switch unit {
    case "ns": return durationText(nanoseconds: v)
    case "commands/s": return String(format: "%.2f M/s", v / 1e6)
    default: return String(format: "%.2f %@", v, unit)
    }
  }
}

struct BenchReport: Encodable {
  var device: String
  var choice: String
  var quick: Bool
  var build: String
  /// NOP latency samples, and ping-pong samples, actually taken.
  var samples: Int
  var baselineSamples: Int
  var cases: [BenchCase]
  var problems: [String]

  var text: String {
    var lines = [padded("case", 22) + padded("value", 13) + padded("baseline", 13) + padded("ratio", 9) + "baseline is"]
    for c in cases {
      let ratio = c.ratio.map { String(format: "%.2f×", $0) } ?? "n/a"
      lines.append(
        padded(c.name, 22) + padded(c.format(c.value), 13) + padded(c.format(c.baseline), 13) + padded(ratio, 9)
          + c.baselineName)
    }
    lines.append(
      "ratio = value / baseline: for latencies lower is better, for rates higher. "
        + "\(samples) NOP and \(baselineSamples) ping-pong samples; \(build) build"
        + (quick ? "; --quick" : ""))
    return lines.joined(separator: "\n")
  }
}

extension PCITool {
  /// The child half of bench's ping-pong baseline.
  struct PingPongChild: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "_pingpong", abstract: "Serve bench's shared-memory ping-pong (internal).", shouldDisplay: false)

    @Argument(help: "The /dev/shm file bench created.")
    var path: String

    func run() throws {
      do { try PingPong.serve(path) } catch { throw ToolError(status: .failure, description: "\(error)") }
    }
  }
}
