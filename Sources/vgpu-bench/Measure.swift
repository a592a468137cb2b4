import BenchKit
import Foundation
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

extension Suite {
  // MARK: Discovery

  static let emptyProgram = "int main(void) { return 0; }\n"

  /// Ollama's way in: dlopen libcuda.so.1, then cuInit .. cuDeviceTotalMem_v2.
  /// argv[1]: a file to append the in-process time (ns) to.
  static let discoveryProgram = """
    #include <dlfcn.h>
    #include <stdio.h>
    #include <stddef.h>
    #include <time.h>
    typedef int (*init_t)(unsigned);
    typedef int (*count_t)(int *);
    typedef int (*get_t)(int *, int);
    typedef int (*mem_t)(size_t *, int);
    static unsigned long long ns(void) {
      struct timespec t;
      clock_gettime(CLOCK_MONOTONIC, &t);
      return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
    }
    int main(int argc, char **argv) {
      unsigned long long t0 = ns();
      void *h = dlopen("libcuda.so.1", RTLD_NOW);
      if (!h) { fprintf(stderr, "%s\\n", dlerror()); return 2; }
      init_t cuInit = (init_t)dlsym(h, "cuInit");
      count_t cuDeviceGetCount = (count_t)dlsym(h, "cuDeviceGetCount");
      get_t cuDeviceGet = (get_t)dlsym(h, "cuDeviceGet");
      mem_t cuDeviceTotalMem = (mem_t)dlsym(h, "cuDeviceTotalMem_v2");
      if (!cuInit || !cuDeviceGetCount || !cuDeviceGet || !cuDeviceTotalMem) return 3;
      int n = 0, dev = 0;
      size_t total = 0;
      if (cuInit(0) != 0) return 4;
      if (cuDeviceGetCount(&n) != 0 || n < 1) return 5;
      if (cuDeviceGet(&dev, 0) != 0) return 6;
      if (cuDeviceTotalMem(&total, dev) != 0 || total == 0) return 7;
      unsigned long long t1 = ns();
      if (argc > 1) {
        FILE *f = fopen(argv[1], "a");
        if (f) { fprintf(f, "%llu\\n", t1 - t0); fclose(f); }
      }
      return 0;
    }
    """

  func measureDiscovery() {
    let group = "discovery"
    func missing(_ why: String) {
      report.figures.append(
        Figure(group, "discovery beyond empty program start-up", unit: "ms", nil, lowerIsBetter: true, note: why))
      report.figures.append(
        Figure(
          group, "discovery beyond empty program, 2 processes at once", unit: "ms", nil, lowerIsBetter: true, note: why)
      )
    }
    guard let shims = options.shims, FileManager.default.fileExists(atPath: shims + "/libcuda.so.1") else {
      missing("libcuda.so.1 not found: build it with tools/build-shims release, or pass --shims DIR")
      report.problems.append("discovery: libcuda.so.1 not found (tools/build-shims release)")
      return
    }
    let dir = NSTemporaryDirectory() + "vgpu-bench-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let empty = dir + "/empty"
    let discover = dir + "/discover"
    let times = dir + "/times"
    do {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      try Self.emptyProgram.write(toFile: empty + ".c", atomically: true, encoding: .utf8)
      try Self.discoveryProgram.write(toFile: discover + ".c", atomically: true, encoding: .utf8)
      for p in [empty, discover] {
        let status = try runWait(["/usr/bin/env", "cc", "-O2", "-o", p, p + ".c", "-ldl"], environment: nil)
        guard status == 0 else {
          throw BenchError("cc failed on \(p).c (status \(status)); is a C compiler installed?")
        }
      }
    } catch {
      missing("\(error)")
      report.problems.append("discovery: \(error)")
      return
    }
    var environment = ProcessInfo.processInfo.environment
    environment["LD_LIBRARY_PATH"] = shims
    environment["VGPU_DEVICE"] = "shm:\(barPath)"
    let env = environment.map { "\($0.key)=\($0.value)" }
    var emptyOne: [Double] = []
    var discoverOne: [Double] = []
    var emptyTwo: [Double] = []
    var discoverTwo: [Double] = []
    do {
      for i in 0..<options.discoveryRuns {
        if i % 10 == 0 { progress.detail("run \(i + 1) of \(options.discoveryRuns)") }
        emptyOne.append(try spawnTimed([[empty]], env))
        discoverOne.append(try spawnTimed([[discover, times]], env))
        try waitForFreeQueuePairs()
        emptyTwo.append(try spawnTimed([[empty], [empty]], env))
        discoverTwo.append(try spawnTimed([[discover], [discover]], env))
        try waitForFreeQueuePairs()
      }
    } catch {
      missing("\(error)")
      report.problems.append("discovery: \(error)")
      return
    }
    let inProcess = ((try? String(contentsOfFile: times, encoding: .utf8)) ?? "").split(separator: "\n")
      .compactMap { Double($0) }
    let e1 = median(emptyOne)
    let d1 = median(discoverOne)
    let e2 = median(emptyTwo)
    let d2 = median(discoverTwo)
    let runs = "median of \(options.discoveryRuns) runs, fork+exec to exit"
    report.figures.append(
      Figure(
        group, "fresh process: cuInit .. cuDeviceTotalMem_v2", unit: "ms", d1 / 1e6, lowerIsBetter: true, note: runs
      )
      .against("empty C program, same spawn", e1 / 1e6))
    report.figures.append(
      Figure(
        group, "discovery beyond empty program start-up", unit: "ms", (d1 - e1) / 1e6, lowerIsBetter: true,
        note:
          "target < 5 ms; in-process dlopen..cuDeviceTotalMem_v2 median \(String(format: "%.2f", median(inProcess) / 1e6)) ms"
      ))
    report.figures.append(
      Figure(group, "2 processes at once: both discovered", unit: "ms", d2 / 1e6, lowerIsBetter: true, note: runs)
        .against("2 empty C programs at once", e2 / 1e6))
    report.figures.append(
      Figure(
        group, "discovery beyond empty program, 2 processes at once", unit: "ms", (d2 - e2) / 1e6, lowerIsBetter: true))
  }

  /// Starts every command at once and waits for all; wall nanoseconds. Fails on a nonzero exit.
  func spawnTimed(_ commands: [[String]], _ env: [String]) throws -> Double {
    let t0 = now()
    var pids: [pid_t] = []
    for argv in commands {
      var pid = pid_t()
      let rc = withCStrings(argv) { a in withCStrings(env) { e in posix_spawn(&pid, argv[0], nil, nil, a, e) } }
      guard rc == 0 else { throw BenchError("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
      pids.append(pid)
    }
    for (i, pid) in pids.enumerated() {
      var status: Int32 = 0
      while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
      let code = (status >> 8) & 0xff
      guard status & 0x7f == 0 && code == 0 else {
        throw BenchError(
          "\(commands[i][0]) failed (wait status \(status)): the discovery program could not discover the vGPU")
      }
    }
    return Double(now() - t0)
  }

  func runWait(_ argv: [String], environment: [String]?, quiet: Bool = false) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    if quiet {
      p.standardOutput = FileHandle.nullDevice
      p.standardError = FileHandle.nullDevice
    }
    try p.run()
    p.waitUntilExit()
    return p.terminationStatus
  }

  /// The shim's process holds a queue pair until the mediator sees it exit
  /// (within its reap interval): wait, so that later runs find pairs free.
  func waitForFreeQueuePairs() throws {
    var st = stat()
    guard stat(barPath, &st) == 0 else { throw BenchError("cannot stat \(barPath)") }
    let bar = try SharedFile(path: barPath, size: Int(st.st_size), create: false)
    defer { bar.unmap() }
    let layout = try BARLayout(reading: RegisterBlock(bar.base), size: bar.size)
    let deadline = now() + 5_000_000_000
    while now() < deadline {
      let busy = (0..<Int(layout.queuePairs)).contains {
        QueuePairView(base: bar.base, layout: layout, index: $0).state != QueuePairState.free.rawValue
      }
      if !busy { return }
      usleep(5_000)
    }
    throw BenchError("the mediator did not reclaim the queue pairs of exited discovery processes within 5 s")
  }

  // MARK: Instructions (callgrind)

  func measureInstructions(_ spec: String) {
    let group = "efficiency"
    let names = [
      "instructions per NOP, client (shm, 1 a doorbell)", "instructions per NOP, client (shm, 32 a doorbell)",
      "instructions per NOP, device (1 a pass)", "instructions per NOP, device (32 a pass)",
    ]
    let valgrind = ["/usr/bin/valgrind", "/usr/local/bin/valgrind"].first {
      FileManager.default.isExecutableFile(atPath: $0)
    }
    guard options.callgrind, let valgrind else {
      let why =
        valgrind == nil
        ? "valgrind not installed (apt-get install valgrind)" : "not measured (--quick or --no-callgrind)"
      for n in names {
        report.figures.append(Figure(group, n, unit: "instructions", nil, lowerIsBetter: true, note: why))
      }
      return
    }
    let out = NSTemporaryDirectory() + "vgpu-bench-callgrind-\(getpid()).out"
    defer { unlink(out) }
    // Valgrind 3.19 cannot read the DWARF 5 that Swift's clang writes: run a copy
    // without debug information (symbols stay, so callgrind_annotate still names functions).
    let stripped = NSTemporaryDirectory() + "vgpu-bench-stripped-\(getpid())"
    defer { unlink(stripped) }
    let objcopy =
      (try? runWait(["/usr/bin/objcopy", "--strip-debug", selfExecutable, stripped], environment: nil)) ?? -1
    let executable = objcopy == 0 ? stripped : selfExecutable
    /// Instructions of one run of `args` under callgrind (all threads of the process).
    func instructions(_ args: [String]) throws -> Double {
      unlink(out)
      let status = try runWait(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=\(out)", executable] + args, environment: nil, quiet: true)
      guard status == 0 else {
        throw BenchError("callgrind run of \(args.joined(separator: " ")) exited with \(status)")
      }
      let text = try String(contentsOfFile: out, encoding: .utf8)
      guard
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("summary:") || $0.hasPrefix("totals:") }),
        let v = Double(line.split(separator: " ").last ?? "")
      else { throw BenchError("no instruction total in \(out)") }
      return v
    }
    let n = 5_000
    let runs: [[String]] = [
      ["_nops", spec, "*", "1"], ["_nops", spec, "*", "32"], ["_direct-nops", "*", "1"], ["_direct-nops", "*", "32"],
    ]
    for (name, args) in zip(names, runs) {
      progress.detail(name)
      // The difference of N and 2N NOPs: start-up and warm-up cancel out.
      let v = measured("callgrind: \(name)") {
        let one = try instructions(args.map { $0 == "*" ? "\(n)" : $0 })
        let two = try instructions(args.map { $0 == "*" ? "\(2 * n)" : $0 })
        return (two - one) / Double(n)
      }
      report.figures.append(
        Figure(
          group, name, unit: "instructions", v, lowerIsBetter: true,
          note: name.contains("client")
            ? "callgrind, (Ir(2N) - Ir(N)) / N, N = \(n), against the running mediator; includes the polls while waiting"
            : "callgrind, (Ir(2N) - Ir(N)) / N, N = \(n); reference device driven single-threaded (DirectQueue)"))
    }
  }

  // MARK: Idle CPU

  func measureIdle(_ spec: String) {
    let grace: UInt32 = options.quick ? 500_000 : 2_000_000
    let window: Double = options.quick ? 0.5 : 5
    let client = Process()
    let out = Pipe()
    let input = Pipe()
    client.executableURL = URL(fileURLWithPath: selfExecutable)
    client.arguments = ["_idle", spec]
    client.standardOutput = out
    client.standardInput = input
    defer {
      try? input.fileHandleForWriting.close()
      stop(client, signal: 0)
    }
    do {
      try client.run()
      guard LineReader(fd: out.fileHandleForReading.fileDescriptor).next() == "ready" else {
        throw BenchError("the idle client did not start")
      }
    } catch {
      report.problems.append("idle: \(error)")
      return
    }
    usleep(grace)
    let pids: [(String, Int32)] = [
      ("mediator", mediator?.processIdentifier ?? 0), ("client (device open, no calls)", client.processIdentifier),
    ]
    let before = pids.map { cpu($0.1) }
    usleep(UInt32(window * 1e6))
    let after = pids.map { cpu($0.1) }
    for (i, (name, _)) in pids.enumerated() {
      let ns = Double(after[i].ns - before[i].ns)
      let ticks = after[i].ticks - before[i].ticks
      report.figures.append(
        Figure(
          "idle", "idle \(name): CPU", unit: "%", ns / (window * 1e9) * 100, lowerIsBetter: true,
          note:
            "\(String(format: "%.2f", ns / 1e6)) ms on CPU, \(ticks) clock ticks in \(String(format: "%g", window)) s after a \(grace / 1000) ms grace period"
        ))
    }
  }

  /// CPU time of every thread (/proc/PID/task/*/schedstat, ns) and clock ticks (/proc/PID/stat).
  func cpu(_ pid: Int32) -> (ns: UInt64, ticks: Int) {
    var ns: UInt64 = 0
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    for t in tasks {
      if let s = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/schedstat", encoding: .utf8),
        let first = s.split(separator: " ").first, let v = UInt64(first)
      {
        ns += v
      }
    }
    var ticks = 0
    if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")")
    {
      let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
      ticks = (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
    }
    return (ns, ticks)
  }

  // MARK: Targets

  func checkTargets() {
    func fig(_ name: String) -> Figure? { report.figure(name) }
    func cmp(_ name: String, _ i: Int) -> Comparison? {
      guard let f = fig(name), f.comparisons.count > i else { return nil }
      return f.comparisons[i]
    }
    func x(_ v: Double?) -> String { v.map { String(format: "%.3g×", $0) } ?? "n/a" }

    let p50 = cmp("NOP round trip p50", 0)
    let p99 = cmp("NOP round trip p99", 0)
    let p999 = cmp("NOP round trip p99.9", 0)
    report.targets.append(
      TargetCheck(
        target: "NOP round trip within 2× the raw ping-pong",
        measured: "p50 \(x(p50?.ratio)), p99 \(x(p99?.ratio)), p99.9 \(x(p999?.ratio)) of the ping-pong's",
        met: p50?.ratio.map { $0 <= 2 }))
    let s50 = cmp("NOP round trip p50", 1)
    report.targets.append(
      TargetCheck(
        target: "NOP round trip at least 50× faster than the socket RPC",
        measured: "p50 \(x(s50?.advantage)) faster, p99 \(x(cmp("NOP round trip p99", 1)?.advantage))",
        met: s50?.advantage.map { $0 >= 50 }))
    let ring = cmp("NOPs, \(Cases.batch) a doorbell", 0)
    report.targets.append(
      TargetCheck(
        target: "batched command rate at least 30% of the raw ring",
        measured:
          "\(ring?.ratio.map { String(format: "%.1f%%", $0 * 100) } ?? "n/a") of the ring (batches of \(Cases.batch))",
        met: ring?.ratio.map { $0 >= 0.3 }))
    let big = sizes.filter { $0 >= 64 << 20 }
    var memcpyRatios: [String] = []
    var socketRatios: [String] = []
    var memcpyMet: Bool? = big.isEmpty ? nil : true
    var socketMet: Bool? = big.isEmpty ? nil : true
    for kind in ["H2D", "D2H"] {
      for size in big {
        let name = "\(kind) \(sizeText(size))"
        let m = cmp(name, 0)?.ratio
        let s = cmp(name, 1)?.ratio
        memcpyRatios.append("\(name) \(m.map { String(format: "%.0f%%", $0 * 100) } ?? "n/a")")
        socketRatios.append("\(name) \(x(s))")
        if (m ?? 0) < 0.8 { memcpyMet = false }
        if (s ?? 0) < 2 { socketMet = false }
      }
    }
    report.targets.append(
      TargetCheck(
        target: "H2D and D2H at least 80% of single-thread memcpy from 64 MiB up",
        measured: big.isEmpty ? "no size ≥ 64 MiB in this run" : memcpyRatios.joined(separator: ", "), met: memcpyMet))
    report.targets.append(
      TargetCheck(
        target: "H2D and D2H at least 2× the socket RPC from 64 MiB up",
        measured: big.isEmpty ? "no size ≥ 64 MiB in this run" : socketRatios.joined(separator: ", "), met: socketMet))
    let discovery = fig("discovery beyond empty program start-up")?.value
    report.targets.append(
      TargetCheck(
        target: "discovery through libcuda.so.1 under 5 ms beyond an empty C program",
        measured: discovery.map { String(format: "%.2f ms beyond", $0) } ?? "not measured",
        met: discovery.map { $0 < 5 }))
    let allocations = report.figures.filter { $0.name.hasPrefix("heap allocations") }
    let counted = allocations.compactMap { $0.value }
    report.targets.append(
      TargetCheck(
        target: "zero heap allocations per command in steady state",
        measured: allocations.map {
          "\($0.name.replacingOccurrences(of: "heap allocations per ", with: "")): \($0.value.map { String(format: "%g", $0) } ?? "n/a")"
        }
        .joined(separator: "; "),
        met: counted.isEmpty ? nil : counted.allSatisfy { $0 == 0 }))
    let ir = report.figures.filter { $0.name.hasPrefix("instructions per NOP") }
    report.targets.append(
      TargetCheck(
        target: "instructions per NOP reported from callgrind",
        measured: ir.map {
          "\($0.name.replacingOccurrences(of: "instructions per NOP, ", with: "")): \($0.value.map { String(format: "%.0f", $0) } ?? "n/a")"
        }
        .joined(separator: "; "),
        met: ir.contains { $0.value == nil } ? nil : true))
    let idle = report.figures.filter { $0.group == "idle" }
    report.targets.append(
      TargetCheck(
        target: "an idle mediator and an idle client use no CPU after a short grace period",
        measured: idle.map {
          "\($0.name): \($0.value.map { String(format: "%.3f%%", $0) } ?? "n/a") (\($0.note ?? ""))"
        }
        .joined(separator: "; "),
        // "No CPU": under 0.1% (a wake-up per sleep slice costs microseconds).
        met: idle.isEmpty || idle.contains { $0.value == nil } ? nil : idle.allSatisfy { $0.value! < 0.1 }))
    // The issue's target names vector add and matmul; the reduction is shown beside them.
    let engine = report.figures.filter { $0.name.hasPrefix("thread-instr/s: ") && !$0.name.contains("reduce") }
    report.targets.append(
      TargetCheck(
        target:
          "PTX engine at least 2e8 thread-instructions/s on the host's cores (2) through the mediator, vector add and matmul",
        measured: engine.map {
          "\($0.name.replacingOccurrences(of: "thread-instr/s: ", with: "")): \($0.value.map { String(format: "%.3g", $0) } ?? "n/a") (per-thread engine \($0.comparisons.last?.value.map { String(format: "%.3g", $0) } ?? "n/a"))"
        }
        .joined(separator: "; "),
        met: engine.isEmpty || engine.contains { $0.value == nil }
          ? nil : engine.allSatisfy { $0.value! >= Self.engineTarget }))
    let e50 = cmp("empty kernel launch round trip p50", 0)
    let e99 = cmp("empty kernel launch round trip p99", 0)
    report.targets.append(
      TargetCheck(
        target: "empty kernel launch round trip within 3× the NOP round trip (p50)",
        measured:
          "p50 \(x(e50?.ratio)) (\(format(fig("empty kernel launch round trip p50")?.value, "ns")) vs \(format(e50?.value, "ns"))), p99 \(x(e99?.ratio)) of the interleaved NOP's; a NOP far above its usual few hundred ns means a busy machine and a meaningless ratio",
        met: e50?.ratio.map { $0 <= 3 }))
  }
}

/// `body` with `strings` as a NULL-terminated C array.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
  var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
  defer { for p in pointers { free(p) } }
  return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}
