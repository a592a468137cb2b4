#if canImport(Glibc)
  import Glibc
#endif

/// A BAR (or anything standing in for one) mapped into this process: the
/// memory both sides of the protocol read and write.
///
/// Kinds: anonymous shared memory (the simulated device, in one process),
/// later a shared-memory file, a VFIO region or a sysfs `resourceN`. The
/// mapping is released when the last reference goes away.
public final class MappedRegion: @unchecked Sendable {
  public let base: UnsafeMutableRawPointer
  public let size: Int
  /// Where the memory came from, for messages: `anonymous`, `/dev/shm/vgpu0`, ...
  public let origin: String

  private init(base: UnsafeMutableRawPointer, size: Int, origin: String) {
    self.base = base
    self.size = size
    self.origin = origin
  }

  /// Zero-filled memory of `size` bytes, page-aligned, as a simulated BAR.
  /// MAP_SHARED so that a forked child would still share it.
  public static func anonymous(size: Int) throws(RegionError) -> MappedRegion {
    guard size > 0 else { throw RegionError(attempted: "map \(size) bytes", found: "size must be positive", errno: 0) }
    let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
    guard let p, p != MAP_FAILED else {
      throw RegionError(attempted: "map \(size) bytes of anonymous shared memory", found: "mmap failed", errno: errno)
    }
    return MappedRegion(base: p, size: size, origin: "anonymous")
  }

  deinit { munmap(base, size) }

  /// Whether `[offset, offset + length)` lies inside the region, without overflow.
  @inline(__always)
  public func contains(offset: UInt64, length: UInt64) -> Bool {
    offset <= UInt64(size) && length <= UInt64(size) - offset
  }
}

/// A mapping that could not be made: what was attempted, what was found, errno.
public struct RegionError: Error, CustomStringConvertible {
  public var attempted: String
  public var found: String
  public var errno: Int32

  public var description: String {
    var s = "could not \(attempted): \(found)"
    if errno != 0 { s += " (\(String(cString: strerror(errno))))" }
    return s
  }
}
