import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

@Suite(.serialized) struct ConcurrencyAndAccountingTests {
  @Test func manyThreadsSubmitAtOnceAndEachGetsItsOwnData() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    let threads = 8
    let failures = Mutex<[String]>([])
    DispatchQueue.concurrentPerform(iterations: threads) { t in
      do {
        for round in 0..<6 {
          let size = 1000 + (t * 7919 + round * 104_729) % (3 << 20)
          let data = randomBytes(size, seed: UInt64(t * 1000 + round))
          let p = try device.allocate(size)
          try device.copy(to: p, from: data)
          try device.nop()
          if try device.read(p, count: size) != data {
            failures.withLock { $0.append("thread \(t) round \(round): data differs") }
          }
          try device.free(p)
        }
      } catch {
        failures.withLock { $0.append("thread \(t): \(error)") }
      }
    }
    #expect(failures.withLock { $0 } == [])
    #expect(try device.memoryInfo().free == 80 << 30)
    let stats = try device.statistics(.process)
    #expect(stats.bytesAllocated == 0)
    #expect(stats.allocations == UInt64(threads * 6))
    #expect(stats.copies >= UInt64(threads * 6 * 2))
    #expect(stats.queuePairs == UInt64(device.info.queuePairs))
  }

  @Test func accountingReturnsToZeroAfterFrees() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    var pointers: [DevicePointer] = []
    for i in 1...50 { pointers.append(try device.allocate(i * 4099)) }
    let (free, total) = try device.memoryInfo()
    let used = try device.statistics(.device).bytesAllocated
    #expect(total - free == used)
    #expect(used >= UInt64((1...50).reduce(0) { $0 + $1 * 4099 }))
    for p in pointers.shuffled() { try device.free(p) }
    #expect(try device.memoryInfo().free == total)
    #expect(try device.statistics(.device).bytesAllocated == 0)
    #expect(try device.statistics(.process).bytesAllocated == 0)
  }

  @Test func closingAQueuePairReclaimsItsMemory() throws {
    let server = try ReferenceDevice()
    server.start()
    defer { server.stop() }
    let a = try Device(spec: .simulated, region: server.region, options: OpenOptions())
    let b = try Device(spec: .simulated, region: server.region, options: OpenOptions())
    let p = try a.allocate(1 << 30)
    try a.copy(to: p, from: randomBytes(4096, seed: 9))
    let mine = try b.allocate(4096)
    #expect(server.memoryInUse.allocated == (1 << 30) + 4096)
    a.close()  // with a gigabyte still allocated
    #expect(server.memoryInUse.allocated == 4096)
    #expect(try b.memoryInfo().free == (80 << 30) - 4096)
    try b.free(mine)
    #expect(server.memoryInUse.allocated == 0)
    b.close()
  }

  @Test func eightyGigabytesCostOnlyTouchedPages() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    let p = try device.allocate(79 << 30)
    try device.copy(to: p + (78 << 30), from: [1, 2, 3])
    #expect(try device.read(p + (78 << 30), count: 3) == [1, 2, 3])
    try device.free(p)
  }

  @Test func outOfMemorySaysHowMuchIsFree() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    do {
      _ = try device.allocate(81 << 30)
      Issue.record("81 GiB allocated on an 80 GiB device")
    } catch {
      #expect(error.status == .outOfMemory)
      #expect(error.description.contains("80 GiB free"))
      #expect(error.description.contains("allocate on sim"))
    }
  }

  @Test func deviceSpecGrammar() throws {
    #expect(try DeviceSpec(parsing: "sim") == .simulated)
    #expect(try DeviceSpec(parsing: "shm:/dev/shm/vgpu0") == .sharedMemory(path: "/dev/shm/vgpu0"))
    #expect(try DeviceSpec(parsing: "unix:/run/vgpu/vgpu0.sock") == .unixSocket(path: "/run/vgpu/vgpu0.sock"))
    #expect(try DeviceSpec(parsing: "0000:00:05.0") == .pci(address: "0000:00:05.0", backend: nil))
    #expect(try DeviceSpec(parsing: "vfio:00:05.0") == .pci(address: "00:05.0", backend: .vfio))
    #expect(try DeviceSpec(parsing: "10000:00:1f.7") == .pci(address: "10000:00:1f.7", backend: nil))
    // Out of range is not a PCI address (a usage error), not a device that is missing.
    for bad in [
      "", "simulator", "shm:", "unix:", "vfio:", "vfio:nonsense", "gpu0", "00:05", "0000:00:05.9", "00:20.0",
      "100:05.0", "0000:00:005.0",
    ] {
      #expect(throws: VGPUError.self) { try DeviceSpec(parsing: bad) }
    }
    let nonsense = #expect(throws: VGPUError.self) { _ = try Device.open("nonsense") }
    #expect(nonsense?.kind == .invalidArgument)
    #expect(nonsense?.description.contains("sim, unix:PATH, shm:PATH") == true, "\(String(describing: nonsense))")
    let absent = #expect(throws: VGPUError.self) { _ = try Device.open("shm:/dev/shm/x-absent") }
    #expect(absent?.kind == .unavailable && absent?.description.contains("no such file") == true)
    // What sits at the vGPU's slot decides the diagnosis; on these machines a virtio RNG does.
    let vfio = #expect(throws: VGPUError.self) { _ = try Device.open("vfio:0000:00:05.0") }
    if let vfio {
      let id = (try? String(contentsOfFile: "/sys/bus/pci/devices/0000:00:05.0/device", encoding: .utf8)) ?? ""
      if id.hasPrefix("0x1110") {
        #expect(vfio.kind == .unavailable)
      } else {
        #expect(vfio.kind == .unavailable && vfio.description.contains("not a vGPU"), "\(vfio)")
      }
    }
    let noDevice = #expect(throws: VGPUError.self) { _ = try Device.open("0000:7f:1f.7") }
    #expect(
      noDevice?.description.contains("no PCI device at 0000:7f:1f.7 (devices here: ") == true,
      "\(String(describing: noDevice))")
  }
}
