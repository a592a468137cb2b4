import DeviceAccess
import Foundation
import PCI

#if canImport(Glibc)
  import Glibc
#endif

extension PCIFunctionSysfs {
  /// The vendor:device ID, from the `vendor` and `device` attributes.
  var deviceID: PCIDeviceID? { id.flatMap { PCIDeviceID(parsing: $0) } }
  var binding: BindingState { BindingState(driver: driver, driverOverride: driverOverride) }
  /// The device's folder as opened, for messages (a fixture tree's path in tests).
  var dir: String { host.resolve(path) }

  /// The device at a user's address (`0000:00:05.0` or `00:05.0`): a bad
  /// address is a usage error; an absent device names the ones present.
  static func find(_ text: String, host: HostEnvironment) throws -> PCIFunctionSysfs {
    let address: PCIAddress
    do { address = try PCIAddress(parsing: text) } catch {
      throw ToolError(status: .usage, description: error.description)
    }
    let device = PCIFunctionSysfs(address.description, host: host)
    guard host.isDirectory(device.path) else {
      guard host.isDirectory(devices) else {
        throw ToolError(
          status: .failure, description: PCIError.noPCISubsystem(path: host.resolve(devices)).description)
      }
      let present = present(host: host).compactMap { try? PCIAddress(parsing: $0) }.sorted()
      throw ToolError(
        status: .failure, description: PCIError.noSuchDevice(address.description, present: present).description)
    }
    return device
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

/// Which driver a device has and which one its override names.
struct BindingState: Encodable, Equatable {
  var driver: String?
  var driverOverride: String?

  enum CodingKeys: String, CodingKey { case driver, driverOverride }
  func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(driver, forKey: .driver)
    try c.encode(driverOverride, forKey: .driverOverride)
  }
}

/// What bind or unbind did, step by step; printed as text or JSON.
struct BindReport: Encodable {
  var command: String
  var address: String
  /// The driver asked for (bind only).
  var driver: String?
  var ok = false
  /// `bound`, `already bound`, `unbound`, `nothing to do`, `rolled back`, `rollback incomplete`.
  var outcome = ""
  var before: BindingState
  var after: BindingState
  var forced = false
  var users: DeviceUsers?
  var steps: [String] = []
  var error: String?

  enum CodingKeys: String, CodingKey {
    case command, address, driver, ok, outcome, before, after, forced, users, steps, error
  }
  func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(command, forKey: .command)
    try c.encode(address, forKey: .address)
    try c.encode(driver, forKey: .driver)
    try c.encode(ok, forKey: .ok)
    try c.encode(outcome, forKey: .outcome)
    try c.encode(before, forKey: .before)
    try c.encode(after, forKey: .after)
    try c.encode(forced, forKey: .forced)
    try c.encode(users, forKey: .users)
    try c.encode(steps, forKey: .steps)
    try c.encode(error, forKey: .error)
  }
}

/// Binds and unbinds through `driver_override`, as driverctl does:
/// override → unbind the current driver → `drivers_probe` (then the driver's
/// `bind`, whose errno says why a probe failed) → verify the `driver` link →
/// on failure restore the old override and rebind the old driver.
struct Binder {
  var host: HostEnvironment
  var kernel: any HostKernel
  /// Bound on each wait for the kernel (the `driver` link to appear or go).
  var timeout: Double
  var force: Bool
  /// The command line, for advice such as "run sudo …".
  var commandLine: String

  func bind(_ device: PCIFunctionSysfs, to driver: String) throws -> BindReport {
    let address = device.address
    guard host.exists(device.path + "/driver_override") else {
      throw failure("\(address) has no driver_override attribute (it needs Linux 3.16 or later); nothing was changed")
    }
    let before = device.binding
    var report = BindReport(command: "bind", address: address, driver: driver, before: before, after: before)
    report.forced = force

    if !host.isDirectory(PCIFunctionSysfs.driver(driver)) {
      let available = host.list(PCIFunctionSysfs.drivers).joined(separator: ", ")
      if let problem = kernel.loadModule(driver) {
        throw failure(
          "unknown driver '\(driver)': there is no \(host.resolve(PCIFunctionSysfs.driver(driver))) and \(problem); "
            + "available drivers: \(available.isEmpty ? "none" : available); nothing was changed")
      }
      guard host.isDirectory(PCIFunctionSysfs.driver(driver)) else {
        throw failure(
          "modprobe \(driver) worked, but no PCI driver '\(driver)' appeared in \(host.resolve(PCIFunctionSysfs.drivers)); "
            + "available drivers: \(available.isEmpty ? "none" : available); nothing was changed")
      }
      report.steps.append("loaded module \(driver) (modprobe \(driver))")
    }

    if before.driver == driver && before.driverOverride == driver {
      report.ok = true
      report.outcome = "already bound"
      report.steps.append("\(address) is already bound to \(driver) (driver_override \(driver)); nothing to do")
      return report
    }

    try checkUsers(device, &report)

    do { try kernel.write(driver, to: device.path + "/driver_override") } catch {
      throw writeFailure(error)
    }
    report.steps.append("driver_override: \(before.driverOverride ?? "none") → \(driver)")

    if before.driver == driver {
      report.ok = true
      report.outcome = "bound"
      report.steps.append("\(address) was already bound to \(driver); the override keeps it there")
      report.after = device.binding
      return report
    }

    if let old = before.driver {
      do { try kernel.write(address, to: device.path + "/driver/unbind") } catch {
        return rollback(report, device, because: "unbinding from \(old): \(error)")
      }
      guard waitUntil(seconds: timeout, { device.driver == nil }) else {
        return rollback(report, device, because: "\(address) was still bound to \(old) \(timeout) s after unbind")
      }
      report.steps.append("unbound from \(old)")
    }

    var how = "drivers_probe"
    var bindError: AttributeWriteError?
    if host.exists(PCIFunctionSysfs.driversProbe) {
      do { try kernel.write(address, to: PCIFunctionSysfs.driversProbe) } catch { bindError = error }
      _ = waitUntil(seconds: timeout) { device.driver != nil }
    }
    if device.driver == nil {
      // The driver's own bind file answers with the probe's errno.
      how = "drivers/\(driver)/bind"
      do {
        try kernel.write(address, to: PCIFunctionSysfs.driver(driver) + "/bind")
        _ = waitUntil(seconds: timeout) { device.driver != nil }
      } catch { bindError = error }
    }

    guard let now = device.driver, now == driver else {
      let why: String
      if let now = device.driver {
        why = "\(address) was bound to \(now) instead of \(driver)"
      } else {
        let detail = bindError.map { "\($0.reason), errno \($0.errno)" } ?? "no error from the kernel"
        why = "no driver link appeared: \(driver) did not take \(address) (\(detail); dmesg may say why)"
      }
      if let bindError, bindError.isPermission {
        return rollback(report, device, because: writeFailure(bindError).description)
      }
      return rollback(report, device, because: why)
    }
    report.steps.append("bound to \(driver) (through \(how)); verified \(device.dir)/driver")
    report.ok = true
    report.outcome = "bound"
    report.after = device.binding
    return report
  }

  func unbind(_ device: PCIFunctionSysfs) throws -> BindReport {
    let address = device.address
    let before = device.binding
    var report = BindReport(command: "unbind", address: address, before: before, after: before)
    report.forced = force
    if before.driver == nil && before.driverOverride == nil {
      report.ok = true
      report.outcome = "nothing to do"
      report.steps.append("\(address) has no driver and no driver_override; nothing to do")
      return report
    }
    try checkUsers(device, &report)

    if let override = before.driverOverride {
      do { try kernel.write("\n", to: device.path + "/driver_override") } catch { throw writeFailure(error) }
      report.steps.append("driver_override: \(override) → none")
    }
    if let old = before.driver {
      do { try kernel.write(address, to: device.path + "/driver/unbind") } catch {
        if before.driverOverride == nil, error.isPermission { throw writeFailure(error) }
        return rollback(report, device, because: "unbinding from \(old): \(error)")
      }
      guard waitUntil(seconds: timeout, { device.driver == nil }) else {
        return rollback(report, device, because: "\(address) was still bound to \(old) \(timeout) s after unbind")
      }
      report.steps.append("unbound from \(old); \(address) has no driver now")
    }
    report.ok = true
    report.outcome = "unbound"
    report.after = device.binding
    return report
  }

  // MARK: Helpers

  private func failure(_ text: String) -> ToolError { ToolError(status: .failure, description: text) }

  /// Refuses a device in use unless forced (then says so in the steps).
  private func checkUsers(_ device: PCIFunctionSysfs, _ report: inout BindReport) throws {
    let users = DeviceUsers.scan(device)
    report.users = users
    guard users.inUse else { return }
    if force {
      report.steps.append("warning: \(device.address) is in use (\(users.summary)); going on because of --force")
    } else {
      throw failure(
        "\(device.address) is in use: \(users.summary); stop that first, or pass --force to \(report.command) "
          + "it anyway; nothing was changed")
    }
  }

  /// The first write failed: nothing changed yet. EACCES gets advice.
  private func writeFailure(_ error: AttributeWriteError) -> ToolError {
    guard error.isPermission else { return failure("\(error); nothing was changed") }
    return failure(
      "permission denied writing to \(error.path): binding drivers needs root — run `sudo \(commandLine)`, "
        + "or let udev bind the vGPU at boot (udev/70-vgpu.rules, installed by tools/install-udev); "
        + "nothing was changed")
  }

  /// Puts back the override and the driver the device had, and says how far that got.
  private func rollback(_ partial: BindReport, _ device: PCIFunctionSysfs, because cause: String) -> BindReport {
    var report = partial
    let before = report.before
    let address = device.address
    var problems: [String] = []
    report.steps.append("failed: \(cause)")

    if let stray = device.driver, stray != before.driver {
      do {
        try kernel.write(address, to: device.path + "/driver/unbind")
        report.steps.append("rollback: unbound from \(stray)")
      } catch { problems.append("unbinding from \(stray): \(error)") }
      _ = waitUntil(seconds: timeout) { device.driver == nil }
    }
    if device.driverOverride != before.driverOverride {
      do {
        try kernel.write(before.driverOverride ?? "\n", to: device.path + "/driver_override")
        report.steps.append("rollback: driver_override restored to \(before.driverOverride ?? "none")")
      } catch { problems.append("restoring driver_override: \(error)") }
    }
    if let old = before.driver, device.driver != old {
      do { try kernel.write(address, to: PCIFunctionSysfs.driver(old) + "/bind") } catch {
        try? kernel.write(address, to: PCIFunctionSysfs.driversProbe)
      }
      if waitUntil(seconds: timeout, { device.driver == old }) {
        report.steps.append("rollback: rebound to \(old)")
      } else {
        problems.append(
          "\(address) could not be rebound to \(old) (it has \(device.driver ?? "no driver") now); "
            + "try: echo \(address) > \(host.resolve(PCIFunctionSysfs.driversProbe))")
      }
    }
    report.after = device.binding
    report.ok = false
    report.outcome = problems.isEmpty ? "rolled back" : "rollback incomplete"
    let what = report.command == "bind" ? "binding \(address) to \(report.driver ?? "")" : "unbinding \(address)"
    let restored =
      "\(before.driver.map { "bound to \($0)" } ?? "no driver"), driver_override \(before.driverOverride ?? "none")"
    report.error =
      "\(what) failed: \(cause); "
      + (problems.isEmpty
        ? "rolled back: \(restored) as before" : "rollback incomplete: " + problems.joined(separator: "; "))
    return report
  }
}
