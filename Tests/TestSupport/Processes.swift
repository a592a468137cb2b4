import Foundation
import Synchronization
import VGPUProtocol

/// Where the package's build products and tools are, from the running test binary
/// (`.build/<triple>/<config>/vgpuPackageTests.xctest`).
public enum Paths {
  /// The folder with Package.swift above the test binary.
  public static let packageRoot: URL = {
    var url = MediatorProcess.binaries
    while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
      url.deleteLastPathComponent()
    }
    return url
  }()
  /// The SwiftPM scratch path the tests were built in: `.build`, or what
  /// `--scratch-path` named (tools/test's VGPU_BUILD_DIR).
  public static let buildDirectory: URL = {
    var url = MediatorProcess.binaries
    while url.path != "/" && url.deletingLastPathComponent().path != packageRoot.path { url.deleteLastPathComponent() }
    return url
  }()
  /// The shim libraries built by tools/build-shims (tools/test runs it first) into the same scratch path.
  public static var shims: URL {
    buildDirectory.appendingPathComponent("shims/debug/lib")
  }
  /// The venv tools/setup fills with the real Python clients.
  public static var python: URL { packageRoot.appendingPathComponent(".venv/bin/python") }
}

/// A real `vgpu-mediator` process serving host processes on a Unix socket
/// in /dev/shm (each with a BAR of its own), or with `--vm`,
/// `--ivshmem-socket` or `--shared-bar` a BAR file there; and real client
/// processes (`vgpu-test-client`, `pcitool`) using it.
public final class MediatorProcess: @unchecked Sendable {
  public static let binaries: URL = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent()
  }()
  static let counter = Atomic<Int>(0)

  /// The socket clients connect to, or the BAR file (`servesFile`).
  public let path: String
  /// Whether it serves one BAR file (a VM's, or `--shared-bar`) rather than the socket.
  public let servesFile: Bool
  /// Whether it serves several VMs' BAR files (`--vm-bar`, which the arguments name):
  /// then `path` is only a name for its log file.
  public let servesVMs: Bool
  public let process = Process()
  /// Its stderr goes to a file, not a pipe: a pipe nobody reads fills up
  /// (64 KiB) and the mediator then blocks in its logger, serving no one.
  let logPath: String

  /// Starts one serving `path` (a fresh /dev/shm socket or file by default)
  /// with `arguments`; `environment` is added to the test's.
  public init(path: String? = nil, arguments: [String] = [], environment: [String: String] = [:]) throws {
    servesFile = arguments.contains { ["--vm", "--ivshmem-socket", "--shared-bar"].contains($0) }
    servesVMs = arguments.contains("--vm-bar")
    let fresh = "/dev/shm/vgpu-test-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
    self.path = path ?? (servesFile ? fresh : fresh + ".sock")
    if path == nil { unlink(self.path) }
    process.executableURL = Self.binaries.appendingPathComponent("vgpu-mediator")
    process.arguments =
      (servesVMs ? [] : [servesFile ? "--path" : "--socket", self.path]) + ["--memory", "8G"] + arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    logPath =
      FileManager.default.temporaryDirectory
      .appendingPathComponent(
        "\(URL(fileURLWithPath: self.path).lastPathComponent)-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue).log"
      ).path
    guard FileManager.default.createFile(atPath: logPath, contents: nil),
      let log = FileHandle(forWritingAtPath: logPath)
    else { throw MediatorError(description: "cannot create \(logPath)") }
    defer { try? log.close() }
    process.standardError = log
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
      if servesVMs
        ? self.log.contains("serving VMs") : servesFile ? fileIsServed : self.log.contains("serving host processes")
      {
        return
      }
      guard process.isRunning else { break }
      usleep(5_000)
    }
    throw MediatorError(description: "vgpu-mediator did not come up on \(self.path): \(self.log.suffix(1000))")
  }

  /// Whether the BAR file names this process as its server, ready.
  private var fileIsServed: Bool {
    guard let region = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped), region.count >= 4096
    else { return false }
    return region.withUnsafeBytes {
      $0.load(fromByteOffset: Register.devicePID.offset, as: UInt32.self) == UInt32(process.processIdentifier)
        && $0.load(fromByteOffset: Register.status.offset, as: UInt32.self) & 1 == 1
    }
  }

  /// What clients open: `unix:SOCKET`, or `shm:FILE`.
  public var spec: String { servesFile ? "shm:\(path)" : "unix:\(path)" }

  /// What it has logged so far (standard error).
  public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

  /// SIGTERM, then its log once it has exited.
  @discardableResult
  public func stop() -> String {
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
    return (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
  }

  /// User + system CPU time so far, in clock ticks (/proc/PID/stat fields 14, 15).
  public var cpuTicks: Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return -1 }
    let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
    return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
  }

  deinit {
    // waitUntilExit even when it has exited: swift-corelibs-foundation's
    // Process holds itself through a run-loop source until waitUntilExit
    // drops it, and LeakSanitizer reports the Process and all it holds.
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
    unlink(path)
    unlink(logPath)
  }
}

/// Issue 14's two layers without a GPU: a mediator with the CUDA backend
/// (`gpu`, what clients use) whose "host driver" is this project's own
/// libcuda.so.1, a client of a second mediator with the reference device
/// (`host`, which runs the work). Every command crosses both.
///
/// On a GPU server (`tools/gpu-check`), VGPU_TEST_HOST_DRIVER names the
/// host's real driver (a path, or `system` for libcuda.so.1 as the loader
/// finds it): then `gpu` drives the real GPU and there is no `host`.
public final class LayeredMediators: @unchecked Sendable {
  public let host: MediatorProcess?
  public let gpu: MediatorProcess

  /// The real driver tools/gpu-check asks for, if any.
  public static var hostDriver: String? {
    guard let d = ProcessInfo.processInfo.environment["VGPU_TEST_HOST_DRIVER"], !d.isEmpty else { return nil }
    return d == "system" ? "libcuda.so.1" : d
  }

  /// `hostArguments` go to the reference device (a kernel budget, a driver
  /// version the GPU mediator then reports); `gpuArguments` to the CUDA one.
  public init(hostArguments: [String] = [], gpuArguments: [String] = []) throws {
    if let driver = Self.hostDriver {
      host = nil
      gpu = try MediatorProcess(
        arguments: ["--backend", "cuda", "--cuda-library", driver, "--memory", "4G"] + gpuArguments)
      return
    }
    // The GPU mediator's serving thread and workers are each a client thread
    // of the host: queue pairs for all of them.
    let host = try MediatorProcess(arguments: ["--queue-pairs", "64"] + hostArguments)
    self.host = host
    gpu = try MediatorProcess(
      arguments: [
        "--backend", "cuda", "--cuda-library", Paths.shims.appendingPathComponent("libcuda.so.1").path,
        "--nvml-library", Paths.shims.appendingPathComponent("libnvidia-ml.so.1").path, "--memory", "4G",
      ] + gpuArguments,
      environment: ["VGPU_DEVICE": host.spec])
  }

  /// Where clients go: the CUDA backend's BAR.
  public var spec: String { gpu.spec }

  /// Stops the GPU mediator first (it is the host's client), returning both logs.
  @discardableResult
  public func stop() -> (gpu: String, host: String) { (gpu.stop(), host?.stop() ?? "") }
}

public struct MediatorError: Error, CustomStringConvertible { public var description: String }

/// A client process whose output lines are collected as they come.
public final class ClientProcess: @unchecked Sendable {
  public let process = Process()
  private let lines = Mutex<[String]>([])

  public init(_ tool: String, _ arguments: [String]) throws {
    process.executableURL = MediatorProcess.binaries.appendingPathComponent(tool)
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    out.fileHandleForReading.readabilityHandler = { [weak self] h in
      let text = String(decoding: h.availableData, as: UTF8.self)
      self?.lines.withLock { $0 += text.split(separator: "\n").map(String.init) }
    }
    try process.run()
  }

  public var output: [String] { lines.withLock { $0 } }

  /// Waits up to `seconds` for a line starting with `prefix`.
  public func waitFor(_ prefix: String, seconds: Double) -> String? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if let line = output.first(where: { $0.hasPrefix(prefix) }) { return line }
      usleep(10_000)
    }
    return nil
  }

  public func kill() {
    Glibc.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  deinit { if process.isRunning { kill() } else { process.waitUntilExit() } }
}

public func waitUntil(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if try condition() { return true }
    usleep(20_000)
  }
  return try condition()
}
