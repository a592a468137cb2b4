import BenchKit
import CSupport
import Foundation
import MallocCounter
import VGPU
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

#if canImport(Glibc)
  import Glibc
#endif

#if DEBUG
  let buildKind = "debug"
#else
  let buildKind = "release"
#endif

/// Prints progress on stderr: what runs now, and how long the last step took.
final class Progress {
  let started = now()
  var stepStarted = now()
  var step = 0
  let total: Int
  init(total: Int) { self.total = total }

  func begin(_ what: String) {
    step += 1
    stepStarted = now()
    FileHandle.standardError.write(Data("[\(step)/\(total)] \(what)...\n".utf8))
  }
  func detail(_ what: String) { FileHandle.standardError.write(Data("        \(what)\n".utf8)) }
  var seconds: Double { Double(now() - started) / 1e9 }
}

/// Where the suite's pieces are, and what it measures.
struct SuiteOptions {
  var quick: Bool
  var maxSize: Int
  var mediator: String
  var shims: String?
  var callgrind: Bool
  var discoveryRuns: Int
  /// Passed to vgpu-mediator after the suite's own options (e.g. --metrics-listen :0).
  var mediatorOptions: [String] = []
  /// Only the idle CPU figures (e.g. to compare a mediator with and without its metrics endpoint).
  var onlyIdle = false
  /// Only the engine section (the PTX engine's figures, e.g. after a change to it).
  var onlyEngine = false
  /// Only the scale section (discovery bursts of 1 to 32 processes).
  var onlyScale = false
  /// Only the bandwidth section (e.g. a per-size sweep of the copies).
  var onlyCopies = false
  /// Only the batched NOP rate against the raw ring, and callgrind's
  /// instructions per NOP (issue 17: that ratio alone, run after run).
  var onlyRates = false
  /// The copy sizes (`--sizes`), instead of 4 KiB to `maxSize` in ×4 steps.
  var copySizes: [Int]? = nil
}

/// Runs every case and baseline and fills the report.
final class Suite {
  let options: SuiteOptions
  let plan: Plan
  var report: Report
  let progress = Progress(total: 15)
  var mediator: Process?
  var barPath = ""
  var socketPath = ""
  var socketServer: Process?

  init(_ options: SuiteOptions) {
    self.options = options
    plan = Plan(quick: options.quick)
    var u = utsname()
    uname(&u)
    let host = withUnsafeBytes(of: &u.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let cpu =
      (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n")
      .first { $0.hasPrefix("model name") }.map {
        $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
      }
      ?? "unknown CPU"
    let formatter = ISO8601DateFormatter()
    report = Report(
      date: formatter.string(from: Date()), host: "Linux \(release) (\(host))", cpu: cpu,
      cores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), build: buildKind, quick: options.quick,
      mediator: "vgpu-mediator (default layout: 8 queue pairs, depth 256, 7 staging slots of 256 KiB)",
      socketServer:
        "AF_UNIX stream, one thread per client, 4 MiB socket buffers; requests = 64-byte submission entries, answers = 32-byte completions, copy data inline; commands run on an in-process reference device (the mediator's executor) driven from the connection thread, copies received straight into its staging memory"
    )
  }

  var sizes: [Int] {
    if let copySizes = options.copySizes { return copySizes }
    var s: [Int] = []
    var n = 4096
    while n <= options.maxSize {
      s.append(n)
      n *= 4
    }
    return s
  }

  func measured<T>(_ what: String, _ body: () throws -> T) -> T? {
    do { return try body() } catch {
      report.problems.append("\(what): \(error)")
      progress.detail("FAILED: \(what): \(error)")
      return nil
    }
  }

  func run() throws -> Report {
    defer { stopServers() }
    report.loadAverage.append(loadAverage())
    progress.begin("starting vgpu-mediator and the socket RPC server")
    try startMediator()
    try startSocketServer()
    let vgpuSpec = "shm:\(barPath)"
    let helper = [selfExecutable]
    if options.onlyIdle {
      progress.begin("idle CPU of the mediator and of a client")
      measureIdle(vgpuSpec)
      report.seconds = progress.seconds
      return report
    }
    if options.onlyScale {
      progress.begin("scale: 1 to \(scaleLevels.last!) discovery processes at once (a socket mediator)")
      measureScale()
      progress.begin(
        "scale: 1 to \(loadLevels.last!) client processes at once doing NOPs, launches, allocations, copies")
      measureLoad()
      report.loadAverage.append(loadAverage())
      report.seconds = progress.seconds
      return report
    }
    if options.onlyEngine {
      measureEngine(vgpuSpec)
      report.seconds = progress.seconds
      return report
    }

    let device = try DeviceTarget(Device.open(vgpuSpec, options: .simulator()))
    let socket = try SocketClient(path: socketPath)
    if options.onlyCopies {
      _ = measureCopies(device, socket)
      measurePinnedCopies()
      report.loadAverage.append(loadAverage())
      report.seconds = progress.seconds
      return report
    }
    if options.onlyRates {
      measureRates(device)
      device.device.close()
      progress.begin("instructions per NOP (callgrind)")
      measureInstructions(vgpuSpec)
      checkTargets()
      report.targets.removeAll { !$0.target.hasPrefix("batched command rate") && !$0.target.hasPrefix("instructions") }
      report.loadAverage.append(loadAverage())
      report.seconds = progress.seconds
      return report
    }

    progress.begin("ceilings: shared-memory ping-pong (interleaved with vGPU NOPs), SPSC ring, memcpy")
    let both = measured("ping-pong baseline and vGPU NOP latency") {
      try PingPong.measure(plan, child: ["_pingpong"], against: { try device.nop() })
    }
    let pingPong = both?.pingPong
    let ring32 = measured("SPSC ring baseline") { try SPSCRing.measure(plan, batch: Cases.batch, child: ["_ring"]) }
    let ring1 = measured("SPSC ring baseline, batch 1") { try SPSCRing.measure(plan, batch: 1, child: ["_ring"]) }
    _ = helper

    progress.begin("NOP round trip: socket RPC")
    let nop = both?.other
    let socketNop = measured("socket NOP latency") {
      try latencies(plan, samples: plan.samples / 2) { try socket.nop() }
    }
    if let pingPong { report.latency["ping-pong (shm, 2 processes)"] = pingPong.latency.cdf }
    if let nop { report.latency["vGPU NOP"] = nop.cdf }
    if let socketNop { report.latency["socket RPC NOP"] = socketNop.cdf }
    for (label, key) in [("p50", \LatencySummary.p50), ("p99", \.p99), ("p99.9", \.p999)] {
      report.figures.append(
        Figure("round trip", "NOP round trip \(label)", unit: "ns", nop?[keyPath: key], lowerIsBetter: true)
          .against("shm ping-pong \(label) (ceiling)", pingPong?.latency[keyPath: key])
          .against("socket RPC NOP \(label)", socketNop?[keyPath: key]))
    }

    progress.begin("command rates: batched NOPs, launches, alloc/free")
    let batched = measured("vGPU batched NOPs") { try Cases.batched(device, plan) }
    let socketBatched = measured("socket batched NOPs") { try Cases.batched(socket, plan) }
    report.figures.append(
      Figure("rates", "NOPs, \(Cases.batch) a doorbell", unit: "ops/s", batched, lowerIsBetter: false)
        .against("raw SPSC ring, batches of \(Cases.batch) (ceiling)", ring32)
        .against("raw SPSC ring, batches of 1", ring1)
        .against("socket RPC, \(Cases.batch) requests a write", socketBatched)
        .against("shm ping-pong round trips/s", pingPong?.roundTripsPerSecond))
    let launch = measured("vGPU launches") { try Cases.launches(device, plan) }
    let socketLaunch = measured("socket launches") { try Cases.launches(socket, plan) }
    report.figures.append(
      Figure("rates", "launches (fill, 1 element)", unit: "ops/s", launch, lowerIsBetter: false)
        .against("socket RPC launches", socketLaunch))
    let allocs = measured("vGPU alloc/free") { try Cases.allocFree(device, plan) }
    let socketAllocs = measured("socket alloc/free") { try Cases.allocFree(socket, plan) }
    report.figures.append(
      Figure("rates", "alloc + free pairs (64 KiB)", unit: "ops/s", allocs, lowerIsBetter: false)
        .against("socket RPC alloc + free", socketAllocs))

    let copies = measureCopies(device, socket)
    measurePinnedCopies()

    progress.begin("heap allocations per command (malloc counter)")
    measureAllocations(device)

    // The PTX engine: kernels, an empty launch and module loads through the mediator.
    measureEngine(vgpuSpec)

    // Discovery and the two-client cases need queue pairs: give ours back.
    device.device.close()
    progress.begin("discovery through libcuda.so.1 in a fresh process")
    measureDiscovery()
    progress.begin("scale: 1 to \(scaleLevels.last!) discovery processes at once (a socket mediator)")
    measureScale()
    progress.begin("scale: 1 to \(loadLevels.last!) client processes at once doing NOPs, launches, allocations, copies")
    measureLoad()

    progress.begin("two client processes at once: vGPU")
    let two = measured("two vGPU clients") { try twoClients(vgpuSpec) }
    progress.begin("two client processes at once: socket RPC")
    let twoSocket = measured("two socket clients") { try twoClients("socket:\(socketPath)") }
    addTwoClientFigures(two, twoSocket, single: (nop, batched, launch, allocs), copies: copies)

    progress.begin("instructions per NOP (callgrind)")
    measureInstructions(vgpuSpec)

    progress.begin("idle CPU of the mediator and of a client")
    measureIdle(vgpuSpec)

    checkTargets()
    report.loadAverage.append(loadAverage())
    report.seconds = progress.seconds
    return report
  }

  /// The batched NOP rate and the raw ring it is held against, alone: the
  /// two are measured in turn, 5 rounds of a second each, so that both
  /// medians cover the same stretch of a noisy machine (the ring alone went
  /// from 50 to 190 M/s between two runs a minute apart on a loaded one).
  func measureRates(_ device: DeviceTarget) {
    progress.begin("batched NOPs against the raw SPSC ring, in turn")
    let rounds = plan.quick ? 1 : 5
    var rings: [Double] = []
    var nops: [Double] = []
    for round in 0..<rounds {
      progress.detail("round \(round + 1) of \(rounds)")
      if let r = measured("SPSC ring baseline", { try SPSCRing.measure(plan, batch: Cases.batch, child: ["_ring"]) }) {
        rings.append(r)
      }
      if let n = measured("vGPU batched NOPs", { try Cases.batched(device, plan) }) { nops.append(n) }
    }
    let ring1 = measured("SPSC ring baseline, batch 1") { try SPSCRing.measure(plan, batch: 1, child: ["_ring"]) }
    func median(_ v: [Double]) -> Double? { v.isEmpty ? nil : v.sorted()[v.count / 2] }
    let ratios = zip(nops, rings).map { $0 / $1 }.sorted()
    let note =
      ratios.isEmpty
      ? nil
      : "median of \(ratios.count) rounds taken in turn with the ring; per round \(String(format: "%.1f", ratios.first! * 100))–\(String(format: "%.1f", ratios.last! * 100))% of the ring"
    report.figures.append(
      Figure("rates", "NOPs, \(Cases.batch) a doorbell", unit: "ops/s", median(nops), lowerIsBetter: false, note: note)
        .against("raw SPSC ring, batches of \(Cases.batch) (ceiling)", median(rings))
        .against("raw SPSC ring, batches of 1", ring1))
  }

  /// The bandwidth section: memcpy, the vGPU and the socket RPC sampled in
  /// turn at each size (H2D, D2H, D2D). Returns the vGPU's copies.
  func measureCopies(_ device: DeviceTarget, _ socket: SocketClient) -> Cases.Copies? {
    progress.begin("bandwidth, \(sizeText(sizes.first!)) to \(sizeText(sizes.last!)): memcpy, vGPU, socket RPC")
    // memcpy, the vGPU and the socket RPC sampled in turn at each size.
    let allCopies = measured("copies (vGPU, socket RPC, memcpy)") {
      try Cases.copies(device, plan, sizes: sizes, d2d: true, against: socket) { self.progress.detail($0) }
    }
    let copies = allCopies?.mine
    let socketCopies = allCopies?.other
    let memcpyPoints = allCopies?.memcpy ?? sizes.map { BandwidthPoint(bytes: $0, gbPerSecond: nil) }
    report.bandwidth["memcpy, 1 thread (ceiling)"] = memcpyPoints
    if let copies {
      report.bandwidth["vGPU H2D"] = copies.h2d
      report.bandwidth["vGPU D2H"] = copies.d2h
      report.bandwidth["vGPU D2D"] = copies.d2d
    }
    if let socketCopies {
      report.bandwidth["socket RPC H2D"] = socketCopies.h2d
      report.bandwidth["socket RPC D2H"] = socketCopies.d2h
      report.bandwidth["socket RPC D2D"] = socketCopies.d2d
    }
    for (i, size) in sizes.enumerated() {
      let m = memcpyPoints[i].gbPerSecond
      for (kind, ours, theirs) in [
        ("H2D", copies?.h2d, socketCopies?.h2d), ("D2H", copies?.d2h, socketCopies?.d2h),
        ("D2D", copies?.d2d, socketCopies?.d2d),
      ] {
        report.figures.append(
          Figure("bandwidth", "\(kind) \(sizeText(size))", unit: "GB/s", ours?[i].gbPerSecond, lowerIsBetter: false)
            .against("memcpy \(sizeText(size)), 1 thread (ceiling)", m)
            .against("socket RPC \(kind) \(sizeText(size))", theirs?[i].gbPerSecond))
      }
    }
    return copies
  }

  /// Copies from and to page-locked memory (cuMemAllocHost, 2.4) against
  /// the same copies from ordinary memory (staged: two copies) on the same
  /// device and against memcpy, sampled in turn at each size from 256 KiB,
  /// on both kinds of device that have it: a host process's BAR of its own
  /// from a socket mediator (memory shared with the device), and a VM's BAR
  /// with a page-locked window (`--vm --host-window`, opened here as its
  /// guest would, through the BAR file).
  func measurePinnedCopies() {
    let pinnedSizes = sizes.filter { $0 >= 256 << 10 }
    guard let most = pinnedSizes.last else { return }
    progress.begin(
      "bandwidth from page-locked memory, \(sizeText(pinnedSizes.first!)) to \(sizeText(most)): memcpy, staged, one copy"
    )
    let socket = "/dev/shm/vgpu-bench-pinned-\(getpid()).sock"
    let barFile = "/dev/shm/vgpu-bench-window-\(getpid())"
    let window = "\(((2 * most) >> 20) + 64)M"
    for (label, key, extra, spec) in [
      ("unix: BAR, shared memory", "unix: BAR", ["--socket", socket], "unix:\(socket)"),
      ("a VM's BAR window", "VM window", ["--vm", "--path", barFile, "--host-window", window], "shm:\(barFile)"),
    ] {
      progress.detail(label)
      let mediator: Process
      let opens: (Process) -> Bool = { _ in (try? Device.open(spec)).map { $0.close() } != nil }
      do { mediator = try launchMediator(extra, serving: spec, ready: opens) } catch {
        report.notes.append("page-locked copies (\(label)): \(error)")
        continue
      }
      defer {
        stop(mediator)
        unlink(socket)
        unlink(barFile)
      }
      let points = measured("page-locked copies (\(label))") { try pinnedSeries(spec, pinnedSizes) }
      guard let points else { continue }
      for (size, r) in points {
        for (kind, staged, pinned) in [("H2D", r[1], r[3]), ("D2H", r[2], r[4])] {
          report.figures.append(
            Figure(
              "bandwidth", "\(kind) \(sizeText(size)), page-locked (one copy, \(label))", unit: "GB/s", pinned,
              lowerIsBetter: false
            )
            .against("\(kind) \(sizeText(size)) from ordinary memory, same device (staged: two copies)", staged)
            .against("memcpy \(sizeText(size)), 1 thread (ceiling)", r[0]))
        }
      }
      report.bandwidth["vGPU H2D page-locked (\(key))"] = points.map { .init(bytes: $0.0, gbPerSecond: $0.1[3]) }
      report.bandwidth["vGPU D2H page-locked (\(key))"] = points.map { .init(bytes: $0.0, gbPerSecond: $0.1[4]) }
    }
  }

  /// memcpy, staged H2D and D2H, page-locked H2D and D2H at each size, in turn, on `spec`.
  func pinnedSeries(_ spec: String, _ pinnedSizes: [Int]) throws -> [(Int, [Double])] {
    let most = pinnedSizes.last!
    let device = try Device.open(spec)
    defer { device.close() }
    guard let a = try device.allocateSharedHostMemory(most), let b = try device.allocateSharedHostMemory(most) else {
      throw BenchError(
        "\(spec) gives no page-locked memory: \(device.hostSharingRefusal.map { "\($0)" } ?? "neither feature sharedHostMemory nor hostWindow")"
      )
    }
    defer {
      _ = try? device.freeSharedHostMemory(a.baseAddress!)
      _ = try? device.freeSharedHostMemory(b.baseAddress!)
    }
    memset(a.baseAddress!, 0x5A, most)
    memset(b.baseAddress!, 0xA5, most)
    let host = Cases.hostBuffer(most, fill: 0x5A)
    let back = Cases.hostBuffer(most, fill: 0xA5)
    defer {
      host.deallocate()
      back.deallocate()
    }
    let target = DeviceTarget(device)
    let d = try target.allocate(most)
    defer { try? target.free(d) }
    var points: [(Int, [Double])] = []
    for size in pinnedSizes {
      progress.detail(sizeText(size))
      let r = try interleavedBandwidth(
        plan, bytes: size,
        [
          { memcpy(back.baseAddress!, host.baseAddress!, size) },
          { try target.copyIn(d, from: UnsafeRawBufferPointer(rebasing: host[0..<size])) },
          { try target.copyOut(d, into: UnsafeMutableRawBufferPointer(rebasing: back[0..<size])) },
          { try target.copyIn(d, from: UnsafeRawBufferPointer(rebasing: a[0..<size])) },
          { try target.copyOut(d, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<size])) },
        ])
      points.append((size, r))
    }
    return points
  }

  /// The 1-minute load average: spinning baselines and cases suffer alike when
  /// other work shares the two cores, and the reader should know.
  func loadAverage() -> Double {
    Double(((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "").split(separator: " ").first ?? "")
      ?? -1
  }

  // MARK: Servers

  func startMediator() throws {
    barPath = "/dev/shm/vgpu-bench-\(getpid())"
    unlink(barPath)
    // One BAR file for every process (--shared-bar): the figures below read
    // it (queue pairs reclaimed, callgrind's client) and compare with earlier runs.
    mediator = try launchMediator(
      ["--shared-bar", "--path", barPath]
        // The serving pool's options are for the socket's host processes (the scale section).
        + options.mediatorOptions.filter { !$0.hasPrefix("--serving-") },
      serving: barPath
    ) { p in
      guard let bar = try? SharedFile(path: barPath, size: 4096, create: false) else { return false }
      defer { bar.unmap() }
      let r = RegisterBlock(bar.base)
      return r.load(Register.devicePID) == UInt32(p.processIdentifier) && r.status.contains(.ready)
    }
  }

  func startSocketServer() throws {
    socketPath = "/tmp/vgpu-bench-rpc-\(getpid()).sock"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: selfExecutable)
    p.arguments = ["_rpc-server", socketPath]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    socketServer = p
    guard LineReader(fd: out.fileHandleForReading.fileDescriptor).next() == "ready" else {
      throw BenchError("the socket RPC server did not start")
    }
  }

  func stopServers() {
    // The socket server has nothing to clean up; the mediator stops cleanly on SIGTERM.
    if let socketServer { stop(socketServer, signal: SIGKILL) }
    if let mediator { stop(mediator) }
    unlink(barPath)
    unlink(socketPath)
  }

  // MARK: Allocations

  func measureAllocations(_ device: DeviceTarget) {
    func perCommand(_ n: Int, _ counter: () -> UInt64, _ body: () throws -> Void) -> Double? {
      do {
        try body()  // warm: lazy metadata, page faults
        let before = counter()
        for _ in 0..<n { try body() }
        return Double(counter() - before) / Double(n)
      } catch {
        report.problems.append("allocation count: \(error)")
        return nil
      }
    }
    let thread = { malloc_counter_thread_allocations() }
    let process = { malloc_counter_process_allocations() }
    let host = Cases.hostBuffer(1 << 20, fill: 1)
    defer { host.deallocate() }
    let src = UnsafeRawBufferPointer(host)
    var buffer: UInt64 = 0
    var fill = FunctionHandle(raw: 0, parameterSize: 0)
    var parameters: [UInt8] = []
    do {
      buffer = try device.allocate(2 << 20)
      fill = try device.loadFill()
      parameters = try FillKernel.parameters(fill, buffer)
    } catch { report.problems.append("allocation count setup: \(error)") }
    let cases: [(String, Int, () throws -> Void)] = [
      ("NOP", 10_000, { try device.nop() }),
      ("NOP, batched", 100, { try device.nops(32, batch: 32) }),
      ("launch", 2_000, { try device.launchFill(fill, parameters: parameters) }),
      ("alloc + free", 2_000, { try device.free(try device.allocate(64 << 10)) }),
      ("H2D 1 MiB", 200, { try device.copyIn(buffer, from: src) }),
      ("D2H 1 MiB", 200, { try device.copyOut(buffer, into: host) }),
      ("D2D 1 MiB", 200, { try device.copyDevice(buffer + (1 << 20), from: buffer, count: 1 << 20) }),
    ]
    for (name, n, body) in cases {
      var v = perCommand(n, thread, body)
      if name == "NOP, batched", let x = v { v = x / 32 }
      report.figures.append(
        Figure(
          "efficiency", "heap allocations per \(name) (client thread, shm)", unit: "allocations", v,
          lowerIsBetter: true, note: "target 0"))
    }
    // Both sides in one process: the in-process device's thread counts too.
    do {
      var configuration = ReferenceDeviceConfiguration()
      configuration.memorySize = 1 << 30
      let options = OpenOptions.simulator(configuration)
      let sim = DeviceTarget(try Device.open("sim", options: options))
      defer { sim.device.close() }
      // Steady state: the device's owner-watch thread sets up the new
      // owners' pidfds (and allocates) just after the open.
      usleep(20_000)
      let v = perCommand(10_000, process) { try sim.nop() }
      report.figures.append(
        Figure(
          "efficiency", "heap allocations per NOP (whole process, sim: client + device thread)", unit: "allocations",
          v, lowerIsBetter: true, note: "target 0"))
    } catch { report.problems.append("sim allocation count: \(error)") }
  }

  // MARK: Two clients

  /// Starts `count` copies of this executable in an internal mode, talking
  /// over pipes (its stdout read as lines, its stdin written). Each is added
  /// to `children` as it starts, so the caller's cleanup also stops those
  /// started before a failure.
  func startHelpers(
    _ count: Int, _ arguments: [String], into children: inout [(Process, LineReader, FileHandle)]
  ) throws {
    for _ in 0..<count {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: selfExecutable)
      p.arguments = arguments
      let input = Pipe()
      let output = Pipe()
      p.standardInput = input
      p.standardOutput = output
      try p.run()
      children.append((p, LineReader(fd: output.fileHandleForReading.fileDescriptor), input.fileHandleForWriting))
    }
  }

  /// Runs `_client` twice at once, each case started together in both.
  func twoClients(_ target: String) throws -> [ClientResult] {
    var children: [(Process, LineReader, FileHandle)] = []
    defer {
      for (p, _, input) in children {
        try? input.close()
        stop(p)
      }
    }
    try startHelpers(2, ["_client", target] + (options.quick ? ["--quick"] : []), into: &children)
    var results: [ClientResult] = []
    while results.count < 2 {
      var lines: [String] = []
      for (_, reader, _) in children {
        guard let line = reader.next() else { throw BenchError("a client process of \(target) exited early") }
        lines.append(line)
      }
      if lines.allSatisfy({ $0.hasPrefix("result ") }) {
        results = try lines.map { try JSONDecoder().decode(ClientResult.self, from: Data($0.dropFirst(7).utf8)) }
        for (_, _, input) in children { input.write(Data("done\n".utf8)) }
        break
      }
      guard lines.allSatisfy({ $0.hasPrefix("ready ") }) else { throw BenchError("clients out of step: \(lines)") }
      progress.detail(String(lines[0].dropFirst(6)))
      for (_, _, input) in children { input.write(Data("go\n".utf8)) }
    }
    for (p, _, _) in children { stop(p, signal: 0) }
    return results
  }

  func addTwoClientFigures(
    _ ours: [ClientResult]?, _ theirs: [ClientResult]?, single: (LatencySummary?, Double?, Double?, Double?),
    copies: Cases.Copies?
  ) {
    func merged(_ r: [ClientResult]?) -> LatencySummary? {
      guard let r, r.count == 2, let a = r[0].nop, let b = r[1].nop else { return nil }
      return LatencySummary.merged(a, b)
    }
    func sum(_ r: [ClientResult]?, _ key: KeyPath<ClientResult, Double?>) -> Double? {
      guard let r, r.count == 2, let a = r[0][keyPath: key], let b = r[1][keyPath: key] else { return nil }
      return a + b
    }
    let nop = merged(ours)
    let socketNop = merged(theirs)
    if let nop { report.latency["vGPU NOP, 2 clients"] = nop.cdf }
    if let socketNop { report.latency["socket RPC NOP, 2 clients"] = socketNop.cdf }
    for (label, key) in [("p50", \LatencySummary.p50), ("p99", \.p99), ("p99.9", \.p999)] {
      report.figures.append(
        Figure(
          "two clients", "NOP round trip \(label), 2 clients (worse one)", unit: "ns", nop?[keyPath: key],
          lowerIsBetter: true
        )
        .against("socket RPC, 2 clients", socketNop?[keyPath: key])
        .against("vGPU, 1 client", single.0?[keyPath: key]))
    }
    let rows: [(String, KeyPath<ClientResult, Double?>, Double?, String)] = [
      ("NOPs, 32 a doorbell, 2 clients (sum)", \.batched, single.1, "ops/s"),
      ("launches, 2 clients (sum)", \.launch, single.2, "ops/s"),
      ("alloc + free pairs, 2 clients (sum)", \.allocFree, single.3, "ops/s"),
      (
        "H2D \(sizeText(Cases.twoClientCopySize)), 2 clients (sum)", \.h2d,
        copies?.h2d.first { $0.bytes == Cases.twoClientCopySize }?.gbPerSecond, "GB/s"
      ),
      (
        "D2H \(sizeText(Cases.twoClientCopySize)), 2 clients (sum)", \.d2h,
        copies?.d2h.first { $0.bytes == Cases.twoClientCopySize }?.gbPerSecond, "GB/s"
      ),
    ]
    for (name, key, one, unit) in rows {
      report.figures.append(
        Figure("two clients", name, unit: unit, sum(ours, key), lowerIsBetter: false)
          .against("socket RPC, 2 clients", sum(theirs, key))
          .against("vGPU, 1 client", one))
    }
  }
}
