/// What sysfs says about one PCI function (Documentation/ABI/testing/sysfs-bus-pci):
/// its id, its driver, its IOMMU group and the group's other members, its
/// resources and UIO node; and who holds a device node open (`/proc/PID/fd`).
///
/// Everything is read through a ``HostEnvironment``, so a fixture tree shaped
/// like `/sys` stands in for the real one in tests. Paths are the ones a
/// person would type; the environment resolves them.
public struct PCIFunctionSysfs: Sendable {
  /// Every PCI function, one folder each.
  public static let devices = "/sys/bus/pci/devices"
  /// Every PCI driver, one folder each, with its `bind` and `unbind` files.
  public static let drivers = "/sys/bus/pci/drivers"
  /// Writing an address here makes the kernel probe drivers for it.
  public static let driversProbe = "/sys/bus/pci/drivers_probe"

  /// `/sys/bus/pci/drivers/vfio-pci`.
  public static func driver(_ name: String) -> String { "\(drivers)/\(name)" }

  /// The folder listing IOMMU group `group`'s functions.
  public static func iommuGroupDevices(_ group: Int) -> String { "/sys/kernel/iommu_groups/\(group)/devices" }

  /// `DDDD:BB:DD.F`, as sysfs names it.
  public let address: String
  public let host: HostEnvironment

  /// `BB:DD.F` becomes `0000:BB:DD.F`.
  public init(_ address: String, host: HostEnvironment = .live) {
    self.address = address.split(separator: ":").count == 2 ? "0000:" + address.lowercased() : address.lowercased()
    self.host = host
  }

  /// `/sys/bus/pci/devices/0000:00:05.0`.
  public var path: String { "\(Self.devices)/\(address)" }

  /// Whether sysfs shows the function (its `vendor` attribute reads).
  public var exists: Bool { host.readText("\(path)/vendor") != nil }

  /// `1af4:1110`, from the `vendor` and `device` attributes (`0x1af4`).
  public var id: String? {
    guard let vendor = host.readText("\(path)/vendor"), let device = host.readText("\(path)/device") else {
      return nil
    }
    return "\(vendor.dropFirst(2)):\(device.dropFirst(2))"
  }

  /// The bound driver's name (the `driver` link's last component), `nil` when unbound.
  public var driver: String? { host.linkName("\(path)/driver") }

  /// `driver_override`, when set (`(null)` in sysfs means unset).
  public var driverOverride: String? {
    guard let s = host.readText("\(path)/driver_override"), !s.isEmpty, s != "(null)" else { return nil }
    return s
  }

  /// The IOMMU group number, from the `iommu_group` link; `nil` without an IOMMU.
  public var iommuGroup: Int? { host.linkName("\(path)/iommu_group").flatMap { Int($0) } }

  /// The functions in IOMMU group `group`, with their drivers.
  public static func groupMembers(_ group: Int, host: HostEnvironment = .live) -> [(address: String, driver: String?)] {
    host.list(iommuGroupDevices(group)).map { member in
      (member, PCIFunctionSysfs(member, host: host).driver)
    }
  }

  /// `uio0` for a device bound to a UIO driver (the `uio/` directory's entry).
  public var uioName: String? { host.list("\(path)/uio").first { $0.hasPrefix("uio") } }

  /// The BAR files, `resource0` … (not the `_wc` variants nor the `resource` table).
  public var resourceFiles: [String] {
    host.list(path).filter { $0.hasPrefix("resource") && Int($0.dropFirst("resource".count)) != nil }
  }

  /// Every PCI function sysfs lists, sorted.
  public static func present(host: HostEnvironment = .live) -> [String] { host.list(devices) }

  /// Resource `index` from the `resource` table: one line per BAR (then ROM,
  /// bridge windows), `start end flags` in hex (drivers/pci/pci-sysfs.c,
  /// resource_show). Flags are IORESOURCE_* (include/linux/ioport.h).
  public func resource(_ index: Int) -> (start: UInt64, end: UInt64, flags: UInt64)? {
    guard let table = host.readText("\(path)/resource", limit: 8192) else { return nil }
    let lines = table.split(separator: "\n")
    guard index < lines.count else { return nil }
    let fields = lines[index].split(separator: " ").map { UInt64($0.dropFirst(2), radix: 16) }
    guard fields.count >= 3, let start = fields[0], let end = fields[1], let flags = fields[2] else { return nil }
    return (start, end, flags)
  }

  /// IORESOURCE_IO and IORESOURCE_MEM (include/linux/ioport.h).
  public static let resourceIO: UInt64 = 0x100
  public static let resourceMemory: UInt64 = 0x200

  /// The processes that hold `devicePath` (`/dev/vfio/7`) open, found in
  /// every `/proc/PID/fd` this user may read (others' need root or the same
  /// user): pid and `comm`, once per process.
  public static func holders(of devicePath: String, host: HostEnvironment = .live) -> [(pid: Int32, command: String)] {
    var seen = Set<Int32>()
    return host.processFiles { $0 == devicePath }.files.compactMap { f in
      seen.insert(f.pid).inserted ? (f.pid, f.command) : nil
    }
  }
}
