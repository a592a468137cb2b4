import ArgumentParser
import BenchKit
import Foundation
import PTX

#if canImport(Glibc)
  import Glibc
#endif

struct VGPUBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vgpu-bench",
    abstract: "Measure the vGPU's data path against its ceilings and against socket-based API remoting.",
    discussion: """
      Usually run as `tools/bench` (a release build, then this, writing docs/bench/).

      Starts a vgpu-mediator on a fresh /dev/shm file and a socket RPC server \
      (rCUDA/GVirtuS-style API remoting: the same commands as request/response over \
      a Unix socket, executed on the same reference device), then measures, all in \
      one run:

        ceilings     two-process cache-line ping-pong over /dev/shm; a raw SPSC ring \
      of 64-byte slots (batches of 32 and of 1); single-thread memcpy
        round trip   NOP p50 / p99 / p99.9: vGPU, ping-pong, socket RPC
        rates        NOPs 32 a doorbell; launches; alloc + free
        bandwidth    H2D, D2H, D2D from 4 KiB to --max-size (×4 steps), or at --sizes; \
      --only-copies measures this section alone; --only-rates measures the batched NOPs \
      against the raw ring alone (with their instructions per NOP)
        efficiency   heap allocations per command (a malloc counter linked in); \
      instructions per NOP (valgrind --tool=callgrind, N and 2N NOPs)
        engine       the PTX engine through the mediator: thread-instructions/s per \
      core on vector add (1M), tiled matmul (128×128) and a shuffle + barrier reduction \
      (1M), from Tests/Kernels compiled by NVRTC 12.9 in .venv (tools/setup; n/a \
      without it), checked against the CPU, vs the same PTX in-process; empty kernel \
      launch p50 / p99 vs NOPs interleaved; module load of 1 MiB and 100 MiB \
      synthetic fat binaries vs an H2D copy of as many bytes
        discovery    cuInit .. cuDeviceTotalMem_v2 through libcuda.so.1 in a fresh \
      process vs an empty C program (cc builds both)
        scale        Ollama's full discovery (CUDA and NVML) in 1, 2, 4, 8, 16 and 32 \
      processes started at once on a socket mediator (a BAR each): wall time and \
      per-process p50 / p99 vs one process alone; 1 to 64 client processes doing \
      NOPs, launches, allocations and copies back to back over one common window \
      (aggregate rate, max/min client rate, worst p50 / p99 vs one alone), on the \
      serving pool and on a thread per client; one client's NOPs beside a 64 MiB \
      copier or long kernels; the pool's levels again in an open loop, each \
      client offering 100 NOPs/s (p99 vs one client at that rate)
        two clients  the same cases with two client processes at once
        idle         CPU of an idle mediator and an idle client after a grace period

      Every figure is printed as value, baseline, ratio (value / baseline) and \
      advantage (how many times better). The machine is shared and noisy: compare \
      ratios within a run, never absolute times across runs. Progress goes to stderr.

      Writes OUT/report.json, OUT/plot.svg (and OUT/plot.png when rsvg-convert is \
      installed) and prints the table. A full run takes a few minutes; --quick takes \
      few samples and small sizes (engine: 64K elements, 64×64, 1 and 16 MiB images) \
      and skips callgrind (for tests, not for numbers).

      Exit status: 0 when every case was measured (targets met or not), 1 when \
      something could not be measured (the problems are listed), 2 on a bad command line.
      """)

  @Flag(help: "Few samples, sizes up to 1 MiB, no callgrind: checks that everything runs.")
  var quick = false

  @Option(help: "Directory for report.json and plot.svg / plot.png (created if missing).")
  var out = "docs/bench"

  @Flag(help: "Print the JSON report on stdout instead of the table.")
  var json = false

  @Option(name: .customLong("max-size"), help: "Largest copy, e.g. 1G, 256M (default 1G; 1M with --quick).")
  var maxSize: String?

  @Option(
    help: ArgumentHelp(
      "The copy sizes, comma-separated, e.g. 16K,32K,64K,128K (default: 4 KiB to --max-size in ×4 steps).",
      valueName: "list"))
  var sizes: String?

  @Option(help: "The vgpu-mediator executable (default: the one next to this one).")
  var mediator: String?

  @Option(help: "Directory holding libcuda.so.1 (default: SCRATCH/shims/CONFIG/lib above this executable).")
  var shims: String?

  @Option(
    name: .customLong("discovery-runs"),
    help: "Fresh processes per discovery figure (median; default 30, 3 with --quick).")
  var discoveryRuns: Int?

  @Flag(name: .customLong("no-callgrind"), help: "Skip the instruction counts (they take about a minute).")
  var noCallgrind = false

  @Option(
    name: .customLong("mediator-option"),
    help: ArgumentHelp(
      "An option for the mediators the suite starts, e.g. --mediator-option=--metrics-listen=:0 (repeatable); --serving-* options go to the scale section's socket mediators only (and not to its thread-per-client series).",
      valueName: "option"))
  var mediatorOptions: [String] = []

  @Flag(
    name: .customLong("only-idle"),
    help: "Measure only the idle CPU of the mediator and of a client (5 s after a 2 s grace period).")
  var onlyIdle = false

  @Flag(name: .customLong("only-engine"), help: "Measure only the engine section (PTX engine, launches, module loads).")
  var onlyEngine = false

  @Flag(
    name: .customLong("only-scale"),
    help:
      "Measure only the scale section: discovery bursts of 1 to 32 processes, then 1 to 64 client processes at once doing NOPs, launches, allocations and copies (back to back, and NOPs at a fixed rate), on a socket mediator."
  )
  var onlyScale = false

  @Flag(
    name: .customLong("only-copies"),
    help: "Measure only the bandwidth section (H2D, D2H, D2D: memcpy, vGPU and socket RPC in turn at each size).")
  var onlyCopies = false

  @Flag(
    name: .customLong("only-rates"),
    help:
      "Measure only the batched NOP rate against the raw SPSC ring (batches of 32 and of 1), and its instructions per NOP unless --no-callgrind."
  )
  var onlyRates = false

  func validate() throws {
    if let maxSize, parseSize(maxSize) == nil {
      throw ValidationError("--max-size '\(maxSize)' is not a size such as 1G, 256M or 64K")
    }
    if let sizes, parseSizes(sizes) == nil {
      throw ValidationError("--sizes '\(sizes)' is not a comma-separated list of sizes such as 16K,64K,1M")
    }
    if let discoveryRuns, discoveryRuns < 1 { throw ValidationError("--discovery-runs must be at least 1") }
    if [onlyIdle, onlyEngine, onlyScale, onlyCopies, onlyRates].filter({ $0 }).count > 1 {
      throw ValidationError(
        "--only-idle, --only-engine, --only-scale, --only-copies and --only-rates exclude each other: give one")
    }
    if let mediator, !FileManager.default.isExecutableFile(atPath: mediator) {
      throw ValidationError("--mediator \(mediator) is not an executable file: name a built vgpu-mediator")
    }
    // The suite runs the PTX engine in this process and in the mediator it starts.
    if let problem = PTXLaunchOptions.environmentProblem(ProcessInfo.processInfo.environment) {
      throw ValidationError(problem)
    }
  }

  func run() throws {
    let here = URL(fileURLWithPath: selfExecutable).deletingLastPathComponent()
    let mediatorPath = mediator ?? here.appendingPathComponent("vgpu-mediator").path
    guard FileManager.default.isExecutableFile(atPath: mediatorPath) else {
      throw BenchError(
        "no vgpu-mediator at \(mediatorPath): build it (swift build -c release --product vgpu-mediator) or pass --mediator"
      )
    }
    // The report's folder, made now: a folder that cannot be made fails before minutes of measuring.
    do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
      throw BenchError("cannot create --out \(out) (\(error.localizedDescription)); name a folder that can be written")
    }
    let options = SuiteOptions(
      quick: quick, maxSize: maxSize.flatMap(parseSize) ?? (quick ? 1 << 20 : 1 << 30), mediator: mediatorPath,
      shims: shims ?? findShims(from: here), callgrind: !quick && !noCallgrind,
      discoveryRuns: discoveryRuns ?? (quick ? 3 : 30), mediatorOptions: mediatorOptions, onlyIdle: onlyIdle,
      onlyEngine: onlyEngine, onlyScale: onlyScale, onlyCopies: onlyCopies, onlyRates: onlyRates,
      copySizes: sizes.flatMap(parseSizes))
    let report = try Suite(options).run()

    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    let jsonPath = out + "/report.json"
    let svgPath = out + "/plot.svg"
    try report.json().write(to: URL(fileURLWithPath: jsonPath))
    try Plot.svg(report).write(toFile: svgPath, atomically: true, encoding: .utf8)
    var written = [jsonPath, svgPath]
    if let rsvg = ["/usr/bin/rsvg-convert", "/usr/local/bin/rsvg-convert"].first(where: {
      FileManager.default.isExecutableFile(atPath: $0)
    }) {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: rsvg)
      p.arguments = ["-o", out + "/plot.png", svgPath]
      try p.run()
      p.waitUntilExit()
      if p.terminationStatus == 0 { written.append(out + "/plot.png") }
    }
    if json {
      FileHandle.standardOutput.write(try report.json())
      print()
    } else {
      print(report.text)
    }
    FileHandle.standardError.write(Data("wrote \(written.joined(separator: ", "))\n".utf8))
    if !report.problems.isEmpty { throw ExitCode(1) }
  }

  /// SCRATCH/shims/CONFIG/lib for the scratch directory this executable was built in.
  func findShims(from here: URL) -> String? {
    var dir = here
    while dir.path != "/" {
      let candidate = dir.appendingPathComponent("shims/\(buildKind)/lib")
      if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("libcuda.so.1").path) {
        return candidate.path
      }
      dir.deleteLastPathComponent()
    }
    return nil
  }
}

/// `1G`, `256M`, `64K` or a byte count; nil for anything else, zero, negative or past Int.
func parseSize(_ s: String) -> Int? {
  let units: [Character: Int] = ["K": 10, "M": 20, "G": 30]
  if let last = s.uppercased().last, let shift = units[last], let n = Int(s.dropLast()), n > 0 {
    return n <= Int.max >> shift ? n << shift : nil
  }
  return Int(s).flatMap { $0 > 0 ? $0 : nil }
}

/// `16K,64K,1M`: sizes as `parseSize` reads them, sorted; nil if any is not one.
func parseSizes(_ s: String) -> [Int]? {
  let sizes = s.split(separator: ",", omittingEmptySubsequences: false).map { parseSize(String($0)) }
  guard !sizes.isEmpty, sizes.allSatisfy({ $0 != nil }) else { return nil }
  return sizes.compactMap { $0 }.sorted()
}

// Internal modes (helper processes the suite starts) bypass the parser.
if CommandLine.arguments.count > 1, CommandLine.arguments[1].hasPrefix("_") {
  exit(Modes.run(Array(CommandLine.arguments.dropFirst())))
}
// As pcitool and vgpu-mediator: an error is one line on stderr; exit 1 when
// the run failed, 2 for a wrong command line (not ArgumentParser's 64 and usage block).
do {
  var command = try VGPUBench.parseAsRoot()
  try command.run()
} catch let code as ExitCode {
  exit(code.rawValue)
} catch {
  let code = VGPUBench.exitCode(for: error)
  if code == .success {
    print(VGPUBench.fullMessage(for: error))
    exit(0)
  }
  let usage = code == .validationFailure
  let line = (VGPUBench.message(for: error) + (usage ? " (see 'vgpu-bench --help')" : ""))
    .split(separator: "\n").joined(separator: "; ")
  FileHandle.standardError.write(Data("vgpu-bench: \(line)\n".utf8))
  exit(usage ? 2 : 1)
}
