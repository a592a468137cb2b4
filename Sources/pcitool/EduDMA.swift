import ArgumentParser
import CSupport
import DeviceAccess
import PCI

/// A DMA round trip through QEMU's `edu` device behind the IOMMU: proves the
/// VFIO DMA-mapping path (container, IOVA, bus mastering) against a real DMA
/// engine. Used by tools/vm/e2e; hidden from --help.
///
/// Registers (QEMU docs/specs/edu.rst): 0x00 identification (0x010000ed),
/// 0x80 DMA source, 0x88 DMA destination, 0x90 count, 0x98 command
/// (1 = start, 2 = from the device to RAM); the device's own buffer is 4 KiB
/// at 0x40000. Its DMA mask is 28 bits, so the buffer goes at a low IOVA.
struct EduDMA: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "_edu-dma", abstract: "DMA round trip through QEMU's edu device (tests).", shouldDisplay: false)

  @Argument(help: "The edu device's PCI address, bound to vfio-pci.")
  var address: String

  func validate() throws {
    do { _ = try PCIAddress(parsing: address) } catch { throw ValidationError(error.description) }
  }

  func run() throws {
    func fail(_ what: String) -> ToolError {
      ToolError(status: .failure, description: "edu DMA on \(address): \(what)")
    }
    let device: VFIODevice
    do { device = try VFIODevice.open(PCIFunctionSysfs(address)) } catch { throw fail(error.description) }
    let bar = try { () throws(AccessError) in try device.mapBAR(0) }()
    let ident = vgpu_load_acquire_u32(bar.base)
    guard ident & 0xffff == 0x00ed else {
      throw fail("identification register reads 0x\(String(ident, radix: 16)), not an edu device")
    }
    _ = try { () throws(AccessError) in try device.enableBusMaster() }()

    // Less than the whole 4 KiB buffer: QEMU 7.2's range check rejects a
    // transfer that ends exactly at the buffer's end (and aborts the VM).
    let size = 2048
    let memory = try MappedRegion.anonymous(size: 4096)
    let iova: UInt64 = 0x10_0000  // below the 28-bit DMA mask
    try { () throws(AccessError) in
      try device.ops.mapDMA(iova: iova, size: memory.size, address: memory.base, readable: true, writable: true)
    }()
    defer { try? device.ops.unmapDMA(iova: iova, size: memory.size) }

    let pattern = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    memory.base.copyMemory(from: pattern, byteCount: size)
    try transfer(bar, from: iova, to: 0x40000, size: size, toRAM: false)
    memory.base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    try transfer(bar, from: 0x40000, to: iova, size: size, toRAM: true)
    let back = UnsafeRawBufferPointer(start: memory.base, count: size)
    guard back.elementsEqual(pattern) else { throw fail("the bytes that came back differ from those sent") }
    print(
      "edu DMA: \(size) bytes RAM → device → RAM through IOVA 0x\(String(iova, radix: 16)) (type1 IOMMU), verified")
  }

  /// Starts one DMA and waits (bounded) for the engine to clear its start bit.
  func transfer(_ bar: MappedRegion, from source: UInt64, to destination: UInt64, size: Int, toRAM: Bool) throws {
    vgpu_store_release_u64(bar.base + 0x80, source)
    vgpu_store_release_u64(bar.base + 0x88, destination)
    vgpu_store_release_u64(bar.base + 0x90, UInt64(size))
    vgpu_store_release_u32(bar.base + 0x98, toRAM ? 0x3 : 0x1)
    let deadline = vgpu_monotonic_ns() + 2_000_000_000
    while vgpu_load_acquire_u32(bar.base + 0x98) & 1 != 0 {
      guard vgpu_monotonic_ns() < deadline else {
        throw ToolError(status: .failure, description: "edu DMA on \(address): the transfer did not finish within 2 s")
      }
      vgpu_cpu_relax()
    }
  }
}
