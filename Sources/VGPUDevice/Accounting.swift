import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

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

  func countBusy(_ nanoseconds: UInt64, _ qp: Int) {
    served[qp].stats.busyNanoseconds &+= nanoseconds
    deviceTotals.busyNanoseconds &+= nanoseconds
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
  }

  func countFree(_ bytes: UInt64, owner qp: Int) {
    Self.debit(&served[qp].stats.bytesAllocated, bytes)
    Self.debit(&deviceTotals.bytesAllocated, bytes)
  }

  static func debit(_ counter: inout UInt64, _ amount: UInt64) {
    counter = counter >= amount ? counter - amount : 0
  }

  /// Frees (and scrubs) every allocation made through queue pair `qp`.
  func freeAll(ownedBy qp: Int) -> (count: Int, bytes: UInt64) {
    for a in allocator.allocations where a.owner == UInt32(qp) { scrub(a.offset, a.size) }
    let (count, bytes) = allocator.freeAll(owner: UInt32(qp))
    countFree(bytes, owner: qp)
    return (count, bytes)
  }

  /// Freed memory must not carry one process's data to the next: whole pages
  /// go back to the OS (and read as zero), the partial pages at the ends are zeroed.
  func scrub(_ offset: UInt64, _ size: UInt64) {
    let page = memory.pageSize
    let first = (offset + page - 1) / page * page
    let last = (offset + size) / page * page
    guard first < last else {
      Glibc.memset(memory.base + Int(offset), 0, Int(size))
      return
    }
    Glibc.memset(memory.base + Int(offset), 0, Int(first - offset))
    Glibc.memset(memory.base + Int(last), 0, Int(offset + size - last))
    memory.discard(offset: first, length: last - first)
  }
}
