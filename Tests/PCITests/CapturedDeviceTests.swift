import LspciFacts
import Testing

@testable import PCI

/// Our decoder against lspci's, on config bytes captured from real devices.
@Suite struct CapturedDeviceTests {
  @Test(arguments: try Fixture.all())
  func decodesLikeLspci(fixture: Fixture) {
    let ours = LspciFacts(device: fixture.device)
    let theirs = LspciFacts(lspciVerbose: fixture.lspciVerbose)
    #expect(ours.mismatches(against: theirs) == [], "\(fixture)")
  }

  @Test func fixturesCoverWhatTheDecoderMustKnow() throws {
    let caps = try Fixture.all().flatMap { $0.device.capabilities.capabilities }
    let standard = Set(caps.filter { !$0.isExtended }.map(\.id))
    let extended = Set(caps.filter(\.isExtended).map(\.id))
    // PM, MSI, vendor-specific, PCIe, MSI-X; AER, DSN, ACS, ARI, ATS, SR-IOV.
    #expect(standard.isSuperset(of: [0x01, 0x05, 0x09, 0x10, 0x11]))
    #expect(extended.isSuperset(of: [0x01, 0x03, 0x0d, 0x0e, 0x0f, 0x10]))
  }

  @Test func hostVirtioRNGAt05() throws {
    let d = try Fixture.load("host/0000-00-05.0").device
    #expect(d.id == PCIDeviceID(vendor: 0x1af4, device: 0x1044))
    #expect(
      d.bars == [
        BAR(
          index: 0, kind: .memory, address: 0x40_0020_0000, size: 512 * 1024, memoryType: .bits64,
          prefetchable: false, isVirtual: false, isDisabled: false, isBroken: false, isIgnored: false)
      ])
    let virtio = d.capabilities.capabilities.compactMap(\.virtio)
    #expect(virtio.map(\.configTypeName) == ["CommonCfg", "ISR", "DeviceCfg", "Notify", "<unknown>"])
    #expect(virtio[3].notifyMultiplier == 4)
    #expect(virtio[3].offset == 0x6000 && virtio[3].length == 0x1000)
    #expect(
      d.msix
        == MSIXCapability(
          enabled: true, functionMasked: false, vectorCount: 2,
          table: BARLocation(bar: 0, offset: 0x8000), pendingBitArray: BARLocation(bar: 0, offset: 0x48000)))
    #expect(d.capabilities.problems.isEmpty)
  }

  @Test func e1000eHasEveryKindOfCapability() throws {
    let d = try Fixture.load("qemu-q35/0000-00-02.0-e1000e").device
    let caps = d.capabilities.capabilities
    #expect(caps.map(\.offset) == [0xc8, 0xd0, 0xe0, 0xa0, 0x100, 0x140])
    #expect(caps[0].powerManagement == PowerManagementCapability(version: 2, powerState: 0))
    #expect(caps[1].msi == MSICapability(enabled: false, count: 1, maxCount: 1, is64Bit: true, perVectorMasking: false))
    #expect(caps[2].express?.portTypeName == "Root Complex Integrated Endpoint")
    #expect(caps[3].msix?.table == BARLocation(bar: 3, offset: 0))
    #expect(caps[3].msix?.pendingBitArray == BARLocation(bar: 3, offset: 0x2000))
    #expect(caps[4].name == "Advanced Error Reporting" && caps[4].version == 2)
    #expect(caps[5].name == "Device Serial Number")
    #expect(d.bars.map(\.kind) == [.memory, .memory, .io, .memory])
    #expect(d.bars[2].address == 0xd040 && d.bars[2].size == 32)
  }

  @Test func ivshmemAt05HasRegistersAndSharedMemory() throws {
    let d = try Fixture.load("qemu-q35/0000-00-05.0-ivshmem").device
    #expect(d.id == PCIDeviceID(vendor: 0x1af4, device: 0x1110))
    #expect(d.bars.map(\.index) == [0, 2])
    #expect(d.bars[0].size == 256)
    #expect(d.bars[1].size == 16 << 20 && d.bars[1].is64Bit && d.bars[1].prefetchable)
  }

  @Test func dumpRoundTripsThroughLspciFormat() throws {
    for f in try Fixture.all() {
      #expect(try ConfigSpace(lspciHexDump: f.config.hexDump()) == f.config, "\(f)")
    }
  }
}
