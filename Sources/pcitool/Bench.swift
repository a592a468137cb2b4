import ArgumentParser
import CSupport
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
        """)

    @OptionGroup var target: DeviceArgument

    @Flag(name: .long, help: "Take far fewer samples: for tests, not for numbers.")
    var quick = false

    @OptionGroup var output: JSONOption

    func run() throws {
      let choice = target.choice
      let device = try openDevice(choice.device, timeout: target.timeout)
      defer { device.close() }
      if !output.json { print(choice.line) }
      let plan = BenchPlan(quick: quick)
      var cases: [BenchCase] = []
      var problems: [String] = []
      func measured<T>(_ what: String, _ body: () throws -> T) -> T? {
        do { return try body() } catch {
          problems.append("\(what): \(error)")
          return nil
        }
      }

      // The baseline first, while the device is idle (the simulated one sleeps).
      let pingPong = measured("ping-pong baseline") { try PingPong.measure(plan) }

      let nop = measured("NOP round trip") { try Self.nopLatency(device, plan) }
      let baselineName = "shm ping-pong between 2 processes"
      cases.append(
        BenchCase(
          name: "NOP round trip p50", unit: "ns", value: nop?.p50, baseline: pingPong?.p50,
          baselineName: baselineName + ", p50"))
      cases.append(
        BenchCase(
          name: "NOP round trip p99", unit: "ns", value: nop?.p99, baseline: pingPong?.p99,
          baselineName: baselineName + ", p99"))
      let rate = measured("batched NOPs") { try Self.batchedRate(device, plan) }
      cases.append(
        BenchCase(
          name: "NOPs, 32 a doorbell", unit: "commands/s", value: rate, baseline: pingPong?.roundTripsPerSecond,
          baselineName: "round trips/s of that ping-pong"))
      for bytes in plan.copySizes {
        let r = measured("copies of \(exactBytesText(bytes))") { try Self.bandwidth(device, bytes: bytes, plan) }
        let size = exactBytesText(bytes)
        let memcpyName = "memcpy \(size), 1 thread"
        cases.append(
          BenchCase(name: "H2D \(size)", unit: "GB/s", value: r?.h2d, baseline: r?.memcpy, baselineName: memcpyName))
        cases.append(
          BenchCase(name: "D2H \(size)", unit: "GB/s", value: r?.d2h, baseline: r?.memcpy, baselineName: memcpyName))
      }

      let report = BenchReport(
        device: choice.device, choice: choice.reason, quick: quick, build: buildKind,
        samples: nop?.samples ?? 0, baselineSamples: pingPong?.samples ?? 0, cases: cases, problems: problems)
      if output.json { try printJSON(report) } else { print(report.text) }
      if !problems.isEmpty {
        throw ToolError(status: .failure, description: "bench on \(choice.device): " + problems.joined(separator: "; "))
      }
    }

    static func nopLatency(_ device: Device, _ plan: BenchPlan) throws -> Percentiles {
      for _ in 0..<plan.warmup { try device.nop() }
      var samples = [UInt64](repeating: 0, count: plan.samples)
      let deadline = vgpu_monotonic_ns() + plan.budgetNanoseconds
      var taken = 0
      try samples.withUnsafeMutableBufferPointer { s in
        while taken < s.count {
          let t0 = vgpu_monotonic_ns()
          try device.nop()
          let t1 = vgpu_monotonic_ns()
          s[taken] = t1 - t0
          taken += 1
          if t1 > deadline { break }
        }
      }
      return Percentiles(Array(samples.prefix(taken)))
    }

    /// `nops(_, batch: 32)` in rounds until the time is up.
    static func batchedRate(_ device: Device, _ plan: BenchPlan) throws -> Double {
      let round = 32 * 128
      try device.nops(round, batch: 32)
      var count = 0
      let start = vgpu_monotonic_ns()
      var now = start
      repeat {
        try device.nops(round, batch: 32)
        count += round
        now = vgpu_monotonic_ns()
      } while now - start < plan.rateNanoseconds
      return Double(count) / Double(now - start) * 1e9
    }

    struct Bandwidth {
      var h2d, d2h, memcpy: Double
    }

    /// Median GB/s of H2D and D2H copies of `bytes`, and of memcpy between two host buffers.
    static func bandwidth(_ device: Device, bytes: Int, _ plan: BenchPlan) throws -> Bandwidth {
      let host = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
      let other = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
      defer {
        host.deallocate()
        other.deallocate()
      }
      // Touch every page first, so that no timed copy pays for page faults.
      memset(host.baseAddress!, 0x5A, bytes)
      memset(other.baseAddress!, 0xA5, bytes)
      let buffer = try device.allocate(bytes)
      defer { try? device.free(buffer) }
      let source = UnsafeRawBufferPointer(host)
      try device.copy(to: buffer, from: source)
      try device.copy(from: buffer, into: other)
      var h2d: [Double] = []
      var d2h: [Double] = []
      var copy: [Double] = []
      for _ in 0..<plan.copyRepeats(bytes) {
        let t0 = vgpu_monotonic_ns()
        try device.copy(to: buffer, from: source)
        let t1 = vgpu_monotonic_ns()
        try device.copy(from: buffer, into: other)
        let t2 = vgpu_monotonic_ns()
        memcpy(other.baseAddress!, host.baseAddress!, bytes)
        let t3 = vgpu_monotonic_ns()
        h2d.append(Double(bytes) / Double(max(1, t1 - t0)))
        d2h.append(Double(bytes) / Double(max(1, t2 - t1)))
        copy.append(Double(bytes) / Double(max(1, t3 - t2)))
      }
      return Bandwidth(h2d: median(h2d), d2h: median(d2h), memcpy: median(copy))
    }
  }
}

#if DEBUG
  let buildKind = "debug"
#else
  let buildKind = "release"
#endif

/// How many samples and how long, by default and with --quick.
struct BenchPlan {
  var warmup: Int
  var samples: Int
  /// Most time one latency series may take: on a busy machine fewer samples are taken.
  var budgetNanoseconds: UInt64
  var rateNanoseconds: UInt64
  var copySizes: [Int]
  var repeats: Int

  init(quick: Bool) {
    warmup = quick ? 200 : 2_000
    samples = quick ? 2_000 : 20_000
    budgetNanoseconds = quick ? 500_000_000 : 4_000_000_000
    rateNanoseconds = quick ? 100_000_000 : 1_000_000_000
    copySizes = [64 << 20, 256 << 20]
    repeats = quick ? 1 : 5
  }

  func copyRepeats(_ bytes: Int) -> Int { bytes > 64 << 20 ? max(1, repeats - 2) : repeats }
}

struct Percentiles {
  var p50, p99: Double
  var samples: Int
  init(_ values: [UInt64]) {
    let sorted = values.sorted()
    samples = sorted.count
    p50 = sorted.isEmpty ? 0 : Double(sorted[sorted.count / 2])
    p99 = sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
  }
}

func median(_ values: [Double]) -> Double {
  let s = values.sorted()
  return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

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

// MARK: The two-process ping-pong baseline

/// A counter bounced in one 64-byte line of a small /dev/shm file between
/// this process and a child (`pcitool _pingpong PATH`): the floor for any
/// cross-process round trip through shared memory on this machine.
enum PingPong {
  /// The file's layout: the counter in line 0, the child's state and the stop flag in their own lines.
  static let fileSize = 4096
  static let counterOffset = 0
  static let childStateOffset = 128
  static let stopOffset = 192
  static let childReady: UInt32 = 1

  /// A peer that does not answer within this long is dead.
  static let answerDeadline: UInt64 = 1_000_000_000
  /// The child gives up when nothing new comes for this long.
  static let idleDeadline: UInt64 = 5_000_000_000
  /// After this many spins (~8 µs) each poll also yields the CPU, so that two processes
  /// that share one core still progress (~3 µs a round trip rather than scheduler ticks).
  static let spinsBeforeYield = 256

  struct Result {
    var p50, p99: Double
    var roundTripsPerSecond: Double
    var samples: Int
  }

  static func measure(_ plan: BenchPlan) throws -> Result {
    let path = "/dev/shm/pcitool-pingpong-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let base = try map(path, create: true)
    defer { munmap(base, fileSize) }
    var unlinked = false
    defer { if !unlinked { unlink(path) } }

    let child = Process()
    child.executableURL = URL(
      fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        ?? CommandLine.arguments[0])
    child.arguments = ["_pingpong", path]
    child.standardInput = FileHandle.nullDevice
    child.standardOutput = FileHandle.nullDevice
    do { try child.run() } catch { throw failure("cannot start \(child.executableURL!.path) _pingpong: \(error)") }
    defer { stop(child, base) }

    // Wait for the child to map the file; then nobody needs its name.
    let started = vgpu_monotonic_ns()
    while vgpu_load_acquire_u32(base + childStateOffset) != childReady {
      guard child.isRunning else { throw failure("the ping-pong child exited with status \(child.terminationStatus)") }
      guard vgpu_monotonic_ns() - started < 5_000_000_000 else {
        throw failure("the ping-pong child did not map \(path) within 5 s")
      }
      usleep(200)
    }
    unlink(path)
    unlinked = true

    let counter = base + counterOffset
    var value: UInt32 = 0
    func roundTrip() throws {
      value &+= 2
      let ping = value | 1
      vgpu_store_release_u32(counter, ping)
      var spins = 0
      var since: UInt64 = 0
      while vgpu_load_acquire_u32(counter) != ping &+ 1 {
        vgpu_cpu_relax()
        spins += 1
        if spins >= spinsBeforeYield {
          sched_yield()
          if spins & 255 == 0 {
            let now = vgpu_monotonic_ns()
            if since == 0 {
              since = now
            } else if now - since > answerDeadline {
              throw failure("the ping-pong child did not answer within \(answerDeadline / 1_000_000) ms")
            }
          }
        }
      }
    }
    for _ in 0..<plan.warmup { try roundTrip() }
    var samples = [UInt64](repeating: 0, count: plan.samples)
    var taken = 0
    var total: UInt64 = 0
    let deadline = vgpu_monotonic_ns() + plan.budgetNanoseconds
    while taken < samples.count {
      let t0 = vgpu_monotonic_ns()
      try roundTrip()
      let t1 = vgpu_monotonic_ns()
      samples[taken] = t1 - t0
      total += t1 - t0
      taken += 1
      if t1 > deadline { break }
    }
    let p = Percentiles(Array(samples.prefix(taken)))
    return Result(
      p50: p.p50, p99: p.p99, roundTripsPerSecond: Double(taken) / Double(max(1, total)) * 1e9, samples: taken)
  }

  /// Tells the child to stop and waits for it, at most 2 s, then kills it.
  static func stop(_ child: Process, _ base: UnsafeMutableRawPointer) {
    vgpu_store_release_u32(base + stopOffset, 1)
    let started = vgpu_monotonic_ns()
    while child.isRunning && vgpu_monotonic_ns() - started < 2_000_000_000 { usleep(1000) }
    if child.isRunning {
      child.terminate()
      child.waitUntilExit()
    }
  }

  /// The child's side: answer every odd value with the next even one until stopped.
  static func serve(_ path: String) throws {
    let base = try map(path, create: false)
    defer { munmap(base, fileSize) }
    let counter = base + counterOffset
    vgpu_store_release_u32(base + childStateOffset, childReady)
    var last: UInt32 = 0
    var idleSince = vgpu_monotonic_ns()
    var spins = 0
    while true {
      let v = vgpu_load_acquire_u32(counter)
      if v & 1 == 1 && v != last {
        vgpu_store_release_u32(counter, v &+ 1)
        last = v
        spins = 0
        continue
      }
      vgpu_cpu_relax()
      spins += 1
      if spins & 255 == 0 {
        if vgpu_load_acquire_u32(base + stopOffset) != 0 { return }
        let now = vgpu_monotonic_ns()
        if spins == 256 { idleSince = now }
        if now - idleSince > idleDeadline {
          throw failure("no ping for \(idleDeadline / 1_000_000_000) s; the parent is gone")
        }
      }
      if spins >= spinsBeforeYield { sched_yield() }
    }
  }

  static func map(_ path: String, create: Bool) throws -> UnsafeMutableRawPointer {
    let fd = create ? open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) : open(path, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { throw failure("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    if create, ftruncate(fd, off_t(fileSize)) != 0 {
      let reason = String(cString: strerror(errno))
      unlink(path)
      throw failure("cannot size \(path): \(reason)")
    }
    guard let p = mmap(nil, fileSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
      p != UnsafeMutableRawPointer(bitPattern: -1)
    else {
      throw failure("cannot map \(path): \(String(cString: strerror(errno)))")
    }
    return p
  }

  static func failure(_ text: String) -> ToolError { ToolError(status: .failure, description: text) }
}

extension PCITool {
  /// The child half of bench's ping-pong baseline.
  struct PingPongChild: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "_pingpong", abstract: "Serve bench's shared-memory ping-pong (internal).", shouldDisplay: false)

    @Argument(help: "The /dev/shm file bench created.")
    var path: String

    func run() throws { try PingPong.serve(path) }
  }
}
