import CSupport
import DeviceAccess
import Foundation
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// The page-locked window (2.4, feature hostWindow): a VM's device, which
/// cannot take its guests' memory, hands out ranges of BAR bytes past the
/// layout; copies from and to them are one copy, staged through no slot; the
/// device accepts a range only from its own process and scrubs it when freed.
@Suite struct HostWindowTests {
  static let windowBytes: UInt64 = 8 << 20

  /// A device as a VM's mediator serves it (its owners are not this host's
  /// processes), with a window of 8 MiB, in this process.
  static func open(queuePairs: Int = 1) throws -> Device {
    var vm = ReferenceDeviceConfiguration()
    vm.memorySize = 256 << 20
    vm.ownersAreLocalProcesses = false
    vm.hostWindow = windowBytes
    var options = OpenOptions.simulator(vm)
    options.timeout = .seconds(30)
    options.queuePairs = queuePairs
    return try Device.open("sim", options: options)
  }

  static func raw(_ device: Device, _ entry: SubmissionEntry) throws -> CompletionEntry {
    try SharedHostMemoryTests.raw(device, entry)
  }

  static func barOffset(_ device: Device, _ p: UnsafeRawPointer) -> UInt64 {
    UInt64(UInt(bitPattern: p) - UInt(bitPattern: device.region.base))
  }

  @Test func theDeviceOffersItsWindowInTheRegisters() throws {
    let device = try Self.open()
    defer { device.close() }
    #expect(device.info.features.contains(.hostWindow) && device.hasHostWindow)
    #expect(!device.sharesHostMemory)
    let offset = device.registers.load(Register.hostWindowOffset)
    let size = device.registers.load(Register.hostWindowSize)
    #expect(offset == (device.layout.regionSize + 4095) / 4096 * 4096)
    #expect(size == Self.windowBytes && UInt64(device.region.size) >= offset + size)
    #expect(device.window == (offset, size))
    #expect(FeatureBits(rawValue: device.registers.load(Register.features)).contains(.hostWindow))

    // Without a window (the default) nothing is offered: page-locked memory is ordinary memory.
    var plain = ReferenceDeviceConfiguration()
    plain.memorySize = 64 << 20
    plain.ownersAreLocalProcesses = false
    let none = try Device.open("sim", options: .simulator(plain))
    defer { none.close() }
    #expect(!none.hasHostWindow && none.registers.load(Register.hostWindowSize) == 0)
    #expect(none.registers.load(Register.hostWindowOffset) == 0)
    #expect(try none.allocateSharedHostMemory(4096) == nil)
    let c = try Self.raw(none, Command.WindowAlloc(length: 4096).entry)
    #expect(CommandStatus(rawValue: c.status) == .notSupported)
  }

  @Test func copiesThroughTheWindowAreRightAndLeaveTheStagingAlone() throws {
    let device = try Self.open()
    defer { device.close() }
    let count = 3 << 20 + 12345
    let a = try #require(try device.allocateSharedHostMemory(count))
    let b = try #require(try device.allocateSharedHostMemory(count))
    let window = device.window
    for buffer in [a, b] {
      let at = Self.barOffset(device, buffer.baseAddress!)
      #expect(at >= window.offset && at + UInt64(buffer.count) <= window.offset + window.size)
      #expect(buffer.count % 4096 == 0 && buffer.count >= count)
      #expect(buffer.allSatisfy { $0 == 0 }, "window memory must come zeroed")
      #expect(device.pageLocked(buffer.baseAddress! + 5, 10) == .window(barOffset: at + 5))
    }
    let (_, b2, p, data) = try SharedHostMemoryTests.roundTrip(device, count, using: (a, b), seed: 23)
    #expect(b2.baseAddress == b.baseAddress)
    // A part at an odd offset: its staging argument is odd too.
    try device.copy(to: p + 1, from: UnsafeRawBufferPointer(rebasing: a[777..<(777 + 100_000)]))
    #expect(sameBytes(try device.read(p + 1, count: 100_000), Array(data[777..<(777 + 100_000)])))
    // Past the range's end: not page-locked, staged.
    #expect(device.pageLocked(a.baseAddress! + a.count - 10, 20) == nil)

    // Freed: the device scrubs the range, so the next owner finds zeros.
    let at = Self.barOffset(device, a.baseAddress!)
    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    #expect(device.pageLocked(a.baseAddress!, 1) == nil)
    #expect(a.allSatisfy { $0 == 0 }, "a freed window range kept its bytes")
    #expect(try device.freeSharedHostMemory(b.baseAddress!))
    #expect(try !device.freeSharedHostMemory(b.baseAddress!))
    // The same bytes again, zeroed.
    let again = try #require(try device.allocateSharedHostMemory(count))
    #expect(Self.barOffset(device, again.baseAddress!) == at || again.allSatisfy { $0 == 0 })
    #expect(again.allSatisfy { $0 == 0 })
    #expect(try device.freeSharedHostMemory(again.baseAddress!))
    try device.free(p)
  }

  @Test func theDeviceRefusesWhatIsNotItsCallersWindowRange() throws {
    let device = try Self.open()
    defer { device.close() }
    func status(_ c: CompletionEntry) -> (CommandStatus?, UInt32) { (CommandStatus(rawValue: c.status), c.detail) }
    let p = try device.allocate(1 << 20)
    let a = try #require(try device.allocateSharedHostMemory(64 << 10))
    let at = Self.barOffset(device, a.baseAddress!)
    let window = device.window

    // windowFree: only a range's first byte.
    #expect(at == window.offset, "the first range is the window's first bytes")
    for bad in [0, window.offset - 4096, at + 4096, at + 1, window.offset + window.size, UInt64.max] {
      let c = try Self.raw(device, Command.WindowFree(offset: bad).entry)
      #expect(status(c) == (.invalidAddress, 1), "windowFree(\(bad))")
    }
    var c = try Self.raw(device, Command.WindowAlloc(length: 0).entry)
    #expect(status(c) == (.invalidValue, 1))
    // A copy whose staging runs past the range's end, or lies in no range.
    c = try Self.raw(device, Command.CopyToDevice(device: p.address, staging: at + 60 << 10, length: 8 << 10).entry)
    #expect(status(c) == (.invalidStaging, 2))
    c = try Self.raw(device, Command.CopyFromDevice(device: p.address, staging: at + 64 << 10, length: 16).entry)
    #expect(status(c) == (.invalidStaging, 2))
    c = try Self.raw(device, Command.CopyToDevice(device: p.address, staging: at + 60 << 10, length: 4 << 10).entry)
    #expect(status(c) == (.success, 0))

    // Full: outOfMemory with the largest range that fits, and the guest falls back to ordinary memory.
    c = try Self.raw(device, Command.WindowAlloc(length: window.size).entry)
    #expect(status(c) == (.outOfMemory, 1))
    #expect(c.result0 == window.size - (64 << 10) && c.result0 % 4096 == 0)
    #expect(try device.allocateSharedHostMemory(Int(window.size)) == nil)
    c = try Self.raw(device, Command.WindowAlloc(length: c.result0).entry)
    #expect(status(c) == (.success, 0) && c.result1 == window.size - (64 << 10))
    let rest = c.result0
    c = try Self.raw(device, Command.WindowAlloc(length: 1).entry)
    #expect(status(c).0 == .outOfMemory && c.result0 == 0)
    c = try Self.raw(device, Command.WindowFree(offset: rest).entry)
    #expect(status(c) == (.success, 0) && c.result0 == window.size - (64 << 10))

    // Another process (a hand-driven pair under another pid) allocates a range.
    var other = HandQueue(base: device.region.base, layout: device.layout, index: 1)
    let serve: () -> Void = { usleep(200) }
    #expect(other.claim(pid: 4_242_424, serve: serve))
    guard case .success = other.identify(timeout: .seconds(10), serve: serve) else {
      Issue.record("the other pair's identify failed")
      return
    }
    let sent = other.send(Command.WindowAlloc(length: 8192).entry, timeout: .seconds(10), serve: serve)
    let theirs = try #require(sent)
    #expect(status(theirs) == (.success, 0) && theirs.result1 == 8192)
    let foreign = theirs.result0
    memset(device.region.base + Int(foreign), 0xAB, 8192)
    // Ours may not name it, nor free it.
    c = try Self.raw(device, Command.CopyToDevice(device: p.address, staging: foreign, length: 4096).entry)
    #expect(status(c) == (.permissionDenied, 2))
    c = try Self.raw(device, Command.CopyFromDevice(device: p.address, staging: foreign + 4096, length: 16).entry)
    #expect(status(c) == (.permissionDenied, 2))
    // Running from ours into theirs (adjacent or not): no one range holds it.
    c = try Self.raw(device, Command.CopyToDevice(device: p.address, staging: at, length: 128 << 10).entry)
    #expect(status(c).0 == .invalidStaging || status(c).0 == .permissionDenied)
    c = try Self.raw(device, Command.WindowFree(offset: foreign).entry)
    #expect(status(c) == (.permissionDenied, 1))
    // Theirs may copy through it.
    let allocated = other.send(Command.Alloc(length: 4096).entry, timeout: .seconds(10), serve: serve)
    let q = try #require(allocated)
    let copied = other.send(
      Command.CopyToDevice(device: q.result0, staging: foreign, length: 4096).entry, timeout: .seconds(10),
      serve: serve)
    #expect(copied.map(status) ?? (nil, 0) == (.success, 0))

    // Its release frees and scrubs its range.
    other.release()
    let deadline = HandQueue.now() + 10_000_000_000
    while other.view.state != QueuePairState.free.rawValue && HandQueue.now() < deadline { usleep(1000) }
    #expect(other.view.state == QueuePairState.free.rawValue)
    let scrubbed = UnsafeRawBufferPointer(start: device.region.base + Int(foreign), count: 8192)
    #expect(scrubbed.allSatisfy { $0 == 0 }, "a released pair's window range kept its bytes")
    c = try Self.raw(device, Command.CopyToDevice(device: p.address, staging: foreign, length: 4096).entry)
    #expect(status(c) == (.invalidStaging, 2))

    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    try device.free(p)
  }

  /// A shared-memory BAR file larger than the layout, served in this process
  /// as a VM's mediator serves it and opened as `shm:FILE`: the window takes
  /// everything past the layout, and window copies are right.
  @Test func aBARFileLargerThanItsLayoutGivesTheRestToTheWindow() throws {
    let path = "/dev/shm/vgpu-window-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    defer { unlink(path) }
    let region = try MappedRegion.sharedFile(path, create: 32 << 20, exclusive: true)
    var vm = ReferenceDeviceConfiguration()
    vm.memorySize = 64 << 20
    vm.ownersAreLocalProcesses = false
    vm.hostWindow = 4 << 20
    // A former run's bytes in the file: the device clears the window when it starts.
    memset(region.base + Int(vm.hostWindowOffset), 0x5C, region.size - Int(vm.hostWindowOffset))
    let reference = try ReferenceDevice(configuration: vm, region: region)
    reference.announce(pid: UInt32(getpid()))
    reference.start()
    defer { reference.stop() }
    var options = OpenOptions()
    options.queuePairs = 1
    options.timeout = .seconds(30)
    let device = try Device.open("shm:" + path, options: options)
    defer { device.close() }
    #expect(device.window == (vm.hostWindowOffset, UInt64(32 << 20) - vm.hostWindowOffset))
    let count = 2 << 20 + 99
    let a = try #require(try device.allocateSharedHostMemory(count))
    let b = try #require(try device.allocateSharedHostMemory(count))
    #expect(a.allSatisfy { $0 == 0 } && b.allSatisfy { $0 == 0 }, "window memory holds a former run's bytes")
    let (_, _, p, _) = try SharedHostMemoryTests.roundTrip(device, count, using: (a, b), seed: 29)
    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    #expect(try device.freeSharedHostMemory(b.baseAddress!))
    try device.free(p)
  }

  /// A window the BAR cannot hold is refused when the device is set up, saying what it needs.
  @Test func aWindowLargerThanTheBARIsRefusedAtSetUp() throws {
    var vm = ReferenceDeviceConfiguration()
    vm.memorySize = 64 << 20
    vm.hostWindow = 64 << 20
    let region = try MappedRegion.anonymous(size: 32 << 20)
    #expect {
      _ = try ReferenceDevice(configuration: vm, region: region)
    } throws: { error in
      "\(error)".contains("page-locked window of \(64 << 20) bytes")
    }
  }
}
