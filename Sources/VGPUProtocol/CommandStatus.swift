/// The status of a completion. Chosen so that each maps onto one `CUresult`
/// at the shim edge (values from `cuda.h`, given in `cudaResult`).
public enum CommandStatus: UInt16, Sendable, CaseIterable, CustomStringConvertible {
  case success = 0
  /// An argument is out of range (detail: which, 1-based; 0 = flags or
  /// reserved bits; launch detail 6: matmul dimensions overflow; getFunction
  /// detail 5: r0 the FunctionInfo bytes needed).
  case invalidValue = 1
  /// No free block large enough (r0 free bytes, r1 largest free block).
  case outOfMemory = 2
  /// A handle that is not live or not of the expected kind (detail: which argument).
  case invalidHandle = 3
  /// A named thing does not exist (a function in a module).
  case notFound = 4
  /// A kernel failed while running (e.g. touched memory outside its buffers).
  case launchFailed = 5
  /// The device gave up waiting for something.
  case timeout = 6
  /// The device is stopping or stopped.
  case deviceLost = 7
  /// Valid, but this device does not do it.
  case notSupported = 8
  /// An opcode this device does not know.
  case invalidOpcode = 9
  /// A device address range outside any live allocation (detail: which
  /// argument; launch: 100 + i for kernel pointer parameter i, 0-based).
  case invalidAddress = 10
  /// A staging range outside the queue pair's staging window (detail: which argument).
  case invalidStaging = 11
  /// Work still pending, or an event not recorded yet (eventElapsed, detail: which argument).
  case notReady = 12
  /// Identify: the guest's major version is not the device's (r1 device version).
  case versionMismatch = 13
  /// The handle or memory belongs to another process (detail: which argument).
  case permissionDenied = 14
  /// A module image the device cannot read (detail: line number, 0 = the whole image).
  case invalidImage = 15
  /// The command came before `identify`.
  case notInitialized = 16
  /// Launch parameters do not fit the kernel (detail 5; r0 expected bytes, r1 given bytes).
  case invalidParameters = 17
  /// 2.0: a kernel read or wrote memory outside every live allocation of its
  /// process (r0 the address; the error text names the kernel and thread).
  /// Sticky in CUDA: the context is unusable afterwards.
  case illegalAddress = 18
  /// 2.0: a kernel's `assert` failed (the error text has the message).
  case assertTriggered = 19
  /// 2.0: a kernel ran past the device's execution budget.
  case launchTimeout = 20
  /// 2.0: the image has no code this device runs (e.g. a cubin for one GPU
  /// architecture, without PTX).
  case noBinaryForGPU = 21
  /// 2.0: PTX the device cannot parse (detail: the line).
  case invalidPTX = 22

  /// The largest status value: statuses are 0...highest with no gaps
  /// (WireFormatTests checks), so a guest validates one with a compare.
  public static let highest: UInt16 = 22

  /// The `CUresult` value (cuda.h) this status becomes at the shim edge.
  public var cudaResult: Int32 {
    switch self {
    case .success: 0  // CUDA_SUCCESS
    case .invalidValue, .invalidStaging, .invalidParameters: 1  // CUDA_ERROR_INVALID_VALUE
    case .outOfMemory: 2  // CUDA_ERROR_OUT_OF_MEMORY
    case .notInitialized: 3  // CUDA_ERROR_NOT_INITIALIZED
    case .deviceLost: 4  // CUDA_ERROR_DEINITIALIZED
    case .invalidImage: 200  // CUDA_ERROR_INVALID_IMAGE
    case .invalidHandle, .invalidAddress: 400  // CUDA_ERROR_INVALID_HANDLE
    case .notFound: 500  // CUDA_ERROR_NOT_FOUND
    case .notReady: 600  // CUDA_ERROR_NOT_READY
    case .launchFailed: 719  // CUDA_ERROR_LAUNCH_FAILED
    case .timeout: 909  // CUDA_ERROR_TIMEOUT
    case .notSupported, .invalidOpcode: 801  // CUDA_ERROR_NOT_SUPPORTED
    case .versionMismatch: 803  // CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
    case .permissionDenied: 800  // CUDA_ERROR_NOT_PERMITTED
    case .illegalAddress: 700  // CUDA_ERROR_ILLEGAL_ADDRESS
    case .assertTriggered: 710  // CUDA_ERROR_ASSERT
    case .launchTimeout: 702  // CUDA_ERROR_LAUNCH_TIMEOUT
    case .noBinaryForGPU: 209  // CUDA_ERROR_NO_BINARY_FOR_GPU
    case .invalidPTX: 218  // CUDA_ERROR_INVALID_PTX
    }
  }

  public var description: String {
    switch self {
    case .success: "success"
    case .invalidValue: "invalid value"
    case .outOfMemory: "out of device memory"
    case .invalidHandle: "invalid handle"
    case .notFound: "not found"
    case .launchFailed: "launch failed"
    case .timeout: "timed out"
    case .deviceLost: "device lost"
    case .notSupported: "not supported"
    case .invalidOpcode: "unknown opcode"
    case .invalidAddress: "device address outside any live allocation"
    case .invalidStaging: "staging range outside the queue pair's window"
    case .notReady: "not ready"
    case .versionMismatch: "protocol version mismatch"
    case .permissionDenied: "belongs to another process"
    case .invalidImage: "invalid module image"
    case .notInitialized: "identify has not been sent"
    case .invalidParameters: "launch parameters do not fit the kernel"
    case .illegalAddress: "a kernel touched memory outside its allocations"
    case .assertTriggered: "a kernel's assert failed"
    case .launchTimeout: "a kernel ran past its time budget"
    case .noBinaryForGPU: "no code in the image this device runs"
    case .invalidPTX: "invalid PTX"
    }
  }
}
