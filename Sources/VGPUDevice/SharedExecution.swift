import DeviceAccess
import VGPUProtocol

/// What the devices of one mediator share when each host process gets a
/// BAR of its own (docs/PROTOCOL.md §2, "Tenants"): one execution backend,
/// one memory limit for all of them together, and the lock that serializes
/// their calls into the backend. A lone device (`sim`, a VM's BAR) has one
/// to itself.
///
/// Every device's executor takes `lock` for its passes, so the backend is
/// still called by one thread at a time, as `ExecutionBackend` demands,
/// whichever client device's thread that is; kernels that run on workers
/// run without it, as before.
public final class SharedExecution: @unchecked Sendable {
  /// Taken by every executor over this backend (see `Executor.lock`).
  let lock = SanitizerVisibleLock()
  /// What places memory, moves bytes and runs kernels, for every device.
  let backend: any ExecutionBackend
  /// The device memory all clients together may hold.
  public let memoryLimit: UInt64
  /// Bytes held by all devices' clients (under `lock`).
  @exclusivity(unchecked) var bytesInUse: UInt64 = 0
  /// Time all devices spent executing commands (under `lock`): the busy
  /// time the backend's clients see, as a GPU's utilization is everyone's.
  @exclusivity(unchecked) var busyNanoseconds: UInt64 = 0
  /// The next device's first backend queue-pair key (under `lock`).
  @exclusivity(unchecked) private var nextQueuePairBase = 0

  /// Shares `backend`, or the reference device's PTX interpreter over
  /// `configuration.memorySize` bytes of this host's RAM when it is nil.
  public init(configuration: ReferenceDeviceConfiguration, backend: (any ExecutionBackend)? = nil)
    throws(DeviceSetupError)
  {
    memoryLimit = configuration.memorySize
    if let backend {
      self.backend = backend
      return
    }
    let memory: DeviceMemory
    do { memory = try DeviceMemory(size: configuration.memorySize) } catch {
      throw DeviceSetupError(description: error.description)
    }
    self.backend = PTXBackend(
      memory: memory,
      computeCapability: configuration.computeCapability.major * 10 + configuration.computeCapability.minor,
      instructionBudget: configuration.kernelInstructionBudget)
  }

  /// What does the work ("PTX interpreter", "CUDA driver 12.8 on ...").
  public var backendName: String { backend.name }

  /// The backend's own busy time when it knows it (a GPU's, from NVML).
  public func backendBusyNanoseconds() -> UInt64? { lock.withLock { _ in backend.busyNanoseconds() } }

  /// Bytes all clients hold, and the limit.
  public var memoryInUse: (allocated: UInt64, total: UInt64) { lock.withLock { _ in (bytesInUse, memoryLimit) } }

  /// A range of `count` backend queue-pair keys no other device uses: the
  /// backend keys streams by queue pair (`BackendCaller.queuePair`), and two
  /// clients' pair 0 are different streams.
  func reserveQueuePairs(_ count: Int) -> Int {
    lock.withLock { _ in
      defer { nextQueuePairBase += count }
      return nextQueuePairBase
    }
  }
}
