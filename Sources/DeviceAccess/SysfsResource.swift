#if canImport(Glibc)
  import Glibc
#endif

/// BARs mapped through sysfs `resourceN` files, for machines without an IOMMU
/// (Documentation/PCI/sysfs-pci.rst: "resourceN ... mmap-able"). The kernel
/// allows it to root only (CAP_SYS_ADMIN, drivers/pci/pci-sysfs.c
/// pci_mmap_resource), and refuses it under kernel lockdown. No DMA isolation:
/// the device can reach all of memory, which is why VFIO comes first.
public enum SysfsResource {
  /// Maps BAR `bar` of `function` read-write, shared (O_RDWR | O_SYNC and
  /// MAP_SHARED, as sysfs-pci.rst's example does: uncached, every store reaches the device).
  public static func map(_ function: PCIFunctionSysfs, bar: Int) throws(AccessError) -> MappedRegion {
    let host = function.host
    let file = "\(function.path)/resource\(bar)"
    let attempted = "map BAR \(bar) of \(function.address) through \(file)"
    guard function.exists else {
      throw AccessError(.absent, attempted: attempted, found: "there is no PCI device \(function.address)")
    }
    if let r = function.resource(bar) {
      if r.flags & PCIFunctionSysfs.resourceIO != 0 {
        throw AccessError(
          .notMappable, attempted: attempted, found: "BAR \(bar) is an I/O port BAR, which cannot be memory-mapped")
      }
      if r.end == 0 && r.start == 0 {
        throw AccessError(.notMappable, attempted: attempted, found: "the device has no BAR \(bar) (size 0)")
      }
    }
    let fd: Int32
    do { fd = try host.calls.open(host.resolve(file), O_RDWR | O_SYNC, 0) } catch {
      switch error {
      case .noEntry:
        throw AccessError(
          .missingInterface, attempted: attempted,
          found: "there is no \(file) (the kernel offers no mmap of this BAR; it may be unassigned or in I/O space)",
          errno: error)
      case .accessDenied, .notPermitted:
        let facts = (try? host.calls.stat(host.resolve(file))).map { " (\($0))" } ?? ""
        throw AccessError(
          .permissionDenied, attempted: attempted, found: "permission denied on \(file)\(facts)",
          remedy:
            "mapping through sysfs needs root; as a normal user bind the device to vfio-pci and install udev/70-vgpu.rules (group vgpu)",
          errno: error)
      default:
        throw AccessError(.failed, attempted: attempted, found: "open failed", errno: error)
      }
    }
    var size: Int
    do { size = Int(try host.calls.fstatSize(fd)) } catch {
      host.calls.close(fd)
      throw AccessError(.failed, attempted: attempted, found: "fstat failed", errno: error)
    }
    // A sysfs resource file's size is the BAR's; fall back on the resource table.
    if size <= 0, let r = function.resource(bar), r.end > r.start { size = Int(r.end - r.start + 1) }
    guard size > 0 else {
      host.calls.close(fd)
      throw AccessError(.notMappable, attempted: attempted, found: "\(file) has size 0")
    }
    ensureMemoryDecoding(function)
    let base: UnsafeMutableRawPointer
    do { base = try host.calls.mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) } catch {
      host.calls.close(fd)
      let found =
        switch error {
        case .notPermitted, .accessDenied:
          "the kernel refused the mapping (kernel lockdown, or iomem=strict with a driver claiming the region)"
        default: "mmap of \(size) bytes failed"
        }
      throw AccessError(
        error == .notPermitted ? .permissionDenied : .failed, attempted: attempted, found: found,
        remedy: error == .notPermitted ? "use vfio: (bind the device to vfio-pci) instead" : nil, errno: error)
    }
    return MappedRegion(
      base: base, size: size, origin: file, fileDescriptor: fd, mappedRanges: nil, owner: nil, calls: host.calls)
  }

  /// A device no driver enabled may have memory decoding off (PCI Local Bus
  /// 3.0 §6.2.2, Command register bit 1, Memory Space): its BARs then read
  /// as all ones. Writing 1 to sysfs `enable` makes the kernel turn it on
  /// (pci_enable_device). Best effort: the mapping's checks report a dead BAR.
  static func ensureMemoryDecoding(_ function: PCIFunctionSysfs) {
    let host = function.host
    guard function.driver == nil, let fd = try? host.calls.open(host.resolve("\(function.path)/config"), O_RDONLY, 0)
    else { return }
    defer { host.calls.close(fd) }
    var command: UInt16 = 0
    let n = withUnsafeMutableBytes(of: &command) { b in (try? host.calls.pread(fd, b, 4)) ?? 0 }
    guard n == 2, command & 0x2 == 0 else { return }
    try? host.writeText("\(function.path)/enable", "1")
  }
}

/// A device bound to `uio_pci_generic` (Documentation/driver-api/uio-howto.rst,
/// "Generic PCI UIO driver"): the driver enables the device and offers its
/// interrupt on `/dev/uioN`; the BARs are mapped through sysfs `resourceN`
/// (uio_pci_generic exposes no maps of its own), which needs root.
public enum UIOResource {
  public static let driver = "uio_pci_generic"

  /// Maps BAR `bar`; returns the region and the UIO node (`uio0`).
  public static func map(_ function: PCIFunctionSysfs, bar: Int) throws(AccessError) -> (
    region: MappedRegion, node: String
  ) {
    let attempted = "map BAR \(bar) of \(function.address) through UIO"
    guard function.exists else {
      throw AccessError(.absent, attempted: attempted, found: "there is no PCI device \(function.address)")
    }
    let driver = function.driver
    guard driver == Self.driver else {
      throw AccessError(
        .wrongDriver, attempted: attempted,
        found: driver.map { "\(function.address) is bound to \($0), not \(Self.driver)" }
          ?? "\(function.address) is bound to no driver, not \(Self.driver)")
    }
    guard let node = function.uioName else {
      throw AccessError(
        .missingInterface, attempted: attempted,
        found: "\(function.address) is bound to \(Self.driver) but has no uio node under \(function.path)/uio")
    }
    return (try SysfsResource.map(function, bar: bar), node)
  }
}
