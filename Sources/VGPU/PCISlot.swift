import CSupport
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
    "set VGPU_DEVICE=unix:/run/vgpu/vgpu0.sock to use a vgpu-mediator on this host (pcitool also offers sim, its built-in reference device)"

  let function: PCIFunctionSysfs
  var address: String { function.address }
  var host: HostEnvironment { function.host }

  init(_ address: String, host: HostEnvironment = .live) {
    function = PCIFunctionSysfs(address, host: host)
  }

  /// What mapping the vGPU gives: its BAR, a sentence saying how, and the
  /// ivshmem doorbell and interrupts that backend can reach.
  struct Mapped {
    var region: MappedRegion
    var how: String
    var wakeups: Wakeups
  }

  /// Maps the vGPU's BAR through `backend` (the best available when `nil`).
  func map(spec: String, backend: DeviceSpec.PCIBackend?) throws(VGPUError) -> Mapped {
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

  private func chosen(_ backend: DeviceSpec.PCIBackend, _ notes: [String]) throws(AccessError) -> Mapped {
    var m = try map(with: backend)
    if !notes.isEmpty { m.how += " (chosen: \(notes.joined(separator: "; ")))" }
    return m
  }

  private func map(with backend: DeviceSpec.PCIBackend) throws(AccessError) -> Mapped {
    let bar = Self.vgpuBAR
    switch backend {
    case .vfio:
      let device: VFIODevice
      do throws(AccessError) { device = try VFIODevice.open(function) } catch {
        // The group is open in another process: if that is a vGPU client, its
        // broker hands out the device fd (several processes, one VFIO group).
        // Only on the real machine: a fixture tree's device is not the one a broker serves.
        guard error.kind == .busy, function.host.isLive else { throw error }
        guard let a = try? VFIOBroker.attach(address, bar: bar, seconds: 2) else { throw error }
        return Mapped(
          region: a.region,
          how: "vfio (device fd from the broker in pid \(a.pid)), BAR \(bar): \(bytesText(UInt64(a.region.size)))",
          wakeups: Self.vfioWakeups(deviceFD: a.region.fileDescriptor, bar0Offset: a.bar0Offset, vectors: a.vectors))
      }
      let region = try device.mapBAR(bar)
      guard region.mappedRanges == nil else {
        throw AccessError(
          .notMappable, attempted: "map BAR \(bar) of \(address) through VFIO",
          found: "only parts of BAR \(bar) may be mapped (sparse mmap), but the vGPU needs all of it")
      }
      // ivshmem-doorbell: BAR 0 holds the doorbell, MSI-X vectors carry
      // completions. Enabled here once; each process wires its pairs' vectors.
      let bar0 = try? device.regionInfo(VGPU_VFIO_PCI_BAR0_REGION_INDEX)
      var vectors = (try? device.interruptCount(index: VGPU_VFIO_PCI_MSIX_IRQ_INDEX)) ?? 0
      // An MSI is a memory write by the device: without bus mastering
      // (PCI command bit 2) QEMU drops it.
      if vectors > 0
        && ((try? device.enableBusMaster()) == nil
          || (try? device.enableInterruptsUnwired(count: vectors)) == nil)
      {
        vectors = 0
      }
      if function.host.isLive {
        VFIOBroker.serve(device, bar: bar, bar0Offset: bar0?.offset, vectors: vectors)
      }
      let group = device.group.map { ", group \($0.path)" } ?? ""
      return Mapped(
        region: region,
        how: "vfio (\(device.ops.description)\(group)), BAR \(bar): \(bytesText(UInt64(region.size)))",
        wakeups: Self.vfioWakeups(deviceFD: device.fd, bar0Offset: bar0?.offset, vectors: vectors))
    case .uio:
      let (region, node) = try UIOResource.map(function, bar: bar)
      return Mapped(
        region: region,
        how:
          "uio (\(UIOResource.driver), /dev/\(node)), BAR \(bar) via \(region.origin): \(bytesText(UInt64(region.size)))",
        wakeups: mappedDoorbell("uio_pci_generic enables no MSI-X"))
    case .sysfs:
      let region = try SysfsResource.map(function, bar: bar)
      return Mapped(
        region: region, how: "sysfs (\(region.origin)), BAR \(bar): \(bytesText(UInt64(region.size)))",
        wakeups: mappedDoorbell("no driver delivers interrupts"))
    }
  }

  /// The doorbell through VFIO (pwrite to BAR 0's region) and the vectors
  /// this process may wire to its own eventfds.
  private static func vfioWakeups(deviceFD: Int32, bar0Offset: UInt64?, vectors: Int) -> Wakeups {
    var w = Wakeups()
    if let bar0Offset { w.doorbell = .deviceFD(deviceFD, offset: Int64(bitPattern: bar0Offset)) }
    if vectors > 0 {
      w.interruptFD = deviceFD
      w.vectors = vectors
    }
    w.description =
      switch (bar0Offset != nil, vectors > 0) {
      case (true, true):
        "ivshmem doorbell (VFIO, BAR 0) to wake the device; completions by MSI-X (\(vectors) vectors, VFIO eventfds)"
      case (true, false):
        "ivshmem doorbell (VFIO, BAR 0) to wake the device; completions by polling in short sleeps (no MSI-X: ivshmem-plain?)"
      default: "polling in short sleeps (BAR 0 not reachable through VFIO)"
      }
    return w
  }

  /// The doorbell through BAR 0 mapped from sysfs; completions are polled.
  private func mappedDoorbell(_ why: String) -> Wakeups {
    var w = Wakeups()
    guard let bar0 = try? SysfsResource.map(function, bar: 0), bar0.size >= Ivshmem.doorbell + 4 else {
      w.description = "polling in short sleeps (BAR 0, the doorbell, could not be mapped)"
      return w
    }
    w.doorbell = .mapped(bar0.base)
    w.keep = bar0
    w.description =
      "ivshmem doorbell (\(bar0.origin)) to wake the device; completions by polling in short sleeps (\(why))"
    return w
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
