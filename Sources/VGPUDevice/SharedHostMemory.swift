import CSupport
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Host memory that processes lent the device (2.4, feature
/// `sharedHostMemory`): each range a memfd of the process, taken with
/// pidfd_getfd(2) and mapped here, known by the address where the process
/// mapped it. A copy from or to such memory is one copy (device memory ↔
/// these pages) instead of two through the staging slots: what CUDA's
/// page-locked memory is for.
///
/// A range belongs to the queue pair that shared it (as an allocation does)
/// and any pair of the same process may copy through it. The file is sealed
/// against resizing (checked before mapping), so no page of the mapping can
/// disappear under a copy (a shrunk file's pages fault with SIGBUS). The
/// device copies at once (`ExecutionBackend.finishesHostAccessOnReturn`),
/// so an unmapped range is never touched by work still in flight.
struct SharedHostMemory: ~Copyable {
  struct Range {
    var pid: UInt32
    /// The queue pair that shared it: released with it.
    var owner: Int
    /// Where the process mapped it, and its length.
    var start: UInt64
    var length: UInt64
    /// The same pages, mapped here.
    var mapping: UnsafeMutableRawPointer
  }

  /// The most ranges one process may share at once (each holds a mapping here).
  static let perProcess = 4096

  /// Sorted by start address; ranges of one process never overlap.
  private var ranges: [Range] = []

  init() {}

  deinit { for r in ranges { munmap(r.mapping, Int(r.length)) } }

  /// The pages behind `[address, address + length)` of process `pid`,
  /// inside one range, or nil. Allocates nothing.
  func pointer(pid: UInt32, address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
    // The process's last range starting at or below `address`: its ranges
    // do not overlap, so no other can hold it.
    var i = firstIndex(startingAbove: address) - 1
    while i >= 0 && ranges[i].pid != pid { i -= 1 }
    guard i >= 0 else { return nil }
    let r = ranges[i]
    let offset = address - r.start
    guard offset < r.length, length <= r.length - offset else { return nil }
    return r.mapping + Int(offset)
  }

  func overlaps(pid: UInt32, start: UInt64, length: UInt64) -> Bool {
    ranges.contains { $0.pid == pid && $0.start < start + length && start < $0.start + $0.length }
  }

  func count(pid: UInt32) -> Int { ranges.reduce(0) { $0 + ($1.pid == pid ? 1 : 0) } }

  mutating func insert(_ r: Range) { ranges.insert(r, at: firstIndex(startingAbove: r.start)) }

  /// Unmaps process `pid`'s range starting at `start`; its length, or nil if there is none.
  mutating func remove(pid: UInt32, start: UInt64) -> UInt64? {
    guard let i = ranges.firstIndex(where: { $0.pid == pid && $0.start == start }) else { return nil }
    let r = ranges.remove(at: i)
    munmap(r.mapping, Int(r.length))
    return r.length
  }

  /// Unmaps every range queue pair `qp` shared; how many there were.
  @discardableResult
  mutating func removeAll(owner qp: Int) -> Int {
    var n = 0
    for r in ranges where r.owner == qp {
      munmap(r.mapping, Int(r.length))
      n += 1
    }
    if n > 0 { ranges.removeAll { $0.owner == qp } }
    return n
  }

  private func firstIndex(startingAbove address: UInt64) -> Int {
    var (low, high) = (0, ranges.count)
    while low < high {
      let mid = (low + high) / 2
      if ranges[mid].start <= address { low = mid + 1 } else { high = mid }
    }
    return low
  }
}
