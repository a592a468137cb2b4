import CSupport
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
    /// A pair whose owner announced a heartbeat (2.3) and stopped it: a
    /// guest process, invisible to the device, that ended without closing.
    case heartbeatStopped

    public var description: String {
      switch self {
      case .closed: "closed by its owner"
      case .ownerExited: "its owner exited without closing it"
      case .abandonedClaim: "claimed but never given a pid"
      case .reset: "device reset"
      case .heartbeatStopped: "its owner's heartbeat stopped (the guest process ended without closing it)"
      }
    }
  }
  case attached(queuePair: Int, pid: UInt32)
  case released(queuePair: Int, pid: UInt32, reason: ReleaseReason, allocations: Int, bytes: UInt64)
  case faulted(queuePair: Int, pid: UInt32, fault: QueuePairFault)
  /// `count` events of the pair were not reported in the second before: a
  /// client cycling its pair's state that fast would otherwise flood the log
  /// (and a logger that blocks would stall the device).
  case suppressed(queuePair: Int, count: Int)
}

/// How many events one queue pair may report a second.
public struct EventBudget {
  public static let perSecond = 20
  var windowStart: UInt64 = 0
  var reported = 0
  var suppressed = 0
}

extension Executor {
  /// Reports `event` of queue pair `qp`, at most `EventBudget.perSecond` a
  /// second per pair; the rest are counted and reported as one `suppressed`.
  func report(_ event: DeviceEvent, _ qp: Int) {
    guard onEvent != nil else { return }
    let now = vgpu_monotonic_ns()
    if now &- eventBudget[qp].windowStart >= 1_000_000_000 {
      if eventBudget[qp].suppressed > 0 { deliver(.suppressed(queuePair: qp, count: eventBudget[qp].suppressed)) }
      eventBudget[qp] = EventBudget(windowStart: now)
    }
    if eventBudget[qp].reported < EventBudget.perSecond {
      eventBudget[qp].reported += 1
      deliver(event)
    } else {
      eventBudget[qp].suppressed += 1
    }
  }

  /// Hands `event` to `onEvent` now, or, while the device thread serves,
  /// queues it for that thread to hand over once it has let go of the lock:
  /// the lock is every device's over the backend (`SharedExecution`), and a
  /// log that blocks must stall only this device, not the other tenants.
  private func deliver(_ event: DeviceEvent) {
    if deferEvents {
      pendingEvents.append(event)
    } else {
      onEvent?(event)
    }
  }
}

/// Whether a process still runs, from /proc. A pid alone is not enough: a
/// zombie still has one, and pids are reused, so the start time is compared.
public enum ProcessLiveness {
  /// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
  public static func startTime(_ pid: UInt32) -> UInt64? { stat(pid)?.start }

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
