import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The ranges of host memory this process shared with the device (2.4),
/// sorted by address, and why sharing stopped if the device refused it.
struct SharedHostRanges: Sendable {
  fileprivate var ranges: [(start: UInt, length: Int)] = []
  /// Set when the device refused to take this process's memory (not
  /// permitted, not supported): later allocations do not ask again.
  fileprivate(set) var refusal: VGPUError?

  /// Whether `[p, p + count)` lies inside one shared range. Allocates nothing.
  func contains(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
    let a = UInt(bitPattern: p)
    var (low, high) = (0, ranges.count)
    while low < high {
      let mid = (low + high) / 2
      if ranges[mid].start <= a { low = mid + 1 } else { high = mid }
    }
    guard low > 0 else { return false }
    let r = ranges[low - 1]
    return a - r.start < UInt(r.length) && count <= r.length - Int(a - r.start)
  }
}

extension Device {
  /// Whether the device copies host memory this process shares with it
  /// (2.4, feature `sharedHostMemory`): a host process's BAR of its own
  /// from `vgpu-mediator`, or `sim`. Not across a VM boundary.
  public var sharesHostMemory: Bool { info.features.contains(.sharedHostMemory) }

  /// Why host memory is not shared with this device, once it refused (nil otherwise).
  public var hostSharingRefusal: VGPUError? { hostShares.withLock { $0.refusal } }

  /// `bytes` of host memory (rounded up to whole pages, zeroed) that the
  /// device reads and writes directly: copies from and to it take one copy,
  /// the device's, instead of two through the staging slots. What
  /// `cuMemAllocHost` returns. Nil when the device does not share memory
  /// (see `sharesHostMemory`) or has refused to (`hostSharingRefusal`): use
  /// ordinary memory, whose copies are staged.
  public func allocateSharedHostMemory(_ bytes: Int) throws(VGPUError) -> UnsafeMutableRawBufferPointer? {
    guard bytes > 0 else {
      throw VGPUError(
        .invalidArgument, "allocate \(bytes) bytes of shared host memory", device: info.spec.description,
        found: "the size must be positive")
    }
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
    hostShares.withLock { s in
      let i = s.ranges.firstIndex { $0.start > UInt(bitPattern: base) } ?? s.ranges.count
      s.ranges.insert((UInt(bitPattern: base), length), at: i)
    }
    return UnsafeMutableRawBufferPointer(start: base, count: length)
  }

  /// Takes back and unmaps shared host memory that `allocateSharedHostMemory`
  /// returned, by its first byte; false when `base` is not such memory
  /// (nothing happens). Work that may read it must have finished (the caller synchronizes first).
  public func freeSharedHostMemory(_ base: UnsafeMutableRawPointer) throws(VGPUError) -> Bool {
    let a = UInt(bitPattern: base)
    guard let length = hostShares.withLock({ s in s.ranges.first { $0.start == a }?.length }) else { return false }
    let c = try withQueuePair { (qp) throws(VGPUError) in
      try qp.execute(Command.HostMemoryUnshare(address: UInt64(a)).entry, "unshare host memory")
    }
    guard c.result0 == UInt64(length) else {
      throw VGPUError(
        .protocolViolation, "unshare host memory", device: info.spec.description,
        found: "the device released \(c.result0) bytes of a \(length)-byte range")
    }
    hostShares.withLock { s in s.ranges.removeAll { $0.start == a } }
    munmap(base, length)
    return true
  }

  /// Whether `[p, p + count)` is host memory the device copies directly.
  @inline(__always)
  func isSharedHostMemory(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
    sharesHostMemory && hostShares.withLock { $0.contains(p, count) }
  }

  private func outOfHostMemory(_ bytes: Int, _ found: String) -> VGPUError {
    VGPUError(
      .device(.outOfMemory), "allocate \(bytes) bytes of shared host memory", device: info.spec.description,
      found: found,
      remedy: "free host memory, or allocate less")
  }
}
