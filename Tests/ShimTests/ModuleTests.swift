import Foundation
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Module images and kernels through libcuda.so.1: the library API on the
/// project's PTX (tools/selftest-kernels.cu), real images nvcc 13.5 builds at test time (PTX, a
/// cubin, fat binaries) sent unchanged to the device, which loads what has
/// PTX and refuses a bare cubin (209: it runs PTX only) with its own line,
/// and nvcc-built CUDA programs (static cudart 13) running their kernels.
@Suite struct ModuleTests {
  /// library_api.c: cuLibraryLoadData → cuLibraryGetKernel → a CUkernel used
  /// as a CUfunction, cuFuncGetParamInfo walked to CUDA_ERROR_INVALID_VALUE,
  /// attributes, occupancy, cuLaunchKernel/Ex/Cooperative, cuLink* (with
  /// CUDA's device runtime library and a grid-wide sync).
  @Test func libraryAPIOnTheProjectsPTX() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("library_api", linked: true)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines.last?.hasPrefix("ok ") == true && !r.stdout.contains("FAIL"), "\(r)")
      // One line for each refusal, saying what and why.
      for expected in [
        "cuLaunchKernelEx: thread block clusters (2×1×1) are not supported",
        "cuLibraryGetManaged is not supported",
        "cuLinkComplete: 2 inputs (a.ptx: PTX, b.cubin: cubin) cannot be linked",
        "cuLinkAddData: input 'c.o' is of CUjitInputType 3",
        "cuLinkComplete: the PTX calls cudaGetParameterBuffer, which no input defines",
        "cuLinkAddData: input 'libfoo.a' is of CUjitInputType 4",
      ] {
        #expect(r.stderrLines.contains { $0.contains(expected) }, "no line with '\(expected)': \(r)")
      }
      #expect(r.stderrLines.count == 6, "\(r)")
    }
  }

  /// PTX, a cubin and fat binaries (each compression nvcc offers) made by
  /// nvcc 13.5 from Tests/Kernels/vector_add.cu, through every load entry
  /// point: each reaches the device whole and comes back with the device's
  /// status and line; garbage and a truncated file are refused before the
  /// device with one line; after each, the next call works.
  @Test func realImagesReachTheDevice() throws {
    try CUDAClient.requireShims()
    let source = CUDAToolchain.kernels.appendingPathComponent("vector_add.cu")
    let ptx = try CUDAToolchain.nvcc(source: source, output: .ptx)
    let cubin = try CUDAToolchain.nvcc(source: source, output: .cubin)
    let fatbin = try CUDAToolchain.nvcc(source: source, output: .fatbin(.nvccDefault))
    let uncompressed = try CUDAToolchain.nvcc(source: source, output: .fatbin(.none))
    // A fat binary cut short: its header promises more than the file holds.
    let truncated = CUDAClient.directory.appendingPathComponent("truncated-\(UUID().uuidString).fatbin")
    let whole = try Data(contentsOf: uncompressed)
    try whole.prefix(whole.count / 2).write(to: truncated)
    let program = try CUDAClient.program("load_images", linked: true)
    let cases: [(String, URL)] = [
      ("data", ptx), ("ex", cubin), ("fatbin", fatbin), ("wrapper", uncompressed), ("library", fatbin),
      ("file", ptx), ("libfile", cubin), ("garbage", ptx), ("file", truncated),
    ]
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, cases.map { "\($0.0):\($0.1.path)" }, device: device)
      #expect(r.status == 0, "\(r)")
      // 0 for every image with PTX; 209 (CUDA_ERROR_NO_BINARY_FOR_GPU) from
      // the device for the cubin; 200 here for the garbage and the truncated file.
      let status = [
        "data": 0, "ex": 209, "fatbin": 0, "wrapper": 0, "library": 0, "file": 0, "libfile": 209, "garbage": 200,
      ]
      var expected: [String] = []
      for (i, (mode, _)) in cases.enumerated() {
        expected += ["\(mode) \(i == cases.count - 1 ? 200 : status[mode]!)", "next 0"]
      }
      #expect(r.lines == expected, "\(r)")
      let refused = r.stderrLines.filter { $0.contains("the device refused a") }
      #expect(refused.count == 2, "one line per image the device refused: \(r)")
      // The whole cubin was sent, and the device's own line says why it cannot run it.
      let cubinBytes = try Data(contentsOf: cubin).count
      #expect(refused.allSatisfy { $0.contains("refused a \(cubinBytes)-byte elf") && $0.contains("PTX only") }, "\(r)")
      // Garbage and the truncated file: one line for both (said once per process).
      let local = r.stderrLines.filter { $0.contains("CUDA_ERROR_INVALID_IMAGE); pass a fat binary") }
      #expect(local.count == 1 && local[0].contains("not a fatbin wrapper"), "\(r)")
      #expect(r.stderrLines.count == refused.count + 1, "\(r)")
    }
  }

  /// Kernels' printf lines reach stdout at the next synchronization, and an
  /// illegal address (700) is sticky: later calls needing the context fail too.
  @Test func printfAtSynchronizationAndStickyErrors() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("printf_sticky", linked: true)
    let printfPTX = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("printf.cu"), output: .ptx)
    let oobPTX = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("out_of_bounds.cu"), output: .ptx)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [printfPTX.path, oobPTX.path], device: device)
      #expect(r.status == 0, "\(r)")
      let synced = try #require(r.lines.firstIndex(of: "synced"), "\(r)")
      #expect(
        r.lines[..<synced].sorted() == [
          "thread 0 value 1.500000", "thread 1 value -2.000000", "thread 2 value 3.250000",
        ],
        "\(r)")
      #expect(r.lines.last == "ok", "\(r)")
      // One line says what failed and where.
      #expect(r.stderr.contains("illegal address"), "\(r)")
    }
  }

  /// A sticky error is its context's: after a launch faults in one of two
  /// contexts, that context's calls return 700 while the other allocates,
  /// copies and runs vector_add; destroying the faulted context clears it.
  @Test func stickyErrorsBelongToTheirContext() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("sticky_contexts", linked: true)
    let oobPTX = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("out_of_bounds.cu"), output: .ptx)
    let addPTX = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("vector_add.cu"), output: .ptx)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [oobPTX.path, addPTX.path], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines.contains("c1 after 700"), "\(r)")
      #expect(r.lines.contains("c2 vector_add 0"), "\(r)")
      #expect(r.lines.contains("c1 again 700"), "\(r)")
      #expect(r.lines.last == "ok", "\(r)")
      // The one line says that other contexts go on.
      #expect(r.stderr.contains("until it is destroyed"), "\(r)")
    }
  }

  /// Stream capture and graphs (clients/graph_capture.c): a copy, a memset, two saxpy launches,
  /// an event record and a copy back are captured, not run; the graph, instantiated twice, runs
  /// them on each launch with the parameters of capture time and the host data of launch time,
  /// checked against the CPU; the capture errors (900, 901, 401, 400, 907) are CUDA's; a user
  /// object held by the graph and its instantiations is destroyed once, after the last of them.
  @Test func streamCaptureMakesGraphsThatReplay() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("graph_capture", linked: true)
    let source = try String(
      contentsOf: CUDAToolchain.kernels.appendingPathComponent("saxpy.cu"), encoding: .utf8)
    let ptx = CUDAClient.directory.appendingPathComponent("graph_capture_saxpy.ptx")
    try CUDAToolchain.nvrtcPTX(source: source, name: "saxpy.cu").write(to: ptx, atomically: true, encoding: .utf8)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [ptx.path], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines.contains("capture info 1 1 1"), "\(r)")
      #expect(r.lines.contains("captured event query 907"), "\(r)")
      #expect(r.lines.contains("capture ran nothing 1"), "\(r)")
      #expect(r.lines.contains("graph launches 1 1"), "\(r)")
      #expect(r.lines.contains("destroyed exec 0 400"), "\(r)")
      #expect(r.lines.contains("global sync copy 401 900 2 901 1"), "\(r)")
      #expect(r.lines.contains("stream sync while capturing 900 901"), "\(r)")
      #expect(r.lines.contains("not capturing 401, null stream 900"), "\(r)")
      #expect(r.lines.contains("relaxed sync copy 0 0"), "\(r)")
      #expect(r.lines.contains("thread relaxed 0, fork 801 901"), "\(r)")
      #expect(r.lines.contains("user object destroyed 0 0 1"), "\(r)")
      #expect(r.lines.last == "ok", "\(r)")
    }
  }

  /// Tests/Kernels/vector_add_program.cu built by nvcc 13.5 with static
  /// cudart 13 (<<<>>> launches, cudaMemcpyToSymbol, cudaDeviceSynchronize):
  /// cudart loads its fatbins with cuLibraryLoadData (traced: neither cudart
  /// 12.9 nor 13.5 calls the CUDART_INTERFACE load slots), the device runs
  /// their PTX, and the program checks its results. Two at once; and
  /// `layered`, through `vgpu-mediator --backend cuda` whose host driver is
  /// this project's libcuda.so.1 (issue 14's check without a GPU).
  @Test(arguments: [false, true]) func nvccProgramsRunTheirKernelsTwoAtOnce(layered: Bool) throws {
    try CUDAClient.requireShims()
    let program = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("vector_add_program.cu"), output: .executable)
    let direct = layered ? nil : try MediatorProcess(arguments: ["--cuda-driver-version", "13.0"])
    let layers = layered ? try LayeredMediators(hostArguments: ["--cuda-driver-version", "13.0"]) : nil
    defer {
      direct?.stop()
      layers?.stop()
    }
    let spec = direct?.spec ?? layers!.spec
    let results = Mutex<[CUDAClient.Output]>([])
    let threads = (0..<2).map { _ in
      Thread {
        if let r = try? CUDAClient.run(program.path, [], device: spec) { results.withLock { $0.append(r) } }
      }
    }
    for t in threads { t.start() }
    let deadline = Date().addingTimeInterval(120)
    while results.withLock({ $0.count }) < 2 && Date() < deadline { usleep(50_000) }
    let all = results.withLock { $0 }
    #expect(all.count == 2)
    for r in all {
      #expect(r.status == 0, "\(r)")
      #expect(r.lines == ["PASS"], "\(r)")
      #expect(r.stderrLines.isEmpty, "\(r)")
    }
  }
}
