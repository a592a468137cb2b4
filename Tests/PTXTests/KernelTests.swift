import PTX
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct KernelTests {
  @Test func vectorAdd() throws {
    let n = 1000
    let mem = TestMemory()
    let a = (0..<n).map { Float($0) * 0.5 }
    let b = (0..<n).map { Float($0 * $0) / 7 }
    let da = mem.upload(a)
    let db = mem.upload(b)
    let dc = mem.alloc(n * 4)
    let stats = try run(
      vectorAddPTX, "_Z6vecAddPKfS0_Pfi", grid: PTXDim3(UInt32((n + 255) / 256)), block: PTXDim3(256),
      args: [da, db, dc, Int32(n)], memory: mem)
    #expect(mem.download(dc, count: n, as: Float.self) == zip(a, b).map { $0 + $1 })
    #expect(stats.instructions > UInt64(n) * 20)
  }

  /// Registers as a compiler allocates them, not the virtual ones declared: at most
  /// `.maxnreg`, 255, and 64 K over the largest block. CUB computes occupancy from
  /// them and divided by zero when 300 declared registers made 0 blocks fit.
  @Test(arguments: [
    ("", 300, 64, 1024), (".maxnreg 38", 300, 38, 1024), (".maxntid 256, 1, 1", 300, 255, 256),
    (".reqntid 128 .maxnreg 40", 300, 40, 128), (".maxntid 32, 2", 20, 20, 64), (".maxnreg 100", 20, 20, 1024),
  ])
  func registersAsAllocated(directives: String, declared: Int, registers: Int, threads: Int) throws {
    let ptx = """
      .version 8.0
      .target sm_75
      .address_size 64
      .visible .entry k(.param .u64 p) \(directives)
      {
        .reg .b32 %r<\(declared)>;
        ret;
      }
      """
    let k = try PTXModule(source: ptx).kernel(named: "k")
    #expect(k.registerCount == registers)
    #expect(k.maxThreadsPerBlock == threads)
  }

  @Test func metadata() throws {
    let m = try PTXModule(source: vectorAddPTX)
    let k = try m.kernel(named: "_Z6vecAddPKfS0_Pfi")
    #expect(k.parameters.map(\.offset) == [0, 8, 16, 24])
    #expect(k.parameters.map(\.size) == [8, 8, 8, 4])
    #expect(k.parameterBytes == 28)
    #expect(k.registerCount == 2 + 6 + 4 + 11)
    #expect(k.ptxVersion == (8, 8))
    #expect(k.target == "sm_75")
    #expect(m.kernelNames == ["_Z6vecAddPKfS0_Pfi"])
    let r = try PTXModule(source: reducePTX).kernel(named: "reduce")
    #expect(r.staticSharedBytes == 128)
    let p = try PTXModule(source: printfPTX)
    #expect(try p.kernel(named: "hello").localBytesPerThread >= 40)
    #expect(p.globals.map(\.name) == ["$str", "$str$1"])
    #expect(p.globals[1].initializer == [111, 107, 0])
    let f = try PTXModule(source: funcPTX).kernel(named: "callk")
    #expect(f.localBytesPerThread >= 16)
  }

  @Test func saxpy() throws {
    let n = 300
    let mem = TestMemory()
    let x = (0..<n).map { Float($0) }
    let y = (0..<n).map { Float(n - $0) * 0.25 }
    let dx = mem.upload(x)
    let dy = mem.upload(y)
    try run(
      saxpyPTX, "saxpy", grid: PTXDim3(3), block: PTXDim3(128), args: [Float(2.5), dx, dy, Int32(n)], memory: mem)
    #expect(mem.download(dy, count: n, as: Float.self) == zip(x, y).map { $1.addingProduct($0, 2.5) })
  }

  @Test func reduction() throws {
    let n = 1000
    let mem = TestMemory()
    let x = (0..<n).map { Float($0 % 17) }
    let dx = mem.upload(x)
    let out = mem.upload([Float(0)])
    try run(reducePTX, "reduce", grid: PTXDim3(4), block: PTXDim3(256), args: [dx, out, Int32(n)], memory: mem)
    #expect(mem.download(out, count: 1, as: Float.self)[0] == x.reduce(0, +))
  }

  @Test func tiledMatmul() throws {
    let n = 37
    let mem = TestMemory()
    let a = (0..<n * n).map { Float($0 % 7) - 3 }
    let b = (0..<n * n).map { Float($0 % 5) * 0.5 }
    let da = mem.upload(a)
    let db = mem.upload(b)
    let dc = mem.alloc(n * n * 4)
    let g = UInt32((n + 15) / 16)
    try run(
      matmulPTX, "matmul", grid: PTXDim3(g, g), block: PTXDim3(16, 16), args: [da, db, dc, Int32(n)], memory: mem)
    var expect = [Float](repeating: 0, count: n * n)
    for i in 0..<n {
      for j in 0..<n {
        var s: Float = 0
        for k in 0..<n { s = s.addingProduct(a[i * n + k], b[k * n + j]) }
        expect[i * n + j] = s
      }
    }
    #expect(mem.download(dc, count: n * n, as: Float.self) == expect)
  }

  @Test func expf() throws {
    let mem = TestMemory()
    let x: [Float] = (0..<64).map { Float($0) / 8 - 4 }
    let dx = mem.upload(x)
    let dy = mem.alloc(64 * 4)
    try run(expPTX, "expk", block: PTXDim3(64), args: [dx, dy, Float(2)], memory: mem)
    let y = mem.download(dy, count: 64, as: Float.self)
    for k in 0..<64 {
      let want = Float(exp(Double(x[k]))) / 2
      #expect(abs(y[k] - want) <= want * 1e-5, "x=\(x[k]) got \(y[k]) want \(want)")
    }
  }

  @Test func atomics() throws {
    let mem = TestMemory()
    let ints = mem.upload([UInt32(0), 0, 0x7fff_ffff, 0, 0, 0, 0, 0])
    let f = mem.upload([Float(0), 0, 0, 0])
    try run(atomicsPTX, "atomics", grid: PTXDim3(2), block: PTXDim3(64), args: [ints, f], memory: mem)
    let r = mem.download(ints, count: 7, as: UInt32.self)
    #expect(r[0] == 128)
    #expect(r[1] == 127)
    #expect(r[2] == 0)
    #expect(r[3] == 1)  // cas(0 → id): id 0 stores 0 again, id 1 wins, the rest see 1
    #expect(r[4] == 127)
    #expect(r[5] == 128 % 10)
    #expect(r[6] == 7)
    #expect(mem.download(f, count: 1, as: Float.self)[0] == Float((0..<128).reduce(0, +)))
    #expect(mem.download(f + 8, count: 1, as: UInt64.self)[0] == 3 * 128)
  }

  @Test func printfFormats() throws {
    let mem = TestMemory()
    var lines: [String] = []
    try run(printfPTX, "hello", block: PTXDim3(2), args: [Float(3.14159)], memory: mem) { lines.append($0) }
    #expect(lines == ["thread 0:  3.14 ok 12345678901234 ff A", "thread 1:  3.14 ok 12345678901234 ff A"])
  }

  @Test func assertFails() throws {
    let mem = TestMemory()
    let data = mem.upload([Int32(1), 2, 30, 4])
    do {
      try run(assertPTX, "check", block: PTXDim3(4), args: [data], memory: mem)
      Issue.record("expected an assertion")
    } catch let e as PTXError {
      guard case .assertion(let message, let file, let line, let function, _, let thread) = e else {
        Issue.record("wrong error \(e)")
        return
      }
      #expect(message == "x < 10")
      #expect(file == "k.cu")
      #expect(line == 42)
      #expect(function == "check")
      #expect(thread == PTXDim3(2, 0, 0))
      #expect(e.cudaError == 710)
    }
  }

  @Test func numbaGeneric() throws {
    let n = 100
    let mem = TestMemory()
    let x = (0..<n).map { Float($0) }
    let y = (0..<n).map { Float($0) * 3 }
    let dx = mem.upload(x)
    let dy = mem.upload(y)
    let dr = mem.alloc(n * 4)
    try run(
      numbaPTX, "axpy", grid: PTXDim3(2), block: PTXDim3(64), args: [dr, dx, dy, UInt64(n), Float(2)], memory: mem)
    #expect(mem.download(dr, count: n, as: Float.self) == zip(x, y).map { $1.addingProduct(2, $0) })
  }

  @Test func funcStructReturn() throws {
    let mem = TestMemory()
    let pairs: [Double] = [1, 5, 9, 2, -3, -4, 0.5, 0.25]
    let din = mem.upload(pairs)
    let dout = mem.alloc(4 * 8)
    try run(funcPTX, "callk", block: PTXDim3(4), args: [din, dout], memory: mem)
    #expect(mem.download(dout, count: 4, as: Double.self) == [4, 7, 1, 0.25])
  }
}
