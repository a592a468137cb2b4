import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A sysfs and /dev tree in a temporary folder: regular files stand in for
/// attributes, symlinks for `driver` and `iommu_group`. pcitool runs on it with
/// PCITOOL_FIXTURE_KERNEL=1, which plays the kernel's part on writes to bind,
/// unbind, drivers_probe and driver_override (see FixtureHostKernel in HostKernel.swift).
final class SysfsFixture {
  let root: String
  var sysfs: String { root + "/sys" }
  var dev: String { root + "/dev" }
  var devices: String { sysfs + "/bus/pci/devices" }
  var drivers: String { sysfs + "/bus/pci/drivers" }

  init() throws {
    root = FileManager.default.temporaryDirectory.appendingPathComponent("pcitool-sysfs-\(UUID().uuidString)").path
    for dir in [devices, drivers, sysfs + "/kernel/iommu_groups", dev + "/vfio", sysfs + "/.fixture/modules"] {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    try write("", sysfs + "/bus/pci/drivers_probe")
    try write("", dev + "/vfio/vfio", mode: 0o666)
    // Readable by an unprivileged user, for the permission test.
    chmod(root, 0o755)
  }

  deinit { try? FileManager.default.removeItem(atPath: root) }

  var environment: [String: String] {
    [
      "PCITOOL_SYSFS_ROOT": sysfs, "PCITOOL_DEV_ROOT": dev, "PCITOOL_FIXTURE_KERNEL": "1",
      "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
    ]
  }

  func write(_ text: String, _ path: String, mode: mode_t = 0o644) throws {
    try FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, mode)
  }

  /// A driver folder; a refusing driver fails every probe, so no driver link appears.
  func addDriver(_ name: String, refuses: Bool = false) throws {
    for file in ["bind", "unbind", "new_id", "remove_id"] { try write("", drivers + "/\(name)/\(file)") }
    if refuses { try write("", drivers + "/\(name)/.fixture-refuse") }
  }

  /// A module `modprobe` can load (it creates the driver's folder).
  func addModule(_ name: String) throws { try write("", sysfs + "/.fixture/modules/\(name)") }

  func addDevice(
    _ address: String, id: (String, String) = ("0x1af4", "0x1110"), driver: String? = nil, override: String? = nil,
    group: Int? = nil, defaultDriver: String? = nil
  ) throws {
    let dir = devices + "/" + address
    try write(id.0 + "\n", dir + "/vendor")
    try write(id.1 + "\n", dir + "/device")
    try write("0x050000\n", dir + "/class")
    try write((override ?? "(null)") + "\n", dir + "/driver_override")
    try write(String(repeating: "\0", count: 64), dir + "/config")
    try write("", dir + "/resource0", mode: 0o600)
    try write("", dir + "/resource2", mode: 0o600)
    if let defaultDriver { try write(defaultDriver, dir + "/.fixture-default-driver") }
    if let driver {
      symlink(drivers + "/" + driver, dir + "/driver")
      symlink(dir, drivers + "/\(driver)/\(address)")
    }
    if let group {
      let groupDir = sysfs + "/kernel/iommu_groups/\(group)"
      try FileManager.default.createDirectory(atPath: groupDir + "/devices", withIntermediateDirectories: true)
      symlink(dir, groupDir + "/devices/\(address)")
      symlink(groupDir, dir + "/iommu_group")
      if !FileManager.default.fileExists(atPath: dev + "/vfio/\(group)") {
        try write("", dev + "/vfio/\(group)", mode: 0o660)
      }
    }
  }

  func driver(_ address: String) -> String? {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: devices + "/\(address)/driver"))
      .map { ($0 as NSString).lastPathComponent }
  }

  func override(_ address: String) -> String {
    (try? String(contentsOfFile: devices + "/\(address)/driver_override", encoding: .utf8))?
      .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
  }

  func pcitool(_ arguments: String...) throws -> PCIToolTests.Output {
    try PCIToolTests.run(PCIToolTests.pcitool, arguments, environment: environment)
  }

  /// The vGPU at 0000:00:05.0 on virtio-pci, with vfio-pci, uio_pci_generic and virtio-pci present.
  static func standard(vfioRefuses: Bool = false) throws -> SysfsFixture {
    let f = try SysfsFixture()
    try f.addDriver("virtio-pci")
    try f.addDriver("vfio-pci", refuses: vfioRefuses)
    try f.addDriver("uio_pci_generic")
    try f.addDevice("0000:00:05.0", driver: "virtio-pci", group: 7, defaultDriver: "virtio-pci")
    try f.addDevice("0000:00:03.0", id: ("0x1af4", "0x1041"), driver: "virtio-pci", group: 3)
    return f
  }
}

func json(_ text: String) -> [String: Any] {
  (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

func oneLine(_ r: PCIToolTests.Output) -> Bool { r.stderr.split(separator: "\n").count == 1 }

@Suite struct BindTests {
  @Test func bindGoesThroughDriverOverrideAndVerifies() throws {
    let f = try SysfsFixture.standard()
    let r = try f.pcitool("bind", "00:05.0", "vfio-pci")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.isEmpty)
    #expect(f.driver("0000:00:05.0") == "vfio-pci")
    #expect(f.override("0000:00:05.0") == "vfio-pci")
    #expect(r.stdout.contains("0000:00:05.0: driver_override: none → vfio-pci"))
    #expect(r.stdout.contains("0000:00:05.0: unbound from virtio-pci"))
    #expect(r.stdout.contains("0000:00:05.0: bound to vfio-pci (through drivers_probe)"))
    // The other device is untouched.
    #expect(f.driver("0000:00:03.0") == "virtio-pci")

    let again = try f.pcitool("bind", "0000:00:05.0", "vfio-pci", "--json")
    #expect(again.status == 0)
    let report = json(again.stdout)
    #expect(report["ok"] as? Bool == true)
    #expect(report["outcome"] as? String == "already bound")
  }

  @Test func bindJSONReportsBeforeAndAfter() throws {
    let f = try SysfsFixture.standard()
    let r = try f.pcitool("bind", "0000:00:05.0", "uio_pci_generic", "--json")
    #expect(r.status == 0, "\(r.stderr)")
    let report = json(r.stdout)
    #expect(report["command"] as? String == "bind")
    #expect(report["address"] as? String == "0000:00:05.0")
    #expect(report["driver"] as? String == "uio_pci_generic")
    #expect(report["ok"] as? Bool == true)
    #expect(report["outcome"] as? String == "bound")
    #expect((report["before"] as? [String: Any])?["driver"] as? String == "virtio-pci")
    #expect((report["before"] as? [String: Any])?["driverOverride"] is NSNull)
    #expect((report["after"] as? [String: Any])?["driver"] as? String == "uio_pci_generic")
    #expect((report["steps"] as? [String])?.count == 3)
    #expect(report["error"] is NSNull)
  }

  @Test func aFailedBindRollsBack() throws {
    let f = try SysfsFixture.standard(vfioRefuses: true)
    let r = try f.pcitool("bind", "0000:00:05.0", "vfio-pci", "--timeout", "0.2")
    #expect(r.status == 1)
    #expect(oneLine(r), "\(r.stderr)")
    #expect(r.stderr.contains("binding 0000:00:05.0 to vfio-pci failed"))
    #expect(r.stderr.contains("no driver link appeared"))
    #expect(r.stderr.contains("rolled back: bound to virtio-pci, driver_override none as before"))
    #expect(r.stdout.contains("rollback: driver_override restored to none"))
    #expect(r.stdout.contains("rollback: rebound to virtio-pci"))
    #expect(f.driver("0000:00:05.0") == "virtio-pci")
    #expect(f.override("0000:00:05.0") == "(null)")

    let j = try f.pcitool("bind", "0000:00:05.0", "vfio-pci", "--timeout", "0.2", "--json")
    #expect(j.status == 1)
    let report = json(j.stdout)
    #expect(report["ok"] as? Bool == false)
    #expect(report["outcome"] as? String == "rolled back")
    #expect((report["after"] as? [String: Any])?["driver"] as? String == "virtio-pci")
    #expect((report["error"] as? String)?.contains("rolled back") == true)
  }

  @Test func aRollbackThatCannotRebindSaysWhatToDo() throws {
    let f = try SysfsFixture.standard(vfioRefuses: true)
    // The old driver now refuses too, so the device is left without one.
    try f.write("", f.drivers + "/virtio-pci/.fixture-refuse")
    let r = try f.pcitool("bind", "0000:00:05.0", "vfio-pci", "--timeout", "0.2")
    #expect(r.status == 1)
    #expect(oneLine(r))
    #expect(r.stderr.contains("rollback incomplete"))
    #expect(r.stderr.contains("could not be rebound to virtio-pci"))
    #expect(r.stderr.contains("drivers_probe"))
    #expect(f.driver("0000:00:05.0") == nil)
    #expect(f.override("0000:00:05.0") == "(null)")
  }

  @Test func anUnboundDeviceIsBoundAndAFailureLeavesNoOverride() throws {
    let f = try SysfsFixture.standard(vfioRefuses: true)
    try f.addDevice("0000:00:06.0")
    let r = try f.pcitool("bind", "0000:00:06.0", "vfio-pci", "--timeout", "0.1")
    #expect(r.status == 1)
    #expect(r.stderr.contains("rolled back: no driver, driver_override none as before"))
    #expect(f.override("0000:00:06.0") == "(null)")
    let ok = try f.pcitool("bind", "0000:00:06.0", "uio_pci_generic")
    #expect(ok.status == 0, "\(ok.stderr)")
    #expect(!ok.stdout.contains("unbound"))
    #expect(f.driver("0000:00:06.0") == "uio_pci_generic")
  }

  @Test func aDeviceInUseIsRefusedUnlessForced() throws {
    let f = try SysfsFixture.standard()
    // This test process holds the device's config file open, as lspci or a mapping library would.
    let held = try #require(FileHandle(forReadingAtPath: f.devices + "/0000:00:05.0/config"))
    defer { try? held.close() }
    let r = try f.pcitool("bind", "0000:00:05.0", "vfio-pci")
    #expect(r.status == 1)
    #expect(oneLine(r))
    #expect(r.stderr.contains("0000:00:05.0 is in use: pid \(getpid())"))
    #expect(r.stderr.contains("/0000:00:05.0/config open"))
    #expect(r.stderr.contains("--force"))
    #expect(r.stderr.contains("nothing was changed"))
    #expect(f.driver("0000:00:05.0") == "virtio-pci")
    #expect(f.override("0000:00:05.0") == "(null)")

    let forced = try f.pcitool("bind", "0000:00:05.0", "vfio-pci", "--force", "--json")
    #expect(forced.status == 0, "\(forced.stderr)")
    let report = json(forced.stdout)
    #expect(report["forced"] as? Bool == true)
    #expect((report["steps"] as? [String])?.first?.hasPrefix("warning: 0000:00:05.0 is in use") == true)
    let holders = (report["users"] as? [String: Any])?["holders"] as? [[String: Any]] ?? []
    #expect(holders.contains { ($0["pid"] as? Int).map(Int32.init) == getpid() })
    #expect(f.driver("0000:00:05.0") == "vfio-pci")
  }

  @Test func anOpenVFIOGroupOrAnUpInterfaceMeansInUse() throws {
    let f = try SysfsFixture.standard()
    try f.addDevice("0000:00:06.0", driver: "vfio-pci", override: "vfio-pci", group: 9)
    let held = try #require(FileHandle(forUpdatingAtPath: f.dev + "/vfio/9"))
    defer { try? held.close() }
    let r = try f.pcitool("unbind", "0000:00:06.0")
    #expect(r.status == 1)
    #expect(r.stderr.contains("has \(f.dev)/vfio/9 open"))
    #expect(f.driver("0000:00:06.0") == "vfio-pci")

    try f.write("0x1003\n", f.devices + "/0000:00:03.0/virtio2/net/eth0/flags")
    let nic = try f.pcitool("bind", "0000:00:03.0", "vfio-pci")
    #expect(nic.status == 1)
    #expect(nic.stderr.contains("network interface eth0 is up"))
    try f.write("0x1002\n", f.devices + "/0000:00:03.0/virtio2/net/eth0/flags")
    #expect(try f.pcitool("bind", "0000:00:03.0", "vfio-pci").status == 0)
  }

  @Test func anUnknownDriverIsRefusedWithTheAvailableOnes() throws {
    let f = try SysfsFixture.standard()
    let r = try f.pcitool("bind", "0000:00:05.0", "nosuchdriver")
    #expect(r.status == 1)
    #expect(oneLine(r))
    #expect(r.stderr.contains("unknown driver 'nosuchdriver'"))
    #expect(r.stderr.contains("modprobe nosuchdriver exited with status 1"))
    #expect(r.stderr.contains("available drivers: uio_pci_generic, vfio-pci, virtio-pci"))
    #expect(f.driver("0000:00:05.0") == "virtio-pci")
    #expect(f.override("0000:00:05.0") == "(null)")
  }

  @Test func aMissingDriverIsLoadedWithModprobe() throws {
    let f = try SysfsFixture()
    try f.addDriver("virtio-pci")
    try f.addModule("vfio-pci")
    try f.addDevice("0000:00:05.0", driver: "virtio-pci", group: 7)
    let r = try f.pcitool("bind", "0000:00:05.0", "vfio-pci")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("loaded module vfio-pci (modprobe vfio-pci)"))
    #expect(f.driver("0000:00:05.0") == "vfio-pci")
  }

  @Test func anAbsentDeviceNamesThePresentOnes() throws {
    let f = try SysfsFixture.standard()
    for args in [["bind", "0000:00:09.0", "vfio-pci"], ["unbind", "0000:00:09.0"], ["status", "00:09.0"]] {
      let r = try PCIToolTests.run(PCIToolTests.pcitool, args, environment: f.environment)
      #expect(r.status == 1, "\(args)")
      #expect(oneLine(r))
      #expect(r.stderr.contains("no PCI device 0000:00:09.0; devices present: 0000:00:03.0, 0000:00:05.0"))
    }
  }

  @Test(arguments: [
    ["bind", "nonsense", "vfio-pci"], ["bind", "0000:00:05.0", "../x"], ["bind", "0000:00:05.0"],
    ["unbind"], ["status", "0000:00:05.0", "extra"], ["bind", "0000:00:05.0", "vfio-pci", "--timeout", "-1"],
  ])
  func badCommandLinesExitTwo(arguments: [String]) throws {
    let f = try SysfsFixture.standard()
    let r = try PCIToolTests.run(PCIToolTests.pcitool, arguments, environment: f.environment)
    #expect(r.status == 2, "\(arguments): \(r.stderr)")
    #expect(oneLine(r), "\(r.stderr)")
    #expect(f.driver("0000:00:05.0") == "virtio-pci")
  }

  @Test func permissionDeniedSaysRunAsRootOrUseTheUdevRule() throws {
    let f = try SysfsFixture.standard()
    var command = [PCIToolTests.pcitool.path]
    if getuid() == 0 {
      // Root writes read-only files anyway: run pcitool as nobody instead.
      guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { return }
      command = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + command
    } else {
      chmod(f.devices + "/0000:00:05.0/driver_override", 0o444)
    }
    let r = try PCIToolTests.run(
      URL(fileURLWithPath: command[0]), Array(command.dropFirst()) + ["bind", "0000:00:05.0", "vfio-pci"],
      environment: f.environment)
    #expect(r.status == 1)
    #expect(oneLine(r), "\(r.stderr)")
    #expect(r.stderr.contains("permission denied writing to \(f.devices)/0000:00:05.0/driver_override"))
    #expect(r.stderr.contains("run `sudo pcitool bind 0000:00:05.0 vfio-pci`"))
    #expect(r.stderr.contains("udev/70-vgpu.rules") && r.stderr.contains("tools/install-udev"))
    #expect(f.driver("0000:00:05.0") == "virtio-pci")
    #expect(f.override("0000:00:05.0") == "(null)")
  }

  @Test func unbindClearsTheOverrideAndUnbinds() throws {
    let f = try SysfsFixture.standard()
    #expect(try f.pcitool("bind", "0000:00:05.0", "vfio-pci").status == 0)
    let r = try f.pcitool("unbind", "0000:00:05.0", "--json")
    #expect(r.status == 0, "\(r.stderr)")
    let report = json(r.stdout)
    #expect(report["outcome"] as? String == "unbound")
    #expect(
      report["steps"] as? [String] == [
        "driver_override: vfio-pci → none", "unbound from vfio-pci; 0000:00:05.0 has no driver now",
      ])
    #expect(f.driver("0000:00:05.0") == nil)
    #expect(f.override("0000:00:05.0") == "(null)")

    let again = try f.pcitool("unbind", "0000:00:05.0")
    #expect(again.status == 0)
    #expect(again.stdout.contains("nothing to do"))
  }

  @Test func statusTellsDriverGroupNodesAndBackends() throws {
    let f = try SysfsFixture.standard()
    try f.addDevice("0000:00:05.1", id: ("0x1af4", "0x1041"), driver: "virtio-pci", group: 7)
    #expect(try f.pcitool("bind", "0000:00:05.0", "vfio-pci").status == 0)

    let r = try f.pcitool("status", "00:05.0")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.isEmpty)
    let lines = r.stdout.split(separator: "\n").map(String.init)
    #expect(lines.first?.hasPrefix("0000:00:05.0  1af4:1110") == true)
    #expect(lines.first?.contains("Inter-VM shared memory") == true, "names from pci.ids: \(lines.first ?? "")")
    #expect(lines.contains("  driver:           vfio-pci"))
    #expect(lines.contains("  driver_override:  vfio-pci"))
    #expect(lines.contains("  IOMMU group:      7"))
    #expect(lines.contains("  group members:    0000:00:05.1 (virtio-pci)"))
    #expect(lines.contains { $0.hasPrefix("  \(f.dev)/vfio/7:") && $0.contains(" 0660, read-write for ") })
    #expect(lines.contains { $0.hasPrefix("    vfio  no: IOMMU group 7 is not viable: 0000:00:05.1 (virtio-pci)") })
    #expect(lines.contains { $0.hasPrefix("    uio   no: bound to vfio-pci, not uio_pci_generic") })

    // With the other member unbound, the group is viable and VFIO works.
    #expect(try f.pcitool("unbind", "0000:00:05.1").status == 0)
    let j = try f.pcitool("status", "0000:00:05.0", "--json")
    #expect(j.status == 0)
    let status = json(j.stdout)
    #expect(status["address"] as? String == "0000:00:05.0")
    #expect(status["vendorID"] as? String == "1af4" && status["deviceID"] as? String == "1110")
    #expect(status["driver"] as? String == "vfio-pci")
    #expect(status["driverOverride"] as? String == "vfio-pci")
    #expect(status["iommuGroup"] as? Int == 7)
    let members = status["groupMembers"] as? [[String: Any]] ?? []
    #expect(members.count == 1 && members[0]["address"] as? String == "0000:00:05.1" && members[0]["driver"] is NSNull)
    let node = status["vfioGroup"] as? [String: Any] ?? [:]
    #expect(node["path"] as? String == f.dev + "/vfio/7")
    #expect(node["exists"] as? Bool == true && node["mode"] as? String == "0660")
    #expect((status["vfioContainer"] as? [String: Any])?["mode"] as? String == "0666")
    let backends = status["backends"] as? [[String: Any]] ?? []
    #expect(backends.compactMap { $0["name"] as? String } == ["vfio", "uio", "sysfs"])
    #expect(backends.first?["usable"] as? Bool == true, "\(backends)")
    #expect(status["user"] is [String: Any] && status["users"] is [String: Any])
  }

  @Test func statusWithoutAnIOMMUSaysSo() throws {
    let f = try SysfsFixture.standard()
    try f.addDevice("0000:00:06.0", driver: "uio_pci_generic")
    try f.write("", f.devices + "/0000:00:06.0/uio/uio0/name")
    try f.write("", f.dev + "/uio0", mode: 0o600)
    let r = try f.pcitool("status", "0000:00:06.0", "--json")
    #expect(r.status == 0)
    let status = json(r.stdout)
    #expect(status["iommuGroup"] is NSNull && status["vfioGroup"] is NSNull)
    let backends = status["backends"] as? [[String: Any]] ?? []
    #expect((backends.first?["reason"] as? String)?.hasPrefix("no IOMMU group") == true)
    if getuid() == 0 {
      #expect(backends.map { $0["usable"] as? Bool } == [false, true, true], "\(backends)")
    }
  }

  @Test func helpListsTheNewCommands() throws {
    let r = try PCIToolTests.pcitool("--help")
    for word in ["bind", "unbind", "status"] { #expect(r.stdout.contains(word)) }
    let bind = try PCIToolTests.pcitool("bind", "--help")
    #expect(bind.status == 0)
    for word in ["driver_override", "--force", "--json", "Exit status"] { #expect(bind.stdout.contains(word)) }
  }
}
