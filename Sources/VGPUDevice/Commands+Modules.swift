import VGPUProtocol

/// Modules, functions and launches.
extension Executor {
  func moduleLoad(_ c: Command.ModuleLoad, qp: Int) throws(Refusal) -> CompletionEntry {
    let staging = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    do throws(ModuleImageError) {
      let image = try ModuleImage(parsing: UnsafeRawBufferPointer(start: staging, count: Int(c.length)))
      return CompletionEntry(status: .success, result0: modules.insert(image, pid: served[qp].pid, queuePair: qp))
    } catch {
      throw Refusal(status: .invalidImage, detail: UInt32(clamping: error.line))
    }
  }

  func moduleUnload(_ c: Command.ModuleUnload, qp: Int) throws(Refusal) -> CompletionEntry {
    modules.remove(at: try modules.slot(c.module, pid: served[qp].pid, argument: 1))
    return CompletionEntry(status: .success)
  }

  /// Names are at most 256 bytes; with room at `reply`, the kernel's
  /// ``FunctionInfo`` and parameter slots go there (feature `functionInfo`).
  func getFunction(_ c: Command.GetFunction, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let slot = try modules.slot(c.module, pid: pid, argument: 1)
    guard c.nameLength > 0, c.nameLength <= 256 else { throw Refusal(status: .invalidValue, detail: 3) }
    let staging = try stagingRange(c.name, c.nameLength, qp: qp, argument: 2)
    let name = String(decoding: UnsafeRawBufferPointer(start: staging, count: Int(c.nameLength)), as: UTF8.self)
    guard let kernel = modules.slots[slot].value?.kernels.first(where: { $0.rawValue == name }) else {
      throw Refusal(status: .notFound, detail: 3)
    }
    if c.replyCapacity > 0 {
      let slots = kernel.parameterSlots
      let needed = UInt64(FunctionInfo.size(parameters: slots.count))
      guard c.replyCapacity >= needed else { throw Refusal(status: .invalidValue, detail: 5, result0: needed) }
      let reply = try stagingRange(c.reply, needed, qp: qp, argument: 4)
      ParameterLayout.write(kernel.functionInfo, slots, to: reply)
    }
    let function = functions.insert(kernel, pid: pid, queuePair: qp)
    return Command.GetFunction.Reply(function: function, parameterBytes: UInt64(kernel.parameterBufferSize)).completion
  }

  func launch(_ c: Command.Launch, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let slot = try functions.slot(c.function, pid: pid, argument: 1)
    guard let kernel = functions.slots[slot].value else { throw Refusal(status: .invalidHandle, detail: 1) }
    if c.stream != 0 { _ = try streams.slot(c.stream, pid: pid, argument: 7) }
    let grid = (UInt64(c.grid.x), UInt64(c.grid.y), UInt64(c.grid.z))
    let block = (UInt64(c.block.x), UInt64(c.block.y), UInt64(c.block.z))
    // CUDA limits (CUDA C++ Programming Guide, "Compute Capabilities", table 21):
    // grid x < 2^31, y and z < 65536; at most 1024 threads per block, block z ≤ 64.
    guard grid.0 >= 1, grid.0 < 1 << 31, grid.1 >= 1, grid.1 < 65536, grid.2 >= 1, grid.2 < 65536 else {
      throw Refusal(status: .invalidValue, detail: 2)
    }
    // Each dimension is bounded first, so the products below cannot overflow.
    guard (1...1024).contains(block.0), (1...1024).contains(block.1), (1...64).contains(block.2),
      block.0 * block.1 * block.2 <= 1024
    else {
      throw Refusal(status: .invalidValue, detail: 3)
    }
    guard c.sharedBytes <= 228 << 10 else { throw Refusal(status: .invalidValue, detail: 5) }  // H100: 228 KiB per SM
    let length = UInt64(c.parameterLength)
    guard length == UInt64(kernel.parameterBufferSize) else {
      throw Refusal(status: .invalidParameters, detail: 5, result0: UInt64(kernel.parameterBufferSize), result1: length)
    }
    let parameters = try stagingRange(c.parameters, length, qp: qp, argument: 6)
    // Below 2^31 · 2^16 · 2^16 · 2^10 = 2^73: saturate rather than trap.
    let (gridThreads, o1) = (grid.0 * grid.1).multipliedReportingOverflow(by: grid.2)
    let (threads, o2) = gridThreads.multipliedReportingOverflow(by: block.0 * block.1 * block.2)
    do throws(KernelError) {
      try kernel.run(
        parameters: UnsafeRawBufferPointer(start: parameters, count: Int(length)),
        threads: o1 || o2 ? UInt64.max : threads,
        memory: ResolvingMemory(executor: self, pid: pid))
    } catch {
      switch error {
      case .parameterSize(let expected, let got):
        throw Refusal(status: .invalidParameters, detail: 5, result0: UInt64(expected), result1: UInt64(got))
      case .invalidPointer(let index, _, _):
        throw Refusal(status: .invalidAddress, detail: UInt32(100 + index))
      case .dimensionsOverflow:
        throw Refusal(status: .invalidValue, detail: 6)
      }
    }
    countLaunch(qp)
    return CompletionEntry(status: .success)
  }
}

extension BuiltinKernel {
  /// What `getFunction` reports: the built-in kernels are Swift, so they
  /// have no PTX or binary version, registers or static memory.
  var functionInfo: FunctionInfo {
    FunctionInfo(parameterCount: UInt32(parameters.count), parameterBytes: UInt32(parameterBufferSize))
  }

  var parameterSlots: [ParameterSlot] {
    zip(parameterOffsets, parameters).map { ParameterSlot(offset: UInt32($0), size: UInt32($1.size)) }
  }
}

extension ModuleImageError {
  /// The line at fault (0 when the whole image is), sent back as the completion's detail.
  var line: Int {
    switch self {
    case .tooLarge: 0
    case .notUTF8(let l), .badMagic(let l, _), .unsupportedVersion(let l, _), .syntax(let l, _),
      .unknownKernel(let l, _), .duplicateKernel(let l, _, _), .tooManyKernels(let l, _):
      l
    }
  }
}
