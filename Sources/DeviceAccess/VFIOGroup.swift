import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// A VFIO group, `/dev/vfio/N`: the unit of isolation the IOMMU can tell apart
/// (Documentation/driver-api/vfio.rst, "Groups, Devices, and IOMMUs"). N is
/// the device's `iommu_group` link in sysfs. A group opens once (a second
/// open is EBUSY) and is viable only when every device in it is bound to
/// vfio-pci (or pci-stub, or is a bridge on pcieport) or to no driver.
public final class VFIOGroup: @unchecked Sendable {
  public let number: Int
  public let fd: Int32
  public var path: String { "/dev/vfio/\(number)" }
  let host: HostEnvironment
  /// Kept alive while the group is attached to it.
  private(set) var container: VFIOContainer?

  /// Drivers that leave a group viable (drivers/vfio/group.c and vfio.rst).
  public static let harmlessDrivers: Set<String> = ["vfio-pci", "pci-stub", "pcieport"]

  public init(number: Int, host: HostEnvironment = .live) throws(AccessError) {
    self.number = number
    self.host = host
    let path = "/dev/vfio/\(number)"
    let attempted = "open the VFIO group \(path)"
    do { fd = try host.calls.open(host.resolve(path), O_RDWR, 0) } catch {
      switch error {
      case .noEntry, .noDevice:
        throw AccessError(
          .missingInterface, attempted: attempted,
          found: "there is no \(path): no device of IOMMU group \(number) is bound to vfio-pci", errno: error)
      case .accessDenied, .notPermitted:
        throw VFIODiagnosis.permissionDenied(path, attempted: attempted, host: host, errno: error)
      case .busy:
        throw VFIODiagnosis.busy(path, attempted: attempted, host: host)
      default:
        throw AccessError(.failed, attempted: attempted, found: "open failed", errno: error)
      }
    }
  }

  deinit { host.calls.close(fd) }

  /// VFIO_GROUP_GET_STATUS: viable, and whether a container is set.
  public func status() throws(AccessError) -> (viable: Bool, containerSet: Bool) {
    var status = vfio_group_status()
    status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
    let result = withUnsafeMutablePointer(to: &status) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_GROUP_GET_STATUS, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    if let error = result {
      throw AccessError(
        .failed, attempted: "read the status of \(path)", found: "VFIO_GROUP_GET_STATUS failed", errno: error)
    }
    return (
      status.flags & VGPU_VFIO_GROUP_FLAGS_VIABLE != 0, status.flags & VGPU_VFIO_GROUP_FLAGS_CONTAINER_SET != 0
    )
  }

  /// Throws `.notViable` naming the devices of the group bound to other drivers.
  public func requireViable() throws(AccessError) {
    guard try !status().viable else { return }
    let members = PCIFunctionSysfs.groupMembers(number, host: host)
    let blockers = members.filter { m in m.driver.map { !Self.harmlessDrivers.contains($0) } ?? false }
    let names = blockers.map { "\($0.address) (bound to \($0.driver ?? "?"))" }
    let found =
      "IOMMU group \(number) is not viable: "
      + (names.isEmpty
        ? "the kernel says a device in it is bound to a host driver (members: \(members.map(\.address).joined(separator: ", ")))"
        : "\(names.joined(separator: ", ")) \(names.count == 1 ? "is" : "are") in the same group")
      + "; every device in a group must be bound to vfio-pci or to no driver"
    let remedy =
      blockers.isEmpty
      ? nil
      : "bind them to vfio-pci too (" + blockers.map { "pcitool bind \($0.address) vfio-pci" }.joined(separator: "; ")
        + ") or unbind them (" + blockers.map { "pcitool unbind \($0.address)" }.joined(separator: "; ") + ")"
    throw AccessError(.notViable, attempted: "use the VFIO group \(path)", found: found, remedy: remedy)
  }

  /// VFIO_GROUP_SET_CONTAINER (argument: a pointer to the container fd).
  public func attach(to container: VFIOContainer) throws(AccessError) {
    var containerFD = container.fd
    let result = withUnsafeMutablePointer(to: &containerFD) { p -> Errno? in
      do throws(Errno) { _ = try host.calls.ioctl(fd, VGPU_VFIO_GROUP_SET_CONTAINER, UInt(bitPattern: p)) } catch {
        return error
      }
      return nil
    }
    if let error = result {
      throw AccessError(
        .failed, attempted: "attach \(path) to the container", found: "VFIO_GROUP_SET_CONTAINER failed", errno: error)
    }
    self.container = container
  }

  /// VFIO_GROUP_GET_DEVICE_FD (argument: the device's name, `0000:00:05.0`).
  public func deviceFD(_ address: String) throws(AccessError) -> Int32 {
    let result = address.withCString { name -> Result<Int32, Errno> in
      do throws(Errno) {
        return .success(try host.calls.ioctl(fd, VGPU_VFIO_GROUP_GET_DEVICE_FD, UInt(bitPattern: name)))
      } catch { return .failure(error) }
    }
    switch result {
    case .success(let fd): return fd
    case .failure(let error):
      throw AccessError(
        error == .busy ? .busy : .failed, attempted: "get the device fd of \(address) from \(path)",
        found: error == .busy
          ? "the device is already open (in this process or one that shares the group fd)"
          : "VFIO_GROUP_GET_DEVICE_FD failed", errno: error)
    }
  }
}
