import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// HTTP/1.0 GET on loopback, by hand: the tests need nothing more.
public enum HTTP {
  public static func get(port: UInt16, path: String) throws -> (status: Int, headers: String, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw MediatorError(description: "socket: errno \(errno)") }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
    guard connected else { throw MediatorError(description: "connect 127.0.0.1:\(port): errno \(errno)") }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if n <= 0 { break }
      response += chunk[..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else {
      throw MediatorError(description: "GET \(path) on port \(port): no HTTP response (\(text.prefix(200)))")
    }
    let head = String(text[..<split.lowerBound])
    let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return (status, head, String(text[split.upperBound...]))
  }
}

extension MediatorProcess {
  /// The port of `--metrics-listen` from its "metrics listening" log line (waits up to 10 s).
  public func metricsPort() -> UInt16? {
    var found: UInt16?
    _ = waitUntil(seconds: 10) {
      for line in log.split(separator: "\n") where line.contains("metrics listening") {
        if let r = line.range(of: #"address=[^ ]*:(\d+)"#, options: .regularExpression) {
          found = UInt16(line[r].split(separator: ":").last ?? "")
        }
      }
      return found != nil
    }
    return found
  }

  /// A device-wide gauge or counter (one series: its only label is the device) from its /metrics (`--metrics-listen`).
  public func metric(_ name: String, port: UInt16) throws -> Double? {
    let body = try HTTP.get(port: port, path: "/metrics").body
    let line = body.split(separator: "\n").first { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
    return line.flatMap { Double($0.split(separator: " ").last ?? "") }
  }
}
