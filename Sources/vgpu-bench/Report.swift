import BenchKit
import Foundation

/// One baseline a figure is compared with, measured in the same run.
struct Comparison: Codable {
  var baseline: String
  var value: Double?
  /// value / baseline.
  var ratio: Double?
  /// How many times better the measured value is (baseline / value where lower is better).
  var advantage: Double?

  init(_ baseline: String, _ value: Double?, of measured: Double?, lowerIsBetter: Bool) {
    self.baseline = baseline
    self.value = value
    if let measured, let value, value > 0, measured > 0 {
      ratio = measured / value
      advantage = lowerIsBetter ? value / measured : measured / value
    }
  }
}

/// A measured figure with its baselines.
struct Figure: Codable {
  var group: String
  var name: String
  var unit: String
  var value: Double?
  var lowerIsBetter: Bool
  var comparisons: [Comparison] = []
  var note: String?

  init(_ group: String, _ name: String, unit: String, _ value: Double?, lowerIsBetter: Bool, note: String? = nil) {
    self.group = group
    self.name = name
    self.unit = unit
    self.value = value
    self.lowerIsBetter = lowerIsBetter
    self.note = note
  }

  func against(_ baseline: String, _ b: Double?) -> Figure {
    var f = self
    f.comparisons.append(Comparison(baseline, b, of: value, lowerIsBetter: lowerIsBetter))
    return f
  }
}

/// One of issue 7's targets, checked against this run's figures.
struct TargetCheck: Codable {
  var target: String
  var measured: String
  /// nil: not measured in this run.
  var met: Bool?
}

struct Report: Codable {
  var tool = "vgpu-bench"
  var version = 1
  var date: String
  var host: String
  var cpu: String
  var cores: Int
  var build: String
  var quick: Bool
  var seconds: Double = 0
  /// /proc/loadavg's 1-minute figure at the start and at the end of the run.
  var loadAverage: [Double] = []
  var mediator: String
  var socketServer: String
  var figures: [Figure] = []
  var targets: [TargetCheck] = []
  /// Latency distributions by series name: ns at each of `latencyQuantiles`.
  var latency: [String: [Double]] = [:]
  var latencyQuantiles = LatencySummary.quantiles
  /// Bandwidth against transfer size by series name.
  var bandwidth: [String: [BandwidthPoint]] = [:]
  var problems: [String] = []
  var notes: [String] = []

  func figure(_ name: String) -> Figure? { figures.first { $0.name == name } }

  func json() throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(self)
  }

  /// The table: every figure as value, baseline, ratio.
  var text: String {
    var lines: [String] = []
    let header =
      pad("case", 52) + pad("value", 14) + pad("baseline", 40) + pad("baseline value", 15) + pad("ratio", 9)
      + "advantage"
    var group = ""
    for f in figures {
      if f.group != group {
        group = f.group
        lines.append("")
        lines.append("== \(group)")
        lines.append(header)
      }
      let v = format(f.value, f.unit)
      if f.comparisons.isEmpty {
        lines.append(pad(f.name, 52) + pad(v, 14) + (f.note.map { "(\($0))" } ?? ""))
      }
      for (i, c) in f.comparisons.enumerated() {
        lines.append(
          pad(i == 0 ? f.name : "", 52) + pad(i == 0 ? v : "", 14) + pad(c.baseline, 40)
            + pad(format(c.value, f.unit), 15)
            + pad(c.ratio.map { String(format: "%.3g×", $0) } ?? "n/a", 9)
            + (c.advantage.map { String(format: "%.3g× %@", $0, $0 >= 1 ? "better" : "worse") } ?? ""))
      }
      // A figure with baselines keeps its note too (what it is, its target), on a line of its own.
      if !f.comparisons.isEmpty, let note = f.note { lines.append(pad("", 4) + "(\(note))") }
    }
    lines.append("")
    lines.append("== targets (issue 7)")
    for t in targets {
      let mark = t.met.map { $0 ? "MET   " : "MISSED" } ?? "n/a   "
      lines.append("\(mark) \(t.target): \(t.measured)")
    }
    if !problems.isEmpty {
      lines.append("")
      lines.append("== problems")
      lines += problems
    }
    lines.append("")
    lines.append(
      "ratio = value / baseline; advantage = how many times better the value is (lower latency, higher rate). "
        + "load average \(loadAverage.map { String(format: "%.2f", $0) }.joined(separator: " → ")) on \(cores) cores; "
        + "\(build) build\(quick ? ", --quick (few samples: not for numbers)" : ""); \(String(format: "%.0f", seconds)) s."
    )
    return lines.joined(separator: "\n")
  }
}

func pad(_ s: String, _ width: Int) -> String {
  s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

func format(_ v: Double?, _ unit: String) -> String {
  guard let v else { return "n/a" }
  switch unit {
  case "ns":
    switch v {
    case ..<1_000: return String(format: "%.0f ns", v)
    case ..<1_000_000: return String(format: "%.2f µs", v / 1_000)
    default: return String(format: "%.2f ms", v / 1_000_000)
    }
  case "ops/s":
    return v >= 1e6 ? String(format: "%.2f M/s", v / 1e6) : String(format: "%.1f k/s", v / 1e3)
  case "GB/s": return String(format: "%.2f GB/s", v)
  case "ms": return String(format: "%.2f ms", v)
  case "instr/s": return String(format: "%.1f M/s", v / 1e6)
  default: return String(format: "%.4g %@", v, unit)
  }
}

func sizeText(_ n: Int) -> String { Cases.sizeText(n) }
