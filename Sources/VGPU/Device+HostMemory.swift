import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Where page-locked bytes live, and so how the device copies them in one copy.
enum PageLocked: Equatable {
  /// A memfd this process shared (`hostMemoryShare`): `copyFromHost`, `copyToHost`.
  case shared
  /// The page-locked window (a VM's): staged copies naming this BAR offset, no slot.
  case window(barOffset: UInt64)
}

/// The ranges of page-locked host memory this process holds (2.4): memfds
/// shared with the device and ranges of the BAR's page-locked window, sorted
/// by address, and why sharing stopped if the device refused it.
struct SharedHostRanges: Sendable {
  struct Range {
    var start: UInt
    var length: Int
    /// The BAR offset of `start` for a window range; nil for a shared memfd.
    var barOffset: UInt64?
  }
  fileprivate var ranges: [Range] = []
  /// Set when the device refused to take this process's memory (not
  /// permitted, not supported): later allocations do not ask again.
  fileprivate(set) var refusal: VGPUError?

  /// What holds `[p, p + count)` inside one range, or nil. Allocates nothing.
  func kind(_ p: UnsafeRawPointer, _ count: Int) -> PageLocked? {
    let a = UInt(bitPattern: p)
    var (low, high) = (0, ranges.count)
    while low < high {
      let mid = (low + high) / 2
      if ranges[mid].start <= a { low = mid + 1 } else { high = mid }
    }
    guard low > 0 else { return nil }
    let r = ranges[low - 1]
    guard a - r.start < UInt(r.length), count <= r.length - Int(a - r.start) else { return nil }
    guard let window = r.barOffset else { return .shared }
    return .window(barOffset: window + UInt64(a - r.start))
  }

  fileprivate mutating func insert(_ r: Range, counting held: borrowing Atomic<Int>) {
    let i = ranges.firstIndex { $0.start > r.start } ?? ranges.count
    ranges.insert(r, at: i)
    held.store(ranges.count, ordering: .releasing)
  }

  fileprivate mutating func remove(startingAt start: UInt, counting held: borrowing Atomic<Int>) {
    ranges.removeAll { $0.start == start }
    held.store(ranges.count, ordering: .releasing)
  }
}

extension Device {
  /// Whether the device copies host memory this process shares with it
  /// (2.4, feature `sharedHostMemory`): a host process's BAR of its own
  /// from `vgpu-mediator`, or `sim`. Not across a VM boundary.
  public var sharesHostMemory: Bool { info.features.contains(.sharedHostMemory) }

  /// Whether page-locked memory comes from the BAR's page-locked window
  /// (2.4, feature `hostWindow`): a VM's guest, where memory cannot be lent.
  public var hasHostWindow: Bool { info.features.contains(.hostWindow) }

  /// Why host memory is not shared with this device, once it refused (nil otherwise).
  public var hostSharingRefusal: VGPUError? { hostShares.withLock { $0.refusal } }

  /// `bytes` of host memory (rounded up to whole pages, zeroed) that the
  /// device reads and writes directly: copies from and to it take one copy,
  /// the device's, instead of two through the staging slots. What
  /// `cuMemAllocHost` returns. Where the device cannot take this process's
  /// memory but its BAR has a page-locked window (a VM's guest,
  /// `hasHostWindow`), the memory is a range of that window, as zeroed.
  /// Nil when the device does neither (see `sharesHostMemory`), has refused
  /// to (`hostSharingRefusal`), or its window is full: use ordinary memory,
  /// whose copies are staged.
  public func allocateSharedHostMemory(_ bytes: Int) throws(VGPUError) -> UnsafeMutableRawBufferPointer? {
    guard bytes > 0 else {
      throw VGPUError(
        .invalidArgument, "allocate \(bytes) bytes of shared host memory", device: info.spec.description,
        found: "the size must be positive")
    }
    if !sharesHostMemory && hasHostWindow { return try allocateWindowRange(bytes) }
    guard sharesHostMemory, hostSharingRefusal == nil else { return nil }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let (rounded, overflow) = bytes.addingReportingOverflow(page - 1)
    guard !overflow else { throw outOfHostMemory(bytes, "the size overflows when rounded up to whole pages") }
    let length = rounded / page * page
    // A memfd sealed against resizing: the device maps it too, and a file
    // that could shrink would fault (SIGBUS) under its copies.
    let fd = vgpu_memfd_sealed("vgpu-host", UInt64(length))
    guard fd >= 0 else {
      throw outOfHostMemory(bytes, "memfd_create, ftruncate or F_ADD_SEALS failed: \(String(cString: strerror(-fd)))")
    }
    // The device holds the file once it answers; this process keeps only the mapping.
    defer { Glibc.close(fd) }
    guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
      throw outOfHostMemory(bytes, "mmap of a \(length)-byte memfd failed: \(String(cString: strerror(errno)))")
    }
    let shared = Command.HostMemoryShare(
      descriptor: UInt32(bitPattern: fd), address: UInt64(UInt(bitPattern: base)), length: UInt64(length))
    let answer = try withQueuePair { (qp) throws(VGPUError) in
      let id = try qp.submit(shared.entry, "share host memory")
      qp.ring()
      return try qp.wait(for: id, "share host memory")
    }
    guard answer.status == CommandStatus.success.rawValue else {
      munmap(base, length)
      let refusal = try withQueuePair { (qp) throws(VGPUError) in qp.deviceError(answer, "share host memory") }
      // Not allowed here (permissions, a backend that cannot): every later
      // allocation would be refused alike, so none asks again.
      if answer.status == CommandStatus.permissionDenied.rawValue
        || answer.status == CommandStatus.notSupported.rawValue
      {
        hostShares.withLock { $0.refusal = refusal }
        return nil
      }
      throw refusal
    }
    hostShares.withLock {
      $0.insert(.init(start: UInt(bitPattern: base), length: length, barOffset: nil), counting: hostSharesHeld)
    }
    return UnsafeMutableRawBufferPointer(start: base, count: length)
  }

  /// A range of the page-locked window (`windowAlloc`), checked to lie in
  /// the window the registers gave; nil when the window is full.
  private func allocateWindowRange(_ bytes: Int) throws(VGPUError) -> UnsafeMutableRawBufferPointer? {
    let page = Int(ProtocolLimits.hostWindowAlignment)
    let (rounded, overflow) = bytes.addingReportingOverflow(page - 1)
    guard !overflow else { throw outOfHostMemory(bytes, "the size overflows when rounded up to whole pages") }
    let length = UInt64(rounded / page * page)
    let operation: StaticString = "allocate page-locked window memory"
    let c = try withQueuePair { (qp) throws(VGPUError) in
      let id = try qp.submit(Command.WindowAlloc(length: UInt64(bytes)).entry, operation)
      qp.ring()
      return try qp.wait(for: id, operation)
    }
    // A full window: ordinary memory serves, its copies staged.
    if c.status == CommandStatus.outOfMemory.rawValue { return nil }
    guard c.status == CommandStatus.success.rawValue else {
      throw try withQueuePair { (qp) throws(VGPUError) in qp.deviceError(c, operation) }
    }
    let reply = Command.WindowAlloc.Reply(c)
    guard reply.offset % UInt64(page) == 0, reply.length >= length, reply.offset >= window.offset,
      reply.length <= window.size, reply.offset - window.offset <= window.size - reply.length
    else {
      throw VGPUError(
        .protocolViolation, "allocate \(bytes) bytes of page-locked window memory", device: info.spec.description,
        found:
          "the device answered \(reply.length) bytes at BAR offset \(reply.offset), not whole pages of at least \(length) inside its window (offset \(window.offset), \(window.size) bytes)"
      )
    }
    let base = region.base + Int(reply.offset)
    hostShares.withLock {
      $0.insert(
        .init(start: UInt(bitPattern: base), length: Int(reply.length), barOffset: reply.offset),
        counting: hostSharesHeld)
    }
    return UnsafeMutableRawBufferPointer(start: base, count: Int(reply.length))
  }

  /// Takes back and unmaps shared host memory that `allocateSharedHostMemory`
  /// returned, by its first byte; false when `base` is not such memory
  /// (nothing happens). Work that may read it must have finished (the caller synchronizes first).
  public func freeSharedHostMemory(_ base: UnsafeMutableRawPointer) throws(VGPUError) -> Bool {
    let a = UInt(bitPattern: base)
    guard let range = hostShares.withLock({ s in s.ranges.first { $0.start == a } }) else { return false }
    let length = range.length
    // A window range the device zeroes (the BAR stays mapped); a memfd it unmaps, and so does this process.
    let (entry, operation): (SubmissionEntry, StaticString) =
      range.barOffset.map { (Command.WindowFree(offset: $0).entry, "free page-locked window memory") }
      ?? (Command.HostMemoryUnshare(address: UInt64(a)).entry, "unshare host memory")
    let c = try withQueuePair { (qp) throws(VGPUError) in try qp.execute(entry, operation) }
    guard c.result0 == UInt64(length) else {
      throw VGPUError(
        .protocolViolation, "\(operation)", device: info.spec.description,
        found: "the device released \(c.result0) bytes of a \(length)-byte range")
    }
    hostShares.withLock { $0.remove(startingAt: a, counting: hostSharesHeld) }
    if range.barOffset == nil { munmap(base, length) }
    return true
  }

  /// Whether `p` lies in a page-locked window range this process holds:
  /// BAR memory, which only `freeSharedHostMemory` gives back (never munmap it).
  public func isWindowMemory(_ p: UnsafeRawPointer) -> Bool {
    if case .window = hostShares.withLock({ $0.kind(p, 1) }) { return true }
    return false
  }

  /// Whether `[p, p + count)` is host memory the device copies directly.
  @inline(__always)
  func isSharedHostMemory(_ p: UnsafeRawPointer, _ count: Int) -> Bool { pageLocked(p, count) != nil }

  /// How the device copies `[p, p + count)` in one copy, or nil: staged.
  @inline(__always)
  func pageLocked(_ p: UnsafeRawPointer, _ count: Int) -> PageLocked? {
    // Most processes hold none: their copies take no lock for the lookup.
    guard hostSharesHeld.load(ordering: .acquiring) > 0 else { return nil }
    return hostShares.withLock { $0.kind(p, count) }
  }

  private func outOfHostMemory(_ bytes: Int, _ found: String) -> VGPUError {
    VGPUError(
      .device(.outOfMemory), "allocate \(bytes) bytes of shared host memory", device: info.spec.description,
      found: found,
      remedy: "free host memory, or allocate less")
  }
}
