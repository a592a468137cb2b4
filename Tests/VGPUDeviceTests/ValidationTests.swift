import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// Every validation rule of the reference device, through ``Harness``.
/// Well-formed commands go through their codecs (``Command``); values out
/// of range are still expressible through them. Only what no codec can
/// write (an unknown opcode, flags, the reserved word) is built by hand.
@Suite struct ValidationTests {
  @Test func headerAndOpcode() throws {
    let h = try Harness()
    h.claim(0, identify: false)
    h.expect(Command.MemoryInfo().entry, .notInitialized)
    h.expect(Command.Identify(guestVersion: 3 << 16, guestFeatures: []).entry, .versionMismatch, detail: 1)
    #expect(h.send(Command.Identify(guestFeatures: []).entry).status == 0)
    var e = Command.Nop().entry
    e.opcode = 0xee
    h.expect(e, .invalidOpcode)
    e = Command.Nop().entry
    e.flags = 1
    h.expect(e, .invalidValue)
    e = Command.Nop().entry
    e.reserved = 7
    h.expect(e, .invalidValue)
    // Only a launch may carry a flag (2.2: LaunchFlags.cooperative), and only that one.
    e = Command.Nop().entry
    e.flags = Command.LaunchFlags.cooperative
    h.expect(e, .invalidValue)
    var launch = Command.Launch(
      function: 0, grid: Dimensions(1, 1, 1), block: Dimensions(1, 1, 1), parameterLength: 0, parameters: 0
    ).entry
    launch.flags = 2
    h.expect(launch, .invalidValue)
  }

  @Test func allocAndFree() throws {
    let h = try Harness()
    h.claim(0)
    h.expect(Command.Alloc(length: 0).entry, .invalidValue, detail: 1)
    h.expect(Command.Alloc(length: 4096, alignment: 300).entry, .invalidValue, detail: 2)
    let oom = h.expect(Command.Alloc(length: 2 << 30).entry, .outOfMemory, detail: 1)
    #expect(oom.result0 == 1 << 30 && oom.result1 == 1 << 30)
    let p = h.alloc(1000)
    #expect(p == deviceAddressBase)
    h.expect(Command.Free(address: p + 256).entry, .invalidAddress, detail: 1)
    h.expect(Command.Free(address: 0).entry, .invalidAddress, detail: 1)
    h.expect(Command.Free(address: UInt64.max).entry, .invalidAddress, detail: 1)
    #expect(h.send(Command.Free(address: p).entry).status == 0)
    h.expect(Command.Free(address: p).entry, .invalidAddress, detail: 1)
  }

  @Test func copiesCheckDeviceAndStagingRanges() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    let p = h.alloc(4096)
    let stg = h.staging()
    func to(_ device: UInt64, _ staging: UInt64, _ length: UInt64) -> SubmissionEntry {
      Command.CopyToDevice(device: device, staging: staging, length: length).entry
    }
    func from(_ device: UInt64, _ staging: UInt64, _ length: UInt64) -> SubmissionEntry {
      Command.CopyFromDevice(device: device, staging: staging, length: length).entry
    }
    func d2d(_ destination: UInt64, _ source: UInt64, _ length: UInt64) -> SubmissionEntry {
      Command.CopyDeviceToDevice(destination: destination, source: source, length: length).entry
    }
    func memset(_ address: UInt64, _ value: UInt64, _ elementSize: UInt64, _ count: UInt64) -> SubmissionEntry {
      Command.Memset(address: address, value: value, elementSize: elementSize, count: count).entry
    }
    #expect(h.send(to(p, stg, 4096)).status == 0)
    h.expect(to(p, stg, 4097), .invalidAddress, detail: 1)
    h.expect(to(p + 4096, stg, 1), .invalidAddress, detail: 1)
    h.expect(to(12345, stg, 1), .invalidAddress, detail: 1)
    h.expect(from(p, h.staging(1), 16), .invalidStaging, detail: 2)  // another pair's window
    h.expect(from(p, stg + (128 << 10) - 8, 16), .invalidStaging, detail: 2)
    h.expect(from(p, UInt64.max - 4, 16), .invalidStaging, detail: 2)
    h.expect(from(p, 0, 16), .invalidStaging, detail: 2)  // the registers
    let q = h.alloc(4096)
    #expect(h.send(d2d(q, p, 4096)).status == 0)
    h.expect(d2d(q, p, 8192), .invalidAddress, detail: 1)
    h.expect(d2d(q, p + 100, 4096), .invalidAddress, detail: 2)
    h.expect(memset(p, 0xab, 3, 10), .invalidValue, detail: 3)
    h.expect(memset(p, 0xab, 4, UInt64.max / 2), .invalidValue, detail: 4)
    h.expect(memset(p, 0xab, 4, 1025), .invalidAddress, detail: 1)
    #expect(h.send(memset(p, 0xab, 4, 1024)).status == 0)
  }

  @Test func ownershipAcrossProcesses() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 2000)
    let mine = h.alloc(4096, qp: 0)
    h.expect(
      Command.CopyToDevice(device: mine, staging: h.staging(1), length: 16).entry, .permissionDenied, detail: 1, on: 1)
    h.expect(Command.Free(address: mine).entry, .permissionDenied, detail: 1, on: 1)
    h.stage(TestPTX.fillAndVectorAddImage)
    let module = h.send(
      Command.ModuleLoad(staging: h.staging(), length: UInt64(TestPTX.fillAndVectorAddImage.count)).entry
    ).result0
    h.expect(Command.ModuleUnload(module: module).entry, .permissionDenied, detail: 1, on: 1)
    let stream = h.send(Command.StreamCreate().entry).result0
    h.expect(Command.StreamSynchronize(stream: stream).entry, .permissionDenied, detail: 1, on: 1)
    // Handles that are forged, of the wrong kind, or stale.
    h.expect(Command.ModuleUnload(module: stream).entry, .invalidHandle, detail: 1)
    h.expect(Command.ModuleUnload(module: module + 1).entry, .invalidHandle, detail: 1)
    #expect(h.send(Command.StreamDestroy(stream: stream).entry).status == 0)
    h.expect(Command.StreamDestroy(stream: stream).entry, .invalidHandle, detail: 1)
  }

  @Test func modulesFunctionsLaunches() throws {
    let h = try Harness()
    h.claim(0)
    h.stage([UInt8](repeating: 0xAB, count: 30))
    h.expect(Command.ModuleLoad(staging: h.staging(), length: 30).entry, .invalidImage, detail: 0)
    let text = TestPTX.fillAndVectorAddImage
    h.stage(text)
    let module = h.send(Command.ModuleLoad(staging: h.staging(), length: UInt64(text.count)).entry).result0
    h.stage(Array("saxpy".utf8))
    h.expect(Command.GetFunction(module: module, name: h.staging(), nameLength: 5).entry, .notFound, detail: 3)
    h.expect(Command.GetFunction(module: module, name: h.staging(), nameLength: 0).entry, .invalidValue, detail: 3)
    h.stage(Array("vector_add".utf8))
    let c = h.send(Command.GetFunction(module: module, name: h.staging(), nameLength: 10).entry)
    let f = Command.GetFunction.Reply(c)
    #expect(c.status == 0 && f.parameterBytes == 28)
    let p = h.alloc(1024)
    // vector_add(a, b, c, n): three pointers at 0, 8, 16 and n at 24.
    func params(_ n: UInt32) -> [UInt8] {
      withUnsafeBytes(of: (p.littleEndian, p.littleEndian, p.littleEndian)) { Array($0) }
        + withUnsafeBytes(of: n.littleEndian) { Array($0) }
    }
    h.stage(params(256))
    func launch(_ fn: UInt64, grid: UInt32 = 1, block: UInt32 = 256, params: UInt32 = 28, stream: UInt64 = 0)
      -> SubmissionEntry
    {
      Command.Launch(
        function: fn, grid: Dimensions(grid), block: Dimensions(block), parameterLength: params,
        parameters: h.staging(), stream: stream
      ).entry
    }
    #expect(h.send(launch(f.function)).status == 0)
    h.expect(launch(module), .invalidHandle, detail: 1)
    h.expect(launch(f.function, grid: 0), .invalidValue, detail: 2)
    h.expect(launch(f.function, block: 2048), .invalidValue, detail: 3)
    let wrong = h.expect(launch(f.function, params: 24), .invalidParameters, detail: 5)
    #expect(wrong.result0 == 28 && wrong.result1 == 24)
    h.expect(launch(f.function, stream: 77), .invalidHandle, detail: 7)
    // Element 256 is past the 1024-byte allocation: the kernel's load faults there.
    h.stage(params(257))
    let fault = h.expect(launch(f.function, grid: 2), .illegalAddress)
    #expect(fault.result0 == p + 1024)
  }

  @Test func eventsAndStatistics() throws {
    let h = try Harness()
    h.claim(0)
    let a = h.send(Command.EventCreate().entry).result0
    let b = h.send(Command.EventCreate().entry).result0
    h.expect(Command.EventElapsed(start: a, end: b).entry, .notReady, detail: 1)
    #expect(h.send(Command.EventRecord(event: a).entry).status == 0)
    h.expect(Command.EventElapsed(start: a, end: b).entry, .notReady, detail: 2)
    h.expect(Command.EventRecord(event: a, stream: 99).entry, .invalidHandle, detail: 2)
    var unknownScope = Command.Statistics(scope: .process, staging: h.staging())
    unknownScope.scope = 7
    h.expect(unknownScope.entry, .invalidValue, detail: 1)
    h.expect(Command.Statistics(scope: .process, staging: h.staging(), length: 63).entry, .invalidValue, detail: 3)
    h.expect(Command.Statistics(scope: .process, staging: h.staging(1)).entry, .invalidStaging, detail: 2)
  }

  @Test func processesListsEachProcessOnce() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 2000)
    h.claim(2, pid: 1000)
    _ = h.alloc(1 << 20, qp: 0)
    _ = h.alloc(4096, qp: 2)
    _ = h.alloc(8192, qp: 1)
    let c = Command.Processes.Reply(h.send(Command.Processes(staging: h.staging(), length: 64).entry))
    #expect(c.written == 2 && c.total == 2)
    let records = (0..<2).map {
      (h.device.region.base + Int(h.staging()) + $0 * 32).load(as: ProcessRecord.self)
    }
    #expect(records[0].pid == 1000 && records[0].queuePairs == 2 && records[0].bytesAllocated == (1 << 20) + 4096)
    #expect(records[1].pid == 2000 && records[1].queuePairs == 1 && records[1].bytesAllocated == 8192)
    #expect(records.allSatisfy { $0.busyNanoseconds > 0 && $0.launches == 0 })
    // Room for one: the first, and the total says there are more.
    let one = h.send(Command.Processes(staging: h.staging(), length: 32).entry)
    #expect(one.status == 0 && one.result0 == 1 && one.result1 == 2)
    // A released pair leaves the list.
    h.release(1)
    #expect(h.send(Command.Processes(staging: h.staging(), length: 64).entry).result1 == 1)
  }

  @Test func processesChecksLengthAndStaging() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    func processes(_ staging: UInt64, _ length: UInt64) -> SubmissionEntry {
      Command.Processes(staging: staging, length: length).entry
    }
    h.expect(processes(h.staging(), 0), .invalidValue, detail: 3)
    h.expect(processes(h.staging(), 31), .invalidValue, detail: 3)
    h.expect(processes(h.staging(), 48), .invalidValue, detail: 3)
    h.expect(processes(h.staging(1), 32), .invalidStaging, detail: 2)  // another pair's window
    h.expect(processes(h.staging(offset: (128 << 10) - 16), 32), .invalidStaging, detail: 2)
    h.expect(processes(UInt64.max - 16, 32), .invalidStaging, detail: 2)
    h.expect(processes(h.staging(), UInt64.max - 31), .invalidStaging, detail: 2)
    #expect(h.send(processes(h.staging(), 128 << 10)).status == 0)  // the whole window
  }

  /// moduleUpload (2.0): the sizes it takes, chunks inside the image, uploads
  /// per process, and a load that finds chunks missing.
  @Test func moduleUploads() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1, pid: 2000)
    let ptx = Array(".version 8.0\n.target sm_75\n.address_size 64\n.visible .entry k()\n{\n  ret;\n}\n".utf8)
    h.stage(ptx)
    let len = UInt64(ptx.count)
    func upload(_ handle: UInt64, _ offset: UInt64, _ length: UInt64, total: UInt64 = 0, qp: Int = 0) -> SubmissionEntry
    {
      Command.ModuleUpload(upload: handle, staging: h.staging(qp), length: length, offset: offset, totalLength: total)
        .entry
    }
    h.expect(upload(0, 0, 1, total: 0), .invalidValue, detail: 5)
    h.expect(upload(0, 0, 1, total: Command.ModuleUpload.maximumImageBytes + 1), .invalidValue, detail: 5)
    // Start an upload twice the image's size and send only its first half.
    let first = h.send(upload(0, 0, len, total: 2 * len))
    #expect(first.status == 0 && first.result0 == len)
    let handle = first.result1
    h.expect(upload(handle, 2 * len - 1, 2), .invalidValue, detail: 4)  // past the end
    h.expect(upload(handle, UInt64.max, 2), .invalidValue, detail: 4)
    h.expect(upload(handle, 0, 1, qp: 1), .permissionDenied, detail: 1, on: 1)  // another process's upload
    h.expect(upload(0x7777, 0, 1), .invalidHandle, detail: 1)
    // Loading with a half missing: refused, and the upload is gone.
    h.expect(Command.ModuleLoad(upload: handle).entry, .invalidImage, detail: 1)
    h.expect(Command.ModuleLoad(upload: handle).entry, .invalidHandle, detail: 1)
    // A whole upload, in two chunks out of order, loads.
    let half = Int(len) / 2
    h.stage(Array(ptx[half...]))
    let second = h.send(upload(0, UInt64(half), len - UInt64(half), total: len)).result1
    h.stage(Array(ptx[..<half]))
    #expect(h.send(upload(second, 0, UInt64(half))).status == 0)
    let loaded = h.send(Command.ModuleLoad(upload: second).entry)
    #expect(loaded.status == 0 && loaded.result0 != 0)
  }

  /// 2.0 answers statuses a 1.x guest would take for a device bug: such a
  /// guest is refused at identify, before anything else.
  @Test func aVersion1GuestIsRefused() throws {
    let h = try Harness()
    h.claim(0, identify: false)
    let c = h.send(Command.Identify(guestVersion: 0x0001_0003, guestFeatures: .all).entry)
    #expect(c.status == CommandStatus.versionMismatch.rawValue && c.detail == 1)
    #expect(c.result1 == UInt64(ProtocolVersion.packed))
    h.expect(Command.MemoryInfo().entry, .notInitialized)
  }

  @Test func a2_0GuestWithFewerFeaturesIsServedWithThose() throws {
    let h = try Harness()
    h.claim(0, identify: false)
    let c = h.send(Command.Identify(guestVersion: 0x0002_0000, guestFeatures: .version1_0).entry)
    let reply = Command.Identify.Reply(c)
    // Bit 1 (1.x's built-in kernels) is retired: the guest gets the rest of what it named.
    #expect(c.status == 0 && reply.features == [.eventSuppression, .streams])
    #expect(reply.deviceVersion == ProtocolVersion.packed)
    #expect(h.send(Command.MemoryInfo().entry).status == 0)
  }

  @Test func badDoorbellsFaultOnlyThatQueuePair() throws {
    let h = try Harness()
    h.claim(0)
    h.claim(1)
    h.queues[0]!.view.ringSubmission(tail: 99)  // not below the depth
    h.device.servePass()
    #expect(h.queues[0]!.view.fault == QueuePairFault.tailOutOfRange.rawValue)
    #expect(h.send(Command.Nop().entry, on: 1).status == 0)
  }

  @Test func closingReclaimsEverything() throws {
    let h = try Harness()
    h.claim(0)
    _ = h.alloc(1 << 20)
    _ = h.send(Command.StreamCreate().entry)
    #expect(h.device.memoryInUse.allocated == 1 << 20)
    h.release(0)
    #expect(h.queues[0]!.view.state == QueuePairState.free.rawValue)
    #expect(h.device.memoryInUse.allocated == 0)
  }
}
