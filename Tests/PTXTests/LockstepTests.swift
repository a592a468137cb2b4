import PTX
import Testing

/// Warps in lockstep (`PTXLaunchOptions.lockstep`): lanes that diverge must meet again before
/// a warp collective, loops of per-lane length, lanes that leave early, calls taken by some
/// lanes, a last warp of fewer than 32 threads. Each kernel's output is checked against a CPU
/// reference, with the lockstep engine and with the per-thread one, which must also count
/// the same thread-instructions.
@Suite(.enabled(if: Compiler.nvrtc != nil))
struct LockstepTests {
  static let source = #"""
    __device__ __noinline__ int twist(int x, int k) {
      for (int j = 0; j < k; j++) x = x * 5 + j;  // a call whose loop length is per lane
      return x;
    }
    // Nested divergence, a call on one side, then shuffles and a vote over the whole warp.
    extern "C" __global__ void diverge(const int* in, int* out) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      int lane = threadIdx.x & 31;
      int x = in[i];
      if (lane & 1) {
        x = x * 3;
        if (lane < 12) x = twist(x, lane & 7);
        else x ^= 0x55;
      } else {
        if (x & 4) x += 7;
        else x -= 9;
      }
      int down = __shfl_down_sync(0xffffffffu, x, 1);
      int across = __shfl_xor_sync(0xffffffffu, x, 5);
      unsigned odd = __ballot_sync(0xffffffffu, x & 1);
      out[3 * i] = x;
      out[3 * i + 1] = down + across;
      out[3 * i + 2] = (int)odd;
    }
    // Loops of per-lane trip counts (one nested), then a butterfly sum over the warp.
    extern "C" __global__ void loops(const int* in, int* out) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      int n = in[i] % 23;
      int acc = 0;
      for (int k = 0; k < n; k++) {
        acc = acc * 3 + k;
        for (int j = 0; j < (k & 3); j++) acc ^= j << k;
        if (acc > 100000) break;
      }
      int sum = acc;
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      out[2 * i] = acc;
      out[2 * i + 1] = sum;
    }
    // Some lanes return before a block barrier; the rest vote with exactly the lanes left.
    // Run with a block of 100 threads: the last warp has 4 lanes.
    extern "C" __global__ void leave(const int* in, int* out) {
      __shared__ int s[128];
      int t = threadIdx.x;
      s[t] = in[t] * 2;
      out[2 * t] = -1;
      out[2 * t + 1] = -1;
      if (t % 7 == 3) return;
      __syncthreads();
      unsigned left = 0;
      for (int l = 0; l < 32; l++) {
        int u = (t & ~31) + l;
        if (u < blockDim.x && u % 7 != 3) left |= 1u << l;
      }
      unsigned big = __ballot_sync(left, s[(t + 1) % blockDim.x] > 50);
      out[2 * t] = s[(t + 1) % blockDim.x] + s[(t + 5) % blockDim.x];
      out[2 * t + 1] = (int)big;
    }
    """#

  /// Runs `kernel` with each engine on one host thread; returns each engine's output and count.
  func launch(_ kernel: String, block: UInt32, grid: UInt32 = 1, input: [Int32], outPerThread: Int) throws -> [(
    [Int32], UInt64
  )] {
    let module = try PTXModule(source: try Compiler.ptx(Self.source))
    var results: [([Int32], UInt64)] = []
    for lockstep in [true, false] {
      let memory = TestMemory()
      try memory.load(module)
      let a = memory.upload(input)
      let out = memory.upload([Int32](repeating: 0, count: input.count * outPerThread))
      var options = PTXLaunchOptions(hostThreads: 1)
      options.lockstep = lockstep
      let stats = try module.launch(
        kernel: kernel, grid: PTXDim3(grid), block: PTXDim3(block),
        parameters: pack(try module.kernel(named: kernel), [a, out]), memory: memory, options: options)
      results.append((memory.download(out, count: input.count * outPerThread, as: Int32.self), stats.instructions))
    }
    return results
  }

  /// Both engines (lockstep, then per thread) wrote `want` and counted the same instructions.
  static func expectBothEngines(
    _ runs: [([Int32], UInt64)], give want: [Int32], sourceLocation: SourceLocation = #_sourceLocation
  ) {
    #expect(runs[0].0 == want, "lockstep", sourceLocation: sourceLocation)
    #expect(runs[1].0 == want, "per thread", sourceLocation: sourceLocation)
    #expect(runs[0].1 == runs[1].1, "instructions counted", sourceLocation: sourceLocation)
  }

  static func input(_ n: Int) -> [Int32] {
    (0..<n).map { Int32(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 7) & 0x3ff }
  }

  @Test func divergentLanesMeetBeforeShufflesAndVotes() throws {
    let n = 128
    let input = Self.input(n)
    var x = [Int32](repeating: 0, count: n)
    for i in 0..<n {
      let lane = i & 31
      var v = input[i]
      if lane & 1 != 0 {
        v = v &* 3
        if lane < 12 {
          for j in 0..<Int32(lane & 7) { v = v &* 5 &+ j }
        } else {
          v ^= 0x55
        }
      } else {
        v = v & 4 != 0 ? v + 7 : v - 9
      }
      x[i] = v
    }
    var want: [Int32] = []
    for i in 0..<n {
      let w = i & ~31
      let lane = i & 31
      let down = lane + 1 < 32 ? x[i + 1] : x[i]
      var odd: UInt32 = 0
      for l in 0..<32 where x[w + l] & 1 != 0 { odd |= 1 << UInt32(l) }
      want += [x[i], down &+ x[w + (lane ^ 5)], Int32(bitPattern: odd)]
    }
    let runs = try launch("diverge", block: 64, grid: 2, input: input, outPerThread: 3)
    Self.expectBothEngines(runs, give: want)
  }

  @Test func loopsOfPerLaneLengthThenAButterflySum() throws {
    let n = 96
    let input = Self.input(n)
    var acc = [Int32](repeating: 0, count: n)
    for i in 0..<n {
      var a: Int32 = 0
      for k in 0..<Int32(input[i] % 23) {
        a = a &* 3 &+ k
        for j in 0..<(k & 3) { a ^= j << k }
        if a > 100_000 { break }
      }
      acc[i] = a
    }
    var want: [Int32] = []
    for i in 0..<n {
      let w = i & ~31
      want += [acc[i], acc[w..<w + 32].reduce(0, &+)]
    }
    let runs = try launch("loops", block: 96, input: input, outPerThread: 2)
    Self.expectBothEngines(runs, give: want)
  }

  @Test func lanesThatReturnBeforeABarrierAndAShortLastWarp() throws {
    let n = 100
    let input = Self.input(n)
    var want: [Int32] = []
    for t in 0..<n {
      if t % 7 == 3 {
        want += [-1, -1]
        continue
      }
      var left: UInt32 = 0
      var big: UInt32 = 0
      for l in 0..<32 {
        let u = (t & ~31) + l
        guard u < n && u % 7 != 3 else { continue }
        left |= 1 << UInt32(l)
        if input[(u + 1) % n] * 2 > 50 { big |= 1 << UInt32(l) }
      }
      want += [input[(t + 1) % n] * 2 + input[(t + 5) % n] * 2, Int32(bitPattern: big & left)]
    }
    let runs = try launch("leave", block: UInt32(n), input: input, outPerThread: 2)
    Self.expectBothEngines(runs, give: want)
  }

  /// A fault in one lane of a converged warp names that lane, as the per-thread engine does.
  @Test func aFaultNamesItsLane() throws {
    let ptx = try Compiler.ptx(
      #"""
      extern "C" __global__ void poke(int* p) {
        int t = threadIdx.x;
        p[t == 37 ? (1 << 28) : t] = t;
      }
      """#)
    let module = try PTXModule(source: ptx)
    for lockstep in [true, false] {
      let memory = TestMemory()
      let p = memory.alloc(64 * 4)
      var options = PTXLaunchOptions(hostThreads: 1)
      options.lockstep = lockstep
      var thrown: PTXError?
      do {
        try module.launch(
          kernel: "poke", grid: PTXDim3(2), block: PTXDim3(64), parameters: pack(try module.kernel(named: "poke"), [p]),
          memory: memory, options: options)
      } catch { thrown = error }
      guard case .illegalAddress(_, let block, let thread, _, _, let isStore, _) = thrown else {
        Issue.record("expected an illegal address, got \(String(describing: thrown))")
        continue
      }
      #expect(block == PTXDim3(0, 0, 0) && thread == PTXDim3(37, 0, 0) && isStore, "lockstep \(lockstep): \(thrown!)")
    }
  }

  /// Each thread's printf lines come out together, threads in order, between a block's
  /// barriers: the per-thread engine's order, whatever the lanes' divergence.
  @Test func printfLinesComeThreadByThread() throws {
    let module = try PTXModule(
      source: try Compiler.ptx(
        #"""
        extern "C" __global__ void say() {
          int t = threadIdx.x;
          printf("a %d\n", t);
          if (t & 1) printf("odd %d\n", t);
          printf("b %d\n", t);
          __syncthreads();
          printf("c %d\n", t);
        }
        """#))
    var want: [String] = []
    for t in 0..<40 { want += ["a \(t)\n"] + (t & 1 == 1 ? ["odd \(t)\n"] : []) + ["b \(t)\n"] }
    for t in 0..<40 { want.append("c \(t)\n") }
    for lockstep in [true, false] {
      var lines: [String] = []
      var options = PTXLaunchOptions(printf: { lines.append($0) }, hostThreads: 1)
      options.lockstep = lockstep
      let memory = TestMemory()
      try memory.load(module)
      try module.launch(
        kernel: "say", grid: PTXDim3(1), block: PTXDim3(40), parameters: [], memory: memory, options: options)
      #expect(lines == want, "lockstep \(lockstep)")
    }
  }

  /// Of several faulting lanes the first in thread order is reported, though a later lane
  /// faulted first in the warp; the lines printed are those the per-thread engine prints
  /// (threads up to the faulting one).
  @Test func theFirstFaultingThreadIsReported() throws {
    let module = try PTXModule(
      source: try Compiler.ptx(
        #"""
        extern "C" __global__ void two(int* p) {
          int t = threadIdx.x;
          printf("t %d\n", t);
          if (t == 20) p[1 << 28] = 1;  // the warp's first fault
          int s = 0;
          for (int k = 0; k < t; k++) s += k;
          if (t == 9) p[(1 << 28) + s] = 2;  // later in the warp, first in thread order
          p[t] = s;
        }
        """#))
    for lockstep in [true, false] {
      let memory = TestMemory()
      try memory.load(module)
      let p = memory.alloc(64 * 4)
      var lines: [String] = []
      var options = PTXLaunchOptions(printf: { lines.append($0) }, hostThreads: 1)
      options.lockstep = lockstep
      var thrown: PTXError?
      do {
        try module.launch(
          kernel: "two", grid: PTXDim3(1), block: PTXDim3(64), parameters: pack(try module.kernel(named: "two"), [p]),
          memory: memory, options: options)
      } catch { thrown = error }
      guard case .illegalAddress(_, _, let thread, _, _, _, _) = thrown else {
        Issue.record("expected an illegal address, got \(String(describing: thrown))")
        continue
      }
      #expect(thread == PTXDim3(9, 0, 0), "lockstep \(lockstep): \(thrown!)")
      #expect(lines == (0...9).map { "t \($0)\n" }, "lockstep \(lockstep)")
    }
  }
}
