import CSupport
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// The IOMMU side of VFIO, apart from how the device was opened — the shape
/// of rust-vmm's `VfioOps`. Type1 containers (`/dev/vfio/vfio`, ``VFIOContainer``)
/// implement it today; an iommufd / VFIO-cdev path (`/dev/iommu` with
/// IOMMU_IOAS_MAP, devices from `/dev/vfio/devices/vfioN`, kernel ≥ 6.6)
/// can implement it later without changing ``VFIODevice``.
public protocol VFIOOps: AnyObject, Sendable {
  /// `type1v2 container /dev/vfio/vfio`, for messages.
  var description: String { get }
  /// Makes `[address, address + size)` of this process reachable by the device at `iova`.
  func mapDMA(iova: UInt64, size: Int, address: UnsafeMutableRawPointer, readable: Bool, writable: Bool)
    throws(AccessError)
  func unmapDMA(iova: UInt64, size: Int) throws(AccessError)
  /// Hands out and takes back IOVA ranges for ``mapDMA``.
  var iovaSpace: Mutex<IOVAAllocator> { get }
}

/// A buffer the device reaches by DMA: page-aligned memory of this process,
/// mapped in the IOMMU at `iova`. Unmapped (IOMMU, then memory) when released.
public final class DMABuffer: @unchecked Sendable {
  public let memory: MappedRegion
  /// The address the device uses.
  public let iova: UInt64
  public var size: Int { memory.size }
  let ops: any VFIOOps

  init(memory: MappedRegion, iova: UInt64, ops: any VFIOOps) {
    self.memory = memory
    self.iova = iova
    self.ops = ops
  }

  deinit {
    try? ops.unmapDMA(iova: iova, size: memory.size)
    ops.iovaSpace.withLock { $0.release(iova, size: UInt64(memory.size)) }
  }
}

extension VFIOOps {
  /// Allocates `size` bytes (rounded up to pages) of shared anonymous memory,
  /// and maps them for DMA at a fresh IOVA, readable and writable by the device.
  public func allocateDMABuffer(size: Int) throws(AccessError) -> DMABuffer {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let rounded = (size + page - 1) / page * page
    let memory: MappedRegion
    do throws(RegionError) { memory = try MappedRegion.anonymous(size: rounded) } catch {
      throw AccessError(.failed, attempted: "allocate a \(rounded)-byte DMA buffer", found: error.description)
    }
    let iova = try mapForDMA(memory.base, size: rounded)
    return DMABuffer(memory: memory, iova: iova, ops: self)
  }

  /// Maps page-aligned memory the caller owns; returns its IOVA. The caller
  /// unmaps it with ``unmapForDMA(iova:size:)`` before freeing the memory.
  public func mapForDMA(_ address: UnsafeMutableRawPointer, size: Int) throws(AccessError) -> UInt64 {
    let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
    let attempted = "map \(size) bytes at \(address) for DMA"
    guard UInt(bitPattern: address) % page == 0, UInt(size) % page == 0, size > 0 else {
      throw AccessError(
        .failed, attempted: attempted,
        found: "DMA mappings must be whole pages (\(page) bytes), page-aligned", errno: .invalid)
    }
    guard let iova = iovaSpace.withLock({ $0.allocate(UInt64(size)) }) else {
      throw AccessError(.failed, attempted: attempted, found: "the IOVA space is exhausted")
    }
    do throws(AccessError) {
      try mapDMA(iova: iova, size: size, address: address, readable: true, writable: true)
    } catch {
      iovaSpace.withLock { $0.release(iova, size: UInt64(size)) }
      throw error
    }
    return iova
  }

  public func unmapForDMA(iova: UInt64, size: Int) throws(AccessError) {
    try unmapDMA(iova: iova, size: size)
    iovaSpace.withLock { $0.release(iova, size: UInt64(size)) }
  }
}

/// First-fit allocation of IOVA ranges, page-granular. It starts at 4 GiB so
/// that no mapping overlaps x86's MSI window (0xfee00000, which the IOMMU
/// reserves) or low memory that some IOMMUs treat specially.
public struct IOVAAllocator: Sendable {
  public static let pageSize: UInt64 = 4096
  /// Free ranges, sorted and disjoint.
  public private(set) var free: [Range<UInt64>]

  public init(range: Range<UInt64> = (1 << 32)..<(1 << 47)) { free = [range] }

  /// A page-aligned range of at least `size` bytes; `nil` when none is left.
  public mutating func allocate(_ size: UInt64) -> UInt64? {
    let need = (size + Self.pageSize - 1) & ~(Self.pageSize - 1)
    guard need > 0 else { return nil }
    for (i, r) in free.enumerated() where r.count >= need {
      let start = r.lowerBound
      if r.count == need { free.remove(at: i) } else { free[i] = (start + need)..<r.upperBound }
      return start
    }
    return nil
  }

  /// Gives a range back, merging it with its neighbours.
  public mutating func release(_ start: UInt64, size: UInt64) {
    let need = (size + Self.pageSize - 1) & ~(Self.pageSize - 1)
    var range = start..<(start + need)
    let i = free.firstIndex { $0.lowerBound >= range.upperBound } ?? free.count
    var at = i
    if at < free.count && free[at].lowerBound == range.upperBound {
      range = range.lowerBound..<free[at].upperBound
      free.remove(at: at)
    }
    if at > 0 && free[at - 1].upperBound == range.lowerBound {
      range = free[at - 1].lowerBound..<range.upperBound
      free.remove(at: at - 1)
      at -= 1
    }
    free.insert(range, at: at)
  }
}
