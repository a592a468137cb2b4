import Testing
import VGPUProtocol

@testable import VGPUDevice

/// Drives a reference device by hand, one pass at a time, as a guest that
/// writes raw submission entries: every validation rule gets its error, and
/// the device serves the next command.
final class Harness {
  let device: ReferenceDevice
  let layout: BARLayout
  var queues: [Int: (view: QueuePairView, tail: UInt32, head: UInt32, phase: UInt16)] = [:]

  init(memory: UInt64 = 1 << 30) throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = memory
    config.layout = BARLayout(queuePairs: 4, depth: 8, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
    device = try ReferenceDevice(configuration: config)
    layout = config.layout
  }

  /// Claims queue pair `qp` for `pid` and sends identify unless told not to.
  func claim(_ qp: Int, pid: UInt32 = 1000, identify: Bool = true) {
    let view = QueuePairView(base: device.region.base, layout: layout, index: qp)
    #expect(view.exchangeState(from: .free, to: .claiming))
    view.setOwnerPID(pid)
    device.servePass()
    #expect(view.state == QueuePairState.active.rawValue)
    queues[qp] = (view, 0, 0, 1)
    if identify {
      #expect(
        send(SubmissionEntry(.identify, UInt64(ProtocolVersion.packed), FeatureBits.all.rawValue), on: qp).status == 0)
    }
  }

  func send(_ e: SubmissionEntry, on qp: Int = 0) -> CompletionEntry {
    var q = queues[qp]!
    var entry = e
    entry.commandID = UInt16(q.tail) + 100
    q.view.writeSubmission(entry, at: q.tail)
    q.tail = (q.tail + 1) % layout.depth
    q.view.ringSubmission(tail: q.tail)
    device.servePass()
    guard let c = q.view.completion(at: q.head, phase: q.phase) else {
      Issue.record("no completion")
      return CompletionEntry(commandID: 0, status: .timeout)
    }
    #expect(c.commandID == entry.commandID)
    q.head = (q.head + 1) % layout.depth
    if q.head == 0 { q.phase ^= 1 }
    q.view.ringCompletion(head: q.head)
    queues[qp] = q
    return c
  }

  /// Sends `e`, expects `status` (and `detail`), then checks that a NOP still works.
  @discardableResult
  func expect(
    _ e: SubmissionEntry, _ status: Status, detail: UInt32? = nil, on qp: Int = 0,
    sourceLocation: SourceLocation = #_sourceLocation
  ) -> CompletionEntry {
    let c = send(e, on: qp)
    #expect(
      c.status == status.rawValue, "got \(Status(rawValue: c.status).map(String.init(describing:)) ?? "?")",
      sourceLocation: sourceLocation)
    if let detail { #expect(c.detail == detail, sourceLocation: sourceLocation) }
    #expect(send(SubmissionEntry(.nop), on: qp).status == 0, "device stopped serving", sourceLocation: sourceLocation)
    return c
  }

  func staging(_ qp: Int = 0, offset: UInt64 = 0) -> UInt64 { layout.staging(qp) + offset }
  func stage(_ bytes: [UInt8], qp: Int = 0) {
    (device.region.base + Int(staging(qp))).copyMemory(from: bytes, byteCount: bytes.count)
  }
  func alloc(_ size: UInt64, qp: Int = 0) -> UInt64 {
    let c = send(SubmissionEntry(.alloc, size), on: qp)
    #expect(c.status == 0)
    return c.result0
  }
}

@Suite struct ValidationTests {
  @Test func headerAndOpcode() throws {
    let h = try Harness()
    h.claim(0, identify: false)
    h.expect(SubmissionEntry(.memoryInfo), .notInitialized)
    h.expect(SubmissionEntry(.identify, UInt64(2) << 16), .versionMismatch, detail: 1)
    #expect(h.send(SubmissionEntry(.identify, UInt64(ProtocolVersion.packed))).status == 0)
    var e = SubmissionEntry(.nop)
    e.opcode = 0xee
    h.expect(e, .invalidOpcode)
    e = SubmissionEntry(.nop)
    e.flags = 1
    h.expect(e, .invalidValue)
    e = SubmissionEntry(.nop)
    e.reserved = 7
    h.expect(e, .invalidValue)
  }

  @Test func allocAndFree() throws {
    let h = try Harness()
    h.claim(0)
    h.expect(SubmissionEntry(.alloc, 0), .invalidValue, detail: 1)
    h.expect(SubmissionEntry(.alloc, 4096, 300), .invalidValue, detail: 2)
    let oom = h.expect(SubmissionEntry(.alloc, 2 << 30), .outOfMemory, detail: 1)
    #expect(oom.result0 == 1 << 30 && oom.result1 == 1 << 30)
    let p = h.alloc(1000)
    #expect(p == deviceAddressBase)
    h.expect(SubmissionEntry(.free, p + 256), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.free, 0), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.free, UInt64.max), .invalidAddress, detail: 1)
    #expect(h.send(SubmissionEntry(.free, p)).status == 0)
    h.expect(SubmissionEntry(.free, p), .invalidAddress, detail: 1)
  }

  @Test func copiesCheckDeviceAndStagingRanges() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    let p = h.alloc(4096)
    let stg = h.staging()
    #expect(h.send(SubmissionEntry(.copyToDevice, p, stg, 4096)).status == 0)
    h.expect(SubmissionEntry(.copyToDevice, p, stg, 4097), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.copyToDevice, p + 4096, stg, 1), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.copyToDevice, 12345, stg, 1), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.copyFromDevice, p, h.staging(1), 16), .invalidStaging, detail: 2)  // another pair's window
    h.expect(SubmissionEntry(.copyFromDevice, p, stg + (128 << 10) - 8, 16), .invalidStaging, detail: 2)
    h.expect(SubmissionEntry(.copyFromDevice, p, UInt64.max - 4, 16), .invalidStaging, detail: 2)
    h.expect(SubmissionEntry(.copyFromDevice, p, 0, 16), .invalidStaging, detail: 2)  // the registers
    let q = h.alloc(4096)
    #expect(h.send(SubmissionEntry(.copyDeviceToDevice, q, p, 4096)).status == 0)
    h.expect(SubmissionEntry(.copyDeviceToDevice, q, p, 8192), .invalidAddress, detail: 1)
    h.expect(SubmissionEntry(.copyDeviceToDevice, q, p + 100, 4096), .invalidAddress, detail: 2)
    h.expect(SubmissionEntry(.memset, p, 0xab, 3, 10), .invalidValue, detail: 3)
    h.expect(SubmissionEntry(.memset, p, 0xab, 4, UInt64.max / 2), .invalidValue, detail: 4)
    h.expect(SubmissionEntry(.memset, p, 0xab, 4, 1025), .invalidAddress, detail: 1)
    #expect(h.send(SubmissionEntry(.memset, p, 0xab, 4, 1024)).status == 0)
  }

  @Test func ownershipAcrossProcesses() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 2000)
    let mine = h.alloc(4096, qp: 0)
    h.expect(SubmissionEntry(.copyToDevice, mine, h.staging(1), 16), .permissionDenied, detail: 1, on: 1)
    h.expect(SubmissionEntry(.free, mine), .permissionDenied, detail: 1, on: 1)
    h.stage(Array("vgpu-module 1\nkernel fill\n".utf8))
    let module = h.send(SubmissionEntry(.moduleLoad, 0, h.staging(), 26)).result0
    h.expect(SubmissionEntry(.moduleUnload, module), .permissionDenied, detail: 1, on: 1)
    let stream = h.send(SubmissionEntry(.streamCreate)).result0
    h.expect(SubmissionEntry(.streamSynchronize, stream), .permissionDenied, detail: 1, on: 1)
    // Handles that are forged, of the wrong kind, or stale.
    h.expect(SubmissionEntry(.moduleUnload, stream), .invalidHandle, detail: 1)
    h.expect(SubmissionEntry(.moduleUnload, module + 1), .invalidHandle, detail: 1)
    #expect(h.send(SubmissionEntry(.streamDestroy, stream)).status == 0)
    h.expect(SubmissionEntry(.streamDestroy, stream), .invalidHandle, detail: 1)
  }

  @Test func modulesFunctionsLaunches() throws {
    let h = try Harness()
    h.claim(0)
    h.stage(Array("vgpu-module 1\nkernel nonsense\n".utf8))
    h.expect(SubmissionEntry(.moduleLoad, 0, h.staging(), 30), .invalidImage, detail: 2)
    let text = Array("vgpu-module 1\nkernel vector_add\n".utf8)
    h.stage(text)
    let module = h.send(SubmissionEntry(.moduleLoad, 0, h.staging(), UInt64(text.count))).result0
    h.stage(Array("saxpy".utf8))
    h.expect(SubmissionEntry(.getFunction, module, h.staging(), 5), .notFound, detail: 3)
    h.expect(SubmissionEntry(.getFunction, module, h.staging(), 0), .invalidValue, detail: 3)
    h.stage(Array("vector_add".utf8))
    let f = h.send(SubmissionEntry(.getFunction, module, h.staging(), 10))
    #expect(f.status == 0 && f.result1 == 32)
    let p = h.alloc(1024)
    let params = BuiltinKernel.pack(.vectorAdd, [.pointer(p), .pointer(p), .pointer(p), .u32(256)])
    h.stage(params)
    func launch(_ fn: UInt64, grid: UInt64 = 1, block: UInt64 = 256, params: UInt64 = 32, stream: UInt64 = 0)
      -> SubmissionEntry
    {
      SubmissionEntry(.launch, fn, grid | 1 << 32, 1 | block << 32, 1 | 1 << 32, params << 32, h.staging(), stream)
    }
    #expect(h.send(launch(f.result0)).status == 0)
    h.expect(launch(module), .invalidHandle, detail: 1)
    h.expect(launch(f.result0, grid: 0), .invalidValue, detail: 2)
    h.expect(launch(f.result0, block: 2048), .invalidValue, detail: 3)
    let wrong = h.expect(launch(f.result0, params: 24), .invalidParameters, detail: 5)
    #expect(wrong.result0 == 32 && wrong.result1 == 24)
    h.expect(launch(f.result0, stream: 77), .invalidHandle, detail: 7)
    h.stage(BuiltinKernel.pack(.vectorAdd, [.pointer(p), .pointer(p), .pointer(p), .u32(257)]))
    h.expect(launch(f.result0, grid: 2), .invalidAddress)
  }

  @Test func eventsAndStatistics() throws {
    let h = try Harness()
    h.claim(0)
    let a = h.send(SubmissionEntry(.eventCreate)).result0
    let b = h.send(SubmissionEntry(.eventCreate)).result0
    h.expect(SubmissionEntry(.eventElapsed, a, b), .notReady, detail: 1)
    #expect(h.send(SubmissionEntry(.eventRecord, a)).status == 0)
    h.expect(SubmissionEntry(.eventElapsed, a, b), .notReady, detail: 2)
    h.expect(SubmissionEntry(.eventRecord, a, 99), .invalidHandle, detail: 2)
    h.expect(SubmissionEntry(.statistics, 7, h.staging(), 64), .invalidValue, detail: 1)
    h.expect(SubmissionEntry(.statistics, 0, h.staging(), 63), .invalidValue, detail: 3)
    h.expect(SubmissionEntry(.statistics, 0, h.staging(1), 64), .invalidStaging, detail: 2)
  }

  @Test func processesListsEachProcessOnce() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 2000)
    h.claim(2, pid: 1000)
    _ = h.alloc(1 << 20, qp: 0)
    _ = h.alloc(4096, qp: 2)
    _ = h.alloc(8192, qp: 1)
    let c = h.send(SubmissionEntry(.processes, 0, h.staging(), 64))
    #expect(c.status == 0 && c.result0 == 2 && c.result1 == 2)
    let records = (0..<2).map {
      (h.device.region.base + Int(h.staging()) + $0 * 32).load(as: ProcessRecord.self)
    }
    #expect(records[0].pid == 1000 && records[0].queuePairs == 2 && records[0].bytesAllocated == (1 << 20) + 4096)
    #expect(records[1].pid == 2000 && records[1].queuePairs == 1 && records[1].bytesAllocated == 8192)
    #expect(records.allSatisfy { $0.busyNanoseconds > 0 && $0.launches == 0 })
    // Room for one: the first, and the total says there are more.
    let one = h.send(SubmissionEntry(.processes, 0, h.staging(), 32))
    #expect(one.status == 0 && one.result0 == 1 && one.result1 == 2)
    // A released pair leaves the list.
    h.queues[1]!.view.setState(.closing)
    h.device.servePass()
    #expect(h.send(SubmissionEntry(.processes, 0, h.staging(), 64)).result1 == 1)
  }

  @Test func processesChecksLengthAndStaging() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    h.expect(SubmissionEntry(.processes, 0, h.staging(), 0), .invalidValue, detail: 3)
    h.expect(SubmissionEntry(.processes, 0, h.staging(), 31), .invalidValue, detail: 3)
    h.expect(SubmissionEntry(.processes, 0, h.staging(), 48), .invalidValue, detail: 3)
    h.expect(SubmissionEntry(.processes, 0, h.staging(1), 32), .invalidStaging, detail: 2)  // another pair's window
    h.expect(SubmissionEntry(.processes, 0, h.staging(offset: (128 << 10) - 16), 32), .invalidStaging, detail: 2)
    h.expect(SubmissionEntry(.processes, 0, UInt64.max - 16, 32), .invalidStaging, detail: 2)
    h.expect(SubmissionEntry(.processes, 0, h.staging(), UInt64.max - 31), .invalidStaging, detail: 2)
    #expect(h.send(SubmissionEntry(.processes, 0, h.staging(), 128 << 10)).status == 0)  // the whole window
  }

  @Test func aVersion1_0GuestIsServed() throws {
    let h = try Harness()
    h.claim(0, identify: false)
    let c = h.send(SubmissionEntry(.identify, 0x0001_0000, FeatureBits.version1_0.rawValue))
    #expect(c.status == 0 && c.result0 == FeatureBits.version1_0.rawValue && c.result1 == 0x0001_0002)
    #expect(h.send(SubmissionEntry(.memoryInfo)).status == 0)
  }

  @Test func badDoorbellsFaultOnlyThatQueuePair() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    h.queues[0]!.view.ringSubmission(tail: 99)  // not below the depth
    h.device.servePass()
    #expect(h.queues[0]!.view.fault == QueuePairFault.tailOutOfRange.rawValue)
    #expect(h.send(SubmissionEntry(.nop), on: 1).status == 0)
  }

  @Test func closingReclaimsEverything() throws {
    let h = try Harness()
    h.claim(0)
    _ = h.alloc(1 << 20)
    _ = h.send(SubmissionEntry(.streamCreate))
    #expect(h.device.memoryInUse.allocated == 1 << 20)
    h.queues[0]!.view.setState(.closing)
    h.device.servePass()
    #expect(h.queues[0]!.view.state == QueuePairState.free.rawValue)
    #expect(h.device.memoryInUse.allocated == 0)
  }
}
