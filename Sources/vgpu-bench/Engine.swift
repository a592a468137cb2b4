import BenchKit
import Foundation
import NVRTC
import PTX
import VGPU
import VGPUProtocol
import VGPUSimulator

#if canImport(Glibc)
  import Glibc
#endif

/// The "engine" section: the reference device's PTX engine on the project's
/// own kernels (Tests/Kernels, compiled by NVRTC 12.9 in the run), an empty
/// kernel's launch round trip, and module loads of large fat binaries, all
/// through the running vgpu-mediator and timed by this client.
extension Suite {
  /// Thread-instructions per second on the host's cores (2 here), the least the engine should do.
  static let engineTarget = 2e8

  /// `extern "C" __global__ void empty() {}` as NVRTC 12.9 writes it, for a
  /// run without NVRTC (the launch round trip does not depend on the compiler).
  static let emptyPTX = """
    .version 8.8
    .target sm_75
    .address_size 64

    .visible .entry empty()
    {
    \tret;

    }

    """

  /// The project's CUDA sources: the first Tests/Kernels above this executable or the working directory.
  func kernelSources() -> URL? {
    for start in [
      URL(fileURLWithPath: selfExecutable).deletingLastPathComponent(),
      URL(fileURLWithPath: FileManager.default.currentDirectoryPath),
    ] {
      var dir = start
      while dir.path != "/" {
        let k = dir.appendingPathComponent("Tests/Kernels")
        if FileManager.default.fileExists(atPath: k.appendingPathComponent("vector_add.cu").path) { return k }
        dir.deleteLastPathComponent()
      }
    }
    return nil
  }

  /// `file` of Tests/Kernels compiled to PTX by NVRTC.
  func compileKernel(_ file: String, _ nvrtc: Result<NVRTC, NVRTC.Failure>) throws -> String {
    let api = try nvrtc.get()
    guard let sources = kernelSources() else {
      throw BenchError("Tests/Kernels not found above \(selfExecutable) or the working directory")
    }
    let url = sources.appendingPathComponent(file)
    return try api.ptx(try String(contentsOf: url, encoding: .utf8), name: file)
  }

  /// `vgpu-bench _engine WORKLOAD THREADS LAUNCHES`: a quick-size workload (0 vector add,
  /// 1 matmul, 2 reduction) launched in this process on THREADS host threads, to profile
  /// the engine alone (callgrind, perf); prints its thread-instructions and time.
  static func engineAlone(_ args: [String]) throws {
    guard args.count == 4, let k = Int(args[1]), let threads = Int(args[2]), let launches = Int(args[3]) else {
      throw BenchError("usage: vgpu-bench _engine WORKLOAD(0-2) THREADS LAUNCHES")
    }
    let suite = Suite(
      SuiteOptions(quick: true, maxSize: 0, mediator: "", shims: nil, callgrind: false, discoveryRuns: 1))
    let workloads = suite.engineWorkloads()
    guard workloads.indices.contains(k), threads > 0 else {
      throw BenchError("WORKLOAD is 0 to \(workloads.count - 1), THREADS at least 1 (got \(k), \(threads))")
    }
    let w = workloads[k]
    let module = try PTXModule(
      source: try suite.compileKernel(w.file, Result { () throws(NVRTC.Failure) in try NVRTC.load() }))
    let local = try InProcessWorkload(w, module: module)
    var ns: UInt64 = 0
    var instructions: UInt64 = 0
    for _ in 0..<launches {
      let (t, stats) = try local.launch(hostThreads: threads)
      ns += t
      instructions += stats.instructions
    }
    guard local.output == w.expected else { throw BenchError("\(w.entry): wrong result") }
    print(
      "\(w.entry): \(instructions) thread-instructions in \(ns / 1000) µs: \(Double(instructions) / (Double(ns) / 1e9)) /s"
    )
  }

  func measureEngine(_ spec: String) {
    // Loading a 100 MiB image parses 100 MiB of PTX on the device: more than
    // the default 2 s a command may stay silent.
    var openOptions = OpenOptions.simulator()
    openOptions.timeout = .seconds(120)
    let device: Device
    do { device = try Device.open(spec, options: openOptions) } catch {
      report.problems.append("engine: cannot open \(spec): \(error)")
      return
    }
    defer { device.close() }

    let nvrtc: Result<NVRTC, NVRTC.Failure> = Result { () throws(NVRTC.Failure) in try NVRTC.load() }
    func compile(_ file: String) throws -> String { try compileKernel(file, nvrtc) }

    progress.begin("engine: PTX thread-instructions/s (vector add, tiled matmul, shuffle reduction)")
    var vectorAddPTX: String?
    for w in engineWorkloads() {
      progress.detail(w.label)
      let name = "thread-instr/s: \(w.label)"
      let ptx: String
      do { ptx = try compile(w.file) } catch {
        report.figures.append(
          Figure("engine", name, unit: "instr/s", nil, lowerIsBetter: false, note: "not measured: \(error)"))
        continue
      }
      if w.file == "vector_add.cu" { vectorAddPTX = ptx }
      do {
        let r = try runWorkload(w, ptx: ptx, device: device)
        report.figures.append(
          Figure(
            "engine", name, unit: "instr/s", r.mediated, lowerIsBetter: false,
            note:
              "target ≥ 2e8 on 2 cores; \(w.detail); \(r.instructions) thread-instructions counted in-process by PTXModule.launch (the device does not report them), divided by the client-timed launch through vgpu-mediator (median of \(r.samples)); blocks over the host's cores (\(r.hostThreads) threads in-process); \(w.file) by NVRTC 12.9, result checked against the CPU; baselines interleaved in the same run"
          )
          .against("same PTX in-process, no mediator", r.inProcess)
          .against("in-process, serial engine (issue 10: one thread, blocks in order)", r.serial)
          .against("in-process, per-thread engine over the cores (before warps in lockstep)", r.perThread))
      } catch {
        report.problems.append("engine: \(w.label): \(error)")
        report.figures.append(
          Figure("engine", name, unit: "instr/s", nil, lowerIsBetter: false, note: "not measured: \(error)"))
      }
    }

    progress.begin("engine: empty kernel launch round trip against NOPs (interleaved)")
    measureEmptyLaunch(
      device, ptx: try? nvrtc.get().ptx("extern \"C\" __global__ void empty() {}", name: "empty.cu"))

    progress.begin("engine: module load of large fat binaries against H2D copies")
    measureModuleLoads(device, ptx: vectorAddPTX)
  }

  // MARK: Thread-instructions per second

  struct EngineWorkload {
    var label: String
    /// The sizes in words, for the note.
    var detail: String
    var file: String
    var entry: String
    var grid: (UInt32, UInt32)
    var block: (UInt32, UInt32)
    /// Input buffers, in parameter order; the output buffer follows them, then `n`.
    var inputs: [[Float]]
    var outputCount: Int
    var n: Int32
    /// The expected output.
    var expected: [Float]
  }

  func engineWorkloads() -> [EngineWorkload] {
    // Small integers: every sum is exact in float whatever the order (the reduction's atomics).
    let n = options.quick ? 1 << 16 : 1 << 20
    let m = options.quick ? 64 : 128
    let count = options.quick ? "64K" : "1M"
    let a = (0..<n).map { Float($0 % 1000) }
    let b = (0..<n).map { Float($0 % 7) * 0.25 }
    let ma = (0..<m * m).map { Float($0 % 7 - 3) }
    let mb = (0..<m * m).map { Float($0 % 5 - 2) }
    var mc = [Float](repeating: 0, count: m * m)
    for i in 0..<m {
      for j in 0..<m {
        var s: Float = 0
        for k in 0..<m { s += ma[i * m + k] * mb[k * m + j] }
        mc[i * m + j] = s
      }
    }
    let r = (0..<n).map { Float($0 & 7) }
    return [
      EngineWorkload(
        label: "vector add, \(count)", detail: "\(n) floats, 256 threads a block", file: "vector_add.cu",
        entry: "vector_add",
        grid: (UInt32((n + 255) / 256), 1), block: (256, 1), inputs: [a, b], outputCount: n, n: Int32(n),
        expected: zip(a, b).map { $0 + $1 }),
      EngineWorkload(
        label: "tiled matmul \(m)², 16² tiles", detail: "\(m)×\(m) floats, 16×16 tiles in shared memory",
        file: "matmul_tiled.cu",
        entry: "matmul_tiled",
        grid: (UInt32(m / 16), UInt32(m / 16)), block: (16, 16), inputs: [ma, mb], outputCount: m * m, n: Int32(m),
        expected: mc),
      EngineWorkload(
        label: "shuffle+barrier reduce, \(count)",
        detail: "\(n) floats, 256 threads a block, warp shuffles, a barrier, one atomicAdd a block",
        file: "reduce_sum.cu", entry: "reduce_sum",
        grid: (UInt32(n / 256), 1), block: (256, 1), inputs: [r], outputCount: 1, n: Int32(n),
        expected: [r.reduce(0, +)]),
    ]
  }

  struct WorkloadResult {
    var instructions: UInt64
    var samples: Int
    /// Host threads the in-process launches spread their blocks over.
    var hostThreads: Int
    /// Thread-instructions per second through the mediator, in this process, and in this
    /// process with the serial engine (one thread, blocks in order: issue 10's).
    var mediated: Double
    var inProcess: Double
    var serial: Double
    /// In this process, threads one by one (not warps in lockstep) over the host's cores:
    /// the engine before warps ran in lockstep.
    var perThread: Double
  }

  /// Runs `w` through the mediator and in this process in turn: a checked
  /// warm-up launch each, then timed launches (outputs reset untimed).
  func runWorkload(_ w: EngineWorkload, ptx: String, device: Device) throws -> WorkloadResult {
    let module = try PTXModule(source: ptx)
    func verify(_ got: [Float], _ where_: String) throws {
      guard got.count == w.expected.count else { throw BenchError("\(where_): \(got.count) results") }
      if let i = got.indices.first(where: { got[$0] != w.expected[$0] }) {
        throw BenchError(
          "wrong result \(where_): element \(i) is \(got[i]), the CPU says \(w.expected[i]); the figure is not reported"
        )
      }
    }
    let outBytes = w.outputCount * 4

    // Through the mediator.
    var buffers: [DevicePointer] = []
    defer { for b in buffers { try? device.free(b) } }
    for input in w.inputs {
      let p = try device.allocate(input.count * 4)
      buffers.append(p)
      try input.withUnsafeBytes { try device.copy(to: p, from: $0) }
    }
    let out = try device.allocate(outBytes)
    buffers.append(out)
    let function = try device.function(w.entry, in: try device.loadModule(Array(ptx.utf8)))
    let deviceParameters = try InProcessWorkload.pack(w, module, buffers.map(\.address))
    let grid = Dimensions(w.grid.0, w.grid.1)
    let block = Dimensions(w.block.0, w.block.1)
    func launchMediated() throws -> UInt64 {
      try device.memset(out, value: 0, count: outBytes)
      let t0 = now()
      try device.launch(function, grid: grid, block: block, parameters: deviceParameters)
      return now() - t0
    }

    let local = try InProcessWorkload(w, module: module)
    // Warm-up, checked once each.
    _ = try launchMediated()
    var got = [Float](repeating: 0, count: w.outputCount)
    try got.withUnsafeMutableBytes { try device.copy(from: out, into: $0) }
    try verify(got, "through the mediator")
    let counted = try local.launch(hostThreads: PTXLaunchOptions.defaultHostThreads).stats.instructions
    try verify(local.output, "in-process")
    _ = try local.launch(hostThreads: 1, lockstep: false)
    try verify(local.output, "in-process, serial engine")
    _ = try local.launch(hostThreads: PTXLaunchOptions.defaultHostThreads, lockstep: false)
    try verify(local.output, "in-process, per-thread engine")

    let samples = options.quick ? 2 : 5
    var mediated: [Double] = []
    var inProcess: [Double] = []
    var serial: [Double] = []
    var perThread: [Double] = []
    var threads = 1
    let cores = PTXLaunchOptions.defaultHostThreads
    for _ in 0..<samples {
      mediated.append(Double(try launchMediated()))
      for (hostThreads, lockstep, into) in [(cores, true, 0), (1, false, 1), (cores, false, 2)] {
        let (ns, stats) = try local.launch(hostThreads: hostThreads, lockstep: lockstep)
        guard stats.instructions == counted else {
          throw BenchError(
            "the engine counted \(stats.instructions) thread-instructions, then \(counted), for the same launch")
        }
        switch into {
        case 0:
          inProcess.append(Double(ns))
          threads = stats.hostThreads
        case 1: serial.append(Double(ns))
        default: perThread.append(Double(ns))
        }
      }
    }
    return WorkloadResult(
      instructions: counted, samples: samples, hostThreads: threads,
      mediated: Double(counted) / (median(mediated) / 1e9),
      inProcess: Double(counted) / (median(inProcess) / 1e9), serial: Double(counted) / (median(serial) / 1e9),
      perThread: Double(counted) / (median(perThread) / 1e9))
  }

  /// A workload run in this process on host memory with `PTXModule.launch` (no mediator).
  final class InProcessWorkload {
    let w: EngineWorkload
    let module: PTXModule
    let memory = HostGlobalMemory()
    let outputRegion: PTXMemoryRegion
    let parameters: [UInt8]

    /// The parameter buffer: `pointers` (inputs, output), then `w.n`.
    static func pack(_ w: EngineWorkload, _ module: PTXModule, _ pointers: [UInt64]) throws -> [UInt8] {
      let info = try module.kernel(named: w.entry)
      guard info.parameters.count == w.inputs.count + 2 else {
        throw BenchError("\(w.entry) has \(info.parameters.count) parameters, expected \(w.inputs.count + 2)")
      }
      var p = [UInt8](repeating: 0, count: info.parameterBytes)
      for (k, v) in pointers.enumerated() {
        withUnsafeBytes(of: v.littleEndian) { for j in 0..<8 { p[info.parameters[k].offset + j] = $0[j] } }
      }
      withUnsafeBytes(of: w.n.littleEndian) { for j in 0..<4 { p[info.parameters[pointers.count].offset + j] = $0[j] } }
      return p
    }

    init(_ w: EngineWorkload, module: PTXModule) throws {
      self.w = w
      self.module = module
      var regions: [PTXMemoryRegion] = []
      for input in w.inputs {
        let r = memory.allocate(input.count * 4)
        input.withUnsafeBytes { r.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        regions.append(r)
      }
      outputRegion = memory.allocate(w.outputCount * 4)
      regions.append(outputRegion)
      parameters = try Self.pack(w, module, regions.map(\.base))
    }

    /// One launch (output reset untimed): its time in ns and the engine's stats.
    /// `lockstep` false runs threads one by one (`PTXLaunchOptions.lockstep`).
    func launch(hostThreads: Int, lockstep: Bool = PTXLaunchOptions.defaultLockstep) throws -> (
      ns: UInt64, stats: PTXLaunchStats
    ) {
      memset(outputRegion.pointer, 0, w.outputCount * 4)
      var options = PTXLaunchOptions(hostThreads: hostThreads)
      options.lockstep = lockstep
      let t0 = now()
      let stats = try module.launch(
        kernel: w.entry, grid: PTXDim3(w.grid.0, w.grid.1), block: PTXDim3(w.block.0, w.block.1),
        parameters: parameters, memory: memory, options: options)
      return (now() - t0, stats)
    }

    var output: [Float] {
      Array(UnsafeBufferPointer(start: outputRegion.pointer.assumingMemoryBound(to: Float.self), count: w.outputCount))
    }
  }

  // MARK: Empty launch

  func measureEmptyLaunch(_ device: Device, ptx compiled: String?) {
    let names = ["empty kernel launch round trip p50", "empty kernel launch round trip p99"]
    let origin =
      compiled != nil
      ? "extern \"C\" __global__ void empty() {} by NVRTC 12.9"
      : "NVRTC missing: the same kernel's PTX written out (ret only)"
    let blocks = options.quick ? 4 : 20
    let perBlock = options.quick ? 200 : 500
    do {
      let function = try device.function("empty", in: try device.loadModule(Array((compiled ?? Self.emptyPTX).utf8)))
      let grid = Dimensions(1)
      let module = try PTXModule(source: compiled ?? Self.emptyPTX)
      let memory = HostGlobalMemory()
      let one = PTXDim3(1)
      var launches: [UInt64] = []
      var nops: [UInt64] = []
      var local: [UInt64] = []
      let warm = options.quick ? 50 : 200
      // Blocks in turn: both series see the same stretches of a noisy machine.
      for _ in 0..<blocks {
        for _ in 0..<warm { try device.launch(function, grid: grid, block: grid, parameters: []) }
        for _ in 0..<perBlock {
          let t0 = now()
          try device.launch(function, grid: grid, block: grid, parameters: [])
          launches.append(now() - t0)
        }
        for _ in 0..<warm { try device.nop() }
        for _ in 0..<perBlock {
          let t0 = now()
          try device.nop()
          nops.append(now() - t0)
        }
        // The engine's own share: the same launch in this process, no mediator.
        for _ in 0..<perBlock {
          let t0 = now()
          _ = try module.launch(kernel: "empty", grid: one, block: one, parameters: [], memory: memory)
          local.append(now() - t0)
        }
      }
      let l = LatencySummary(launches)
      let n = LatencySummary(nops)
      let note =
        "target ≤ 3× the NOP; \(origin), 1 block of 1 thread, no parameters; \(blocks) alternating blocks of \(perBlock) launches, \(perBlock) NOPs and \(perBlock) in-process PTXModule launches (the engine's own per-launch cost)"
      report.figures.append(
        Figure("engine", names[0], unit: "ns", l.p50, lowerIsBetter: true, note: note)
          .against("NOP round trip p50, interleaved", n.p50)
          .against("same launch in-process, no mediator", LatencySummary(local).p50))
      report.figures.append(
        Figure("engine", names[1], unit: "ns", l.p99, lowerIsBetter: true)
          .against("NOP round trip p99, interleaved", n.p99)
          .against("same launch in-process, no mediator", LatencySummary(local).p99))
    } catch {
      report.problems.append("engine: empty kernel launch: \(error)")
      for name in names {
        report.figures.append(Figure("engine", name, unit: "ns", nil, lowerIsBetter: true, note: "\(error)"))
      }
    }
  }

  // MARK: Module loads

  /// A fat binary of exactly `size` bytes (a multiple of 8): nvcc's layout,
  /// a 16-byte header and one 64-byte entry holding uncompressed PTX for
  /// sm_75: `ptx`, then `// padding` lines, then NULs to the end.
  static func syntheticFatbin(ptx: String, size: Int) -> (image: [UInt8], paddingLines: Int) {
    precondition(size % 8 == 0 && size > 80 + ptx.utf8.count)
    let payload = size - 16 - 64
    // PTX ISA version from `.version X.Y` (the entry's major and minor).
    var major: UInt16 = 8
    var minor: UInt16 = 0
    if let v = ptx.split(separator: "\n").first(where: { $0.hasPrefix(".version") })?.split(separator: " ").last {
      let parts = v.split(separator: ".")
      if parts.count == 2, let a = UInt16(parts[0]), let b = UInt16(parts[1]) { (major, minor) = (a, b) }
    }
    var image = [UInt8](repeating: 0, count: size)
    var lines = 0
    image.withUnsafeMutableBytes { b in
      func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
        b.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self)
      }
      put(UInt32(0xBA55_ED50), 0)
      put(UInt16(1), 4)  // version
      put(UInt16(16), 6)  // header size
      put(UInt64(size - 16), 8)  // files size
      let e = 16
      put(UInt16(1), e)  // kind: PTX
      put(UInt16(0x0101), e + 2)
      put(UInt32(64), e + 4)  // entry header size
      put(UInt64(payload), e + 8)  // payload size, a multiple of 8
      put(UInt32(0), e + 16)  // compressed size: not compressed
      put(minor, e + 24)
      put(major, e + 26)
      put(UInt32(75), e + 28)  // arch
      put(UInt64(0x11), e + 40)  // flags: 64-bit, Linux
      put(UInt64(0), e + 56)  // uncompressed size: not compressed
      var at = e + 64
      let text = Array((ptx.hasSuffix("\n") ? ptx : ptx + "\n").utf8)
      text.withUnsafeBytes { (b.baseAddress! + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
      at += text.count
      let line = Array("// padding\n".utf8)
      let chunk = [UInt8]((0..<6000).map { _ in line }.joined())
      let end = size
      while end - at >= chunk.count {
        chunk.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: b[at..<at + chunk.count]).copyMemory(from: $0) }
        at += chunk.count
        lines += 6000
      }
      while end - at >= line.count {
        line.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: b[at..<at + line.count]).copyMemory(from: $0) }
        at += line.count
        lines += 1
      }
    }
    return (image, lines)
  }

  func measureModuleLoads(_ device: Device, ptx compiled: String?) {
    let sizes = options.quick ? [1 << 20, 16 << 20] : [1 << 20, 100 << 20]
    let kernel = compiled != nil ? "vector_add" : "empty"
    let ptx = compiled ?? Self.emptyPTX
    let what =
      compiled != nil
      ? "NVRTC 12.9's PTX of vector_add.cu (\(ptx.utf8.count) bytes)" : "an empty kernel's PTX (NVRTC missing)"
    for size in sizes {
      let name = "module load, \(sizeText(size)) fat binary"
      let samples = size <= 1 << 20 ? (options.quick ? 5 : 20) : (options.quick ? 1 : 5)
      progress.detail(name)
      do {
        let (image, lines) = Self.syntheticFatbin(ptx: ptx, size: size)
        let buffer = try device.allocate(size)
        defer { try? device.free(buffer) }
        var loads: [Double] = []
        var copies: [Double] = []
        try image.withUnsafeBytes { bytes in
          // Warm: page faults on both sides; the image is checked to hold the kernel once.
          let first = try device.loadModule(bytes)
          _ = try device.function(kernel, in: first)
          try device.unloadModule(first)
          try device.copy(to: buffer, from: bytes)
          for _ in 0..<samples {
            let t0 = now()
            let m = try device.loadModule(bytes)
            loads.append(Double(now() - t0))
            try device.unloadModule(m)
            let t1 = now()
            try device.copy(to: buffer, from: bytes)
            copies.append(Double(now() - t1))
          }
        }
        report.figures.append(
          Figure(
            "engine", name, unit: "ms", median(loads) / 1e6, lowerIsBetter: true,
            note:
              "a synthetic fat binary: one uncompressed PTX entry for sm_75 holding \(what) and \(lines) `// padding` comment lines the device parses; Device.loadModule streams it in chunks; median of \(samples), each unloaded"
          )
          .against("H2D copy, same bytes (interleaved)", median(copies) / 1e6))
      } catch {
        report.problems.append("engine: \(name): \(error)")
        report.figures.append(Figure("engine", name, unit: "ms", nil, lowerIsBetter: true, note: "\(error)"))
      }
    }
  }
}

/// Host memory as the PTX engine's global memory, for the in-process runs: one region per buffer.
final class HostGlobalMemory: PTXGlobalMemory {
  var regions: [PTXMemoryRegion] = []
  var next: UInt64 = 0x7f00_0000_0000

  func allocate(_ bytes: Int) -> PTXMemoryRegion {
    let r = PTXMemoryRegion(
      base: next, count: bytes, pointer: .allocate(byteCount: max(bytes, 16), alignment: 256))
    regions.append(r)
    next += (UInt64(bytes + 0xFFFF) & ~0xFFFF) + 0x10000
    return r
  }

  func region(containing address: UInt64) -> PTXMemoryRegion? {
    regions.first { address >= $0.base && address - $0.base < UInt64($0.count) }
  }

  deinit { for r in regions { r.pointer.deallocate() } }
}
