#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Why reserving or using device memory failed, with the facts a person needs.
public struct DeviceMemoryError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The `errno` the system call left (0 when the request was refused before any call).
  public var errno: Int32
  /// The number of bytes that was asked for.
  public var size: UInt64
  /// What was attempted, what failed and what to do about it.
  public var description: String

  public init(errno: Int32, size: UInt64, description: String) {
    self.errno = errno
    self.size = size
    self.description = description
  }
}

/// The reference device's memory: one reservation of virtual address space that costs RAM
/// only for the pages that are actually touched.
///
/// An H100-like device advertises 80 GiB; reserving that with `MAP_NORESERVE` is free until
/// pages are written, so the reference device can report realistic sizes on a small machine.
/// Offsets into this region are what the allocator hands out as device addresses.
///
/// `@unchecked Sendable`: the class only holds the immutable base pointer and size; the bytes
/// behind it are shared memory whose access discipline (which command may touch which range) is
/// the device loop's business, exactly as with a real GPU's memory.
public final class DeviceMemory: @unchecked Sendable {
  /// First byte of the reservation (page-aligned).
  public let base: UnsafeMutableRawPointer
  /// Size of the reservation in bytes.
  public let size: UInt64
  /// The system's page size; `discard` works in whole pages of this size.
  public let pageSize: UInt64

  /// Reserves `size` bytes of zero-filled, lazily backed memory.
  ///
  /// Uses `mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`: no swap is reserved and no page
  /// is allocated until touched (mmap(2)). With `vm.overcommit_memory = 2` the kernel ignores
  /// `MAP_NORESERVE` and large reservations fail; the error says so.
  public init(size: UInt64) throws(DeviceMemoryError) {
    guard size > 0, size <= UInt64(Int.max) else {
      throw DeviceMemoryError(
        errno: 0, size: size,
        description:
          "Reserving \(size) bytes of device memory was refused before calling mmap: the size must be between 1 and \(Int.max) bytes. Choose a size in that range."
      )
    }
    let page = sysconf(Int32(_SC_PAGESIZE))
    self.pageSize = page > 0 ? UInt64(page) : 4096
    let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    // Transparent huge pages where the kernel offers them on request
    // (transparent_hugepage=madvise, Debian's default): copies of hundreds of
    // MiB then take 2 MiB faults and TLB entries instead of 4 KiB ones
    // (vgpu-bench: H2D 1 GiB 84% -> 92% of memcpy). Untouched memory still
    // costs nothing; touched memory is rounded up to 2 MiB.
    if let p, p != MAP_FAILED { _ = madvise(p, Int(size), MADV_HUGEPAGE) }
    guard let p, p != MAP_FAILED else {
      let e = errno
      throw DeviceMemoryError(
        errno: e, size: size,
        description:
          "Reserving \(size) bytes (\(Self.gibibytes(size)) GiB) of device memory with mmap(MAP_NORESERVE) failed: \(Self.errorText(e)) (errno \(e)). Lower the device memory size, or check /proc/sys/vm/overcommit_memory (2 forbids overcommit) and the address-space limit (ulimit -v)."
      )
    }
    self.base = p
    self.size = size
  }

  deinit {
    munmap(base, Int(size))
  }

  /// Gives the whole pages inside `[offset, offset + length)` back to the operating system.
  ///
  /// Called when device memory is freed, so freed memory stops costing RAM. Afterwards those
  /// pages read as zero if touched again (`MADV_DONTNEED` on a private anonymous mapping,
  /// madvise(2)). Partial pages at either end are left alone because they may share a page
  /// with a neighbouring live allocation. Parts of the range outside the reservation are
  /// ignored, so a bad range can never discard memory that is not ours.
  public func discard(offset: UInt64, length: UInt64) {
    guard offset < size, length > 0 else { return }
    let end = min(size, length > size - offset ? size : offset + length)
    // Round the start up and the end down to page boundaries: only whole pages are discarded.
    let first = (offset + pageSize - 1) / pageSize * pageSize
    let last = end == size ? end : end / pageSize * pageSize
    guard first < last else { return }
    // madvise only fails for invalid arguments, which the clamping above excludes.
    _ = madvise(base + Int(first), Int(last - first), MADV_DONTNEED)
  }

  private static func gibibytes(_ bytes: UInt64) -> String {
    let tenths = bytes / (1 << 30) * 10 + (bytes % (1 << 30)) * 10 / (1 << 30)
    return "\(tenths / 10).\(tenths % 10)"
  }

  private static func errorText(_ e: Int32) -> String {
    guard let s = strerror(e) else { return "unknown error" }
    return String(cString: s)
  }
}
