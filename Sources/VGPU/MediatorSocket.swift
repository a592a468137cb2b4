import CSupport
import DeviceAccess
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// How a host process reaches `vgpu-mediator` (`unix:PATH`, docs/PROTOCOL.md
/// §23): it connects to the mediator's Unix socket, gets one `SocketGreeting`
/// with a BAR of its own (a sealed memfd, SCM_RIGHTS) and maps it. The
/// socket stays open as long as the mapping: the mediator knows the process
/// by it (SO_PEERCRED) and reclaims everything when it closes, however the
/// process ends. SOCK_CLOEXEC: an exec'd child does not keep it open.
public enum MediatorSocket {
  /// Whether `shm:PATH` names what used to be a host mediator's BAR file:
  /// the old default, or a file whose mediator socket exists beside it.
  static func servesHostsInstead(of path: String) -> Bool {
    path == "/dev/shm/vgpu0" || access(socketNear(path), F_OK) == 0
  }

  /// The socket a mediator started for `path` would serve host processes on.
  static func socketNear(_ path: String) -> String {
    if path == "/dev/shm/vgpu0" {
      let (standard, fallback) = (HostSocketPath.standard, HostSocketPath.fallback)
      return access(standard, F_OK) == 0 || access(fallback, F_OK) != 0 ? standard : fallback
    }
    return path + ".sock"
  }

  /// The mediator's socket behind a BAR `connect` mapped, or -1.
  static func socket(of region: MappedRegion) -> Int32 { (region.owner as? Connection)?.fd ?? -1 }

  /// The socket, closed when the BAR's mapping goes.
  final class Connection {
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { close(fd) }
  }

  /// Connects to the mediator at `path` and maps the BAR it gives this
  /// process, within `timeoutNanoseconds` (a mediator that accepts and never
  /// answers is an error, not a hang). `spec` names the device in errors.
  public static func connect(_ path: String, spec: String? = nil, timeoutNanoseconds: UInt64 = 2_000_000_000)
    throws(VGPUError) -> MappedRegion
  {
    let name = spec ?? "unix:\(path)"
    func fail(_ kind: VGPUError.Kind, _ found: String, _ remedy: String) -> VGPUError {
      VGPUError(kind, "open", device: name, found: found, remedy: remedy)
    }
    let start = "start it: vgpu-mediator --socket \(path)"
    let fd = vgpu_path_connect_within(path, timeoutNanoseconds)
    guard fd >= 0 else {
      switch -fd {
      case ENOENT:
        throw fail(.unavailable, "no socket at \(path)", "is vgpu-mediator running? \(start)")
      case ECONNREFUSED:
        throw fail(
          .unavailable, "nothing listens on \(path) (a mediator that stopped left it)",
          "is vgpu-mediator running? \(start)")
      case EACCES, EPERM:
        throw fail(
          .unavailable, "permission denied on \(path)",
          "run as the mediator's user or a member of group vgpu, or start it with --allow-uid/--allow-group")
      case ETIMEDOUT:
        throw fail(
          .timeout, "the mediator's backlog stayed full for \(timeoutNanoseconds / 1_000_000) ms",
          "the mediator is overloaded or stuck; check it")
      default:
        throw fail(
          .unavailable, "connect to \(path) failed (\(String(cString: strerror(-fd))))", "check the path; \(start)")
      }
    }
    let connection = Connection(fd)
    let deadline = vgpu_monotonic_ns() &+ timeoutNanoseconds
    // A mediator at its maximum of processes says so first (`waiting`), then
    // sends the final greeting once one exits: this process waits until its deadline.
    var waitingReason: String?
    var greeting: SocketGreeting
    var barFD: Int32 = -1
    var count: Int32 = 0
    repeat {
      let left = deadline &- min(deadline, vgpu_monotonic_ns())
      guard vgpu_wait_readable(fd, left) == 1 else {
        let waited = "\(timeoutNanoseconds / 1_000_000) ms"
        if let waitingReason {
          throw fail(
            .timeout, "the mediator on \(path) \(waitingReason), and none exited within \(waited)",
            "end one of those processes, raise vgpu-mediator --max-clients, or wait longer (VGPU_TIMEOUT=SECONDS)")
        }
        throw fail(
          .timeout, "the mediator on \(path) accepted but sent no BAR within \(waited)",
          "the mediator is stuck or out of file descriptors (see its log), or this is not a vgpu-mediator socket")
      }
      greeting = try receiveGreeting(fd, path: path, barFD: &barFD, count: &count, fail: fail)
      if greeting.status == .waiting {
        if count == 1 { close(barFD) }
        waitingReason = greeting.reason
      }
    } while greeting.status == .waiting
    switch greeting.status {
    case .accepted, .waiting:
      break
    case .refused:
      if count == 1 { close(barFD) }
      throw fail(
        .unavailable, "the mediator refused this process: \(greeting.reason)",
        "ask its operator to admit this user (vgpu-mediator --allow-uid/--allow-group, or group vgpu)")
    case .failed:
      if count == 1 { close(barFD) }
      throw fail(.unavailable, "the mediator could not make a BAR: \(greeting.reason)", "see the mediator's log")
    }
    guard greeting.version >> 16 == UInt32(ProtocolVersion.major) else {
      if count == 1 { close(barFD) }
      throw fail(
        .versionMismatch,
        "the mediator speaks protocol \(greeting.version >> 16).\(greeting.version & 0xffff), this client \(ProtocolVersion.major).\(ProtocolVersion.minor)",
        "update the guest library or the mediator to the same major version")
    }
    guard count == 1 else {
      throw fail(.protocolViolation, "the mediator accepted but passed no BAR file descriptor", "report it")
    }
    do throws(RegionError) {
      return try MappedRegion.passedDescriptor(
        barFD, size: Int(greeting.barSize), origin: "unix:\(path)", keeping: connection)
    } catch {
      throw fail(.protocolViolation, error.description, "report it: the mediator's BAR is unusable")
    }
  }

  /// Reads one greeting from `fd` (readable), with the fd it carries, if any.
  private static func receiveGreeting(
    _ fd: Int32, path: String, barFD: inout Int32, count: inout Int32,
    fail: (VGPUError.Kind, String, String) -> VGPUError
  ) throws(VGPUError) -> SocketGreeting {
    var message = [UInt8](repeating: 0, count: SocketGreeting.size)
    barFD = -1
    count = 0
    let rc = message.withUnsafeMutableBytes { vgpu_recv_fds(fd, $0.baseAddress, $0.count, &barFD, 1, &count) }
    guard rc == 0 else {
      throw fail(
        .protocolViolation,
        rc == -EPIPE
          ? "the mediator on \(path) closed the connection without an answer"
          : "the mediator's answer on \(path) was not one \(SocketGreeting.size)-byte message (\(String(cString: strerror(-rc))))",
        "check that \(path) is a vgpu-mediator socket of this version")
    }
    let decoded = message.withUnsafeBytes { b in
      Result { () throws(GreetingError) in try SocketGreeting(decoding: b) }
    }
    switch decoded {
    case .success(let g): return g
    case .failure(let error):
      if count == 1 { close(barFD) }
      throw fail(
        .protocolViolation, "the mediator's answer is malformed: \(error)", "update the mediator or this library")
    }
  }
}
