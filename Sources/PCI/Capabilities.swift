/// One entry of a capability list, with the fields this project decodes.
///
/// Standard capabilities live in 0x40-0xff and are chained from the pointer at
/// 0x34 (PCI Local Bus Spec 3.0 §6.7); extended ones start at 0x100 with a
/// 32-bit header: ID 15:0, version 19:16, next 31:20 (PCIe Base Spec 6.0 §7.6.3).
public struct Capability: Sendable, Equatable, Codable {
  public var offset: Int
  public var id: UInt16
  public var isExtended: Bool
  /// Extended capabilities only: the header's version field.
  public var version: UInt8?
  /// The name `lspci -vv` gives this capability.
  public var name: String

  public var powerManagement: PowerManagementCapability?
  public var msi: MSICapability?
  public var msix: MSIXCapability?
  public var express: ExpressCapability?
  public var virtio: VirtioCapability?
  /// Vendor-specific capabilities: the length byte at offset 2.
  public var vendorLength: UInt8?

  init(offset: Int, id: UInt16, isExtended: Bool, version: UInt8? = nil) {
    self.offset = offset
    self.id = id
    self.isExtended = isExtended
    self.version = version
    self.name = isExtended ? Self.extendedName(id) : Self.standardName(UInt8(truncatingIfNeeded: id))
  }
}

/// PCI Bus Power Management Interface Spec 1.2 §3.2.
public struct PowerManagementCapability: Sendable, Equatable, Codable {
  /// PMC bits 2:0.
  public var version: UInt8
  /// PMCSR bits 1:0: the current D-state, 0-3.
  public var powerState: UInt8?
}

/// PCI Local Bus Spec 3.0 §6.8.1.
public struct MSICapability: Sendable, Equatable, Codable {
  public var enabled: Bool
  /// Vectors enabled (Multiple Message Enable) and supported (Multiple Message Capable).
  public var count: Int
  public var maxCount: Int
  public var is64Bit: Bool
  public var perVectorMasking: Bool
}

/// Where an MSI-X structure lives: a BAR (BIR) and an offset in it.
public struct BARLocation: Sendable, Equatable, Codable {
  public var bar: Int
  public var offset: UInt32
}

/// PCI Local Bus Spec 3.0 §6.8.2.
public struct MSIXCapability: Sendable, Equatable, Codable {
  public var enabled: Bool
  public var functionMasked: Bool
  /// Table Size + 1.
  public var vectorCount: Int
  public var table: BARLocation?
  public var pendingBitArray: BARLocation?
}

/// PCIe Base Spec 6.0 §7.5.3.2 (PCI Express Capabilities Register).
public struct ExpressCapability: Sendable, Equatable, Codable {
  public var version: UInt8
  /// Device/Port Type, bits 7:4.
  public var portType: UInt8
  /// lspci's words for the port type ("Endpoint", "Root Port (Slot+)").
  public var portTypeName: String
  public var slotImplemented: Bool
  public var interruptMessageNumber: UInt8
}

/// A virtio PCI structure capability (Virtio 1.2 §4.1.4, `struct virtio_pci_cap`).
public struct VirtioCapability: Sendable, Equatable, Codable {
  public var configType: UInt8
  /// `CommonCfg`, `Notify`, `ISR`, `DeviceCfg`, `SharedMemory`, or `<unknown>` like lspci.
  public var configTypeName: String
  public var bar: UInt8
  public var id: UInt8
  public var offset: UInt64
  public var length: UInt64
  /// `notify_off_multiplier`, for the Notify structure.
  public var notifyMultiplier: UInt32?
}

/// Something wrong with a capability chain, found while walking it.
public struct CapabilityChainProblem: Sendable, Equatable, Codable, CustomStringConvertible {
  public enum Kind: String, Sendable, Codable {
    /// A pointer leads back to an entry already seen.
    case looped
    /// An entry reads as all ones (ID 0xff): the device stopped answering.
    case broken
    /// A pointer outside the capability area, or not dword-aligned.
    case outOfRange
    /// A pointer beyond the bytes that could be read (unprivileged readers see 64).
    case unreadable
  }
  public var kind: Kind
  public var isExtended: Bool
  /// The pointer's value.
  public var offset: Int

  public var description: String {
    let list = isExtended ? "extended capability list" : "capability list"
    switch kind {
    case .looped: return "\(list) loops back to offset 0x\(hex(offset, width: 2))"
    case .broken: return "\(list) broken at offset 0x\(hex(offset, width: 2)) (reads as 0xff)"
    case .outOfRange: return "\(list) points out of range, to 0x\(hex(offset, width: 2))"
    case .unreadable: return "\(list) continues at 0x\(hex(offset, width: 2)), beyond what could be read (run as root)"
    }
  }
}

/// The decoded capability lists of one function.
public struct CapabilityList: Sendable, Equatable, Codable {
  public var capabilities: [Capability]
  public var problems: [CapabilityChainProblem]

  /// Walks both lists. Never reads past `config`, and never visits an offset
  /// twice, so a hostile or broken chain ends the walk with a problem entry.
  ///
  /// - Parameter deviceID: the function's vendor and device, which say how to
  ///   read vendor-specific capabilities (virtio's are 1af4:1000-107f).
  public init(config: ConfigSpace, deviceID: PCIDeviceID? = nil) {
    capabilities = []
    problems = []
    let id = deviceID ?? config.vendorID.flatMap { v in config.deviceID.map { PCIDeviceID(vendor: v, device: $0) } }
    var mayHaveExtended = false
    if config.hasCapabilityList, let first = config.capabilitiesPointer {
      var visited = Set<Int>()
      var pointer = Int(first & ~0x3)
      while pointer != 0 {
        // Standard capabilities live in the device-specific area 0x40-0xff.
        guard pointer >= 0x40, pointer <= 0xfc else {
          problems.append(.init(kind: .outOfRange, isExtended: false, offset: pointer))
          break
        }
        guard let capID = config.u8(pointer), let next = config.u8(pointer + 1) else {
          problems.append(.init(kind: .unreadable, isExtended: false, offset: pointer))
          break
        }
        guard visited.insert(pointer).inserted else {
          problems.append(.init(kind: .looped, isExtended: false, offset: pointer))
          break
        }
        guard capID != 0xff else {
          problems.append(.init(kind: .broken, isExtended: false, offset: pointer))
          break
        }
        var cap = Capability(offset: pointer, id: UInt16(capID), isExtended: false)
        Self.decodeStandard(&cap, config: config, deviceID: id)
        // Extended capabilities exist only behind PCI-X 2.0 or PCI Express (lspci does the same).
        if capID == 0x10 || capID == 0x07 { mayHaveExtended = true }
        capabilities.append(cap)
        pointer = Int(next & ~0x3)
      }
    }
    if mayHaveExtended && config.count > 0x100 {
      walkExtended(config)
    }
  }

  private mutating func walkExtended(_ config: ConfigSpace) {
    var visited = Set<Int>()
    var pointer = 0x100
    repeat {
      guard let header = config.u32(pointer) else {
        problems.append(.init(kind: .unreadable, isExtended: true, offset: pointer))
        return
      }
      // An absent list reads as 0 (or all ones on some bridges): not a problem.
      if header == 0 || header == 0xffff_ffff {
        if pointer != 0x100 { problems.append(.init(kind: .broken, isExtended: true, offset: pointer)) }
        return
      }
      guard visited.insert(pointer).inserted else {
        problems.append(.init(kind: .looped, isExtended: true, offset: pointer))
        return
      }
      capabilities.append(
        Capability(
          offset: pointer, id: UInt16(header & 0xffff), isExtended: true,
          version: UInt8((header >> 16) & 0xf)))
      let next = Int(header >> 20)
      if next != 0 && (next < 0x100 || next & 0x3 != 0) {
        problems.append(.init(kind: .outOfRange, isExtended: true, offset: next))
        return
      }
      pointer = next
    } while pointer != 0
  }

  private static func decodeStandard(_ cap: inout Capability, config: ConfigSpace, deviceID: PCIDeviceID?) {
    let at = cap.offset
    let control = config.u16(at + 2) ?? 0
    switch cap.id {
    case 0x01:
      cap.powerManagement = PowerManagementCapability(
        version: UInt8(control & 0x7), powerState: config.u16(at + 4).map { UInt8($0 & 0x3) })
    case 0x05:
      cap.msi = MSICapability(
        enabled: control & 0x1 != 0, count: 1 << Int((control >> 4) & 0x7),
        maxCount: 1 << Int((control >> 1) & 0x7), is64Bit: control & 0x80 != 0,
        perVectorMasking: control & 0x100 != 0)
    case 0x11:
      // Table and PBA: BIR in bits 2:0, a QWORD-aligned offset in the rest.
      func location(_ register: UInt32?) -> BARLocation? {
        register.map { BARLocation(bar: Int($0 & 0x7), offset: $0 & ~0x7) }
      }
      cap.msix = MSIXCapability(
        enabled: control & 0x8000 != 0, functionMasked: control & 0x4000 != 0,
        vectorCount: Int(control & 0x7ff) + 1, table: location(config.u32(at + 4)),
        pendingBitArray: location(config.u32(at + 8)))
    case 0x10:
      let type = UInt8((control >> 4) & 0xf)
      let slot = control & 0x100 != 0
      cap.express = ExpressCapability(
        version: UInt8(control & 0xf), portType: type, portTypeName: expressPortTypeName(type, slot: slot),
        slotImplemented: slot, interruptMessageNumber: UInt8((control >> 9) & 0x1f))
    case 0x09:
      let length = config.u8(at + 2) ?? 0
      cap.vendorLength = length
      if let deviceID, deviceID.vendor == 0x1af4, (0x1000...0x107f).contains(deviceID.device) {
        cap.virtio = decodeVirtio(config: config, at: at, length: Int(length))
      }
    default:
      break
    }
  }

  /// Virtio 1.2 §4.1.4: cfg_type at +3, bar +4, id +5, offset +8, length +12;
  /// the Notify structure adds its multiplier at +16, shared memory (type 8)
  /// the upper halves of offset and length at +16 and +20.
  private static func decodeVirtio(config: ConfigSpace, at: Int, length: Int) -> VirtioCapability? {
    guard length >= 16, at + length <= config.count, let type = config.u8(at + 3), let bar = config.u8(at + 4),
      let id = config.u8(at + 5), let offset = config.u32(at + 8), let size = config.u32(at + 12)
    else { return nil }
    var cap = VirtioCapability(
      configType: type, configTypeName: virtioTypeName(type), bar: bar, id: id, offset: UInt64(offset),
      length: UInt64(size), notifyMultiplier: nil)
    if type == 2, length >= 20 { cap.notifyMultiplier = config.u32(at + 16) }
    if type == 8, length >= 24, let hiOffset = config.u32(at + 16), let hiLength = config.u32(at + 20) {
      cap.offset |= UInt64(hiOffset) << 32
      cap.length |= UInt64(hiLength) << 32
    }
    return cap
  }

  static func virtioTypeName(_ type: UInt8) -> String {
    switch type {
    case 1: "CommonCfg"
    case 2: "Notify"
    case 3: "ISR"
    case 4: "DeviceCfg"
    case 8: "SharedMemory"
    default: "<unknown>"
    }
  }

  static func expressPortTypeName(_ type: UInt8, slot: Bool) -> String {
    let s = slot ? "+" : "-"
    return switch type {
    case 0x0: "Endpoint"
    case 0x1: "Legacy Endpoint"
    case 0x4: "Root Port (Slot\(s))"
    case 0x5: "Upstream Port"
    case 0x6: "Downstream Port (Slot\(s))"
    case 0x7: "PCI-Express to PCI/PCI-X Bridge"
    case 0x8: "PCI/PCI-X to PCI-Express Bridge (Slot\(s))"
    case 0x9: "Root Complex Integrated Endpoint"
    case 0xa: "Root Complex Event Collector"
    default: "Unknown type \(type)"
    }
  }
}

extension Capability {
  /// Standard capability IDs (PCI Code and ID Assignment Spec 1.11 §2), named as lspci names them.
  static func standardName(_ id: UInt8) -> String {
    switch id {
    case 0x00: "Null"
    case 0x01: "Power Management"
    case 0x02: "AGP"
    case 0x03: "Vital Product Data"
    case 0x04: "Slot ID"
    case 0x05: "MSI"
    case 0x06: "CompactPCI hot-swap"
    case 0x07: "PCI-X"
    case 0x08: "HyperTransport"
    case 0x09: "Vendor Specific Information"
    case 0x0a: "Debug port"
    case 0x0b: "CompactPCI central resource control"
    case 0x0c: "Hot-plug capable"
    case 0x0d: "Subsystem"
    case 0x0e: "AGP3"
    case 0x0f: "Secure device"
    case 0x10: "Express"
    case 0x11: "MSI-X"
    case 0x12: "SATA HBA"
    case 0x13: "PCI Advanced Features"
    case 0x14: "Enhanced Allocation (EA)"
    default: "Capability ID 0x\(hex(id, width: 2))"
    }
  }

  /// Extended capability IDs (PCI Code and ID Assignment Spec 1.11 §3), named as lspci names them.
  static func extendedName(_ id: UInt16) -> String {
    switch id {
    case 0x00: "Null"
    case 0x01: "Advanced Error Reporting"
    case 0x02, 0x09: "Virtual Channel"
    case 0x03: "Device Serial Number"
    case 0x04: "Power Budgeting"
    case 0x05: "Root Complex Link"
    case 0x06: "Root Complex Internal Link"
    case 0x07: "Root Complex Event Collector Endpoint Association"
    case 0x08: "Multi-Function Virtual Channel"
    case 0x0a: "Root Complex Register Block"
    case 0x0b: "Vendor Specific Information"
    case 0x0d: "Access Control Services"
    case 0x0e: "Alternative Routing-ID Interpretation (ARI)"
    case 0x0f: "Address Translation Service (ATS)"
    case 0x10: "Single Root I/O Virtualization (SR-IOV)"
    case 0x11: "Multi-Root I/O Virtualization"
    case 0x12: "Multicast"
    case 0x13: "Page Request Interface (PRI)"
    case 0x15: "Physical Resizable BAR"
    case 0x16: "Dynamic Power Allocation"
    case 0x17: "Transaction Processing Hints"
    case 0x18: "Latency Tolerance Reporting"
    case 0x19: "Secondary PCI Express"
    case 0x1a: "Protocol Multiplexing"
    case 0x1b: "Process Address Space ID (PASID)"
    case 0x1c: "LN Requester"
    case 0x1d: "Downstream Port Containment"
    case 0x1e: "L1 PM Substates"
    case 0x1f: "Precision Time Measurement"
    case 0x20: "PCI Express over M_PHY"
    case 0x21: "FRS Queueing"
    case 0x22: "Readiness Time Reporting"
    case 0x23: "Designated Vendor-Specific"
    case 0x24: "VF Resizable BAR"
    case 0x25: "Data Link Feature"
    case 0x26: "Physical Layer 16.0 GT/s"
    case 0x27: "Lane Margining at the Receiver"
    case 0x28: "Hierarchy ID"
    case 0x29: "Native PCIe Enclosure Management"
    case 0x2a: "Physical Layer 32.0 GT/s"
    case 0x2e: "Data Object Exchange"
    case 0x2f: "Device 3"
    case 0x30: "Integrity & Data Encryption"
    case 0x31: "Physical Layer 64.0 GT/s"
    case 0x32: "Flit Logging"
    case 0x34: "Flit Error Injection"
    case 0x36: "MMIO Register Block Locator"
    default: "Extended Capability ID 0x\(hex(id, width: 2))"
    }
  }
}
