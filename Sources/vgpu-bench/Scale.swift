import BenchKit
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

extension Suite {
  // MARK: Scale

  /// Ollama's discovery in full (gpu_info_cuda.c, then gpu-discover's NVML):
  /// cuInit .. cuCtxCreate_v3, cuMemGetInfo_v2, cuCtxDestroy, then
  /// nvmlInit_v2 .. nvmlDeviceGetMemoryInfo, nvmlShutdown. argv[1]: a file to
  /// append main()-to-done nanoseconds to (one short write: O_APPEND keeps
  /// concurrent lines whole). Exit 0 only if both reported nonzero memory.
  static let fullDiscoveryProgram = """
    #include <dlfcn.h>
    #include <fcntl.h>
    #include <stdio.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    typedef struct { unsigned long long total, free, used; } nvml_memory;
    static unsigned long long ns(void) {
      struct timespec t;
      clock_gettime(CLOCK_MONOTONIC, &t);
      return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
    }
    #define NEED(h, type, name) __typeof__(type) name = (__typeof__(type))dlsym(h, #name); if (!name) return 3
    int main(int argc, char **argv) {
      unsigned long long t0 = ns();
      void *cu = dlopen("libcuda.so.1", RTLD_NOW), *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW);
      if (!cu || !nv) { fprintf(stderr, "%s\\n", dlerror()); return 2; }
      NEED(cu, int (*)(unsigned), cuInit);
      NEED(cu, int (*)(int *), cuDeviceGetCount);
      NEED(cu, int (*)(int *, int), cuDeviceGet);
      NEED(cu, int (*)(int *, int, int), cuDeviceGetAttribute);
      NEED(cu, int (*)(char *, int, int), cuDeviceGetName);
      NEED(cu, int (*)(size_t *, int), cuDeviceTotalMem_v2);
      NEED(cu, int (*)(void **, void *, int, unsigned, int), cuCtxCreate_v3);
      NEED(cu, int (*)(size_t *, size_t *), cuMemGetInfo_v2);
      NEED(cu, int (*)(void *), cuCtxDestroy);
      NEED(nv, int (*)(void), nvmlInit_v2);
      NEED(nv, int (*)(unsigned *), nvmlDeviceGetCount_v2);
      NEED(nv, int (*)(unsigned, void **), nvmlDeviceGetHandleByIndex_v2);
      NEED(nv, int (*)(void *, nvml_memory *), nvmlDeviceGetMemoryInfo);
      NEED(nv, int (*)(void), nvmlShutdown);
      int n = 0, dev = 0, major = 0, minor = 0;
      char name[128];
      size_t total = 0, free = 0, total2 = 0;
      void *ctx = 0;
      if (cuInit(0) || cuDeviceGetCount(&n) || n < 1 || cuDeviceGet(&dev, 0)) return 4;
      if (cuDeviceGetAttribute(&major, 75, dev) || cuDeviceGetAttribute(&minor, 76, dev)) return 5;
      if (cuDeviceGetName(name, sizeof name, dev) || cuDeviceTotalMem_v2(&total, dev) || total == 0) return 6;
      if (cuCtxCreate_v3(&ctx, 0, 0, 0, dev) || cuMemGetInfo_v2(&free, &total2) || total2 == 0) return 7;
      if (cuCtxDestroy(ctx)) return 8;
      unsigned count = 0;
      void *handle = 0;
      nvml_memory memory = {0, 0, 0};
      if (nvmlInit_v2() || nvmlDeviceGetCount_v2(&count) || count < 1) return 9;
      if (nvmlDeviceGetHandleByIndex_v2(0, &handle) || nvmlDeviceGetMemoryInfo(handle, &memory) || memory.total == 0) return 10;
      if (nvmlShutdown()) return 11;
      unsigned long long t1 = ns();
      if (argc > 1) {
        char line[32];
        int len = snprintf(line, sizeof line, "%llu\\n", t1 - t0);
        int f = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (f >= 0) { if (write(f, line, (size_t)len) != len) return 12; close(f); }
      }
      return 0;
    }
    """

  /// The concurrency levels of the scale section.
  var scaleLevels: [Int] { options.quick ? [1, 2, 4] : [1, 2, 4, 8, 16, 32] }

  /// Ollama-style discovery bursts against a mediator serving host processes
  /// on its socket (a BAR each): 1, 2, 4 … 32 processes started at once, wall
  /// time until all have exited and each one's main()-to-done time, against
  /// one process alone in the same run.
  func measureScale() {
    let group = "scale"
    let levels = scaleLevels
    func missing(_ why: String) {
      // Every case the section would have measured, as n/a with the reason.
      for n in levels.dropFirst() {
        for name in [
          "\(n) discovery processes at once: wall", "\(n) at once: per-process discovery p50",
          "\(n) at once: per-process discovery p99",
        ] {
          report.figures.append(Figure(group, name, unit: "ms", nil, lowerIsBetter: true, note: why))
        }
      }
      report.problems.append("scale: \(why)")
    }
    guard let shims = options.shims, FileManager.default.fileExists(atPath: shims + "/libnvidia-ml.so.1") else {
      missing("the shims were not found: build them with tools/build-shims release, or pass --shims DIR")
      return
    }
    let dir = NSTemporaryDirectory() + "vgpu-bench-scale-\(getpid())"
    let socket = "/dev/shm/vgpu-bench-scale-\(getpid()).sock"
    defer {
      try? FileManager.default.removeItem(atPath: dir)
      unlink(socket)
    }
    let program = dir + "/discover"
    let mediator: Process
    do {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      try Self.fullDiscoveryProgram.write(toFile: program + ".c", atomically: true, encoding: .utf8)
      let status = try runWait(["/usr/bin/env", "cc", "-O2", "-o", program, program + ".c", "-ldl"], environment: nil)
      guard status == 0 else { throw BenchError("cc failed on \(program).c (status \(status))") }
      mediator = try startSocketMediator(socket)
    } catch {
      missing("\(error)")
      return
    }
    defer { stop(mediator) }
    var environment = ProcessInfo.processInfo.environment
    environment["LD_LIBRARY_PATH"] = shims
    environment["VGPU_DEVICE"] = "unix:\(socket)"
    let env = environment.map { "\($0.key)=\($0.value)" }
    // Rounds per level: at least 32 processes' worth, to give the one-process figures a median.
    let quick = options.quick
    let rounds = { (n: Int) in quick ? 1 : max(3, 32 / n) }
    // `n` processes at once, rounds(n) times: the median wall time and every process's own time.
    func bursts(_ n: Int, _ env: [String], _ tag: String) throws -> (wall: Double, times: [Double]) {
      let times = dir + "/times-\(tag)-\(n)"
      var walls: [Double] = []
      for _ in 0..<rounds(n) {
        walls.append(try spawnTimed(Array(repeating: [program, times], count: n), env))
      }
      let each = ((try? String(contentsOfFile: times, encoding: .utf8)) ?? "").split(separator: "\n")
        .compactMap { Double($0) }
      guard each.count == n * rounds(n) else {
        throw BenchError("\(n) at once: \(each.count) of \(n * rounds(n)) processes reported a time")
      }
      return (median(walls), each)
    }
    var wall: [Int: Double] = [:]
    var each: [Int: [Double]] = [:]
    // A VM's case: one BAR of 8 pairs for all (the suite's --shared-bar mediator), so that
    // most of the crowd waits for a pair; a generous deadline for that wait.
    let crowd = levels.last!
    var vm: (wall: Double, times: [Double])?
    do {
      for n in levels {
        progress.detail("\(n) at once, \(rounds(n)) rounds")
        let b = try bursts(n, env, "socket")
        wall[n] = b.wall
        each[n] = b.times
      }
      progress.detail("\(crowd) at once on one 8-pair BAR, \(rounds(crowd)) rounds")
      environment["VGPU_DEVICE"] = "shm:\(barPath)"
      environment["VGPU_TIMEOUT"] = "60"
      vm = try bursts(crowd, environment.map { "\($0.key)=\($0.value)" }, "shared")
    } catch {
      missing("\(error)")
      return
    }
    let alone = each[1] ?? []
    let oneWall = (wall[1] ?? 0) / 1e6
    report.figures.append(
      Figure(
        group, "1 discovery process alone: wall", unit: "ms", oneWall, lowerIsBetter: true,
        note:
          "median of \(rounds(1)) runs, spawn to exit; in-process p50 \(ms(median(alone))), p99 \(ms(percentile(alone, 0.99)))"
      ))
    for n in levels.dropFirst() {
      let times = each[n] ?? []
      report.figures.append(
        Figure(
          group, "\(n) discovery processes at once: wall", unit: "ms", (wall[n] ?? 0) / 1e6, lowerIsBetter: true,
          note: "median of \(rounds(n)) bursts, spawn of the first to exit of the last"
        )
        .against("1 process alone: wall", oneWall)
        .against("\(n) × 1 process alone: wall (one after another)", Double(n) * oneWall))
      report.figures.append(
        Figure(group, "\(n) at once: per-process discovery p50", unit: "ms", median(times) / 1e6, lowerIsBetter: true)
          .against("1 process alone: discovery p50", median(alone) / 1e6))
      report.figures.append(
        Figure(
          group, "\(n) at once: per-process discovery p99", unit: "ms", percentile(times, 0.99) / 1e6,
          lowerIsBetter: true
        )
        .against("1 process alone: discovery p99", percentile(alone, 0.99) / 1e6))
    }
    if let vm {
      let note =
        crowd > 8
        ? "the suite's --shared-bar mediator, --queue-pairs 8: \(crowd - 8) or more wait for a pair"
        : "the suite's --shared-bar mediator, --queue-pairs 8"
      report.figures.append(
        Figure(
          group, "\(crowd) at once on a VM's one 8-pair BAR: wall", unit: "ms", vm.wall / 1e6, lowerIsBetter: true,
          note: note
        )
        .against("\(crowd) at once, a BAR each (socket): wall", (wall[crowd] ?? 0) / 1e6))
      report.figures.append(
        Figure(
          group, "\(crowd) at once on a VM's one 8-pair BAR: per-process p50", unit: "ms", median(vm.times) / 1e6,
          lowerIsBetter: true
        )
        .against("\(crowd) at once, a BAR each: per-process p50", median(each[crowd] ?? []) / 1e6))
    }
  }

  func ms(_ ns: Double) -> String { String(format: "%.2f ms", ns / 1e6) }

  /// A mediator serving host processes on `socket`, each with a BAR of its own.
  func startSocketMediator(_ socket: String, _ extra: [String] = []) throws -> Process {
    unlink(socket)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: options.mediator)
    // A thread per client (the mediator before its serving pool) has no pool to give a priority.
    let given =
      extra.contains("--serving-threads=0")
      ? options.mediatorOptions.filter { !$0.hasPrefix("--serving-priority") } : options.mediatorOptions
    return try launchMediator(["--socket", socket] + given + extra, serving: socket) { _ in access(socket, F_OK) == 0 }
  }

  /// A mediator with `arguments` (and 16 GB of device memory, warnings
  /// only), once `ready` says it serves `what`; stopped when it does not within 10 s.
  func launchMediator(_ arguments: [String], serving what: String, ready: (Process) -> Bool) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: options.mediator)
    p.arguments = arguments + ["--memory", "16G", "--log-level", "warning"]
    p.standardOutput = FileHandle.nullDevice
    do { try p.run() } catch {
      throw BenchError("cannot start the mediator \(options.mediator): \(error) (build it: swift build -c release)")
    }
    let deadline = now() + 10_000_000_000
    while now() < deadline {
      if ready(p) { return p }
      guard p.isRunning else { break }
      usleep(5_000)
    }
    stop(p)
    throw BenchError("the mediator (\(arguments.joined(separator: " "))) did not come up on \(what) within 10 s")
  }

  /// The `q` quantile (0...1) of `values`, nearest rank.
  func percentile(_ values: [Double], _ q: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((q * Double(sorted.count)).rounded(.up)) - 1)]
  }
}
