import CLibPCI

/// Names from the PCI ID database (`pci.ids`) for IDs read elsewhere, e.g.
/// from a sysfs tree, without scanning the bus.
public enum PCIIDNames {
  /// The vendor name, the device name, and both as lspci prints them
  /// (`Red Hat, Inc. Inter-VM shared memory`); `nil` where the database
  /// does not know the number.
  public static func lookup(_ id: PCIDeviceID) -> (vendor: String?, device: String?, text: String?) {
    // pci_alloc sets the ID file path; pci_init (which picks an access method
    // and exits the process when there is none) is not needed for names.
    guard let access = pci_alloc() else { return (nil, nil, nil) }
    defer { pci_cleanup(access) }
    vgpu_pci_quiet(access)
    let onlyNames = Int32(PCI_LOOKUP_NO_NUMBERS.rawValue)
    let v = UInt32(id.vendor)
    let d = UInt32(id.device)
    func lookup(_ body: (UnsafeMutablePointer<CChar>, Int32) -> UnsafeMutablePointer<CChar>?) -> String? {
      var buffer = [CChar](repeating: 0, count: 1024)
      return buffer.withUnsafeMutableBufferPointer { b in
        body(b.baseAddress!, Int32(b.count)).map { String(cString: $0) }
      }
    }
    return (
      lookup { vgpu_pci_lookup_vendor(access, $0, $1, onlyNames, v) },
      lookup { vgpu_pci_lookup_device(access, $0, $1, onlyNames, v, d) },
      lookup { vgpu_pci_lookup_vendor_device(access, $0, $1, onlyNames, v, d) }
    )
  }
}
