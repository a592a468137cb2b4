import CSupport
import VGPUProtocol

/// What a device counts beyond the wire's StatisticsRecord, for monitors
/// (the mediator's metrics, `processes` with activity records): copies by
/// direction, module loads, failed commands, time kernels ran. Plain
/// integers in the executor's fixed per-pair storage, bumped in place: no
/// allocation, no lock beyond the one the serving thread already holds.
public struct ActivityCounters: Sendable, Equatable {
  /// Bytes of successful copyToDevice commands.
  public var bytesToDevice: UInt64 = 0
  /// Bytes of successful copyFromDevice commands.
  public var bytesFromDevice: UInt64 = 0
  /// Bytes of successful copyDeviceToDevice commands.
  public var bytesWithinDevice: UInt64 = 0
  /// Successful moduleLoad commands.
  public var moduleLoads: UInt64 = 0
  /// Commands that completed with a status other than success.
  public var failedCommands: UInt64 = 0
  /// Wall time of successful launches, from the start of the command to its
  /// completion (on the serving thread or a kernel worker): the engine's time.
  public var kernelNanoseconds: UInt64 = 0

  public init() {}

  public static func + (a: ActivityCounters, b: ActivityCounters) -> ActivityCounters {
    var s = a
    s.bytesToDevice &+= b.bytesToDevice
    s.bytesFromDevice &+= b.bytesFromDevice
    s.bytesWithinDevice &+= b.bytesWithinDevice
    s.moduleLoads &+= b.moduleLoads
    s.failedCommands &+= b.failedCommands
    s.kernelNanoseconds &+= b.kernelNanoseconds
    return s
  }
}

/// Which way a copy went, for `ActivityCounters`.
enum CopyDirection {
  case toDevice, fromDevice, withinDevice
}

/// Command latency per opcode in fixed buckets, and per-status failure
/// counts: one buffer allocated with the executor, counted into in place.
/// Latency is the device's time on a command: from the clock read before it
/// (the previous command's end within a pass) to its completion.
struct CommandCounters {
  /// Upper bounds of the latency buckets in nanoseconds (Prometheus's `le`):
  /// 1, 2.5, 5 … 10 s; an observation above the last goes only to +Inf.
  static let bucketBounds: [UInt64] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
    1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
  ]
  /// One row per opcode value up to the highest, and one for unknown opcodes.
  static let rows = Int(Opcode.allCases.map(\.rawValue).max()!) + 2
  /// Per row: the buckets (non-cumulative; the last is +Inf), then the sum in nanoseconds.
  static let rowWidth = bucketBounds.count + 2
  static let statuses = Int(CommandStatus.highest) + 1

  /// The bounds again, in a buffer of their own: reading a global array on
  /// the hot path would go through its lazy initialiser each time.
  let bounds: UnsafeMutableBufferPointer<UInt64>
  let latency: UnsafeMutableBufferPointer<UInt64>
  /// Failed commands by status value (index 0, success, stays 0).
  let failures: UnsafeMutableBufferPointer<UInt64>

  init() {
    bounds = .allocate(capacity: Self.bucketBounds.count)
    _ = bounds.initialize(from: Self.bucketBounds)
    latency = .allocate(capacity: Self.rows * Self.rowWidth)
    latency.initialize(repeating: 0)
    failures = .allocate(capacity: Self.statuses)
    failures.initialize(repeating: 0)
  }

  func deallocate() {
    bounds.deallocate()
    latency.deallocate()
    failures.deallocate()
  }

  @inline(__always) func record(opcode: UInt8, nanoseconds: UInt64) {
    let row = Int(opcode) < Self.rows - 1 ? Int(opcode) : Self.rows - 1
    let base = row * Self.rowWidth
    // Most commands take microseconds: the scan ends in the first buckets.
    var bucket = 0
    while bucket < bounds.count && nanoseconds > bounds[bucket] { bucket += 1 }
    latency[base + bucket] &+= 1
    latency[base + Self.rowWidth - 1] &+= nanoseconds
  }

  @inline(__always) func recordFailure(_ status: UInt16) {
    if Int(status) < Self.statuses { failures[Int(status)] &+= 1 }
  }
}

extension Executor {
  func countCopy(_ length: UInt64, _ qp: Int, _ direction: CopyDirection) {
    served[qp].stats.copies &+= 1
    served[qp].stats.bytesCopied &+= length
    deviceTotals.copies &+= 1
    deviceTotals.bytesCopied &+= length
    switch direction {
    case .toDevice:
      served[qp].activity.bytesToDevice &+= length
      deviceActivity.bytesToDevice &+= length
    case .fromDevice:
      served[qp].activity.bytesFromDevice &+= length
      deviceActivity.bytesFromDevice &+= length
    case .withinDevice:
      served[qp].activity.bytesWithinDevice &+= length
      deviceActivity.bytesWithinDevice &+= length
    }
  }

  func countModuleLoad(_ qp: Int) {
    served[qp].activity.moduleLoads &+= 1
    deviceActivity.moduleLoads &+= 1
  }

  /// A command finished on queue pair `qp`: its latency (when timed) and, if it failed, its status.
  @inline(__always) func countCompletion(_ opcode: UInt8, _ status: UInt16, nanoseconds: UInt64?, _ qp: Int) {
    if let nanoseconds { commandCounters.record(opcode: opcode, nanoseconds: nanoseconds) }
    if status != CommandStatus.success.rawValue {
      served[qp].activity.failedCommands &+= 1
      deviceActivity.failedCommands &+= 1
      commandCounters.recordFailure(status)
    }
  }

  func countKernelTime(_ nanoseconds: UInt64, _ qp: Int) {
    served[qp].activity.kernelNanoseconds &+= nanoseconds
    deviceActivity.kernelNanoseconds &+= nanoseconds
  }

  /// The sums over the active queue pairs of the process whose first active
  /// pair is `first` (the pairs before it are not that process's), as
  /// `processes` reports them. Allocates nothing.
  func processTotals(from first: Int) -> (record: ProcessActivityRecord, activity: ActivityCounters) {
    let pid = served[first].pid
    var record = ProcessActivityRecord(process: ProcessRecord(pid: pid))
    var activity = ActivityCounters()
    for j in first..<served.count where served[j].active && served[j].pid == pid {
      let stats = served[j].stats
      record.process.queuePairs += 1
      record.process.bytesAllocated &+= stats.bytesAllocated
      record.process.launches &+= stats.launches
      record.process.busyNanoseconds &+= stats.busyNanoseconds
      record.commands &+= stats.commands
      activity = activity + served[j].activity
    }
    record.bytesToDevice = activity.bytesToDevice
    record.bytesFromDevice = activity.bytesFromDevice
    record.bytesWithinDevice = activity.bytesWithinDevice
    return (record, activity)
  }

  /// Whether active pair `i` is the first of its process (pids are found in
  /// the order of their first pair, without a set: nothing is allocated).
  func isFirstPairOfItsProcess(_ i: Int) -> Bool {
    let pid = served[i].pid
    return !served[..<i].contains(where: { $0.active && $0.pid == pid })
  }
}

/// One process using the device, as a snapshot saw it.
public struct ProcessSnapshot: Sendable, Equatable {
  /// As the process declared it (a guest pid when the clients are in a VM).
  public var pid: UInt32
  /// Its active queue pairs.
  public var queuePairs: Int
  /// Sums over its active queue pairs, as `processes` reports them.
  public var record: ProcessActivityRecord
  /// What the wire's records do not carry (module loads, failures, kernel time).
  public var activity: ActivityCounters
}

/// Command latency of one opcode: counts per bucket (non-cumulative, the last
/// one above every bound) and the sum, as a Prometheus histogram wants them.
public struct LatencyHistogram: Sendable, Equatable {
  /// The opcode's name as `Opcode` spells it, or "unknown" for invalid opcodes.
  public var opcode: String
  /// Counts per bucket, aligned with `DeviceSnapshot.latencyBucketBounds` plus one for +Inf.
  public var buckets: [UInt64]
  public var sumNanoseconds: UInt64
  public var count: UInt64 { buckets.reduce(0, &+) }
}

/// Everything a monitor reads about a device at one instant: taken under the
/// device's lock in one go (a few microseconds), never per command.
public struct DeviceSnapshot: Sendable {
  /// When it was taken (CLOCK_MONOTONIC, nanoseconds).
  public var takenAt: UInt64
  public var memoryTotal: UInt64
  /// Bytes allocated by every client.
  public var memoryUsed: UInt64
  public var queuePairs: Int
  public var queuePairsInUse: Int
  /// Device-lifetime totals (the `statistics` command's device scope).
  public var totals: StatisticsRecord
  public var activity: ActivityCounters
  /// Failed commands by status, only those that happened.
  public var failures: [(status: CommandStatus, count: UInt64)]
  /// Upper bounds of the latency buckets, in nanoseconds.
  public var latencyBucketBounds: [UInt64]
  /// One histogram per opcode that was timed at least once.
  public var latency: [LatencyHistogram]
  /// One per process with active queue pairs, in the order of their first pair.
  public var processes: [ProcessSnapshot]
}

extension ReferenceDevice {
  /// Everything the device counts, copied under its lock. For monitors (the
  /// mediator's metrics endpoint): it allocates, so it belongs at scrape
  /// time, never on a path that serves commands.
  public func snapshot() -> DeviceSnapshot {
    executor.lock.withLock { _ in executor.snapshot() }
  }
}

extension Executor {
  func snapshot() -> DeviceSnapshot {
    var processes: [ProcessSnapshot] = []
    for i in served.indices where served[i].active && isFirstPairOfItsProcess(i) {
      let (record, activity) = processTotals(from: i)
      processes.append(
        ProcessSnapshot(
          pid: record.process.pid, queuePairs: Int(record.process.queuePairs), record: record, activity: activity))
    }
    var failures: [(status: CommandStatus, count: UInt64)] = []
    for s in CommandStatus.allCases where Int(s.rawValue) < CommandCounters.statuses {
      let n = commandCounters.failures[Int(s.rawValue)]
      if n > 0 { failures.append((s, n)) }
    }
    var latency: [LatencyHistogram] = []
    let width = CommandCounters.rowWidth
    for row in 0..<CommandCounters.rows {
      let cells = commandCounters.latency[(row * width)..<((row + 1) * width)]
      let buckets = Array(cells.dropLast())
      guard buckets.contains(where: { $0 > 0 }) else { continue }
      // The last row gathers opcodes past the highest; a gap in the numbering is named by its value.
      let name =
        row == CommandCounters.rows - 1
        ? "unknown" : Opcode(rawValue: UInt8(row)).map { "\($0)" } ?? "opcode 0x\(String(row, radix: 16))"
      latency.append(LatencyHistogram(opcode: name, buckets: buckets, sumNanoseconds: cells.last!))
    }
    var totals = deviceTotals
    totals.bytesAllocated = ledger.bytes
    if let busy = backend.busyNanoseconds() { totals.busyNanoseconds = busy }  // a GPU's, from the host's NVML
    totals.queuePairs = UInt64(activeQueuePairs.count)
    return DeviceSnapshot(
      takenAt: vgpu_monotonic_ns(), memoryTotal: memoryLimit, memoryUsed: ledger.bytes,
      queuePairs: views.count, queuePairsInUse: activeQueuePairs.count, totals: totals, activity: deviceActivity,
      failures: failures, latencyBucketBounds: CommandCounters.bucketBounds, latency: latency, processes: processes)
  }
}

extension DeviceSnapshot {
  /// Several devices over one backend (a mediator's per-client BARs) as one
  /// device: counts, memory and histograms summed, processes side by side.
  /// `busyNanoseconds`: the backend's own busy time when it knows it (a
  /// GPU's: each device reports the same figure, so it is not summed).
  public static func combining(
    _ parts: [DeviceSnapshot], memoryTotal: UInt64, busyNanoseconds: UInt64? = nil
  ) -> DeviceSnapshot {
    var all = DeviceSnapshot(
      takenAt: vgpu_monotonic_ns(), memoryTotal: memoryTotal, memoryUsed: 0, queuePairs: 0, queuePairsInUse: 0,
      totals: StatisticsRecord(), activity: ActivityCounters(), failures: [],
      latencyBucketBounds: CommandCounters.bucketBounds, latency: [], processes: [])
    var failures: [CommandStatus: UInt64] = [:]
    var latency: [String: LatencyHistogram] = [:]
    for p in parts {
      all.memoryUsed &+= p.memoryUsed
      all.queuePairs += p.queuePairs
      all.queuePairsInUse += p.queuePairsInUse
      all.totals = all.totals + p.totals
      all.activity = all.activity + p.activity
      for f in p.failures { failures[f.status, default: 0] &+= f.count }
      for h in p.latency {
        guard var sum = latency[h.opcode], sum.buckets.count == h.buckets.count else {
          latency[h.opcode] = h
          continue
        }
        for i in sum.buckets.indices { sum.buckets[i] &+= h.buckets[i] }
        sum.sumNanoseconds &+= h.sumNanoseconds
        latency[h.opcode] = sum
      }
      all.processes += p.processes
    }
    if let busyNanoseconds { all.totals.busyNanoseconds = busyNanoseconds }
    all.failures = failures.sorted { $0.key.rawValue < $1.key.rawValue }.map { ($0.key, $0.value) }
    all.latency = latency.values.sorted { $0.opcode < $1.opcode }
    return all
  }
}
