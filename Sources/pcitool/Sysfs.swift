import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Where bind, unbind and status find sysfs and /dev.
///
/// The defaults are `/sys` and `/dev`. For tests only, `PCITOOL_SYSFS_ROOT` and
/// `PCITOOL_DEV_ROOT` point them at fixture trees in a temporary folder, and
/// `PCITOOL_FIXTURE_KERNEL=1` makes writes to `bind`, `unbind`, `drivers_probe`
/// and `driver_override` edit that tree the way the kernel would (see
/// ``FixtureKernel``). The fixture kernel is never used on `/sys`.
struct SystemPaths {
  var sysfs = "/sys"
  var dev = "/dev"
  var fixtureKernel = false

  static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> SystemPaths {
    var paths = SystemPaths()
    if let root = environment["PCITOOL_SYSFS_ROOT"], !root.isEmpty { paths.sysfs = root }
    if let root = environment["PCITOOL_DEV_ROOT"], !root.isEmpty { paths.dev = root }
    paths.fixtureKernel =
      environment["PCITOOL_FIXTURE_KERNEL"] == "1" && FS.realPath(paths.sysfs).map { $0 != "/sys" } ?? true
    return paths
  }

  var devices: String { sysfs + "/bus/pci/devices" }
  var drivers: String { sysfs + "/bus/pci/drivers" }
  var driversProbe: String { sysfs + "/bus/pci/drivers_probe" }
  func device(_ address: String) -> String { devices + "/" + address }
  func driver(_ name: String) -> String { drivers + "/" + name }
  func iommuGroup(_ group: Int) -> String { sysfs + "/kernel/iommu_groups/\(group)/devices" }
  func vfioGroup(_ group: Int) -> String { dev + "/vfio/\(group)" }
  var vfioContainer: String { dev + "/vfio/vfio" }

  /// The kernel interface this configuration writes through.
  var kernel: any Kernel { fixtureKernel ? FixtureKernel(paths: self) : LiveKernel() }
}

/// Small file-system reads, all of which answer `nil` or empty when the file is not there.
enum FS {
  /// A sysfs attribute without its trailing newline.
  static func read(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// The last component of a symlink's target: the driver of `.../driver`, the group of `.../iommu_group`.
  static func linkName(_ path: String) -> String? {
    readLink(path)?.split(separator: "/").last.map(String.init)
  }

  static func readLink(_ path: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = buffer.withUnsafeMutableBufferPointer { b in
      b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { readlink(path, $0, b.count - 1) }
    }
    guard n > 0 else { return nil }
    return String(decoding: buffer[..<n], as: UTF8.self)
  }

  static func list(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
  }

  static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

  static func isDirectory(_ path: String) -> Bool {
    var s = stat()
    return stat(path, &s) == 0 && (s.st_mode & S_IFMT) == S_IFDIR
  }

  static func realPath(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
  }

  /// Writes `text` in one `write(2)`, as `echo` into a sysfs file does; the
  /// kernel answers a failed bind or unbind with the write's errno.
  static func write(_ text: String, to path: String) throws(AttributeWriteError) {
    let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
    guard fd >= 0 else { throw AttributeWriteError(path: path, text: text, errno: errno) }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    guard n == bytes.count else { throw AttributeWriteError(path: path, text: text, errno: n < 0 ? errno : EIO) }
  }
}

/// A write to a sysfs attribute that the kernel refused.
struct AttributeWriteError: Error, CustomStringConvertible {
  var path: String
  var text: String
  var errno: Int32

  var isPermission: Bool { errno == EACCES || errno == EPERM }
  var reason: String { String(cString: strerror(errno)) }
  var description: String {
    "writing '\(text.trimmingCharacters(in: .newlines))' to \(path) failed: \(reason) (errno \(errno))"
  }
}

/// What binding needs from the kernel: attribute writes and module loading.
/// ``LiveKernel`` does them; ``FixtureKernel`` also plays the kernel's part on a fixture tree.
protocol Kernel {
  func write(_ text: String, to path: String) throws(AttributeWriteError)
  /// Loads a module; `nil` when it worked, else what went wrong.
  func loadModule(_ name: String) -> String?
}

struct LiveKernel: Kernel {
  func write(_ text: String, to path: String) throws(AttributeWriteError) { try FS.write(text, to: path) }

  func loadModule(_ name: String) -> String? {
    let candidates =
      ["/usr/sbin/modprobe", "/sbin/modprobe"]
      + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/modprobe" }
    guard let modprobe = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
      return "modprobe is not installed (Debian: apt-get install kmod)"
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: modprobe)
    p.arguments = [name]
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    do { try p.run() } catch { return "\(modprobe) could not be started: \(error.localizedDescription)" }
    let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    if p.terminationStatus == 0 { return nil }
    let message = text.split(separator: "\n").joined(separator: "; ")
    return "modprobe \(name) exited with status \(p.terminationStatus)" + (message.isEmpty ? "" : ": \(message)")
  }
}

/// The kernel's side of driver binding, acted out on a fixture tree, for tests.
///
/// The tree mirrors `/sys`: `bus/pci/devices/ADDR/` with regular files for
/// attributes, `bus/pci/drivers/NAME/{bind,unbind}`, `bus/pci/drivers_probe`,
/// and `ADDR/driver` a symlink to the driver's folder. Each write goes to the
/// file (so a read-only file gives EACCES as sysfs would), then:
/// - `driver_override`: stored, and read back as `(null)` when cleared;
/// - `drivers/NAME/unbind`, `ADDR/driver/unbind`: the `driver` link goes;
/// - `drivers/NAME/bind`: the link appears if the device is unbound and its
///   override is unset or NAME; else EBUSY or ENODEV, as the kernel answers;
/// - `drivers_probe`: binds the override's driver, or without one the driver
///   named in `ADDR/.fixture-default-driver`.
/// A driver folder holding `.fixture-refuse` fails every probe (ENODEV), so no
/// link appears. `modprobe NAME` works when `.fixture/modules/NAME` exists
/// under the root, and creates the driver's folder.
struct FixtureKernel: Kernel {
  var paths: SystemPaths

  func write(_ text: String, to path: String) throws(AttributeWriteError) {
    try FS.write(text, to: path)
    let value = text.trimmingCharacters(in: CharacterSet(charactersIn: "\n\0 "))
    func fail(_ code: Int32) -> AttributeWriteError { AttributeWriteError(path: path, text: text, errno: code) }
    let name = (path as NSString).lastPathComponent
    let parent = FS.realPath((path as NSString).deletingLastPathComponent) ?? ""
    let driversDir = FS.realPath(paths.drivers) ?? paths.drivers
    switch name {
    case "driver_override":
      _ = try? FS.write(value.isEmpty ? "(null)\n" : value + "\n", to: path)
    case "drivers_probe":
      probe(value)
    case "bind" where (parent as NSString).deletingLastPathComponent == driversDir:
      let driver = (parent as NSString).lastPathComponent
      guard FS.isDirectory(paths.device(value)) else { throw fail(ENODEV) }
      guard FS.linkName(paths.device(value) + "/driver") == nil else { throw fail(EBUSY) }
      guard matches(value, driver), attach(value, driver) else { throw fail(ENODEV) }
    case "unbind" where (parent as NSString).deletingLastPathComponent == driversDir:
      let driver = (parent as NSString).lastPathComponent
      guard FS.linkName(paths.device(value) + "/driver") == driver else { throw fail(ENODEV) }
      unlink(paths.device(value) + "/driver")
      unlink(paths.driver(driver) + "/" + value)
    default:
      break
    }
  }

  func loadModule(_ name: String) -> String? {
    guard FS.exists(paths.sysfs + "/.fixture/modules/" + name) else {
      return "modprobe \(name) exited with status 1: modprobe: FATAL: Module \(name) not found in directory "
        + "/lib/modules/fixture"
    }
    let dir = paths.driver(name)
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for file in ["bind", "unbind", "new_id", "remove_id"] {
      _ = FileManager.default.createFile(atPath: dir + "/" + file, contents: nil)
    }
    return nil
  }

  private func override(_ address: String) -> String? {
    FS.read(paths.device(address) + "/driver_override").flatMap { $0.isEmpty || $0 == "(null)" ? nil : $0 }
  }

  private func matches(_ address: String, _ driver: String) -> Bool {
    override(address).map { $0 == driver } ?? true
  }

  private func attach(_ address: String, _ driver: String) -> Bool {
    guard FS.isDirectory(paths.driver(driver)), !FS.exists(paths.driver(driver) + "/.fixture-refuse") else {
      return false
    }
    symlink(paths.driver(driver), paths.device(address) + "/driver")
    symlink(paths.device(address), paths.driver(driver) + "/" + address)
    return true
  }

  private func probe(_ address: String) {
    guard FS.linkName(paths.device(address) + "/driver") == nil else { return }
    if let driver = override(address) {
      _ = attach(address, driver)
    } else if let driver = FS.read(paths.device(address) + "/.fixture-default-driver") {
      _ = attach(address, driver)
    }
  }
}

/// Polls `condition` every 10 ms until it holds or `seconds` have passed.
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while true {
    if condition() { return true }
    if Date() >= deadline { return false }
    usleep(10_000)
  }
}
