import CLibPCI

#if canImport(Glibc)
  import Glibc
#endif

/// The PCI functions of this machine, as libpci enumerates them.
///
/// libpci reads sysfs on Linux (its `linux-sysfs` method), the same source
/// `lspci` uses, so both see the same devices, names and config bytes.
public final class PCIBus {
  private let access: UnsafeMutablePointer<pci_access>

  /// Where Linux lists PCI functions; checked first because libpci exits the
  /// process, with a terse message, when it finds no access method.
  public static let sysfsDevices = "/sys/bus/pci/devices"

  public init() throws(PCIError) {
    guard Glibc.access(Self.sysfsDevices, F_OK) == 0 else {
      throw PCIError.noPCISubsystem(path: Self.sysfsDevices)
    }
    guard let a = pci_alloc() else { throw PCIError.noPCISubsystem(path: Self.sysfsDevices) }
    access = a
    pci_init(access)
    pci_scan_bus(access)
  }

  deinit { pci_cleanup(access) }

  /// Every function, in lspci's order (domain, bus, device, function).
  public func devices() -> [PCIDevice] {
    var result: [PCIDevice] = []
    var p = access.pointee.devices
    while let dev = p {
      result.append(describe(dev))
      p = dev.pointee.next
    }
    return result.sorted { $0.address < $1.address }
  }

  /// The function at `address`, or an error that lists the addresses that exist.
  public func device(at address: PCIAddress) throws(PCIError) -> PCIDevice {
    let all = devices()
    guard let d = all.first(where: { $0.address == address }) else {
      throw PCIError.noSuchDevice(address.description, present: all.map(\.address))
    }
    return d
  }

  /// The functions with this vendor:device ID, like `lspci -d`.
  public func devices(matching id: PCIDeviceID) -> [PCIDevice] {
    devices().filter { $0.id == id }
  }

  /// The functions a user's words name: an address (`0000:00:05.0`, `00:05.0`)
  /// or a vendor:device ID (`1af4:1110`). Bad words throw `.invalidSelector`.
  public func devices(selectedBy text: String) throws(PCIError) -> [PCIDevice] {
    if let id = PCIDeviceID(parsing: text), !text.contains(".") {
      let found = devices(matching: id)
      guard !found.isEmpty else { throw PCIError.noSuchDevice(text, present: devices().map(\.address)) }
      return found
    }
    let address: PCIAddress
    do { address = try PCIAddress(parsing: text) } catch {
      throw PCIError.invalidSelector(error.description + ", or a vendor:device ID such as 1af4:1110")
    }
    return [try device(at: address)]
  }

  private func describe(_ dev: UnsafeMutablePointer<pci_dev>) -> PCIDevice {
    let fill =
      PCI_FILL_IDENT | PCI_FILL_CLASS | PCI_FILL_CLASS_EXT | PCI_FILL_SUBSYS | PCI_FILL_IRQ | PCI_FILL_BASES
      | PCI_FILL_SIZES | PCI_FILL_IO_FLAGS | PCI_FILL_NUMA_NODE | PCI_FILL_IOMMU_GROUP | PCI_FILL_DRIVER
    let known = UInt32(bitPattern: pci_fill_info(dev, Int32(fill)))
    let d = dev.pointee
    let address = PCIAddress(
      domain: UInt32(bitPattern: d.domain), bus: d.bus, device: d.dev, function: d.func)

    let config = readConfig(dev)
    var resources: [PCIResource]? = nil
    if known & UInt32(PCI_FILL_BASES | PCI_FILL_SIZES | PCI_FILL_IO_FLAGS) != 0 {
      resources = withUnsafeBytes(of: d.base_addr) { bases in
        withUnsafeBytes(of: d.size) { sizes in
          withUnsafeBytes(of: d.flags) { flags in
            (0..<6).map { i in
              let base = bases.load(fromByteOffset: i * 8, as: UInt64.self)
              let size = sizes.load(fromByteOffset: i * 8, as: UInt64.self)
              return PCIResource(
                start: base, end: size == 0 ? 0 : base &+ size &- 1,
                flags: flags.load(fromByteOffset: i * 8, as: UInt64.self))
            }
          }
        }
      }
    }

    var device = PCIDevice(
      address: address, config: config, resources: resources, names: names(d),
      driver: string(dev, PCI_FILL_DRIVER), iommuGroup: string(dev, PCI_FILL_IOMMU_GROUP).flatMap { Int($0) },
      numaNode: d.numa_node >= 0 ? Int(d.numa_node) : nil, irq: d.irq > 0 ? Int(d.irq) : nil)
    // libpci's identity is authoritative where config space is not readable.
    device.vendorID = d.vendor_id
    device.deviceID = d.device_id
    device.classCode = d.device_class
    if known & UInt32(PCI_FILL_CLASS_EXT) != 0 {
      device.progIf = d.prog_if
      device.revision = d.rev_id
    }
    if known & UInt32(PCI_FILL_SUBSYS) != 0 {
      device.subsystemVendorID = d.subsys_vendor_id
      device.subsystemID = d.subsys_id
    }
    return device
  }

  /// Reads as much of config space as the OS allows: 4096, 256 or 64 bytes.
  private func readConfig(_ dev: UnsafeMutablePointer<pci_dev>) -> ConfigSpace {
    for size in [4096, 256, 64] {
      var buffer = [UInt8](repeating: 0, count: size)
      let ok = buffer.withUnsafeMutableBufferPointer { pci_read_block(dev, 0, $0.baseAddress, Int32(size)) }
      if ok != 0 { return ConfigSpace(bytes: buffer) }
    }
    return ConfigSpace(bytes: [])
  }

  private func string(_ dev: UnsafeMutablePointer<pci_dev>, _ property: Int32) -> String? {
    pci_get_string_property(dev, UInt32(property)).map { String(cString: $0) }
  }

  private func names(_ d: pci_dev) -> PCINames {
    var n = PCINames()
    let cls = UInt32(d.device_class)
    let v = UInt32(d.vendor_id)
    let dv = UInt32(d.device_id)
    let plain: Int32 = 0
    let onlyNames = Int32(PCI_LOOKUP_NO_NUMBERS.rawValue)
    let mixed = Int32(PCI_LOOKUP_MIXED.rawValue)
    n.vendor = lookup { vgpu_pci_lookup_vendor(access, $0, $1, onlyNames, v) }
    n.device = lookup { vgpu_pci_lookup_device(access, $0, $1, onlyNames, v, dv) }
    n.deviceClass = lookup { vgpu_pci_lookup_class(access, $0, $1, onlyNames, cls) }
    n.progIf = lookup { vgpu_pci_lookup_progif(access, $0, $1, onlyNames, cls, UInt32(d.prog_if)) }
    n.classText = lookup { vgpu_pci_lookup_class(access, $0, $1, plain, cls) }
    n.deviceText = lookup { vgpu_pci_lookup_vendor_device(access, $0, $1, plain, v, dv) }
    n.classTextWithNumbers = lookup { vgpu_pci_lookup_class(access, $0, $1, mixed, cls) }
    n.deviceTextWithNumbers = lookup { vgpu_pci_lookup_vendor_device(access, $0, $1, mixed, v, dv) }
    if d.subsys_vendor_id != 0 && d.subsys_vendor_id != 0xffff {
      let sv = UInt32(d.subsys_vendor_id)
      let sd = UInt32(d.subsys_id)
      n.subsystemText = lookup { vgpu_pci_lookup_subsystem(access, $0, $1, plain, v, dv, sv, sd) }
      n.subsystem = lookup { vgpu_pci_lookup_subsystem(access, $0, $1, onlyNames, v, dv, sv, sd) }
    }
    return n
  }

  private func lookup(_ body: (UnsafeMutablePointer<CChar>, Int32) -> UnsafeMutablePointer<CChar>?) -> String? {
    var buffer = [CChar](repeating: 0, count: 1024)
    return buffer.withUnsafeMutableBufferPointer { b in
      body(b.baseAddress!, Int32(b.count)).map { String(cString: $0) }
    }
  }
}

/// Why a PCI operation failed, in words a person can act on.
public enum PCIError: Error, Equatable, CustomStringConvertible {
  case noPCISubsystem(path: String)
  case noSuchDevice(String, present: [PCIAddress])
  case invalidSelector(String)

  public var description: String {
    switch self {
    case .noPCISubsystem(let path):
      return "no PCI subsystem visible: \(path) does not exist (is sysfs mounted, or is this a container without /sys?)"
    case .noSuchDevice(let what, let present):
      let list = present.isEmpty ? "none" : present.map(\.description).joined(separator: ", ")
      return "no PCI device \(what); devices present: \(list)"
    case .invalidSelector(let why):
      return why
    }
  }
}
