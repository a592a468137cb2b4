import Foundation
import TestSupport
import Testing

/// Python CUDA libraries that compile their own kernels and run them on the
/// vGPU through libcuda.so.1, against a real vgpu-mediator whose device runs
/// the PTX on its interpreter: cuda.core (NVRTC → PTX → cuLibraryLoadData →
/// cuLaunchKernelEx) and numba-cuda (NVVM → PTX → the driver's cuLink* →
/// cuLibraryLoadData → cuLaunchKernelEx). Each is skipped only when its
/// package is not in the venv (tools/setup installs them all).
@Suite struct PythonClientTests {
  /// Whether the venv holds `package` (a folder under site-packages).
  static func installed(_ package: String) -> Bool {
    let lib = Paths.packageRoot.appendingPathComponent(".venv/lib")
    let pythons = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
    return pythons.contains { python in
      python.hasPrefix("python3")
        && FileManager.default.fileExists(
          atPath: lib.appendingPathComponent("\(python)/site-packages/\(package)").path)
    }
  }

  /// No Python traceback and nothing the shim had to say.
  static func quiet(_ r: CUDAClient.Output) -> Bool {
    !r.stderr.contains("Traceback") && !r.stderrLines.contains { $0.hasPrefix("vgpu:") }
  }

  /// cuda.core's own way: Device → Program (NVRTC 12.9, compute_75 PTX) →
  /// ObjectCode → get_kernel → launch; a vector add and saxpy<float/double>
  /// (template names through name_expressions), checked in the script; the
  /// parameter layout from cuKernelGetParamInfo.
  @Test(.enabled(if: installed("cuda/core"), "cuda-core is not installed: run tools/setup"))
  func cudaCore() throws {
    try CUDAClient.requireShims()
    let python = try CUDAClient.requirePython()
    let script = CUDAClient.sources.appendingPathComponent("cuda_core_client.py").path
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(python, [script], device: device)
      #expect(r.status == 0, "\(r)")
      for fact in [
        "device \(CUDATests.identity.name) cc 9.0", "code ptx", "params 4 0:8 8:8 16:8 24:8", "vector_add 5000",
        "saxpy<float> 5000", "saxpy<double> 5000", "done",
      ] {
        #expect(r.lines.contains(fact), "missing '\(fact)': \(r)")
      }
      #expect(Self.quiet(r), "\(r)")
    }
  }

  /// numba-cuda's @cuda.jit without nvJitLink: a vector add, a block
  /// reduction (shared array, syncthreads, atomic.add) and a 2-D kernel,
  /// linked through the shim's cuLink* and checked with numpy in the script.
  @Test(.enabled(if: installed("numba_cuda"), "numba-cuda is not installed: run tools/setup"))
  func numbaCuda() throws {
    try CUDAClient.requireShims()
    let python = try CUDAClient.requirePython()
    let script = CUDAClient.sources.appendingPathComponent("numba_cuda_client.py").path
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(python, [script], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(
        r.lines == [
          "gpu \(CUDATests.identity.name)", "vector_add 3000", "block_sum True", "scale_rows 37 53", "done",
        ], "\(r)")
      #expect(Self.quiet(r), "\(r)")
    }
  }

  /// numba-cuda's shipped tests (in the wheel): the doc examples that fit an
  /// interpreter in seconds, test_cg and test_sessionize with grid-wide sync
  /// (cuLink* takes libcudadevrt.a, the PTX engine provides its
  /// cudaCGSynchronize, launches are cooperative). Left out: test_laplace
  /// (passes, but 10^4 grid syncs over 1001 threads take minutes on a debug
  /// mediator: `numbaLaplaceExample`), test_random (a 701×900×719 array:
  /// 4.5·10^8 elements: six minutes on a release mediator), test_montecarlo (passes, but 10^6 threads twice take
  /// about a minute on two cores). test_ffi links CUDA C++ and uses cffi.
  /// All 16 pass on a release mediator in one run (docs/NUMBA.md).
  @Test(
    .enabled(
      if: installed("numba_cuda") && installed("pytest") && installed("filecheck") && installed("cffi"),
      "numba-cuda, pytest, filecheck or cffi is not installed: run tools/setup"))
  func numbaDocExamples() throws {
    let modules = [
      "vecadd", "matmul", "reduction", "globals", "cpointer", "cpu_gpu_compat", "ufunc", "cg", "sessionize", "ffi",
    ]
    let r = try Self.pytest(modules.map { "doc_examples.test_\($0)" }, timeout: 300)
    #expect(r.status == 0, "\(r)")
    #expect(r.lines.contains { $0.hasPrefix("13 passed") }, "\(r)")
  }

  /// numba-cuda's doc example test_laplace: a 1001-point heat equation over
  /// 10^4 time steps, each ended by a grid-wide sync in one cooperative launch
  /// (about 5·10^8 thread-instructions: 160 s on a debug mediator with two
  /// loaded cores). Runs only with VGPU_SLOW_TESTS=1.
  @Test(
    .enabled(
      if: ProcessInfo.processInfo.environment["VGPU_SLOW_TESTS"] == "1",
      "test_laplace takes minutes on a debug mediator: set VGPU_SLOW_TESTS=1 to run it"),
    .enabled(
      if: installed("numba_cuda") && installed("pytest") && installed("filecheck"),
      "numba-cuda, pytest or filecheck is not installed: run tools/setup"))
  func numbaLaplaceExample() throws {
    let r = try Self.pytest(["doc_examples.test_laplace"], timeout: 900)
    #expect(r.status == 0, "\(r)")
    #expect(r.lines.contains { $0.hasPrefix("1 passed") }, "\(r)")
  }

  /// Runs numba-cuda's shipped test `modules` (under numba.cuda.tests) with
  /// pytest against a fresh mediator; `options` go before the modules.
  static func pytest(_ modules: [String], options: [String] = [], timeout: Double) throws -> CUDAClient.Output {
    try CUDAClient.requireShims()
    let python = try CUDAClient.requirePython()
    return try CUDATarget.mediator { device, _ in
      try CUDAClient.run(
        python,
        [
          "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "numba_pytest_plugin", "--import-mode=importlib",
          "-W", "ignore", "--tb=short",
        ] + options + ["--pyargs"] + modules.map { "numba.cuda.tests.\($0)" },
        device: device, timeout: timeout,
        // The plugin (clients/numba_pytest_plugin.py) supplies the fixture numba's repository conftest defines.
        extra: ["PYTHONPATH": CUDAClient.sources.path])
    }
  }

  /// numba-cuda's shipped cudapy/cudadrv tests, a curated subset that passes
  /// whole on the interpreter in a few minutes with a debug mediator
  /// (docs/NUMBA.md has every listed file's counts and the reasons for what is
  /// left out): barriers incl. syncthreads_count/_and/_or (bar.red), warp
  /// shuffles/votes/match, const/shared/local memory, globals, the driver
  /// linker with `link=[...]` PTX and CUDA C++ files (several PTX inputs to
  /// cuLink*), and the driver API tests (streams, events, graph capture). Every test collected must pass: no failures, errors or skips
  /// beyond those counted here.
  @Test(
    .enabled(
      if: installed("numba_cuda") && installed("pytest") && installed("filecheck"),
      "numba-cuda, pytest or filecheck is not installed: run tools/setup"))
  func numbaShippedTests() throws {
    let r = try Self.pytest(NumbaSubset.modules, options: NumbaSubset.excluded, timeout: 600)
    #expect(r.status == 0, "\(r)")
    #expect(r.lines.contains { $0.hasPrefix(NumbaSubset.summary) }, "expected '\(NumbaSubset.summary)': \(r)")
  }

  /// CuPy with its kernels as PTX (CUPY_COMPILE_WITH_PTX=1), each result
  /// checked against NumPy (clients/cupy_client.py): creation, elementwise
  /// arithmetic and ufuncs, reductions (sum, max, argmax, mean, along axes),
  /// RawKernel, ElementwiseKernel, ReductionKernel and fancy indexing, through
  /// cuModuleLoadData and cuLaunchKernel, and its runtime's
  /// cudaStreamIsCapturing before each copy back. CUPY_ACCELERATORS is
  /// emptied: CuPy's default CUB reduction loads a module that keeps the device
  /// busy for about 20 s (the client gives up after 2 s of silence); the plain
  /// reduction kernel is what runs here. Its kernel cache goes to a fresh
  /// folder, so each run compiles.
  @Test(.enabled(if: installed("cupy"), "cupy-cuda12x is not installed: run tools/setup"))
  func cupy() throws {
    let r = try Self.cupyClient([])
    #expect(r.status == 0, "\(r)")
    #expect(
      r.lines == [
        "arange 10", "zeros 12", "full 5", "linspace 11", "eye 16", "asarray 2112", "arithmetic 2112", "ufuncs 2112",
        "maximum 2112", "where 2112", "integer 500", "sum 1", "sum-axis 33", "max 1", "max-axis 64", "argmax 1",
        "argmax-axis 33", "mean 1", "raw 1000", "elementwise 1000", "reduction 64", "take 660", "mask 690",
        "scatter 10", "done",
      ], "\(r)")
    #expect(Self.quiet(r), "\(r)")
  }

  /// cupy.sort and argsort: Thrust's radix sort from the fat binary CuPy
  /// ships (72 MB, PTX for compute_100 only, loaded whole: about a minute
  /// with a debug mediator). It ran into two faults of the device: kernels
  /// reported the PTX ISA version as CU_FUNC_ATTRIBUTE_PTX_VERSION, so CUB
  /// asked for kernels of another tuning policy (cudaErrorInvalidDeviceFunction),
  /// and declared virtual registers as NUM_REGS, so occupancy was 0 blocks and
  /// Thrust divided by it (SIGFPE).
  @Test(.enabled(if: installed("cupy"), "cupy-cuda12x is not installed: run tools/setup"))
  func cupySort() throws {
    let r = try Self.cupyClient(["sort"])
    #expect(r.status == 0, "\(r)")
    #expect(r.lines == ["sort 2000", "argsort 500", "done"], "\(r)")
    #expect(Self.quiet(r), "\(r)")
  }

  static func cupyClient(_ arguments: [String]) throws -> CUDAClient.Output {
    try CUDAClient.requireShims()
    let python = try CUDAClient.requirePython()
    let script = CUDAClient.sources.appendingPathComponent("cupy_client.py").path
    let cache = CUDAClient.directory.appendingPathComponent("cupy-cache-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: cache) }
    return try CUDATarget.mediator { device, _ in
      try CUDAClient.run(
        python, [script] + arguments, device: device, timeout: 600,
        extra: ["CUPY_COMPILE_WITH_PTX": "1", "CUPY_ACCELERATORS": "", "CUPY_CACHE_DIR": cache.path])
    }
  }
}

/// What numbaShippedTests runs and the summary line pytest must print.
enum NumbaSubset {
  static let modules = [
    "cudapy.test_sync", "cudapy.test_warp_ops", "cudapy.test_constmem", "cudapy.test_globals", "cudapy.test_sm",
    "cudapy.test_intrinsics", "cudadrv.test_linker", "cudadrv.test_cuda_driver",
  ]
  /// Tests left out by name (`-k "not NAME and ..."`), each for the reason docs/NUMBA.md gives.
  static let leftOut = [
    // 22121216 blocks of 256 threads (5.7·10^9): 50 s on a release mediator, many
    // minutes on the debug one this suite starts (docs/NUMBA.md).
    "test_issue_9229"
  ]
  static var excluded: [String] {
    leftOut.isEmpty ? [] : ["-k", leftOut.map { "not \($0)" }.joined(separator: " and ")]
  }
  /// Skipped: 6 test_intrinsics tests need nvJitLink (Numbast bindings), test_linker's
  /// test_debug_kernel_with_lto needs NUMBA_CUDA_TEST_BIN_DIR and test_link_for_different_cc nvJitLink.
  /// test_cuda_driver's 18 include cuda.core's graph builder (stream capture) and an sm_90a
  /// kernel with `tensormap.replace`.
  static let summary = "173 passed, 8 skipped, 1 deselected"
}
