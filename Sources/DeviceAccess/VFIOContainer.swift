import CSupport
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A VFIO type1 container, `/dev/vfio/vfio` (Documentation/driver-api/vfio.rst,
/// "VFIO Usage Example"): one IOMMU context that groups join. The order the
/// kernel requires: check the API version and the IOMMU extension, attach a
/// group (VFIO_GROUP_SET_CONTAINER), then VFIO_SET_IOMMU — MAP_DMA before
/// SET_IOMMU fails.
public final class VFIOContainer: VFIOOps, @unchecked Sendable {
  public static let path = "/dev/vfio/vfio"
  public let fd: Int32
  /// VFIO_TYPE1v2_IOMMU when offered, else VFIO_TYPE1_IOMMU.
  public let iommuType: Int32
  let host: HostEnvironment
  private let iommuSet = Atomic<Bool>(false)
  public let iovaSpace = Mutex(IOVAAllocator())

  public var description: String {
    "\(iommuType == VGPU_VFIO_TYPE1v2_IOMMU ? "type1v2" : "type1") container \(Self.path)"
  }

  public init(host: HostEnvironment = .live) throws(AccessError) {
    self.host = host
    let attempted = "open the VFIO container \(Self.path)"
    do { fd = try host.calls.open(host.resolve(Self.path), O_RDWR, 0) } catch {
      switch error {
      case .noEntry, .noDevice:
        throw AccessError(
          .missingInterface, attempted: attempted, found: "there is no \(Self.path): the vfio module is not loaded",
          remedy: "sudo modprobe vfio-pci", errno: error)
      case .accessDenied, .notPermitted:
        throw VFIODiagnosis.permissionDenied(Self.path, attempted: attempted, host: host, errno: error)
      default:
        throw AccessError(.failed, attempted: attempted, found: "open failed", errno: error)
      }
    }
    // vfio.h VFIO_GET_API_VERSION: "Return: VFIO_API_VERSION"; anything else is another ABI.
    let version = (try? host.calls.ioctl(fd, VGPU_VFIO_GET_API_VERSION, 0)) ?? -1
    guard version == VGPU_VFIO_API_VERSION else {
      host.calls.close(fd)
      throw AccessError(
        .missingInterface, attempted: attempted,
        found: "VFIO API version \(version), this library speaks \(VGPU_VFIO_API_VERSION)")
    }
    // VFIO_CHECK_EXTENSION returns > 0 when the IOMMU type is supported.
    let fd = self.fd
    func supports(_ type: Int32) -> Bool {
      ((try? host.calls.ioctl(fd, VGPU_VFIO_CHECK_EXTENSION, UInt(type))) ?? 0) > 0
    }
    if supports(VGPU_VFIO_TYPE1v2_IOMMU) {
      iommuType = VGPU_VFIO_TYPE1v2_IOMMU
    } else if supports(VGPU_VFIO_TYPE1_IOMMU) {
      iommuType = VGPU_VFIO_TYPE1_IOMMU
    } else {
      host.calls.close(fd)
      throw AccessError(
        .missingInterface, attempted: attempted,
        found: "the container offers no type1 IOMMU (vfio_iommu_type1 not loaded, or no IOMMU)",
        remedy: "sudo modprobe vfio_iommu_type1; boot with intel_iommu=on (amd_iommu=on)")
    }
  }

  deinit { host.calls.close(fd) }

  /// VFIO_SET_IOMMU; only after a group was attached (vfio.rst), once.
  public func setIOMMU() throws(AccessError) {
    guard !iommuSet.load(ordering: .acquiring) else { return }
    do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_SET_IOMMU, UInt(iommuType)) } catch {
      throw AccessError(
        .failed, attempted: "set the container's IOMMU to \(description)",
        found: "VFIO_SET_IOMMU failed (is a group attached?)", errno: error)
    }
    iommuSet.store(true, ordering: .releasing)
  }

  /// VFIO_IOMMU_MAP_DMA (vfio.h "struct vfio_iommu_type1_dma_map"). The kernel
  /// pins the pages and counts them against RLIMIT_MEMLOCK (ENOMEM past it);
  /// each mapping is one entry of at most `dma_entry_limit` (ENOSPC past it).
  public func mapDMA(iova: UInt64, size: Int, address: UnsafeMutableRawPointer, readable: Bool, writable: Bool)
    throws(AccessError)
  {
    let attempted = "map \(size) bytes for DMA at IOVA 0x\(String(iova, radix: 16))"
    guard iommuSet.load(ordering: .acquiring) else {
      throw AccessError(
        .failed, attempted: attempted, found: "the container's IOMMU is not set yet (MAP_DMA before SET_IOMMU fails)")
    }
    var map = vfio_iommu_type1_dma_map()
    map.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
    map.flags = (readable ? VGPU_VFIO_DMA_MAP_FLAG_READ : 0) | (writable ? VGPU_VFIO_DMA_MAP_FLAG_WRITE : 0)
    map.vaddr = UInt64(UInt(bitPattern: address))
    map.iova = iova
    map.size = UInt64(size)
    let result = withUnsafeMutablePointer(to: &map) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_IOMMU_MAP_DMA, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    guard let error = result else { return }
    switch error {
    case .noMemory:
      let limit = host.calls.getrlimit(VGPU_RLIMIT_MEMLOCK)
      func text(_ v: UInt64?) -> String { v.map { "\($0 / 1024) KiB" } ?? "unlimited" }
      throw AccessError(
        .lockedMemoryLimit, attempted: attempted,
        found:
          "the pinned pages exceed RLIMIT_MEMLOCK (soft \(text(limit.soft)), hard \(text(limit.hard))); VFIO pins every DMA page",
        remedy:
          "raise the limit: ulimit -l unlimited in the shell (hard limit: /etc/security/limits.conf), or LimitMEMLOCK=infinity in the service's systemd unit",
        errno: error)
    case .noSpace:
      let limit =
        host.readText("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit") ?? "65535 (the default)"
      throw AccessError(
        .dmaEntryLimit, attempted: attempted,
        found: "the container holds the most DMA mappings vfio_iommu_type1 allows (dma_entry_limit = \(limit))",
        remedy:
          "map fewer, larger buffers, or raise it: modprobe vfio_iommu_type1 dma_entry_limit=N (options vfio_iommu_type1 dma_entry_limit=N in /etc/modprobe.d)",
        errno: error)
    default:
      throw AccessError(.failed, attempted: attempted, found: "VFIO_IOMMU_MAP_DMA failed", errno: error)
    }
  }

  /// VFIO_IOMMU_UNMAP_DMA (vfio.h "struct vfio_iommu_type1_dma_unmap").
  public func unmapDMA(iova: UInt64, size: Int) throws(AccessError) {
    var unmap = vfio_iommu_type1_dma_unmap()
    unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
    unmap.iova = iova
    unmap.size = UInt64(size)
    let result = withUnsafeMutablePointer(to: &unmap) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_IOMMU_UNMAP_DMA, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    if let error = result {
      throw AccessError(
        .failed, attempted: "unmap \(size) bytes of DMA at IOVA 0x\(String(iova, radix: 16))",
        found: "VFIO_IOMMU_UNMAP_DMA failed", errno: error)
    }
  }
}
