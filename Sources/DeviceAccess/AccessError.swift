/// Why a PCI device's region could not be mapped: which step, what was found
/// (the facts read from sysfs, `/dev`, `/proc`), and what would fix it.
///
/// `kind` lets a caller choose among backends (try the next one on `.noIOMMU`,
/// stop on `.busy`); `found` and `remedy` are written for a person.
public struct AccessError: Error, Sendable, CustomStringConvertible {
  public enum Kind: Sendable, Equatable {
    /// No such PCI function.
    case absent
    /// Bound to a driver the backend cannot use.
    case wrongDriver
    /// No IOMMU group: the kernel runs without an IOMMU (or it is off).
    case noIOMMU
    /// Another device in the IOMMU group is bound to a host driver.
    case notViable
    /// A device node or sysfs file this user may not open.
    case permissionDenied
    /// Another process holds it (a VFIO group opens once).
    case busy
    /// The kernel module or interface is not there (`/dev/vfio/vfio`, `resourceN`).
    case missingInterface
    /// The region cannot be mapped (I/O port BAR, no mmap flag, no such BAR).
    case notMappable
    /// DMA mapping exceeded `RLIMIT_MEMLOCK`.
    case lockedMemoryLimit
    /// DMA mapping exceeded vfio_iommu_type1's `dma_entry_limit`.
    case dmaEntryLimit
    /// Any other failure of a system call.
    case failed
  }

  public var kind: Kind
  /// What was being done: `open /dev/vfio/7`.
  public var attempted: String
  public var found: String
  public var remedy: String?
  public var errno: Errno?

  public init(_ kind: Kind, attempted: String, found: String, remedy: String? = nil, errno: Errno? = nil) {
    self.kind = kind
    self.attempted = attempted
    self.found = found
    self.remedy = remedy
    self.errno = errno
  }

  public var description: String {
    var s = "could not \(attempted): \(found)"
    if let errno, !found.contains(errno.name) { s += " (\(errno))" }
    if let remedy { s += "; \(remedy)" }
    return s
  }
}
