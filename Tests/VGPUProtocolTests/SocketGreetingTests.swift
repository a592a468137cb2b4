import Testing
import VGPUProtocol

/// The mediator's greeting on its Unix socket (docs/PROTOCOL.md §23.1): its
/// layout pinned byte by byte, and every field a decoder refuses.
@Suite struct SocketGreetingTests {
  func decode(_ bytes: [UInt8]) throws(GreetingError) -> SocketGreeting {
    try bytes.withUnsafeBytes { b in Result { () throws(GreetingError) in try SocketGreeting(decoding: b) } }.get()
  }

  func field<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
    bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
  }

  @Test func layoutAndRoundTrip() throws {
    let accepted = SocketGreeting(status: .accepted, barSize: 16 << 20)
    let bytes = accepted.encoded
    #expect(bytes.count == 256 && SocketGreeting.size == 256 && SocketGreeting.reasonCapacity == 224)
    #expect(field(bytes, 0, UInt32.self) == 0x4B4E_4847)
    #expect(field(bytes, 4, UInt32.self) == ProtocolVersion.packed)
    #expect(field(bytes, 8, UInt32.self) == 0 && field(bytes, 12, UInt32.self) == 0)
    #expect(field(bytes, 16, UInt64.self) == 16 << 20 && field(bytes, 24, UInt64.self) == 0)
    #expect(try decode(bytes) == accepted)
    let refused = SocketGreeting(status: .refused, reason: "uid 65534 is not admitted")
    let r = refused.encoded
    #expect(field(r, 8, UInt32.self) == 1 && field(r, 12, UInt32.self) == 25)
    #expect(try decode(r) == refused)
    // A mediator at its maximum says so first; the final greeting follows.
    let waiting = SocketGreeting(status: .waiting, reason: "4 of 4 processes")
    #expect(field(waiting.encoded, 8, UInt32.self) == 3 && field(waiting.encoded, 16, UInt64.self) == 0)
    #expect(try decode(waiting.encoded) == waiting)
  }

  @Test func aLongReasonIsCutAtACharacterBoundary() throws {
    let long = String(repeating: "é", count: 200)  // 2 bytes each: 224 bytes hold 112 whole
    #expect(
      try decode(SocketGreeting(status: .failed, reason: long).encoded).reason == String(repeating: "é", count: 112))
    let shifted = "x" + long  // now the 224th byte would start an "é"
    #expect(
      try decode(SocketGreeting(status: .failed, reason: shifted).encoded).reason
        == "x" + String(repeating: "é", count: 111))
  }

  @Test func everyBadFieldIsRefused() {
    let good = SocketGreeting(status: .accepted, barSize: 1 << 20).encoded
    func with(_ offset: Int, _ value: UInt64, width: Int) -> [UInt8] {
      var b = good
      for i in 0..<width { b[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
      return b
    }
    let cases: [([UInt8], String)] = [
      (Array(good.dropLast()), "255 bytes"),
      (with(0, 0x1234, width: 4), "magic"),
      (with(8, 4, width: 4), "status 4"),
      (with(12, 225, width: 4), "225 bytes"),
      (with(16, 0, width: 8), "BAR size 0"),
      (with(16, (1 << 20) + 1, width: 8), "not whole pages"),
      (with(16, 1 << 41, width: 8), "1 TiB"),
    ]
    for (bytes, why) in cases {
      let e = #expect(throws: GreetingError.self) { _ = try decode(bytes) }
      #expect(e?.description.contains(why) == true, "\(why): \(String(describing: e))")
    }
  }
}
