import CSupport
import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol

@testable import VGPU

/// A tree shaped like the parts of /sys, /dev and /proc the PCI backends read,
/// in a temporary directory, removed when the fixture goes.
final class SysfsFixture: @unchecked Sendable {
  let root: String
  static let address = "0000:00:05.0"

  init() throws {
    root = NSTemporaryDirectory() + "vgpu-sysfs-\(getpid())-\(UUID().uuidString.prefix(8))"
    try mkdir("/sys/bus/pci/devices")
    try mkdir("/sys/bus/pci/drivers")
    try mkdir("/sys/kernel/iommu_groups")
    try mkdir("/dev/vfio")
    try mkdir("/proc")
  }

  deinit { try? FileManager.default.removeItem(atPath: root) }

  func mkdir(_ path: String) throws {
    try FileManager.default.createDirectory(atPath: root + path, withIntermediateDirectories: true)
  }
  func write(_ path: String, _ text: String) throws {
    try text.write(toFile: root + path, atomically: false, encoding: .utf8)
  }
  func link(_ path: String, to target: String) throws {
    try FileManager.default.createSymbolicLink(atPath: root + path, withDestinationPath: target)
  }

  /// A PCI function as sysfs shows it: vendor, device, driver link, iommu_group
  /// link (and the group's devices/ entry), the resource table, a uio node.
  @discardableResult
  func addDevice(
    _ address: String = address, id: String = "1af4:1110", driver: String? = nil, group: Int? = nil,
    bar2Size: UInt64 = 16 << 20, uio: String? = nil
  ) throws -> String {
    let dir = "/sys/bus/pci/devices/\(address)"
    try mkdir(dir)
    let parts = id.split(separator: ":")
    try write("\(dir)/vendor", "0x\(parts[0])\n")
    try write("\(dir)/device", "0x\(parts[1])\n")
    if let driver {
      try mkdir("/sys/bus/pci/drivers/\(driver)")
      try link("\(dir)/driver", to: "../../../bus/pci/drivers/\(driver)")
    }
    if let group {
      try mkdir("/sys/kernel/iommu_groups/\(group)/devices")
      try link("\(dir)/iommu_group", to: "../../../../kernel/iommu_groups/\(group)")
      try link("/sys/kernel/iommu_groups/\(group)/devices/\(address)", to: "../../../../bus/pci/devices/\(address)")
    }
    // ivshmem: BAR0 256 bytes of registers, BAR1 the MSI-X table, BAR2 64-bit prefetchable memory.
    func line(_ start: UInt64, _ size: UInt64, _ flags: UInt64) -> String {
      size == 0
        ? "0x0000000000000000 0x0000000000000000 0x0000000000000000"
        : String(format: "0x%016llx 0x%016llx 0x%016llx", start, start + size - 1, flags)
    }
    let table = [
      line(0xfeb0_0000, 256, 0x40200), line(0xfeb0_1000, 4096, 0x40200), line(0x8_0000_0000, bar2Size, 0x14220c),
      line(0, 0, 0), line(0, 0, 0), line(0, 0, 0), line(0, 0, 0),
    ]
    try write("\(dir)/resource", table.joined(separator: "\n") + "\n")
    if let uio { try mkdir("\(dir)/uio/\(uio)") }
    return dir
  }

  /// The vGPU's BAR: a shared-memory file standing in for `resource2`, served
  /// by a reference device on a thread.
  func serveBAR2(_ address: String = address) throws -> ReferenceDevice {
    let size = Int(BARLayout().regionSize + 4095) & ~4095
    let region = try MappedRegion.sharedFile(root + "/sys/bus/pci/devices/\(address)/resource2", create: size)
    var configuration = ReferenceDeviceConfiguration()
    configuration.memorySize = 1 << 30
    let device = try ReferenceDevice(configuration: configuration, region: region)
    device.start()
    return device
  }

  /// A process holding `target` open: /proc/PID/fd/N → target, /proc/PID/comm.
  func addProcess(_ pid: Int32, command: String, holding target: String) throws {
    try mkdir("/proc/\(pid)/fd")
    try write("/proc/\(pid)/comm", command + "\n")
    try link("/proc/\(pid)/fd/0", to: "/dev/null")
    try link("/proc/\(pid)/fd/7", to: target)
  }

  func host(_ calls: SystemCalls = .live) -> HostEnvironment { HostEnvironment(root: root, calls: calls) }

  func options(_ calls: SystemCalls = .live) -> OpenOptions {
    var o = OpenOptions()
    o.host = host(calls)
    o.timeout = .seconds(5)
    return o
  }
}

/// `open` failing with `error` for paths ending in one of `suffixes`; everything else is real.
func failingOpen(_ suffixes: [String], _ error: Errno) -> SystemCalls {
  var calls = SystemCalls.live
  calls.open = { (path: String, flags: Int32, mode: UInt32) throws(Errno) -> Int32 in
    if suffixes.contains(where: { path.hasSuffix($0) }) { throw error }
    return try SystemCalls.live.open(path, flags, mode)
  }
  return calls
}

/// The kernel's side of VFIO, faked: answers each ioctl as vfio-pci would for
/// an ivshmem function, with BAR 2 served from `bar2` (a real file, so mmap works).
final class FakeVFIO: @unchecked Sendable {
  let bar2: String
  var viable = true
  var sparse: [(offset: UInt64, size: UInt64)]? = nil
  var bar2Size: UInt64
  var mapDMAError: Errno? = nil
  var memlock: (soft: UInt64?, hard: UInt64?) = (8 << 20, 8 << 20)
  let log = Mutex<[String]>([])
  /// Config space: Command register (offset 4) = Memory Space only.
  let config = Mutex<[UInt8]>([0xf4, 0x1a, 0x10, 0x11, 0x02, 0x00] + [UInt8](repeating: 0, count: 250))
  let irqSets = Mutex<[(flags: UInt32, index: UInt32, fds: [Int32])]>([])

  init(bar2: String, size: UInt64) {
    self.bar2 = bar2
    self.bar2Size = size
  }

  var calls: SystemCalls {
    var calls = SystemCalls.live
    calls.ioctl = { (fd: Int32, request: UInt, argument: UInt) throws(Errno) -> Int32 in
      try self.ioctl(fd, request, argument)
    }
    calls.getrlimit = { _ in self.memlock }
    // Config space (region 7, at 7 << 40 in the device fd) from `config`.
    let configOffset: Int64 = 7 << 40
    calls.pread = { (fd: Int32, buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int in
      guard offset >= configOffset else { return try SystemCalls.live.pread(fd, buffer, offset) }
      let at = Int(offset - configOffset)
      self.config.withLock { c in for i in 0..<buffer.count { buffer[i] = c[at + i] } }
      return buffer.count
    }
    calls.pwrite = { (fd: Int32, buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int in
      guard offset >= configOffset else { return try SystemCalls.live.pwrite(fd, buffer, offset) }
      let at = Int(offset - configOffset)
      self.config.withLock { c in for i in 0..<buffer.count { c[at + i] = buffer[i] } }
      return buffer.count
    }
    return calls
  }

  func ioctl(_ fd: Int32, _ request: UInt, _ argument: UInt) throws(Errno) -> Int32 {
    let p = UnsafeMutableRawPointer(bitPattern: argument)
    switch request {
    case VGPU_VFIO_GET_API_VERSION:
      log.withLock { $0.append("GET_API_VERSION") }
      return VGPU_VFIO_API_VERSION
    case VGPU_VFIO_CHECK_EXTENSION:
      return argument == UInt(VGPU_VFIO_TYPE1v2_IOMMU) ? 1 : 0
    case VGPU_VFIO_GROUP_GET_STATUS:
      log.withLock { $0.append("GROUP_GET_STATUS") }
      p!.storeBytes(of: viable ? VGPU_VFIO_GROUP_FLAGS_VIABLE : 0, toByteOffset: 4, as: UInt32.self)
      return 0
    case VGPU_VFIO_GROUP_SET_CONTAINER:
      log.withLock { $0.append("GROUP_SET_CONTAINER") }
      return 0
    case VGPU_VFIO_SET_IOMMU:
      log.withLock { $0.append("SET_IOMMU \(argument)") }
      return 0
    case VGPU_VFIO_GROUP_GET_DEVICE_FD:
      let name = String(cString: p!.assumingMemoryBound(to: CChar.self))
      log.withLock { $0.append("GROUP_GET_DEVICE_FD \(name)") }
      return try SystemCalls.live.open(bar2, O_RDWR, 0)
    case VGPU_VFIO_DEVICE_GET_INFO:
      // struct vfio_device_info { argsz, flags, num_regions, num_irqs, cap_offset, pad }
      p!.storeBytes(of: VGPU_VFIO_DEVICE_FLAGS_PCI | VGPU_VFIO_DEVICE_FLAGS_RESET, toByteOffset: 4, as: UInt32.self)
      p!.storeBytes(of: 9, toByteOffset: 8, as: UInt32.self)
      p!.storeBytes(of: 5, toByteOffset: 12, as: UInt32.self)
      return 0
    case VGPU_VFIO_DEVICE_GET_REGION_INFO:
      return regionInfo(p!)
    case VGPU_VFIO_DEVICE_GET_IRQ_INFO:
      p!.storeBytes(of: 2, toByteOffset: 12, as: UInt32.self)  // count
      return 0
    case VGPU_VFIO_DEVICE_SET_IRQS:
      let flags = p!.load(fromByteOffset: 4, as: UInt32.self)
      let index = p!.load(fromByteOffset: 8, as: UInt32.self)
      let count = Int(p!.load(fromByteOffset: 16, as: UInt32.self))
      let fds = (0..<count).map { p!.load(fromByteOffset: 20 + 4 * $0, as: Int32.self) }
      irqSets.withLock { $0.append((flags, index, fds)) }
      return 0
    case VGPU_VFIO_DEVICE_RESET:
      log.withLock { $0.append("RESET") }
      return 0
    case VGPU_VFIO_IOMMU_MAP_DMA:
      if let mapDMAError { throw mapDMAError }
      log.withLock { $0.append("MAP_DMA") }
      return 0
    case VGPU_VFIO_IOMMU_UNMAP_DMA:
      log.withLock { $0.append("UNMAP_DMA") }
      return 0
    default:
      throw Errno(ENOTTY)
    }
  }

  /// struct vfio_region_info { argsz, flags, index, cap_offset; u64 size, offset } then caps.
  func regionInfo(_ p: UnsafeMutableRawPointer) -> Int32 {
    let argsz = p.load(as: UInt32.self)
    let index = p.load(fromByteOffset: 8, as: UInt32.self)
    let rw = VGPU_VFIO_REGION_INFO_FLAG_READ | VGPU_VFIO_REGION_INFO_FLAG_WRITE
    var flags = rw | VGPU_VFIO_REGION_INFO_FLAG_MMAP
    let size: UInt64 = index == 2 ? bar2Size : index == 7 ? 256 : 4096
    let offset: UInt64 = index == 2 ? 0 : UInt64(index) << 40
    if index == 7 { flags = rw }
    p.storeBytes(of: size, toByteOffset: 16, as: UInt64.self)
    p.storeBytes(of: offset, toByteOffset: 24, as: UInt64.self)
    if index == 2, let sparse {
      flags |= VGPU_VFIO_REGION_INFO_FLAG_CAPS
      let needed = 32 + 16 + 16 * UInt32(sparse.count)
      if argsz < needed {
        p.storeBytes(of: needed, as: UInt32.self)  // "ask again with this much"
      } else {
        p.storeBytes(of: 32, toByteOffset: 12, as: UInt32.self)  // cap_offset
        p.storeBytes(of: VGPU_VFIO_REGION_INFO_CAP_SPARSE_MMAP, toByteOffset: 32, as: UInt16.self)
        p.storeBytes(of: 1, toByteOffset: 34, as: UInt16.self)
        p.storeBytes(of: 0, toByteOffset: 36, as: UInt32.self)  // next: end of chain
        p.storeBytes(of: UInt32(sparse.count), toByteOffset: 40, as: UInt32.self)
        for (i, a) in sparse.enumerated() {
          p.storeBytes(of: a.offset, toByteOffset: 48 + 16 * i, as: UInt64.self)
          p.storeBytes(of: a.size, toByteOffset: 56 + 16 * i, as: UInt64.self)
        }
      }
    }
    p.storeBytes(of: flags, toByteOffset: 4, as: UInt32.self)
    return 0
  }
}

@Suite struct PCIBackendTests {
  let address = SysfsFixture.address

  func openError(_ spec: String, _ options: OpenOptions) -> VGPUError? {
    do {
      let d = try Device.open(spec, options: options)
      d.close()
      return nil
    } catch { return error }
  }

  /// A NOP and a copy round trip through `device`.
  func exercise(_ device: Device) throws {
    try device.nop()
    let data = randomBytes(300_000, seed: 5)
    let p = try device.allocate(data.count)
    try device.copy(to: p, from: data)
    #expect(sameBytes(try device.read(p, count: data.count), data))
    try device.free(p)
  }

  // MARK: End to end on a fixture tree

  @Test func sysfsMapsResource2AndRunsCommands() throws {
    let f = try SysfsFixture()
    try f.addDevice()
    let server = try f.serveBAR2()
    defer { server.stop() }
    let d = try Device.open("sysfs:\(address)", options: f.options())
    defer { d.close() }
    #expect(
      d.info.backend.hasPrefix("sysfs (/sys/bus/pci/devices/0000:00:05.0/resource2), BAR 2: "), "\(d.info.backend)")
    try exercise(d)
  }

  @Test func bareAddressOfAnUnboundDeviceChoosesSysfsAndSaysWhy() throws {
    let f = try SysfsFixture()
    try f.addDevice(group: 3)
    let server = try f.serveBAR2()
    defer { server.stop() }
    let d = try Device.open(address, options: f.options())
    defer { d.close() }
    #expect(d.info.backend.hasPrefix("sysfs ("), "\(d.info.backend)")
    #expect(d.info.backend.contains("chosen: vfio: bound to no driver, not vfio-pci"), "\(d.info.backend)")
    try exercise(d)
  }

  @Test func uioMapsThroughResource2() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "uio_pci_generic", uio: "uio0")
    let server = try f.serveBAR2()
    defer { server.stop() }
    for spec in ["uio:\(address)", address] {
      let d = try Device.open(spec, options: f.options())
      defer { d.close() }
      #expect(d.info.backend.hasPrefix("uio (uio_pci_generic, /dev/uio0), BAR 2 via "), "\(d.info.backend)")
      try exercise(d)
    }
  }

  @Test func vfioThroughFakeKernelMapsBAR2AndRunsCommands() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    let server = try f.serveBAR2()
    defer { server.stop() }
    let kernel = FakeVFIO(bar2: server.region.origin, size: UInt64(server.region.size))
    for spec in ["vfio:\(address)", address] {
      let d = try Device.open(spec, options: f.options(kernel.calls))
      defer { d.close() }
      #expect(
        d.info.backend.hasPrefix("vfio (type1v2 container /dev/vfio/vfio, group /dev/vfio/7), BAR 2: "),
        "\(d.info.backend)")
      try exercise(d)
    }
    // vfio.rst's order: the group joins the container before SET_IOMMU, then the device fd.
    let log = kernel.log.withLock { $0 }
    #expect(
      Array(log.prefix(5)) == [
        "GET_API_VERSION", "GROUP_GET_STATUS", "GROUP_SET_CONTAINER", "SET_IOMMU \(VGPU_VFIO_TYPE1v2_IOMMU)",
        "GROUP_GET_DEVICE_FD 0000:00:05.0",
      ], "\(log)")
  }

  // MARK: Diagnoses

  @Test func absentDeviceListsWhatIsThere() throws {
    let f = try SysfsFixture()
    try f.addDevice("0000:00:01.0", id: "8086:1237")
    try f.addDevice("0000:00:02.0", id: "1234:1111")
    let e = try #require(openError(address, f.options()))
    #expect(e.kind == .unavailable)
    #expect(e.found == "no PCI device at 0000:00:05.0 (devices here: 0000:00:01.0, 0000:00:02.0)", "\(e)")
    #expect(e.remedy?.contains("VGPU_DEVICE=unix:") == true)
  }

  @Test func anotherDeviceIsNotAVGPU() throws {
    let f = try SysfsFixture()
    try f.addDevice(id: "1af4:1044", driver: "virtio-pci")
    for spec in [address, "vfio:\(address)", "uio:\(address)", "sysfs:\(address)"] {
      let e = try #require(openError(spec, f.options()))
      #expect(e.found == "0000:00:05.0 is 1af4:1044 (driver virtio-pci), not a vGPU (QEMU ivshmem 1af4:1110)", "\(e)")
    }
  }

  @Test func boundToAnotherDriverPrintsTheBindCommand() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "uio_pci_generic", group: 7, uio: "uio0")
    let e = try #require(openError("vfio:\(address)", f.options()))
    #expect(e.found.contains("is bound to uio_pci_generic, not vfio-pci"), "\(e)")
    #expect(
      e.remedy?.hasPrefix("bind it: pcitool bind 0000:00:05.0 vfio-pci (or: sudo modprobe vfio-pci; ") == true, "\(e)")
    #expect(e.remedy?.contains("echo vfio-pci | sudo tee /sys/bus/pci/devices/0000:00:05.0/driver_override") == true)
    #expect(e.remedy?.contains("echo 0000:00:05.0 | sudo tee /sys/bus/pci/drivers/uio_pci_generic/unbind") == true)
    #expect(e.remedy?.contains("echo 0000:00:05.0 | sudo tee /sys/bus/pci/drivers_probe") == true)

    let g = try SysfsFixture()
    try g.addDevice(driver: "vfio-pci", group: 7)
    let u = try #require(openError("uio:\(address)", g.options()))
    #expect(u.found.contains("is bound to vfio-pci, not uio_pci_generic"), "\(u)")
    #expect(u.remedy?.contains("pcitool bind 0000:00:05.0 uio_pci_generic") == true, "\(u)")
  }

  @Test func noIOMMUSuggestsTurningItOnOrUIO() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci")
    let e = try #require(openError("vfio:\(address)", f.options()))
    #expect(e.found.contains("has no iommu_group link"), "\(e)")
    #expect(e.remedy?.contains("intel_iommu=on") == true && e.remedy?.contains("uio:") == true, "\(e)")
  }

  @Test func groupNotViableNamesTheBlockingDevices() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.addDevice("0000:00:06.0", id: "8086:10d3", driver: "e1000e", group: 7)
    try f.addDevice("0000:00:07.0", id: "8086:10d3", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    let kernel = FakeVFIO(bar2: "/dev/null", size: 1 << 24)
    kernel.viable = false
    let e = try #require(openError("vfio:\(address)", f.options(kernel.calls)))
    #expect(
      e.found.contains(
        "IOMMU group 7 is not viable: 0000:00:06.0 (bound to e1000e) is in the same group; every device in a group must be bound to vfio-pci or to no driver"
      ), "\(e)")
    #expect(
      e.remedy?.contains("pcitool bind 0000:00:06.0 vfio-pci") == true
        && e.remedy?.contains("pcitool unbind 0000:00:06.0") == true, "\(e)")
  }

  @Test func permissionDeniedNamesTheUdevRuleAndShowsTheNode() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    var calls = failingOpen(["/dev/vfio/7"], .accessDenied)
    let root = f.root
    calls.stat = { (path: String) throws(Errno) -> FileFacts in
      guard path == root + "/dev/vfio/7" else { return try SystemCalls.live.stat(path) }
      return FileFacts(mode: UInt32(S_IFCHR) | 0o600, uid: 0, gid: 0, owner: "root", group: "root")
    }
    let kernel = FakeVFIO(bar2: "/dev/null", size: 1 << 24)
    let fakeIoctl = kernel.calls.ioctl
    calls.ioctl = fakeIoctl
    let e = try #require(openError("vfio:\(address)", f.options(calls)))
    #expect(
      e.found.contains("open the VFIO group /dev/vfio/7: permission denied (/dev/vfio/7 is crw------- root root)"),
      "\(e)")
    #expect(e.remedy?.contains("install udev/70-vgpu.rules") == true, "\(e)")
    #expect(e.remedy?.contains("group vgpu, mode 0660") == true && e.remedy?.contains("usermod -aG vgpu") == true)
    // The container node too.
    var c = failingOpen(["/dev/vfio/vfio"], .accessDenied)
    c.ioctl = fakeIoctl
    let ce = try #require(openError("vfio:\(address)", f.options(c)))
    #expect(
      ce.found.contains("open the VFIO container /dev/vfio/vfio: permission denied (/dev/vfio/vfio is -"), "\(ce)")
  }

  @Test func busyGroupNamesTheProcessHoldingIt() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    var calls = failingOpen(["/dev/vfio/7"], .busy)
    calls.ioctl = FakeVFIO(bar2: "/dev/null", size: 1 << 24).calls.ioctl
    let unknown = try #require(openError("vfio:\(address)", f.options(calls)))
    #expect(
      unknown.found.contains("another process holds /dev/vfio/7 (a VFIO group opens once; none found"), "\(unknown)")
    try f.addProcess(4242, command: "ollama", holding: "/dev/vfio/7")
    try f.addProcess(4343, command: "bash", holding: "/dev/vfio/8")
    let e = try #require(openError("vfio:\(address)", f.options(calls)))
    #expect(e.found.contains("/dev/vfio/7 is held by pid 4242 (ollama) (a VFIO group opens once)"), "\(e)")
    #expect(e.remedy?.contains("stop that process") == true, "\(e)")
  }

  @Test func missingVFIOModuleSaysModprobe() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    let e = try #require(openError("vfio:\(address)", f.options()))
    #expect(e.found.contains("there is no /dev/vfio/vfio: the vfio module is not loaded"), "\(e)")
    #expect(e.remedy == "sudo modprobe vfio-pci", "\(e)")
  }

  @Test func nothingUsableAsNonRootListsWhatWasTried() throws {
    let withGroup = try SysfsFixture()
    try withGroup.addDevice(group: 3)
    try withGroup.write("/sys/bus/pci/devices/\(address)/resource2", "")
    let e = try #require(openError(address, withGroup.options(failingOpen(["/resource2"], .accessDenied))))
    #expect(
      e.found.hasPrefix(
        "0000:00:05.0 is the vGPU (1af4:1110, driver none, IOMMU group 3); tried sysfs: permission denied on /sys/bus/pci/devices/0000:00:05.0/resource2 (-"
      ), "\(e)")
    #expect(e.found.contains("skipped vfio: bound to no driver, not vfio-pci; uio: bound to no driver"), "\(e)")
    #expect(e.remedy?.hasPrefix("for use without root bind it: pcitool bind 0000:00:05.0 vfio-pci") == true, "\(e)")
    #expect(e.remedy?.contains("udev/70-vgpu.rules") == true)

    let noGroup = try SysfsFixture()
    try noGroup.addDevice()
    try noGroup.write("/sys/bus/pci/devices/\(address)/resource2", "")
    let n = try #require(openError(address, noGroup.options(failingOpen(["/resource2"], .accessDenied))))
    #expect(n.found.contains("skipped vfio: no IOMMU group"), "\(n)")
    #expect(n.remedy?.hasPrefix("there is no IOMMU, so VFIO cannot be used: run as root (sysfs:)") == true, "\(n)")
  }

  @Test func vfioFailureFallsBackAndIsReportedFirst() throws {
    // Bound to vfio-pci, the group busy, sysfs not permitted: the VFIO reason leads.
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/sys/bus/pci/devices/\(address)/resource2", "")
    var calls = failingOpen(["/dev/vfio/7", "/resource2"], .busy)
    calls.ioctl = FakeVFIO(bar2: "/dev/null", size: 1 << 24).calls.ioctl
    let e = try #require(openError(address, f.options(calls)))
    #expect(e.found.contains("; tried vfio: another process holds /dev/vfio/7"), "\(e)")
    #expect(e.remedy?.contains("stop that process") == true, "\(e)")
  }

  @Test func sysfsWithoutResourceFileOrWithIOBar() throws {
    let f = try SysfsFixture()
    try f.addDevice()
    let e = try #require(openError("sysfs:\(address)", f.options()))
    #expect(e.found.contains("there is no /sys/bus/pci/devices/0000:00:05.0/resource2"), "\(e)")
    let g = try SysfsFixture()
    try g.addDevice(bar2Size: 0)
    let z = try #require(openError("sysfs:\(address)", g.options()))
    #expect(z.found.contains("the device has no BAR 2 (size 0)"), "\(z)")
  }

  @Test func sysfsMmapRefusedByLockdown() throws {
    let f = try SysfsFixture()
    try f.addDevice()
    try f.write("/sys/bus/pci/devices/\(address)/resource2", String(repeating: "x", count: 4096))
    var calls = SystemCalls.live
    calls.mmap = { (_, _, _, _, _, _) throws(Errno) -> UnsafeMutableRawPointer in throw Errno.notPermitted }
    let e = try #require(openError("sysfs:\(address)", f.options(calls)))
    #expect(e.found.contains("the kernel refused the mapping (kernel lockdown"), "\(e)")
    #expect(e.remedy?.contains("use vfio:") == true, "\(e)")
  }

  @Test func aBlankBARSaysTheDeviceHasNotInitialisedIt() throws {
    let f = try SysfsFixture()
    try f.addDevice()
    try f.write("/sys/bus/pci/devices/\(address)/resource2", String(repeating: "\0", count: 1 << 16))
    let e = try #require(openError("sysfs:\(address)", f.options()))
    #expect(e.kind == .protocolViolation && e.found.contains("magic is 0x0"), "\(e)")
    #expect(e.found.hasPrefix("BAR mapped through sysfs (/sys/bus/pci/devices/0000:00:05.0/resource2)"), "\(e)")
    #expect(e.remedy?.hasPrefix("the shared memory is blank: start vgpu-mediator on the VM's host") == true, "\(e)")
  }

  // MARK: VFIO pieces

  @Test func sparseMmapMapsOnlyTheAllowedAreas() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    let bar = f.root + "/bar2"
    let bytes = (0..<16384).map { UInt8(truncatingIfNeeded: $0 / 4096 + 1) }
    _ = FileManager.default.createFile(atPath: bar, contents: Data(bytes))
    let kernel = FakeVFIO(bar2: bar, size: 16384)
    // An MSI-X table in the second page: vfio-pci offers pages 0 and 2-3.
    kernel.sparse = [(0, 4096), (8192, 8192)]
    let device = try VFIODevice.open(PCIFunctionSysfs(address, host: f.host(kernel.calls)))
    let info = try device.regionInfo(2)
    #expect(info.sparseAreas == [0..<4096, 8192..<16384])
    let region = try device.mapBAR(2)
    #expect(region.size == 16384 && region.mappedRanges == [0..<4096, 8192..<16384])
    #expect(region.base.load(fromByteOffset: 0, as: UInt8.self) == 1)
    #expect(region.base.load(fromByteOffset: 8192, as: UInt8.self) == 3)
    #expect(region.base.load(fromByteOffset: 16383, as: UInt8.self) == 4)
    // The vGPU needs all of BAR 2: a sparse one is refused, with the reason.
    let server = try f.serveBAR2()
    defer { server.stop() }
    let k2 = FakeVFIO(bar2: server.region.origin, size: UInt64(server.region.size))
    k2.sparse = [(0, 4096)]
    let e = try #require(openError("vfio:\(address)", f.options(k2.calls)))
    #expect(e.found.contains("only parts of BAR 2 may be mapped (sparse mmap)"), "\(e)")
  }

  @Test func regionInfoDecoderIgnoresBadChains() {
    var buffer = [UInt8](repeating: 0, count: 64)
    buffer.withUnsafeMutableBytes { b in
      b.storeBytes(of: 64, as: UInt32.self)
      b.storeBytes(
        of: VGPU_VFIO_REGION_INFO_FLAG_CAPS | VGPU_VFIO_REGION_INFO_FLAG_MMAP, toByteOffset: 4, as: UInt32.self)
      b.storeBytes(of: 32, toByteOffset: 12, as: UInt32.self)
      b.storeBytes(of: 8192, toByteOffset: 16, as: UInt64.self)
      b.storeBytes(of: VGPU_VFIO_REGION_INFO_CAP_SPARSE_MMAP, toByteOffset: 32, as: UInt16.self)
      b.storeBytes(of: 32, toByteOffset: 36, as: UInt32.self)  // next points at itself: a loop
      b.storeBytes(of: 5, toByteOffset: 40, as: UInt32.self)  // claims 5 areas, room for 1
      b.storeBytes(of: 4096, toByteOffset: 48, as: UInt64.self)
      b.storeBytes(of: 8192, toByteOffset: 56, as: UInt64.self)  // runs past the region: dropped
    }
    let info = buffer.withUnsafeBytes { VFIORegionInfo.decode($0) }
    #expect(info?.size == 8192 && info?.sparseAreas == [])
    #expect(buffer.withUnsafeBytes { VFIORegionInfo.decode(UnsafeRawBufferPointer(rebasing: $0.prefix(16))) } == nil)
  }

  @Test func dmaMappingErrorsNameTheLimits() throws {
    let f = try SysfsFixture()
    try f.write("/dev/vfio/vfio", "")
    try f.mkdir("/sys/module/vfio_iommu_type1/parameters")
    try f.write("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "65535\n")
    let kernel = FakeVFIO(bar2: "/dev/null", size: 0)
    let container = try VFIOContainer(host: f.host(kernel.calls))
    #expect(container.description == "type1v2 container /dev/vfio/vfio")
    // MAP_DMA before SET_IOMMU fails in the kernel; say so before asking it.
    #expect {
      try container.allocateDMABuffer(size: 4096)
    } throws: { ($0 as? AccessError)?.found.contains("MAP_DMA before SET_IOMMU") == true }
    try container.setIOMMU()
    do {
      let buffer = try container.allocateDMABuffer(size: 5000)
      #expect(buffer.size == 8192 && buffer.iova == 1 << 32)
    }
    #expect(kernel.log.withLock { $0.suffix(2) } == ["MAP_DMA", "UNMAP_DMA"])
    #expect(container.iovaSpace.withLock { $0.free } == [(1 << 32)..<(1 << 47)])

    kernel.mapDMAError = .noMemory
    kernel.memlock = (8 << 20, nil)
    #expect {
      try container.allocateDMABuffer(size: 4096)
    } throws: {
      let e = $0 as! AccessError
      return e.kind == .lockedMemoryLimit
        && e.found.contains("RLIMIT_MEMLOCK (soft 8192 KiB, hard unlimited)")
        && e.remedy?.contains("ulimit -l") == true && e.remedy?.contains("LimitMEMLOCK=") == true
    }
    kernel.mapDMAError = .noSpace
    #expect {
      try container.allocateDMABuffer(size: 4096)
    } throws: {
      let e = $0 as! AccessError
      return e.kind == .dmaEntryLimit && e.found.contains("dma_entry_limit = 65535")
        && e.remedy?.contains("modprobe vfio_iommu_type1 dma_entry_limit=N") == true
    }
    // A failed mapping gives its IOVA back.
    #expect(container.iovaSpace.withLock { $0.free } == [(1 << 32)..<(1 << 47)])
    // Not page-aligned: refused before the kernel sees it.
    let raw = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
    defer { raw.deallocate() }
    #expect(throws: AccessError.self) { try container.mapForDMA(raw + 1, size: 4096) }
  }

  @Test func iovaAllocatorReusesAndMerges() {
    var a = IOVAAllocator(range: 0x10000..<0x20000)
    let x = a.allocate(1)!
    let y = a.allocate(0x2000)!
    let z = a.allocate(0x1000)!
    #expect([x, y, z] == [0x10000, 0x11000, 0x13000])
    a.release(y, size: 0x2000)
    #expect(a.allocate(0x3000) == 0x14000)  // the hole is too small: first fit after it
    #expect(a.allocate(0x2000) == 0x11000)  // fits the hole exactly
    a.release(x, size: 1)
    a.release(0x11000, size: 0x2000)
    a.release(z, size: 0x1000)
    a.release(0x14000, size: 0x3000)
    #expect(a.free == [0x10000..<0x20000])
    #expect(a.allocate(0x20000) == nil)
  }

  @Test func interruptsAreWiredToEventfds() throws {
    let f = try SysfsFixture()
    try f.addDevice(driver: "vfio-pci", group: 7)
    try f.write("/dev/vfio/vfio", "")
    try f.write("/dev/vfio/7", "")
    let bar = f.root + "/bar2"
    _ = FileManager.default.createFile(atPath: bar, contents: Data(count: 4096))
    let kernel = FakeVFIO(bar2: bar, size: 4096)
    do {
      let device = try VFIODevice.open(PCIFunctionSysfs(address, host: f.host(kernel.calls)))
      #expect(device.canReset)
      #expect(try device.reset())
      #expect(kernel.log.withLock { $0.last } == "RESET")
      // Bus Master (bit 2) joins Memory Space (bit 1) in the Command register.
      #expect(try device.enableBusMaster() == 0x6)
      #expect(kernel.config.withLock { Array($0[4..<6]) } == [0x06, 0x00])
      let fds = try device.enableInterrupts(count: 2)
      #expect(fds.count == 2)
      let sets = kernel.irqSets.withLock { $0 }
      #expect(sets.count == 1 && sets[0].index == VGPU_VFIO_PCI_MSIX_IRQ_INDEX && sets[0].fds == fds)
      #expect(sets[0].flags == VGPU_VFIO_IRQ_SET_DATA_EVENTFD | VGPU_VFIO_IRQ_SET_ACTION_TRIGGER)
      #expect(throws: AccessError.self) { try device.enableInterrupts(index: VGPU_VFIO_PCI_MSI_IRQ_INDEX, count: 3) }
    }
    // Closing the device tears the vectors down (count 0, DATA_NONE).
    let last = kernel.irqSets.withLock { $0.last }
    #expect(last?.flags == VGPU_VFIO_IRQ_SET_DATA_NONE | VGPU_VFIO_IRQ_SET_ACTION_TRIGGER && last?.fds == [])
  }
}
