import Foundation
import Testing
import VGPUProtocol

/// Every opcode's typed command, and the words of the entry it uses
/// (docs/PROTOCOL.md §14): argument index → the bits that carry meaning.
let codecs: [(type: any CommandCodec.Type, words: [Int: UInt64])] = [
  (Command.Nop.self, [:]),
  (Command.Identify.self, [0: 0xffff_ffff, 1: ~0]),
  (Command.MemoryInfo.self, [:]),
  (Command.Alloc.self, [0: ~0, 1: ~0]),
  (Command.Free.self, [0: ~0]),
  (Command.CopyToDevice.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.CopyFromDevice.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.CopyDeviceToDevice.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.Memset.self, [0: ~0, 1: ~0, 2: ~0, 3: ~0]),
  (Command.ModuleLoad.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.ModuleUnload.self, [0: ~0]),
  (Command.GetFunction.self, [0: ~0, 1: ~0, 2: ~0, 3: ~0, 4: ~0]),
  (Command.Launch.self, [0: ~0, 1: ~0, 2: ~0, 3: ~0, 4: ~0, 5: ~0, 6: ~0]),
  (Command.StreamCreate.self, [:]),
  (Command.StreamDestroy.self, [0: ~0]),
  (Command.StreamSynchronize.self, [0: ~0]),
  (Command.EventCreate.self, [:]),
  (Command.EventDestroy.self, [0: ~0]),
  (Command.EventRecord.self, [0: ~0, 1: ~0]),
  (Command.EventQuery.self, [0: ~0]),
  (Command.EventElapsed.self, [0: ~0, 1: ~0]),
  (Command.Statistics.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.Processes.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.ModuleUpload.self, [0: ~0, 1: ~0, 2: ~0, 3: ~0, 4: ~0]),
  (Command.ModuleGlobal.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.Output.self, [1: ~0, 2: ~0]),
  (Command.ErrorText.self, [1: ~0, 2: ~0]),
  (Command.ModuleKernels.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.HostMemoryShare.self, [0: 0xffff_ffff, 1: ~0, 2: ~0]),
  (Command.HostMemoryUnshare.self, [1: ~0]),
  (Command.CopyFromHost.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.CopyToHost.self, [0: ~0, 1: ~0, 2: ~0]),
  (Command.WindowAlloc.self, [0: ~0]),
  (Command.WindowFree.self, [0: ~0]),
]

func words(_ e: SubmissionEntry) -> [UInt64] { [e.a0, e.a1, e.a2, e.a3, e.a4, e.a5, e.a6] }

func decodeAndEncode<C: CommandCodec>(_ type: C.Type, _ e: SubmissionEntry) -> SubmissionEntry { C(e).entry }

@Suite struct CodecTests {
  @Test func everyOpcodeHasExactlyOneCodec() {
    let covered = codecs.map { $0.type.opcode }
    #expect(Set(covered) == Set(Opcode.allCases))
    #expect(covered.count == Opcode.allCases.count)
  }

  /// Random words through decode and encode: the words a command defines
  /// survive bit for bit, the others come back zero, and the header is clean.
  @Test func roundTripsKeepEveryDefinedBit() {
    var generator = SystemRandomNumberGenerator()
    for (type, used) in codecs {
      for _ in 0..<200 {
        var e = SubmissionEntry(raw: type.opcode)
        e.a0 = generator.next()
        e.a1 = generator.next()
        e.a2 = generator.next()
        e.a3 = generator.next()
        e.a4 = generator.next()
        e.a5 = generator.next()
        e.a6 = generator.next()
        let back = decodeAndEncode(type, e)
        #expect(back.opcode == type.opcode.rawValue)
        #expect(back.flags == 0 && back.reserved == 0 && back.commandID == 0)
        for (i, (sent, got)) in zip(words(e), words(back)).enumerated() {
          #expect(got == sent & (used[i] ?? 0), "\(type) a\(i)")
        }
        #expect(decodeAndEncode(type, back) == back, "\(type) is not stable")
      }
    }
  }

  /// The launch packing, pinned to PROTOCOL.md §14's words.
  @Test func launchPacking() {
    let launch = Command.Launch(
      function: 0xAB, grid: Dimensions(0x8000_0001, 3, 4), block: Dimensions(32, 8, 2), sharedBytes: 0x1234,
      parameterLength: 40, parameters: 0x9000, stream: 7)
    let e = launch.entry
    #expect(e.opcode == Opcode.launch.rawValue)
    #expect(
      words(e) == [
        0xAB, 0x0000_0003_8000_0001, 0x0000_0020_0000_0004, 0x0000_0002_0000_0008, 0x28_0000_1234, 0x9000, 7,
      ])
    let back = Command.Launch(e)
    #expect(back.grid == launch.grid && back.block == launch.block)
    #expect(back.sharedBytes == 0x1234 && back.parameterLength == 40 && back.parameters == 0x9000 && back.stream == 7)
    #expect(e.flags == 0 && !back.cooperative)
    // A cooperative launch (2.2) sets bit 0 of the entry's flags, and nothing else changes.
    var cooperative = launch
    cooperative.cooperative = true
    let c = cooperative.entry
    #expect(c.flags == Command.LaunchFlags.cooperative && words(c) == words(e) && Command.Launch(c).cooperative)
  }

  /// A streaming copyToHost (2.4) sets bit 0 of the entry's flags, and nothing else changes.
  @Test func copyToHostCarriesItsStreamingFlag() {
    let plain = Command.CopyToHost(device: 0xD000, host: 0x7F00_0000_1000, length: 1 << 18).entry
    let streaming = Command.CopyToHost(device: 0xD000, host: 0x7F00_0000_1000, length: 1 << 18, streaming: true).entry
    #expect(plain.flags == 0 && !Command.CopyToHost(plain).streaming)
    #expect(streaming.flags == Command.CopyFlags.streaming && words(streaming) == words(plain))
    #expect(Command.CopyToHost(streaming).streaming)
    // copyFromDevice carries it too (into the page-locked window).
    let staged = Command.CopyFromDevice(device: 0xD000, staging: 0x10_0000, length: 1 << 18).entry
    let streamed = Command.CopyFromDevice(device: 0xD000, staging: 0x10_0000, length: 1 << 18, streaming: true).entry
    #expect(staged.flags == 0 && streamed.flags == Command.CopyFlags.streaming && words(staged) == words(streamed))
    #expect(Command.CopyFromDevice(streamed).streaming && !Command.CopyFromDevice(staged).streaming)
    // Which opcodes may carry flags at all (the device refuses any other bit).
    #expect(Opcode.allCases.filter { $0.allowedFlags != 0 } == [.copyFromDevice, .launch, .copyToHost])
    #expect(Opcode.launch.allowedFlags == Command.LaunchFlags.cooperative)
    #expect(Opcode.copyToHost.allowedFlags == Command.CopyFlags.streaming)
  }

  @Test func repliesRoundTrip() {
    let memory = Command.MemoryInfo.Reply(free: 5, total: 9)
    #expect(Command.MemoryInfo.Reply(memory.completion).free == 5)
    #expect(Command.MemoryInfo.Reply(memory.completion).total == 9)
    let alloc = Command.Alloc.Reply(address: 0x7000_0000_0000, reserved: 4096)
    #expect(Command.Alloc.Reply(alloc.completion).address == 0x7000_0000_0000)
    #expect(Command.Alloc.Reply(alloc.completion).reserved == 4096)
    let function = Command.GetFunction.Reply(function: 77, parameterBytes: 32)
    #expect(Command.GetFunction.Reply(function.completion).function == 77)
    #expect(Command.GetFunction.Reply(function.completion).parameterBytes == 32)
    let processes = Command.Processes.Reply(written: 2, total: 3)
    #expect(Command.Processes.Reply(processes.completion).written == 2)
    #expect(Command.Processes.Reply(processes.completion).total == 3)
  }
}

@Suite struct FunctionInfoTests {
  @Test func headerLayoutIsPinned() {
    #expect(MemoryLayout<FunctionInfo>.size == FunctionInfo.headerSize)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.parameterCount) == 0)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.parameterBytes) == 4)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.maxThreadsPerBlock) == 8)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.sharedBytes) == 12)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.localBytes) == 16)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.constBytes) == 20)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.registers) == 24)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.ptxVersion) == 28)
    #expect(MemoryLayout<FunctionInfo>.offset(of: \.binaryVersion) == 30)
    #expect(MemoryLayout<ParameterSlot>.size == FunctionInfo.slotSize)
  }

  func withRecord(_ info: FunctionInfo, _ slots: [ParameterSlot], _ body: (UnsafeMutableRawPointer, Int) -> Void) {
    let size = FunctionInfo.size(parameters: slots.count)
    // Odd alignment on purpose: the record may sit anywhere in a staging slot.
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: size + 1, alignment: 8)
    defer { buffer.deallocate() }
    ParameterLayout.write(info, slots, to: buffer + 1)
    body(buffer + 1, size)
  }

  @Test func writeThenReadGivesTheLayout() {
    let slots = [
      ParameterSlot(offset: 0, size: 8), ParameterSlot(offset: 8, size: 4), ParameterSlot(offset: 12, size: 4),
    ]
    let info = FunctionInfo(parameterCount: 3, parameterBytes: 16, registers: 12, ptxVersion: 85, binaryVersion: 90)
    withRecord(info, slots) { p, size in
      let read = ParameterLayout.read(from: p, capacity: size, parameterBytes: 16)
      #expect(read?.0 == info)
      #expect(read?.1 == ParameterLayout(slots: slots, bufferSize: 16))
    }
  }

  /// The record comes from the device: every inconsistency is refused, never trusted.
  @Test func readRefusesWhatDoesNotFit() {
    let good = [ParameterSlot(offset: 0, size: 8)]
    withRecord(FunctionInfo(parameterCount: 1, parameterBytes: 8), good) { p, size in
      #expect(ParameterLayout.read(from: p, capacity: size, parameterBytes: 16) == nil, "total differs from r1")
      #expect(ParameterLayout.read(from: p, capacity: size - 1, parameterBytes: 8) == nil, "record past the room")
      #expect(ParameterLayout.read(from: p, capacity: 4, parameterBytes: 8) == nil, "header past the room")
    }
    withRecord(FunctionInfo(parameterCount: 1, parameterBytes: 8), [ParameterSlot(offset: 4, size: 8)]) { p, size in
      #expect(ParameterLayout.read(from: p, capacity: size, parameterBytes: 8) == nil, "slot past the buffer")
    }
    withRecord(FunctionInfo(parameterCount: 1, parameterBytes: 8), [ParameterSlot(offset: 0, size: 0)]) { p, size in
      #expect(ParameterLayout.read(from: p, capacity: size, parameterBytes: 8) == nil, "empty slot")
    }
    withRecord(FunctionInfo(parameterCount: 1, parameterBytes: 8), [ParameterSlot(offset: UInt32.max, size: 8)]) {
      p, size in
      #expect(ParameterLayout.read(from: p, capacity: size, parameterBytes: 8) == nil, "offset overflow")
    }
    let huge = FunctionInfo(parameterCount: 0, parameterBytes: FunctionInfo.maximumParameterBytes + 1)
    withRecord(huge, []) { p, size in
      #expect(ParameterLayout.read(from: p, capacity: size, parameterBytes: UInt64(huge.parameterBytes)) == nil)
    }
  }
}

/// docs/PROTOCOL.md's opcode (§14) and status (§15) tables name what the code does.
@Suite struct ProtocolDocumentTests {
  static let document: String = {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
      "../../docs/PROTOCOL.md")
    return (try? String(contentsOf: url, encoding: .utf8)) ?? ""
  }()

  /// The first `cells` cells of the table rows in section `heading`.
  static func rows(under heading: String, cells count: Int = 2) -> [[String]] {
    guard let start = document.range(of: "\n## \(heading)") else { return [] }
    let rest = document[start.upperBound...]
    let end = rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex
    return rest[..<end].split(separator: "\n").compactMap { line in
      let cells = line.split(separator: "|", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: .whitespaces)
      }
      guard cells.count > count + 1, cells[0].isEmpty else { return nil }
      return Array(cells[1...count])
    }
  }

  @Test func opcodeTableMatchesTheCode() {
    let table = Self.rows(under: "14. Commands").compactMap { cells -> (UInt8, String)? in
      guard cells[0].hasPrefix("0x"), let v = UInt8(cells[0].dropFirst(2), radix: 16) else { return nil }
      return (v, String(cells[1].prefix { $0.isLetter || $0.isNumber }))
    }
    #expect(!table.isEmpty, "no opcode table in docs/PROTOCOL.md §14")
    #expect(table.map(\.0) == Opcode.allCases.map(\.rawValue))
    for (value, name) in table {
      #expect(Opcode(rawValue: value).map { "\($0)" } == name, "opcode 0x\(String(value, radix: 16))")
    }
  }

  /// Each status's name as the code spells it (the switch fails to
  /// compile when a status is added, until it is named here).
  static func name(_ s: CommandStatus) -> String {
    switch s {
    case .success: "success"
    case .invalidValue: "invalidValue"
    case .outOfMemory: "outOfMemory"
    case .invalidHandle: "invalidHandle"
    case .notFound: "notFound"
    case .launchFailed: "launchFailed"
    case .timeout: "timeout"
    case .deviceLost: "deviceLost"
    case .notSupported: "notSupported"
    case .invalidOpcode: "invalidOpcode"
    case .invalidAddress: "invalidAddress"
    case .invalidStaging: "invalidStaging"
    case .notReady: "notReady"
    case .versionMismatch: "versionMismatch"
    case .permissionDenied: "permissionDenied"
    case .invalidImage: "invalidImage"
    case .notInitialized: "notInitialized"
    case .invalidParameters: "invalidParameters"
    case .illegalAddress: "illegalAddress"
    case .assertTriggered: "assertTriggered"
    case .launchTimeout: "launchTimeout"
    case .noBinaryForGPU: "noBinaryForGPU"
    case .invalidPTX: "invalidPTX"
    }
  }

  @Test func statusTableMatchesTheCode() {
    let rows = Self.rows(under: "15. Status codes", cells: 5)
    let table = rows.compactMap { cells -> (UInt16, String, Int32?)? in
      guard let value = UInt16(cells[0]) else { return nil }
      return (value, cells[1], Int32(cells[3].prefix { $0.isNumber }))
    }
    #expect(!table.isEmpty, "no status table in docs/PROTOCOL.md §15")
    #expect(table.map(\.0) == CommandStatus.allCases.map(\.rawValue))
    #expect(table.last?.0 == CommandStatus.highest)
    for (value, name, result) in table {
      let status = CommandStatus(rawValue: value)
      #expect(status.map(Self.name) == name, "status \(value)")
      #expect(status?.cudaResult == result, "status \(value)'s CUresult")
    }
  }
}
