import Foundation
import PCI
import Testing

/// Names from pci.ids without scanning the bus (what `pcitool status` prints).
@Suite struct PCIIDNamesTests {
  static let hasDatabase = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"].contains {
    FileManager.default.fileExists(atPath: $0)
  }

  @Test func knownIDsHaveTheirNames() {
    let names = PCIIDNames.lookup(PCIDeviceID(vendor: 0x1af4, device: 0x1110))
    if Self.hasDatabase {
      #expect(names.vendor == "Red Hat, Inc.")
      #expect(names.device == "Inter-VM shared memory")
    }
  }

  /// A device the database does not know made libpci call a callback
  /// pci_alloc had left NULL: `pcitool status` died with SIGSEGV.
  @Test func unknownIDsAnswerNilInsteadOfCrashing() {
    // 0x0002 is not in pci.ids (0x0001 and 0xfffe are, as "wrong"/"temporary" IDs).
    let names = PCIIDNames.lookup(PCIDeviceID(vendor: 0x8086, device: 0xfffe))
    #expect(names.device == nil)
    if Self.hasDatabase { #expect(names.vendor == "Intel Corporation") }
    #expect(PCIIDNames.lookup(PCIDeviceID(vendor: 0x0002, device: 0xfffe)).vendor == nil)
  }
}
