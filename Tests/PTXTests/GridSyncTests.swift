import Foundation
import PTX
import Testing

/// Grid-wide sync through CUDA's device runtime (`cudaCGGetIntrinsicHandle`,
/// `cudaCGSynchronize`, `cudaCGGetSize`, `cudaCGGetRank`), which the engine provides
/// (Sources/PTX/DeviceRuntime.swift), in cooperative launches (`CooperativeRun`). The kernels
/// are CUDA C++ compiled by NVRTC 12.9 with `-rdc=true`: the calls stay `.extern .func`
/// calls, the PTX numba-cuda emits for `cg.this_grid().sync()`.
@Suite(.enabled(if: Compiler.nvrtc != nil))
struct GridSyncTests {
  /// Tests/Kernels/grid_sync_rdc.cu (`rounds`, shared with MediatorTests' LayeredTests), then
  /// this suite's own kernels.
  static let source =
    (try! String(
      contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Kernels/grid_sync_rdc.cu"), encoding: .utf8)) + ownKernels
  static let ownKernels = #"""
    extern "C" __global__ void ranks(unsigned* out) {
      unsigned long long g = cudaCGGetIntrinsicHandle(cudaCGScopeGrid);
      unsigned threads = 0, grids = 0, rank = 0, gridRank = 7;
      cudaCGGetSize(&threads, &grids, g);
      cudaCGGetRank(&rank, &gridRank, g);
      out[rank * 4] = threads;
      out[rank * 4 + 1] = grids;
      out[rank * 4 + 2] = gridRank;
      out[rank * 4 + 3] = g != 0;
    }
    // Block 1 ends without the sync the others wait at.
    extern "C" __global__ void partial(int* a) {
      unsigned long long g = cudaCGGetIntrinsicHandle(cudaCGScopeGrid);
      if (blockIdx.x == 1) return;
      a[blockIdx.x] = 1;
      cudaCGSynchronize(g, 0);
    }
    // Threads past n exit first; the others sync (numba's sessionize example does this).
    extern "C" __global__ void ragged(int* a, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      a[i] = i + 1;
      cudaCGSynchronize(cudaCGGetIntrinsicHandle(cudaCGScopeGrid), 0);
      a[n + i] = a[n - 1 - i];
    }
    // A multi-grid group: not provided (no multi-device launches here).
    extern "C" __global__ void multigrid(int* a) {
      a[blockIdx.x] = 1;
      cudaCGSynchronize(cudaCGGetIntrinsicHandle(cudaCGScopeMultiGrid), 0);
    }
    // No grid sync: block b spins until block b + 1 has set its flag, so the blocks can only
    // finish last to first, and only if a spinning block lets the others run.
    extern "C" __global__ void handoff(volatile int* flag, int* order) {
      int b = blockIdx.x;
      if (threadIdx.x != 0) return;
      if (b + 1 < gridDim.x) {
        while (flag[b + 1] == 0) {}
      }
      order[b] = atomicAdd(&order[gridDim.x], 1);
      __threadfence();
      flag[b] = 1;
    }
    """#

  static let blocks = 12
  static let threads = 64

  func load() throws -> (PTXModule, TestMemory) {
    let ptx = try Compiler.nvrtc!.ptx(Self.source, name: "gridsync.cu", options: ["-rdc=true"])
    #expect(ptx.contains(".extern .func  (.param .b32 func_retval0) cudaCGSynchronize"))
    let module = try PTXModule(source: ptx)
    let memory = TestMemory()
    try memory.load(module)
    return (module, memory)
  }

  /// What `rounds` computes, on the CPU.
  static func reference(n: Int, block: Int, rounds: Int) -> [UInt32] {
    var v = (0..<n).map { UInt32($0) }
    for _ in 0..<rounds {
      let published = v
      for i in 0..<n { v[i] = v[i] &* 3 &+ published[(i + block + 1) % n] }
    }
    return v
  }

  @Test(arguments: [1, 2, 4]) func everyBlockSeesTheOthersWritesAfterEachSync(hostThreads: Int) throws {
    let (module, memory) = try load()
    let n = Self.blocks * Self.threads
    let rounds = 9
    let buf = memory.alloc(2 * n * 4)
    let out = memory.alloc(n * 4)
    let stats = try module.launch(
      kernel: "rounds", grid: PTXDim3(UInt32(Self.blocks)), block: PTXDim3(UInt32(Self.threads)),
      parameters: pack(try module.kernel(named: "rounds"), [buf, out, Int32(rounds)]), memory: memory,
      options: PTXLaunchOptions(hostThreads: hostThreads, cooperative: true))
    #expect(stats.hostThreads == hostThreads)
    #expect(
      memory.download(out, count: n, as: UInt32.self) == Self.reference(n: n, block: Self.threads, rounds: rounds))
  }

  @Test func slicedSerialRunGoesOnWhereItStopped() throws {
    let (module, memory) = try load()
    let n = Self.blocks * Self.threads
    let buf = memory.alloc(2 * n * 4)
    let out = memory.alloc(n * 4)
    let params = pack(try module.kernel(named: "rounds"), [buf, out, Int32(5)])
    let launch = try params.withUnsafeBytes { p in
      try module.prepareLaunch(
        kernel: "rounds", grid: PTXDim3(UInt32(Self.blocks)), block: PTXDim3(UInt32(Self.threads)), parameters: p,
        memory: memory, options: PTXLaunchOptions(hostThreads: 1, cooperative: true))
    }
    var slices = 0
    while try !launch.run(until: 1000) { slices += 1 }
    #expect(slices > 10)
    #expect(memory.download(out, count: n, as: UInt32.self) == Self.reference(n: n, block: Self.threads, rounds: 5))
  }

  @Test func sizeAndRankOfTheGrid() throws {
    let (module, memory) = try load()
    let n = Self.blocks * Self.threads
    let out = memory.alloc(n * 16)
    try module.launch(
      kernel: "ranks", grid: PTXDim3(UInt32(Self.blocks)), block: PTXDim3(UInt32(Self.threads)),
      parameters: pack(try module.kernel(named: "ranks"), [out]), memory: memory,
      options: PTXLaunchOptions(hostThreads: 2, cooperative: true))
    let got = memory.download(out, count: n * 4, as: UInt32.self)
    #expect(got == Array((0..<n).map { _ in [UInt32(n), 1, 0, 1] }.joined()))
  }

  @Test(arguments: [1, 3]) func threadsThatExitBeforeTheSyncDoNotHoldItUp(hostThreads: Int) throws {
    let (module, memory) = try load()
    let n = 100  // 2 blocks of 64: 28 threads of the second exit at once
    let a = memory.alloc(2 * n * 4)
    try module.launch(
      kernel: "ragged", grid: PTXDim3(2), block: PTXDim3(64),
      parameters: pack(try module.kernel(named: "ragged"), [a, Int32(n)]), memory: memory,
      options: PTXLaunchOptions(hostThreads: hostThreads, cooperative: true))
    let got = memory.download(a, count: 2 * n, as: Int32.self)
    #expect(Array(got[..<n]) == (0..<n).map { Int32($0 + 1) })
    #expect(Array(got[n...]) == (0..<n).map { Int32(n - $0) })
  }

  @Test(arguments: [1, 2]) func aBlockThatEndsWithoutTheSyncFailsTheLaunch(hostThreads: Int) throws {
    let (module, memory) = try load()
    let a = memory.alloc(64)
    var thrown: PTXError?
    do {
      try module.launch(
        kernel: "partial", grid: PTXDim3(4), block: PTXDim3(32),
        parameters: pack(try module.kernel(named: "partial"), [a]), memory: memory,
        options: PTXLaunchOptions(hostThreads: hostThreads, cooperative: true))
    } catch { thrown = error }
    guard case .launchFailed(_, let reason) = thrown else {
      Issue.record("expected launchFailed, got \(String(describing: thrown))")
      return
    }
    #expect(reason.contains("reached by 3 of the grid's 4 blocks") && reason.contains("block (1,0,0)"))
  }

  /// The blocks of a cooperative grid take turns (a quantum each), so one may wait for
  /// another's write, as the blocks of a cooperative grid, all resident, can on a GPU.
  @Test(arguments: [1, 2, 3]) func blocksTakeTurnsSoOneCanWaitForAnother(hostThreads: Int) throws {
    let (module, memory) = try load()
    let blocks = 6
    let flag = memory.alloc(blocks * 4)
    let order = memory.alloc((blocks + 1) * 4)
    try module.launch(
      kernel: "handoff", grid: PTXDim3(UInt32(blocks)), block: PTXDim3(32),
      parameters: pack(try module.kernel(named: "handoff"), [flag, order]), memory: memory,
      options: PTXLaunchOptions(instructionBudget: 1_000_000_000, hostThreads: hostThreads, cooperative: true))
    #expect(
      memory.download(order, count: blocks + 1, as: Int32.self) == (0..<blocks).map { Int32(blocks - 1 - $0) } + [
        Int32(blocks)
      ])
  }

  /// CUDA C++'s own `cooperative_groups::this_grid().sync()` (no `-rdc`): it reads the grid
  /// workspace from `%envreg1:%envreg2` and counts arrivals there with
  /// `atom.add.release.gpu`, spinning on `ld.acquire.gpu` until the last block flips the
  /// count's top bit. The headers come from the cuda-runtime-cu12 wheel, with CCCL's
  /// `<nv/target>` from the CuPy wheel (tools/requirements-test.txt installs both).
  static var cooperativeGroupsIncludes: [String]? {
    let venv =
      ProcessInfo.processInfo.environment["VGPU_VENV"].map { URL(fileURLWithPath: $0) }
      ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent(".venv")
    let lib = venv.appendingPathComponent("lib")
    guard
      let python = try? FileManager.default.contentsOfDirectory(atPath: lib.path).first(where: {
        $0.hasPrefix("python3")
      })
    else { return nil }
    let site = lib.appendingPathComponent(python).appendingPathComponent("site-packages")
    let cuda = site.appendingPathComponent("nvidia/cuda_runtime/include")
    let cccl = site.appendingPathComponent("cupy/_core/include/cupy/_cccl/libcudacxx")
    guard FileManager.default.fileExists(atPath: cuda.appendingPathComponent("cooperative_groups.h").path),
      FileManager.default.fileExists(atPath: cccl.appendingPathComponent("nv/target").path)
    else { return nil }
    return ["-I\(cuda.path)", "-I\(cccl.path)"]
  }

  static let cooperativeGroupsSource = #"""
    #include <cooperative_groups.h>
    namespace cg = cooperative_groups;
    extern "C" __global__ void cgRounds(unsigned* buf, unsigned* out, int rounds) {
      cg::grid_group grid = cg::this_grid();
      int n = gridDim.x * blockDim.x;
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      unsigned v = i;
      for (int r = 0; r < rounds; r++) {
        buf[(r & 1) * n + i] = v;
        grid.sync();
        v = v * 3u + buf[(r & 1) * n + (i + blockDim.x + 1) % n];
      }
      out[i] = v;
    }
    """#

  @Test(arguments: [1, 2, 3]) func cudaCooperativeGroupsGridSync(hostThreads: Int) throws {
    guard let includes = Self.cooperativeGroupsIncludes else {
      print("skipped: cooperative_groups.h or CCCL's nv/target not found under .venv")
      return
    }
    let ptx = try Compiler.nvrtc!.ptx(Self.cooperativeGroupsSource, name: "cg.cu", options: includes)
    #expect(ptx.contains("%envreg1") && ptx.contains("atom.add.release.gpu"))
    let module = try PTXModule(source: ptx)
    let memory = TestMemory()
    try memory.load(module)
    let blocks = 5
    let n = blocks * 32
    let buf = memory.alloc(2 * n * 4)
    let out = memory.alloc(n * 4)
    let params = pack(try module.kernel(named: "cgRounds"), [buf, out, Int32(6)])
    try module.launch(
      kernel: "cgRounds", grid: PTXDim3(UInt32(blocks)), block: PTXDim3(32), parameters: params, memory: memory,
      options: PTXLaunchOptions(instructionBudget: 2_000_000_000, hostThreads: hostThreads, cooperative: true))
    #expect(memory.download(out, count: n, as: UInt32.self) == Self.reference(n: n, block: 32, rounds: 6))
    // Not cooperative: no workspace, and the header traps, as on a GPU.
    var thrown: PTXError?
    do {
      try module.launch(
        kernel: "cgRounds", grid: PTXDim3(UInt32(blocks)), block: PTXDim3(32), parameters: params, memory: memory,
        options: PTXLaunchOptions(hostThreads: hostThreads))
    } catch { thrown = error }
    guard case .launchFailed(_, let reason) = thrown else {
      Issue.record("expected launchFailed, got \(String(describing: thrown))")
      return
    }
    #expect(reason.contains("trap"))
  }

  @Test func aMultiGridSyncFails() throws {
    let (module, memory) = try load()
    var thrown: PTXError?
    do {
      try module.launch(
        kernel: "multigrid", grid: PTXDim3(2), block: PTXDim3(32),
        parameters: pack(try module.kernel(named: "multigrid"), [memory.alloc(64)]), memory: memory,
        options: PTXLaunchOptions(hostThreads: 2, cooperative: true))
    } catch { thrown = error }
    guard case .launchFailed(_, let reason) = thrown else {
      Issue.record("expected launchFailed, got \(String(describing: thrown))")
      return
    }
    #expect(reason.contains("with handle 0x0") && reason.contains("multi-grid groups are not provided"))
  }

  @Test func aGridSyncOutsideACooperativeLaunchFails() throws {
    let (module, memory) = try load()
    let n = 4 * 32
    var thrown: PTXError?
    do {
      try module.launch(
        kernel: "rounds", grid: PTXDim3(4), block: PTXDim3(32),
        parameters: pack(try module.kernel(named: "rounds"), [memory.alloc(2 * n * 4), memory.alloc(n * 4), Int32(1)]),
        memory: memory, options: PTXLaunchOptions(hostThreads: 2))
    } catch { thrown = error }
    guard case .launchFailed(_, let reason) = thrown else {
      Issue.record("expected launchFailed, got \(String(describing: thrown))")
      return
    }
    #expect(reason.contains("cudaCGSynchronize") && reason.contains("cuLaunchCooperativeKernel"))
  }
}
