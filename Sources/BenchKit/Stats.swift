import CSupport
import Foundation

/// Nanoseconds on the monotonic clock (vDSO, ~25 ns a read here).
@inline(__always) public func now() -> UInt64 { vgpu_monotonic_ns() }

/// A latency series: percentiles, and the distribution thinned to a few
/// hundred points for the plot.
public struct LatencySummary: Codable, Sendable {
  public var samples: Int
  public var p50: Double
  public var p99: Double
  public var p999: Double
  public var max: Double
  /// The values at `LatencySummary.quantiles`: the distribution, thinned for the plot.
  public var cdf: [Double]

  /// Where `cdf` samples the distribution: every percent up to 90%, then
  /// evenly on a log scale of the tail up to 99.99%, so the tail is not lost.
  public static let quantiles: [Double] =
    (0..<90).map { Double($0) / 100 } + (0...100).map { 1 - 0.1 * pow(10, -3 * Double($0) / 100) }

  public init(_ values: [UInt64]) {
    let sorted = values.sorted()
    samples = sorted.count
    func at(_ q: Double) -> Double {
      sorted.isEmpty ? 0 : Double(sorted[Swift.min(sorted.count - 1, Int(Double(sorted.count) * q))])
    }
    p50 = at(0.5)
    p99 = at(0.99)
    p999 = at(0.999)
    // Not `.map(Double.init)`: that resolves to `init(bitPattern:)`, and the
    // largest value read as a subnormal (about 1e-317).
    max = sorted.last.map { Double($0) } ?? 0
    cdf = sorted.isEmpty ? [] : Self.quantiles.map(at)
  }

  /// Two clients' series as one: at every quantile the worse of the two.
  public static func merged(_ a: LatencySummary, _ b: LatencySummary) -> LatencySummary {
    var m = LatencySummary([])
    m.samples = a.samples + b.samples
    m.p50 = Swift.max(a.p50, b.p50)
    m.p99 = Swift.max(a.p99, b.p99)
    m.p999 = Swift.max(a.p999, b.p999)
    m.max = Swift.max(a.max, b.max)
    m.cdf = zip(a.cdf, b.cdf).map { Swift.max($0, $1) }
    return m
  }

  /// Several clients' series as one (`merged(_:_:)` over all); nil for none.
  public static func merged(_ all: [LatencySummary]) -> LatencySummary? {
    all.dropFirst().reduce(all.first) { m, x in m.map { merged($0, x) } }
  }
}

public func median(_ values: [Double]) -> Double {
  let s = values.sorted()
  return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// How many samples and how long, for a full run and for `--quick`.
public struct Plan: Sendable {
  public var quick: Bool
  public var warmup: Int
  public var samples: Int
  /// Most time one latency series may take: on a busy machine fewer samples are taken.
  public var latencyBudget: UInt64
  /// How long each rate is measured.
  public var rateTime: UInt64
  /// Bandwidth samples per size (the median is reported) and least time per sample.
  public var copySamples: Int
  public var copySampleTime: UInt64

  public init(quick: Bool) {
    self.quick = quick
    warmup = quick ? 200 : 2_000
    samples = quick ? 2_000 : 20_000
    latencyBudget = quick ? 300_000_000 : 3_000_000_000
    rateTime = quick ? 100_000_000 : 1_000_000_000
    copySamples = quick ? 1 : 5
    copySampleTime = quick ? 2_000_000 : 20_000_000
  }
}

/// Times `body` `samples` times (or until the budget is spent) after `warmup` calls.
public func latencies(_ plan: Plan, samples: Int? = nil, _ body: () throws -> Void) rethrows -> LatencySummary {
  for _ in 0..<plan.warmup { try body() }
  var values = [UInt64](repeating: 0, count: samples ?? plan.samples)
  let deadline = now() + plan.latencyBudget
  var taken = 0
  while taken < values.count {
    let t0 = now()
    try body()
    let t1 = now()
    values[taken] = t1 &- t0
    taken += 1
    if t1 > deadline { break }
  }
  values.removeLast(values.count - taken)
  return LatencySummary(values)
}

/// Calls `body` (which does `per` operations) until `time` has passed; operations per second.
public func rate(_ time: UInt64, per: Int, _ body: () throws -> Void) rethrows -> Double {
  try body()
  var count = 0
  let start = now()
  var t = start
  repeat {
    try body()
    count += per
    t = now()
  } while t &- start < time
  return Double(count) / Double(t &- start) * 1e9
}

/// Median bytes per nanosecond (= GB/s) of each of `bodies`, which move
/// `bytes` per call: each sample repeats one body until `plan.copySampleTime`
/// has passed (small sizes are not timed one call at a time), and the bodies'
/// samples are taken in turn, so each median covers the same stretch of a
/// noisy machine and the ratios between them are fair.
public func interleavedBandwidth(_ plan: Plan, bytes: Int, _ bodies: [() throws -> Void]) throws -> [Double] {
  for body in bodies { try body() }  // warm: page faults, caches
  var results = [[Double]](repeating: [], count: bodies.count)
  for _ in 0..<plan.copySamples {
    for (i, body) in bodies.enumerated() {
      var n = 0
      let t0 = now()
      var t1 = t0
      repeat {
        try body()
        n += 1
        t1 = now()
      } while t1 &- t0 < plan.copySampleTime
      results[i].append(Double(bytes) * Double(n) / Double(t1 &- t0))
    }
  }
  return results.map(median)
}
