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
  /// The open-loop round's offered rate, NOPs a second per client. A NOP
  /// offered alone costs a client here some 50–75 µs of CPU (a timer
  /// wake-up in a VM, the submission, waking the serving thread, the wait,
  /// being woken), so 64 clients at this rate keep about a quarter of this
  /// machine's two cores busy: the round measures the device serving a
  /// crowd, not a run queue (at 250/s and 1000/s the 64 clients overran the
  /// cores and skipped 7 % and a quarter of their slots).
  static let pacedRate = 100
  /// How long the open-loop round runs: at 100/s, 800 NOPs for one client,
  /// so that its p99 is the 8th-worst, not a single outlier.
  static let pacedMilliseconds = 8000
  var unit: String { self == .copy || self == .bigCopy ? "GB/s" : "ops/s" }
}

/// One client's answer for one case.
struct LoadResult: Codable {
  var operations: Int
  var seconds: Double
  var latency: LatencySummary
  /// How late the client began after the window's common start (0: on
  /// time). A client that starts late measures a different crowd.
  var startedLateNanoseconds: UInt64 = 0
  /// Paced rounds only: how late each operation was submitted after its
  /// slot (the client's own scheduling, not the device's), and the slots
  /// skipped because the previous operation ran past them.
  var lateness: LatencySummary?
  var skipped: Int?
  var rate: Double { Double(operations) / seconds }
}

/// What the suite tells a load client: run `kind` from `start` to `end`
/// (CLOCK_MONOTONIC nanoseconds, the same for every client of a round, so
/// that all of them measure the same window and the same crowd) — back to
/// back, or, when `interval` is given, one operation each `interval`
/// nanoseconds from `start + phase` (an open loop: the offered rate does not
/// fall when the device slows, so its latencies are the device's under a
/// known load, not the run queue's).
struct LoadOrder {
  var kind: LoadCase
  var start: UInt64
  var end: UInt64
  var interval: UInt64?
  var phase: UInt64 = 0

  var line: String {
    "go \(kind.rawValue) \(start) \(end)" + (interval.map { " \($0) \(phase)" } ?? "")
  }

  init(kind: LoadCase, start: UInt64, end: UInt64, interval: UInt64? = nil, phase: UInt64 = 0) {
    (self.kind, self.start, self.end, self.interval, self.phase) = (kind, start, end, interval, phase)
  }

  init?(line: String) {
    let w = line.split(separator: " ")
    guard w.count == 4 || w.count == 6, w[0] == "go", let kind = LoadCase(rawValue: String(w[1])),
      let start = UInt64(w[2]), let end = UInt64(w[3]), start < end
    else { return nil }
    self.init(kind: kind, start: start, end: end)
    if w.count == 6 {
      guard let interval = UInt64(w[4]), interval > 0, let phase = UInt64(w[5]) else { return nil }
      (self.interval, self.phase) = (interval, phase)
    }
  }
}

/// Sleeps until CLOCK_MONOTONIC reads `deadline` (at once if it has).
func sleep(until deadline: UInt64) {
  var t = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
  while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nil) == EINTR {}
}

extension Modes {
  /// A client of the scale section's load cases: opens `target`, says
  /// "ready", then for each order (`LoadOrder`'s line) runs its case over
  /// its window and answers "result JSON"; ends when stdin closes.
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
    // Paced rounds: how late each operation was submitted (made here, not
    // per round: 64 clients touching 4 MiB each as a round opened made them late).
    var lateness = [UInt64](repeating: 0, count: values.count)
    let lines = LineReader(fd: 0)
    say("ready")
    while let line = lines.next() {
      guard let order = LoadOrder(line: line) else { throw BenchError("not a load line: '\(line)'") }
      func one() throws {
        switch order.kind {
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
      }
      sleep(until: order.start)
      let late = now() &- order.start
      var operations = 0
      let result: LoadResult
      if let interval = order.interval {
        // Open loop: operation k is due at start + phase + k·interval. Its
        // latency runs from its submission; how late that was is kept apart.
        var skipped = 0
        var due = order.start + order.phase
        while due < order.end {
          sleep(until: due)
          let t0 = now()
          try one()
          let t1 = now()
          if operations < values.count {
            values[operations] = t1 &- t0
            lateness[operations] = t0 &- due
          }
          operations += 1
          due += interval
          if due <= t1 {
            let passed = (t1 - due) / interval + 1
            skipped += Int(passed)
            due += passed * interval
          }
        }
        let kept = min(operations, values.count)
        result = LoadResult(
          operations: operations, seconds: Double(order.end - order.start) / 1e9,
          latency: LatencySummary(Array(values[..<kept])), startedLateNanoseconds: late,
          lateness: LatencySummary(Array(lateness[..<kept])), skipped: skipped)
      } else {
        var t0 = now()
        while t0 < order.end {
          try one()
          let t1 = now()
          if operations < values.count { values[operations] = t1 &- t0 }
          operations += 1
          t0 = t1
        }
        // Over the common window (the last operation may end past it).
        result = LoadResult(
          operations: operations, seconds: Double(t0 &- order.start) / 1e9,
          latency: LatencySummary(Array(values[..<min(operations, values.count)])), startedLateNanoseconds: late)
      }
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
  /// client (`--serving-threads 0`, the mediator before the pool). Every
  /// client of a round measures the same window. The pool's levels run
  /// again in an open loop, each client offering NOPs at a fixed rate: the
  /// latency a crowd adds, apart from the cores it takes.
  func measureLoad() {
    let pooled = loadSeries(label: nil, [], paced: true)
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
    LatencySummary.merged(r.map(\.latency))
  }

  /// Every load level on a mediator started with `extra` options; its figures
  /// named with `label` (nil: the mediator as it ships). The results, or nil
  /// when the series could not run (said in the figures and problems).
  /// With `paced`, the levels also run in an open loop (`pacedRound`).
  func loadSeries(label: String?, _ extra: [String], paced pacing: Bool = false) -> [Int: [LoadCase: [LoadResult]]]? {
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
    // The same levels in an open loop: every client offers NOPs at a fixed
    // rate, so the crowd adds contention, not CPU demand beyond the cores.
    // Closed, 64 clients back to back on 2 cores also compete with the
    // serving thread for CPU (docs/bench, "One window, an open loop").
    let rate = LoadCase.pacedRate
    let prefix = label.map { "\($0), " } ?? ""
    var paced: [Int: [LoadResult]] = [:]
    for n in levels where pacing {
      progress.detail("\(label.map { "\($0): " } ?? "")\(n) client processes, NOPs at \(rate)/s each")
      do {
        paced[n] = try pacedRound(
          n, target: "unix:\(socket)", interval: 1_000_000_000 / UInt64(rate),
          milliseconds: options.quick ? 1000 : LoadCase.pacedMilliseconds)
      } catch {
        report.problems.append("scale load\(label.map { " (\($0))" } ?? ""), NOPs at \(rate)/s: \(error)")
        break
      }
    }
    let pacedAlone = paced[1]?.first
    for n in levels {
      guard let r = paced[n] else { continue }
      let worst = Self.worst(r)
      let who = (label.map { "\($0): " } ?? "") + (n == 1 ? "1 client alone" : "\(n) clients at once")
      let what = "\(who), NOPs at \(rate)/s each"
      var p50 = Figure(group, "\(what): worst client's p50", unit: "ns", worst?.p50, lowerIsBetter: true)
      var p99 = Figure(
        group, "\(what): worst client's p99", unit: "ns", worst?.p99, lowerIsBetter: true,
        note: n == 64 ? "issue 17's bound at 64 clients: ≤ 10× one client's p99 at the same rate" : nil)
      if n > 1 {
        p50 = p50.against("1 client at \(rate)/s", pacedAlone?.latency.p50)
        p99 = p99.against("1 client at \(rate)/s", pacedAlone?.latency.p99)
      }
      let lateness = LatencySummary.merged(r.compactMap(\.lateness))
      let skipped = r.compactMap(\.skipped).reduce(0, +)
      report.figures += [
        Figure(group, "\(what): aggregate rate", unit: "ops/s", r.map(\.rate).reduce(0, +), lowerIsBetter: false),
        p50, p99,
        Figure(
          group, "\(what): p99 of how late a NOP was submitted", unit: "ns", lateness?.p99, lowerIsBetter: true,
          note: "the clients' own scheduling; \(skipped) slots skipped"),
      ]
    }
    if let r = paced[levels.last!] {
      report.latency["scale: \(prefix)NOP at \(rate)/s, 1 client"] = pacedAlone?.latency.cdf
      report.latency["scale: \(prefix)NOP at \(rate)/s, \(levels.last!) clients (worst)"] = Self.worst(r)?.cdf
    }
    // A client that began late measured a smaller crowd.
    let everyResult = results.values.flatMap { $0.values.joined() } + paced.values.joined()
    if let late = everyResult.map(\.startedLateNanoseconds).max(), late > 5_000_000 {
      report.problems.append(
        "scale load\(label.map { " (\($0))" } ?? ""): a client began \(ms(Double(late))) after its round's common start "
          + "(the machine was too busy to tell every client in time); its round measured fewer clients at once")
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
          note: n == 64
            ? "closed loop: 64 processes back to back on \(ProcessInfo.processInfo.activeProcessorCount) cores, "
              + "where a serving thread at normal priority waits its turn among them; issue 17's ≤ 10× is also "
              + "read open-loop (NOPs at \(LoadCase.pacedRate)/s each)"
            : nil)
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
    report.latency["scale: \(prefix)NOP, 1 client"] = one[.nop]?.first?.latency.cdf
    report.latency["scale: \(prefix)NOP, \(crowd) clients (worst)"] =
      Self.worst(results[crowd]?[.nop] ?? [])?.cdf
    return results
  }

  /// Two `_load` processes on `target` at once: the first doing NOPs, the
  /// second `hog`, over one window. Their results, NOPs first.
  func hogRound(_ hog: LoadCase, target: String, milliseconds: Int) throws -> [LoadResult] {
    try withLoadClients(2, target: target) { clients in
      let (start, end) = Self.window(2, milliseconds: milliseconds)
      return try Self.run(
        clients, [LoadOrder(kind: .nop, start: start, end: end), LoadOrder(kind: hog, start: start, end: end)],
        target: target)
    }
  }

  /// `n` `_load` processes on `target`, every case run by all of them at
  /// once, over one window a case.
  func loadRound(_ n: Int, target: String, milliseconds: Int) throws -> [LoadCase: [LoadResult]] {
    try withLoadClients(n, target: target) { clients in
      var results: [LoadCase: [LoadResult]] = [:]
      for c in LoadCase.levelCases {
        let (start, end) = Self.window(n, milliseconds: milliseconds)
        results[c] = try Self.run(
          clients, Array(repeating: LoadOrder(kind: c, start: start, end: end), count: n), target: target)
      }
      return results
    }
  }

  /// `n` `_load` processes on `target`, each submitting one NOP every
  /// `interval` nanoseconds over one window, at phases spread at random
  /// (independent clients: they sometimes collide, as real ones do).
  func pacedRound(_ n: Int, target: String, interval: UInt64, milliseconds: Int) throws -> [LoadResult] {
    try withLoadClients(n, target: target) { clients in
      let (start, end) = Self.window(n, milliseconds: milliseconds)
      let orders = (0..<n).map { _ in
        LoadOrder(kind: .nop, start: start, end: end, interval: interval, phase: UInt64.random(in: 0..<interval))
      }
      return try Self.run(clients, orders, target: target)
    }
  }

  /// A window every one of `clients` can have been told of before it opens
  /// (telling 64 takes a few milliseconds on a busy machine), `milliseconds` long.
  static func window(_ clients: Int, milliseconds: Int) -> (start: UInt64, end: UInt64) {
    let start = now() + UInt64(20 + clients / 2) * 1_000_000
    return (start, start + UInt64(milliseconds) * 1_000_000)
  }

  /// `n` started `_load` processes on `target`, each said "ready", for `body`;
  /// stopped after it.
  func withLoadClients<T>(_ n: Int, target: String, _ body: ([(Process, LineReader, FileHandle)]) throws -> T)
    throws -> T
  {
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
    return try body(children)
  }

  /// Gives each client its order and collects the results, in the clients' order.
  static func run(_ clients: [(Process, LineReader, FileHandle)], _ orders: [LoadOrder], target: String) throws
    -> [LoadResult]
  {
    for ((_, _, input), order) in zip(clients, orders) { input.write(Data((order.line + "\n").utf8)) }
    return try zip(clients, orders).map { (client, order) in
      guard let line = client.1.next(), line.hasPrefix("result ") else {
        throw BenchError("a load client of \(target) stopped during \(order.kind.rawValue)")
      }
      return try JSONDecoder().decode(LoadResult.self, from: Data(line.dropFirst(7).utf8))
    }
  }
}
