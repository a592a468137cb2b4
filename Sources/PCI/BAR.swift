/// One base address register, decoded.
///
/// The register's low bits give the kind (PCI Local Bus Spec 3.0 §6.2.5.1):
/// bit 0 = I/O space; for memory, bits 2:1 = type (00 32-bit, 01 below 1 MiB,
/// 10 64-bit using the next register as the upper half) and bit 3 = prefetchable.
/// The address and size come from the OS (sysfs `resource`), which is what a
/// mapping will use; without it they are taken from the register alone and the
/// size is unknown (0).
public struct BAR: Sendable, Equatable, Codable {
  public enum Kind: String, Sendable, Codable { case memory, io }
  public enum MemoryType: String, Sendable, Codable {
    case bits32 = "32-bit"
    case bits64 = "64-bit"
    case below1M = "low-1M"
    case reserved = "type 3"
  }

  public var index: Int
  public var kind: Kind
  /// Bus address, flag bits masked off. 0 when unassigned.
  public var address: UInt64
  /// Length in bytes; 0 when unknown.
  public var size: UInt64
  /// Memory BARs only.
  public var memoryType: MemoryType?
  public var prefetchable: Bool
  /// The OS reports a region the register does not hold (SR-IOV VFs, EA).
  public var isVirtual: Bool
  /// Decoding of this kind of space is off in the command register.
  public var isDisabled: Bool
  /// A 64-bit BAR in the last register, whose upper half does not exist.
  public var isBroken: Bool
  /// The register is programmed but the OS reports no address.
  public var isIgnored: Bool

  public var is64Bit: Bool { memoryType == .bits64 }
}

/// One of the kernel's resources for a function, as libpci reports it (the
/// lines of sysfs `resource`): start, end and the `IORESOURCE_*` flags. This
/// layer reads sysfs only through libpci; DeviceAccess's `HostEnvironment` is
/// the project's one reader of sysfs files.
public struct PCIResource: Sendable, Equatable {
  public var start: UInt64
  public var end: UInt64
  public var flags: UInt64

  public init(start: UInt64, end: UInt64, flags: UInt64) {
    self.start = start
    self.end = end
    self.flags = flags
  }

  /// Bytes covered; sysfs writes an empty slot as `0x0 0x0 0x0`.
  /// A resource spanning all 2^64 addresses (start 0, end UInt64.max) cannot
  /// say its size; it reads as UInt64.max rather than trapping (found by Fuzz/pci-config).
  public var size: UInt64 {
    guard end > start || (end == start && end != 0) else { return 0 }
    let (size, overflow) = (end - start).addingReportingOverflow(1)
    return overflow ? .max : size
  }

  // include/linux/ioport.h
  static let ioresourceIO: UInt64 = 0x0000_0100
  static let ioresourceMem: UInt64 = 0x0000_0200
  static let ioresourcePrefetch: UInt64 = 0x0000_2000
  static let ioresourceMem64: UInt64 = 0x0010_0000
  /// Enhanced Allocation BAR equivalent indicator (PCI_IORESOURCE_PCI_EA_BEI).
  static let ioresourceEnhanced: UInt64 = 1 << 5

  /// The register's low flag bits that these resource flags stand for.
  var registerFlags: UInt32 {
    if flags & Self.ioresourceIO != 0 { return 0x1 }
    guard flags & Self.ioresourceMem != 0 else { return 0 }
    var f: UInt32 = flags & Self.ioresourceMem64 != 0 ? 0x4 : 0x0
    if flags & Self.ioresourcePrefetch != 0 { f |= 0x8 }
    return f
  }
}

extension BAR {
  /// Decodes the BARs of a type 0 or type 1 header the way `lspci -vv` shows
  /// them: the OS's resources where known, the registers otherwise.
  ///
  /// - Parameters:
  ///   - config: the function's config space (at least the 64-byte header).
  ///   - resources: the OS's resources in BAR order, or `nil` when unknown.
  public static func decode(config: ConfigSpace, resources: [PCIResource]?) -> [BAR] {
    let count = config.barCount
    let command = config.command ?? 0
    var bars: [BAR] = []
    var i = 0
    while i < count {
      defer { i += 1 }
      let register = config.u32(0x10 + 4 * i) ?? 0
      let resource = resources.flatMap { i < $0.count ? $0[i] : nil }
      var flags = resource.map(\.registerFlags) ?? register
      if flags == 0xffff_ffff { flags = 0 }
      let position = resource?.start ?? 0
      let size = resource?.size ?? 0
      if resources != nil {
        if position == 0 && flags == 0 && size == 0 { continue }
      } else if register == 0 || register == 0xffff_ffff {
        continue
      }

      let isIO = flags & 0x1 != 0
      var bar = BAR(
        index: i, kind: isIO ? .io : .memory, address: 0, size: size, memoryType: nil,
        prefetchable: false, isVirtual: false, isDisabled: false, isBroken: false, isIgnored: false)

      // The register as the hardware holds it, to spot regions the OS reports
      // but the device does not decode ("virtual", e.g. SR-IOV VF BARs).
      var hwLower: UInt32 = 0
      var hwUpper: UInt32 = 0
      let sameSpace = register & 0x1 == flags & 0x1
      if sameSpace {
        hwLower = register
        if !isIO && (register >> 1) & 0x3 == 0x2 {
          if i + 1 >= count { bar.isBroken = true } else { hwUpper = config.u32(0x10 + 4 * (i + 1)) ?? 0 }
        }
      }
      if let resource, sameSpace, position != 0, hwLower == 0, hwUpper == 0,
        resource.flags & PCIResource.ioresourceEnhanced == 0
      {
        bar.isVirtual = true
      }

      if isIO {
        bar.address = resources != nil ? position & ~0x3 : UInt64(hwLower & ~0x3)
        bar.isDisabled = command & 0x1 == 0
        bar.isIgnored = bar.address == 0 && bar.isDisabled && hwLower != 0
      } else {
        bar.memoryType =
          switch (flags >> 1) & 0x3 {
          case 0: .bits32
          case 1: .below1M
          case 2: .bits64
          default: .reserved
          }
        bar.prefetchable = flags & 0x8 != 0
        let registerAddress = UInt64(hwLower & ~0xf) | UInt64(hwUpper) << 32
        bar.address = resources != nil ? position & ~0xf : registerAddress
        bar.isDisabled = command & 0x2 == 0
        bar.isIgnored = bar.address == 0 && (hwLower != 0 || hwUpper != 0)
      }
      bars.append(bar)
      // Without the OS's table, the upper half of a 64-bit BAR is not a BAR of its own.
      if resources == nil && bar.memoryType == .bits64 { i += 1 }
    }
    return bars
  }
}
