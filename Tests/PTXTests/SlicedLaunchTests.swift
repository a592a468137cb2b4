import PTX
import Synchronization
import Testing

/// A launch run in slices (`PTXLaunch.run(until:)`) must do exactly what one
/// uninterrupted launch does: the device runs a launch's first slice on its
/// serving thread and hands the rest to a worker, and kernels have side
/// effects (atomics, printf), so no instruction may run twice or be skipped.
@Suite struct SlicedLaunchTests {
  /// Runs `kernel` with fresh memory, in slices of `slice` thread-instructions
  /// (nil: uninterrupted), and returns the bytes of the allocation `result`
  /// picks, the printf lines, the instruction count and the number of slices.
  func outcome(
    _ source: String, _ kernel: String, grid: PTXDim3, block: PTXDim3, slice: UInt64?,
    setup: (TestMemory) -> (args: [Any], result: UInt64, bytes: Int)
  ) throws -> (data: [UInt8], lines: [String], instructions: UInt64, slices: Int) {
    let memory = TestMemory()
    let module = try PTXModule(source: source)
    try memory.load(module)
    let (args, result, bytes) = setup(memory)
    let info = try module.kernel(named: kernel)
    let lines = Mutex<[String]>([])
    // One host thread: the float atomic of `reduction` sums in block order, as a sliced run does.
    let options = PTXLaunchOptions(printf: { text in lines.withLock { $0.append(text) } }, hostThreads: 1)
    let parameters = pack(info, args)
    var slices = 1
    var instructions: UInt64
    if let slice {
      let launch = try parameters.withUnsafeBytes { buffer in
        try module.prepareLaunch(
          kernel: kernel, grid: grid, block: block, parameters: buffer, memory: memory, options: options)
      }
      var before = launch.stats.instructions
      while try !launch.run(until: slice) {
        slices += 1
        // Each slice runs at least what it was asked for.
        #expect(launch.stats.instructions - before >= slice)
        before = launch.stats.instructions
      }
      instructions = launch.stats.instructions
    } else {
      instructions =
        try module.launch(
          kernel: kernel, grid: grid, block: block, parameters: parameters, memory: memory, options: options
        ).instructions
    }
    let data = memory.download(result, count: bytes, as: UInt8.self)
    return (data, lines.withLock { $0 }, instructions, slices)
  }

  func expectSameAsWhole(
    _ source: String, _ kernel: String, grid: PTXDim3, block: PTXDim3, slices: [UInt64],
    setup: (TestMemory) -> (args: [Any], result: UInt64, bytes: Int)
  ) throws {
    let whole = try outcome(source, kernel, grid: grid, block: block, slice: nil, setup: setup)
    for s in slices {
      let cut = try outcome(source, kernel, grid: grid, block: block, slice: s, setup: setup)
      #expect(cut.slices > 1, "slice \(s) should have cut the launch")
      #expect(cut.data == whole.data, "slice \(s)")
      #expect(cut.lines == whole.lines, "slice \(s)")
      #expect(cut.instructions == whole.instructions, "slice \(s)")
    }
  }

  @Test func vectorAdd() throws {
    let n = 1000
    try expectSameAsWhole(
      vectorAddPTX, "_Z6vecAddPKfS0_Pfi", grid: PTXDim3(4), block: PTXDim3(256), slices: [1, 7, 100, 5000]
    ) { m in
      let a = m.upload((0..<n).map { Float($0) })
      let b = m.upload((0..<n).map { Float($0) * 0.5 })
      let c = m.alloc(n * 4)
      return ([a, b, c, Int32(n)], c, n * 4)
    }
  }

  /// Barriers and warp shuffles, with a float atomic across blocks (order matters).
  @Test func reduction() throws {
    let n = 1000
    try expectSameAsWhole(reducePTX, "reduce", grid: PTXDim3(4), block: PTXDim3(256), slices: [1, 13, 3000]) { m in
      let x = m.upload((0..<n).map { Float($0 % 17) * 0.1 })
      let out = m.upload([Float(0)])
      return ([x, out, Int32(n)], out, 4)
    }
  }

  /// Shared-memory tiles between barriers, loops around them.
  @Test func tiledMatmul() throws {
    let n = 20
    try expectSameAsWhole(matmulPTX, "matmul", grid: PTXDim3(2, 2), block: PTXDim3(16, 16), slices: [1, 999]) { m in
      let a = m.upload((0..<n * n).map { Float($0 % 7) - 3 })
      let b = m.upload((0..<n * n).map { Float($0 % 5) * 0.5 })
      let c = m.alloc(n * n * 4)
      return ([a, b, c, Int32(n)], c, n * n * 4)
    }
  }

  /// printf's lines come complete and in the same order.
  @Test func printfOrder() throws {
    try expectSameAsWhole(printfPTX, "hello", grid: PTXDim3(3), block: PTXDim3(5), slices: [1, 10]) { m in
      let scratch = m.alloc(4)
      return ([Float(2.5)], scratch, 4)
    }
  }

  /// A function call and return inside the kernel, cut anywhere.
  @Test func calls() throws {
    try expectSameAsWhole(funcPTX, "callk", grid: PTXDim3(1), block: PTXDim3(4), slices: [1, 3, 20]) { m in
      let din = m.upload([Double]([1, 5, 9, 2, -3, -4, 0.5, 0.25]))
      let out = m.alloc(4 * 8)
      return ([din, out], out, 4 * 8)
    }
  }

  /// The budget counts across slices, and a cancel ends a sliced launch; after a failure
  /// the launch is over.
  @Test func budgetAndCancelStillEnd() throws {
    let src =
      header + """
        .visible .entry spin()
        {
        $L__BB0_1:
        	bra.uni 	$L__BB0_1;
        }
        """
    let module = try PTXModule(source: src)
    let memory = TestMemory()
    let launch = try module.prepareLaunch(
      kernel: "spin", grid: PTXDim3(1), block: PTXDim3(32), parameters: UnsafeRawBufferPointer(start: nil, count: 0),
      memory: memory, options: PTXLaunchOptions(instructionBudget: 10_000))
    #expect(try launch.run(until: 1000) == false)
    #expect(throws: PTXError.budgetExhausted(kernel: "spin", budget: 10_000)) {
      while try !launch.run(until: 1000) {}
    }
    #expect(try launch.run(until: 1000) == true)

    let stop = Atomic<Bool>(false)
    var options = PTXLaunchOptions(progress: { !stop.load(ordering: .relaxed) })
    options.progressInterval = 100
    let cancelled = try module.prepareLaunch(
      kernel: "spin", grid: PTXDim3(1), block: PTXDim3(32), parameters: UnsafeRawBufferPointer(start: nil, count: 0),
      memory: memory, options: options)
    #expect(try cancelled.run(until: 500) == false)
    stop.store(true, ordering: .relaxed)
    #expect(throws: PTXError.self) { _ = try cancelled.run(until: .max) }
  }
}
