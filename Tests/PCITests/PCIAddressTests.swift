import Testing

@testable import PCI

@Suite struct PCIAddressTests {
  @Test(arguments: [
    ("0000:00:05.0", PCIAddress(domain: 0, bus: 0, device: 5, function: 0)),
    ("00:05.0", PCIAddress(domain: 0, bus: 0, device: 5, function: 0)),
    ("0001:ff:1f.7", PCIAddress(domain: 1, bus: 0xff, device: 0x1f, function: 7)),
    ("10000:3a:00.1", PCIAddress(domain: 0x10000, bus: 0x3a, device: 0, function: 1)),
    ("0000:AB:0C.3", PCIAddress(domain: 0, bus: 0xab, device: 0x0c, function: 3)),
    ("5:1.2", PCIAddress(domain: 0, bus: 5, device: 1, function: 2)),
  ])
  func parsesValidForms(text: String, expected: PCIAddress) throws {
    #expect(try PCIAddress(parsing: text) == expected)
  }

  @Test func printsLikeLspci() throws {
    let a = try PCIAddress(parsing: "0:3a:1.7")
    #expect(a.description == "0000:3a:01.7")
    #expect(a.shortDescription == "3a:01.7")
    #expect(try PCIAddress(parsing: a.description) == a)
  }

  @Test(arguments: [
    "", "nonsense", "00:05", "0000:00:05", "00:20.0", "00:05.8", "00:05.", ":05.0", "0000:000:05.0",
    "0000:00:05.0.1", "g0:00.0", "00:05.0 ", " 00:05.0", "-1:00.0", "000000000:00:00.0", "00:005.0",
    "00:05.00", "1af4:1110", "0000:00:05:0",
  ])
  func rejectsInvalidForms(text: String) {
    #expect(throws: PCIAddressError.self) { try PCIAddress(parsing: text) }
  }

  @Test func errorQuotesInputAndShowsExpectedForm() {
    do {
      _ = try PCIAddress(parsing: "nonsense")
      Issue.record("parsed 'nonsense'")
    } catch {
      #expect(error.description.contains("'nonsense'"))
      #expect(error.description.contains("DDDD:BB:DD.F"))
      #expect(!error.description.contains("\n"))
    }
  }

  @Test func sortsInLspciOrder() throws {
    let texts = ["0001:00:00.0", "0000:01:00.0", "0000:00:1f.3", "0000:00:02.1", "0000:00:02.0"]
    let sorted = try texts.map { try PCIAddress(parsing: $0) }.sorted().map(\.description)
    #expect(sorted == ["0000:00:02.0", "0000:00:02.1", "0000:00:1f.3", "0000:01:00.0", "0001:00:00.0"])
  }

  @Test func parsesVendorDeviceIDs() {
    #expect(PCIDeviceID(parsing: "1af4:1110") == PCIDeviceID(vendor: 0x1af4, device: 0x1110))
    #expect(PCIDeviceID(parsing: "10de:2330")?.description == "10de:2330")
    #expect(PCIDeviceID(parsing: "1af4") == nil)
    #expect(PCIDeviceID(parsing: "1af4:11100") == nil)
    #expect(PCIDeviceID(parsing: "zzzz:1110") == nil)
  }
}
