import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol
import VGPUSimulator

@testable import VGPU

/// Protocol 1.1's `processes`: who uses the device, as NVML's process lists
/// report it; and a 1.0 device, which is never sent the command.
@Suite struct ProcessListTests {
  @Test func listsThisProcessWithItsMemoryAndLaunches() throws {
    let d = try Device.open("sim", options: .simulator())
    defer { d.close() }
    #expect(d.info.features.contains(.processList))
    #expect(try d.processes().isEmpty == false)
    let p = try d.allocate(3 << 20)
    let module = try d.loadModule(TestPTX.fillAndVectorAddImage)
    let fill = try d.function("fill", in: module)
    try d.launch(
      fill, grid: Dimensions(1), block: Dimensions(256),
      parameters: try #require(fill.layout).pack([.pointer(p.address), .f32(1), .u32(256)]))
    let list = try d.processes()
    #expect(list.count == 1)
    let me = try #require(list.first)
    #expect(me.pid == UInt32(getpid()))
    #expect(me.queuePairs == UInt32(d.info.queuePairs))
    #expect(me.bytesAllocated == 3 << 20)
    #expect(me.launches == 1)
    #expect(me.busyNanoseconds > 0)
  }

  @Test func aDeviceWithoutTheFeatureIsNeverSentTheCommand() throws {
    let seen = Mutex<Set<UInt8>>([])
    let rogue = try RogueDevice(configure: {
      $0.store(Register.version, 0x0002_0000)
      $0.store(Register.features, FeatureBits.version1_0.rawValue)
    }) { e in
      seen.withLock { _ = $0.insert(e.opcode) }
      return .answer(CompletionEntry(commandID: 0, status: .success))
    }
    let d = try rogue.open()
    defer { d.close() }
    #expect(d.info.protocolVersion == (2, 0))
    #expect(!d.info.features.contains(.processList))
    do {
      _ = try d.processes()
      Issue.record("no error")
    } catch {
      #expect(error.kind == .unsupported)
      #expect(error.description.contains("protocol 2.0 without the process list"), "\(error)")
    }
    try d.nop()  // the device still serves everything else
    #expect(!seen.withLock { $0.contains(Opcode.processes.rawValue) })
  }

  @Test func countsOutOfRangeAreViolations() throws {
    let rogue = try RogueDevice { e in
      guard e.opcode == Opcode.processes.rawValue else {
        return .answer(CompletionEntry(commandID: 0, status: .success))
      }
      return .answer(CompletionEntry(commandID: 0, status: .success, result0: 3, result1: 2))  // more records than processes
    }
    let d = try rogue.open()
    defer { d.close() }
    do {
      _ = try d.processes()
      Issue.record("no error")
    } catch {
      #expect(error.kind == .protocolViolation && error.description.contains("3 records of 2"), "\(error)")
    }
    try d.nop()  // only that call failed
  }
}
