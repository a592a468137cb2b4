import Foundation
import TestSupport
import Testing

/// Builds and runs the client programs in Tests/ShimTests/clients against the built shims,
/// as real programs load them: LD_LIBRARY_PATH to the shims, VGPU_DEVICE naming the device.
enum ShimProgram {
  static let clients = Paths.packageRoot.appendingPathComponent("Tests/ShimTests/clients")
  static let scratch: URL = {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-shim-programs-\(getpid())")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
  }()

  struct Output {
    var status: Int32
    var stdout: String
    var stderr: String
    var stderrLines: [Substring] { stderr.split(separator: "\n") }
  }

  /// This process's environment with the shims on the library path, `device` as
  /// VGPU_DEVICE (none if nil), and no VGPU_DEBUG.
  static func environment(device: String?, _ extra: [String: String] = [:]) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["VGPU_DEVICE"] = device
    env["VGPU_DEBUG"] = nil
    env["LD_LIBRARY_PATH"] = Paths.shims.path
    env["PKG_CONFIG_PATH"] = Paths.shims.appendingPathComponent("pkgconfig").path
    return env.merging(extra) { $1 }
  }

  /// Runs `executable` to its end (killed after `timeout` seconds), output collected.
  static func run(
    _ executable: String, _ arguments: [String], environment: [String: String], timeout: Double = 60
  ) throws -> Output {
    let id = UUID().uuidString
    let outURL = scratch.appendingPathComponent("\(id).out")
    let errURL = scratch.appendingPathComponent("\(id).err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer {
      try? FileManager.default.removeItem(at: outURL)
      try? FileManager.default.removeItem(at: errURL)
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    p.environment = Sanitizer.clientEnvironment(environment, executable: executable)
    p.standardOutput = try FileHandle(forWritingTo: outURL)
    p.standardError = try FileHandle(forWritingTo: errURL)
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning {
      kill(p.processIdentifier, SIGKILL)
      p.waitUntilExit()
      Issue.record("\(executable) \(arguments) still ran after \(timeout) s; killed")
    }
    p.waitUntilExit()
    return Output(
      status: p.terminationStatus,
      stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
      stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
  }

  /// Runs a shell command line (for `$(pkg-config ...)` as users write it).
  static func shell(_ command: String, environment: [String: String]) throws -> Output {
    try run("/bin/sh", ["-c", command], environment: environment)
  }

  /// Compiles clients/`source` into an executable; `flags` follow the source.
  static func compile(_ source: String, flags: String) throws -> URL {
    // Unique: tests run in parallel and may build the same source.
    let output = scratch.appendingPathComponent((source as NSString).deletingPathExtension + "-" + UUID().uuidString)
    let cc = try shell(
      "cc -std=c11 -Wall -Wextra -Werror -o '\(output.path)' '\(clients.appendingPathComponent(source).path)' \(flags)",
      environment: environment(device: nil))
    try #require(cc.status == 0, "cc \(source): \(cc.stdout)\(cc.stderr)")
    return output
  }

  /// The shims must have been built (tools/test and tools/build-shims do it).
  static func requireShims(_ libraries: [String]) throws {
    for lib in libraries {
      try #require(
        FileManager.default.fileExists(atPath: Paths.shims.appendingPathComponent(lib).path),
        "\(lib) missing in \(Paths.shims.path): run tools/build-shims (tools/test does) before swift test")
    }
  }

  /// The venv's Python with nvidia-ml-py and gpustat (tools/setup).
  static func requirePython() throws -> String {
    try #require(
      FileManager.default.isExecutableFile(atPath: Paths.python.path),
      "no \(Paths.python.path): run tools/setup, which installs nvidia-ml-py and gpustat")
    return Paths.python.path
  }

  static func json(_ text: String) throws -> [String: Any] {
    try #require(
      try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not a JSON object: \(text)")
  }
}
