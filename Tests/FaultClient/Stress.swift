import Foundation
import Synchronization
import TestSupport
import VGPU
import VGPUProtocol

/// Mixed work on one device from several threads, every byte checked: what
/// the stress test runs in each of its processes.
enum Stress {
  /// What one process did, summed over its threads.
  struct Counts: CustomStringConvertible {
    var operations = 0
    var bytesVerified = 0
    var launches = 0
    var modules = 0
    var description: String {
      "operations=\(operations) bytes=\(bytesVerified) launches=\(launches) modules=\(modules)"
    }
    static func + (a: Counts, b: Counts) -> Counts {
      Counts(
        operations: a.operations + b.operations, bytesVerified: a.bytesVerified + b.bytesVerified,
        launches: a.launches + b.launches, modules: a.modules + b.modules)
    }
  }

  static func run(_ device: Device, seconds: Double, threads: Int, seed: UInt64, ptx: [UInt8]) -> Counts {
    let deadline = Date().addingTimeInterval(seconds)
    let total = Mutex(Counts())
    let done = DispatchGroup()
    for t in 0..<threads {
      done.enter()
      Thread.detachNewThread {
        var worker = Worker(device: device, seed: seed &* 0x9E37_79B9 &+ UInt64(t) &+ UInt64(getpid()) << 20, ptx: ptx)
        worker.run(until: deadline)
        let counts = worker.counts
        total.withLock { $0 = $0 + counts }
        done.leave()
      }
    }
    done.wait()
    return total.withLock { $0 }
  }

  struct Worker {
    let device: Device
    var random: SplitMix
    let ptx: [UInt8]
    var counts = Counts()

    init(device: Device, seed: UInt64, ptx: [UInt8]) {
      self.device = device
      self.random = SplitMix(seed)
      self.ptx = ptx
    }

    func check(_ ok: Bool, _ what: @autoclosure () -> String) {
      if !ok { fail("\(what()) (pid \(getpid()))", 2) }
    }

    mutating func run(until deadline: Date) {
      // A module kept for the thread's launches; others are loaded and dropped as an operation of their own.
      do {
        let module = try device.loadModule(ptx)
        let vectorAdd = try device.function("vector_add", in: module)
        while Date() < deadline {
          switch random.next() % 4 {
          case 0: try copies()
          case 1: try memset()
          case 2: try launch(vectorAdd)
          default: try moduleRoundTrip()
          }
          counts.operations += 1
        }
        try device.unloadModule(module)
      } catch { fail("\(error)") }
    }

    /// Sizes from one byte to 6 MiB, mostly small, some across staging slots.
    mutating func size() -> Int {
      switch random.next() % 4 {
      case 0: Int(random.next() % 64) + 1
      case 1: Int(random.next() % 65_536) + 1
      case 2: Int(random.next() % (1 << 20)) + 1
      default: Int(random.next() % (6 << 20)) + 1
      }
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
      var data = [UInt8](repeating: 0, count: count)
      data.withUnsafeMutableBytes { b in
        var i = 0
        while i < count {
          var word = random.next()
          Swift.withUnsafeBytes(of: &word) { w in
            for j in 0..<min(8, count - i) { b[i + j] = w[j] }
          }
          i += 8
        }
      }
      return data
    }

    /// H2D, D2H and D2D of one random buffer, each read back.
    mutating func copies() throws(VGPUError) {
      let n = size()
      let data = bytes(n)
      let a = try device.allocate(n)
      let b = try device.allocate(n)
      try device.copy(to: a, from: data)
      check(try device.read(a, count: n) == data, "a \(n)-byte host-to-device copy read back differs")
      try device.copy(to: b, from: a, count: n)
      check(try device.read(b, count: n) == data, "a \(n)-byte device-to-device copy read back differs")
      try device.free(a)
      try device.free(b)
      counts.bytesVerified += 2 * n
    }

    mutating func memset() throws(VGPUError) {
      let n = size()
      let value = UInt8(truncatingIfNeeded: random.next())
      let p = try device.allocate(n)
      try device.memset(p, value: UInt32(value), count: n)
      check(try device.read(p, count: n) == [UInt8](repeating: value, count: n), "a \(n)-byte memset read back differs")
      try device.free(p)
      counts.bytesVerified += n
    }

    /// vector_add over small integers as floats, which add exactly: checked against the CPU's sums.
    mutating func launch(_ function: FunctionHandle) throws(VGPUError) {
      let n = Int(random.next() % 4096) + 1
      var a = [Float](repeating: 0, count: n)
      var b = a
      for i in 0..<n {
        a[i] = Float(random.next() % 1000)
        b[i] = Float(random.next() % 1000)
      }
      let bytes = n * 4
      let pa = try device.allocate(bytes)
      let pb = try device.allocate(bytes)
      let pc = try device.allocate(bytes)
      try device.copy(to: pa, from: a.withUnsafeBytes { Array($0) })
      try device.copy(to: pb, from: b.withUnsafeBytes { Array($0) })
      var parameters = [UInt8]()
      for p in [pa, pb, pc] { withUnsafeBytes(of: p.address) { parameters += $0 } }
      withUnsafeBytes(of: Int32(n)) { parameters += $0 }
      try device.launch(
        function, grid: Dimensions(UInt32((n + 127) / 128)), block: Dimensions(128), parameters: parameters)
      let c = try device.read(pc, count: bytes).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
      check(c == zip(a, b).map { $0 + $1 }, "vector_add over \(n) elements differs from the CPU's sums")
      for p in [pa, pb, pc] { try device.free(p) }
      counts.launches += 1
      counts.bytesVerified += bytes
    }

    mutating func moduleRoundTrip() throws(VGPUError) {
      let module = try device.loadModule(ptx)
      _ = try device.function("vector_add", in: module)
      try device.unloadModule(module)
      counts.modules += 1
    }
  }
}

/// A recognizable pattern a victim copies through its staging buffers: the
/// hostile client looks for it in all of the BAR it maps.
struct Marker {
  let bytes: [UInt8]

  init?(hex: String) {
    guard let b = hexBytes(hex), b.count >= 8 else { return nil }
    bytes = b
  }

  /// Copies 1 MiB of the marker over and over to the device and back (both
  /// pass the staging), each round checked. Returns the rounds.
  func copyUntil(_ deadline: Date, _ device: Device) -> Int {
    let count = 1 << 20
    let data = (0..<count).map { bytes[$0 % bytes.count] }
    var rounds = 0
    do {
      let p = try device.allocate(count)
      while Date() < deadline {
        try device.copy(to: p, from: data)
        if try device.read(p, count: count) != data { fail("the marker read back differs", 2) }
        rounds += 1
      }
      try device.free(p)
    } catch { fail("\(error)") }
    return rounds
  }
}
