import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// A BAR (or anything standing in for one) mapped into this process: the
/// memory both sides of the protocol read and write.
///
/// Kinds: anonymous shared memory (the simulated device, in one process),
/// a shared-memory file, a sealed memfd passed over a Unix socket (a host
/// process's own BAR), a sysfs `resourceN` (``SysfsResource``, UIO) or a
/// VFIO region (``VFIODevice``). The mapping is released when the last
/// reference goes away.
public final class MappedRegion: @unchecked Sendable {
  public let base: UnsafeMutableRawPointer
  public let size: Int
  /// Where the memory came from, for messages: `anonymous`, `/dev/shm/vgpu0`, ...
  public let origin: String
  /// The open file behind the mapping (shared-memory files), or -1.
  public let fileDescriptor: Int32

  /// The byte ranges that are mapped, when not all of it is: a VFIO BAR
  /// whose sparse-mmap capability leaves out its MSI-X table. Touching a byte
  /// outside them faults. `nil`: the whole region.
  public let mappedRanges: [Range<Int>]?
  /// Kept alive with the mapping (the VFIO device, group and container behind it).
  public let owner: AnyObject?
  private let unmap: (@Sendable (UnsafeMutableRawPointer, Int) -> Void)?
  private let closeFile: (@Sendable (Int32) -> Void)?

  private init(
    base: UnsafeMutableRawPointer, size: Int, origin: String, fileDescriptor: Int32 = -1, owner: AnyObject? = nil
  ) {
    self.base = base
    self.size = size
    self.origin = origin
    self.fileDescriptor = fileDescriptor
    self.mappedRanges = nil
    self.owner = owner
    self.unmap = nil
    self.closeFile = nil
  }

  /// A mapping a backend made through ``SystemCalls``; released through them too.
  init(
    base: UnsafeMutableRawPointer, size: Int, origin: String, fileDescriptor: Int32, mappedRanges: [Range<Int>]?,
    owner: AnyObject?, calls: SystemCalls
  ) {
    self.base = base
    self.size = size
    self.origin = origin
    self.fileDescriptor = fileDescriptor
    self.mappedRanges = mappedRanges
    self.owner = owner
    self.unmap = calls.munmap
    self.closeFile = calls.close
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

  /// A shared-memory file (`/dev/shm/NAME`, or any file) mapped read-write and
  /// shared, so that every process mapping it sees the same bytes.
  ///
  /// - Parameter create: the size to give the file, creating it (mode 0660) or
  ///   resizing it; `nil` to map an existing file at its current size.
  /// - Parameter exclusive: take an exclusive `flock` before touching the file,
  ///   failing with `EWOULDBLOCK` if another process holds it. The kernel drops
  ///   the lock when the holder exits, however it exits.
  public static func sharedFile(_ path: String, create size: Int? = nil, exclusive: Bool = false) throws(RegionError)
    -> MappedRegion
  {
    let flags = O_RDWR | O_CLOEXEC | (size != nil ? O_CREAT : 0)
    let fd = open(path, flags, 0o660)
    guard fd >= 0 else {
      let e = errno
      let found: String
      switch e {
      case ENOENT: found = "no such file"
      case EACCES, EPERM: found = "permission denied"
      default: found = "open failed"
      }
      throw RegionError(attempted: "open \(path)", found: found, errno: e)
    }
    if exclusive && flock(fd, LOCK_EX | LOCK_NB) != 0 {
      let e = errno
      close(fd)
      throw RegionError(attempted: "lock \(path)", found: "another process holds it", errno: e)
    }
    var length: Int
    if let size {
      guard ftruncate(fd, off_t(size)) == 0 else {
        let e = errno
        close(fd)
        throw RegionError(attempted: "size \(path) to \(size) bytes", found: "ftruncate failed", errno: e)
      }
      length = size
    } else {
      var st = stat()
      guard fstat(fd, &st) == 0 else {
        let e = errno
        close(fd)
        throw RegionError(attempted: "stat \(path)", found: "fstat failed", errno: e)
      }
      length = Int(st.st_size)
      guard length > 0 else {
        close(fd)
        throw RegionError(attempted: "map \(path)", found: "the file is empty", errno: 0)
      }
    }
    let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let p, p != MAP_FAILED else {
      let e = errno
      close(fd)
      throw RegionError(attempted: "map \(length) bytes of \(path)", found: "mmap failed", errno: e)
    }
    return MappedRegion(base: p, size: length, origin: path, fileDescriptor: fd)
  }

  /// A new memfd of `size` bytes, sealed against shrinking and growing,
  /// mapped shared: the BAR a mediator makes for one host process and
  /// passes to it (its `fileDescriptor`). The seals keep the client from
  /// resizing it under the mediator (a shrunk file faults the mapper).
  public static func sealedMemory(name: String, size: Int) throws(RegionError) -> MappedRegion {
    let fd = vgpu_memfd_sealed(name, UInt64(size))
    guard fd >= 0 else {
      throw RegionError(
        attempted: "create a memfd of \(size) bytes", found: "memfd_create, ftruncate or F_ADD_SEALS failed",
        errno: -fd)
    }
    let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let p, p != MAP_FAILED else {
      let e = errno
      close(fd)
      throw RegionError(attempted: "map a memfd of \(size) bytes", found: "mmap failed", errno: e)
    }
    return MappedRegion(base: p, size: size, origin: "memfd \(name)", fileDescriptor: fd)
  }

  /// A BAR another process passed as a file descriptor (SCM_RIGHTS), mapped
  /// shared. Takes `fd` (closed on failure too). The sender is not trusted:
  /// the file must have exactly the `size` it said and be sealed against
  /// resizing, since touching a page past a shrunk file's end faults.
  /// `keeping` (the socket the fd came over) lives as long as the mapping.
  public static func passedDescriptor(_ fd: Int32, size: Int, origin: String, keeping: AnyObject?) throws(RegionError)
    -> MappedRegion
  {
    var st = stat()
    guard fstat(fd, &st) == 0 else {
      let e = errno
      close(fd)
      throw RegionError(attempted: "stat the BAR passed by \(origin)", found: "fstat failed", errno: e)
    }
    let seals = vgpu_memfd_seals(fd)
    let needed = vgpu_memfd_size_seals()
    guard Int(st.st_size) == size, seals >= 0, seals & needed == needed else {
      close(fd)
      throw RegionError(
        attempted: "map the BAR passed by \(origin)",
        found:
          "the file has \(st.st_size) bytes (announced \(size)) and seals 0x\(String(max(seals, 0), radix: 16)); it must be a memfd of the announced size sealed against resizing",
        errno: 0)
    }
    let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let p, p != MAP_FAILED else {
      let e = errno
      close(fd)
      throw RegionError(attempted: "map \(size) bytes passed by \(origin)", found: "mmap failed", errno: e)
    }
    return MappedRegion(base: p, size: size, origin: origin, fileDescriptor: fd, owner: keeping)
  }

  deinit {
    if let unmap { unmap(base, size) } else { munmap(base, size) }
    if fileDescriptor >= 0 {
      if let closeFile { closeFile(fileDescriptor) } else { close(fileDescriptor) }
    }
  }

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
