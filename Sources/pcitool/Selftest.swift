import ArgumentParser
import CSupport
import Foundation
import SelftestKernels
import Synchronization
import VGPU
import VGPUProtocol

extension PCITool {
  struct Selftest: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run a real workload on a vGPU and check every result.",
      discussion: """
        Steps: handshake; memory info; allocation; host→device→host copies of 1 B, \
        4 KiB, 1 MiB + 1 B, 16 MiB and 64 MiB of random data, verified by checksum \
        (FNV-1a, 64-bit) with their MB/s; a device-to-device copy; memset (8, 16 \
        and 32 bits); the project's kernels (PTX from tools/selftest-kernels.cu: fill, \
        vector_add, saxpy, scale, reduce_sum, matmul), each launched on a grid of \
        256-thread blocks and checked against a CPU reference, bit for bit; \
        free; and accounting back to zero. Each step is timed; a failing step shows \
        its error, and the steps that need it are skipped.

        With --threads N, the copy steps run from N threads at once, each with its \
        own buffers, every one verified.

        Exit status: 0 when every step passed, 1 otherwise (the table is still printed).
        """)

    @OptionGroup var target: DeviceArgument

    @Option(name: .long, help: "Threads that run the copy steps at once, each with its own buffers.")
    var threads = 1

    @OptionGroup var output: JSONOption

    func validate() throws {
      guard (1...64).contains(threads) else { throw ValidationError("--threads must be between 1 and 64") }
    }

    func run() throws {
      // A device string that is not one at all is a usage error, before any step.
      let choice = try target.chosen()
      let live = !output.json
      if live { print(choice.line) }
      let test = SelftestRun(
        spec: choice.device, timeout: target.timeout, threads: threads, live: live,
        progress: live && isatty(STDOUT_FILENO) == 1)
      test.run()
      let failed = test.results.filter { $0.status != .pass }
      if output.json {
        try printJSON(
          SelftestReport(
            device: choice.device, choice: choice.reason, threads: threads, passed: failed.isEmpty, steps: test.results)
        )
      } else {
        print(
          failed.isEmpty
            ? "selftest passed: \(test.results.count) of \(test.results.count) steps"
            : "selftest FAILED: \(failed.count) of \(test.results.count) steps did not pass")
      }
      if !failed.isEmpty {
        let failures = failed.filter { $0.status == .fail }
        let skipped = failed.count - failures.count
        var text = "selftest on \(choice.device) failed: " + failures.map(\.name).joined(separator: ", ")
        if skipped > 0 { text += " (\(skipped) more steps skipped)" }
        // What went wrong first, so that the one line says why, and where the device name came from.
        if let first = failures.first { text += "; \(first.name): \(first.detail)" }
        if choice.reason != DeviceChoice.onCommandLine { text += " (\(choice.reason))" }
        throw ToolError(status: .failure, description: text)
      }
    }
  }
}

struct SelftestReport: Encodable {
  var device: String
  var choice: String
  var threads: Int
  var passed: Bool
  var steps: [StepResult]
}

struct StepResult: Encodable {
  enum Outcome: String, Encodable { case pass, fail, skip }
  var name: String
  var status: Outcome
  var seconds: Double
  /// What was checked and measured, or why the step failed or was skipped.
  var detail: String
  /// Host→device and device→host rates of copy steps, 10⁶ bytes per second.
  var h2dMBps: Double?
  var d2hMBps: Double?
}

/// A step's failure, with the text to show.
struct StepFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The selftest's state: the device, its buffers, the results so far.
final class SelftestRun {
  let spec: String
  let timeout: Double
  let threads: Int
  let live: Bool
  let progress: Bool
  private(set) var results: [StepResult] = []

  private var device: Device?
  private var startFree: UInt64 = 0
  /// Every device allocation, so that the free step frees what alloc made even when it failed halfway.
  private var allocated: [DevicePointer] = []
  /// copyBuffers[thread][size]
  private var copyBuffers: [[DevicePointer]] = []
  private var d2d: (source: DevicePointer, destination: DevicePointer)?
  private var memsetBuffer: DevicePointer?
  private var kernelBuffers: KernelBuffers?
  private var module: ModuleHandle?
  private var functions: [SelftestKernel: FunctionHandle] = [:]

  static let copySizes: [(bytes: Int, name: String)] = [
    (1, "1 B"), (4096, "4 KiB"), ((1 << 20) + 1, "1 MiB + 1 B"), (16 << 20, "16 MiB"), (64 << 20, "64 MiB"),
  ]
  static let d2dBytes = (16 << 20) + 3
  static let memsetBytes = (1 << 20) + 64

  /// Sizes for the kernels: odd, so that no launch is a whole number of blocks.
  static let vectorLength = 100_003
  static let threadsPerBlock = 256
  static let matmul = (m: 67, n: 45, k: 83)

  struct KernelBuffers {
    var a, b, c, out: DevicePointer
    var ma, mb, mc: DevicePointer
  }

  init(spec: String, timeout: Double, threads: Int, live: Bool, progress: Bool) {
    self.spec = spec
    self.timeout = timeout
    self.threads = threads
    self.live = live
    self.progress = progress
  }

  static let nameWidth = 24

  func run() {
    if live {
      print(padded("step", Self.nameWidth) + padded("result", 7) + padded("time", 11) + "detail")
    }
    handshake()
    defer { device?.close() }
    step("memory info", needs: device, from: "handshake") { device in
      let m = try device.memoryInfo()
      self.startFree = m.free
      guard m.total > 0 else { throw StepFailure("the device reports 0 bytes of memory") }
      return "\(bytesText(m.free)) free of \(bytesText(m.total))"
    }
    step("alloc", needs: device, from: "handshake") { device in try self.allocate(device) }
    for (index, size) in Self.copySizes.enumerated() {
      copyStep(index, size)
    }
    step("copy device to device", needs: d2d, from: "alloc") { buffers in try self.deviceToDevice(buffers) }
    step("memset", needs: memsetBuffer, from: "alloc") { buffer in try self.memset(buffer) }
    step("load module", needs: kernelBuffers, from: "alloc") { _ in try self.loadModule() }
    for kernel in SelftestKernel.allCases {
      step("kernel \(kernel.rawValue)", needs: functions[kernel], from: "load module") { function in
        try self.runKernel(kernel, function)
      }
    }
    step("free", needs: device, from: "handshake") { device in try self.freeAll(device) }
    step("accounting", needs: device, from: "handshake") { device in try self.accounting(device) }
  }

  // MARK: Steps

  private func handshake() {
    step("handshake", needs: (), from: "") { _ in
      let device = try Device.open(self.spec, options: openOptions(timeout: self.timeout, threads: self.threads))
      self.device = device
      let i = device.info
      return
        "\(i.identity.name), protocol \(i.protocolVersion.major).\(i.protocolVersion.minor), "
        + "\(i.queuePairs) of \(i.queuePairsOnDevice) queue pairs, via \(i.backend)"
    }
  }

  private func allocate(_ device: Device) throws -> String {
    func alloc(_ bytes: Int) throws -> DevicePointer {
      let p = try device.allocate(bytes)
      allocated.append(p)
      return p
    }
    var total = 0
    func counted(_ bytes: Int) throws -> DevicePointer {
      total += bytes
      return try alloc(bytes)
    }
    for _ in 0..<threads {
      copyBuffers.append(try Self.copySizes.map { try counted($0.bytes) })
    }
    d2d = (try counted(Self.d2dBytes), try counted(Self.d2dBytes))
    memsetBuffer = try counted(Self.memsetBytes)
    let n = Self.vectorLength * 4
    let (m, nn, k) = Self.matmul
    kernelBuffers = KernelBuffers(
      a: try counted(n), b: try counted(n), c: try counted(n), out: try counted(4),
      ma: try counted(m * k * 4), mb: try counted(k * nn * 4), mc: try counted(m * nn * 4))
    let stats = try device.statistics(.process)
    guard stats.bytesAllocated >= UInt64(total) else {
      throw StepFailure(
        "\(allocated.count) buffers of \(bytesText(UInt64(total))), but the device counts \(stats.bytesAllocated) bytes for this process"
      )
    }
    return
      "\(allocated.count) buffers, \(bytesText(UInt64(total))); the device counts \(bytesText(stats.bytesAllocated)) for this process"
  }

  private func copyStep(_ index: Int, _ size: (bytes: Int, name: String)) {
    let name = "copy \(size.name)"
    guard let device, copyBuffers.count == threads else {
      return skip(name, device == nil ? "handshake did not pass" : "alloc did not pass")
    }
    var h2d: Double?
    var d2h: Double?
    step(name, needs: device, from: "handshake") { device in
      let buffers = self.copyBuffers.map { $0[index] }
      let outcomes = Self.onThreads(self.threads) { t in
        Self.copyRoundTrip(device, buffers[t], bytes: size.bytes, seed: UInt64(t) &* 0x9E37_79B9 &+ UInt64(index))
      }
      var failures: [String] = []
      for (t, o) in outcomes.enumerated() {
        if let e = o.error { failures.append(self.threads > 1 ? "thread \(t): \(e)" : e) }
      }
      if !failures.isEmpty { throw StepFailure(failures.joined(separator: "; ")) }
      // Rates over all threads: total bytes over the slowest thread's time.
      let bytes = Double(size.bytes * self.threads)
      h2d = bytes / Double(max(1, outcomes.map(\.h2dNanoseconds).max() ?? 1)) * 1000
      d2h = bytes / Double(max(1, outcomes.map(\.d2hNanoseconds).max() ?? 1)) * 1000
      let checksum = String(outcomes[0].checksum, radix: 16)
      var text = "H2D \(rateText(h2d!)), D2H \(rateText(d2h!))"
      text += self.threads > 1 ? ", \(self.threads) threads, checksums match" : ", FNV-1a \(checksum) matches"
      return text
    }
    if let h2d, let d2h, var last = results.popLast() {
      last.h2dMBps = h2d
      last.d2hMBps = d2h
      results.append(last)
    }
  }

  struct CopyOutcome: Sendable {
    var h2dNanoseconds: UInt64 = 0
    var d2hNanoseconds: UInt64 = 0
    var checksum: UInt64 = 0
    var error: String?
  }

  /// Random bytes to the device and back into a buffer that held their complement.
  static func copyRoundTrip(_ device: Device, _ buffer: DevicePointer, bytes: Int, seed: UInt64) -> CopyOutcome {
    let source = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    let back = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    defer {
      source.deallocate()
      back.deallocate()
    }
    fillRandom(source, seed: seed)
    complement(source, into: back)
    var outcome = CopyOutcome()
    do {
      let t0 = vgpu_monotonic_ns()
      try device.copy(to: buffer, from: UnsafeRawBufferPointer(source))
      let t1 = vgpu_monotonic_ns()
      try device.copy(from: buffer, into: back)
      let t2 = vgpu_monotonic_ns()
      outcome.h2dNanoseconds = t1 - t0
      outcome.d2hNanoseconds = t2 - t1
    } catch {
      outcome.error = error.description
      return outcome
    }
    let expected = fnv1a(UnsafeRawBufferPointer(source))
    let got = fnv1a(UnsafeRawBufferPointer(back))
    outcome.checksum = got
    if expected != got {
      let at = firstDifference(UnsafeRawBufferPointer(source), UnsafeRawBufferPointer(back)) ?? -1
      outcome.error =
        "checksum \(String(got, radix: 16)) after the round trip, \(String(expected, radix: 16)) sent; first difference at byte \(at)"
    }
    return outcome
  }

  private func deviceToDevice(_ buffers: (source: DevicePointer, destination: DevicePointer)) throws -> String {
    guard let device else { throw StepFailure("no device") }
    let bytes = Self.d2dBytes
    let data = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    let back = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    defer {
      data.deallocate()
      back.deallocate()
    }
    fillRandom(data, seed: 0xD2D)
    try device.copy(to: buffers.source, from: UnsafeRawBufferPointer(data))
    try device.memset(buffers.destination, value: 0, count: bytes)
    let t0 = vgpu_monotonic_ns()
    try device.copy(to: buffers.destination, from: buffers.source, count: bytes)
    let elapsed = vgpu_monotonic_ns() - t0
    try device.copy(from: buffers.destination, into: back)
    let expected = fnv1a(UnsafeRawBufferPointer(data))
    let got = fnv1a(UnsafeRawBufferPointer(back))
    guard expected == got else {
      throw StepFailure("checksum \(String(got, radix: 16)) after the copy, \(String(expected, radix: 16)) expected")
    }
    return "\(exactBytesText(bytes)), \(rateText(Double(bytes) / Double(max(1, elapsed)) * 1000)), checksums match"
  }

  /// memset D32 over the buffer, D16 over a part, D8 over a smaller part: one read checks all three.
  private func memset(_ buffer: DevicePointer) throws -> String {
    guard let device else { throw StepFailure("no device") }
    let bytes = Self.memsetBytes
    let words16 = 1001
    let bytes8 = 777
    try device.memset(buffer, value: 0xDEAD_BEEF, elementSize: 4, count: bytes / 4)
    try device.memset(buffer + 2, value: 0x1234, elementSize: 2, count: words16)
    try device.memset(buffer + 5, value: 0x5A, elementSize: 1, count: bytes8)
    var expected = [UInt8](repeating: 0, count: bytes)
    for i in 0..<bytes { expected[i] = UInt8(truncatingIfNeeded: UInt32(0xDEAD_BEEF) >> (8 * UInt32(i % 4))) }
    for i in 0..<words16 {
      expected[2 + 2 * i] = 0x34
      expected[3 + 2 * i] = 0x12
    }
    for i in 5..<(5 + bytes8) { expected[i] = 0x5A }
    let got = try device.read(buffer, count: bytes)
    let difference = got.withUnsafeBytes { g in expected.withUnsafeBytes { e in firstDifference(g, e) } }
    if let at = difference {
      throw StepFailure(
        "byte \(at) is 0x\(String(got[at], radix: 16)), expected 0x\(String(expected[at], radix: 16))")
    }
    return "D32, D16 and D8 over \(exactBytesText(bytes)) match"
  }

  /// Loads the PTX and gets each kernel, with the parameter layout the device reports for it.
  private func loadModule() throws -> String {
    guard let device else { throw StepFailure("no device") }
    let names = SelftestKernel.allCases.map(\.rawValue)
    guard Set(SelftestKernels.names) == Set(names) else {
      throw StepFailure("the PTX has kernels \(SelftestKernels.names), the selftest checks \(names)")
    }
    let image = Array(SelftestKernels.ptx.utf8)
    let module = try device.loadModule(image)
    self.module = module
    for kernel in SelftestKernel.allCases {
      let f = try device.function(kernel.rawValue, in: module)
      guard let layout = f.layout else {
        throw StepFailure("the device did not report \(kernel.rawValue)'s parameter layout (feature functionInfo)")
      }
      guard layout.slots.map(\.size) == kernel.parameterSizes else {
        throw StepFailure(
          "\(kernel.rawValue)'s parameters are \(layout.slots.map(\.size)) bytes, expected \(kernel.parameterSizes)")
      }
      functions[kernel] = f
    }
    return "\(functions.count) kernels from \(bytesText(UInt64(image.count))) of PTX: " + names.joined(separator: ", ")
  }

  private func runKernel(_ kernel: SelftestKernel, _ function: FunctionHandle) throws -> String {
    guard let device, let k = kernelBuffers else { throw StepFailure("no buffers") }
    guard let layout = function.layout else { throw StepFailure("no parameter layout") }
    let n = Self.vectorLength
    var rng = SplitMix64(seed: 0x5EED &+ UInt64(kernel.rawValue.utf8.count))
    func randomFloats(_ count: Int) -> [Float] { (0..<count).map { _ in rng.nextFloat() } }
    func upload(_ values: [Float], to p: DevicePointer) throws {
      try values.withUnsafeBytes { b in
        try Result { () throws(VGPUError) in try device.copy(to: p, from: b) }.get()
      }
    }
    func download(_ p: DevicePointer, _ count: Int) throws -> [Float] {
      var out = [Float](repeating: .nan, count: count)
      try out.withUnsafeMutableBytes { b in
        try Result { () throws(VGPUError) in try device.copy(from: p, into: b) }.get()
      }
      return out
    }
    /// Packs the arguments by the layout the device reported and launches `grid` blocks of `block`.
    func launch(_ args: [KernelArgument], grid: Dimensions, block: Dimensions) throws {
      let parameters: [UInt8]
      do { parameters = try layout.pack(args) } catch { throw StepFailure("\(kernel.rawValue): \(error)") }
      try device.launch(function, grid: grid, block: block, parameters: parameters)
    }
    /// One thread per element, in blocks of `threadsPerBlock`.
    func launch(_ args: [KernelArgument], elements: Int) throws {
      let blocks = (elements + Self.threadsPerBlock - 1) / Self.threadsPerBlock
      try launch(args, grid: Dimensions(UInt32(blocks)), block: Dimensions(UInt32(Self.threadsPerBlock)))
    }

    let got: [Float]
    let expected: [Float]
    let what: String
    switch kernel {
    case .fill:
      try upload(randomFloats(n), to: k.c)
      let value: Float = 3.25
      try launch([.pointer(k.c.address), .f32(value), .u32(UInt32(n))], elements: n)
      got = try download(k.c, n)
      expected = [Float](repeating: value, count: n)
      what = "\(n) elements in blocks of \(Self.threadsPerBlock),"
    case .vectorAdd:
      let a = randomFloats(n)
      let b = randomFloats(n)
      try upload(a, to: k.a)
      try upload(b, to: k.b)
      try launch([.pointer(k.a.address), .pointer(k.b.address), .pointer(k.c.address), .u32(UInt32(n))], elements: n)
      got = try download(k.c, n)
      expected = (0..<n).map { a[$0] + b[$0] }
      what = "\(n) elements in blocks of \(Self.threadsPerBlock),"
    case .saxpy:
      let x = randomFloats(n)
      let y = randomFloats(n)
      let alpha: Float = -1.75
      try upload(x, to: k.a)
      try upload(y, to: k.b)
      try launch([.f32(alpha), .pointer(k.a.address), .pointer(k.b.address), .u32(UInt32(n))], elements: n)
      got = try download(k.b, n)
      expected = (0..<n).map { alpha * x[$0] + y[$0] }
      what = "\(n) elements in blocks of \(Self.threadsPerBlock),"
    case .scale:
      let x = randomFloats(n)
      let alpha: Float = 0.3
      try upload(x, to: k.a)
      try launch([.pointer(k.a.address), .f32(alpha), .u32(UInt32(n))], elements: n)
      got = try download(k.a, n)
      expected = x.map { $0 * alpha }
      what = "\(n) elements in blocks of \(Self.threadsPerBlock),"
    case .reduceSum:
      let x = randomFloats(n)
      try upload(x, to: k.a)
      try upload([.nan], to: k.out)
      // One block: the kernel's order of additions is fixed, and so is the sum.
      let threads = Self.threadsPerBlock
      try launch(
        [.pointer(k.a.address), .pointer(k.out.address), .u32(UInt32(n))], grid: Dimensions(1),
        block: Dimensions(UInt32(threads)))
      got = try download(k.out, 1)
      // The kernel's order: thread t sums x[t], x[t + threads], … in f64, then the
      // block adds the partial sums pairwise, halving the stride each round.
      var partial = [Double](repeating: 0, count: threads)
      for (i, v) in x.enumerated() { partial[i % threads] += Double(v) }
      var stride = threads / 2
      while stride > 0 {
        for t in 0..<stride { partial[t] += partial[t + stride] }
        stride /= 2
      }
      expected = [Float(partial[0])]
      what = "sum of \(n) elements in one block of \(threads) (\(expected[0])),"
    case .matmul:
      let (m, nn, kk) = Self.matmul
      let a = randomFloats(m * kk)
      let b = randomFloats(kk * nn)
      try upload(a, to: k.ma)
      try upload(b, to: k.mb)
      try launch(
        [
          .pointer(k.ma.address), .pointer(k.mb.address), .pointer(k.mc.address), .u32(UInt32(m)), .u32(UInt32(nn)),
          .u32(UInt32(kk)),
        ], grid: Dimensions(UInt32((nn + 15) / 16), UInt32((m + 15) / 16)), block: Dimensions(16, 16))
      got = try download(k.mc, m * nn)
      var c = [Float](repeating: 0, count: m * nn)
      for row in 0..<m {
        for column in 0..<nn {
          var acc: Float = 0
          for l in 0..<kk { acc += a[row * kk + l] * b[l * nn + column] }
          c[row * nn + column] = acc
        }
      }
      expected = c
      what = "\(m)×\(kk) · \(kk)×\(nn) in 16×16 blocks,"
    }
    if let i = (0..<expected.count).first(where: { got[$0].bitPattern != expected[$0].bitPattern }) {
      throw StepFailure("element \(i) is \(got[i]), the CPU reference says \(expected[i])")
    }
    return "\(what) equal to the CPU reference"
  }

  private func freeAll(_ device: Device) throws -> String {
    var errors: [String] = []
    if let module {
      do { try device.unloadModule(module) } catch { errors.append(error.description) }
      self.module = nil
      functions = [:]
    }
    let count = allocated.count
    for p in allocated {
      do { try device.free(p) } catch { errors.append(error.description) }
    }
    allocated = []
    copyBuffers = []
    d2d = nil
    memsetBuffer = nil
    kernelBuffers = nil
    if !errors.isEmpty { throw StepFailure(errors.joined(separator: "; ")) }
    return "\(count) buffers and the module"
  }

  private func accounting(_ device: Device) throws -> String {
    let m = try device.memoryInfo()
    let mine = try device.statistics(.process)
    let state = "\(bytesText(m.free)) free of \(bytesText(m.total)), this process holds \(mine.bytesAllocated) bytes"
    guard mine.bytesAllocated == 0 else { throw StepFailure(state) }
    if m.free == m.total { return state }
    // Other clients of a shared device may hold memory, and may be allocating
    // right now: the device's own count must then explain every byte in use.
    // Two commands cannot be read at one instant: retry while the others move.
    var accounted: UInt64 = 0
    for _ in 0..<20 {
      let before = try device.memoryInfo().free
      accounted = try device.statistics(.device).bytesAllocated
      let after = try device.memoryInfo().free
      if before == after && accounted == m.total - after {
        return state + "; other processes hold \(bytesText(m.total - after)), as the device accounts"
      }
      usleep(10_000)
    }
    throw StepFailure(
      state + ", but the device accounts \(bytesText(accounted)) allocated; \(bytesText(startFree)) were free before")
  }

  // MARK: Running steps

  /// Runs a step that needs `prerequisite`, which step `source` makes; skips it when that is nil.
  private func step<T>(_ name: String, needs prerequisite: T?, from source: String, _ body: (T) throws -> String) {
    guard let prerequisite else { return skip(name, "\(source) did not pass") }
    let ticker = progress ? Ticker(name) : nil
    let started = vgpu_monotonic_ns()
    var result: StepResult
    do {
      let detail = try body(prerequisite)
      result = StepResult(name: name, status: .pass, seconds: 0, detail: detail)
    } catch {
      result = StepResult(name: name, status: .fail, seconds: 0, detail: "\(error)")
    }
    result.seconds = Double(vgpu_monotonic_ns() - started) / 1e9
    ticker?.stop()
    record(result)
  }

  private func skip(_ name: String, _ why: String) {
    record(StepResult(name: name, status: .skip, seconds: 0, detail: why))
  }

  private func record(_ r: StepResult) {
    results.append(r)
    guard live else { return }
    let time = r.status == .skip ? "-" : durationText(nanoseconds: r.seconds * 1e9)
    print(padded(r.name, Self.nameWidth) + padded(r.status.rawValue, 7) + padded(time, 11) + r.detail)
  }

  /// Runs `body(t)` for t in 0..<n, each on its own thread (on this one when n is 1).
  static func onThreads<R: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) -> R) -> [R] {
    if n == 1 { return [body(0)] }
    let results = Mutex<[Int: R]>([:])
    let done = DispatchSemaphore(value: 0)
    for t in 0..<n {
      let thread = Thread {
        let r = body(t)
        results.withLock { $0[t] = r }
        done.signal()
      }
      thread.stackSize = 1 << 20
      thread.start()
    }
    for _ in 0..<n { done.wait() }
    return results.withLock { r in (0..<n).map { r[$0]! } }
  }
}

/// The kernels of SelftestKernels (tools/selftest-kernels.cu says what each
/// computes), in the order the selftest runs them.
enum SelftestKernel: String, CaseIterable {
  case fill
  case vectorAdd = "vector_add"
  case saxpy
  case scale
  case reduceSum = "reduce_sum"
  case matmul

  /// Each parameter's size in bytes (pointers 8, float and unsigned 4): what
  /// the device's layout must say before anything is packed by it.
  var parameterSizes: [UInt32] {
    switch self {
    case .fill, .scale: [8, 4, 4]
    case .vectorAdd: [8, 8, 8, 4]
    case .saxpy: [4, 8, 8, 4]
    case .reduceSum: [8, 8, 4]
    case .matmul: [8, 8, 8, 4, 4, 4]
    }
  }
}

/// Shows "step … 3 s" on a terminal while a step runs longer than a second.
final class Ticker: @unchecked Sendable {
  private let stopped = Atomic<Bool>(false)
  private let finished = DispatchSemaphore(value: 0)

  init(_ name: String) {
    let thread = Thread { [self] in
      let started = vgpu_monotonic_ns()
      var shown = 0
      while !stopped.load(ordering: .acquiring) {
        usleep(50_000)
        let seconds = Int((vgpu_monotonic_ns() - started) / 1_000_000_000)
        if seconds > shown, !stopped.load(ordering: .acquiring) {
          FileHandle.standardOutput.write(Data("\r\(name) … \(seconds) s".utf8))
          shown = seconds
        }
      }
      if shown > 0 { FileHandle.standardOutput.write(Data("\r\u{1B}[K".utf8)) }
      finished.signal()
    }
    thread.start()
  }

  func stop() {
    stopped.store(true, ordering: .releasing)
    finished.wait()
  }
}

// MARK: Data and checksums

/// SplitMix64: fast, seedable, good enough to make test data.
struct SplitMix64 {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  /// A float in [-1, 1), exactly representable (24 random bits).
  mutating func nextFloat() -> Float { Float(Int32(truncatingIfNeeded: next() >> 40) - (1 << 23)) / Float(1 << 23) }
}

/// Fills a buffer with random bytes, seeded from the system's generator and `seed`.
func fillRandom(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
  var system = SystemRandomNumberGenerator()
  var rng = SplitMix64(seed: system.next() ^ seed)
  let words = buffer.count / 8
  for i in 0..<words { buffer.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) }
  var last = rng.next()
  for i in (words * 8)..<buffer.count {
    buffer[i] = UInt8(truncatingIfNeeded: last)
    last >>= 8
  }
}

/// `back[i] = ~source[i]`: a buffer that differs from `source` in every byte.
func complement(_ source: UnsafeMutableRawBufferPointer, into back: UnsafeMutableRawBufferPointer) {
  let words = source.count / 8
  for i in 0..<words {
    back.storeBytes(of: ~source.load(fromByteOffset: i * 8, as: UInt64.self), toByteOffset: i * 8, as: UInt64.self)
  }
  for i in (words * 8)..<source.count { back[i] = ~source[i] }
}

/// The first offset where two buffers differ, or nil.
func firstDifference(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int? {
  let count = min(a.count, b.count)
  if count > 0, memcmp(a.baseAddress!, b.baseAddress!, count) == 0 { return a.count == b.count ? nil : count }
  return (0..<count).first { a[$0] != b[$0] } ?? (a.count == b.count ? nil : count)
}

/// `12.3 MB/s`, 10⁶ bytes per second.
func rateText(_ mbPerSecond: Double) -> String {
  String(format: mbPerSecond >= 100 ? "%.0f MB/s" : mbPerSecond >= 1 ? "%.1f MB/s" : "%.3f MB/s", mbPerSecond)
}

/// FNV-1a, 64-bit, over 8-byte little-endian words and then the remaining bytes.
func fnv1a(_ buffer: UnsafeRawBufferPointer) -> UInt64 {
  var hash: UInt64 = 0xcbf2_9ce4_8422_2325
  let prime: UInt64 = 0x100_0000_01b3
  let words = buffer.count / 8
  for i in 0..<words {
    hash = (hash ^ UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))) &* prime
  }
  for i in (words * 8)..<buffer.count { hash = (hash ^ UInt64(buffer[i])) &* prime }
  return hash
}
