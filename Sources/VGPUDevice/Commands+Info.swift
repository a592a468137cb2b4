import CSupport
import VGPUProtocol

/// identify, statistics, processes: what the device says about itself and its users.
extension Executor {
  func identify(_ c: Command.Identify, qp: Int) throws(Refusal) -> CompletionEntry {
    guard c.guestVersion >> 16 == UInt32(ProtocolVersion.major) else {
      throw Refusal(status: .versionMismatch, detail: 1, result1: UInt64(ProtocolVersion.packed))
    }
    served[qp].identified = true
    let agreed = offeredFeatures.intersection(c.guestFeatures)
    served[qp].coalesces = agreed.contains(.coalescedCompletions)
    if agreed.contains(.guestHeartbeat) && !served[qp].heartbeatWatched {
      // The guest promised to beat from now on; silence is measured from here.
      served[qp].heartbeatWatched = true
      served[qp].beat = views[qp].heartbeat
      served[qp].beatSeenAt = vgpu_monotonic_ns()
    }
    return Command.Identify.Reply(features: agreed, deviceVersion: ProtocolVersion.packed).completion
  }

  func statistics(_ c: Command.Statistics, qp: Int) throws(Refusal) -> CompletionEntry {
    guard let scope = StatisticsScope(rawValue: c.scope) else { throw Refusal(status: .invalidValue, detail: 1) }
    guard c.length >= UInt64(StatisticsRecord.size) else { throw Refusal(status: .invalidValue, detail: 3) }
    let out = try stagingRange(c.staging, UInt64(StatisticsRecord.size), qp: qp, argument: 2)
    var record: StatisticsRecord
    switch scope {
    case .queuePair:
      record = served[qp].stats
      record.queuePairs = 1
    case .process:
      record = StatisticsRecord()
      for i in served.indices where served[i].active && served[i].pid == served[qp].pid {
        record = record + served[i].stats
        record.queuePairs += 1
      }
    case .device:
      // Memory and busy time are every tenant's of the backend, as
      // memoryInfo's free and a GPU's utilization are; the rest is this BAR's own.
      // A BAR with a limit of its own (a VM among several) sees its own memory only.
      record = deviceTotals
      record.busyNanoseconds = backend.busyNanoseconds() ?? shared.busyNanoseconds
      record.bytesAllocated = ownMemoryLimit == nil ? shared.bytesInUse : ledger.bytes
      record.queuePairs = UInt64(served.count { $0.active })
    }
    out.storeBytes(of: record, as: StatisticsRecord.self)
    return CompletionEntry(status: .success, result0: UInt64(StatisticsRecord.size))
  }

  /// One record per pid among the active queue pairs, in the order of each
  /// pid's first queue pair, as many as fit: a ProcessRecord (a0 0 or 32)
  /// or a ProcessActivityRecord (a0 64). Allocates nothing: a pid is new at
  /// its first queue pair, and its record sums the pairs from there on (at
  /// most 256² steps).
  func processes(_ c: Command.Processes, qp: Int) throws(Refusal) -> CompletionEntry {
    let activity = c.recordSize == UInt64(ProcessActivityRecord.size)
    guard c.recordSize == 0 || c.recordSize == UInt64(ProcessRecord.size) || activity else {
      throw Refusal(status: .invalidValue, detail: 1)
    }
    let size = UInt64(activity ? ProcessActivityRecord.size : ProcessRecord.size)
    guard c.length >= size, c.length % size == 0 else { throw Refusal(status: .invalidValue, detail: 3) }
    let out = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    let capacity = c.length / size
    var written: UInt64 = 0
    var total: UInt64 = 0
    for i in served.indices where served[i].active && isFirstPairOfItsProcess(i) {
      total += 1
      guard written < capacity else { continue }
      let record = processTotals(from: i).record
      if activity {
        (out + Int(written * size)).storeBytes(of: record, as: ProcessActivityRecord.self)
      } else {
        (out + Int(written * size)).storeBytes(of: record.process, as: ProcessRecord.self)
      }
      written += 1
    }
    return Command.Processes.Reply(written: written, total: total).completion
  }
}
