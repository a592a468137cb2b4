import BenchKit
import Foundation
import VGPU
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

#if canImport(Glibc)
  import Glibc
#endif

/// The helper processes of the suite: this executable started as
/// `vgpu-bench _MODE ...`. Not for people: the suite starts and stops them.
enum Modes {
  static func run(_ args: [String]) -> Int32 {
    let mode = args.first ?? ""
    /// The mode's operands: `count` of them, the last `counts` of which are positive whole numbers.
    func operands(_ usage: String, count: Int, counts: Int = 0) -> (strings: [String], numbers: [Int])? {
      let rest = Array(args.dropFirst())
      let numbers = rest.suffix(counts).compactMap { Int($0) }.filter { $0 > 0 }
      guard rest.count == count || (mode == "_client" && rest.count == count + 1 && rest.last == "--quick"),
        numbers.count == counts
      else {
        FileHandle.standardError.write(
          Data(
            "vgpu-bench: \(mode) takes \(usage), not '\(rest.joined(separator: " "))' (an internal mode of the suite)\n"
              .utf8))
        return nil
      }
      return (Array(rest.prefix(count - counts)), numbers)
    }
    do {
      switch mode {
      case "_pingpong", "_ring", "_rpc-server", "_client", "_idle", "_load":
        guard let o = operands(["_client", "_idle", "_load"].contains(mode) ? "TARGET" : "PATH", count: 1) else {
          return 2
        }
        switch mode {
        case "_pingpong": try PingPong.serve(o.strings[0])
        case "_ring": try SPSCRing.consume(o.strings[0])
        case "_rpc-server": try SocketRPC.serve(o.strings[0]) { say("ready") }
        case "_client": try client(target: o.strings[0], quick: args.contains("--quick"))
        case "_load": try load(target: o.strings[0])
        default: try idle(target: o.strings[0])
        }
      case "_nops":
        guard let o = operands("TARGET COUNT BATCH", count: 3, counts: 2) else { return 2 }
        try nops(target: o.strings[0], count: o.numbers[0], batch: o.numbers[1])
      case "_direct-nops":
        guard let o = operands("COUNT BATCH", count: 2, counts: 2) else { return 2 }
        try directNops(count: o.numbers[0], batch: o.numbers[1])
      case "_copy-sweep":
        guard let o = operands("TARGET MILLISECONDS", count: 2, counts: 1) else { return 2 }
        try copySweep(target: o.strings[0], milliseconds: o.numbers[0])
      case "_engine":
        guard operands("WORKLOAD THREADS LAUNCHES", count: 3, counts: 2) != nil else { return 2 }
        try Suite.engineAlone(args)
      default:
        FileHandle.standardError.write(
          Data("vgpu-bench: '\(mode)' is not an internal mode (see 'vgpu-bench --help')\n".utf8))
        return 2
      }
      return 0
    } catch {
      let line = "\(error)".split(separator: "\n").joined(separator: "; ")
      FileHandle.standardError.write(Data("vgpu-bench \(mode): \(line)\n".utf8))
      return 1
    }
  }

  /// `unix:PATH`, `shm:PATH` or `sim` is the vGPU, `socket:PATH` the socket server.
  static func open(_ target: String) throws -> BenchTarget {
    if target.hasPrefix("socket:") { return try SocketClient(path: String(target.dropFirst(7))) }
    return DeviceTarget(try Device.open(target, options: .simulator()))
  }

  /// One client of the two-client cases: each case starts when the parent says go.
  static func client(target: String, quick: Bool) throws {
    let t = try open(target)
    let plan = Plan(quick: quick)
    var result = ClientResult()
    let lines = LineReader(fd: 0)
    func step(_ name: String, _ body: () throws -> Void) throws {
      say("ready \(name)")
      guard lines.next() == "go" else { throw BenchError("the suite went away") }
      try body()
    }
    try step("nop") { result.nop = try latencies(plan, samples: plan.samples / 2) { try t.nop() } }
    try step("batched") { result.batched = try Cases.batched(t, plan) }
    try step("launch") { result.launch = try Cases.launches(t, plan) }
    try step("alloc") { result.allocFree = try Cases.allocFree(t, plan) }
    try step("copies") {
      let r = try Cases.copies(t, plan, sizes: [Cases.twoClientCopySize], d2d: false).mine
      result.h2d = r.h2d.first?.gbPerSecond
      result.d2h = r.d2h.first?.gbPerSecond
    }
    let data = try JSONEncoder().encode(result)
    say("result " + String(decoding: data, as: UTF8.self))
    _ = lines.next()
  }

  /// For callgrind: `count` NOPs after a warm-up, nothing else.
  static func nops(target: String, count: Int, batch: Int) throws {
    let t = try open(target)
    for _ in 0..<1000 { try t.nop() }
    if batch <= 1 {
      for _ in 0..<count { try t.nop() }
    } else {
      try t.nops(count, batch: batch)
    }
  }

  /// For callgrind: the device's side alone, single-threaded.
  static func directNops(count: Int, batch: Int) throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 1 << 30
    let device = try ReferenceDevice(configuration: config)
    // As the guest library does: a run of NOPs gets one completion (2.4).
    var q = try DirectQueue(device: device, index: 0, coalescing: true)
    func run(_ n: Int) {
      var left = n
      while left > 0 {
        let k = min(batch, left)
        for _ in 0..<k { q.submit(Command.Nop().entry) }
        q.complete { _ in }
        left -= k
      }
    }
    run(1000)
    run(count)
  }

  /// Issue 17's D2H anomaly: per size and direction, bandwidth, per-copy
  /// latency (p50 / p90 / p99), the client thread's voluntary context
  /// switches per copy (each is a sleep in the wait for a completion), and
  /// the device's busy time per copy (its statistics). H2D and D2H are run
  /// in turn, four rounds of MILLISECONDS / 4 each. Sizes: VGPU_SWEEP_SIZES
  /// (bytes, comma-separated), else 4 KiB to 1 MiB.
  static func copySweep(target: String, milliseconds: Int) throws {
    guard let t = try open(target) as? DeviceTarget else { throw BenchError("_copy-sweep needs a vGPU target") }
    let sizes =
      ProcessInfo.processInfo.environment["VGPU_SWEEP_SIZES"].map { $0.split(separator: ",").compactMap { Int($0) } }
      ?? [4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 512, 1024].map { $0 << 10 }
    let most = sizes.max() ?? 0
    let host = Cases.hostBuffer(most, fill: 0x5A)
    let back = Cases.hostBuffer(most, fill: 0xA5)
    let a = try t.allocate(most)
    defer {
      try? t.free(a)
      host.deallocate()
      back.deallocate()
    }
    func switches() -> Int {
      var u = rusage()
      getrusage(__rusage_who_t(1), &u)  // RUSAGE_THREAD
      return u.ru_nvcsw
    }
    print("size  dir  GB/s   p50us  p90us  p99us  sleeps/copy  device-us/copy")
    for size in sizes {
      let source = UnsafeRawBufferPointer(rebasing: host[0..<size])
      let destination = UnsafeMutableRawBufferPointer(rebasing: back[0..<size])
      let bodies: [() throws -> Void] = [
        { try t.copyIn(a, from: source) }, { try t.copyOut(a, into: destination) },
      ]
      var lat = [[UInt64]](repeating: [], count: 2)
      var bytes = [0, 0]
      var time = [UInt64(0), 0]
      var sleeps = [0, 0]
      var busy = [UInt64(0), 0]
      var copies = [UInt64(0), 0]
      for body in bodies { for _ in 0..<20 { try body() } }
      for _ in 0..<4 {
        for (i, body) in bodies.enumerated() {
          let s0 = try t.device.statistics(.process)
          let c0 = switches()
          let t0 = now()
          var t1 = t0
          repeat {
            let b = now()
            try body()
            t1 = now()
            lat[i].append(t1 &- b)
            bytes[i] += size
          } while t1 &- t0 < UInt64(milliseconds) * 250_000
          time[i] += t1 &- t0
          sleeps[i] += switches() - c0
          let s1 = try t.device.statistics(.process)
          busy[i] += s1.busyNanoseconds &- s0.busyNanoseconds
          copies[i] += s1.copies &- s0.copies
        }
      }
      for i in 0..<2 {
        let l = lat[i].sorted()
        func q(_ f: Double) -> Double { Double(l[min(l.count - 1, Int(Double(l.count) * f))]) / 1000 }
        print(
          String(
            format: "%5dK %@ %6.2f %6.1f %6.1f %6.1f  %6.3f  %6.2f", size >> 10, i == 0 ? "H2D" : "D2H",
            Double(bytes[i]) / Double(time[i]), q(0.5), q(0.9), q(0.99), Double(sleeps[i]) / Double(l.count),
            Double(busy[i]) / 1000 / Double(max(1, copies[i]))))
      }
    }
  }

  /// An idle client: opens the device, does a little, then holds it open until stdin closes.
  static func idle(target: String) throws {
    let t = try open(target)
    for _ in 0..<100 { try t.nop() }
    say("ready")
    _ = LineReader(fd: 0).next()
    withExtendedLifetime(t) {}
  }
}

struct ClientResult: Codable {
  var nop: LatencySummary?
  var batched: Double?
  var launch: Double?
  var allocFree: Double?
  var h2d: Double?
  var d2h: Double?
}

/// Lines from a file descriptor, read with read(2) (no Foundation run loop).
final class LineReader {
  let fd: Int32
  var buffer: [UInt8] = []
  init(fd: Int32) { self.fd = fd }

  func next() -> String? {
    while true {
      if let i = buffer.firstIndex(of: 10) {
        let line = String(decoding: buffer[..<i], as: UTF8.self)
        buffer.removeSubrange(...i)
        return line
      }
      var chunk = [UInt8](repeating: 0, count: 4096)
      let n = read(fd, &chunk, 4096)
      if n <= 0 { return nil }
      buffer += chunk[..<n]
    }
  }
}

/// A line to the suite, unbuffered (stdout is a pipe).
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
