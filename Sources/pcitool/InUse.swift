import DeviceAccess

/// Who is using a PCI device, so that bind and unbind do not pull it from
/// under a running program (dpdk-devbind refuses an active network device the
/// same way).
struct DeviceUsers: Encodable {
  struct Holder: Encodable, Equatable {
    var pid: Int32
    var command: String
    /// The file it holds open or mapped.
    var path: String
  }

  var holders: [Holder] = []
  /// Network interfaces of the device that are up.
  var upInterfaces: [String] = []
  /// Processes whose open files could not be read (other users' processes, without root).
  var uncheckedProcesses = 0

  var inUse: Bool { !holders.isEmpty || !upInterfaces.isEmpty }

  /// `pid 1234 (ollama) has /dev/vfio/7 open; interface eth0 is up`.
  var summary: String {
    var parts: [String] = []
    var seen = Set<String>()
    for h in holders where seen.insert("\(h.pid) \(h.path)").inserted {
      parts.append("pid \(h.pid) (\(h.command)) has \(h.path) open")
    }
    parts += upInterfaces.map { "network interface \($0) is up (ip link set \($0) down)" }
    return parts.joined(separator: "; ")
  }

  /// Scans `/proc/*/fd` and `/proc/*/maps` for the device's files (its sysfs
  /// folder: `config`, `resourceN`; its VFIO group; its UIO nodes), and the
  /// device's network interfaces for the up flag.
  static func scan(_ device: PCIFunctionSysfs) -> DeviceUsers {
    let host = device.host
    // /proc names files by their real paths.
    var prefixes: [String] = []
    if let real = host.canonicalPath(device.path) { prefixes.append(real + "/") }
    var nodes = host.list(device.path + "/uio").map { "/dev/" + $0 }
    if let group = device.iommuGroup { nodes.insert("/dev/vfio/\(group)", at: 0) }
    let exact = nodes.map { host.canonicalPath($0) ?? host.resolve($0) }

    var users = DeviceUsers()
    let found = host.processFiles(mappings: true) { path in
      exact.contains(path) || prefixes.contains { path.hasPrefix($0) }
    }
    users.holders = found.files.map { Holder(pid: $0.pid, command: $0.command, path: $0.path) }
    users.uncheckedProcesses = found.unreadable
    // A virtio NIC's interface hangs below its virtio device: ADDR/virtio2/net/eth0.
    let netDirs =
      [device.path + "/net"]
      + host.list(device.path).filter { $0.hasPrefix("virtio") }.map { device.path + "/\($0)/net" }
    for dir in netDirs {
      for interface in host.list(dir) {
        let flags = host.readText(dir + "/\(interface)/flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        if flags & 0x1 != 0 { users.upInterfaces.append(interface) }  // IFF_UP
      }
    }
    return users
  }
}
