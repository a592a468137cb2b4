import Testing
import VGPUProtocol

@testable import VGPUDevice

/// What monitors read: `processes` with activity records (2.1) and the
/// device snapshot the mediator's metrics come from, against commands sent by hand.
@Suite struct ObservabilityTests {
  static let emptyKernel = Array(
    ".version 8.0\n.target sm_75\n.address_size 64\n.visible .entry k()\n{\n  ret;\n}\n".utf8)

  @Test func activityRecordsAndSnapshotCountWhatEachProcessDid() throws {
    let h = try Harness()
    h.claim(0, pid: 1000)
    h.claim(1, pid: 2000)
    let p = h.alloc(1 << 16, qp: 0)
    h.stage([UInt8](repeating: 7, count: 4096))
    #expect(h.send(Command.CopyToDevice(device: p, staging: h.staging(), length: 4096).entry).status == 0)
    #expect(h.send(Command.CopyFromDevice(device: p, staging: h.staging(), length: 1024).entry).status == 0)
    #expect(h.send(Command.CopyDeviceToDevice(destination: p + 8192, source: p, length: 512).entry).status == 0)
    h.stage(Self.emptyKernel)
    let load = h.send(Command.ModuleLoad(staging: h.staging(), length: UInt64(Self.emptyKernel.count)).entry)
    #expect(load.status == 0)
    h.stage(Array("k".utf8))
    let f = h.send(Command.GetFunction(module: load.result0, name: h.staging(), nameLength: 1).entry)
    #expect(f.status == 0)
    for _ in 0..<3 {
      let launch = Command.Launch(
        function: f.result0, grid: Dimensions(1), block: Dimensions(1), parameterLength: 0, parameters: h.staging())
      #expect(h.send(launch.entry).status == 0)
    }
    h.expect(Command.Free(address: 12345).entry, .invalidAddress, detail: 1, on: 1)
    _ = h.alloc(8192, qp: 1)

    let c = Command.Processes.Reply(
      h.send(Command.Processes(recordSize: 64, staging: h.staging(), length: 128).entry))
    #expect(c.written == 2 && c.total == 2)
    let records = (0..<2).map {
      (h.device.region.base + Int(h.staging()) + $0 * 64).load(as: ProcessActivityRecord.self)
    }
    #expect(records[0].process.pid == 1000 && records[0].process.bytesAllocated >= 1 << 16)
    #expect(records[0].process.launches == 3)
    #expect(records[0].bytesToDevice == 4096 && records[0].bytesFromDevice == 1024)
    #expect(records[0].bytesWithinDevice == 512)
    #expect(records[1].process.pid == 2000 && records[1].process.bytesAllocated == 8192)
    #expect(records[1].bytesToDevice == 0 && records[1].process.launches == 0)
    // identify, free (failed), the NOP `expect` sends after it, alloc
    #expect(records[1].commands == 4)

    let s = h.device.snapshot()
    #expect(s.processes.map(\.pid) == [1000, 2000])
    #expect(s.processes[0].record.process.launches == 3 && s.processes[0].activity.moduleLoads == 1)
    #expect(s.processes[0].activity.kernelNanoseconds > 0)
    #expect(s.processes[1].activity.failedCommands == 1)
    #expect(s.failures.map(\.status) == [.invalidAddress] && s.failures[0].count == 1)
    #expect(s.activity.bytesToDevice == 4096 && s.activity.moduleLoads == 1)
    #expect(s.totals.launches == 3 && s.queuePairsInUse == 2 && s.memoryUsed == s.totals.bytesAllocated)
    let launches = s.latency.first { $0.opcode == "launch" }
    #expect(launches?.count == 3 && launches?.buckets.count == s.latencyBucketBounds.count + 1)
    #expect(s.latency.first { $0.opcode == "alloc" }?.count == 2)
    // NOPs are not timed (a clock read costs more than one).
    #expect(!s.latency.contains { $0.opcode == "nop" })
  }

  @Test func processesRefusesOtherRecordSizes() throws {
    let h = try Harness()
    h.claim(0)
    h.expect(Command.Processes(recordSize: 48, staging: h.staging(), length: 96).entry, .invalidValue, detail: 1)
    h.expect(Command.Processes(recordSize: 64, staging: h.staging(), length: 32).entry, .invalidValue, detail: 3)
    h.expect(Command.Processes(recordSize: 64, staging: h.staging(), length: 96).entry, .invalidValue, detail: 3)
    #expect(h.send(Command.Processes(recordSize: 32, staging: h.staging(), length: 32).entry).status == 0)
  }
}
