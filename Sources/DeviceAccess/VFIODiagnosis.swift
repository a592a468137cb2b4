/// The words for VFIO's failures that need more than an errno: who may open a
/// device node, which driver to bind and how, who holds a group.
public enum VFIODiagnosis {
  /// The udev rule file of this project and the group it gives `/dev/vfio/*` to.
  public static let udevRule = "udev/70-vgpu.rules"
  public static let group = "vgpu"

  /// How to bind `address` to `driver`: this project's command, then the sysfs
  /// writes it makes (Documentation/ABI/testing/sysfs-bus-pci, driver_override).
  public static func bindCommands(_ address: String, to driver: String, from current: String?) -> String {
    var steps: [String] = []
    if driver == "vfio-pci" || driver == "uio_pci_generic" { steps.append("sudo modprobe \(driver)") }
    steps.append("echo \(driver) | sudo tee /sys/bus/pci/devices/\(address)/driver_override")
    if let current { steps.append("echo \(address) | sudo tee /sys/bus/pci/drivers/\(current)/unbind") }
    steps.append("echo \(address) | sudo tee /sys/bus/pci/drivers_probe")
    return "bind it: pcitool bind \(address) \(driver) (or: \(steps.joined(separator: "; ")))"
  }

  /// EACCES / EPERM on a `/dev/vfio` node: its `ls -l` facts and the udev rule.
  static func permissionDenied(_ path: String, attempted: String, host: HostEnvironment, errno: Errno)
    -> AccessError
  {
    let facts = (try? host.calls.stat(host.resolve(path))).map { "\(path) is \($0)" } ?? "\(path) cannot be read"
    return AccessError(
      .permissionDenied, attempted: attempted, found: "permission denied (\(facts))",
      remedy:
        "install \(udevRule) (it gives /dev/vfio/vfio and /dev/vfio/N to group \(group), mode 0660) and add the user to that group (usermod -aG \(group) USER; log in again), or run as root",
      errno: errno)
  }

  /// EBUSY on `/dev/vfio/N`: a group opens once, so another process has it.
  static func busy(_ path: String, attempted: String, host: HostEnvironment) -> AccessError {
    let holders = PCIFunctionSysfs.holders(of: path, host: host)
    let found =
      holders.isEmpty
      ? "another process holds \(path) (a VFIO group opens once; none found in the /proc entries this user can read — run as root to name it)"
      : "\(path) is held by \(holders.map { "pid \($0.pid) (\($0.command))" }.joined(separator: ", ")) (a VFIO group opens once)"
    return AccessError(
      .busy, attempted: attempted, found: found,
      remedy: "stop that process, or use the device through it (a broker passing the group fd)", errno: .busy)
  }
}
