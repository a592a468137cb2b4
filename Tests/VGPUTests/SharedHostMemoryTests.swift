import CSupport
import DeviceAccess
import Foundation
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// Host memory shared with the device (2.4): copies from and to it are one
/// copy, the device's, and never touch the staging slots; the device maps
/// only what the submitting process lent it, sealed against resizing, and
/// refuses everything else with a reason.
@Suite struct SharedHostMemoryTests {
  static func open() throws -> Device {
    var options = OpenOptions.simulator()
    options.timeout = .seconds(30)
    options.queuePairs = 1
    return try Device.open("sim", options: options)
  }

  /// Runs one raw command on pair 0 and returns its completion, error statuses included.
  static func raw(_ device: Device, _ entry: SubmissionEntry) throws -> CompletionEntry {
    try device.withQueuePair(0) { (qp: inout GuestQueuePair) throws(VGPUError) in
      let id = try qp.submit(entry, "raw")
      qp.ring()
      return try qp.wait(for: id, "raw")
    }
  }

  /// Every staging byte of the BAR, set to `value` or compared with it.
  static func staging(_ device: Device) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(
      start: device.region.base + Int(device.layout.stagingOffset), count: Int(device.layout.stagingSize))
  }

  /// Two shared buffers of `count` bytes, `data` copied to the device from
  /// the first and back into the second, the staging filled with 0xEE
  /// before: the buffers, the device allocation and the bytes.
  static func roundTrip(
    _ device: Device, _ count: Int,
    using buffers: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer)? = nil,
    seed: UInt64
  ) throws -> (
    a: UnsafeMutableRawBufferPointer, b: UnsafeMutableRawBufferPointer, p: DevicePointer, data: [UInt8]
  ) {
    let a =
      try buffers?.0
      ?? #require(try device.allocateSharedHostMemory(count), "\(String(describing: device.hostSharingRefusal))")
    let b = try buffers?.1 ?? #require(try device.allocateSharedHostMemory(count))
    #expect(a.count % 4096 == 0 && a.count >= count)
    let data = randomBytes(count, seed: seed)
    data.withUnsafeBytes { a.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
    let stage = staging(device)
    memset(stage.baseAddress!, 0xEE, stage.count)
    let p = try device.allocate(count)
    try device.copy(to: p, from: UnsafeRawBufferPointer(rebasing: a[0..<count]))
    try device.copy(from: p, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<count]))
    #expect(memcmp(a.baseAddress!, b.baseAddress!, count) == 0)
    #expect(stage.allSatisfy { $0 == 0xEE }, "a shared-memory copy went through the staging slots")
    return (a, b, p, data)
  }

  @Test func copiesThroughSharedMemoryAreRightAndLeaveTheStagingAlone() throws {
    let device = try Self.open()
    defer { device.close() }
    #expect(device.sharesHostMemory)
    // Not a whole number of chunks or pages: the last chunk is short.
    let (a, b, p, data) = try Self.roundTrip(device, 3 << 20 + 12345, seed: 17)
    let stage = Self.staging(device)
    // A part of it, at an odd offset; and ordinary memory still goes staged.
    try device.copy(to: p + 1, from: UnsafeRawBufferPointer(rebasing: a[777..<(777 + 100_000)]))
    #expect(sameBytes(try device.read(p + 1, count: 100_000), Array(data[777..<(777 + 100_000)])))
    #expect(!stage.allSatisfy { $0 == 0xEE }, "ordinary memory was not staged")
    // A range running past the shared memory's end is not shared: staged, and right.
    let past = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * a.count, alignment: 4096)
    defer { past.deallocate() }
    #expect(!device.isSharedHostMemory(a.baseAddress! + a.count - 10, 20))
    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    #expect(try device.freeSharedHostMemory(b.baseAddress!))
    #expect(try !device.freeSharedHostMemory(past.baseAddress!))
    try device.free(p)
  }

  @Test func theDeviceRefusesWhatWasNotLentProperly() throws {
    let device = try Self.open()
    defer { device.close() }
    let p = try device.allocate(1 << 20)
    defer { try? device.free(p) }
    let page = 4096
    func status(_ c: CompletionEntry) -> (CommandStatus?, UInt32) { (CommandStatus(rawValue: c.status), c.detail) }

    // A file without seals (not a memfd): it could shrink under the device's mapping.
    let loosePath = "/dev/shm/vgpu-loose-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let loose = Glibc.open(loosePath, O_CREAT | O_RDWR | O_EXCL, 0o600)
    unlink(loosePath)
    #expect(ftruncate(loose, off_t(page)) == 0)
    let looseMap = try #require(mmap(nil, page, PROT_READ | PROT_WRITE, MAP_SHARED, loose, 0))
    defer {
      munmap(looseMap, page)
      close(loose)
    }
    let at = UInt64(UInt(bitPattern: looseMap))
    var c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(loose), address: at, length: 4096).entry)
    #expect(status(c) == (.invalidValue, 1))
    // A descriptor that is not open; an unaligned address; no length.
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: 99_999, address: at, length: 4096).entry)
    #expect(status(c) == (.invalidValue, 1))
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(loose), address: at + 8, length: 4096).entry)
    #expect(status(c) == (.invalidValue, 2))
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(loose), address: at, length: 0).entry)
    #expect(status(c) == (.invalidValue, 3))

    // A sealed one shorter than the length claimed.
    let sealed = vgpu_memfd_sealed("short", UInt64(page))
    defer { close(sealed) }
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(sealed), address: at, length: 8192).entry)
    #expect(status(c) == (.invalidValue, 1))
    // The same, right: then an overlapping second share is refused.
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(sealed), address: at, length: 4096).entry)
    #expect(status(c) == (.success, 0) && c.result0 == 4096)
    c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(sealed), address: at, length: 4096).entry)
    #expect(status(c) == (.invalidValue, 2))

    // Copies outside what was shared, or into memory that is not an allocation.
    c = try Self.raw(device, Command.CopyFromHost(device: p.address, host: at + 4000, length: 200).entry)
    #expect(status(c) == (.invalidAddress, 2))
    c = try Self.raw(device, Command.CopyToHost(device: p.address, host: at - 4096, length: 16).entry)
    #expect(status(c) == (.invalidAddress, 2))
    c = try Self.raw(device, Command.CopyFromHost(device: 0x10, host: at, length: 16).entry)
    #expect(status(c) == (.invalidAddress, 1))
    // Within it: the device's mapping is the same pages.
    looseMap.storeBytes(of: 0x0123_4567_89AB_CDEF as UInt64, as: UInt64.self)
    let sealedMap = try #require(mmap(nil, page, PROT_READ | PROT_WRITE, MAP_SHARED, sealed, 0))
    defer { munmap(sealedMap, page) }
    sealedMap.storeBytes(of: 0x1122_3344_5566_7788 as UInt64, as: UInt64.self)
    c = try Self.raw(device, Command.CopyFromHost(device: p.address, host: at, length: 8).entry)
    #expect(status(c) == (.success, 0))
    #expect(try device.read(p, count: 8) == withUnsafeBytes(of: UInt64(0x1122_3344_5566_7788)) { Array($0) })
    // Back, streaming (CopyFlags, 2.4); a flag copyToHost does not define is refused.
    sealedMap.storeBytes(of: 0 as UInt64, as: UInt64.self)
    c = try Self.raw(device, Command.CopyToHost(device: p.address, host: at, length: 4096, streaming: true).entry)
    #expect(status(c) == (.success, 0))
    #expect(sealedMap.load(as: UInt64.self) == 0x1122_3344_5566_7788)
    var flagged = Command.CopyToHost(device: p.address, host: at, length: 8).entry
    flagged.flags = 2
    #expect(status(try Self.raw(device, flagged)) == (.invalidValue, 0))

    // Taken back: copies through it fail, and so does taking it back twice.
    c = try Self.raw(device, Command.HostMemoryUnshare(address: at).entry)
    #expect(status(c) == (.success, 0) && c.result0 == 4096)
    c = try Self.raw(device, Command.CopyFromHost(device: p.address, host: at, length: 8).entry)
    #expect(status(c) == (.invalidAddress, 2))
    c = try Self.raw(device, Command.HostMemoryUnshare(address: at).entry)
    #expect(status(c) == (.invalidAddress, 2))
  }

  /// Across processes, as Ollama's runner would: a real mediator takes this
  /// process's memfd (pidfd_getfd) and copies straight between its pages and
  /// device memory; the BAR's staging stays as it was.
  @Test func aMediatorCopiesStraightFromThisProcess() throws {
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    let device = try Device.open(mediator.spec)
    defer { device.close() }
    #expect(device.sharesHostMemory)
    // Past 8 MiB: the D2H chunks carry CopyFlags.streaming.
    let (a, b, p, data) = try Self.roundTrip(device, 9 << 20 + 99, seed: 99)
    // Ordinary memory reads the same bytes back (staged).
    #expect(sameBytes(try device.read(p, count: data.count), data))
    #expect(try device.freeSharedHostMemory(a.baseAddress!))
    #expect(try device.freeSharedHostMemory(b.baseAddress!))
  }

  /// A BAR every process may claim pairs on (a shared file): a claim's pid
  /// could name any process, so the device takes no one's descriptors.
  @Test func aSharedBARDoesNotOfferIt() throws {
    let path = "/dev/shm/vgpu-shared-host-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let region = try MappedRegion.sharedFile(path, create: 64 << 20, exclusive: true)
    defer { unlink(path) }
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 64 << 20
    let reference = try ReferenceDevice(configuration: config, region: region)
    reference.announce(pid: UInt32(getpid()))
    reference.start()
    defer { reference.stop() }
    var options = OpenOptions()
    options.timeout = .seconds(30)
    let device = try Device.open("shm:" + path, options: options)
    defer { device.close() }
    #expect(!device.sharesHostMemory)
    #expect(try device.allocateSharedHostMemory(4096) == nil)
    let fd = vgpu_memfd_sealed("refused", 4096)
    defer { close(fd) }
    let c = try Self.raw(device, Command.HostMemoryShare(descriptor: UInt32(fd), address: 1 << 30, length: 4096).entry)
    #expect(CommandStatus(rawValue: c.status) == .notSupported)
  }
}
