import PTX
import Synchronization
import Testing

/// Blocks spread over host threads (`PTXLaunchOptions.hostThreads`): global atomics must be
/// real ones across threads, and a launch must end as a serial one does (the first block's
/// fault, printf lines in block order, the budget across all threads).
@Suite(.enabled(if: Compiler.nvrtc != nil))
struct ParallelLaunchTests {
  static let source = #"""
    // Each thread adds `rounds` times to counters every other block also adds to:
    // {int add, u64 add, atomicCAS increment, atomicInc wrap, atomicMax, atomicOr bit}.
    extern "C" __global__ void hammer(int* c, unsigned long long* wide, int rounds) {
      int id = blockIdx.x * blockDim.x + threadIdx.x;
      for (int k = 0; k < rounds; k++) {
        atomicAdd(&c[0], 1);
        atomicAdd(wide, (unsigned long long)id + 1);
        int old = c[1], seen;
        do {
          seen = old;
          old = atomicCAS(&c[1], seen, seen + 1);
        } while (old != seen);
        atomicInc((unsigned*)&c[2], 999);
        atomicMax(&c[3], id * rounds + k);
        atomicOr(&c[4 + (id & 3)], 1 << (blockIdx.x % 31));
        atomicSub(&c[8], 2);
      }
    }
    extern "C" __global__ void hello(int* p) {
      int acc = 0;  // work enough that blocks 5... run on helper threads, not in the serial start
      for (int k = 0; k < 200; k++) acc += k ^ threadIdx.x;
      if (acc == 1) p[0] = acc;
      if (threadIdx.x < 2) printf("block %d thread %d\n", blockIdx.x, threadIdx.x);
      if (blockIdx.x >= 5 && threadIdx.x == 3) p[1 << 28] = 1;  // out of bounds from block 5 on
    }
    extern "C" __global__ void lopsided(int* p) {
      int n = blockIdx.x == 0 ? 200 : 20000;  // block 1, on the helper, runs long
      int acc = 0;
      for (int k = 0; k < n; k++) acc += k ^ threadIdx.x;
      if (acc == 1) p[0] = acc;
    }
    extern "C" __global__ void spin(volatile int* p) {
      while (p[0] == 0) {}
    }
    """#

  static let blocks = 64
  static let threads = 128

  func load() throws -> (PTXModule, TestMemory) {
    let module = try PTXModule(source: try Compiler.ptx(Self.source))
    let memory = TestMemory()
    try memory.load(module)
    return (module, memory)
  }

  @Test(arguments: [1, 2, 4]) func atomicsFromManyBlocksAddUpExactly(hostThreads: Int) throws {
    let (module, memory) = try load()
    let rounds = 20
    let c = memory.upload([Int32](repeating: 0, count: 9))
    let wide = memory.upload([UInt64(0)])
    let stats = try module.launch(
      kernel: "hammer", grid: PTXDim3(UInt32(Self.blocks)), block: PTXDim3(UInt32(Self.threads)),
      parameters: pack(try module.kernel(named: "hammer"), [c, wide, Int32(rounds)]), memory: memory,
      options: PTXLaunchOptions(hostThreads: hostThreads))
    #expect(stats.hostThreads == hostThreads)
    let n = Self.blocks * Self.threads
    let total = n * rounds
    let got = memory.download(c, count: 9, as: Int32.self)
    var bits = [Int32](repeating: 0, count: 4)
    for id in 0..<n { bits[id & 3] |= 1 << Int32((id / Self.threads) % 31) }
    #expect(
      got == [Int32(total), Int32(total), Int32(total % 1000), Int32(total - 1)] + bits + [Int32(-2 * total)])
    #expect(memory.download(wide, count: 1, as: UInt64.self)[0] == UInt64(rounds * n * (n + 1) / 2))
  }

  @Test func firstBlocksFaultAndPrintfInBlockOrder() throws {
    let (module, memory) = try load()
    let p = memory.alloc(16)
    let lines = Mutex<[String]>([])
    var thrown: PTXError?
    do {
      try module.launch(
        kernel: "hello", grid: PTXDim3(40), block: PTXDim3(128),
        parameters: pack(try module.kernel(named: "hello"), [p]), memory: memory,
        options: PTXLaunchOptions(printf: { t in lines.withLock { $0.append(t) } }, hostThreads: 4))
    } catch { thrown = error }
    guard case .illegalAddress(_, let block, let thread, _, _, let isStore, _) = thrown else {
      Issue.record("expected an illegal address, got \(String(describing: thrown))")
      return
    }
    #expect(block == PTXDim3(5, 0, 0) && thread == PTXDim3(3, 0, 0) && isStore, "\(thrown!)")
    // Every block up to the failing one printed, in block order (block 5 before its fault).
    let want = (0...5).flatMap { b in (0..<2).map { "block \(b) thread \($0)\n" } }
    #expect(lines.withLock { $0 } == want)
  }

  /// The launching thread done with its blocks still reports progress while a helper runs
  /// the last one (the client's wait counts silence).
  @Test func progressWhileAHelperRunsTheLastBlock() throws {
    let (module, memory) = try load()
    let p = memory.alloc(16)
    let calls = Atomic<Int>(0)
    var options = PTXLaunchOptions(
      progress: {
        calls.add(1, ordering: .relaxed)
        return true
      }, hostThreads: 2)
    options.progressInterval = 1 << 14
    let stats = try module.launch(
      kernel: "lopsided", grid: PTXDim3(2), block: PTXDim3(32),
      parameters: pack(try module.kernel(named: "lopsided"), [p]), memory: memory, options: options)
    #expect(stats.hostThreads == 2)
    // Block 1 alone runs about 2.5M instructions: about 150 intervals; block 0 not two.
    #expect(calls.load(ordering: .relaxed) >= 20, "\(calls.load(ordering: .relaxed)) progress calls")
  }

  @Test func budgetAndCancelStopEveryThread() throws {
    let (module, memory) = try load()
    let p = memory.upload([Int32(0)])
    let parameters = pack(try module.kernel(named: "spin"), [p])
    #expect(throws: PTXError.budgetExhausted(kernel: "spin", budget: 5_000_000)) {
      try module.launch(
        kernel: "spin", grid: PTXDim3(16), block: PTXDim3(32), parameters: parameters, memory: memory,
        options: PTXLaunchOptions(instructionBudget: 5_000_000, hostThreads: 4))
    }
    let calls = Atomic<Int>(0)
    var options = PTXLaunchOptions(
      progress: { calls.wrappingAdd(1, ordering: .relaxed).newValue < 3 }, hostThreads: 4)
    options.progressInterval = 1 << 14
    #expect(throws: PTXError.self) {
      try module.launch(
        kernel: "spin", grid: PTXDim3(16), block: PTXDim3(32), parameters: parameters, memory: memory,
        options: options)
    }
    #expect(calls.load(ordering: .relaxed) == 3)
  }
}
