import Foundation
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

@Suite(.serialized) struct EndToEndTests {
  @Test func opensSimAndDescribesIt() throws {
    let d = try Device.open("sim", options: .simulator())
    defer { d.close() }
    #expect(d.info.identity.name.contains("H100"))
    #expect(d.info.identity.memorySize == 80 << 30)
    #expect(d.info.identity.computeCapability == (9, 0))
    #expect(d.info.protocolVersion == (ProtocolVersion.major, ProtocolVersion.minor))
    #expect(d.info.features == FeatureBits.all.subtracting(.hostWindow))
    #expect(d.info.wakeups.hasPrefix("futexes"))
    let (free, total) = try d.memoryInfo()
    #expect(free == total && total == 80 << 30)
    try d.nop()
  }

  @Test(arguments: [
    1, 7, 4096, (256 << 10) - 1, 256 << 10, (256 << 10) + 1, (1 << 20) + 3, 8 << 20, (64 << 20) + 5, 256 << 20,
  ])
  func roundTripsRandomData(size: Int) throws {
    let d = try Device.open("sim", options: .simulator())
    defer { d.close() }
    let data = randomBytes(size, seed: UInt64(size))
    let p = try d.allocate(size)
    try d.copy(to: p, from: data)
    // memcmp: a debug build's Array == compares byte by byte, seconds for 256 MiB.
    #expect(sameBytes(try d.read(p, count: size), data))
    try d.free(p)
    #expect(try d.memoryInfo().free == 80 << 30)
  }
}
