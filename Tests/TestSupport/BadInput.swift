import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// The contract for bad input (README "Errors and exit status"): every
/// executable of the project answers it with one line on standard error and
/// a defined exit status (0 done, 1 the operation failed, 2 the command line
/// or environment is wrong), never a trap, a backtrace or a hang. What the
/// bad-input suites (PCIToolTests/BadInputTests, ShimTests/ShimBadInputTests)
/// share: files to name as devices and images, the device names that are
/// wrong, and a runner with a deadline.
public enum BadInput {
  /// Words a Swift runtime trap, a crash handler or a sanitizer prints.
  public static let crashMarkers = [
    "Fatal error", "fatal error", "Crash", "💣", "Stack dump", "Backtrace", "backtrace", "Segmentation fault",
    "Illegal instruction", "Trace/breakpoint trap", "Aborted", "AddressSanitizer", "panic",
  ]

  /// Exit statuses a signal leaves (128 + SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGSEGV) and
  /// the deadline's (124, 137).
  public static let crashStatuses: Set<Int32> = [124, 132, 133, 134, 135, 137, 139]

  /// A scratch folder with one file of each kind, made once per test process.
  public static let scratch: String = {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-bad-input-\(getpid())").path
    try? FileManager.default.createDirectory(atPath: dir + "/directory", withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: dir + "/regular", contents: Data("not a socket, not a BAR\n".utf8))
    FileManager.default.createFile(atPath: dir + "/empty", contents: Data())
    FileManager.default.createFile(atPath: dir + "/tiny", contents: Data("0123456789".utf8))
    FileManager.default.createFile(atPath: dir + "/garbage", contents: Data(randomBytes(1 << 20, seed: 15)))
    return dir
  }()

  /// A path in `scratch`: regular, empty, tiny (10 bytes), garbage (1 MiB of
  /// random bytes), directory, or missing (nothing there).
  public static func path(_ name: String) -> String { scratch + "/" + name }

  /// How a bad device name is answered: 2 when the name is not one, 1 when
  /// it is one but nothing usable is there.
  public struct DeviceName: Sendable, CustomStringConvertible {
    public var name: String
    public var status: Int32
    public var description: String { "'\(name)'" }
  }

  /// Device names that are wrong, each once per kind of mistake.
  public static var deviceNames: [DeviceName] {
    [
      DeviceName(name: "foo:bar", status: 2),
      DeviceName(name: "zz:zz.z", status: 2),
      DeviceName(name: "0000:00:05.9", status: 2),
      DeviceName(name: "1:2:3:4", status: 2),
      DeviceName(name: "sysfs:zz", status: 2),
      DeviceName(name: " sim", status: 2),
      DeviceName(name: "unix:", status: 2),
      DeviceName(name: "shm:", status: 2),
      DeviceName(name: "unix:" + path("missing"), status: 1),
      DeviceName(name: "unix:" + path("regular"), status: 1),
      DeviceName(name: "unix:" + path("directory"), status: 1),
      DeviceName(name: "shm:" + path("missing"), status: 1),
      DeviceName(name: "shm:" + path("empty"), status: 1),
      DeviceName(name: "shm:" + path("tiny"), status: 1),
      DeviceName(name: "shm:" + path("garbage"), status: 1),
      DeviceName(name: "shm:" + path("directory"), status: 1),
      DeviceName(name: "vfio:ffff:ff:1f.7", status: 1),
      DeviceName(name: "ffff:ff:1f.7", status: 1),
    ]
  }

  public struct Output: Sendable, CustomStringConvertible {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    /// Standard error's non-empty lines.
    public var errorLines: [String] { stderr.split(separator: "\n").map(String.init).filter { !$0.isEmpty } }
    /// A crash marker in either stream, or a status only a signal or the deadline leaves.
    public var crash: String? {
      if BadInput.crashStatuses.contains(status) { return "exit status \(status)" }
      return BadInput.crashMarkers.first { stdout.contains($0) || stderr.contains($0) }
    }
    public var description: String { "exit \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }
    public init(status: Int32, stdout: String, stderr: String) {
      self.status = status
      self.stdout = stdout
      self.stderr = stderr
    }
  }

  /// Runs `executable` with `arguments` under coreutils' `timeout` (which ends the
  /// process and its children after `seconds`: exit 124), stdin empty, stdout and
  /// stderr collected apart. `environment` replaces the test's; nil keeps it.
  public static func run(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, seconds: Int = 60,
    directory: String? = nil
  ) throws -> Output {
    let id = UUID().uuidString
    let out = scratch + "/\(id).out"
    let err = scratch + "/\(id).err"
    FileManager.default.createFile(atPath: out, contents: nil)
    FileManager.default.createFile(atPath: err, contents: nil)
    defer {
      unlink(out)
      unlink(err)
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    p.arguments = ["-k", "5", "\(seconds)", executable] + arguments
    if let environment { p.environment = environment }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = FileHandle(forWritingAtPath: out)
    p.standardError = FileHandle(forWritingAtPath: err)
    try p.run()
    p.waitUntilExit()
    let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
    return Output(
      status: status, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
      stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
  }
}
