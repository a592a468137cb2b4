/// A PCI function's address: domain (segment), bus, device (slot) and function,
/// printed as `DDDD:BB:DD.F` like `lspci -D` and sysfs.
///
/// PCI Local Bus Spec 3.0 §3.2.2.3.1: 256 buses, 32 devices per bus, 8 functions
/// per device. Linux domains are 16 bits on x86 but libpci carries them as `int`,
/// so the domain is kept 32 bits wide and printed with at least four digits.
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
  public var domain: UInt32
  public var bus: UInt8
  public var device: UInt8
  public var function: UInt8

  /// The accepted forms, for error messages and help texts.
  public static let expectedForm = "DDDD:BB:DD.F or BB:DD.F in hex (device 00-1f, function 0-7), e.g. 0000:00:05.0"

  public init(domain: UInt32 = 0, bus: UInt8, device: UInt8, function: UInt8) {
    precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
    self.domain = domain
    self.bus = bus
    self.device = device
    self.function = function
  }

  /// Parses `DDDD:BB:DD.F` or the short `BB:DD.F` (domain 0).
  public init(parsing text: String) throws(PCIAddressError) {
    func fail(_ why: String) -> PCIAddressError { PCIAddressError(input: text, problem: why) }
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2 || parts.count == 3 else {
      throw fail("expected two or three ':'-separated fields")
    }
    var domain: UInt32 = 0
    if parts.count == 3 {
      guard (1...8).contains(parts[0].count), let d = UInt32(parts[0], radix: 16), parts[0].allSatisfy(\.isHexDigit)
      else { throw fail("domain '\(parts[0])' is not 1-8 hex digits") }
      domain = d
    }
    let busText = parts[parts.count - 2]
    guard (1...2).contains(busText.count), busText.allSatisfy(\.isHexDigit), let bus = UInt8(busText, radix: 16)
    else { throw fail("bus '\(busText)' is not 1-2 hex digits") }
    let slot = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
    guard slot.count == 2 else { throw fail("expected DD.F after the bus") }
    guard (1...2).contains(slot[0].count), slot[0].allSatisfy(\.isHexDigit), let dev = UInt8(slot[0], radix: 16),
      dev < 32
    else { throw fail("device '\(slot[0])' is not a hex number from 00 to 1f") }
    guard slot[1].count == 1, let fn = UInt8(slot[1], radix: 8), fn < 8
    else { throw fail("function '\(slot[1])' is not a digit from 0 to 7") }
    self.init(domain: domain, bus: bus, device: dev, function: fn)
  }

  /// `DDDD:BB:DD.F`, as sysfs names the device.
  public var description: String {
    "\(hex(domain, width: 4)):\(hex(bus, width: 2)):\(hex(device, width: 2)).\(function)"
  }

  /// `BB:DD.F`, as `lspci` prints it without `-D`.
  public var shortDescription: String {
    "\(hex(bus, width: 2)):\(hex(device, width: 2)).\(function)"
  }

  /// The order lspci sorts in: domain, bus, device, function.
  public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
    (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
  }
}

/// A string that is not a PCI address; the message quotes it and shows the forms.
public struct PCIAddressError: Error, Equatable, CustomStringConvertible {
  public var input: String
  public var problem: String
  public var description: String {
    "invalid PCI address '\(input)': \(problem); expected \(PCIAddress.expectedForm)"
  }
}

/// A vendor:device pair such as `1af4:1110`, as `lspci -d` takes it.
public struct PCIDeviceID: Hashable, Sendable, CustomStringConvertible {
  public var vendor: UInt16
  public var device: UInt16

  public init(vendor: UInt16, device: UInt16) {
    self.vendor = vendor
    self.device = device
  }

  /// Parses `VVVV:DDDD` (hex, 1-4 digits each).
  public init?(parsing text: String) {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2,
      parts.allSatisfy({ (1...4).contains($0.count) && $0.allSatisfy(\.isHexDigit) }),
      let v = UInt16(parts[0], radix: 16), let d = UInt16(parts[1], radix: 16)
    else { return nil }
    self.init(vendor: v, device: d)
  }

  public var description: String { "\(hex(vendor, width: 4)):\(hex(device, width: 4))" }
}

/// Lower-case hex with zero padding, as lspci prints numbers.
func hex<T: BinaryInteger>(_ value: T, width: Int) -> String {
  let digits = String(value, radix: 16)
  return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
