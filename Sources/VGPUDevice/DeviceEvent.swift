import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Something a device operator wants in the log. Reported from the serving
/// thread, never per command.
public enum DeviceEvent: Sendable, Equatable {
  public enum ReleaseReason: Sendable, Equatable, CustomStringConvertible {
    case closed
    case ownerExited
    case abandonedClaim
    case reset

    public var description: String {
      switch self {
      case .closed: "closed by its owner"
      case .ownerExited: "its owner exited without closing it"
      case .abandonedClaim: "claimed but never given a pid"
      case .reset: "device reset"
      }
    }
  }
  case attached(queuePair: Int, pid: UInt32)
  case released(queuePair: Int, pid: UInt32, reason: ReleaseReason, allocations: Int, bytes: UInt64)
  case faulted(queuePair: Int, pid: UInt32, fault: QueuePairFault)
}

/// Whether a process still runs, from /proc. A pid alone is not enough: a
/// zombie still has one, and pids are reused, so the start time is compared.
enum ProcessLiveness {
  /// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
  static func startTime(_ pid: UInt32) -> UInt64? { stat(pid)?.start }

  static func isAlive(_ pid: UInt32, startTime: UInt64) -> Bool {
    guard pid != 0, let s = stat(pid) else { return false }
    return s.state != "Z" && s.state != "X" && (startTime == 0 || s.start == startTime)
  }

  private static func stat(_ pid: UInt32) -> (state: Character, start: UInt64)? {
    let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 1024)
    let n = read(fd, &buffer, buffer.count)
    guard n > 0 else { return nil }
    // "pid (comm) S ..." — comm may hold spaces and parentheses: split after the last ')'.
    guard let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
    let fields = buffer[(close + 2)..<n].split(separator: UInt8(ascii: " "))
    guard fields.count > 19, let state = fields.first?.first,
      let start = UInt64(String(decoding: fields[19], as: UTF8.self))
    else { return nil }
    return (Character(UnicodeScalar(state)), start)
  }
}
