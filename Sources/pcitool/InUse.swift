import Foundation

#if canImport(Glibc)
  import Glibc
#endif

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
  static func scan(address: String, paths: SystemPaths, group: Int?) -> DeviceUsers {
    let deviceDir = paths.device(address)
    var prefixes: [String] = []
    if let real = FS.realPath(deviceDir) { prefixes.append(real + "/") }
    var exact: [String] = []
    if let group { exact.append(FS.realPath(paths.vfioGroup(group)) ?? paths.vfioGroup(group)) }
    for uio in FS.list(deviceDir + "/uio") {
      let node = paths.dev + "/" + uio
      exact.append(FS.realPath(node) ?? node)
    }
    func matches(_ path: String) -> Bool {
      exact.contains(path) || prefixes.contains { path.hasPrefix($0) }
    }

    var users = DeviceUsers()
    let me = getpid()
    for entry in FS.list("/proc") {
      guard let pid = Int32(entry), pid != me else { continue }
      let proc = "/proc/\(entry)"
      let fds: [String]
      do { fds = try FileManager.default.contentsOfDirectory(atPath: proc + "/fd") } catch {
        if FS.exists(proc) { users.uncheckedProcesses += 1 }
        continue
      }
      let command = FS.read(proc + "/comm") ?? "?"
      for fd in fds {
        if let target = FS.readLink(proc + "/fd/" + fd), matches(target) {
          users.holders.append(Holder(pid: pid, command: command, path: target))
        }
      }
      // A BAR mapped from resourceN stays in use after its fd is closed.
      if let maps = FS.read(proc + "/maps") {
        for line in maps.split(separator: "\n") {
          guard let slash = line.firstIndex(of: "/") else { continue }
          let path = String(line[slash...])
          if matches(path) { users.holders.append(Holder(pid: pid, command: command, path: path)) }
        }
      }
    }
    // A virtio NIC's interface hangs below its virtio device: ADDR/virtio2/net/eth0.
    let netDirs =
      [deviceDir + "/net"] + FS.list(deviceDir).filter { $0.hasPrefix("virtio") }.map { deviceDir + "/\($0)/net" }
    for dir in netDirs {
      for interface in FS.list(dir) {
        let flags = FS.read(dir + "/\(interface)/flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        if flags & 0x1 != 0 { users.upInterfaces.append(interface) }  // IFF_UP
      }
    }
    return users
  }
}
