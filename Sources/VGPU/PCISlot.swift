#if canImport(Glibc)
  import Glibc
#endif

/// What sysfs says is at a PCI address, for the diagnosis when a PCI device
/// cannot be opened. Read directly (two small files) so that the shim core
/// does not need libpci.
struct PCISlot {
  static let sysfs = "/sys/bus/pci/devices"
  /// QEMU's ivshmem function, whose BAR 2 carries the vGPU's BAR in a VM.
  static let vgpuID = "1af4:1110"

  let address: String

  /// `BB:DD.F` becomes `0000:BB:DD.F`, as sysfs names devices.
  init(_ address: String) {
    self.address = address.split(separator: ":").count == 2 ? "0000:" + address : address.lowercased()
  }

  var id: String? {
    guard let vendor = Self.read("\(Self.sysfs)/\(address)/vendor"),
      let device = Self.read("\(Self.sysfs)/\(address)/device")
    else { return nil }
    return "\(vendor.dropFirst(2)):\(device.dropFirst(2))"
  }

  var driver: String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("\(Self.sysfs)/\(address)/driver", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    return String(cString: buffer).split(separator: "/").last.map(String.init)
  }

  static func present() -> [String] {
    guard let dir = opendir(sysfs) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
      if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
  }

  private static func read(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = Glibc.read(fd, &buffer, buffer.count)
    guard n > 0 else { return nil }
    return String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: "\n ")
  }

  /// Why `spec` cannot be opened, in the words a person needs.
  func openError(_ spec: String) -> VGPUError {
    let alternatives =
      "set VGPU_DEVICE=shm:/dev/shm/vgpu0 to use a vgpu-mediator on this host, or sim for the built-in device"
    guard let id else {
      let list = Self.present()
      return VGPUError(
        .unavailable, "open", device: spec,
        found: "no PCI device at \(address) (devices here: \(list.isEmpty ? "none" : list.joined(separator: ", ")))",
        remedy: alternatives)
    }
    guard id == Self.vgpuID else {
      return VGPUError(
        .unavailable, "open", device: spec,
        found: "\(address) is \(id)\(driver.map { " (driver \($0))" } ?? ""), not a vGPU (QEMU ivshmem \(Self.vgpuID))",
        remedy: alternatives)
    }
    return VGPUError(
      .unsupported, "open", device: spec,
      found: "\(address) is the vGPU, but mapping its BAR through VFIO, UIO or sysfs is not built yet",
      remedy: alternatives)
  }
}

extension String {
  fileprivate func trimmingCharacters(in set: String) -> String {
    var s = Substring(self)
    while let c = s.last, set.contains(c) { s = s.dropLast() }
    return String(s)
  }
}
