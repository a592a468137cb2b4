import DeviceAccess

#if canImport(Glibc)
  import Glibc
#endif

/// Opening a PCI address: what sysfs says is in that slot, which backend
/// maps its BAR (VFIO, UIO, sysfs `resourceN`), and — when none can — why,
/// in the words a person needs: what was tried, what was found, what to do.
///
/// In a VM the vGPU is QEMU's ivshmem function (1af4:1110): BAR 0 holds
/// ivshmem's own registers, BAR 2 the shared memory that carries the vGPU's
/// whole BAR (docs/PROTOCOL.md). Only BAR 2 is mapped.
struct PCISlot {
  /// QEMU's ivshmem function, whose BAR 2 carries the vGPU's BAR in a VM.
  static let vgpuID = "1af4:1110"
  static let vgpuBAR = 2
  static let alternatives =
    "set VGPU_DEVICE=shm:/dev/shm/vgpu0 to use a vgpu-mediator on this host, or sim for the built-in device"

  let function: PCIFunctionSysfs
  var address: String { function.address }
  var host: HostEnvironment { function.host }

  init(_ address: String, host: HostEnvironment = .live) {
    function = PCIFunctionSysfs(address, host: host)
  }

  /// Maps the vGPU's BAR through `backend` (the best available when `nil`);
  /// returns the region and a sentence saying how.
  func map(spec: String, backend: DeviceSpec.PCIBackend?) throws(VGPUError) -> (region: MappedRegion, how: String) {
    try requireVGPU(spec)
    let driver = function.driver
    if let backend {
      do throws(AccessError) {
        return try map(with: backend)
      } catch {
        throw VGPUError(
          .unavailable, "open", device: spec,
          found: "\(backend.rawValue): \(error.attempted): \(error.found)\(errnoText(error))",
          remedy: remedy(for: error, backend: backend, driver: driver))
      }
    }
    // The best available: VFIO if bound to vfio-pci (isolation, no root),
    // else UIO if bound to uio_pci_generic, else sysfs resourceN (root).
    var tried: [(DeviceSpec.PCIBackend, AccessError)] = []
    var skipped: [String] = []
    let group = function.iommuGroup
    if driver == "vfio-pci" && group != nil {
      do throws(AccessError) { return try chosen(.vfio, skipped) } catch { tried.append((.vfio, error)) }
    } else {
      skipped.append(
        group == nil
          ? "vfio: no IOMMU group" : "vfio: bound to \(driver ?? "no driver"), not vfio-pci")
    }
    if driver == UIOResource.driver {
      do throws(AccessError) { return try chosen(.uio, skipped + tried.map(summary)) } catch {
        tried.append((.uio, error))
      }
    } else {
      skipped.append("uio: bound to \(driver ?? "no driver"), not \(UIOResource.driver)")
    }
    do throws(AccessError) { return try chosen(.sysfs, skipped + tried.map(summary)) } catch {
      tried.append((.sysfs, error))
    }
    // Nothing worked. Lead with the backend the binding meant to use.
    let (primaryBackend, primary) = tried[0]
    var found = "\(address) is the vGPU (\(Self.vgpuID), driver \(driver ?? "none"), "
    found += group.map { "IOMMU group \($0))" } ?? "no IOMMU group)"
    found += "; tried " + tried.map { "\($0.0.rawValue): \($0.1.found)\(errnoText($0.1))" }.joined(separator: "; ")
    if !skipped.isEmpty { found += "; skipped " + skipped.joined(separator: "; ") }
    throw VGPUError(
      .unavailable, "open", device: spec, found: found,
      remedy: remedy(for: primary, backend: primaryBackend, driver: driver, automatic: true))
  }

  private func summary(_ t: (DeviceSpec.PCIBackend, AccessError)) -> String {
    "\(t.0.rawValue): \(t.1.found)"
  }

  private func chosen(_ backend: DeviceSpec.PCIBackend, _ notes: [String]) throws(AccessError) -> (MappedRegion, String)
  {
    let (region, how) = try map(with: backend)
    return (region, notes.isEmpty ? how : "\(how) (chosen: \(notes.joined(separator: "; ")))")
  }

  private func map(with backend: DeviceSpec.PCIBackend) throws(AccessError) -> (MappedRegion, String) {
    let bar = Self.vgpuBAR
    switch backend {
    case .vfio:
      let device: VFIODevice
      do throws(AccessError) { device = try VFIODevice.open(function) } catch {
        // The group is open in another process: if that is a vGPU client, its
        // broker hands out the device fd (several processes, one VFIO group).
        // Only on the real machine: a fixture tree's device is not the one a broker serves.
        guard error.kind == .busy, function.host.root.isEmpty else { throw error }
        guard let (region, pid) = try? VFIOBroker.attach(address, bar: bar, seconds: 2) else { throw error }
        return (region, "vfio (device fd from the broker in pid \(pid)), BAR \(bar): \(bytesText(UInt64(region.size)))")
      }
      let region = try device.mapBAR(bar)
      if function.host.root.isEmpty { VFIOBroker.serve(device, bar: bar) }
      guard region.mappedRanges == nil else {
        throw AccessError(
          .notMappable, attempted: "map BAR \(bar) of \(address) through VFIO",
          found: "only parts of BAR \(bar) may be mapped (sparse mmap), but the vGPU needs all of it")
      }
      let group = device.group.map { ", group \($0.path)" } ?? ""
      return (region, "vfio (\(device.ops.description)\(group)), BAR \(bar): \(bytesText(UInt64(region.size)))")
    case .uio:
      let (region, node) = try UIOResource.map(function, bar: bar)
      return (
        region,
        "uio (\(UIOResource.driver), /dev/\(node)), BAR \(bar) via \(region.origin): \(bytesText(UInt64(region.size)))"
      )
    case .sysfs:
      let region = try SysfsResource.map(function, bar: bar)
      return (region, "sysfs (\(region.origin)), BAR \(bar): \(bytesText(UInt64(region.size)))")
    }
  }

  private func errnoText(_ e: AccessError) -> String {
    guard let errno = e.errno, !e.found.contains(errno.name) else { return "" }
    return " (\(errno))"
  }

  /// What to do about `error` met while mapping through `backend`.
  private func remedy(
    for error: AccessError, backend: DeviceSpec.PCIBackend, driver: String?, automatic: Bool = false
  ) -> String {
    let group = function.iommuGroup
    switch error.kind {
    case .wrongDriver:
      let target = backend == .uio ? UIOResource.driver : "vfio-pci"
      return VFIODiagnosis.bindCommands(address, to: target, from: driver)
    case .noIOMMU:
      return error.remedy ?? "boot with intel_iommu=on, or use uio: or sysfs: as root"
    case .permissionDenied where backend == .sysfs && automatic:
      // Nothing bound for a user-space backend, and not root.
      if group != nil {
        return "for use without root "
          + VFIODiagnosis.bindCommands(address, to: "vfio-pci", from: driver)
          + " and install \(VFIODiagnosis.udevRule) (group \(VFIODiagnosis.group)); or run as root"
      }
      return
        "there is no IOMMU, so VFIO cannot be used: run as root (sysfs:), or bind uio_pci_generic (pcitool bind \(address) uio_pci_generic) and run as root; or boot with intel_iommu=on and bind vfio-pci"
    default:
      return error.remedy ?? Self.alternatives
    }
  }

  /// Throws unless sysfs shows the vGPU (ivshmem) at this address.
  func requireVGPU(_ spec: String) throws(VGPUError) {
    guard let id = function.id else {
      let list = PCIFunctionSysfs.present(host: host)
      throw VGPUError(
        .unavailable, "open", device: spec,
        found: "no PCI device at \(address) (devices here: \(list.isEmpty ? "none" : list.joined(separator: ", ")))",
        remedy: Self.alternatives)
    }
    guard id == Self.vgpuID else {
      throw VGPUError(
        .unavailable, "open", device: spec,
        found:
          "\(address) is \(id)\(function.driver.map { " (driver \($0))" } ?? ""), not a vGPU (QEMU ivshmem \(Self.vgpuID))",
        remedy: Self.alternatives)
    }
  }
}
