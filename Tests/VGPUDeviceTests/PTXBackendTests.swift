import TestSupport
import Testing
import VGPUProtocol

@testable import VGPUDevice

/// The device's only backend, PTX, driven by hand: which images it takes and
/// how it refuses the rest, the layout getFunction reports, and launches
/// checked against CPU references (docs/PROTOCOL.md §18).
@Suite struct PTXBackendTests {
  /// Stages `image` and loads it: the completion.
  func load(_ h: Harness, _ image: [UInt8]) -> CompletionEntry {
    h.stage(image)
    return h.send(Command.ModuleLoad(staging: h.staging(), length: UInt64(image.count)).entry)
  }

  /// getFunction with room for the FunctionInfo record right after the name.
  func function(_ h: Harness, _ module: UInt64, _ name: String) -> (CompletionEntry, FunctionInfo, ParameterLayout?) {
    let bytes = Array(name.utf8)
    h.stage(bytes)
    let c = h.send(
      Command.GetFunction(
        module: module, name: h.staging(), nameLength: UInt64(bytes.count), reply: h.staging(offset: 1024),
        replyCapacity: 4096
      ).entry)
    let record = h.read(4096, offset: 1024)
    let read = record.withUnsafeBytes {
      ParameterLayout.read(
        from: $0.baseAddress!, capacity: 4096, parameterBytes: Command.GetFunction.Reply(c).parameterBytes)
    }
    return (c, read?.0 ?? FunctionInfo(parameterCount: 0, parameterBytes: 0), read?.1)
  }

  func upload(_ h: Harness, _ floats: [Float]) -> UInt64 {
    let p = h.alloc(UInt64(max(1, floats.count * 4)))
    h.stage(floats.withUnsafeBytes { Array($0) })
    #expect(
      h.send(Command.CopyToDevice(device: p, staging: h.staging(), length: UInt64(floats.count * 4)).entry).status == 0)
    return p
  }

  func download(_ h: Harness, _ p: UInt64, _ count: Int) -> [Float] {
    #expect(
      h.send(Command.CopyFromDevice(device: p, staging: h.staging(), length: UInt64(count * 4)).entry).status == 0)
    return h.read(count * 4).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
  }

  func launch(_ h: Harness, _ f: UInt64, _ parameters: [UInt8], grid: UInt32, block: UInt32) -> CompletionEntry {
    h.stage(parameters, qp: 0)
    return h.send(
      Command.Launch(
        function: f, grid: Dimensions(grid), block: Dimensions(block), parameterLength: UInt32(parameters.count),
        parameters: h.staging()
      ).entry)
  }

  /// Little-endian fields at their offsets: what a guest packs by the reported layout.
  func pack(_ size: Int, _ fields: [(offset: Int, value: UInt64, bytes: Int)]) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: size)
    for f in fields {
      for i in 0..<f.bytes { b[f.offset + i] = UInt8(truncatingIfNeeded: f.value >> (8 * UInt64(i))) }
    }
    return b
  }

  @Test func garbageIsAnInvalidImage() throws {
    let h = try Harness()
    h.claim(0)
    for image in [[UInt8](repeating: 0xAB, count: 300), Array("vgpu-module 1\nkernel fill\n".utf8)] {
      let c = load(h, image)
      #expect(c.status == CommandStatus.invalidImage.rawValue, "\(c.status)")
      #expect(!h.errorText().isEmpty)
    }
    #expect(h.send(Command.Nop().entry).status == 0)
  }

  @Test func aSyntaxErrorIsInvalidPTXWithItsLine() throws {
    let h = try Harness()
    h.claim(0)
    // A directive the parser cannot read, on line 4: the whole module fails.
    let broken = ".version 7.0\n.target sm_52\n.address_size 64\n.global .u32 x = ;\n"
    let c = load(h, Array(broken.utf8))
    #expect(c.status == CommandStatus.invalidPTX.rawValue, "\(c.status)")
    #expect(c.detail == 4, "\(c.detail): \(h.errorText())")
    #expect(h.errorText().contains("line 4"), "\(h.errorText())")
  }

  /// A kernel whose body cannot be read fails at getFunction, alone: the
  /// module loads and its other kernels work.
  @Test func aBrokenKernelFailsAtGetFunctionAlone() throws {
    let h = try Harness()
    h.claim(0)
    let text = TestPTX.fillAndVectorAdd + ".visible .entry broken()\n{\n  mov.u32 %r1, ;\n  ret;\n}\n"
    let brokenLine =
      text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains("mov.u32 %r1, ;") }! + 1
    let c = load(h, Array(text.utf8))
    #expect(c.status == 0, "\(h.errorText())")
    let module = c.result0
    let (bad, _, _) = function(h, module, "broken")
    #expect(bad.status == CommandStatus.invalidPTX.rawValue && bad.detail == 3)
    #expect(h.errorText().contains("line \(brokenLine)"), "\(h.errorText())")
    let (good, _, layout) = function(h, module, "fill")
    #expect(good.status == 0 && layout != nil)
  }

  @Test func aMissingKernelIsNotFoundWithTheModulesKernels() throws {
    let h = try Harness()
    h.claim(0)
    let module = load(h, TestPTX.fillAndVectorAddImage).result0
    let (c, _, _) = function(h, module, "saxpy")
    #expect(c.status == CommandStatus.notFound.rawValue && c.detail == 3)
    let text = h.errorText()
    #expect(text.contains("saxpy") && text.contains("fill") && text.contains("vector_add"), "\(text)")
  }

  @Test func getFunctionReportsThePTXParameterLayout() throws {
    let h = try Harness()
    h.claim(0)
    let module = load(h, TestPTX.fillAndVectorAddImage).result0
    let (fill, fillInfo, fillLayout) = function(h, module, "fill")
    #expect(fill.status == 0 && Command.GetFunction.Reply(fill).parameterBytes == 16)
    #expect(fillLayout?.slots == [.init(offset: 0, size: 8), .init(offset: 8, size: 4), .init(offset: 12, size: 4)])
    // PTX_VERSION: the .target (sm_52); BINARY_VERSION: the device's 9.0, which runs it.
    #expect(fillInfo.ptxVersion == 52 && fillInfo.binaryVersion == 90 && fillInfo.maxThreadsPerBlock == 1024)
    let (add, _, addLayout) = function(h, module, "vector_add")
    #expect(add.status == 0 && Command.GetFunction.Reply(add).parameterBytes == 28)
    #expect(addLayout?.slots.map(\.offset) == [0, 8, 16, 24] && addLayout?.slots.map(\.size) == [8, 8, 8, 4])
  }

  /// vector_add over a length that is no whole number of blocks, against the CPU.
  @Test func vectorAddMatchesTheCPU() throws {
    let h = try Harness()
    h.claim(0)
    let module = load(h, TestPTX.fillAndVectorAddImage).result0
    let f = Command.GetFunction.Reply(function(h, module, "vector_add").0).function
    let n = 1000
    let a = (0..<n).map { Float($0) * 0.37 - 11 }
    let b = (0..<n).map { Float(n - $0) / 3 }
    let pa = upload(h, a)
    let pb = upload(h, b)
    let pc = upload(h, [Float](repeating: .nan, count: n + 24))
    let params = pack(28, [(0, pa, 8), (8, pb, 8), (16, pc, 8), (24, UInt64(n), 4)])
    let c = launch(h, f, params, grid: 4, block: 256)
    #expect(c.status == 0, "\(h.errorText())")
    let got = download(h, pc, n + 24)
    #expect(got.prefix(n).map(\.bitPattern) == (0..<n).map { (a[$0] + b[$0]).bitPattern })
    #expect(got.suffix(24).allSatisfy { $0.isNaN }, "a thread past n wrote")
    // The wrong parameter length is refused before anything runs.
    let wrong = launch(h, f, Array(params.prefix(24)), grid: 1, block: 1)
    #expect(wrong.status == CommandStatus.invalidParameters.rawValue && wrong.result0 == 28 && wrong.result1 == 24)
  }

  /// A thread that stores outside the process's allocations: 700's status
  /// with the address in r0 and the thread named in errorText.
  @Test func anIllegalAddressIsReportedWithTheAddress() throws {
    let h = try Harness()
    h.claim(0)
    let module = load(h, TestPTX.fillAndVectorAddImage).result0
    let f = Command.GetFunction.Reply(function(h, module, "fill").0).function
    let p = h.alloc(256)
    let c = launch(h, f, pack(16, [(0, p, 8), (8, UInt64(Float(1).bitPattern), 4), (12, 65, 4)]), grid: 1, block: 128)
    #expect(c.status == CommandStatus.illegalAddress.rawValue, "\(c.status)")
    #expect(c.result0 == p + 256, "r0 0x\(String(c.result0, radix: 16))")
    #expect(h.errorText().contains("fill"), "\(h.errorText())")
  }

  @Test func anEndlessKernelRunsOutOfItsBudget() throws {
    let h = try Harness(instructionBudget: 100_000)
    h.claim(0)
    let module = load(h, Array(TestPTX.spin.utf8)).result0
    let f = Command.GetFunction.Reply(function(h, module, "spin").0).function
    let c = launch(h, f, [], grid: 1, block: 32)
    #expect(c.status == CommandStatus.launchTimeout.rawValue, "\(c.status): \(h.errorText())")
    #expect(h.send(Command.Nop().entry).status == 0)
  }
}
