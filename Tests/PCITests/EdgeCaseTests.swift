import Testing

@testable import PCI

/// Hand-made config spaces for what real devices rarely show: every BAR kind,
/// no capabilities, and chains that loop, break or point out of range.
struct Builder {
  var bytes: [UInt8]

  init(size: Int = 256, vendor: UInt16 = 0x1234, device: UInt16 = 0x5678, headerType: UInt8 = 0) {
    bytes = [UInt8](repeating: 0, count: size)
    put16(0x00, vendor)
    put16(0x02, device)
    put16(0x04, 0x0007)  // I/O, memory, bus master
    bytes[0x0e] = headerType
  }

  mutating func put16(_ at: Int, _ v: UInt16) {
    bytes[at] = UInt8(v & 0xff)
    bytes[at + 1] = UInt8(v >> 8)
  }

  mutating func put32(_ at: Int, _ v: UInt32) {
    for i in 0..<4 { bytes[at + i] = UInt8((v >> (8 * UInt32(i))) & 0xff) }
  }

  /// Sets the status bit and the pointer at 0x34.
  mutating func capabilities(first: UInt8) {
    put16(0x06, 0x0010)
    bytes[0x34] = first
  }

  mutating func cap(at: Int, id: UInt8, next: UInt8) {
    bytes[at] = id
    bytes[at + 1] = next
  }

  var config: ConfigSpace { ConfigSpace(bytes: bytes) }
  func capabilities(_ id: PCIDeviceID? = nil) -> CapabilityList { CapabilityList(config: config, deviceID: id) }
}

@Suite struct BARDecodingTests {
  /// BAR0 32-bit memory, BAR1+2 one 64-bit prefetchable, BAR3 I/O, BAR4 unused, BAR5 64-bit (broken).
  func sample() -> Builder {
    var b = Builder()
    b.put32(0x10, 0xfeb4_0000)
    b.put32(0x14, 0xc000_000c)
    b.put32(0x18, 0x0000_0080)
    b.put32(0x1c, 0x0000_d041)
    b.put32(0x24, 0xe000_0004)
    return b
  }

  @Test func fromRegistersAlone() {
    let bars = BAR.decode(config: sample().config, resources: nil)
    #expect(bars.map(\.index) == [0, 1, 3, 5])
    #expect(bars[0].kind == .memory && bars[0].memoryType == .bits32 && !bars[0].prefetchable)
    #expect(bars[0].address == 0xfeb4_0000 && bars[0].size == 0)
    #expect(bars[1].memoryType == .bits64 && bars[1].prefetchable && bars[1].address == 0x80_c000_0000)
    #expect(bars[2].kind == .io && bars[2].address == 0xd040 && bars[2].memoryType == nil)
    #expect(bars[3].isBroken, "a 64-bit BAR in the last register has no upper half")
  }

  @Test func fromTheOSResourceTable() {
    let resources = PCIResource.parseSysfs(
      """
      0x00000000feb40000 0x00000000feb5ffff 0x0000000000040200
      0x00000080c0000000 0x00000080cfffffff 0x000000000014220c
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      0x000000000000d040 0x000000000000d05f 0x0000000000040101
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      """)
    let bars = BAR.decode(config: sample().config, resources: resources)
    #expect(bars.map(\.index) == [0, 1, 3])
    #expect(
      bars[0].size == 128 * 1024 && bars[0].lspciText == "Memory at feb40000 (32-bit, non-prefetchable) [size=128K]")
    #expect(bars[1].size == 256 << 20 && bars[1].lspciText == "Memory at 80c0000000 (64-bit, prefetchable) [size=256M]")
    #expect(bars[2].lspciText == "I/O ports at d040 [size=32]")
  }

  @Test func disabledAndUnassigned() {
    var b = Builder()
    b.put16(0x04, 0)  // decoding off
    b.put32(0x10, 0x0000_0004)  // 64-bit, no address yet
    let bars = BAR.decode(config: b.config, resources: [PCIResource(start: 0, end: 0, flags: 0x0014_0204)])
    #expect(bars.count == 1)
    #expect(bars[0].lspciText == "Memory at <ignored> (64-bit, non-prefetchable) [disabled]")
  }

  @Test func bridgeHasTwoBARs() {
    var b = Builder(headerType: 1)
    for i in 0..<6 { b.put32(0x10 + 4 * i, 0xf000_0000) }
    #expect(BAR.decode(config: b.config, resources: nil).map(\.index) == [0, 1])
  }

  @Test func sizesLikeLspci() {
    #expect(BAR.sizeText(256) == "256")
    #expect(BAR.sizeText(4096) == "4K")
    #expect(BAR.sizeText(16 << 20) == "16M")
    #expect(BAR.sizeText(80 << 30) == "80G")
    #expect(BAR.sizeText(3 << 40) == "3T")
    #expect(BAR.sizeText(1536) == "1536")
  }
}

@Suite struct CapabilityChainTests {
  @Test func noCapabilities() {
    #expect(Builder().capabilities().capabilities.isEmpty)
    var b = Builder()
    b.capabilities(first: 0)  // status bit set, empty list
    #expect(b.capabilities() == CapabilityList(config: b.config))
    #expect(b.capabilities().capabilities.isEmpty && b.capabilities().problems.isEmpty)
    var c = Builder()
    c.bytes[0x34] = 0x40  // pointer without the status bit: not a list
    c.cap(at: 0x40, id: 0x05, next: 0)
    #expect(c.capabilities().capabilities.isEmpty)
  }

  @Test func loopIsReportedNotFollowed() {
    var b = Builder()
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x01, next: 0x50)
    b.cap(at: 0x50, id: 0x05, next: 0x40)
    let list = b.capabilities()
    #expect(list.capabilities.map(\.offset) == [0x40, 0x50])
    #expect(list.problems == [CapabilityChainProblem(kind: .looped, isExtended: false, offset: 0x40)])
  }

  @Test func selfLoop() {
    var b = Builder()
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x09, next: 0x40)
    #expect(b.capabilities().problems.map(\.kind) == [.looped])
    #expect(b.capabilities().capabilities.count == 1)
  }

  @Test(arguments: [UInt8(0x10), 0x3c, 0x04])
  func pointerIntoTheHeaderIsOutOfRange(pointer: UInt8) {
    var b = Builder()
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x01, next: pointer)
    let list = b.capabilities()
    #expect(list.capabilities.count == 1)
    #expect(list.problems == [CapabilityChainProblem(kind: .outOfRange, isExtended: false, offset: Int(pointer))])
  }

  @Test func pointerPastWhatCouldBeRead() {
    // Unprivileged readers get 64 bytes: the chain's first entry is beyond them.
    var b = Builder(size: 64)
    b.capabilities(first: 0x40)
    let list = b.capabilities()
    #expect(list.capabilities.isEmpty)
    #expect(list.problems.map(\.kind) == [.unreadable])
  }

  @Test func allOnesIsBroken() {
    var b = Builder()
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0xff, next: 0xff)
    #expect(b.capabilities().problems.map(\.kind) == [.broken])
  }

  @Test func lowBitsOfPointersAreIgnored() {
    var b = Builder()
    b.capabilities(first: 0x43)
    b.cap(at: 0x40, id: 0x01, next: 0x52)
    b.cap(at: 0x50, id: 0x05, next: 0)
    #expect(b.capabilities().capabilities.map(\.offset) == [0x40, 0x50])
  }

  func express(size: Int = 4096) -> Builder {
    var b = Builder(size: size)
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x10, next: 0)
    b.put16(0x42, 0x0002)  // version 2, endpoint
    return b
  }

  @Test func extendedLoop() {
    var b = express()
    b.put32(0x100, 0x1401_0001)  // AER v1 → 0x140
    b.put32(0x140, 0x1001_0003)  // DSN v1 → 0x100
    let list = b.capabilities()
    #expect(list.capabilities.filter(\.isExtended).map(\.offset) == [0x100, 0x140])
    #expect(list.problems == [CapabilityChainProblem(kind: .looped, isExtended: true, offset: 0x100)])
  }

  @Test func extendedPointerOutOfRange() {
    var b = express()
    b.put32(0x100, 0x0801_0001)  // next = 0x080, inside the standard area
    #expect(b.capabilities().problems == [CapabilityChainProblem(kind: .outOfRange, isExtended: true, offset: 0x80)])
    b.put32(0x100, 0x1021_0001)  // next = 0x102, not dword-aligned
    #expect(b.capabilities().problems.map(\.kind) == [.outOfRange])
  }

  @Test func extendedListAbsentOrUnreadable() {
    #expect(express().capabilities().capabilities.count == 1)
    #expect(express().capabilities().problems.isEmpty)
    // 256 bytes only (conventional PCI access, or unprivileged): not walked.
    #expect(express(size: 256).capabilities().problems.isEmpty)
    // Extended capabilities behind a device with no PCIe capability: not walked (as lspci).
    var b = Builder(size: 4096)
    b.put32(0x100, 0x0001_0001)
    #expect(b.capabilities().capabilities.isEmpty)
  }

  @Test func decodesMSIAndMSIXAndPM() {
    var b = Builder()
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x01, next: 0x50)
    b.put16(0x42, 0x0003)
    b.put16(0x44, 0x0003)  // D3hot
    b.cap(at: 0x50, id: 0x05, next: 0x70)
    b.put16(0x52, 0x0181 | (2 << 4) | (3 << 1))  // enabled, 4 of 8 vectors, 64-bit, maskable
    b.cap(at: 0x70, id: 0x11, next: 0)
    b.put16(0x72, 0xc000 | 63)  // enabled, masked, 64 vectors
    b.put32(0x74, 0x0000_2004)  // table: BAR 4 offset 0x2000
    b.put32(0x78, 0x0000_3005)  // PBA: BAR 5 offset 0x3000
    let caps = b.capabilities().capabilities
    #expect(caps[0].powerManagement == PowerManagementCapability(version: 3, powerState: 3))
    #expect(caps[1].msi == MSICapability(enabled: true, count: 4, maxCount: 8, is64Bit: true, perVectorMasking: true))
    #expect(
      caps[2].msix
        == MSIXCapability(
          enabled: true, functionMasked: true, vectorCount: 64,
          table: BARLocation(bar: 4, offset: 0x2000), pendingBitArray: BARLocation(bar: 5, offset: 0x3000)))
    #expect(
      caps[2].lspciLines == [
        "\tCapabilities: [70] MSI-X: Enable+ Count=64 Masked+",
        "\t\tVector table: BAR=4 offset=00002000",
        "\t\tPBA: BAR=5 offset=00003000",
      ])
  }

  @Test func virtioOnlyForVirtioIDsAndWholeStructures() {
    var b = Builder(vendor: 0x1af4, device: 0x1041)
    b.capabilities(first: 0x40)
    b.cap(at: 0x40, id: 0x09, next: 0x60)
    b.bytes[0x42] = 20
    b.bytes[0x43] = 2  // Notify
    b.bytes[0x44] = 4  // BAR 4
    b.put32(0x48, 0x3000)
    b.put32(0x4c, 0x1000)
    b.put32(0x50, 4)
    b.cap(at: 0x60, id: 0x09, next: 0)
    b.bytes[0x62] = 8  // too short for a virtio structure
    let caps = b.capabilities(PCIDeviceID(vendor: 0x1af4, device: 0x1041)).capabilities
    #expect(
      caps[0].virtio
        == VirtioCapability(
          configType: 2, configTypeName: "Notify", bar: 4, id: 0,
          offset: 0x3000, length: 0x1000, notifyMultiplier: 4))
    #expect(caps[1].virtio == nil && caps[1].vendorLength == 8)
    // ivshmem (1af4:1110) is not virtio: vendor capabilities stay undecoded, as lspci does.
    #expect(b.capabilities(PCIDeviceID(vendor: 0x1af4, device: 0x1110)).capabilities[0].virtio == nil)
  }

  @Test func randomBytesNeverHangOrCrash() {
    var rng = SystemRandomNumberGenerator()
    for round in 0..<3000 {
      let size = [64, 256, 4096][round % 3]
      var bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
      bytes[0x06] |= 0x10
      let list = CapabilityList(config: ConfigSpace(bytes: bytes))
      // Each offset at most once per list, so the walk is bounded by the space's size.
      #expect(list.capabilities.count <= 48 + 960)
      _ = BAR.decode(config: ConfigSpace(bytes: bytes), resources: nil)
      _ =
        PCIDevice(
          address: PCIAddress(bus: 0, device: 0, function: 0), config: ConfigSpace(bytes: bytes), resources: nil
        )
        .verboseDescription
    }
  }

  @Test func emptyAndTruncatedConfigSpaces() {
    for size in [0, 1, 7, 63] {
      let d = PCIDevice(
        address: PCIAddress(bus: 0, device: 0, function: 0),
        config: ConfigSpace(bytes: [UInt8](repeating: 0xff, count: size)),
        resources: nil)
      #expect(d.capabilities.capabilities.isEmpty)
      #expect(!d.verboseDescription.isEmpty)
    }
  }
}
