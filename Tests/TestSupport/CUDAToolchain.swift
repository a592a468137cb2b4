import Foundation
import NVRTC
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// NVIDIA's compilers from the PyPI wheels tools/setup installs into `.venv`
/// (tools/requirements-test.txt), for tests that build the project's own CUDA
/// sources (Tests/Kernels) at test time. No GPU and no CUDA toolkit needed.
///
/// Where the wheels put things (site-packages/nvidia/…):
///
///   cu13/bin/nvcc, fatbinary, ptxas, nvlink, cudafe++   nvidia-cuda-nvcc 13.5.37
///   cu13/nvvm/bin/cicc, cu13/nvvm/libdevice              nvidia-nvvm 13.5.37
///   cu13/include/crt/…                                   nvidia-cuda-crt 13.5.37
///   cu13/include/cuda_runtime.h, cu13/lib/libcudart_static.a   nvidia-cuda-runtime 13.5.37
///   cuda_nvrtc/lib/libnvrtc.so.12                        nvidia-cuda-nvrtc-cu12 12.9.86
///   cuda_runtime/, cuda_nvcc/                            the cu12 runtime and nvcc (ShimTests); no clash
///
/// nvcc needs no flags or environment for these: cu13/bin/nvcc.profile puts
/// nvvm/bin (cicc) and bin (ptxas, fatbinary) on its PATH and adds
/// `-I cu13/include` and `-L cu13/lib`, all relative to nvcc itself, and it
/// drives the system g++ found on PATH (Debian's g++, from tools/setup). An
/// executable links libcudart_static.a by default (REAL-KERNELS.md §4).
///
/// Fat binary compression, measured with nvcc 13.5 on vector_add.cu (`-arch=sm_75`):
/// default: PTX zstd, cubin uncompressed; `-Xfatbin -compress-all` and
/// `--compress-mode=size`: both zstd; `--compress-mode=speed`: PTX LZ4;
/// `--compress-mode=none` (= `-Xfatbin -compress=false`): nothing compressed.
public enum CUDAToolchain {
  /// What nvcc is asked to produce.
  public enum Output: Hashable, Sendable {
    /// `-ptx`: PTX text for `.target sm_<arch>`.
    case ptx
    /// `-cubin`: an ELF for `sm_<arch>`.
    case cubin
    /// `-fatbin`: a fat binary with an sm_<arch> cubin and compute_<arch> PTX.
    case fatbin(FatbinCompression)
    /// A host program linked with static cudart, with compute_<arch> PTX and
    /// sm_<arch> code (`-gencode arch=compute_XX,code=[compute_XX,sm_XX]`).
    case executable
  }

  /// How nvcc compresses fat binary entries.
  public enum FatbinCompression: Hashable, Sendable, CaseIterable {
    /// nvcc 13.5's default (`balance`): zstd PTX, uncompressed cubin.
    case nvccDefault
    /// `--compress-mode=none`: no entry compressed.
    case none
    /// `-Xfatbin -compress-all`: every entry, zstd.
    case all
    /// `--compress-mode=size`: every entry, zstd.
    case size
    /// `--compress-mode=speed`: LZ4 blocks.
    case speed

    var arguments: [String] {
      switch self {
      case .nvccDefault: []
      case .none: ["--compress-mode=none"]
      case .all: ["-Xfatbin", "-compress-all"]
      case .size: ["--compress-mode=size"]
      case .speed: ["--compress-mode=speed"]
      }
    }
  }

  /// The kernel corpus: Tests/Kernels in the package.
  public static var kernels: URL { Paths.packageRoot.appendingPathComponent("Tests/Kernels") }

  /// The venv: `VGPU_VENV` if set, else `.venv` at the package root.
  public static var venv: URL {
    if let path = ProcessInfo.processInfo.environment["VGPU_VENV"], !path.isEmpty {
      return URL(fileURLWithPath: path)
    }
    return Paths.packageRoot.appendingPathComponent(".venv")
  }

  /// site-packages/nvidia in the venv, whatever the Python version.
  public static func nvidiaPackages() throws -> URL {
    let lib = venv.appendingPathComponent("lib")
    let pythons = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
    for python in pythons.sorted().reversed() where python.hasPrefix("python3") {
      let nvidia = lib.appendingPathComponent("\(python)/site-packages/nvidia")
      if FileManager.default.fileExists(atPath: nvidia.path) { return nvidia }
    }
    throw CUDAToolchainError(
      "no NVIDIA wheels in \(lib.path)/python3*/site-packages/nvidia: run tools/setup (or set VGPU_VENV to a venv with tools/requirements-test.txt installed)"
    )
  }

  /// cu13/bin/nvcc from nvidia-cuda-nvcc 13.5.
  public static func nvccPath() throws -> URL {
    let nvcc = try nvidiaPackages().appendingPathComponent("cu13/bin/nvcc")
    guard FileManager.default.isExecutableFile(atPath: nvcc.path) else {
      throw CUDAToolchainError(
        "nvcc 13.5 is not at \(nvcc.path): run tools/setup (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, nvidia-cuda-runtime 13.5.37)"
      )
    }
    return nvcc
  }

  /// Compiles `source` with nvcc for `arch` (75 = sm_75) and returns the
  /// output file, in a per-process temp folder. The same source, output and
  /// arguments are compiled once per process.
  public static func nvcc(source: URL, output: Output, arch: Int = 75, arguments: [String] = []) throws -> URL {
    let key = "\(source.path)|\(output)|\(arch)|\(arguments)"
    if let cached = cache.withLock({ $0[key] }) { return cached }
    let nvcc = try nvccPath()
    guard let gxx = which("g++") else {
      throw CUDAToolchainError("nvcc needs a host compiler and g++ is not on PATH: run tools/setup (Debian g++)")
    }
    let stem = source.deletingPathExtension().lastPathComponent
    let suffix: String
    var args: [String]
    switch output {
    case .ptx:
      (suffix, args) = ("ptx", ["-ptx", "-arch=sm_\(arch)"])
    case .cubin:
      (suffix, args) = ("cubin", ["-cubin", "-arch=sm_\(arch)"])
    case .fatbin(let compression):
      (suffix, args) = ("\(compression).fatbin", ["-fatbin", "-arch=sm_\(arch)"] + compression.arguments)
    case .executable:
      (suffix, args) = ("exe", ["-gencode", "arch=compute_\(arch),code=[compute_\(arch),sm_\(arch)]"])
    }
    let out = try temporaryDirectory().appendingPathComponent(
      "\(stem)-sm\(arch)-\(counter.add(1, ordering: .relaxed).newValue).\(suffix)")
    args += ["--compiler-bindir", gxx] + arguments + ["-o", out.path, source.path]
    let result = try run(nvcc, args)
    guard result.status == 0, FileManager.default.fileExists(atPath: out.path) else {
      throw CUDAToolchainError(
        "nvcc \(args.joined(separator: " ")) failed (status \(result.status)):\n\(result.output)")
    }
    cache.withLock { $0[key] = out }
    return out
  }

  /// `nvcc(…)`'s output file, read.
  public static func nvccBytes(source: URL, output: Output, arch: Int = 75, arguments: [String] = []) throws -> [UInt8]
  {
    let url = try nvcc(source: source, output: output, arch: arch, arguments: arguments)
    return [UInt8](try Data(contentsOf: url))
  }

  // MARK: NVRTC 12.9 through dlopen

  /// What NVRTC is asked to produce.
  public enum NVRTCTarget: Sendable, Hashable {
    /// `-arch=compute_XX`: PTX text.
    case ptx(compute: Int)
    /// `-arch=sm_XX`: a cubin (and PTX is not available, as NVRTC documents).
    case cubin(sm: Int)
  }

  /// Compiles CUDA source with NVRTC 12.9 (libnvrtc.so.12 from the venv), as
  /// CuPy and cuda.core do: PTX text for `.ptx`, cubin bytes for `.cubin`.
  /// Errors carry NVRTC's program log.
  public static func nvrtc(source: String, name: String = "kernel.cu", target: NVRTCTarget, options: [String] = [])
    throws -> [UInt8]
  {
    let path = try nvidiaPackages().appendingPathComponent("cuda_nvrtc/lib/libnvrtc.so.12").path
    do {
      let api = try NVRTC.load(path: path)
      switch target {
      case .ptx(let compute):
        return try api.compile(source, name: name, target: .ptx(compute: compute), options: options)
      case .cubin(let sm): return try api.compile(source, name: name, target: .cubin(sm: sm), options: options)
      }
    } catch {
      throw CUDAToolchainError(error.description)
    }
  }

  /// NVRTC to PTX text.
  public static func nvrtcPTX(source: String, name: String = "kernel.cu", compute: Int = 75, options: [String] = [])
    throws -> String
  {
    String(
      decoding: try nvrtc(source: source, name: name, target: .ptx(compute: compute), options: options), as: UTF8.self)
  }

  // MARK: Plumbing

  static let cache = Mutex<[String: URL]>([:])
  static let counter = Atomic<Int>(0)

  static func temporaryDirectory() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-cuda-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
  }

  static func which(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
      let path = "\(dir)/\(name)"
      if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
  }

  /// Runs a tool with its output in a file (a pipe nobody drains can fill and block it).
  static func run(_ tool: URL, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let log = try temporaryDirectory().appendingPathComponent("log-\(counter.add(1, ordering: .relaxed).newValue).txt")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let handle = try FileHandle(forWritingTo: log)
    defer { try? FileManager.default.removeItem(at: log) }
    let process = Process()
    process.executableURL = tool
    process.arguments = arguments
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    process.waitUntilExit()
    try? handle.close()
    let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    return (process.terminationStatus, output)
  }
}

/// A missing toolchain or a failed compile: what was tried and what to do.
public struct CUDAToolchainError: Error, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}
