/// What sysfs says about one PCI function (Documentation/ABI/testing/sysfs-bus-pci):
/// its id, its driver, its IOMMU group and the group's other members, its
/// resources and UIO node; and who holds a device node open (`/proc/PID/fd`).
///
/// Everything is read through a ``HostEnvironment``, so a fixture tree shaped
/// like `/sys` stands in for the real one in tests.
public struct PCIFunctionSysfs: Sendable {
  public static let devices = "/sys/bus/pci/devices"

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
  public func groupMembers(_ group: Int) -> [(address: String, driver: String?)] {
    host.list("/sys/kernel/iommu_groups/\(group)/devices").map { member in
      (member, PCIFunctionSysfs(member, host: host).driver)
    }
  }

  /// `uio0` for a device bound to a UIO driver (the `uio/` directory's entry).
  public var uioName: String? { host.list("\(path)/uio").first { $0.hasPrefix("uio") } }

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

  /// The processes that hold `devicePath` (`/dev/vfio/7`) open, found by
  /// reading every `/proc/PID/fd/*` link this user may read (others' need
  /// root or the same user): pid and `comm`.
  public static func holders(of devicePath: String, host: HostEnvironment = .live) -> [(pid: Int32, command: String)] {
    var found: [(Int32, String)] = []
    let me = host.calls.getpid()
    for entry in host.list("/proc") {
      guard let pid = Int32(entry), pid != me else { continue }
      let fds = "/proc/\(entry)/fd"
      for fd in host.list(fds) where (try? host.calls.readlink(host.resolve("\(fds)/\(fd)"))) == devicePath {
        found.append((pid, host.readText("/proc/\(entry)/comm") ?? "?"))
        break
      }
    }
    return found
  }
}
