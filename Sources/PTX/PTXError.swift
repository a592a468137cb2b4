/// Everything that can go wrong in the PTX engine, with the CUDA error each one stands for.
///
/// Each case prints as one line that names what was being attempted, so the device can
/// forward `description` to the client unchanged.
public enum PTXError: Error, CustomStringConvertible, Sendable, Equatable {
  /// The text is not PTX we can read: `line` is 1-based, `token` is what was found.
  case parse(line: Int, token: String, expected: String)
  /// No function of that name in the module.
  case functionNotFound(name: String)
  /// The function exists but its body failed to parse or lower; `reason` is that error.
  case functionInvalid(name: String, reason: String)
  /// A global or const symbol has no device address: `bind(globalAddresses:)` lacks it.
  case unboundSymbol(name: String)
  /// A load or store touched memory that is not there.
  case illegalAddress(
    kernel: String, block: PTXDim3, thread: PTXDim3, address: UInt64, size: Int, isStore: Bool, line: Int)
  /// An access whose address is not a multiple of its size.
  case misalignedAddress(kernel: String, block: PTXDim3, thread: PTXDim3, address: UInt64, size: Int, line: Int)
  /// `__assertfail` was called (device-side `assert`).
  case assertion(message: String, file: String, line: Int, function: String, block: PTXDim3, thread: PTXDim3)
  /// The launch ran more thread-instructions than its budget allowed.
  case budgetExhausted(kernel: String, budget: UInt64)
  /// Every live thread waits and nothing can release any of them.
  case deadlock(kernel: String, block: PTXDim3, detail: String)
  /// An instruction the engine does not run (found at load or at run time).
  case unsupported(kernel: String, instruction: String, line: Int)
  /// The launch itself is malformed (bad dimensions, parameter buffer too small, call stack overflow).
  case launchFailed(kernel: String, reason: String)

  /// The `cudaError_t` / `CUresult` number this error maps to.
  public var cudaError: Int32 {
    switch self {
    case .parse, .functionInvalid: return 218  // CUDA_ERROR_INVALID_PTX
    case .functionNotFound, .unboundSymbol: return 500  // CUDA_ERROR_NOT_FOUND
    case .illegalAddress: return 700  // CUDA_ERROR_ILLEGAL_ADDRESS
    case .assertion: return 710  // CUDA_ERROR_ASSERT
    case .budgetExhausted: return 702  // CUDA_ERROR_LAUNCH_TIMEOUT
    case .misalignedAddress, .deadlock, .unsupported, .launchFailed: return 719  // CUDA_ERROR_LAUNCH_FAILED
    }
  }

  public var description: String {
    switch self {
    case .parse(let line, let token, let expected):
      return "PTX parse error at line \(line) near '\(token)': expected \(expected)"
    case .functionNotFound(let name):
      return "PTX function '\(name)' not found in the module"
    case .functionInvalid(let name, let reason):
      return "PTX function '\(name)' failed to load: \(reason)"
    case .unboundSymbol(let name):
      return "PTX symbol '\(name)' has no device address (bind the module's globals before launching)"
    case .illegalAddress(let kernel, let block, let thread, let address, let size, let isStore, let line):
      return "illegal address: kernel \(kernel) block \(block) thread \(thread) \(isStore ? "store" : "load") of "
        + "\(size) bytes at 0x\(String(address, radix: 16)) (PTX line \(line))"
    case .misalignedAddress(let kernel, let block, let thread, let address, let size, let line):
      return "misaligned address: kernel \(kernel) block \(block) thread \(thread) access of \(size) bytes at "
        + "0x\(String(address, radix: 16)) (PTX line \(line))"
    case .assertion(let message, let file, let line, let function, let block, let thread):
      return "\(file):\(line): \(function): block \(block), thread \(thread) Assertion `\(message)` failed."
    case .budgetExhausted(let kernel, let budget):
      return "kernel \(kernel) exceeded its budget of \(budget) thread-instructions (endless loop?)"
    case .deadlock(let kernel, let block, let detail):
      return "kernel \(kernel) deadlocked in block \(block): \(detail)"
    case .unsupported(let kernel, let instruction, let line):
      return "kernel \(kernel): unsupported PTX instruction '\(instruction)' at line \(line)"
    case .launchFailed(let kernel, let reason):
      return "launch of \(kernel) failed: \(reason)"
    }
  }
}

/// A three-component extent or index (grid, block, thread), as CUDA's `dim3`.
public struct PTXDim3: Hashable, Sendable, CustomStringConvertible {
  public var x: UInt32
  public var y: UInt32
  public var z: UInt32
  /// Makes an extent; missing components are 1 as in CUDA's `dim3`.
  public init(_ x: UInt32, _ y: UInt32 = 1, _ z: UInt32 = 1) {
    self.x = x
    self.y = y
    self.z = z
  }
  /// The number of elements in the extent.
  public var count: Int { Int(x) * Int(y) * Int(z) }
  public var description: String { "(\(x),\(y),\(z))" }
}
