import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// A device opened through VFIO: its regions (BARs, config space), reset,
/// interrupts wired to eventfds, and DMA through its ``VFIOOps``
/// (Documentation/driver-api/vfio.rst, "VFIO Usage Example"; vfio.h "IOCTLs
/// for DEVICE file descriptors").
///
/// Interrupt set-up (``enableInterrupts(index:count:)``) is not thread-safe:
/// do it from one thread, at open. Opened with ``open(_:)`` (type1: container, group, device). Everything
/// it hands out (mapped BARs, DMA buffers) keeps it — and so the group and
/// container — alive.
public final class VFIODevice: @unchecked Sendable {
  public let address: String
  public let fd: Int32
  /// vfio.h "struct vfio_device_info": VFIO_DEVICE_FLAGS_*, region and IRQ counts.
  public let flags: UInt32
  public let regionCount: UInt32
  public let irqCount: UInt32
  /// The IOMMU side: a type1 container today.
  public let ops: any VFIOOps
  /// The group the device came from, kept open while the device is.
  public let group: VFIOGroup?
  let host: HostEnvironment
  private var interruptFDs: [UInt32: [Int32]] = [:]

  public var canReset: Bool { flags & VGPU_VFIO_DEVICE_FLAGS_RESET != 0 }

  /// Wraps a device fd (from a group, or later from a VFIO cdev bound to iommufd).
  public init(address: String, fd: Int32, ops: any VFIOOps, group: VFIOGroup?, host: HostEnvironment = .live)
    throws(AccessError)
  {
    var info = vfio_device_info()
    info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
    let result = withUnsafeMutablePointer(to: &info) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_DEVICE_GET_INFO, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    if let error = result {
      host.calls.close(fd)
      throw AccessError(
        .failed, attempted: "read the VFIO device info of \(address)", found: "VFIO_DEVICE_GET_INFO failed",
        errno: error)
    }
    self.address = address
    self.fd = fd
    self.flags = info.flags
    self.regionCount = info.num_regions
    self.irqCount = info.num_irqs
    self.ops = ops
    self.group = group
    self.host = host
  }

  deinit {
    for index in interruptFDs.keys { try? disableInterrupts(index: index) }
    host.calls.close(fd)
  }

  /// The type1 path: container, group (checked viable), SET_CONTAINER,
  /// SET_IOMMU, then the device fd — in vfio.rst's order. Diagnoses what
  /// stands in the way from sysfs (no IOMMU group, another driver).
  public static func open(_ function: PCIFunctionSysfs) throws(AccessError) -> VFIODevice {
    let host = function.host
    let attempted = "open \(function.address) through VFIO"
    guard function.exists else {
      throw AccessError(.absent, attempted: attempted, found: "there is no PCI device \(function.address)")
    }
    guard let groupNumber = function.iommuGroup else {
      throw AccessError(
        .noIOMMU, attempted: attempted,
        found:
          "\(function.path) has no iommu_group link: the kernel runs without an IOMMU (or with it disabled), so VFIO cannot isolate the device",
        remedy:
          "boot with intel_iommu=on (amd_iommu=on on AMD; in QEMU add -device intel-iommu), or map the BAR without VFIO: uio: (uio_pci_generic) or sysfs: (root)"
      )
    }
    let driver = function.driver
    guard driver == "vfio-pci" else {
      throw AccessError(
        .wrongDriver, attempted: attempted,
        found: "\(function.address) is bound to \(driver ?? "no driver"), not vfio-pci",
        remedy: VFIODiagnosis.bindCommands(function.address, to: "vfio-pci", from: driver))
    }
    let container = try VFIOContainer(host: host)
    let group = try VFIOGroup(number: groupNumber, host: host)
    try group.requireViable()
    try group.attach(to: container)
    try container.setIOMMU()
    let fd = try group.deviceFD(function.address)
    return try VFIODevice(address: function.address, fd: fd, ops: container, group: group, host: host)
  }

  // MARK: Regions

  /// VFIO_DEVICE_GET_REGION_INFO with its capability chain: asked once with
  /// the header's size; when the kernel answers with a larger argsz (caps
  /// follow), asked again with a buffer that large.
  public func regionInfo(_ index: UInt32) throws(AccessError) -> VFIORegionInfo {
    var size = VFIORegionInfo.headerSize
    for _ in 0..<2 {
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
      defer { buffer.deallocate() }
      buffer.initializeMemory(as: UInt8.self, repeating: 0)
      var header = vfio_region_info()
      header.argsz = UInt32(size)
      header.index = index
      withUnsafeBytes(of: header) { buffer.copyMemory(from: $0) }
      do {
        _ = try host.calls.ioctl(fd, VGPU_VFIO_DEVICE_GET_REGION_INFO, UInt(bitPattern: buffer.baseAddress))
      } catch {
        throw AccessError(
          .failed, attempted: "read region \(index) of \(address)", found: "VFIO_DEVICE_GET_REGION_INFO failed",
          errno: error)
      }
      let wanted = Int(buffer.loadUnaligned(as: UInt32.self))
      if wanted > size && size == VFIORegionInfo.headerSize && wanted <= 1 << 20 {
        size = wanted
        continue
      }
      guard let info = VFIORegionInfo.decode(UnsafeRawBufferPointer(buffer)) else { break }
      return info
    }
    throw AccessError(
      .failed, attempted: "read region \(index) of \(address)", found: "the kernel's answer is malformed")
  }

  /// Maps BAR `bar` (region index = BAR number for vfio-pci). With a sparse
  /// mmap capability, reserves the whole BAR as inaccessible memory and maps
  /// only the areas over it (MAP_FIXED), so the MSI-X table is never mapped
  /// and offsets stay BAR offsets; ``MappedRegion/mappedRanges`` names them.
  public func mapBAR(_ bar: Int) throws(AccessError) -> MappedRegion {
    let attempted = "map BAR \(bar) of \(address) through VFIO"
    guard bar >= 0 && bar < 6 else { throw AccessError(.notMappable, attempted: attempted, found: "no BAR \(bar)") }
    let info = try regionInfo(VGPU_VFIO_PCI_BAR0_REGION_INDEX + UInt32(bar))
    guard info.size > 0 else {
      throw AccessError(.notMappable, attempted: attempted, found: "the device has no BAR \(bar) (size 0)")
    }
    guard info.mappable else {
      throw AccessError(
        .notMappable, attempted: attempted,
        found: "VFIO does not allow mmap of BAR \(bar) (flags 0x\(String(info.flags, radix: 16)); an I/O port BAR?)")
    }
    let size = Int(info.size)
    let protection = (info.readable ? PROT_READ : 0) | (info.writable ? PROT_WRITE : 0)
    guard let areas = info.sparseAreas else {
      let base: UnsafeMutableRawPointer
      do { base = try host.calls.mmap(nil, size, protection, MAP_SHARED, fd, Int64(info.offset)) } catch {
        throw AccessError(.failed, attempted: attempted, found: "mmap of \(size) bytes failed", errno: error)
      }
      return MappedRegion(
        base: base, size: size, origin: "vfio:\(address) BAR \(bar)", fileDescriptor: -1, mappedRanges: nil,
        owner: self, calls: host.calls)
    }
    guard !areas.isEmpty else {
      throw AccessError(
        .notMappable, attempted: attempted,
        found: "its sparse-mmap capability allows no part of BAR \(bar) to be mapped")
    }
    let reservation: UnsafeMutableRawPointer
    do {
      reservation = try host.calls.mmap(nil, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    } catch { throw AccessError(.failed, attempted: attempted, found: "reserving \(size) bytes failed", errno: error) }
    for area in areas {
      do {
        _ = try host.calls.mmap(
          reservation + Int(area.lowerBound), Int(area.count), protection, MAP_SHARED | MAP_FIXED, fd,
          Int64(info.offset + area.lowerBound))
      } catch {
        host.calls.munmap(reservation, size)
        throw AccessError(
          .failed, attempted: attempted,
          found: "mmap of the area 0x\(String(area.lowerBound, radix: 16))+0x\(String(area.count, radix: 16)) failed",
          errno: error)
      }
    }
    return MappedRegion(
      base: reservation, size: size, origin: "vfio:\(address) BAR \(bar)", fileDescriptor: -1,
      mappedRanges: areas.map { Int($0.lowerBound)..<Int($0.upperBound) }, owner: self, calls: host.calls)
  }

  // MARK: Config space

  /// Reads config space through the config region (pread at its offset;
  /// vfio-pci virtualises some fields, e.g. BARs and the MSI-X capability).
  public func readConfig(_ offset: Int, _ buffer: UnsafeMutableRawBufferPointer) throws(AccessError) {
    let info = try regionInfo(VGPU_VFIO_PCI_CONFIG_REGION_INDEX)
    do throws(Errno) {
      let n = try host.calls.pread(fd, buffer, Int64(info.offset) + Int64(offset))
      guard n == buffer.count else { throw Errno.invalid }
    } catch {
      throw AccessError(
        .failed, attempted: "read config space of \(address) at \(offset)", found: "pread failed", errno: error)
    }
  }

  public func writeConfig(_ offset: Int, _ buffer: UnsafeRawBufferPointer) throws(AccessError) {
    let info = try regionInfo(VGPU_VFIO_PCI_CONFIG_REGION_INDEX)
    do throws(Errno) {
      let n = try host.calls.pwrite(fd, buffer, Int64(info.offset) + Int64(offset))
      guard n == buffer.count else { throw Errno.invalid }
    } catch {
      throw AccessError(
        .failed, attempted: "write config space of \(address) at \(offset)", found: "pwrite failed", errno: error)
    }
  }

  /// Sets Command register (offset 4) bits 1 (Memory Space) and 2 (Bus Master)
  /// (PCI Local Bus 3.0 §6.2.2): without Bus Master the device's DMA is
  /// blocked. Returns the register as written.
  @discardableResult
  public func enableBusMaster() throws(AccessError) -> UInt16 {
    var command: UInt16 = 0
    try withUnsafeMutableBytes(of: &command) { (b) throws(AccessError) in try readConfig(4, b) }
    command = UInt16(littleEndian: command) | 0x6
    var wire = command.littleEndian
    try withUnsafeBytes(of: &wire) { (b) throws(AccessError) in try writeConfig(4, b) }
    return command
  }

  /// VFIO_DEVICE_RESET, when VFIO_DEVICE_FLAGS_RESET says the device has one
  /// (FLR, PM or bus reset); returns false when it has none.
  @discardableResult
  public func reset() throws(AccessError) -> Bool {
    guard canReset else { return false }
    do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_DEVICE_RESET, 0) } catch {
      throw AccessError(.failed, attempted: "reset \(address)", found: "VFIO_DEVICE_RESET failed", errno: error)
    }
    return true
  }

  // MARK: Interrupts

  /// How many vectors interrupt `index` has (VFIO_DEVICE_GET_IRQ_INFO).
  public func interruptCount(index: UInt32) throws(AccessError) -> Int {
    var info = vfio_irq_info()
    info.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
    info.index = index
    let result = withUnsafeMutablePointer(to: &info) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_DEVICE_GET_IRQ_INFO, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    if let error = result {
      throw AccessError(
        .failed, attempted: "read interrupt \(index) of \(address)", found: "VFIO_DEVICE_GET_IRQ_INFO failed",
        errno: error)
    }
    return Int(info.count)
  }

  /// Wires `count` vectors of MSI-X (VFIO_PCI_MSIX_IRQ_INDEX) or MSI to new
  /// eventfds (eventfd(2), non-blocking): the kernel signals vector i's eventfd
  /// when the device raises it. VFIO_DEVICE_SET_IRQS with DATA_EVENTFD |
  /// ACTION_TRIGGER; `struct vfio_irq_set` is followed by `count` s32 fds.
  public func enableInterrupts(index: UInt32 = VGPU_VFIO_PCI_MSIX_IRQ_INDEX, count: Int = 1) throws(AccessError)
    -> [Int32]
  {
    let kind =
      index == VGPU_VFIO_PCI_MSIX_IRQ_INDEX ? "MSI-X" : index == VGPU_VFIO_PCI_MSI_IRQ_INDEX ? "MSI" : "IRQ \(index)"
    let attempted = "wire \(count) \(kind) vector\(count == 1 ? "" : "s") of \(address) to eventfds"
    let available = try interruptCount(index: index)
    guard count > 0, count <= available else {
      throw AccessError(.notMappable, attempted: attempted, found: "the device has \(available) \(kind) vectors")
    }
    var fds: [Int32] = []
    for _ in 0..<count {
      do { fds.append(try host.calls.eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))) } catch {
        for fd in fds { host.calls.close(fd) }
        throw AccessError(.failed, attempted: attempted, found: "eventfd failed", errno: error)
      }
    }
    do throws(Errno) { try setInterrupts(index: index, eventfds: fds) } catch {
      for fd in fds { host.calls.close(fd) }
      throw AccessError(.failed, attempted: attempted, found: "VFIO_DEVICE_SET_IRQS failed", errno: error)
    }
    interruptFDs[index] = fds
    return fds
  }

  /// Tears down the vectors of `index` (DATA_NONE | ACTION_TRIGGER, count 0) and closes their eventfds.
  public func disableInterrupts(index: UInt32 = VGPU_VFIO_PCI_MSIX_IRQ_INDEX) throws(AccessError) {
    defer {
      for fd in interruptFDs[index] ?? [] { host.calls.close(fd) }
      interruptFDs[index] = nil
    }
    do throws(Errno) { try setInterrupts(index: index, eventfds: nil) } catch {
      throw AccessError(
        .failed, attempted: "disable interrupt \(index) of \(address)", found: "VFIO_DEVICE_SET_IRQS failed",
        errno: error)
    }
  }

  /// Enables `count` vectors of `index` with no eventfd behind any of them
  /// yet: each process then wires the vectors it waits on with
  /// ``setInterruptTrigger(deviceFD:index:vector:eventfd:calls:)`` (an fd of
  /// -1 in VFIO_DEVICE_SET_IRQS enables a vector without a trigger).
  public func enableInterruptsUnwired(index: UInt32 = VGPU_VFIO_PCI_MSIX_IRQ_INDEX, count: Int) throws(AccessError) {
    let attempted = "enable \(count) interrupt vectors (index \(index)) of \(address)"
    let available = try interruptCount(index: index)
    guard count > 0, count <= available else {
      throw AccessError(.notMappable, attempted: attempted, found: "the device has \(available) vectors there")
    }
    do throws(Errno) {
      try Self.setInterrupts(fd, host.calls, index: index, start: 0, eventfds: Array(repeating: -1, count: count))
    } catch {
      throw AccessError(.failed, attempted: attempted, found: "VFIO_DEVICE_SET_IRQS failed", errno: error)
    }
    interruptFDs[index] = []
  }

  /// Points one enabled vector at `eventfd` (-1: at nothing). Works on any
  /// fd of the device, so a process that got it from the broker wires the
  /// vectors of its own queue pairs; vfio_msi_set_block replaces only that one.
  public static func setInterruptTrigger(
    deviceFD: Int32, index: UInt32 = VGPU_VFIO_PCI_MSIX_IRQ_INDEX, vector: Int, eventfd: Int32,
    calls: SystemCalls = .live
  ) throws(Errno) {
    try setInterrupts(deviceFD, calls, index: index, start: UInt32(vector), eventfds: [eventfd])
  }

  private func setInterrupts(index: UInt32, eventfds: [Int32]?) throws(Errno) {
    try Self.setInterrupts(fd, host.calls, index: index, start: 0, eventfds: eventfds)
  }

  private static func setInterrupts(_ fd: Int32, _ calls: SystemCalls, index: UInt32, start: UInt32, eventfds: [Int32]?)
    throws(Errno)
  {
    let header = Int(VGPU_VFIO_IRQ_SET_HEADER_SIZE)
    let size = header + (eventfds?.count ?? 0) * 4
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
    defer { buffer.deallocate() }
    var set = vfio_irq_set()
    set.argsz = UInt32(size)
    set.flags =
      (eventfds == nil ? VGPU_VFIO_IRQ_SET_DATA_NONE : VGPU_VFIO_IRQ_SET_DATA_EVENTFD)
      | VGPU_VFIO_IRQ_SET_ACTION_TRIGGER
    set.index = index
    set.start = start
    set.count = UInt32(eventfds?.count ?? 0)
    withUnsafeBytes(of: set) { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(header))) }
    for (i, fd) in (eventfds ?? []).enumerated() {
      buffer.storeBytes(of: fd, toByteOffset: header + 4 * i, as: Int32.self)
    }
    _ = try calls.ioctl(fd, VGPU_VFIO_DEVICE_SET_IRQS, UInt(bitPattern: buffer.baseAddress))
  }
}
