#if canImport(Glibc)
  import Glibc
#endif

/// Where `--metrics-listen` binds: an IP literal and a port. Without a host
/// it is loopback, so that turning metrics on never exposes them beyond
/// this machine unless the operator names an interface.
struct MetricsAddress: Equatable, CustomStringConvertible {
  enum Family: Equatable { case ipv4, ipv6 }
  var family: Family
  /// Numeric, as inet_pton reads it ("127.0.0.1", "::1").
  var host: String
  /// 0 asks the kernel for a free port (the log says which).
  var port: UInt16

  /// How the forms are written, for --help and for errors.
  static let forms =
    "PORT, :PORT, HOST:PORT or [IPV6]:PORT (e.g. 9400 for 127.0.0.1:9400, 0.0.0.0:9400 for every interface)"

  var description: String { family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

  /// Reads PORT, :PORT, HOST:PORT or [IPV6]:PORT; HOST is an IPv4 literal or
  /// "localhost". Nil when `text` is none of these.
  init?(_ text: String) {
    var host = "127.0.0.1"
    var family = Family.ipv4
    var portText = Substring(text)
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
      host = String(text[text.index(after: text.startIndex)..<close])
      family = .ipv6
      portText = text[text.index(close, offsetBy: 2)...]
    } else if let colon = text.lastIndex(of: ":") {
      let named = text[..<colon]
      if !named.isEmpty { host = named == "localhost" ? "127.0.0.1" : String(named) }
      portText = text[text.index(after: colon)...]
    }
    guard !portText.isEmpty, portText.allSatisfy(\.isASCII), let port = UInt16(portText),
      Self.isLiteral(host, family)
    else { return nil }
    self.family = family
    self.host = host
    self.port = port
  }

  private static func isLiteral(_ host: String, _ family: Family) -> Bool {
    var buffer = [UInt8](repeating: 0, count: 16)
    return inet_pton(family == .ipv6 ? AF_INET6 : AF_INET, host, &buffer) == 1
  }
}
