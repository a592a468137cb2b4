import DeviceAccess
import Foundation
import PCI

#if canImport(Glibc)
  import Glibc
#endif

/// How a device is bound, and everything else that decides whether this user
/// can map it, read from sysfs and /dev (`pcitool status`).
struct BindingStatus: Encodable {
  struct Member: Encodable {
    var address: String
    var driver: String?
    enum CodingKeys: String, CodingKey { case address, driver }
    func encode(to encoder: any Encoder) throws {
      var c = encoder.container(keyedBy: CodingKeys.self)
      try c.encode(address, forKey: .address)
      try c.encode(driver, forKey: .driver)
    }
  }

  /// A device node: who owns it and whether this user may read and write it.
  struct Node: Encodable {
    /// The file as opened (a fixture tree's path in tests).
    var path: String
    var exists: Bool
    var owner: String?
    var group: String?
    /// Permission bits in octal, e.g. `0660`.
    var mode: String?
    var readWrite: Bool

    init(_ path: String, host: HostEnvironment) {
      self.path = host.resolve(path)
      let facts = host.facts(path)
      exists = facts != nil
      readWrite = exists && host.isReadWrite(path)
      guard let facts else { return }
      owner = facts.owner
      group = facts.group
      mode = String(format: "%04o", facts.mode & 0o7777)
    }

    /// `root:vgpu 0660`.
    var ownership: String { "\(owner ?? "?"):\(group ?? "?") \(mode ?? "?")" }
  }

  struct Backend: Encodable {
    var name: String
    var usable: Bool
    /// Why not, and what to do; or what makes it work.
    var reason: String
  }

  struct User: Encodable {
    var uid: UInt32
    var name: String
  }

  var address: String
  var vendorID: String?
  var deviceID: String?
  var vendor: String?
  var device: String?
  var driver: String?
  var driverOverride: String?
  var iommuGroup: Int?
  /// The other functions in the IOMMU group, with their drivers.
  var groupMembers: [Member]
  var vfioGroup: Node?
  var vfioContainer: Node
  var users: DeviceUsers
  var user: User
  var backends: [Backend]

  enum CodingKeys: String, CodingKey {
    case address, vendorID, deviceID, vendor, device, driver, driverOverride, iommuGroup, groupMembers
    case vfioGroup, vfioContainer, users, user, backends
  }
  func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(address, forKey: .address)
    try c.encode(vendorID, forKey: .vendorID)
    try c.encode(deviceID, forKey: .deviceID)
    try c.encode(vendor, forKey: .vendor)
    try c.encode(device, forKey: .device)
    try c.encode(driver, forKey: .driver)
    try c.encode(driverOverride, forKey: .driverOverride)
    try c.encode(iommuGroup, forKey: .iommuGroup)
    try c.encode(groupMembers, forKey: .groupMembers)
    try c.encode(vfioGroup, forKey: .vfioGroup)
    try c.encode(vfioContainer, forKey: .vfioContainer)
    try c.encode(users, forKey: .users)
    try c.encode(user, forKey: .user)
    try c.encode(backends, forKey: .backends)
  }

  init(_ d: PCIFunctionSysfs) {
    let host = d.host
    address = d.address
    if let id = d.deviceID {
      vendorID = String(format: "%04x", id.vendor)
      deviceID = String(format: "%04x", id.device)
      let names = PCIIDNames.lookup(id)
      vendor = names.vendor
      device = names.device
    }
    driver = d.driver
    driverOverride = d.driverOverride
    iommuGroup = d.iommuGroup
    groupMembers =
      iommuGroup.map { group in
        PCIFunctionSysfs.groupMembers(group, host: host).filter { $0.address != d.address }.map {
          Member(address: $0.address, driver: $0.driver)
        }
      } ?? []
    vfioGroup = iommuGroup.map { Node("/dev/vfio/\($0)", host: host) }
    vfioContainer = Node(VFIOContainer.path, host: host)
    users = DeviceUsers.scan(d)
    let uid = getuid()
    user = User(uid: uid, name: getpwuid(uid).map { String(cString: $0.pointee.pw_name) } ?? String(uid))
    backends = []
    backends = [vfioBackend(), uioBackend(d), sysfsBackend(d)]
  }

  private var permissionAdvice: String {
    "install the udev rules (tools/install-udev installs udev/70-vgpu.rules) and add \(user.name) to group vgpu, "
      + "or run as root"
  }

  private func vfioBackend() -> Backend {
    func no(_ why: String) -> Backend { Backend(name: "vfio", usable: false, reason: why) }
    guard let group = iommuGroup, let node = vfioGroup else {
      return no(
        "no IOMMU group: the kernel has no IOMMU for this device (boot with intel_iommu=on; a VM needs an "
          + "emulated IOMMU, e.g. -device intel-iommu)")
    }
    guard driver == "vfio-pci" else {
      return no("bound to \(driver ?? "no driver"), not vfio-pci: run `pcitool bind \(address) vfio-pci`")
    }
    let blockers = groupMembers.filter { m in m.driver.map { !VFIOGroup.harmlessDrivers.contains($0) } ?? false }
    guard blockers.isEmpty else {
      let list = blockers.map { "\($0.address) (\($0.driver ?? ""))" }.joined(separator: ", ")
      return no("IOMMU group \(group) is not viable: \(list) must be bound to vfio-pci or unbound too")
    }
    guard vfioContainer.exists else { return no("\(vfioContainer.path) is missing: load vfio (modprobe vfio-pci)") }
    guard node.exists else { return no("\(node.path) is missing although \(address) is bound to vfio-pci") }
    for n in [vfioContainer, node] where !n.readWrite {
      return no("permission denied: \(n.path) is \(n.ownership); \(permissionAdvice)")
    }
    let holders = users.holders.filter { $0.path.hasSuffix("/vfio/\(group)") }
    if let h = holders.first {
      return no("busy: pid \(h.pid) (\(h.command)) has \(node.path) open, and a VFIO group opens only once")
    }
    return Backend(
      name: "vfio", usable: true, reason: "bound to vfio-pci, group \(group) viable, \(node.path) read-write")
  }

  private func uioBackend(_ d: PCIFunctionSysfs) -> Backend {
    func no(_ why: String) -> Backend { Backend(name: "uio", usable: false, reason: why) }
    guard driver == "uio_pci_generic" else {
      return no("bound to \(driver ?? "no driver"), not uio_pci_generic: run `pcitool bind \(address) uio_pci_generic`")
    }
    guard let uio = d.uioName else { return no("\(d.dir)/uio has no uioN entry") }
    let node = Node("/dev/" + uio, host: d.host)
    guard node.exists else { return no("\(node.path) is missing") }
    guard node.readWrite else { return no("permission denied: \(node.path) is \(node.ownership); \(permissionAdvice)") }
    if let locked = d.resourceFiles.map({ Node(d.path + "/" + $0, host: d.host) }).first(where: { !$0.readWrite }) {
      return no(
        "permission denied: \(locked.path) (the BARs are mapped through it) is \(locked.ownership); run as root")
    }
    return Backend(name: "uio", usable: true, reason: "bound to uio_pci_generic, \(node.path) read-write")
  }

  private func sysfsBackend(_ d: PCIFunctionSysfs) -> Backend {
    func no(_ why: String) -> Backend { Backend(name: "sysfs", usable: false, reason: why) }
    let files = d.resourceFiles
    guard !files.isEmpty else { return no("\(d.dir) has no resourceN files (no memory BARs to map)") }
    if let driver, !["uio_pci_generic", "vfio-pci", "pci-stub"].contains(driver) {
      return no("bound to \(driver), which drives the device itself: run `pcitool unbind \(address)` first")
    }
    if let locked = files.map({ Node(d.path + "/" + $0, host: d.host) }).first(where: { !$0.readWrite }) {
      return no("permission denied: \(locked.path) is \(locked.ownership); run as root")
    }
    return Backend(name: "sysfs", usable: true, reason: "\(files.joined(separator: ", ")) read-write")
  }

  var text: String {
    var out: [String] = []
    let names = [vendor, device].compactMap { $0 }.joined(separator: " ")
    out.append("\(address)  \(vendorID ?? "????"):\(deviceID ?? "????")  \(names.isEmpty ? "(unknown)" : names)")
    func field(_ name: String, _ value: String) {
      let label = name + ":"
      out.append("  " + label + String(repeating: " ", count: max(1, 18 - label.count)) + value)
    }
    field("driver", driver ?? "none")
    field("driver_override", driverOverride ?? "none")
    field("IOMMU group", iommuGroup.map(String.init) ?? "none (no IOMMU for this device)")
    if iommuGroup != nil {
      field(
        "group members",
        groupMembers.isEmpty
          ? "no others" : groupMembers.map { "\($0.address) (\($0.driver ?? "no driver"))" }.joined(separator: ", "))
    }
    for node in [vfioGroup, vfioContainer].compactMap({ $0 }) {
      field(
        node.path,
        node.exists
          ? "\(node.ownership), \(node.readWrite ? "read-write" : "not read-write") for \(user.name)" : "absent")
    }
    field("in use", users.inUse ? users.summary : "no")
    out.append("  backends for \(user.name) (uid \(user.uid)):")
    for b in backends {
      out.append(
        "    " + b.name.padding(toLength: 6, withPad: " ", startingAt: 0) + (b.usable ? "yes: " : "no: ") + b.reason)
    }
    return out.joined(separator: "\n")
  }
}
