/// Everything this project knows about one PCI function, gathered once.
///
/// Built from live libpci data by ``PCIBus``, or from captured bytes by
/// ``init(address:config:resources:names:)`` (tests, dumps from other machines).
public struct PCIDevice: Sendable, Equatable {
  public var address: PCIAddress
  public var vendorID: UInt16
  public var deviceID: UInt16
  public var subsystemVendorID: UInt16?
  public var subsystemID: UInt16?
  /// Base class and sub-class, e.g. `0x0200` for an Ethernet controller.
  public var classCode: UInt16
  public var progIf: UInt8
  public var revision: UInt8
  public var names: PCINames
  public var bars: [BAR]
  public var config: ConfigSpace
  public var capabilities: CapabilityList
  /// The kernel driver bound to the function (`virtio-pci`, `vfio-pci`), if any.
  public var driver: String?
  /// The IOMMU group number; `nil` without an IOMMU.
  public var iommuGroup: Int?
  /// `nil` where the platform has no NUMA information (sysfs says -1).
  public var numaNode: Int?
  /// The legacy interrupt line the OS routed INTx to; `nil` or 0 if none.
  public var irq: Int?

  public var id: PCIDeviceID { PCIDeviceID(vendor: vendorID, device: deviceID) }

  /// The decoded MSI-X capability, if the function has one.
  public var msix: MSIXCapability? { capabilities.capabilities.lazy.compactMap(\.msix).first }

  /// A device from captured config-space bytes and, where known, the OS's resource table.
  public init(
    address: PCIAddress, config: ConfigSpace, resources: [PCIResource]?, names: PCINames = PCINames(),
    driver: String? = nil, iommuGroup: Int? = nil, numaNode: Int? = nil, irq: Int? = nil
  ) {
    self.address = address
    self.vendorID = config.vendorID ?? 0xffff
    self.deviceID = config.deviceID ?? 0xffff
    if config.headerType == 0, let sv = config.u16(0x2c), let sd = config.u16(0x2e) {
      subsystemVendorID = sv
      subsystemID = sd
    }
    self.classCode = config.classCode ?? 0xffff
    self.progIf = config.progIf ?? 0
    self.revision = config.revision ?? 0
    self.names = names
    self.bars = BAR.decode(config: config, resources: resources)
    self.config = config
    self.capabilities = CapabilityList(config: config, deviceID: PCIDeviceID(vendor: vendorID, device: deviceID))
    self.driver = driver
    self.iommuGroup = iommuGroup
    self.numaNode = numaNode
    self.irq = irq
  }
}

/// Names from the PCI ID database (`pci.ids`, through libpci). Each is `nil`
/// when the database does not know the number; the `listing…` texts are what
/// lspci prints, numbers filled in for unknown names.
public struct PCINames: Sendable, Equatable, Codable {
  public var vendor: String?
  public var device: String?
  public var deviceClass: String?
  public var subsystem: String?
  public var progIf: String?
  /// lspci's class text, e.g. `Ethernet controller`.
  public var classText: String?
  /// lspci's vendor-and-device text, e.g. `Red Hat, Inc. Virtio 1.0 RNG`.
  public var deviceText: String?
  /// lspci's subsystem text for `-v`.
  public var subsystemText: String?
  /// The same with numbers, as `lspci -nn` prints them: `Ethernet controller [0200]`.
  public var classTextWithNumbers: String?
  public var deviceTextWithNumbers: String?

  public init() {}
}
