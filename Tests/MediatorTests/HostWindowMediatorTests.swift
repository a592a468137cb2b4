import DeviceAccess
import Foundation
import TestSupport
import Testing
import VGPUProtocol

@testable import VGPU

/// The page-locked window across processes (2.4): `vgpu-mediator --vm
/// --host-window 64M` makes the BAR file the layout plus the window, and a
/// client opening it as a VM's process would (`shm:FILE`) gets its
/// page-locked memory there and copies through it in one copy.
@Suite struct HostWindowMediatorTests {
  @Test func aVMsClientGetsWindowMemoryAndCopiesThroughIt() throws {
    let mediator = try MediatorProcess(arguments: ["--vm", "--host-window", "64M"])
    var options = OpenOptions()
    options.queuePairs = 1
    options.timeout = .seconds(30)
    let device = try Device.open(mediator.spec, options: options)
    defer { device.close() }
    #expect(device.hasHostWindow, "features 0x\(String(device.info.features.rawValue, radix: 16))")
    #expect(!device.sharesHostMemory)
    // At least 64 MiB past the layout, in a file still a power of two for QEMU.
    #expect(device.window.size >= 64 << 20 && device.window.offset >= device.layout.regionSize)
    #expect(device.region.size & (device.region.size - 1) == 0)

    let count = 9 << 20 + 4321  // past 8 MiB: the D2H chunks stream (CopyFlags)
    let a = try #require(try device.allocateSharedHostMemory(count))
    let b = try #require(try device.allocateSharedHostMemory(count))
    #expect(device.pageLocked(a.baseAddress!, count) != nil && device.pageLocked(b.baseAddress!, count) != nil)
    let data = randomBytes(count, seed: 41)
    data.withUnsafeBytes { a.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
    let stage = UnsafeMutableRawBufferPointer(
      start: device.region.base + Int(device.layout.stagingOffset), count: Int(device.layout.stagingSize))
    memset(stage.baseAddress!, 0xEE, stage.count)
    let p = try device.allocate(count)
    try device.copy(to: p, from: UnsafeRawBufferPointer(rebasing: a[0..<count]))
    try device.copy(from: p, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<count]))
    #expect(memcmp(a.baseAddress!, b.baseAddress!, count) == 0)
    #expect(stage.allSatisfy { $0 == 0xEE }, "a window copy went through the staging slots")
    // And what the device holds is right, read back staged.
    #expect(sameBytes(try device.read(p + 1000, count: 70_000), Array(data[1000..<71_000])))
    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    #expect(try device.freeSharedHostMemory(b.baseAddress!))
    try device.free(p)
  }

  /// `--vm-bar PATH,window=SIZE`: only that VM's BAR has a window.
  @Test func aVMBarsWindowIsItsOwn() throws {
    let bars = MultiVMTests.Bars()
    let mediator = try MediatorProcess(arguments: [
      "--vm-bar", "\(bars.first),window=8M,name=pinned", "--vm-bar", "\(bars.second),name=plain",
    ])
    defer { mediator.stop() }
    var options = OpenOptions()
    options.queuePairs = 1
    let pinned = try Device.open("shm:\(bars.first)", options: options)
    defer { pinned.close() }
    let plain = try Device.open("shm:\(bars.second)", options: options)
    defer { plain.close() }
    #expect(pinned.hasHostWindow && pinned.window.size >= 8 << 20)
    #expect(!plain.hasHostWindow && plain.window.size == 0)
    let count = 1 << 20
    let a = try #require(try pinned.allocateSharedHostMemory(count))
    #expect(pinned.isWindowMemory(a.baseAddress!))
    #expect(try plain.allocateSharedHostMemory(count) == nil)
    let data = randomBytes(count, seed: 43)
    data.withUnsafeBytes { a.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
    let p = try pinned.allocate(count)
    try pinned.copy(to: p, from: UnsafeRawBufferPointer(rebasing: a[0..<count]))
    #expect(sameBytes(try pinned.read(p, count: count), data))
    #expect(try pinned.freeSharedHostMemory(a.baseAddress!))
    try pinned.free(p)
  }
}
