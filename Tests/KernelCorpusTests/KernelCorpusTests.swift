import FatBinary
import Foundation
import TestSupport
import Testing

/// The kernel corpus (Tests/Kernels): every kernel file and the `.entry`
/// names its PTX must have. `extern "C"` keeps the names unmangled.
let corpus: [(file: String, entries: Set<String>)] = [
  ("vector_add.cu", ["vector_add"]),
  ("saxpy.cu", ["saxpy"]),
  ("reduce_sum.cu", ["reduce_sum"]),
  ("matmul_tiled.cu", ["matmul_tiled"]),
  ("softmax.cu", ["softmax"]),
  ("atomics.cu", ["atomics"]),
  ("vote.cu", ["vote"]),
  ("scan_block.cu", ["scan_block"]),
  ("dynamic_shared.cu", ["dynamic_shared_reverse"]),
  ("device_globals.cu", ["scale_by_global", "count_threads"]),
  ("double_math.cu", ["double_math"]),
  ("struct_param.cu", ["struct_param"]),
  ("index64.cu", ["index64_fill"]),
  ("printf.cu", ["print_values"]),
  ("assert.cu", ["assert_less"]),
  ("out_of_bounds.cu", ["out_of_bounds"]),
  ("endless_loop.cu", ["endless_loop"]),
]

/// The `.entry` names in PTX text (`.visible .entry name(`).
func entryNames(_ ptx: String) -> Set<String> {
  Set(ptx.matches(of: /\.entry\s+([A-Za-z_$][A-Za-z0-9_$]*)/).map { String($0.output.1) })
}

/// Builds the corpus with nvcc 13.5 and NVRTC 12.9 from .venv (tools/setup).
/// Running the kernels on the device comes with the PTX engine.
@Suite struct KernelCorpusTests {
  @Test func everyKernelFileIsListed() throws {
    let files = try FileManager.default.contentsOfDirectory(atPath: CUDAToolchain.kernels.path)
      // Whole programs (_program.cu) and kernels that need -rdc=true and CUDA's device
      // runtime (_rdc.cu: GridSyncTests, LayeredTests) are compiled by the tests that use them.
      .filter { $0.hasSuffix(".cu") && !$0.hasSuffix("_program.cu") && !$0.hasSuffix("_rdc.cu") }
    #expect(Set(files) == Set(corpus.map(\.file)), "Tests/Kernels and the corpus list differ")
  }

  @Test(arguments: corpus.map(\.file))
  func nvccPTX(file: String) throws {
    let ptx = try CUDAToolchain.nvccBytes(source: CUDAToolchain.kernels.appendingPathComponent(file), output: .ptx)
    let text = String(decoding: ptx, as: UTF8.self)
    #expect(text.contains(".version 9."), "nvcc 13.5 writes PTX ISA 9.x")
    #expect(entryNames(text) == expected(file))
  }

  @Test(arguments: corpus.map(\.file))
  func nvccFatbin(file: String) throws {
    let image = try CUDAToolchain.nvccBytes(
      source: CUDAToolchain.kernels.appendingPathComponent(file), output: .fatbin(.nvccDefault))
    let ptx = try ModuleImageLoader.ptx(from: image, computeCapability: 90)
    #expect(entryNames(ptx.text) == expected(file))
  }

  @Test(arguments: corpus.map(\.file))
  func nvrtcPTX(file: String) throws {
    let url = CUDAToolchain.kernels.appendingPathComponent(file)
    let ptx = try CUDAToolchain.nvrtcPTX(source: try String(contentsOf: url, encoding: .utf8), name: file, compute: 75)
    #expect(ptx.contains(".version 8.8"), "NVRTC 12.9 writes PTX ISA 8.8")
    #expect(entryNames(ptx) == expected(file))
  }

  /// The cudart program builds and links (static cudart 13); running it needs a
  /// device that runs kernels, which comes later.
  @Test func programBuilds() throws {
    let exe = try CUDAToolchain.nvcc(
      source: CUDAToolchain.kernels.appendingPathComponent("vector_add_program.cu"), output: .executable)
    let head = try FileHandle(forReadingFrom: exe).read(upToCount: 4) ?? Data()
    #expect([UInt8](head) == [0x7F, 0x45, 0x4C, 0x46])
    #expect(FileManager.default.isExecutableFile(atPath: exe.path))
  }

  func expected(_ file: String) -> Set<String> { corpus.first { $0.file == file }!.entries }
}

/// The selftest's PTX (Sources/SelftestKernels, and the C clients' copy) is
/// what tools/selftest-kernels.cu compiles to with today's nvcc 13.5.
@Suite struct SelftestKernelsTests {
  @Test func theCommittedPTXIsWhatTheScriptGeneratesNow() throws {
    let script = Paths.packageRoot.appendingPathComponent("tools/gen-selftest-ptx")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script.path, "--check"]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "tools/gen-selftest-ptx --check:\n\(output.prefix(4000))")
  }
}

@Suite struct CUDAToolchainTests {
  /// A compile error comes back with NVRTC's log: the file, the line, the message.
  @Test func nvrtcErrorCarriesTheLog() throws {
    do {
      _ = try CUDAToolchain.nvrtcPTX(source: "extern \"C\" __global__ void k() { undeclared(); }", name: "broken.cu")
      Issue.record("NVRTC compiled a call to an undeclared function")
    } catch let error as CUDAToolchainError {
      #expect(error.description.contains("NVRTC_ERROR_COMPILATION"))
      #expect(error.description.contains("broken.cu(1)"))
      #expect(error.description.contains("undeclared"))
    }
  }

  /// NVRTC with -arch=sm_XX gives a cubin for that arch.
  @Test func nvrtcCubin() throws {
    let source = try String(contentsOf: CUDAToolchain.kernels.appendingPathComponent("saxpy.cu"), encoding: .utf8)
    let cubin = try CUDAToolchain.nvrtc(source: source, target: .cubin(sm: 90))
    #expect(Array(cubin.prefix(4)) == [0x7F, 0x45, 0x4C, 0x46])
    #expect(cubin.withUnsafeBytes { ModuleImageLoader.cubinArch($0) } == 90)
  }
}
