import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// NVRTC 12.9 (nvrtc.h), the runtime CUDA compiler CuPy and cuda.core use,
/// loaded with dlopen from the NVIDIA wheel tools/setup installs in `.venv`
/// (nvidia-cuda-nvrtc-cu12): the tests and the benchmark compile the
/// project's own CUDA sources with it at run time. One loader, for both.
public struct NVRTC: @unchecked Sendable {
  /// What to produce.
  public enum Target: Sendable, Hashable {
    /// `-arch=compute_XX`: PTX text.
    case ptx(compute: Int)
    /// `-arch=sm_XX`: a cubin.
    case cubin(sm: Int)
  }

  /// A missing library or a failed compile: what was tried, what happened
  /// (NVRTC's program log for a compile), what to do.
  public struct Failure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
  }

  typealias CreateProgram =
    @convention(c) (
      UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
      UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?
    ) -> Int32
  typealias CompileProgram = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
  typealias GetSize = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
  typealias GetBytes = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
  typealias DestroyProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
  typealias ErrorString = @convention(c) (Int32) -> UnsafePointer<CChar>?

  /// The library loaded.
  public let path: String
  let createProgram: CreateProgram
  let compileProgram: CompileProgram
  let getProgramLogSize: GetSize
  let getProgramLog: GetBytes
  let getPTXSize: GetSize
  let getPTX: GetBytes
  let getCUBINSize: GetSize
  let getCUBIN: GetBytes
  let destroyProgram: DestroyProgram
  let errorStringFunction: ErrorString

  /// libnvrtc.so.12 in `VGPU_VENV`, else in the first `.venv` above each of
  /// `starts` (e.g. the executable's directory, the working directory).
  public static func locate(from starts: [URL]) -> String? {
    var venvs: [URL] = []
    if let v = ProcessInfo.processInfo.environment["VGPU_VENV"], !v.isEmpty { venvs.append(URL(fileURLWithPath: v)) }
    for start in starts {
      var dir = start.standardizedFileURL
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

  private static let cache = Mutex<[String: Result<NVRTC, Failure>]>([:])

  /// The library at `path`, loaded once per process.
  public static func load(path: String) throws(Failure) -> NVRTC {
    let result = cache.withLock { c -> Result<NVRTC, Failure> in
      if let r = c[path] { return r }
      let r = Result { () throws(Failure) in try open(path) }
      c[path] = r
      return r
    }
    return try result.get()
  }

  /// The library `locate` finds from the executable's and the working directory.
  public static func load() throws(Failure) -> NVRTC {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    guard
      let path = locate(from: [
        URL(fileURLWithPath: exe).deletingLastPathComponent(),
        URL(fileURLWithPath: FileManager.default.currentDirectoryPath),
      ])
    else {
      throw Failure(
        "NVRTC 12.9 not found (.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12): run tools/setup, or set VGPU_VENV"
      )
    }
    return try load(path: path)
  }

  private static func open(_ path: String) throws(Failure) -> NVRTC {
    guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
      let reason = dlerror().map { String(cString: $0) } ?? "unknown"
      throw Failure("cannot load NVRTC 12.9 (\(path)): \(reason); run tools/setup (nvidia-cuda-nvrtc-cu12==12.9.86)")
    }
    func symbol<T>(_ name: String, _: T.Type) throws(Failure) -> T {
      guard let p = dlsym(handle, name) else { throw Failure("\(path) has no \(name): not NVRTC 12.x?") }
      return unsafeBitCast(p, to: T.self)
    }
    return NVRTC(
      path: path, createProgram: try symbol("nvrtcCreateProgram", CreateProgram.self),
      compileProgram: try symbol("nvrtcCompileProgram", CompileProgram.self),
      getProgramLogSize: try symbol("nvrtcGetProgramLogSize", GetSize.self),
      getProgramLog: try symbol("nvrtcGetProgramLog", GetBytes.self),
      getPTXSize: try symbol("nvrtcGetPTXSize", GetSize.self), getPTX: try symbol("nvrtcGetPTX", GetBytes.self),
      getCUBINSize: try symbol("nvrtcGetCUBINSize", GetSize.self),
      getCUBIN: try symbol("nvrtcGetCUBIN", GetBytes.self),
      destroyProgram: try symbol("nvrtcDestroyProgram", DestroyProgram.self),
      errorStringFunction: try symbol("nvrtcGetErrorString", ErrorString.self))
  }

  func errorString(_ result: Int32) -> String {
    "\(errorStringFunction(result).map { String(cString: $0) } ?? "NVRTC error") (\(result))"
  }

  func check(_ result: Int32, _ what: String) throws(Failure) {
    guard result == 0 else { throw Failure("\(what) failed: \(errorString(result))") }
  }

  /// Compiles CUDA C++ `source`: PTX text (without its NUL) or cubin bytes.
  /// A failed compile throws with NVRTC's program log.
  public func compile(_ source: String, name: String = "kernel.cu", target: Target, options: [String] = [])
    throws(Failure) -> [UInt8]
  {
    var program: OpaquePointer?
    try check(createProgram(&program, source, name, 0, nil, nil), "nvrtcCreateProgram(\(name))")
    defer { _ = destroyProgram(&program) }
    let arch: String
    switch target {
    case .ptx(let compute): arch = "-arch=compute_\(compute)"
    case .cubin(let sm): arch = "-arch=sm_\(sm)"
    }
    let all = [arch] + options
    var cStrings = all.map { strdup($0) }
    defer { cStrings.forEach { free($0) } }
    let compiled = cStrings.withUnsafeMutableBufferPointer { buffer in
      buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
        compileProgram(program, Int32(buffer.count), $0)
      }
    }
    var logSize = 0
    _ = getProgramLogSize(program, &logSize)
    var log = [CChar](repeating: 0, count: max(logSize, 1))
    _ = getProgramLog(program, &log)
    let logText = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard compiled == 0 else {
      throw Failure(
        "NVRTC 12.9 could not compile \(name) with \(all.joined(separator: " ")): \(errorString(compiled))\n\(logText)")
    }
    var size = 0
    switch target {
    case .ptx:
      try check(getPTXSize(program, &size), "nvrtcGetPTXSize")
      var ptx = [CChar](repeating: 0, count: max(size, 1))
      try check(getPTX(program, &ptx), "nvrtcGetPTX")
      return ptx.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    case .cubin:
      try check(getCUBINSize(program, &size), "nvrtcGetCUBINSize")
      var cubin = [CChar](repeating: 0, count: max(size, 1))
      try check(getCUBIN(program, &cubin), "nvrtcGetCUBIN")
      return cubin.prefix(size).map { UInt8(bitPattern: $0) }
    }
  }

  /// CUDA C++ to PTX text for compute_`compute`.
  public func ptx(_ source: String, name: String = "kernel.cu", compute: Int = 75, options: [String] = [])
    throws(Failure) -> String
  {
    String(decoding: try compile(source, name: name, target: .ptx(compute: compute), options: options), as: UTF8.self)
  }
}
