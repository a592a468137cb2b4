import Testing

@testable import VGPUDevice

/// Device memory for tests: one byte buffer whose device addresses start at `baseAddress`,
/// with a list of valid [address, address + size) regions standing in for live allocations.
final class TestMemory: KernelMemory {
  let baseAddress: UInt64 = 0x7_0000_0000
  let bytes: UnsafeMutableRawBufferPointer
  var regions: [(address: UInt64, size: UInt64)] = []
  var cursor: UInt64 = 0

  init(capacity: Int = 1 << 22) {
    bytes = .allocate(byteCount: capacity, alignment: 64)
    bytes.initializeMemory(as: UInt8.self, repeating: 0xCD)
  }

  deinit { bytes.deallocate() }

  /// Places `floats` in a new region; `misalign` shifts it off 4-byte alignment.
  func put(_ floats: [Float], misalign: UInt64 = 0) -> UInt64 {
    let address = reserve(UInt64(floats.count * 4), misalign: misalign)
    for (i, f) in floats.enumerated() {
      bytes.storeBytes(of: f, toByteOffset: Int(address - baseAddress) + i * 4, as: Float.self)
    }
    return address
  }

  func reserve(_ size: UInt64, misalign: UInt64 = 0) -> UInt64 {
    cursor = (cursor + 255) / 256 * 256 + misalign
    let address = baseAddress + cursor
    regions.append((address, size))
    cursor += size + 256  // a gap, so overruns are not silently inside another region
    return address
  }

  func floats(_ address: UInt64, _ count: Int) -> [Float] {
    (0..<count).map { bytes.loadUnaligned(fromByteOffset: Int(address - baseAddress) + $0 * 4, as: Float.self) }
  }

  func resolve(_ address: UInt64, byteCount: UInt64) -> UnsafeMutableRawPointer? {
    #expect(byteCount > 0)
    for r in regions where address >= r.address && address - r.address < r.size {
      guard byteCount <= r.size - (address - r.address) else { return nil }
      return bytes.baseAddress! + Int(address - baseAddress)
    }
    return nil
  }
}

func randomFloats(_ count: Int, using rng: inout SplitMix64) -> [Float] {
  (0..<count).map { _ in
    Float(Int(rng.next(upperBound: 2001 as UInt64)) - 1000) / 64 + Float.random(in: 0..<1, using: &rng)
  }
}

func launch(_ kernel: BuiltinKernel, _ args: [KernelArgument], threads: UInt64, _ memory: TestMemory)
  throws(KernelError)
{
  try run(kernel, BuiltinKernel.pack(kernel, args), threads: threads, memory)
}

func run(_ kernel: BuiltinKernel, _ params: [UInt8], threads: UInt64, _ memory: TestMemory) throws(KernelError) {
  // Array.withUnsafeBytes rethrows untyped errors, so carry the typed one out in a Result.
  let result = params.withUnsafeBytes { raw in
    Result { () throws(KernelError) in try kernel.run(parameters: raw, threads: threads, memory: memory) }
  }
  try result.get()
}

@Suite struct KernelsTests {
  @Test func namesAndParameterLayouts() {
    #expect(BuiltinKernel.allCases.map(\.rawValue) == ["fill", "vector_add", "saxpy", "scale", "reduce_sum", "matmul"])
    #expect(BuiltinKernel.fill.parameterOffsets == [0, 8, 12])
    #expect(BuiltinKernel.vectorAdd.parameterOffsets == [0, 8, 16, 24])
    #expect(BuiltinKernel.saxpy.parameterOffsets == [0, 8, 16, 24])
    #expect(BuiltinKernel.scale.parameterOffsets == [0, 8, 12])
    #expect(BuiltinKernel.reduceSum.parameterOffsets == [0, 8, 16])
    #expect(BuiltinKernel.matmul.parameterOffsets == [0, 8, 16, 24, 28, 32])
    for kernel in BuiltinKernel.allCases {
      // The constant sizes agree with the layout rule: last offset + size, rounded up to 8.
      let end = kernel.parameterOffsets.last! + kernel.parameters.last!.size
      #expect(kernel.parameterBufferSize == (end + 7) / 8 * 8, "\(kernel)")
      for (offset, parameter) in zip(kernel.parameterOffsets, kernel.parameters) {
        #expect(offset % parameter.size == 0)
      }
    }
  }

  @Test func packWritesLittleEndianAtTheOffsets() {
    let bytes = BuiltinKernel.pack(
      .saxpy, [.f32(1.5), .pointer(0x0102_0304_0506_0708), .pointer(9), .u32(0xAABB_CCDD)])
    #expect(bytes.count == 32)
    #expect(Array(bytes[0..<4]) == [0x00, 0x00, 0xC0, 0x3F])
    #expect(Array(bytes[4..<8]) == [0, 0, 0, 0])
    #expect(Array(bytes[8..<16]) == [8, 7, 6, 5, 4, 3, 2, 1])
    #expect(Array(bytes[24..<28]) == [0xDD, 0xCC, 0xBB, 0xAA])
  }

  @Test func fill() throws {
    let memory = TestMemory()
    let dst = memory.reserve(1000 * 4, misalign: 1)
    try launch(.fill, [.pointer(dst), .f32(3.25), .u32(1000)], threads: 1024, memory)
    #expect(memory.floats(dst, 1000).allSatisfy { $0 == 3.25 })
  }

  @Test func vectorAdd() throws {
    var rng = SplitMix64(state: 11)
    let memory = TestMemory()
    let a = randomFloats(777, using: &rng)
    let b = randomFloats(777, using: &rng)
    let pa = memory.put(a)
    let pb = memory.put(b, misalign: 2)
    let pc = memory.reserve(777 * 4, misalign: 3)
    try launch(.vectorAdd, [.pointer(pa), .pointer(pb), .pointer(pc), .u32(777)], threads: 777, memory)
    #expect(memory.floats(pc, 777) == zip(a, b).map { $0 + $1 })
  }

  @Test func saxpy() throws {
    var rng = SplitMix64(state: 12)
    let memory = TestMemory()
    let x = randomFloats(500, using: &rng)
    let y = randomFloats(500, using: &rng)
    let px = memory.put(x)
    let py = memory.put(y, misalign: 1)
    try launch(.saxpy, [.f32(-2.5), .pointer(px), .pointer(py), .u32(500)], threads: 4096, memory)
    #expect(memory.floats(py, 500) == zip(x, y).map { -2.5 * $0 + $1 })
  }

  @Test func scale() throws {
    var rng = SplitMix64(state: 13)
    let memory = TestMemory()
    let x = randomFloats(300, using: &rng)
    let px = memory.put(x, misalign: 2)
    try launch(.scale, [.pointer(px), .f32(0.75), .u32(300)], threads: 300, memory)
    #expect(memory.floats(px, 300) == x.map { $0 * 0.75 })
  }

  @Test func reduceSum() throws {
    var rng = SplitMix64(state: 14)
    let memory = TestMemory()
    let x = randomFloats(10_000, using: &rng)
    let px = memory.put(x, misalign: 1)
    let out = memory.reserve(4)
    try launch(.reduceSum, [.pointer(px), .pointer(out), .u32(10_000)], threads: 10_000, memory)
    var sum = 0.0
    for v in x { sum += Double(v) }
    #expect(memory.floats(out, 1) == [Float(sum)])
    // n = 0 writes 0; threads = 0 writes nothing.
    try launch(.reduceSum, [.pointer(px), .pointer(out), .u32(0)], threads: 1, memory)
    #expect(memory.floats(out, 1) == [0])
    memory.bytes.storeBytes(of: 42, toByteOffset: Int(out - memory.baseAddress), as: Float.self)
    try launch(.reduceSum, [.pointer(px), .pointer(out), .u32(10_000)], threads: 0, memory)
    #expect(memory.floats(out, 1) == [42])
  }

  @Test(arguments: [(1, 1, 1), (3, 5, 7), (17, 9, 33), (8, 8, 0), (64, 48, 40)])
  func matmul(m: Int, n: Int, k: Int) throws {
    var rng = SplitMix64(state: UInt64(m * 10_000 + n * 100 + k))
    let memory = TestMemory()
    let a = randomFloats(m * k, using: &rng)
    let b = randomFloats(k * n, using: &rng)
    let pa = memory.put(a, misalign: 1)
    let pb = memory.put(b)
    let pc = memory.reserve(UInt64(m * n * 4), misalign: 2)
    try launch(
      .matmul, [.pointer(pa), .pointer(pb), .pointer(pc), .u32(UInt32(m)), .u32(UInt32(n)), .u32(UInt32(k))],
      threads: UInt64(m * n), memory)
    var expected = [Float](repeating: 0, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var acc: Float = 0
        for l in 0..<k { acc += a[i * k + l] * b[l * n + j] }
        expected[i * n + j] = acc
      }
    }
    #expect(memory.floats(pc, m * n) == expected)
  }

  @Test func matmulWithFewerThreadsComputesARowMajorPrefix() throws {
    var rng = SplitMix64(state: 15)
    let memory = TestMemory()
    let (m, n, k) = (4, 5, 3)
    let a = randomFloats(m * k, using: &rng)
    let b = randomFloats(k * n, using: &rng)
    let pa = memory.put(a)
    let pb = memory.put(b)
    let pc = memory.put([Float](repeating: -1, count: m * n))
    try launch(.matmul, [.pointer(pa), .pointer(pb), .pointer(pc), .u32(4), .u32(5), .u32(3)], threads: 7, memory)
    let c = memory.floats(pc, m * n)
    for index in 0..<(m * n) {
      let (i, j) = (index / n, index % n)
      var acc: Float = 0
      for l in 0..<k { acc += a[i * k + l] * b[l * n + j] }
      #expect(c[index] == (index < 7 ? acc : -1))
    }
  }

  @Test func matmulOnlyNeedsTheRowsItReads() throws {
    // threads = 3 of a 4×5 output touches row 0 of A only, so A may hold just one row.
    var rng = SplitMix64(state: 16)
    let memory = TestMemory()
    let pa = memory.put(randomFloats(3, using: &rng))
    let pb = memory.put(randomFloats(15, using: &rng))
    let pc = memory.reserve(3 * 4)
    try launch(.matmul, [.pointer(pa), .pointer(pb), .pointer(pc), .u32(4), .u32(5), .u32(3)], threads: 3, memory)
    #expect(throws: KernelError.invalidPointer(parameterIndex: 0, address: pa, byteCount: 24)) {
      try launch(.matmul, [.pointer(pa), .pointer(pb), .pointer(pc), .u32(4), .u32(5), .u32(3)], threads: 6, memory)
    }
  }

  @Test func matmulGuardsOverflow() {
    let memory = TestMemory()
    #expect(throws: KernelError.dimensionsOverflow(m: .max, n: .max, k: .max)) {
      try launch(
        .matmul, [.pointer(0), .pointer(0), .pointer(0), .u32(.max), .u32(.max), .u32(.max)], threads: 1, memory)
    }
  }

  @Test func wrongParameterSize() {
    let memory = TestMemory()
    for kernel in BuiltinKernel.allCases {
      for size in [0, kernel.parameterBufferSize - 4, kernel.parameterBufferSize + 8] {
        let params = [UInt8](repeating: 0, count: size)
        #expect(throws: KernelError.parameterSize(expected: kernel.parameterBufferSize, got: size)) {
          try run(kernel, params, threads: 1, memory)
        }
      }
    }
  }

  @Test func pointerOutOfBoundsIsRefusedAndNothingIsWritten() throws {
    let memory = TestMemory()
    let a = memory.put([Float](repeating: 1, count: 100))
    let b = memory.put([Float](repeating: 2, count: 99))  // one element short
    let c = memory.put([Float](repeating: 9, count: 100))
    #expect(throws: KernelError.invalidPointer(parameterIndex: 1, address: b, byteCount: 400)) {
      try launch(.vectorAdd, [.pointer(a), .pointer(b), .pointer(c), .u32(100)], threads: 100, memory)
    }
    #expect(memory.floats(c, 100).allSatisfy { $0 == 9 })
    #expect(throws: KernelError.invalidPointer(parameterIndex: 0, address: a, byteCount: 404)) {
      try launch(.fill, [.pointer(a), .f32(0), .u32(101)], threads: 1000, memory)
    }
    #expect(throws: KernelError.invalidPointer(parameterIndex: 0, address: 0, byteCount: 4)) {
      try launch(.scale, [.pointer(0), .f32(2), .u32(1)], threads: 1, memory)
    }
    #expect(throws: KernelError.invalidPointer(parameterIndex: 2, address: c + 4, byteCount: 400)) {
      try launch(.saxpy, [.f32(1), .pointer(a), .pointer(c + 4), .u32(100)], threads: 100, memory)
    }
    #expect(throws: KernelError.invalidPointer(parameterIndex: 1, address: .max, byteCount: 4)) {
      try launch(.reduceSum, [.pointer(a), .pointer(.max), .u32(100)], threads: 100, memory)
    }
    #expect(memory.floats(a, 100).allSatisfy { $0 == 1 })
    #expect(memory.floats(c, 100).allSatisfy { $0 == 9 })
    // The same out-of-bounds n is fine when fewer threads run: only they touch memory.
    try launch(.fill, [.pointer(a), .f32(5), .u32(1_000_000)], threads: 100, memory)
    #expect(memory.floats(a, 100).allSatisfy { $0 == 5 })
  }

  @Test func fewerThreadsThanElementsProcessesOnlyAPrefix() throws {
    let memory = TestMemory()
    let x = memory.put([Float](repeating: 1, count: 64))
    let y = memory.put([Float](repeating: 10, count: 64))
    try launch(.saxpy, [.f32(2), .pointer(x), .pointer(y), .u32(64)], threads: 10, memory)
    #expect(memory.floats(y, 64) == [Float](repeating: 12, count: 10) + [Float](repeating: 10, count: 54))
    try launch(.scale, [.pointer(x), .f32(3), .u32(64)], threads: 5, memory)
    #expect(memory.floats(x, 64) == [Float](repeating: 3, count: 5) + [Float](repeating: 1, count: 59))
    let out = memory.reserve(4)
    try launch(.reduceSum, [.pointer(x), .pointer(out), .u32(64)], threads: 6, memory)
    #expect(memory.floats(out, 1) == [16])
    try launch(.fill, [.pointer(y), .f32(0), .u32(64)], threads: 0, memory)
    #expect(memory.floats(y, 1) == [12])
  }
}
