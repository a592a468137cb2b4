import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The page-locked window (2.4, feature `hostWindow`): BAR bytes past the
/// layout, handed out in page-aligned ranges (`windowAlloc`). Both sides map
/// the whole BAR, so a VM's guest gets pinned memory the device copies
/// straight to and from, one copy, where `SharedHostMemory` (a host
/// process's memfd) cannot reach.
///
/// A range belongs to the queue pair that allocated it; any pair of the same
/// process may name it as staging. Ranges are placed by a `DeviceAllocator`
/// over window offsets (owner = queue pair), whose lookup is a binary search
/// that never allocates: the staging check of every copy goes through it.
struct HostWindow {
  /// The window's first byte, a BAR offset (page-aligned), and its length (whole pages).
  let offset: UInt64
  let size: UInt64
  /// Window-relative ranges; each one's requested size is its rounded size.
  var ranges: DeviceAllocator

  static let page = ProtocolLimits.hostWindowAlignment

  init(offset: UInt64, size: UInt64) {
    self.offset = offset
    self.size = size
    ranges = DeviceAllocator(capacity: size)
  }

  /// The queue pair owning the range that holds all of BAR bytes
  /// `[address, address + length)`, or nil. Allocates nothing.
  @inline(__always)
  func owner(of address: UInt64, _ length: UInt64) -> Int? {
    guard address >= offset, let e = ranges.ledger.entry(containing: address - offset, length: length) else {
      return nil
    }
    return Int(e.owner)
  }

  /// The live range starting at BAR offset `address`: its window-relative start, length and owner.
  func range(startingAt address: UInt64) -> AllocationLedger.Entry? {
    guard address >= offset, let e = ranges.ledger.entry(containing: address - offset, length: 0),
      e.address == address - offset
    else { return nil }
    return e
  }

  /// The largest range `windowAlloc` could place now.
  var largestFree: UInt64 { ranges.largestFreeBlock / Self.page * Self.page }

  /// Zeroes `length` bytes at BAR offset `address` of the BAR at `base`, so
  /// that no process's bytes reach the next owner. Punching the pages out
  /// (shmem, and the anonymous shared mappings of in-process devices) also
  /// gives their memory back; elsewhere the bytes are cleared. (Were the
  /// window ever registered with a GPU driver, its pinned pages would have
  /// to be cleared in place instead: a punched page leaves the DMA mapping.)
  static func scrub(_ base: UnsafeMutableRawPointer, _ address: UInt64, _ length: UInt64) {
    guard length > 0 else { return }
    let p = base + Int(address)
    if madvise(p, Int(length), MADV_REMOVE) != 0 {
      p.initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
    }
  }
}
