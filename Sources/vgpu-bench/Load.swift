import BenchKit
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// What each client of the scale section's load cases does, back to back,
/// for as long as the suite says.
enum LoadCase: String, CaseIterable, Codable {
  case nop
  /// `fill` on one element, waited for: a launch's round trip.
  case launch
  /// 4 KiB allocated and freed.
  case allocFree = "alloc+free"
  /// 256 KiB host to device (one staging slot's worth).
  case copy
  /// 64 MiB host to device in one call: a client moving a model's weights
  /// (the hogs beside one client's NOPs, not a level's case).
  case bigCopy = "big-copy"
  /// `fill` over 2^20 elements (4096 blocks of 256 threads), waited for: a long kernel.
  case longLaunch = "long-launch"

  /// What every client of a level does, one case after another.
  static let levelCases: [LoadCase] = [.nop, .launch, .allocFree, .copy]
  static let copySize = 256 << 10
  static let bigCopySize = 64 << 20
  static let longLaunchElements = 1 << 20
  var unit: String { self == .copy || self == .bigCopy ? "GB/s" : "ops/s" }
}

/// One client's answer for one case.
struct LoadResult: Codable {
  var operations: Int
  var seconds: Double
  var latency: LatencySummary
  var rate: Double { Double(operations) / seconds }
}

extension Modes {
  /// A client of the scale section's load cases: opens `target`, says
  /// "ready", then for each "go CASE MILLISECONDS" runs the case that long
  /// and answers "result JSON"; ends when stdin closes.
  static func load(target: String) throws {
    let t = try open(target)
    let function = try t.loadFill()
    let buffer = try t.allocate(LoadCase.copySize)
    let parameters = try FillKernel.parameters(function, buffer)
    let host = UnsafeMutableRawBufferPointer.allocate(byteCount: LoadCase.copySize, alignment: 4096)
    defer { host.deallocate() }
    memset(host.baseAddress!, 0x5a, host.count)
    // The hogs' buffers, made when first asked for.
    var big: (device: UInt64, host: UnsafeMutableRawBufferPointer)?
    defer { big?.host.deallocate() }
    var long: [UInt8]?
    // Operations' times, the first 2^19 of a case (4 MiB a client; 64 of them run at
    // once): a fast case goes on counting past them, unrecorded.
    var values = [UInt64](repeating: 0, count: 1 << 19)
    let lines = LineReader(fd: 0)
    say("ready")
    while let line = lines.next() {
      let words = line.split(separator: " ")
      guard words.count == 3, words[0] == "go", let kind = LoadCase(rawValue: String(words[1])),
        let milliseconds = UInt64(words[2])
      else { throw BenchError("not a load line: '\(line)'") }
      let start = now()
      let end = start + milliseconds * 1_000_000
      var operations = 0
      var t0 = start
      while t0 < end {
        switch kind {
        case .nop: try t.nop()
        case .launch: try t.launchFill(function, parameters: parameters)
        case .allocFree: try t.free(try t.allocate(4096))
        case .copy: try t.copyIn(buffer, from: UnsafeRawBufferPointer(host))
        case .bigCopy:
          if big == nil {
            let h = UnsafeMutableRawBufferPointer.allocate(byteCount: LoadCase.bigCopySize, alignment: 4096)
            memset(h.baseAddress!, 0x5b, h.count)
            big = (try t.allocate(LoadCase.bigCopySize), h)
          }
          try t.copyIn(big!.device, from: UnsafeRawBufferPointer(big!.host))
        case .longLaunch:
          if long == nil {
            let n = LoadCase.longLaunchElements
            long = try FillKernel.parameters(function, try t.allocate(n * 4), count: UInt32(n))
          }
          try t.launchFill(function, parameters: long!, grid: LoadCase.longLaunchElements / 256, block: 256)
        }
        let t1 = now()
        if operations < values.count { values[operations] = t1 &- t0 }
        operations += 1
        t0 = t1
      }
      let result = LoadResult(
        operations: operations, seconds: Double(t0 &- start) / 1e9,
        latency: LatencySummary(Array(values[..<min(operations, values.count)])))
      say("result " + String(decoding: try JSONEncoder().encode(result), as: UTF8.self))
    }
  }
}

extension Suite {
  /// Client processes at each load level.
  var loadLevels: [Int] { options.quick ? [1, 2, 4] : [1, 2, 4, 8, 16, 32, 64] }

  /// N client processes at once against a socket mediator (a BAR each, as
  /// host processes get), each doing one case back to back for the same
  /// time: the aggregate rate against one client's, the spread between the
  /// fastest and the slowest client, and the worst client's p50/p99 against
  /// one client alone, all in this run (issue 17). Measured twice: with the
  /// mediator's serving pool (its default), and with a serving thread per
  /// client (`--serving-threads 0`, the mediator before the pool).
  func measureLoad() {
    let pooled = loadSeries(label: nil, [])
    let perClient = loadSeries(label: "a thread per client", ["--serving-threads=0"])
    // The pool against a thread per client, same run: worst p99 and aggregate.
    guard let pooled, let perClient else { return }
    for n in loadLevels where n > 1 {
      for c in LoadCase.levelCases {
        let a = pooled[n]?[c] ?? []
        let b = perClient[n]?[c] ?? []
        let p99 = Figure(
          "scale", "\(n) clients at once, \(c.rawValue): worst p99, serving pool", unit: "ns",
          Self.worst(a)?.p99, lowerIsBetter: true)
        report.figures.append(p99.against("a thread per client", Self.worst(b)?.p99))
      }
    }
  }

  /// The worst client's latencies of a level: all clients' merged.
  static func worst(_ r: [LoadResult]) -> LatencySummary? {
    r.dropFirst().reduce(r.first?.latency) { m, x in m.map { LatencySummary.merged($0, x.latency) } }
  }

  /// Every load level on a mediator started with `extra` options; its figures
  /// named with `label` (nil: the mediator as it ships). The results, or nil
  /// when the series could not run (said in the figures and problems).
  func loadSeries(label: String?, _ extra: [String]) -> [Int: [LoadCase: [LoadResult]]]? {
    let group = "scale"
    let levels = loadLevels
    let milliseconds = options.quick ? 300 : 1500
    func name(_ n: Int, _ c: LoadCase, _ what: String) -> String {
      let who = n == 1 ? "1 client alone" : "\(n) clients at once"
      return (label.map { "\($0): " } ?? "") + "\(who), \(c.rawValue): \(what)"
    }
    func missing(_ why: String) {
      for n in levels {
        for c in LoadCase.levelCases {
          for what in ["aggregate rate", "max/min client rate", "worst client's p50", "worst client's p99"] {
            report.figures.append(Figure(group, name(n, c, what), unit: c.unit, nil, lowerIsBetter: false, note: why))
          }
        }
      }
      report.problems.append("scale load\(label.map { " (\($0))" } ?? ""): \(why)")
    }
    let socket = "/dev/shm/vgpu-bench-load-\(getpid()).sock"
    defer { unlink(socket) }
    let mediator: Process
    do { mediator = try startSocketMediator(socket, extra) } catch {
      missing("\(error)")
      return nil
    }
    defer { stop(mediator) }
    var results: [Int: [LoadCase: [LoadResult]]] = [:]
    do {
      for n in levels {
        progress.detail(
          "\(label.map { "\($0): " } ?? "")\(n) client processes, \(LoadCase.levelCases.count) cases of \(milliseconds) ms"
        )
        results[n] = try loadRound(n, target: "unix:\(socket)", milliseconds: milliseconds)
      }
    } catch {
      missing("\(error)")
      return nil
    }
    guard let one = results[1] else { return nil }
    // One client's NOPs beside a client that copies 64 MiB at a time or runs
    // long kernels (issue 17: its p99 ≤ 10× alone), against the NOPs alone above.
    for hog in [LoadCase.bigCopy, .longLaunch] {
      progress.detail("\(label.map { "\($0): " } ?? "")NOPs beside a client doing \(hog.rawValue)")
      let r: [LoadResult]
      do { r = try hogRound(hog, target: "unix:\(socket)", milliseconds: milliseconds) } catch {
        report.problems.append("scale load\(label.map { " (\($0))" } ?? ""), beside \(hog.rawValue): \(error)")
        continue
      }
      let alone = one[.nop]?.first
      let who = (label.map { "\($0): " } ?? "") + "1 client's NOPs beside one doing \(hog.rawValue)"
      report.figures.append(
        Figure(group, "\(who): rate", unit: "ops/s", r.first?.rate, lowerIsBetter: false).against(
          "NOPs alone", alone?.rate))
      report.figures.append(
        Figure(group, "\(who): p50", unit: "ns", r.first?.latency.p50, lowerIsBetter: true).against(
          "NOPs alone", alone?.latency.p50))
      report.figures.append(
        Figure(
          group, "\(who): p99", unit: "ns", r.first?.latency.p99, lowerIsBetter: true,
          note: "issue 17's bound: ≤ 10× alone"
        ).against("NOPs alone", alone?.latency.p99))
      let scale = hog == .bigCopy ? Double(LoadCase.bigCopySize) / 1e9 : 1
      report.figures.append(
        Figure(group, "\(who): the hog's rate", unit: hog.unit, r.last.map { $0.rate * scale }, lowerIsBetter: false))
    }
    for n in levels {
      for c in LoadCase.levelCases {
        let r = results[n]?[c] ?? []
        let scale = c == .copy ? Double(LoadCase.copySize) / 1e9 : 1
        let rates = r.map { $0.rate * scale }
        let single = (one[c]?.first?.rate ?? 0) * scale
        let worst = Self.worst(r)
        let alone = one[c]?.first?.latency
        let aggregate = Figure(
          group, name(n, c, "aggregate rate"), unit: c.unit, rates.reduce(0, +), lowerIsBetter: false)
        let p50 = Figure(group, name(n, c, "worst client's p50"), unit: "ns", worst?.p50, lowerIsBetter: true)
        let p99 = Figure(
          group, name(n, c, "worst client's p99"), unit: "ns", worst?.p99, lowerIsBetter: true,
          note: n == 64 ? "issue 17's bound at 64 clients: ≤ 10× one client's p99" : nil)
        guard n > 1 else {
          // The baselines themselves.
          report.figures += [aggregate, p50, p99]
          continue
        }
        report.figures.append(aggregate.against("1 client alone", single))
        let spread = (rates.min() ?? 0) > 0 ? (rates.max() ?? 0) / rates.min()! : nil
        report.figures.append(
          Figure(
            group, name(n, c, "max/min client rate"), unit: "×", spread, lowerIsBetter: true,
            note: "issue 17's bound: ≤ 2×"))
        report.figures.append(p50.against("1 client alone", alone?.p50))
        report.figures.append(p99.against("1 client alone", alone?.p99))
      }
    }
    // The plot's CDFs: NOPs alone and the worst client's at the largest level.
    let crowd = levels.last!
    let prefix = label.map { "\($0), " } ?? ""
    report.latency["scale: \(prefix)NOP, 1 client"] = one[.nop]?.first?.latency.cdf
    report.latency["scale: \(prefix)NOP, \(crowd) clients (worst)"] =
      Self.worst(results[crowd]?[.nop] ?? [])?.cdf
    return results
  }

  /// Two `_load` processes on `target` at once: the first doing NOPs, the
  /// second `hog`. Their results, NOPs first.
  func hogRound(_ hog: LoadCase, target: String, milliseconds: Int) throws -> [LoadResult] {
    var children: [(Process, LineReader, FileHandle)] = []
    defer {
      for (p, _, input) in children {
        try? input.close()
        stop(p)
      }
    }
    try startHelpers(2, ["_load", target], into: &children)
    for (_, reader, _) in children {
      guard reader.next() == "ready" else { throw BenchError("a load client of \(target) did not start") }
    }
    for (i, (_, _, input)) in children.enumerated() {
      input.write(Data("go \(i == 0 ? LoadCase.nop.rawValue : hog.rawValue) \(milliseconds)\n".utf8))
    }
    return try children.map { (_, reader, _) in
      guard let line = reader.next(), line.hasPrefix("result ") else {
        throw BenchError("a load client of \(target) stopped beside \(hog.rawValue)")
      }
      return try JSONDecoder().decode(LoadResult.self, from: Data(line.dropFirst(7).utf8))
    }
  }

  /// `n` `_load` processes on `target`, every case run by all of them at once.
  func loadRound(_ n: Int, target: String, milliseconds: Int) throws -> [LoadCase: [LoadResult]] {
    var children: [(Process, LineReader, FileHandle)] = []
    defer {
      for (p, _, input) in children {
        try? input.close()
        stop(p)
      }
    }
    try startHelpers(n, ["_load", target], into: &children)
    for (_, reader, _) in children {
      guard reader.next() == "ready" else { throw BenchError("a load client of \(target) did not start") }
    }
    var results: [LoadCase: [LoadResult]] = [:]
    for c in LoadCase.levelCases {
      for (_, _, input) in children { input.write(Data("go \(c.rawValue) \(milliseconds)\n".utf8)) }
      results[c] = try children.map { (_, reader, _) in
        guard let line = reader.next(), line.hasPrefix("result ") else {
          throw BenchError("a load client of \(target) stopped during \(c.rawValue)")
        }
        return try JSONDecoder().decode(LoadResult.self, from: Data(line.dropFirst(7).utf8))
      }
    }
    return results
  }
}
