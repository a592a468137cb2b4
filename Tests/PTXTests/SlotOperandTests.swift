import Testing

@testable import PTX

/// The interpreter reads `r[a]` and `r[b]` of every instruction before it looks at the
/// opcode (Execute.swift), so both must be slots of the frame for every opcode. They were
/// not: `bar.sync` without a thread count had b = -1, which AddressSanitizer caught as a
/// read 8 bytes before the stack of a launch's thread 0 (tools/test --sanitize address);
/// `call` and vector `mov` kept a call-site and an `extra` index in `a`, which can point
/// past the last thread's stack.
@Suite struct SlotOperandTests {
  @Test(arguments: [
    ("vectorAdd", vectorAddPTX), ("saxpy", saxpyPTX), ("reduce", reducePTX), ("matmul", matmulPTX),
    ("exp", expPTX), ("atomics", atomicsPTX), ("printf", printfPTX), ("assert", assertPTX), ("numba", numbaPTX),
    ("func", funcPTX),
  ])
  func everyInstructionReadsSlotsOfItsFrame(name: String, source: String) throws {
    let module = try PTXModule(source: source)
    var seen: Set<String> = []
    for case .success(let f) in module.functions {
      for k in 0..<f.count {
        let i = f.code[k]
        seen.insert("\(i.op)")
        #expect(
          (0..<Int32(f.frameSlots)).contains(i.a) && (0..<Int32(f.frameSlots)).contains(i.b),
          "\(name): \(f.name) instruction \(k) (\(i.op), PTX line \(i.line)) reads a=\(i.a) b=\(i.b) of \(f.frameSlots) slots"
        )
      }
    }
    // The opcodes that broke it are among those checked.
    if name == "reduce" { #expect(seen.contains("barSync")) }
    if name == "func" { #expect(seen.contains("call")) }
  }
}
