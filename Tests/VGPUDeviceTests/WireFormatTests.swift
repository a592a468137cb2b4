import DeviceAccess
import Testing

@testable import VGPUProtocol

/// The wire format's sizes and offsets, pinned: docs/PROTOCOL.md states the
/// same numbers, and a peer in another language relies on them.
@Suite struct WireFormatTests {
  @Test func submissionEntryLayout() {
    #expect(MemoryLayout<SubmissionEntry>.size == 64)
    #expect(MemoryLayout<SubmissionEntry>.stride == 64)
    #expect(MemoryLayout<SubmissionEntry>.offset(of: \.opcode) == 0)
    #expect(MemoryLayout<SubmissionEntry>.offset(of: \.flags) == 1)
    #expect(MemoryLayout<SubmissionEntry>.offset(of: \.commandID) == 2)
    #expect(MemoryLayout<SubmissionEntry>.offset(of: \.reserved) == 4)
    let args: [PartialKeyPath<SubmissionEntry>] = [\.a0, \.a1, \.a2, \.a3, \.a4, \.a5, \.a6]
    #expect(args.map { MemoryLayout<SubmissionEntry>.offset(of: $0) } == [8, 16, 24, 32, 40, 48, 56])
  }

  @Test func completionEntryLayout() {
    #expect(MemoryLayout<CompletionEntry>.size == 32)
    #expect(MemoryLayout<CompletionEntry>.stride == 32)
    let fields: [PartialKeyPath<CompletionEntry>] = [
      \.result0, \.result1, \.detail, \.status, \.sqHead, \.commandID, \.phase, \.following,
    ]
    #expect(fields.map { MemoryLayout<CompletionEntry>.offset(of: $0) } == [0, 8, 16, 20, 22, 24, 26, 28])
    #expect(CompletionEntry.tagOffset == 24)
  }

  @Test func statisticsRecordLayout() {
    #expect(MemoryLayout<StatisticsRecord>.size == 64)
    #expect(MemoryLayout<StatisticsRecord>.offset(of: \.busyNanoseconds) == 40)
    #expect(MemoryLayout<StatisticsRecord>.offset(of: \.queuePairs) == 56)
  }

  @Test func processRecordLayout() {
    #expect(MemoryLayout<ProcessRecord>.size == 32)
    #expect(MemoryLayout<ProcessRecord>.stride == 32)
    #expect(ProcessRecord.size == 32)
    let fields: [PartialKeyPath<ProcessRecord>] = [
      \.pid, \.queuePairs, \.bytesAllocated, \.launches, \.busyNanoseconds,
    ]
    #expect(fields.map { MemoryLayout<ProcessRecord>.offset(of: $0) } == [0, 4, 8, 16, 24])
    let bytes = withUnsafeBytes(of: ProcessRecord(pid: 0x0102_0304, queuePairs: 2, bytesAllocated: 0x1_0000_0000)) {
      Array($0)
    }
    #expect(Array(bytes[0..<8]) == [0x04, 0x03, 0x02, 0x01, 0x02, 0, 0, 0])
    #expect(Array(bytes[8..<16]) == [0, 0, 0, 0, 1, 0, 0, 0])
  }

  @Test func statusesAreContiguousUpToHighest() {
    #expect(CommandStatus.allCases.map(\.rawValue) == Array(0...CommandStatus.highest))
  }

  /// 2.1's activity record: the ProcessRecord, then four u64 (PROTOCOL.md §16).
  @Test func processActivityRecordLayout() {
    #expect(MemoryLayout<ProcessActivityRecord>.size == 64)
    #expect(MemoryLayout<ProcessActivityRecord>.stride == 64)
    #expect(ProcessActivityRecord.size == 64)
    let fields: [PartialKeyPath<ProcessActivityRecord>] = [
      \.process, \.bytesToDevice, \.bytesFromDevice, \.bytesWithinDevice, \.commands,
    ]
    #expect(fields.map { MemoryLayout<ProcessActivityRecord>.offset(of: $0) } == [0, 32, 40, 48, 56])
    #expect(FeatureBits.processActivity.rawValue == 1 << 7)
  }

  @Test func version2_0AddsKernelImagesToWhat1_xHad() {
    #expect(ProtocolVersion.packed == 0x0002_0004)
    #expect(Opcode.processes.rawValue == 0x16)
    #expect(
      [Opcode.moduleUpload, .moduleGlobal, .output, .errorText, .moduleKernels].map(\.rawValue) == [
        0x17, 0x18, 0x19, 0x1a, 0x1b,
      ])
    #expect(FeatureBits.processList.rawValue == 1 << 3)
    #expect(FeatureBits.functionInfo.rawValue == 1 << 5)
    #expect(FeatureBits.kernelImages.rawValue == 1 << 6)
    #expect(FeatureBits.all.rawValue == 0x1ded && FeatureBits.version1_0.rawValue == 0x7)
    // A transport bit: in the features register only, never negotiated.
    #expect(FeatureBits.ivshmemDoorbell.rawValue == 1 << 4 && !FeatureBits.all.contains(.ivshmemDoorbell))
  }

  /// 2.4: host memory shared with the device, four commands behind one bit.
  @Test func version2_4SharesHostMemory() {
    #expect(FeatureBits.sharedHostMemory.rawValue == 1 << 10 && FeatureBits.all.contains(.sharedHostMemory))
    #expect(
      [Opcode.hostMemoryShare, .hostMemoryUnshare, .copyFromHost, .copyToHost].map(\.rawValue) == [
        0x1c, 0x1d, 0x1e, 0x1f,
      ])
    #expect(ProtocolVersion.packed == 0x0002_0004)
  }

  /// 2.4: the page-locked window, two commands and two registers behind one bit.
  @Test func version2_4HasAPageLockedWindow() {
    #expect(FeatureBits.hostWindow.rawValue == 1 << 11 && FeatureBits.all.contains(.hostWindow))
    #expect([Opcode.windowAlloc, .windowFree].map(\.rawValue) == [0x20, 0x21])
    #expect(Register.hostWindowOffset.offset == 0x080 && Register.hostWindowSize.offset == 0x088)
    // In the register block's free words, before the identity at 0x100.
    #expect(Register.progress.offset + 8 == Register.hostWindowOffset.offset && Register.name.offset == 0x100)
    #expect(!Register.changing.contains(Register.hostWindowOffset.offset))
  }

  /// 2.3: the guest heartbeat, a word of the pair's guest line and a bit a
  /// guest names on purpose (so not in `all`), with the periods both sides keep.
  @Test func version2_3AddsTheGuestHeartbeat() {
    #expect(FeatureBits.guestHeartbeat.rawValue == 1 << 9 && !FeatureBits.all.contains(.guestHeartbeat))
    #expect(QueuePairBlock.heartbeat == 0x0C)
    #expect([QueuePairBlock.state, QueuePairBlock.ownerPID, QueuePairBlock.guestWaiting] == [0, 4, 8])
    #expect(GuestHeartbeat.periodNanoseconds == 400_000_000 && GuestHeartbeat.silenceNanoseconds == 1_500_000_000)
    #expect(GuestHeartbeat.checkNanoseconds == 100_000_000)
    // A killed guest's pair within 2 s of its last beat, with a margin for scheduling.
    #expect(2 * GuestHeartbeat.checkNanoseconds + GuestHeartbeat.silenceNanoseconds <= 1_700_000_000)
  }

  @Test func entriesAreLittleEndianBytes() {
    var e = Command.CopyToDevice(device: 0x1122_3344_5566_7788, staging: 0, length: 0).entry
    e.commandID = 0xabcd
    let bytes = withUnsafeBytes(of: e) { Array($0) }
    #expect(bytes[0] == 0x05 && bytes[2] == 0xcd && bytes[3] == 0xab)
    #expect(Array(bytes[8..<16]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
  }

  @Test func registerOffsets() {
    #expect(vgpuMagic == 0x5550_4756)
    #expect(withUnsafeBytes(of: vgpuMagic.littleEndian) { Array($0) } == Array("VGPU".utf8))
    let offsets = [
      Register.magic.offset, Register.version.offset, Register.features.offset, Register.status.offset,
      Register.control.offset,
      Register.queuePairCount.offset, Register.queueDepth.offset, Register.submissionEntrySize.offset,
      Register.completionEntrySize.offset,
      Register.doorbellOffset.offset, Register.doorbellStride.offset, Register.queuePairStride.offset,
      Register.queueAreaOffset.offset,
      Register.stagingOffset.offset, Register.stagingSize.offset, Register.stagingSlotSize.offset,
      Register.stagingSlotsPerQueue.offset,
      Register.regionSize.offset, Register.heartbeat.offset, Register.devicePID.offset, Register.deviceSleeping.offset,
      Register.deviceWake.offset,
      Register.ivshmemVectors.offset, Register.progress.offset,
    ]
    #expect(
      offsets == [
        0x00, 0x04, 0x08, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x28, 0x30, 0x34, 0x38, 0x40, 0x48, 0x50, 0x54, 0x58,
        0x60, 0x68, 0x6c, 0x70, 0x74, 0x78,
      ])
    #expect(
      [
        Register.name.offset, Register.uuid.offset, Register.pciBusID.offset, Register.computeMajor.offset,
        Register.memorySize.offset,
        Register.cudaDriverVersion.offset, Register.multiprocessorCount.offset, Register.driverVersion.offset,
      ]
        == [0x100, 0x140, 0x150, 0x160, 0x168, 0x170, 0x174, 0x178])
    #expect(QueuePairBlock.completionWake == 64 && QueuePairBlock.ringsOffset == 128)
    // Each side's CPU hint in its own line (issue 17).
    #expect(QueuePairBlock.guestWaiting == 0x08 && QueuePairBlock.guestCPU == 0x10)
    #expect(QueuePairBlock.fault == 0x44 && QueuePairBlock.deviceCPU == 0x48)
  }

  @Test func defaultLayout() throws {
    let l = BARLayout()
    #expect(l.doorbellOffset == 0x1000 && l.doorbellStride == 64)
    #expect(l.queueAreaOffset == 0x2000)
    #expect(l.queuePairStride == 0x7000)  // 128 + 256 × 96 bytes, page-aligned
    #expect(l.stagingOffset == 0x3a000)
    #expect(l.regionSize == 0x3a000 + 8 * 7 * (256 << 10))
    #expect(l.regionSize <= 16 << 20)  // fits QEMU's ivshmem object of the VM recipe
    #expect(l.submissionRing(1) == 0x9000 + 128)
    #expect(l.completionRing(0) == 0x2000 + 128 + 256 * 64)
    #expect(l.staging(2) == 0x3a000 + 2 * 7 * (256 << 10))
  }

  func registersWith(_ layout: BARLayout, size: Int? = nil, _ change: @Sendable (RegisterBlock) -> Void = { _ in })
    throws
    -> (MappedRegion, RegisterBlock)
  {
    let region = try MappedRegion.anonymous(size: size ?? Int(layout.regionSize))
    let r = RegisterBlock(region.base)
    layout.write(to: r)
    change(r)
    return (region, r)
  }

  @Test func layoutRoundTripsThroughRegisters() throws {
    let layout = BARLayout(queuePairs: 3, depth: 64, stagingSlotSize: 128 << 10, slotsPerQueue: 4)
    let (region, r) = try registersWith(layout)
    #expect(try BARLayout(reading: r, size: region.size) == layout)
  }

  @Test(
    arguments: [
      ("queue pair count", { @Sendable (r: RegisterBlock) in r.store(Register.queuePairCount, 0) }),
      ("queue depth", { $0.store(Register.queueDepth, 100) }),
      ("queue depth", { $0.store(Register.queueDepth, 8192) }),
      ("submission entry size", { $0.store(Register.submissionEntrySize, 32) }),
      ("completion entry size", { $0.store(Register.completionEntrySize, 16) }),
      ("region size", { $0.store(Register.regionSize, 1 << 40) }),
      ("doorbell offset", { $0.store(Register.doorbellOffset, 0) }),
      ("doorbell stride", { $0.store(Register.doorbellStride, 4) }),
      ("queue pair stride", { $0.store(Register.queuePairStride, 64) }),
      ("queue area offset", { $0.store(Register.queueAreaOffset, UInt64.max - 10) }),
      ("staging slot size", { $0.store(Register.stagingSlotSize, 1000) }),
      ("staging slot size", { $0.store(Register.stagingSlotsPerQueue, 0) }),
      ("staging offset", { $0.store(Register.stagingOffset, 0) }),
      ("layout", { $0.store(Register.stagingOffset, 0x2000) }),
    ] as [(String, @Sendable (RegisterBlock) -> Void)])
  func layoutChecksEveryField(field: String, change: @Sendable (RegisterBlock) -> Void) throws {
    let (region, r) = try registersWith(
      BARLayout(queuePairs: 2, depth: 16, stagingSlotSize: 4096, slotsPerQueue: 2), change)
    #expect {
      try BARLayout(reading: r, size: region.size)
    } throws: { error in
      (error as? LayoutError)?.field == field
    }
  }

  @Test func identityRoundTripsAndStaysInItsFields() throws {
    let region = try MappedRegion.anonymous(size: 4096)
    let r = RegisterBlock(region.base)
    let id = DeviceIdentity(
      name: String(repeating: "x", count: 100), uuid: Array(0..<16), pciBusID: "0000:00:05.0",
      computeCapability: (9, 0), memorySize: 80 << 30, cudaDriverVersion: 12080, multiprocessorCount: 132,
      driverVersion: "570.124.06")
    id.write(to: r)
    let back = DeviceIdentity(reading: r)
    #expect(back.name == String(repeating: "x", count: 63))
    #expect(back.uuid == Array(0..<16) && back.pciBusID == "0000:00:05.0" && back.driverVersion == "570.124.06")
    #expect(back.uuidString == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f")
    #expect(region.base.load(fromByteOffset: Register.uuid.offset, as: UInt8.self) == 0)
  }

  @Test func statusMapsToCUresult() {
    #expect(CommandStatus.success.cudaResult == 0)
    #expect(CommandStatus.outOfMemory.cudaResult == 2)
    #expect(CommandStatus.invalidHandle.cudaResult == 400)
    #expect(CommandStatus.notReady.cudaResult == 600)
    #expect(CommandStatus.launchFailed.cudaResult == 719)
    #expect(CommandStatus.notSupported.cudaResult == 801)
    #expect(Set(CommandStatus.allCases.map(\.description)).count == CommandStatus.allCases.count)
  }
}
