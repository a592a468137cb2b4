import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// The project's own CUDA kernels (Tests/Kernels), compiled at test time by
/// nvcc 13.5 (a fat binary: zstd-compressed PTX beside an sm_75 cubin) and
/// by NVRTC 12.9 (PTX), loaded through a real vgpu-mediator and run by its
/// PTX engine; every result checked against a CPU reference. Each also
/// runs `layered`: through a mediator with the CUDA backend whose host
/// driver is the project's own libcuda.so.1 (issue 14's test without a GPU).
@Suite(.serialized) final class KernelCorpusOnDeviceTests {
  /// A mediator per test (Swift Testing makes an instance per test; deinit
  /// stops it), with a small watchdog so the endless loop ends in seconds.
  let mediator: MediatorProcess

  init() throws { mediator = try MediatorProcess(arguments: ["--kernel-budget", "10000000"]) }

  deinit {
    layers?.stop()
    _ = mediator.stop()
  }

  enum Compiler: String, CaseIterable, CustomTestStringConvertible {
    case nvcc, nvrtc
    var testDescription: String { rawValue }
  }

  /// The image of `file` (Tests/Kernels/NAME.cu) as `compiler` makes it.
  static func image(_ file: String, _ compiler: Compiler) throws -> [UInt8] {
    let url = CUDAToolchain.kernels.appendingPathComponent("\(file).cu")
    switch compiler {
    case .nvcc: return try CUDAToolchain.nvccBytes(source: url, output: .fatbin(.nvccDefault), arch: 75)
    case .nvrtc:
      let source = try String(contentsOf: url, encoding: .utf8)
      return Array(try CUDAToolchain.nvrtcPTX(source: source, name: "\(file).cu", compute: 75).utf8) + [0]
    }
  }

  /// What a test's commands go through.
  enum Through: String, CaseIterable, CustomTestStringConvertible {
    /// A mediator with the reference device.
    case reference
    /// A mediator with `--backend cuda` over the project's libcuda.so.1, a
    /// client of a reference-device mediator.
    case layered
    var testDescription: String { rawValue }
  }

  /// The two layers, started at a `layered` test's first open.
  var layers: LayeredMediators?

  func open(_ through: Through = .reference) throws -> Device {
    switch through {
    case .reference: return try Device.open(mediator.spec)
    case .layered:
      if layers == nil {
        layers = try LayeredMediators(hostArguments: ["--kernel-budget", "10000000"])
      }
      return try Device.open(layers!.spec)
    }
  }

  enum Arg {
    case ptr(DevicePointer)
    case i32(Int32)
    case u32(UInt32)
    case f32(Float)
    case u64(UInt64)
    case bytes([UInt8])
    var bytes: [UInt8] {
      switch self {
      case .ptr(let p): withUnsafeBytes(of: p.address.littleEndian, Array.init)
      case .i32(let v): withUnsafeBytes(of: v.littleEndian, Array.init)
      case .u32(let v): withUnsafeBytes(of: v.littleEndian, Array.init)
      case .f32(let v): withUnsafeBytes(of: v.bitPattern.littleEndian, Array.init)
      case .u64(let v): withUnsafeBytes(of: v.littleEndian, Array.init)
      case .bytes(let b): b
      }
    }
  }

  /// Packs `args` by the layout the device reported for `f`.
  static func pack(_ f: FunctionHandle, _ args: [Arg]) throws -> [UInt8] {
    let layout = try #require(f.layout, "the device reported no parameter layout")
    try #require(layout.slots.count == args.count, "the kernel takes \(layout.slots.count) parameters")
    var buffer = [UInt8](repeating: 0, count: layout.bufferSize)
    for (a, slot) in zip(args, layout.slots) {
      let b = a.bytes
      try #require(b.count == Int(slot.size), "parameter at \(slot.offset): \(b.count) bytes given, \(slot.size) taken")
      buffer.replaceSubrange(Int(slot.offset)..<Int(slot.offset) + b.count, with: b)
    }
    return buffer
  }

  /// A loaded kernel on `device`.
  struct Kernel {
    let device: Device
    let module: ModuleHandle
    let function: FunctionHandle
    init(_ device: Device, _ file: String, _ name: String, _ compiler: Compiler) throws {
      self.device = device
      module = try device.loadModule(try KernelCorpusOnDeviceTests.image(file, compiler))
      function = try device.function(name, in: module)
    }
    func launch(grid: Dimensions, block: Dimensions, shared: UInt32 = 0, _ args: [Arg]) throws {
      try device.launch(
        function, grid: grid, block: block, sharedMemory: shared,
        parameters: try KernelCorpusOnDeviceTests.pack(function, args))
    }
  }

  static func upload<T>(_ device: Device, _ values: [T]) throws -> DevicePointer {
    let bytes = values.withUnsafeBytes { Array($0) }
    let p = try device.allocate(max(bytes.count, 4))
    try device.copy(to: p, from: bytes)
    return p
  }

  static func download<T>(_ device: Device, _ p: DevicePointer, _ count: Int, as: T.Type) throws -> [T] {
    let bytes = try device.read(p, count: count * MemoryLayout<T>.stride)
    return bytes.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
  }

  static func close(_ a: Float, _ b: Float, _ tolerance: Float = 1e-5) -> Bool {
    abs(a - b) <= tolerance * max(1, abs(b))
  }

  // MARK: Results against the CPU

  @Test(arguments: Compiler.allCases, Through.allCases) func vectorAddAndSaxpy(_ compiler: Compiler, _ through: Through)
    throws
  {
    let d = try open(through)
    defer { d.close() }
    let n = 1000
    let a = (0..<n).map { Float($0) * 0.5 }
    let b = (0..<n).map { Float(n - $0) }
    let (pa, pb, pc) = (try Self.upload(d, a), try Self.upload(d, b), try d.allocate(n * 4))
    try Kernel(d, "vector_add", "vector_add", compiler).launch(
      grid: Dimensions(4), block: Dimensions(256), [.ptr(pa), .ptr(pb), .ptr(pc), .i32(Int32(n))])
    #expect(try Self.download(d, pc, n, as: Float.self) == zip(a, b).map { $0 + $1 })
    try Kernel(d, "saxpy", "saxpy", compiler).launch(
      grid: Dimensions(8), block: Dimensions(128), [.i32(Int32(n)), .f32(3), .ptr(pa), .ptr(pb)])
    let y = try Self.download(d, pb, n, as: Float.self)
    #expect(zip(y, zip(a, b)).allSatisfy { Self.close($0, 3 * $1.0 + $1.1) })
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func reductionWithShuffleAndBarrier(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 5000
    let x = (0..<n).map { Float(($0 * 37) % 101) / 10 }
    let (px, out) = (try Self.upload(d, x), try Self.upload(d, [Float(0)]))
    try Kernel(d, "reduce_sum", "reduce_sum", compiler).launch(
      grid: Dimensions(UInt32((n + 255) / 256)), block: Dimensions(256), [.ptr(px), .ptr(out), .i32(Int32(n))])
    let sum = try Self.download(d, out, 1, as: Float.self)[0]
    #expect(Self.close(sum, x.reduce(0, +), 1e-4), "\(sum)")
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func tiledMatmulInSharedMemory(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 37
    let a = (0..<n * n).map { Float($0 % 7) - 3 }
    let b = (0..<n * n).map { Float($0 % 5) * 0.25 }
    let (pa, pb, pc) = (try Self.upload(d, a), try Self.upload(d, b), try d.allocate(n * n * 4))
    let tiles = UInt32((n + 15) / 16)
    try Kernel(d, "matmul_tiled", "matmul_tiled", compiler).launch(
      grid: Dimensions(tiles, tiles), block: Dimensions(16, 16), [.ptr(pa), .ptr(pb), .ptr(pc), .i32(Int32(n))])
    let c = try Self.download(d, pc, n * n, as: Float.self)
    for i in 0..<n {
      for j in 0..<n {
        let expected = (0..<n).reduce(Float(0)) { $0 + a[i * n + $1] * b[$1 * n + j] }
        #expect(Self.close(c[i * n + j], expected, 1e-4), "C[\(i)][\(j)]")
      }
    }
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func softmaxWithExpf(_ compiler: Compiler, _ through: Through)
    throws
  {
    let d = try open(through)
    defer { d.close() }
    let (rows, cols) = (9, 33)
    let x = (0..<rows * cols).map { Float(($0 * 13) % 17) / 4 - 2 }
    let (px, py) = (try Self.upload(d, x), try d.allocate(rows * cols * 4))
    try Kernel(d, "softmax", "softmax", compiler).launch(
      grid: Dimensions(1), block: Dimensions(32), [.ptr(px), .ptr(py), .i32(Int32(rows)), .i32(Int32(cols))])
    let y = try Self.download(d, py, rows * cols, as: Float.self)
    for r in 0..<rows {
      let row = x[r * cols..<(r + 1) * cols]
      let m = row.max()!
      let e = row.map { Foundation.exp(Double($0 - m)) }
      let s = e.reduce(0, +)
      for c in 0..<cols { #expect(Self.close(y[r * cols + c], Float(e[c] / s), 1e-5), "row \(r) col \(c)") }
    }
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func atomicsIntFloatMaxAndCAS(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 300
    let values = (0..<n).map { Int32(($0 * 7919) % 1000) }
    let (counters, fsum, pv) = (
      try Self.upload(d, [Int32](repeating: 0, count: 3)), try Self.upload(d, [Float(0)]), try Self.upload(d, values)
    )
    try Kernel(d, "atomics", "atomics", compiler).launch(
      grid: Dimensions(3), block: Dimensions(128), [.ptr(counters), .ptr(fsum), .ptr(pv), .i32(Int32(n))])
    #expect(try Self.download(d, counters, 3, as: Int32.self) == [values.reduce(0, +), values.max()!, Int32(n)])
    #expect(try Self.download(d, fsum, 1, as: Float.self) == [Float(n) * 0.5])
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func ballotAnyAll(_ compiler: Compiler, _ through: Through)
    throws
  {
    let d = try open(through)
    defer { d.close() }
    let n = 80  // three warps: the third only partly in range
    let input = (0..<96).map { i -> Int32 in i < 32 ? 1 : (i % 3 == 0 ? 1 : -1) }
    let (pin, out) = (try Self.upload(d, input), try d.allocate(9 * 4))
    try Kernel(d, "vote", "vote", compiler).launch(
      grid: Dimensions(1), block: Dimensions(96), [.ptr(pin), .ptr(out), .i32(Int32(n))])
    let got = try Self.download(d, out, 9, as: UInt32.self)
    for w in 0..<3 {
      var ballot: UInt32 = 0
      for lane in 0..<32 where w * 32 + lane < n && input[w * 32 + lane] > 0 { ballot |= 1 << UInt32(lane) }
      #expect(got[3 * w] == ballot, "warp \(w) ballot")
      #expect(got[3 * w + 1] == (ballot != 0 ? 1 : 0), "warp \(w) any")
      #expect(got[3 * w + 2] == (ballot == UInt32.max ? 1 : 0), "warp \(w) all")
    }
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func inclusiveScanAndDynamicSharedMemory(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 700
    let x = (0..<n).map { Int32($0 % 9) - 3 }
    let (pin, pout) = (try Self.upload(d, x), try d.allocate(n * 4))
    try Kernel(d, "scan_block", "scan_block", compiler).launch(
      grid: Dimensions(1), block: Dimensions(1024), [.ptr(pin), .ptr(pout), .i32(Int32(n))])
    var running: Int32 = 0
    #expect(
      try Self.download(d, pout, n, as: Int32.self)
        == x.map {
          running += $0
          return running
        })

    let m = 256
    let data = (0..<m).map(Float.init)
    let pd = try Self.upload(d, data)
    try Kernel(d, "dynamic_shared", "dynamic_shared_reverse", compiler).launch(
      grid: Dimensions(2), block: Dimensions(128), shared: 128 * 4, [.ptr(pd), .i32(Int32(m))])
    let reversed: [Float] = (0..<m).map { (i: Int) -> Float in
      let block = i / 128
      return data[block * 128 + 127 - i % 128]
    }
    #expect(try Self.download(d, pd, m, as: Float.self) == reversed)
  }

  /// `__device__` variables: initialised from the image, found by name
  /// (cuModuleGetGlobal), written as cudaMemcpyToSymbol does, used by kernels.
  @Test(arguments: Compiler.allCases, Through.allCases) func deviceGlobals(_ compiler: Compiler, _ through: Through)
    throws
  {
    let d = try open(through)
    defer { d.close() }
    let module = try d.loadModule(try Self.image("device_globals", compiler))
    let scale = try d.global("scale", in: module)
    #expect(scale.size == 4)
    #expect(try Self.download(d, scale.address, 1, as: Float.self) == [2])
    let n = 100
    let pdata = try Self.upload(d, (0..<n).map(Float.init))
    let scaleBy = try d.function("scale_by_global", in: module)
    try d.launch(
      scaleBy, grid: Dimensions(1), block: Dimensions(128),
      parameters: try Self.pack(scaleBy, [.ptr(pdata), .i32(Int32(n))]))
    try d.copy(to: scale.address, from: withUnsafeBytes(of: Float(3).bitPattern, Array.init))
    try d.launch(
      scaleBy, grid: Dimensions(1), block: Dimensions(128),
      parameters: try Self.pack(scaleBy, [.ptr(pdata), .i32(Int32(n))]))
    #expect(try Self.download(d, pdata, n, as: Float.self) == (0..<n).map { Float($0) * 6 })
    let count = try d.function("count_threads", in: module)
    try d.launch(count, grid: Dimensions(3), block: Dimensions(64), parameters: try Self.pack(count, [.i32(150)]))
    let counter = try d.global("counter", in: module)
    #expect(try Self.download(d, counter.address, 1, as: Int32.self) == [150])
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func doublePrecisionMath(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let x = [0.5, 1, 2.25, 3.75, 10, 123.456]
    let (pin, pout) = (try Self.upload(d, x), try d.allocate(x.count * 5 * 8))
    try Kernel(d, "double_math", "double_math", compiler).launch(
      grid: Dimensions(1), block: Dimensions(32), [.ptr(pin), .ptr(pout), .i32(Int32(x.count))])
    let y = try Self.download(d, pout, x.count * 5, as: Double.self)
    for (i, v) in x.enumerated() {
      let expected = [Foundation.exp(v), Foundation.log(v), v.squareRoot(), Foundation.pow(v, 1.5), Foundation.sin(v)]
      for k in 0..<5 {
        #expect(abs(y[5 * i + k] - expected[k]) <= 1e-12 * max(1, abs(expected[k])), "x=\(v) function \(k)")
      }
    }
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func structParameterAnd64BitIndices(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 200
    let out = try d.allocate(n * 4)
    // struct Params { float a; int n; double b; float* out; }: 24 bytes, one parameter.
    var params: [UInt8] = []
    params += Arg.f32(1.5).bytes + Arg.i32(Int32(n)).bytes
    params += withUnsafeBytes(of: (0.25).bitPattern.littleEndian, Array.init) + Arg.ptr(out).bytes
    try Kernel(d, "struct_param", "struct_param", compiler).launch(
      grid: Dimensions(2), block: Dimensions(128), [.bytes(params)])
    #expect(try Self.download(d, out, n, as: Float.self) == (0..<n).map { Float(1.5 * Double($0) + 0.25) })

    let count = 5000
    let offset: UInt64 = 3
    let data = try d.allocate(count + 8)
    try Kernel(d, "index64", "index64_fill", compiler).launch(
      grid: Dimensions(4), block: Dimensions(256), [.ptr(data), .u64(UInt64(count)), .u64(offset)])
    let bytes = try d.read(data + Int(offset), count: count)
    #expect(bytes == (0..<count).map { i in UInt8(truncatingIfNeeded: ((UInt64(i) + offset) &* 2_654_435_761) >> 24) })
  }

  // MARK: Output and errors

  @Test(arguments: Compiler.allCases, Through.allCases) func printfReachesTheLaunchingProcess(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let x: [Float] = [1.5, -2, 3.25]
    let px = try Self.upload(d, x)
    try Kernel(d, "printf", "print_values", compiler).launch(
      grid: Dimensions(1), block: Dimensions(32), [.ptr(px), .i32(Int32(x.count))])
    let text = String(decoding: try d.takeOutput().bytes, as: UTF8.self)
    let lines = text.split(separator: "\n").map(String.init).sorted()
    #expect(lines == ["thread 0 value 1.500000", "thread 1 value -2.000000", "thread 2 value 3.250000"], "\(text)")
    #expect(try d.takeOutput().bytes.isEmpty)
  }

  @Test(arguments: Compiler.allCases, Through.allCases) func assertFailsTheLaunchWith710(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let n = 64
    let px = try Self.upload(d, (0..<n).map { Int32($0 == 17 ? 99 : $0) })
    let kernel = try Kernel(d, "assert", "assert_less", compiler)
    do {
      try kernel.launch(grid: Dimensions(1), block: Dimensions(64), [.ptr(px), .i32(Int32(n))])
      Issue.record("the failed assert went unnoticed")
    } catch {
      let status = (error as? VGPUError)?.status
      #expect(status == .assertTriggered && status?.cudaResult == 710)
      // The engine's own words; a driver (the layered case) gives CUDA's.
      if through == .reference {
        #expect("\(error)".contains("Assertion") && "\(error)".contains("thread (17,"), "\(error)")
      }
    }
    try d.nop()
  }

  /// An out-of-bounds store fails its launch with 700, naming the thread and
  /// address; the mediator and another client go on.
  @Test(arguments: Compiler.allCases, Through.allCases) func anIllegalAddressFailsOnlyThatLaunch(
    _ compiler: Compiler, _ through: Through
  ) throws {
    let d = try open(through)
    defer { d.close() }
    let other = try open(through)
    defer { other.close() }
    let buffer = try d.allocate(4096)
    do {
      try Kernel(d, "out_of_bounds", "out_of_bounds", compiler).launch(
        grid: Dimensions(1), block: Dimensions(32), [.ptr(buffer), .i32(1024)])
      Issue.record("the store past the buffer went unnoticed")
    } catch {
      let status = (error as? VGPUError)?.status
      #expect(status == .illegalAddress && status?.cudaResult == 700)
      if through == .reference {
        #expect("\(error)".contains("illegal address") && "\(error)".contains("thread (0,0,0)"), "\(error)")
      }
    }
    #expect(mediator.process.isRunning && (layers?.gpu.process.isRunning ?? true))
    if through == .layered {
      // A GPU's fault is its context's (one per process, as CUDA's): this
      // process's later work fails with 700; another process's goes on.
      #expect(throws: VGPUError.self) { _ = try other.allocate(256) }
      let selftest = try ClientProcess("pcitool", ["selftest", layers!.spec])
      selftest.process.waitUntilExit()
      #expect(selftest.process.terminationStatus == 0, "\(selftest.output)")
      return
    }
    let p = try Self.upload(other, [Float](repeating: 1, count: 8))
    try Kernel(other, "vector_add", "vector_add", compiler).launch(
      grid: Dimensions(1), block: Dimensions(32), [.ptr(p), .ptr(p), .ptr(p), .i32(8)])
    #expect(try Self.download(other, p, 8, as: Float.self) == [Float](repeating: 2, count: 8))
    try d.nop()
  }

  @Test func anEndlessLoopEndsWith702() throws {
    let d = try open()
    defer { d.close() }
    let flag = try Self.upload(d, [Int32(0)])
    let started = Date()
    do {
      try Kernel(d, "endless_loop", "endless_loop", .nvrtc).launch(
        grid: Dimensions(1), block: Dimensions(32), [.ptr(flag)])
      Issue.record("the endless loop ended")
    } catch {
      let status = (error as? VGPUError)?.status
      #expect(status == .launchTimeout && status?.cudaResult == 702, "\(error)")
      #expect("\(error)".contains("budget"), "\(error)")
    }
    print("endless loop: stopped after \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    try d.nop()
  }

  /// Kernels run on the device's workers: while one client's kernel loops,
  /// another client opens the device, runs its own kernel and its commands.
  @Test func aLongKernelHoldsUpNoOtherClient() throws {
    let d = try open()
    defer { d.close() }
    let flag = try Self.upload(d, [Int32(0)])
    let looping = try Kernel(d, "endless_loop", "endless_loop", .nvrtc)
    let params = try Self.pack(looping.function, [.ptr(flag)])
    final class Flag: Sendable { let value = Atomic<Bool>(false) }
    let flagBox = Flag()
    let thread = Thread {
      _ = try? d.launch(looping.function, grid: Dimensions(1), block: Dimensions(32), parameters: params)
      flagBox.value.store(true, ordering: .releasing)
    }
    thread.start()
    usleep(200_000)  // the loop is running
    let other = try open()
    defer { other.close() }
    let p = try Self.upload(other, [Float](repeating: 1, count: 64))
    try Kernel(other, "vector_add", "vector_add", .nvrtc).launch(
      grid: Dimensions(1), block: Dimensions(64), [.ptr(p), .ptr(p), .ptr(p), .i32(64)])
    for _ in 0..<100 { try other.nop() }
    #expect(try Self.download(other, p, 64, as: Float.self) == [Float](repeating: 2, count: 64))
    let loopStillRunning = !flagBox.value.load(ordering: .acquiring)
    #expect(loopStillRunning, "the other client waited for the loop to end")
    while !flagBox.value.load(ordering: .acquiring) { usleep(10_000) }
  }

  /// A big module parses on a worker: while it loads, another client is
  /// served, and the module then works.
  @Test func aBigModuleLoadHoldsUpNoOtherClient() throws {
    let source = try String(
      contentsOf: CUDAToolchain.kernels.appendingPathComponent("vector_add.cu"), encoding: .utf8)
    let ptx = try CUDAToolchain.nvrtcPTX(source: source, name: "vector_add.cu", compute: 75)
    // The kernel again under 3000 names: megabytes of PTX, seconds of parsing in a debug build.
    let start = try #require(ptx.range(of: ".visible .entry vector_add("))
    let kernel = String(ptx[start.lowerBound...])
    var big = ptx
    for i in 0..<3000 { big += "\n" + kernel.replacingOccurrences(of: "vector_add", with: "vector_add_\(i)") }
    let d = try open()
    defer { d.close() }
    final class Loaded: Sendable { let value = Atomic<Int>(0) }
    let loaded = Loaded()
    let image = Array(big.utf8) + [0]
    let thread = Thread {
      let ok = (try? d.loadModule(image)) != nil
      loaded.value.store(ok ? 1 : 2, ordering: .releasing)
    }
    thread.start()
    usleep(100_000)  // the load is under way
    let other = try open()
    defer { other.close() }
    let started = Date()
    for _ in 0..<100 { try other.nop() }
    let p = try other.allocate(256)
    try other.free(p)
    let served = Date().timeIntervalSince(started)
    let stillLoading = loaded.value.load(ordering: .acquiring) == 0
    while loaded.value.load(ordering: .acquiring) == 0 { usleep(10_000) }
    #expect(loaded.value.load(ordering: .acquiring) == 1, "the big module failed to load")
    #expect(stillLoading, "the load ended before the other client was served: make the module bigger")
    #expect(served < 1, "the other client waited \(served) s for the load")
  }

  /// A kernel still running when its device stops is cancelled at its next
  /// checkpoint: the mediator stops in moments, not after the watchdog's
  /// budget (10^10 thread-instructions: minutes), and the client gets an error.
  @Test func stoppingTheMediatorCancelsARunningKernel() throws {
    let patient = try MediatorProcess(arguments: ["--kernel-budget", "10000000000"])
    let d = try Device.open(patient.spec)
    defer { d.close() }
    let flag = try Self.upload(d, [Int32(0)])
    let looping = try Kernel(d, "endless_loop", "endless_loop", .nvrtc)
    let params = try Self.pack(looping.function, [.ptr(flag)])
    final class Outcome: Sendable { let failed = Atomic<Int>(0) }
    let outcome = Outcome()
    let thread = Thread {
      let failed =
        (try? d.launch(looping.function, grid: Dimensions(1), block: Dimensions(32), parameters: params)) == nil
      outcome.failed.store(failed ? 1 : 2, ordering: .releasing)
    }
    thread.start()
    usleep(300_000)  // the loop runs on a worker
    let started = Date()
    let log = patient.stop()
    let took = Date().timeIntervalSince(started)
    #expect(took < 5, "the mediator took \(took) s to stop: \(log.suffix(500))")
    while outcome.failed.load(ordering: .acquiring) == 0 { usleep(10_000) }
    #expect(outcome.failed.load(ordering: .acquiring) == 1, "the launch succeeded")
  }

  /// Images the device cannot use: each its own CUDA error and one line,
  /// and the device serves the next command.
  @Test func badImagesGetTheirErrorAndOneLine() throws {
    let d = try open()
    defer { d.close() }
    func refused(_ image: [UInt8], _ status: CommandStatus, _ words: [String]) {
      do {
        _ = try d.loadModule(image)
        Issue.record("accepted: \(image.prefix(16))")
      } catch {
        #expect(error.status == status, "\(error)")
        for w in words { #expect("\(error)".contains(w), "\(error)") }
        #expect(!"\(error)".contains("\n"))
      }
    }
    refused([UInt8](repeating: 0xab, count: 300), .invalidImage, ["bad magic"])
    let fatbin = try Self.image("vector_add", .nvcc)
    refused(Array(fatbin.prefix(fatbin.count / 2)), .invalidImage, ["truncated"])
    var lying = fatbin
    lying.replaceSubrange(8..<16, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian, Array.init))
    refused(lying, .invalidImage, ["fat binary"])
    let cubin = try CUDAToolchain.nvccBytes(
      source: CUDAToolchain.kernels.appendingPathComponent("vector_add.cu"), output: .cubin, arch: 75)
    refused(cubin, .noBinaryForGPU, ["sm_75", "PTX only"])
    let ptx = ".version 8.8\n.target sm_75\n.address_size 64\n.visible .entry k()\n{\n  mov.u32 %r1, ;\n  ret;\n}\n"
    let module = try? d.loadModule(Array(ptx.utf8))
    if let module {
      // Per-function recovery: the module loads, the broken kernel fails alone.
      do {
        _ = try d.function("k", in: module)
        Issue.record("a kernel with a syntax error loaded")
      } catch {
        #expect(error.status == .invalidPTX && error.status?.cudaResult == 218, "\(error)")
        #expect("\(error)".contains("line 6"), "\(error)")
      }
    }
    refused(Array(".version 8.8\n.target sm_75\n.address_size 32\n".utf8), .invalidPTX, ["PTX"])
    try d.nop()
    let p = try Self.upload(d, [Float](repeating: 1, count: 4))
    try Kernel(d, "vector_add", "vector_add", .nvcc).launch(
      grid: Dimensions(1), block: Dimensions(4), [.ptr(p), .ptr(p), .ptr(p), .i32(4)])
    #expect(try Self.download(d, p, 4, as: Float.self) == [2, 2, 2, 2])
  }
}
