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
    let parameters = try FillKernel.parameters(f, buffer)
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

  /// H2D, D2H (and D2D) bandwidth at each size, each the median of
  /// `plan.copySamples`; with `other`, its copies too, and single-thread
  /// memcpy of the same size between the same host buffers, all sampled in
  /// turn so that the ratios between them are fair on a noisy machine.
  public static func copies(
    _ t: BenchTarget, _ plan: Plan, sizes: [Int], d2d: Bool, against other: BenchTarget? = nil,
    progress: (String) -> Void = { _ in }
  ) throws -> (mine: Copies, other: Copies, memcpy: [BandwidthPoint]) {
    let most = sizes.max() ?? 0
    let host = hostBuffer(most, fill: 0x5A)
    let back = hostBuffer(most, fill: 0xA5)
    defer {
      host.deallocate()
      back.deallocate()
    }
    let targets = [t] + (other.map { [$0] } ?? [])
    var buffers: [(a: UInt64, b: UInt64)] = []
    defer {
      for (target, (a, b)) in zip(targets, buffers) {
        try? target.free(a)
        if d2d { try? target.free(b) }
      }
    }
    for target in targets { buffers.append((try target.allocate(most), d2d ? try target.allocate(most) : 0)) }
    var results = [Copies](repeating: Copies(), count: 2)
    var memcpyPoints: [BandwidthPoint] = []
    for size in sizes {
      progress(sizeText(size))
      let source = UnsafeRawBufferPointer(rebasing: host[0..<size])
      let destination = UnsafeMutableRawBufferPointer(rebasing: back[0..<size])
      var bodies: [() throws -> Void] = [{ memcpy(back.baseAddress!, host.baseAddress!, size) }]
      for (target, (a, b)) in zip(targets, buffers) {
        bodies.append { try target.copyIn(a, from: source) }
        bodies.append { try target.copyOut(a, into: destination) }
        if d2d { bodies.append { try target.copyDevice(b, from: a, count: size) } }
      }
      let r = try interleavedBandwidth(plan, bytes: size, bodies)
      memcpyPoints.append(.init(bytes: size, gbPerSecond: r[0]))
      let per = d2d ? 3 : 2
      for i in targets.indices {
        let k = 1 + i * per
        results[i].h2d.append(.init(bytes: size, gbPerSecond: r[k]))
        results[i].d2h.append(.init(bytes: size, gbPerSecond: r[k + 1]))
        if d2d { results[i].d2d.append(.init(bytes: size, gbPerSecond: r[k + 2])) }
      }
    }
    return (results[0], results[1], memcpyPoints)
  }

  public static func sizeText(_ n: Int) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift && n % (1 << shift) == 0 {
      return "\(n >> shift) \(unit)"
    }
    return "\(n) B"
  }
}
