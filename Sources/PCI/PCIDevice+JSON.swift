/// The JSON shape of a device for `pcitool --json`: IDs as lower-case hex
/// strings (as lspci and sysfs write them), sizes and offsets as numbers.
extension PCIDevice: Encodable {
  private enum Key: String, CodingKey {
    case address, vendorID, deviceID, subsystemVendorID, subsystemID, classCode, progIf, revision
    case names, bars, capabilities, capabilityProblems, driver, iommuGroup, numaNode, irq, configSpaceSize
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: Key.self)
    try c.encode(address.description, forKey: .address)
    try c.encode(hex(vendorID, width: 4), forKey: .vendorID)
    try c.encode(hex(deviceID, width: 4), forKey: .deviceID)
    try c.encodeIfPresent(subsystemVendorID.map { hex($0, width: 4) }, forKey: .subsystemVendorID)
    try c.encodeIfPresent(subsystemID.map { hex($0, width: 4) }, forKey: .subsystemID)
    try c.encode(hex(classCode, width: 4), forKey: .classCode)
    try c.encode(hex(progIf, width: 2), forKey: .progIf)
    try c.encode(hex(revision, width: 2), forKey: .revision)
    try c.encode(names, forKey: .names)
    try c.encode(bars, forKey: .bars)
    try c.encode(capabilities.capabilities, forKey: .capabilities)
    try c.encode(capabilities.problems.map(\.description), forKey: .capabilityProblems)
    // Explicit nulls: a script should see "no IOMMU group", not a missing key.
    try c.encode(driver, forKey: .driver)
    try c.encode(iommuGroup, forKey: .iommuGroup)
    try c.encode(numaNode, forKey: .numaNode)
    try c.encode(irq, forKey: .irq)
    try c.encode(config.count, forKey: .configSpaceSize)
  }
}
