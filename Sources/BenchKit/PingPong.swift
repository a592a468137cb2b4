import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// The ceiling for a cross-process round trip: a counter bounced in one
/// 64-byte line of a /dev/shm file between this process and a child running
/// `arguments + [path]` (whose `main` calls `PingPong.serve(path)`).
public enum PingPong {
  /// The counter in line 0, the child's state and the stop flag in lines of their own.
  static let fileSize = 4096
  static let counterOffset = 0
  static let readyOffset = 128
  static let stopOffset = 192

  public struct Result: Sendable {
    public var latency: LatencySummary
    /// Round trips per second, back to back.
    public var roundTripsPerSecond: Double
  }

  public static func measure(_ plan: Plan, child arguments: [String]) throws -> Result {
    try measure(plan, child: arguments, against: nil).pingPong
  }

  /// The ping-pong, and `other`'s round trips taken in alternating blocks
  /// with it: the two vCPUs here move between a near and a far placement
  /// within seconds (LIMITS.md), so a ratio is only fair when both sides of
  /// it saw the same placements.
  public static func measure(_ plan: Plan, child arguments: [String], against other: (() throws -> Void)?) throws -> (
    pingPong: Result, other: LatencySummary?
  ) {
    let file = try SharedFile.create("vgpu-pingpong", size: fileSize)
    defer { file.unmap() }
    var unlinked = false
    defer { if !unlinked { unlink(file.path) } }
    let child = try HelperProcess(arguments + [file.path])
    defer {
      vgpu_store_release_u32(file.base + stopOffset, 1)
      child.finish()
    }
    try child.waitReady(file.base + readyOffset, "ping-pong")
    unlink(file.path)
    unlinked = true

    let counter = file.base + counterOffset
    var value: UInt32 = 0
    func roundTrip() throws {
      value &+= 2
      let ping = value | 1
      vgpu_store_release_u32(counter, ping)
      try spinWait("the ping-pong child's answer") { vgpu_load_acquire_u32(counter) == ping &+ 1 }
    }
    var otherLatency: LatencySummary?
    let latency: LatencySummary
    if let other {
      let blocks = 20
      var mine: [UInt64] = []
      var theirs: [UInt64] = []
      for _ in 0..<plan.warmup { try other() }
      for _ in 0..<blocks {
        mine += try samples(plan, count: plan.samples / blocks, roundTrip)
        theirs += try samples(plan, count: plan.samples / blocks, other)
      }
      latency = LatencySummary(mine)
      otherLatency = LatencySummary(theirs)
    } else {
      latency = try latencies(plan, roundTrip)
    }
    let n = 10_000
    let t0 = now()
    for _ in 0..<n { try roundTrip() }
    return (Result(latency: latency, roundTripsPerSecond: Double(n) / Double(now() - t0) * 1e9), otherLatency)
  }

  /// `count` timed calls of `body` after a short warm-up (a block of an interleaved run).
  static func samples(_ plan: Plan, count: Int, _ body: () throws -> Void) throws -> [UInt64] {
    // Warm up for at least 200 µs: longer than the device's idle spin
    // (50 µs), so a block is not timed while the other side's spinner from
    // the previous block still holds a core.
    let warm = now()
    var calls = 0
    while calls < min(100, plan.warmup) || now() &- warm < 200_000 {
      try body()
      calls += 1
    }
    var values = [UInt64](repeating: 0, count: count)
    for i in 0..<count {
      let t0 = now()
      try body()
      values[i] = now() &- t0
    }
    return values
  }

  /// The child's side: answer every odd value with the next even one until stopped.
  public static func serve(_ path: String) throws {
    let file = try SharedFile(path: path, size: fileSize, create: false)
    defer { file.unmap() }
    let counter = file.base + counterOffset
    vgpu_store_release_u32(file.base + readyOffset, 1)
    var last: UInt32 = 0
    var idle = ChildIdle(stop: file.base + stopOffset, what: "ping")
    while true {
      let v = vgpu_load_acquire_u32(counter)
      if v & 1 == 1 && v != last {
        vgpu_store_release_u32(counter, v &+ 1)
        last = v
        idle.reset()
        continue
      }
      if try idle.idle() { return }
    }
  }
}

/// The ceiling for a command stream: a single-producer/single-consumer ring
/// of 64-byte slots in a /dev/shm file, this process producing in batches,
/// a child (`arguments + [path]`, calling `SPSCRing.consume`) consuming.
/// Each message is written whole (8 words) and read whole by the consumer.
public enum SPSCRing {
  static let slots = 1024
  static let tailOffset = 0  // producer's index, its own line
  static let headOffset = 64  // consumer's index
  static let readyOffset = 128
  static let stopOffset = 192
  static let ringOffset = 4096
  static var fileSize: Int { ringOffset + slots * 64 }

  /// Messages per second, produced in batches of `batch`, each batch published with one store.
  public static func measure(_ plan: Plan, batch: Int, child arguments: [String]) throws -> Double {
    let file = try SharedFile.create("vgpu-ring", size: fileSize)
    defer { file.unmap() }
    defer { unlink(file.path) }
    let child = try HelperProcess(arguments + [file.path])
    defer {
      vgpu_store_release_u32(file.base + stopOffset, 1)
      child.finish()
    }
    try child.waitReady(file.base + readyOffset, "ring consumer")
    let ring = file.base + ringOffset
    let mask = UInt32(slots - 1)
    var tail: UInt32 = 0
    func produce(_ count: Int) throws {
      var left = count
      while left > 0 {
        let n = UInt32(min(batch, left))
        try spinWait("the ring consumer's progress") {
          tail &- vgpu_load_acquire_u32(file.base + headOffset) <= UInt32(slots) - n
        }
        for i in 0..<n {
          let slot = ring + Int((tail &+ i) & mask) * 64
          let word = UInt64(tail &+ i)
          for w in 0..<8 { slot.storeBytes(of: word &+ UInt64(w), toByteOffset: w * 8, as: UInt64.self) }
        }
        tail &+= n
        vgpu_store_release_u32(file.base + tailOffset, tail)
        left -= Int(n)
      }
    }
    let r = try rate(plan.rateTime, per: 1 << 16) { try produce(1 << 16) }
    // Every message counted was consumed, too.
    try spinWait("the ring consumer's last batch") { vgpu_load_acquire_u32(file.base + headOffset) == tail }
    return r
  }

  /// The consumer: reads every message whole, publishes its head after each batch seen.
  public static func consume(_ path: String) throws {
    let file = try SharedFile(path: path, size: fileSize, create: false)
    defer { file.unmap() }
    let ring = file.base + ringOffset
    let mask = UInt32(slots - 1)
    vgpu_store_release_u32(file.base + readyOffset, 1)
    var head: UInt32 = 0
    var sum: UInt64 = 0
    var idle = ChildIdle(stop: file.base + stopOffset, what: "message")
    while true {
      let tail = vgpu_load_acquire_u32(file.base + tailOffset)
      if tail != head {
        while head != tail {
          let slot = ring + Int(head & mask) * 64
          for w in 0..<8 { sum &+= slot.load(fromByteOffset: w * 8, as: UInt64.self) }
          head &+= 1
        }
        vgpu_store_release_u32(file.base + headOffset, head)
        idle.reset()
        continue
      }
      if try idle.idle() { break }
    }
    // Keeps the reads from being optimised away.
    if sum == 42 { print("") }
  }
}
