import BenchKit
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// NVRTC 12.9 (libnvrtc.so.12 from the NVIDIA wheel tools/setup installs in
/// `.venv`), loaded with dlopen: the engine section compiles the project's
/// own CUDA sources (Tests/Kernels) to PTX at bench time, as the kernel
/// corpus tests do (Tests/TestSupport/CUDAToolchain.swift; a benchmark cannot
/// depend on a test target, hence this small copy).
struct BenchNVRTC {
  typealias CreateProgram =
    @convention(c) (
      UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
      UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?
    ) -> Int32
  typealias CompileProgram = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
  typealias GetSize = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
  typealias GetBytes = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
  typealias DestroyProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32

  let path: String
  let createProgram: CreateProgram
  let compileProgram: CompileProgram
  let getProgramLogSize: GetSize
  let getProgramLog: GetBytes
  let getPTXSize: GetSize
  let getPTX: GetBytes
  let destroyProgram: DestroyProgram

  /// `VGPU_VENV`, else the first `.venv` above this executable or the
  /// working directory: its site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12.
  static func locate() -> String? {
    var venvs: [URL] = []
    if let v = ProcessInfo.processInfo.environment["VGPU_VENV"], !v.isEmpty {
      venvs.append(URL(fileURLWithPath: v))
    }
    for start in [
      URL(fileURLWithPath: selfExecutable).deletingLastPathComponent(),
      URL(fileURLWithPath: FileManager.default.currentDirectoryPath),
    ] {
      var dir = start
      while dir.path != "/" {
        venvs.append(dir.appendingPathComponent(".venv"))
        dir.deleteLastPathComponent()
      }
    }
    for venv in venvs {
      let lib = venv.appendingPathComponent("lib")
      let pythons = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
      for python in pythons.sorted().reversed() where python.hasPrefix("python3") {
        let so = lib.appendingPathComponent("\(python)/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12").path
        if FileManager.default.fileExists(atPath: so) { return so }
      }
    }
    return nil
  }

  static func load() throws -> BenchNVRTC {
    guard let path = locate() else {
      throw BenchError(
        "NVRTC 12.9 not found (.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12): run tools/setup, or set VGPU_VENV"
      )
    }
    guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
      throw BenchError("cannot load \(path): \(dlerror().map { String(cString: $0) } ?? "unknown")")
    }
    func symbol<T>(_ name: String, _: T.Type) throws -> T {
      guard let p = dlsym(handle, name) else { throw BenchError("\(path) has no \(name): not NVRTC 12.x?") }
      return unsafeBitCast(p, to: T.self)
    }
    return BenchNVRTC(
      path: path, createProgram: try symbol("nvrtcCreateProgram", CreateProgram.self),
      compileProgram: try symbol("nvrtcCompileProgram", CompileProgram.self),
      getProgramLogSize: try symbol("nvrtcGetProgramLogSize", GetSize.self),
      getProgramLog: try symbol("nvrtcGetProgramLog", GetBytes.self),
      getPTXSize: try symbol("nvrtcGetPTXSize", GetSize.self), getPTX: try symbol("nvrtcGetPTX", GetBytes.self),
      destroyProgram: try symbol("nvrtcDestroyProgram", DestroyProgram.self))
  }

  /// CUDA source to PTX text for compute_`compute`; a failed compile throws with NVRTC's log.
  func ptx(source: String, name: String, compute: Int = 75) throws -> String {
    var program: OpaquePointer?
    guard createProgram(&program, source, name, 0, nil, nil) == 0 else {
      throw BenchError("nvrtcCreateProgram(\(name)) failed")
    }
    defer { _ = destroyProgram(&program) }
    let arguments: [String] = ["-arch=compute_\(compute)"]
    var options = arguments.map { strdup($0) }
    defer { options.forEach { free($0) } }
    let status = options.withUnsafeMutableBufferPointer { buffer in
      buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
        compileProgram(program, Int32(buffer.count), $0)
      }
    }
    guard status == 0 else {
      var size = 0
      _ = getProgramLogSize(program, &size)
      var log = [CChar](repeating: 0, count: max(size, 1))
      _ = getProgramLog(program, &log)
      let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
      throw BenchError("NVRTC could not compile \(name) (status \(status)): \(text)")
    }
    var size = 0
    guard getPTXSize(program, &size) == 0 else { throw BenchError("nvrtcGetPTXSize(\(name)) failed") }
    var ptx = [CChar](repeating: 0, count: max(size, 1))
    guard getPTX(program, &ptx) == 0 else { throw BenchError("nvrtcGetPTX(\(name)) failed") }
    return String(decoding: ptx.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
}
