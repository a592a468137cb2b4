import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Module images and kernels through libcuda.so.1: the library API on the
/// device's text image, real images nvcc 13.5 builds at test time (PTX, a
/// cubin, fat binaries) sent unchanged to the device, which judges them, and
/// an nvcc-built CUDA program (static cudart 13) reaching its first launch.
///
/// The reference device runs only its built-in kernels until its PTX engine
/// lands, so real images come back refused (CUDA_ERROR_INVALID_IMAGE) with
/// the device's own line; what these tests pin is that they reach it whole,
/// and that the refusal leaves the process's context usable.
@Suite struct ModuleTests {
  /// library_api.c: cuLibraryLoadData → cuLibraryGetKernel → a CUkernel used
  /// as a CUfunction, cuFuncGetParamInfo walked to CUDA_ERROR_INVALID_VALUE,
  /// attributes, occupancy, cuLaunchKernel/Ex/Cooperative, cuLink*.
  @Test func libraryAPIOnTheTextImage() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("library_api", linked: true)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines.last?.hasPrefix("ok ") == true && !r.stdout.contains("FAIL"), "\(r)")
      // One line for each refusal, saying what and why.
      for expected in [
        "cuLaunchKernelEx: thread block clusters (2×1×1) are not supported",
        "cuLibraryGetKernelCount: the device does not list a module's kernels",
        "cuLibraryGetManaged is not supported",
        "ptx image (CUDA_ERROR_INVALID_IMAGE)",
        "cuLinkComplete: 2 inputs (a.ptx, b.ptx) cannot be linked",
        "cuLinkAddData: input 'c.o' is of CUjitInputType 3",
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
      // 200: CUDA_ERROR_INVALID_IMAGE, from the device for the real images and here for the last two.
      var expected: [String] = []
      for (mode, _) in cases { expected += ["\(mode) 200", "next 0"] }
      #expect(r.lines == expected, "\(r)")
      let refused = r.stderrLines.filter { $0.contains("the device refused a") }
      #expect(refused.count == 7, "one line per image the device refused: \(r)")
      for kind in ["ptx image", "elf image", "fatbin image"] {
        #expect(refused.contains { $0.contains(kind) }, "no refusal of a \(kind): \(r)")
      }
      // The device's own line comes back in the error.
      #expect(refused.allSatisfy { $0.contains("Module image line 1") }, "\(r)")
      // The whole image was sent: the PTX file's bytes and its NUL, the cubin's size.
      let ptxBytes = try Data(contentsOf: ptx).count
      #expect(refused.contains { $0.contains("cuModuleLoad: the device refused a \(ptxBytes + 1)-byte ptx") }, "\(r)")
      let cubinBytes = try Data(contentsOf: cubin).count
      #expect(refused.contains { $0.contains("refused a \(cubinBytes)-byte elf") }, "\(r)")
      // Garbage and the truncated file: one line for both (said once per process).
      let local = r.stderrLines.filter { $0.contains("CUDA_ERROR_INVALID_IMAGE); pass a fat binary") }
      #expect(local.count == 1 && local[0].contains("not a fatbin wrapper"), "\(r)")
      #expect(r.stderrLines.count == refused.count + 1, "\(r)")
    }
  }

  /// Tests/Kernels/vector_add_program.cu built by nvcc 13.5 with static
  /// cudart 13 (<<<>>> launches): cudart loads its fatbins with
  /// cuLibraryLoadData at start (traced: neither cudart 12.9 nor 13.5 calls
  /// the CUDART_INTERFACE load slots), which loads at first use, so
  /// cudaMalloc and cudaMemcpy work and the program fails at its first
  /// launch, where the device refuses the fatbin and says why.
  @Test func nvccProgramReachesItsFirstLaunch() throws {
    try CUDAClient.requireShims()
    let program = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("vector_add_program.cu"), output: .executable)
    let mediator = try MediatorProcess(arguments: ["--cuda-driver-version", "13.0"])
    defer { mediator.stop() }
    let r = try CUDAClient.run(program.path, [], device: mediator.spec)
    #expect(r.status == 1, "\(r)")
    #expect(r.lines == ["FAIL: vector_add launch: device kernel image is invalid (200)"], "\(r)")
    #expect(r.stderrLines.count == 1, "\(r)")
    #expect(r.stderr.contains("cuLibraryGetKernel: the device refused a") && r.stderr.contains("fatbin image"), "\(r)")
  }
}
