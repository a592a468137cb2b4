/// The bytes of a function's configuration space, as far as they could be read:
/// 64 bytes without privilege, 256 for conventional PCI, 4096 for PCI Express
/// (PCIe Base Spec 6.0 §7.2.2). Every accessor is bounds-checked and returns
/// `nil` past the end, so a decoder fed hostile bytes cannot read out of range.
public struct ConfigSpace: Sendable, Equatable {
  public private(set) var bytes: [UInt8]

  public init(bytes: [UInt8]) { self.bytes = bytes }

  public var count: Int { bytes.count }

  public func u8(_ offset: Int) -> UInt8? {
    offset >= 0 && offset < bytes.count ? bytes[offset] : nil
  }

  /// Little-endian, as all of config space is (PCI Local Bus Spec 3.0 §6.1).
  public func u16(_ offset: Int) -> UInt16? {
    guard offset >= 0, offset + 2 <= bytes.count else { return nil }
    return UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
  }

  public func u32(_ offset: Int) -> UInt32? {
    guard offset >= 0, offset + 4 <= bytes.count else { return nil }
    return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
      | UInt32(bytes[offset + 3]) << 24
  }

  // Type 0/1 header fields (PCI Local Bus Spec 3.0 §6.1, figure 6-1).
  public var vendorID: UInt16? { u16(0x00) }
  public var deviceID: UInt16? { u16(0x02) }
  public var command: UInt16? { u16(0x04) }
  public var status: UInt16? { u16(0x06) }
  public var revision: UInt8? { u8(0x08) }
  public var progIf: UInt8? { u8(0x09) }
  /// Base class and sub-class, as one 16-bit value (`0x0200` = Ethernet).
  public var classCode: UInt16? { u16(0x0a) }
  /// Header type without the multi-function bit: 0 device, 1 PCI bridge, 2 CardBus.
  public var headerType: UInt8? { u8(0x0e).map { $0 & 0x7f } }
  public var capabilitiesPointer: UInt8? { u8(0x34) }

  /// Status bit 4: the capability list at 0x34 is valid.
  public var hasCapabilityList: Bool { (status ?? 0) & 0x0010 != 0 }

  /// Number of BAR registers for the header type (6 for devices, 2 for bridges).
  public var barCount: Int {
    switch headerType {
    case 0: 6
    case 1: 2
    default: 0
    }
  }
}

// MARK: - lspci's hex format

extension ConfigSpace {
  /// Rows of 16 bytes, `"00: 86 80 ..."`, exactly as `lspci -x`/`-xxx`/`-xxxx` print them.
  public func hexDump(limit: Int? = nil) -> String {
    let n = min(limit ?? bytes.count, bytes.count)
    // Written as UTF-8 bytes: a String per byte made the dump of a 4 KiB
    // config space a fifth of the pci-config fuzz target's time per input.
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(n * 3 + n / 16 * 5 + 5)
    for i in 0..<n {
      if i & 15 == 0 {
        out.append(contentsOf: hex(i, width: 2).utf8)
        out.append(UInt8(ascii: ":"))
      }
      out.append(UInt8(ascii: " "))
      out.append(digits[Int(bytes[i] >> 4)])
      out.append(digits[Int(bytes[i] & 15)])
      if i & 15 == 15 { out.append(UInt8(ascii: "\n")) }
    }
    if n & 15 != 0 { out.append(UInt8(ascii: "\n")) }
    return String(decoding: out, as: UTF8.self)
  }

  /// Reads the hex rows of an `lspci -x` dump; other lines (the device's title,
  /// blank lines) are ignored. Rows must be contiguous from offset 0.
  public init(lspciHexDump text: String) throws(ConfigSpaceParseError) {
    var bytes: [UInt8] = []
    for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let fields = line.split(separator: " ")
      guard let first = fields.first, first.hasSuffix(":"), let offset = Int(first.dropLast(), radix: 16),
        fields.count == 17
      else { continue }
      guard offset == bytes.count else {
        throw ConfigSpaceParseError(
          line: number + 1, problem: "row at \(hex(offset, width: 2)) follows \(bytes.count) bytes")
      }
      for field in fields.dropFirst() {
        guard field.count == 2, let b = UInt8(field, radix: 16) else {
          throw ConfigSpaceParseError(line: number + 1, problem: "'\(field)' is not a hex byte")
        }
        bytes.append(b)
      }
    }
    guard !bytes.isEmpty else { throw ConfigSpaceParseError(line: 0, problem: "no hex rows found") }
    self.init(bytes: bytes)
  }
}

public struct ConfigSpaceParseError: Error, CustomStringConvertible {
  public var line: Int
  public var problem: String
  public var description: String { "config-space dump, line \(line): \(problem)" }
}
