import VGPUProtocol

/// The counters: per queue pair (`served[qp].stats`) and for the device.
/// Live bytes are counted on the pair an allocation was made through, and
/// only allocations and frees move them, so they never go below zero; the
/// subtractions saturate anyway, so that a device bug shows as a wrong
/// figure rather than a trap that takes every client down.
extension Executor {
  func countCommand(_ qp: Int) {
    served[qp].stats.commands &+= 1
    deviceTotals.commands &+= 1
  }

  /// `n` NOPs served in a run (`serve`): counted as `countCommand` would,
  /// in one addition. A successful NOP has nothing else to count.
  @inline(__always) func countNOPs(_ n: UInt64, _ qp: Int) {
    guard n > 0 else { return }
    served[qp].stats.commands &+= n
    deviceTotals.commands &+= n
  }

  func countBusy(_ nanoseconds: UInt64, _ qp: Int) {
    served[qp].stats.busyNanoseconds &+= nanoseconds
    deviceTotals.busyNanoseconds &+= nanoseconds
    shared.busyNanoseconds &+= nanoseconds
  }

  func countLaunch(_ qp: Int) {
    served[qp].stats.launches &+= 1
    deviceTotals.launches &+= 1
  }

  func countAllocation(_ bytes: UInt64, owner qp: Int) {
    served[qp].stats.bytesAllocated &+= bytes
    served[qp].stats.allocations &+= 1
    deviceTotals.bytesAllocated &+= bytes
    deviceTotals.allocations &+= 1
    shared.bytesInUse &+= bytes
  }

  func countFree(_ bytes: UInt64, owner qp: Int) {
    Self.debit(&served[qp].stats.bytesAllocated, bytes)
    Self.debit(&deviceTotals.bytesAllocated, bytes)
    Self.debit(&shared.bytesInUse, bytes)
  }

  static func debit(_ counter: inout UInt64, _ amount: UInt64) {
    counter = counter >= amount ? counter - amount : 0
  }

  /// Frees (and wipes) every range made through queue pair `qp`: its
  /// allocations and the module variables loaded through it.
  func freeAll(ownedBy qp: Int) -> (count: Int, bytes: UInt64) {
    let removed = ledger.removeAll(owner: UInt32(qp))
    var bytes: UInt64 = 0
    let who = caller(qp)
    for e in removed {
      bytes += e.size
      if e.kind != .driverVariable { backend.free(e.address, size: e.size, for: who) }
    }
    countFree(bytes, owner: qp)
    return (removed.count, bytes)
  }
}
