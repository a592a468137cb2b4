import Foundation
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Builds the CUDA client programs in Tests/ShimTests/clients with `cc` (the
/// test target must not link the shims) and runs them, and the Python
/// clients, as separate processes with LD_LIBRARY_PATH pointing at the built
/// shims — the way real programs meet libcuda.so.1.
enum CUDAClient {
  static let sources = Paths.packageRoot.appendingPathComponent("Tests/ShimTests/clients")
  static let directory: URL = {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-cuda-tests-\(getpid())")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
  }()
  private static let built = Mutex<[String: URL]>([:])

  struct Output: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }
    var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    var description: String { "exit \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }
  }

  struct Failure: Error, CustomStringConvertible { var description: String }

  static func requireShims() throws {
    for lib in ["libcuda.so.1", "libvgpucore.so"] {
      try #require(
        FileManager.default.fileExists(atPath: Paths.shims.appendingPathComponent(lib).path),
        "\(lib) missing in \(Paths.shims.path): run tools/test, which builds the shims before swift test")
    }
  }

  /// Compiles clients/NAME.c once per test run; `linked`: against libcuda.so.1
  /// (else the program dlopens it, as Ollama does).
  static func program(_ name: String, linked: Bool) throws -> URL {
    if let url = built.withLock({ $0[name] }) { return url }
    // Parallel test cases may build the same program: each builds its own
    // file and renames it into place, which is atomic (a running copy keeps its own).
    let output = directory.appendingPathComponent(name)
    let scratch = directory.appendingPathComponent("\(name).\(UUID().uuidString)")
    var arguments = [
      "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-o", scratch.path,
      sources.appendingPathComponent(name + ".c").path,
    ]
    if linked { arguments += ["-L", Paths.shims.path, "-l:libcuda.so.1"] }
    // A client that replaces malloc (cuda_api.c) leaves it to the preloaded sanitizer runtime.
    if Sanitizer.active { arguments.append("-DVGPU_SANITIZER_PRELOADED") }
    arguments.append("-ldl")
    let cc = try run("/usr/bin/cc", arguments, device: nil)
    guard cc.status == 0 else { throw Failure(description: "cc \(name).c failed:\n\(cc)") }
    guard rename(scratch.path, output.path) == 0 else {
      throw Failure(description: "rename \(scratch.path): \(String(cString: strerror(errno)))")
    }
    built.withLock { $0[name] = output }
    return output
  }

  /// The environment of a client: the test's, with the shims on
  /// LD_LIBRARY_PATH and VGPU_DEVICE set to `device` (removed when nil).
  static func environment(device: String?) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["LD_LIBRARY_PATH"] = Paths.shims.path
    env["VGPU_DEVICE"] = device
    env["VGPU_DEBUG"] = nil
    return env
  }

  /// Runs `executable` to completion (killed after `timeout` seconds),
  /// collecting stdout and stderr apart; `extra` is added to its environment.
  /// The timeout only ends a hung client: cuda_api takes 76 s alone in a debug
  /// build and passed 120 s in a full suite beside the 16-process stress test.
  static func run(
    _ executable: String, _ arguments: [String], device: String?, timeout: Double = 300,
    extra: [String: String] = [:]
  ) throws -> Output {
    let id = UUID().uuidString
    let out = directory.appendingPathComponent("\(id).out")
    let err = directory.appendingPathComponent("\(id).err")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    _ = FileManager.default.createFile(atPath: err.path, contents: nil)
    defer {
      try? FileManager.default.removeItem(at: out)
      try? FileManager.default.removeItem(at: err)
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    p.environment = Sanitizer.clientEnvironment(
      environment(device: device).merging(extra) { $1 }, executable: executable)
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = try FileHandle(forWritingTo: err)
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let finished = waitUntil(seconds: timeout * Sanitizer.slowdown) { !p.isRunning }
    if !finished { kill(p.processIdentifier, SIGKILL) }
    // Always, also when it has exited: waitUntilExit drops the run-loop
    // source through which swift-corelibs-foundation's Process holds itself.
    p.waitUntilExit()
    let result = Output(
      status: finished ? p.terminationStatus : -1,
      stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
      stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    if !finished { throw Failure(description: "\(executable) did not finish within \(timeout) s:\n\(result)") }
    return result
  }

  /// The Python of the venv tools/setup fills (cuda-bindings), or a skip.
  static func requirePython() throws -> String {
    let python = Paths.python.path
    try #require(FileManager.default.isExecutableFile(atPath: python), "no \(python): run tools/setup")
    return python
  }
}

/// Where a client finds its device: a real vgpu-mediator process serving a
/// shared-memory BAR. (The shims carry no device model, so `sim` is refused:
/// CUDATests.simIsRefused checks that it says so.)
enum CUDATarget {
  /// Runs `body` with the VGPU_DEVICE value of a fresh mediator and the
  /// device memory size it reports.
  static func mediator<R>(_ body: (_ device: String, _ memory: UInt64) throws -> R) throws -> R {
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    return try body(mediator.spec, 8 << 30)
  }
}
