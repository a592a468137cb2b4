import FuzzDriver

#if canImport(Glibc)
  import Glibc
#endif

/// Runs libFuzzer with this process's arguments, calling `body` on each input; exits with its status.
public func runFuzzer(_ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
  var argc = CommandLine.argc
  var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
  exit(LLVMFuzzerRunDriver(&argc, &argv, body))
}

/// Reads a fuzz input front to back; past its end every read gives zeros, so
/// a short input is simply a sequence that ends early (`isEmpty` says so).
public struct FuzzInput {
  public let bytes: UnsafeRawBufferPointer
  public private(set) var position = 0

  public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
    bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  }

  public var isEmpty: Bool { position >= bytes.count }
  public var remaining: Int { max(0, bytes.count - position) }

  public mutating func byte() -> UInt8 {
    defer { position += 1 }
    return position < bytes.count ? bytes[position] : 0
  }

  public mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v |= T(truncatingIfNeeded: byte()) << (8 * i) }
    return v
  }

  /// The next `count` bytes (fewer at the end).
  public mutating func take(_ count: Int) -> UnsafeRawBufferPointer {
    let n = max(0, min(count, remaining))
    defer { position += n }
    return UnsafeRawBufferPointer(rebasing: bytes[position..<position + n])
  }

  /// Everything not read yet.
  public mutating func rest() -> UnsafeRawBufferPointer { take(remaining) }
}

/// Stops the run as a crash that libFuzzer records, with a line that says
/// which invariant broke (a hang or a trap would say less).
public func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
  if !condition() {
    // Written straight to fd 2: libFuzzer shows it above its crash report.
    let line = "fuzz invariant broken: \(message())\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    abort()
  }
}
