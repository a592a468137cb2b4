import Testing
import VGPUDevice
import VGPUProtocol

@testable import VGPU

/// Random bytes, reproducible per seed (SplitMix64).
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
  var state = seed
  var out = [UInt8](repeating: 0, count: count)
  out.withUnsafeMutableBytes { raw in
    var i = 0
    while i < count {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      z ^= z >> 31
      withUnsafeBytes(of: z) { w in
        let n = min(8, count - i)
        raw.baseAddress!.advanced(by: i).copyMemory(from: w.baseAddress!, byteCount: n)
      }
      i += 8
    }
  }
  return out
}

@Suite(.serialized) struct EndToEndTests {
  @Test func opensSimAndDescribesIt() throws {
    let d = try Device.open("sim")
    defer { d.close() }
    #expect(d.info.identity.name.contains("H100"))
    #expect(d.info.identity.memorySize == 80 << 30)
    #expect(d.info.identity.computeCapability == (9, 0))
    #expect(d.info.protocolVersion == (1, 0))
    #expect(d.info.features == FeatureBits.all)
    let (free, total) = try d.memoryInfo()
    #expect(free == total && total == 80 << 30)
    try d.nop()
  }

  @Test(arguments: [
    1, 7, 4096, (256 << 10) - 1, 256 << 10, (256 << 10) + 1, (1 << 20) + 3, 8 << 20, (64 << 20) + 5, 256 << 20,
  ])
  func roundTripsRandomData(size: Int) throws {
    let d = try Device.open("sim")
    defer { d.close() }
    let data = randomBytes(size, seed: UInt64(size))
    let p = try d.allocate(size)
    try d.copy(to: p, from: data)
    #expect(try d.read(p, count: size) == data)
    try d.free(p)
    #expect(try d.memoryInfo().free == 80 << 30)
  }
}
