import FatBinary
import PTX
import Synchronization
import VGPUProtocol

/// The reference device's execution backend: a module image's PTX (plain,
/// or chosen from a fat binary for this device's compute capability, then
/// decompressed) parsed by the PTX engine, and its kernels interpreted on
/// the device's CPU with every global access checked.
final class PTXBackend: ExecutionBackend {
  /// `major × 10 + minor`, as fat binary entries name architectures.
  let computeCapability: UInt32
  /// Thread-instructions a launch may run before it fails with 702 (a
  /// watchdog, as a display GPU's): 10^10 is minutes of interpretation.
  let instructionBudget: UInt64

  init(computeCapability: UInt32, instructionBudget: UInt64 = 10_000_000_000) {
    self.computeCapability = computeCapability
    self.instructionBudget = instructionBudget
  }

  var name: String { "PTX interpreter" }

  func loadModule(_ image: UnsafeRawBufferPointer, progress: () -> Void) throws(BackendError) -> any BackendModule {
    let source: PTXSource
    do throws(FatBinaryError) {
      source = try ModuleImageLoader.ptx(from: image, computeCapability: computeCapability)
    } catch {
      switch error {
      case .noPTX:
        // The description says what the image holds and how to build one with PTX.
        throw BackendError(.noBinaryForGPU, error.description)
      default: throw BackendError(.invalidImage, error.description)
      }
    }
    do throws(PTXError) {
      return try withoutActuallyEscaping(progress) { (tick) throws(PTXError) in
        PTXBackendModule(try PTXModule(source: source.text, progress: tick), budget: instructionBudget)
      }
    } catch {
      if case .parse(let line, _, _) = error {
        throw BackendError(.invalidPTX, error.description, detail: UInt32(clamping: line))
      }
      throw BackendError(.invalidPTX, error.description)
    }
  }
}

final class PTXBackendModule: BackendModule {
  let module: PTXModule
  let budget: UInt64
  /// The variables the device places: defined ones (an `.extern` is another module's).
  let placed: [PTXGlobalVariable]

  init(_ module: PTXModule, budget: UInt64) {
    self.module = module
    self.budget = budget
    placed = module.globals.filter { !$0.isExtern && ($0.space == .global || $0.space == .const) }
  }

  var kernelNames: [String] { module.kernelNames }

  var variables: [ModuleVariable] {
    placed.map { ModuleVariable(name: $0.name, size: $0.size, alignment: $0.alignment) }
  }

  func bind(variableAddresses: [UInt64]) {
    module.bind(globalAddresses: Dictionary(zip(placed.map(\.name), variableAddresses)) { first, _ in first })
  }

  func initializer(ofVariable index: Int) throws(BackendError) -> [UInt8] {
    do throws(PTXError) { return try module.initialBytes(ofGlobal: placed[index].name) } catch {
      throw BackendError(.invalidPTX, error.description)
    }
  }

  func function(named name: String) throws(BackendError) -> any BackendFunction {
    do throws(PTXError) {
      return PTXBackendFunction(module: self, info: try module.kernel(named: name))
    } catch {
      switch error {
      case .functionNotFound:
        let known = module.kernelNames.prefix(20).joined(separator: ", ")
        throw BackendError(.notFound, "no kernel '\(name)' in this module (it has: \(known))", detail: 3)
      default: throw BackendError(.invalidPTX, error.description, detail: 3)
      }
    }
  }
}

final class PTXBackendFunction: BackendFunction {
  let module: PTXBackendModule
  let name: String
  let info: FunctionInfo
  let slots: [ParameterSlot]

  init(module: PTXBackendModule, info k: PTXKernelInfo) {
    self.module = module
    name = k.name
    // sm_XY from the module's `.target` (e.g. "sm_52"), as binaryVersion would be.
    let sm = UInt16(k.target.split(separator: ",").first.map { $0.dropFirst(3).prefix { $0.isNumber } } ?? "") ?? 0
    info = FunctionInfo(
      parameterCount: UInt32(k.parameters.count), parameterBytes: UInt32(k.parameterBytes), maxThreadsPerBlock: 1024,
      sharedBytes: UInt32(k.staticSharedBytes), localBytes: UInt32(k.localBytesPerThread),
      constBytes: UInt32(k.constBytes), registers: UInt32(k.registerCount),
      ptxVersion: UInt16(k.ptxVersion.major * 10 + k.ptxVersion.minor), binaryVersion: sm)
    slots = k.parameters.map { ParameterSlot(offset: UInt32($0.offset), size: UInt32($0.size)) }
  }

  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, memory: KernelMemoryView,
    output: inout DeviceOutput, inlineSlice: UInt64
  ) throws(BackendError) -> (any BackendLaunch)? {
    let context = PTXLaunchContext(memory: memory)
    let g = geometry.grid
    let b = geometry.block
    let started: PTXLaunch
    do throws(PTXError) {
      started = try module.module.prepareLaunch(
        kernel: name, grid: PTXDim3(g.x, g.y, g.z), block: PTXDim3(b.x, b.y, b.z),
        dynamicSharedBytes: Int(geometry.sharedBytes), parameters: parameters, memory: context,
        options: PTXLaunchOptions(
          instructionBudget: module.budget, printf: { context.text.append(contentsOf: $0.utf8) },
          progress: { context.progress() }))
    } catch {
      throw BackendError(error)
    }
    let pending = PTXBackendLaunch(launch: started, context: context)
    // The inline part is never cancelled: it is short, and the pair is being served.
    return try pending.run(until: inlineSlice, output: &output) ? nil : pending
  }

}

extension BackendError {
  /// The engine's error as the guest gets it: CUDA's status, the engine's
  /// line, and for a bad access its address in r0.
  init(_ e: PTXError) {
    let address: UInt64
    switch e {
    case .illegalAddress(_, _, _, let a, _, _, _), .misalignedAddress(_, _, _, let a, _, _): address = a
    default: address = 0
    }
    self.init(Self.status(e), e.description, result0: address)
  }

  static func status(_ e: PTXError) -> CommandStatus {
    switch e {
    case .illegalAddress: .illegalAddress
    case .assertion: .assertTriggered
    case .budgetExhausted: .launchTimeout
    case .parse, .functionInvalid: .invalidPTX
    case .functionNotFound, .unboundSymbol: .notFound
    case .misalignedAddress, .deadlock, .unsupported, .launchFailed: .launchFailed
    }
  }
}

/// What a launch's callbacks reach: the memory view of the thread running
/// it now (the serving thread's first, then a worker's), its cancel flag,
/// and its printf text, kept until the launch is done so that a client gets
/// a launch's output whole.
final class PTXLaunchContext: PTXGlobalMemory, @unchecked Sendable {
  var memory: KernelMemoryView
  let cancelled = Atomic<Bool>(false)
  var text: [UInt8] = []

  init(memory: KernelMemoryView) { self.memory = memory }

  func region(containing address: UInt64) -> PTXMemoryRegion? { memory.region(containing: address) }

  /// The engine's progress callback: the device is alive; false stops the launch.
  func progress() -> Bool {
    memory.reportProgress()
    return !cancelled.load(ordering: .relaxed)
  }
}

/// A PTX launch in progress (`PTXLaunch`), as the device continues it.
final class PTXBackendLaunch: BackendLaunch, @unchecked Sendable {
  let launch: PTXLaunch
  let context: PTXLaunchContext

  init(launch: PTXLaunch, context: PTXLaunchContext) {
    self.launch = launch
    self.context = context
  }

  /// Runs up to `limit` more thread-instructions; when the launch ends
  /// (finished or failed) its text goes to `output`. True when it ended.
  func run(until limit: UInt64, output: inout DeviceOutput) throws(BackendError) -> Bool {
    do throws(PTXError) {
      guard try launch.run(until: limit) else { return false }
    } catch {
      output.append(context.text)
      throw BackendError(error)
    }
    if !context.text.isEmpty { output.append(context.text) }
    return true
  }

  func finish(memory: KernelMemoryView, output: inout DeviceOutput) throws(BackendError) {
    context.memory = memory
    _ = try run(until: .max, output: &output)
  }

  func cancel() { context.cancelled.store(true, ordering: .relaxed) }
}

/// The engine asks for the allocation holding an address (and caches it);
/// the device answers from the launching process's live allocations.
extension KernelMemoryView: PTXGlobalMemory {
  public func region(containing address: UInt64) -> PTXMemoryRegion? {
    let found =
      locked
      ? executor.allocation(containing: address, pid: pid)
      : executor.lock.withLock { _ in executor.allocation(containing: address, pid: pid) }
    guard let a = found else { return nil }
    return PTXMemoryRegion(base: a.address, count: Int(a.size), pointer: a.pointer)
  }
}
