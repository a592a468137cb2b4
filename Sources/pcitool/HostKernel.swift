import DeviceAccess
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

extension HostEnvironment {
  /// The reader bind, unbind and status use: `/sys` and `/dev`, or for tests
  /// only, the fixture trees `PCITOOL_SYSFS_ROOT` and `PCITOOL_DEV_ROOT` name.
  /// `/proc` is always the real one: the fixture's files are held by real processes.
  static func fromToolEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment)
    -> HostEnvironment
  {
    var host = HostEnvironment.live
    if let root = environment["PCITOOL_SYSFS_ROOT"], !root.isEmpty { host.sys = root }
    if let root = environment["PCITOOL_DEV_ROOT"], !root.isEmpty { host.dev = root }
    return host
  }

  /// The kernel bind and unbind write through: the real one, or with
  /// `PCITOOL_FIXTURE_KERNEL=1` (tests) ``FixtureHostKernel`` — never on the real `/sys`.
  func hostKernel(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> any HostKernel {
    let fixture = environment["PCITOOL_FIXTURE_KERNEL"] == "1" && canonicalPath("/sys").map { $0 != "/sys" } ?? true
    return fixture ? FixtureHostKernel(host: self) : LiveHostKernel(host: self)
  }
}

/// A write to a sysfs attribute that the kernel refused.
struct AttributeWriteError: Error, CustomStringConvertible {
  /// The file written, as opened.
  var path: String
  var text: String
  var errno: Int32

  var isPermission: Bool { errno == EACCES || errno == EPERM }
  var reason: String { String(cString: strerror(errno)) }
  var description: String {
    "writing '\(text.trimmingCharacters(in: .newlines))' to \(path) failed: \(reason) (errno \(errno))"
  }
}

/// What binding needs from the operating system's kernel: sysfs attribute
/// writes and module loading. ``LiveHostKernel`` does them; ``FixtureHostKernel``
/// also plays the kernel's part on a fixture tree.
protocol HostKernel {
  /// Writes `text` to the attribute at `path` (`/sys/...`, resolved by the reader).
  func write(_ text: String, to path: String) throws(AttributeWriteError)
  /// Loads a module; `nil` when it worked, else what went wrong.
  func loadModule(_ name: String) -> String?
}

extension HostKernel {
  /// Writes through `host`, naming the opened file in the error.
  fileprivate func write(_ text: String, to path: String, host: HostEnvironment) throws(AttributeWriteError) {
    do { try host.writeText(path, text) } catch {
      throw AttributeWriteError(path: host.resolve(path), text: text, errno: error.rawValue)
    }
  }
}

struct LiveHostKernel: HostKernel {
  var host: HostEnvironment

  func write(_ text: String, to path: String) throws(AttributeWriteError) { try write(text, to: path, host: host) }

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
struct FixtureHostKernel: HostKernel {
  /// Reads go through the one reader; only the kernel's own changes (links,
  /// driver folders) are made on the tree directly.
  var host: HostEnvironment

  private func device(_ address: String) -> PCIFunctionSysfs { PCIFunctionSysfs(address, host: host) }

  func write(_ text: String, to path: String) throws(AttributeWriteError) {
    try write(text, to: path, host: host)
    let value = text.trimmingCharacters(in: CharacterSet(charactersIn: "\n\0 "))
    func fail(_ code: Int32) -> AttributeWriteError {
      AttributeWriteError(path: host.resolve(path), text: text, errno: code)
    }
    let name = (path as NSString).lastPathComponent
    let parent = host.canonicalPath((path as NSString).deletingLastPathComponent) ?? ""
    let driversDir = host.canonicalPath(PCIFunctionSysfs.drivers) ?? host.resolve(PCIFunctionSysfs.drivers)
    switch name {
    case "driver_override":
      _ = try? host.writeText(path, value.isEmpty ? "(null)\n" : value + "\n")
    case "drivers_probe":
      probe(value)
    case "bind" where (parent as NSString).deletingLastPathComponent == driversDir:
      let driver = (parent as NSString).lastPathComponent
      guard host.isDirectory(device(value).path) else { throw fail(ENODEV) }
      guard device(value).driver == nil else { throw fail(EBUSY) }
      guard matches(value, driver), attach(value, driver) else { throw fail(ENODEV) }
    case "unbind" where (parent as NSString).deletingLastPathComponent == driversDir:
      let driver = (parent as NSString).lastPathComponent
      guard device(value).driver == driver else { throw fail(ENODEV) }
      unlink(host.resolve(device(value).path + "/driver"))
      unlink(host.resolve(PCIFunctionSysfs.driver(driver) + "/" + value))
    default:
      break
    }
  }

  func loadModule(_ name: String) -> String? {
    guard host.exists("/sys/.fixture/modules/" + name) else {
      return "modprobe \(name) exited with status 1: modprobe: FATAL: Module \(name) not found in directory "
        + "/lib/modules/fixture"
    }
    let dir = host.resolve(PCIFunctionSysfs.driver(name))
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for file in ["bind", "unbind", "new_id", "remove_id"] {
      _ = FileManager.default.createFile(atPath: dir + "/" + file, contents: nil)
    }
    return nil
  }

  private func matches(_ address: String, _ driver: String) -> Bool {
    device(address).driverOverride.map { $0 == driver } ?? true
  }

  private func attach(_ address: String, _ driver: String) -> Bool {
    let driverDir = PCIFunctionSysfs.driver(driver)
    guard host.isDirectory(driverDir), !host.exists(driverDir + "/.fixture-refuse") else { return false }
    let deviceDir = device(address).path
    symlink(host.resolve(driverDir), host.resolve(deviceDir + "/driver"))
    symlink(host.resolve(deviceDir), host.resolve(driverDir + "/" + address))
    return true
  }

  private func probe(_ address: String) {
    let function = device(address)
    guard function.driver == nil else { return }
    if let driver = function.driverOverride {
      _ = attach(address, driver)
    } else if let driver = host.readText(function.path + "/.fixture-default-driver") {
      _ = attach(address, driver)
    }
  }
}
