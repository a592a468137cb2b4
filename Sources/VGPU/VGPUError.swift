import VGPUProtocol

/// Every failure of the client API: what was attempted, on which device, what
/// was found (the device's answer, or what was read from the BAR), how long
/// it waited, and what to do next.
public struct VGPUError: Error, CustomStringConvertible, Sendable {
  public enum Kind: Sendable, Equatable {
    /// The device answered with an error status.
    case device(CommandStatus)
    /// No answer within the deadline.
    case timeout
    /// The device broke the protocol (unknown command id, index or length out
    /// of range, bad magic, ...). The queue pair is no longer used.
    case protocolViolation
    /// The device cannot be reached or refuses to serve (stopped, needs reset).
    case unavailable
    /// The peer speaks another protocol version.
    case versionMismatch
    /// The caller passed something unusable.
    case invalidArgument
    /// Known, but not built yet.
    case unsupported
    /// The device was closed.
    case closed
  }

  public var kind: Kind
  public var operation: String
  public var device: String
  public var found: String
  public var remedy: String?
  /// Nanoseconds waited before giving up, for timeouts.
  public var waitedNanoseconds: UInt64?

  public init(
    _ kind: Kind, _ operation: String, device: String, found: String, remedy: String? = nil,
    waitedNanoseconds: UInt64? = nil
  ) {
    self.kind = kind
    self.operation = operation
    self.device = device
    self.found = found
    self.remedy = remedy
    self.waitedNanoseconds = waitedNanoseconds
  }

  /// The device's status, when it answered with one.
  public var status: CommandStatus? {
    if case .device(let s) = kind { return s }
    return nil
  }

  public var description: String {
    var s = "\(operation) on \(device): \(found)"
    if let waitedNanoseconds { s += " (waited \(waitedNanoseconds / 1_000_000) ms)" }
    if let remedy { s += "; \(remedy)" }
    return s
  }
}

/// Byte counts as people read them: `80 GiB`, `1.50 KiB`, `17 B`.
public func bytesText(_ n: UInt64) -> String {
  let units = ["B", "KiB", "MiB", "GiB", "TiB"]
  var value = Double(n)
  var unit = 0
  while value >= 1024 && unit < units.count - 1 {
    value /= 1024
    unit += 1
  }
  if unit == 0 || value == value.rounded() { return "\(Int(value)) \(units[unit])" }
  let hundredths = Int((value * 100).rounded())
  let fraction = hundredths % 100
  return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction) \(units[unit])"
}
