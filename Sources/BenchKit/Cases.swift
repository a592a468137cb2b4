#if canImport(Glibc)
  import Glibc
#endif

/// A point of a bandwidth curve.
public struct BandwidthPoint: Codable, Sendable {
  public var bytes: Int
  public var gbPerSecond: Double?
  public init(bytes: Int, gbPerSecond: Double?) {
    self.bytes = bytes
    self.gbPerSecond = gbPerSecond
  }
}

/// The measurements, each written once and run against any `BenchTarget`:
/// the vGPU, the socket server, in one process or two at once.
public enum Cases {
  public static let batch = 32
  public static let twoClientCopySize = 64 << 20

  /// NOPs per second, `batch` a doorbell.
  public static func batched(_ t: BenchTarget, _ plan: Plan) throws -> Double {
    try rate(plan.rateTime, per: batch * 64) { try t.nops(batch * 64, batch: batch) }
  }

  /// Launches per second of `fill` on one element.
  public static func launches(_ t: BenchTarget, _ plan: Plan) throws -> Double {
    let buffer = try t.allocate(256)
    defer { try? t.free(buffer) }
    let f = try t.loadFill()
    let parameters = FillKernel.parameters(buffer)
    return try rate(plan.rateTime, per: 64) { for _ in 0..<64 { try t.launchFill(f, parameters: parameters) } }
  }

  /// Alloc + free pairs per second, 64 KiB each.
  public static func allocFree(_ t: BenchTarget, _ plan: Plan) throws -> Double {
    try rate(plan.rateTime, per: 64) {
      for _ in 0..<64 { try t.free(try t.allocate(64 << 10)) }
    }
  }

  /// Host memory, touched, so that no timed copy pays for page faults.
  public static func hostBuffer(_ bytes: Int, fill: UInt8) -> UnsafeMutableRawBufferPointer {
    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
    memset(b.baseAddress!, Int32(fill), bytes)
    return b
  }

  public struct Copies: Sendable {
    public var h2d: [BandwidthPoint] = []
    public var d2h: [BandwidthPoint] = []
    public var d2d: [BandwidthPoint] = []
  }

  /// H2D, D2H (and D2D) bandwidth at each size, each the median of `plan.copySamples`.
  public static func copies(
    _ t: BenchTarget, _ plan: Plan, sizes: [Int], d2d: Bool, progress: (String) -> Void = { _ in }
  ) throws -> Copies {
    let most = sizes.max() ?? 0
    let host = hostBuffer(most, fill: 0x5A)
    let other = hostBuffer(most, fill: 0xA5)
    defer {
      host.deallocate()
      other.deallocate()
    }
    let a = try t.allocate(most)
    defer { try? t.free(a) }
    let b = d2d ? try t.allocate(most) : 0
    defer { if d2d { try? t.free(b) } }
    var r = Copies()
    for size in sizes {
      progress(sizeText(size))
      let source = UnsafeRawBufferPointer(rebasing: host[0..<size])
      let destination = UnsafeMutableRawBufferPointer(rebasing: other[0..<size])
      r.h2d.append(.init(bytes: size, gbPerSecond: try bandwidth(plan, bytes: size) { try t.copyIn(a, from: source) }))
      r.d2h.append(
        .init(bytes: size, gbPerSecond: try bandwidth(plan, bytes: size) { try t.copyOut(a, into: destination) }))
      if d2d {
        r.d2d.append(
          .init(
            bytes: size, gbPerSecond: try bandwidth(plan, bytes: size) { try t.copyDevice(b, from: a, count: size) }))
      }
    }
    return r
  }

  /// Single-thread memcpy between two host buffers at each size.
  public static func memcpyBandwidth(_ plan: Plan, sizes: [Int]) -> [BandwidthPoint] {
    let most = sizes.max() ?? 0
    let host = hostBuffer(most, fill: 0x5A)
    let other = hostBuffer(most, fill: 0xA5)
    defer {
      host.deallocate()
      other.deallocate()
    }
    return sizes.map { size in
      .init(
        bytes: size, gbPerSecond: bandwidth(plan, bytes: size) { memcpy(other.baseAddress!, host.baseAddress!, size) })
    }
  }

  public static func sizeText(_ n: Int) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift && n % (1 << shift) == 0 {
      return "\(n >> shift) \(unit)"
    }
    return "\(n) B"
  }
}
