import SelftestKernels
import TestSupport
import Testing
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// The project's kernels (SelftestKernels, PTX from tools/selftest-kernels.cu)
/// through the client API on `sim`, packed by the layout the device reports,
/// each against a CPU reference, bit for bit.
@Suite(.serialized) struct KernelLaunchTests {
  let device: Device
  let module: ModuleHandle

  init() throws {
    device = try Device.open("sim", options: .simulator())
    module = try device.loadModule(Array(SelftestKernels.ptx.utf8))
  }

  func floats(_ n: Int, seed: UInt64) -> [Float] {
    randomBytes(n * 4, seed: seed).withUnsafeBytes { raw in
      (0..<n).map { Float(raw.load(fromByteOffset: $0 * 4, as: UInt32.self) % 2000) / 100 - 10 }
    }
  }

  func upload(_ values: [Float]) throws -> DevicePointer {
    let p = try device.allocate(values.count * 4)
    try values.withUnsafeBytes { try device.copy(to: p, from: $0) }
    return p
  }

  func download(_ p: DevicePointer, _ n: Int) throws -> [Float] {
    var out = [Float](repeating: 0, count: n)
    try out.withUnsafeMutableBytes { try device.copy(from: p, into: $0) }
    return out
  }

  /// Launches `kernel` on `grid` blocks of `block`, its arguments packed by the reported layout.
  func run(_ kernel: String, _ args: [KernelArgument], grid: Dimensions, block: Dimensions) throws {
    let f = try device.function(kernel, in: module)
    let layout = try #require(f.layout)
    #expect(layout.slots.map(\.size) == args.map { UInt32($0.size) })
    try device.launch(f, grid: grid, block: block, parameters: layout.pack(args))
  }

  /// One thread per element, 256 to a block.
  func run(_ kernel: String, _ args: [KernelArgument], threads: UInt32) throws {
    let block: UInt32 = 256
    try run(kernel, args, grid: Dimensions((threads + block - 1) / block), block: Dimensions(block))
  }

  let n = 10_000

  @Test func fill() throws {
    let p = try device.allocate(n * 4)
    try run("fill", [.pointer(p.address), .f32(3.5), .u32(UInt32(n))], threads: UInt32(n))
    #expect(try download(p, n) == [Float](repeating: 3.5, count: n))
  }

  @Test func vectorAdd() throws {
    let a = floats(n, seed: 1)
    let b = floats(n, seed: 2)
    let (pa, pb, pc) = (try upload(a), try upload(b), try device.allocate(n * 4))
    try run(
      "vector_add", [.pointer(pa.address), .pointer(pb.address), .pointer(pc.address), .u32(UInt32(n))],
      threads: UInt32(n))
    #expect(try download(pc, n) == zip(a, b).map { $0 + $1 })
  }

  @Test func saxpy() throws {
    let x = floats(n, seed: 3)
    let y = floats(n, seed: 4)
    let (px, py) = (try upload(x), try upload(y))
    try run("saxpy", [.f32(2.5), .pointer(px.address), .pointer(py.address), .u32(UInt32(n))], threads: UInt32(n))
    #expect(try download(py, n) == zip(x, y).map { 2.5 * $0 + $1 })
  }

  @Test func scale() throws {
    let x = floats(n, seed: 5)
    let px = try upload(x)
    try run("scale", [.pointer(px.address), .f32(-0.5), .u32(UInt32(n))], threads: UInt32(n))
    #expect(try download(px, n) == x.map { $0 * -0.5 })
  }

  @Test func reduceSum() throws {
    let x = floats(n, seed: 6)
    let (px, out) = (try upload(x), try device.allocate(4))
    // One block of 256: thread t sums x[t], x[t + 256], … in f64, then the
    // block adds the partial sums pairwise (tools/selftest-kernels.cu).
    try run(
      "reduce_sum", [.pointer(px.address), .pointer(out.address), .u32(UInt32(n))], grid: Dimensions(1),
      block: Dimensions(256))
    var partial = [Double](repeating: 0, count: 256)
    for (i, v) in x.enumerated() { partial[i % 256] += Double(v) }
    var stride = 128
    while stride > 0 {
      for t in 0..<stride { partial[t] += partial[t + stride] }
      stride /= 2
    }
    #expect(try download(out, 1) == [Float(partial[0])])
  }

  @Test func matmul() throws {
    let (m, nn, k) = (33, 17, 29)
    let a = floats(m * k, seed: 7)
    let b = floats(k * nn, seed: 8)
    let (pa, pb, pc) = (try upload(a), try upload(b), try device.allocate(m * nn * 4))
    try run(
      "matmul",
      [
        .pointer(pa.address), .pointer(pb.address), .pointer(pc.address), .u32(UInt32(m)), .u32(UInt32(nn)),
        .u32(UInt32(k)),
      ],
      grid: Dimensions(UInt32((nn + 7) / 8), UInt32((m + 7) / 8)), block: Dimensions(8, 8))
    var expected = [Float](repeating: 0, count: m * nn)
    for i in 0..<m {
      for j in 0..<nn {
        var acc: Float = 0
        for l in 0..<k { acc += a[i * k + l] * b[l * nn + j] }
        expected[i * nn + j] = acc
      }
    }
    #expect(try download(pc, m * nn) == expected)
  }

  @Test func launchErrorsAreTyped() throws {
    let f = try device.function("vector_add", in: module)
    let layout = try #require(f.layout)
    let small = try device.allocate(256)
    // A thread past its allocation: CUDA's 700, and the device keeps serving.
    let past = try layout.pack([.pointer(small.address), .pointer(small.address), .pointer(small.address), .u32(128)])
    do {
      try device.launch(f, grid: Dimensions(1), block: Dimensions(128), parameters: past)
      Issue.record("launch over a 256-byte buffer succeeded")
    } catch {
      #expect(error.status == .illegalAddress)
      #expect(error.description.contains("launch"))
    }
    do {
      try device.launch(f, grid: Dimensions(1), block: Dimensions(1), parameters: [1, 2, 3])
      Issue.record("launch with 3 parameter bytes succeeded")
    } catch {
      #expect(error.status == .invalidParameters)
      #expect(error.description.contains("\(layout.bufferSize) bytes of parameters, 3 were given"))
    }
    #expect(throws: KernelArgumentError.self) { try layout.pack([.pointer(small.address)]) }
    #expect(throws: KernelArgumentError.self) {
      try layout.pack([.f32(1), .pointer(small.address), .pointer(small.address), .u32(1)])
    }
    #expect(throws: VGPUError.self) { try device.function("no_such_kernel", in: module) }
    try device.nop()
  }

  @Test func streamsAndEvents() throws {
    let s = try device.createStream()
    let start = try device.createEvent()
    let end = try device.createEvent()
    try device.record(start, on: s)
    let p = try device.allocate(1 << 20)
    let f = try device.function("fill", in: module)
    try device.launch(
      f, grid: Dimensions(1024), block: Dimensions(256),
      parameters: try #require(f.layout).pack([.pointer(p.address), .f32(1), .u32(1 << 18)]), stream: s)
    try device.record(end, on: s)
    try device.synchronize(s)
    #expect(try device.query(end))
    #expect(try device.elapsed(from: start, to: end) > 0)
    try device.destroyEvent(start)
    try device.destroyEvent(end)
    try device.destroyStream(s)
    #expect(throws: VGPUError.self) { try device.synchronize(s) }
    try device.synchronize()
  }
}
