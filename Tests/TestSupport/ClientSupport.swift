#if canImport(Glibc)
  import Glibc
#endif

// What the test client programs (Tests/TestClient, FaultClient,
// HostileClient) share: their output protocol and seeded randomness.

/// A line on standard output, unbuffered: the test reads it while the client runs.
public func say(_ line: String) {
  let text = line + "\n"
  _ = text.withCString { write(1, $0, strlen($0)) }
}

/// Says "error: MESSAGE" and exits with `code` (1: a failure, 2: data read
/// back differs, 64: a usage error).
public func fail(_ message: String, _ code: Int32 = 1) -> Never {
  say("error: \(message)")
  exit(code)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a seeded generator, so that a run can be repeated.
public struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  public init(_ seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// Bytes from hex digits ("a5c3..."), nil unless every pair is hex.
public func hexBytes(_ hex: String) -> [UInt8]? {
  var out: [UInt8] = []
  var s = Substring(hex)
  while s.count >= 2, let b = UInt8(s.prefix(2), radix: 16) {
    out.append(b)
    s = s.dropFirst(2)
  }
  return s.isEmpty ? out : nil
}
