import FatBinary
import PTX
import Synchronization
import VGPUProtocol

/// The reference device's execution backend: a module image's PTX (plain,
/// or chosen from a fat binary for this device's compute capability, then
/// decompressed) parsed by the PTX engine, and its kernels interpreted on
/// the device's CPU with every global access checked.
/// Its memory is the host's RAM (`PTXBackend+Memory`).
///
/// `@unchecked Sendable`: its mutable state (placement, events) is touched
/// only under the executor's lock, as the protocol says.
final class PTXBackend: ExecutionBackend, @unchecked Sendable {
  /// `major × 10 + minor`, as fat binary entries name architectures.
  let computeCapability: UInt32
  /// Thread-instructions a launch may run before it fails with 702 (a
  /// watchdog, as a display GPU's): 10^10 is minutes of interpretation.
  let instructionBudget: UInt64
  /// The device memory: a reservation in the host's RAM.
  let memory: DeviceMemory
  /// Where ranges go in `memory` (the executor's ledger says whose they are).
  @exclusivity(unchecked) var allocator: DeviceAllocator
  @exclusivity(unchecked) var eventTimes: [UInt64: UInt64] = [:]
  @exclusivity(unchecked) var nextEvent: UInt64 = 0

  /// The engine's own default (`ReferenceDeviceConfiguration` names it without importing PTX).
  static let defaultInstructionBudget = PTXLaunchOptions.defaultInstructionBudget

  init(memory: DeviceMemory, computeCapability: UInt32, instructionBudget: UInt64 = defaultInstructionBudget) {
    self.memory = memory
    self.allocator = DeviceAllocator(capacity: memory.size)
    self.computeCapability = computeCapability
    self.instructionBudget = instructionBudget
  }

  var name: String { "PTX interpreter" }
  /// Copies finish on the serving thread.
  var finishesHostAccessOnReturn: Bool { true }

  /// The backend loads images itself: what it reads is fixed at its start.
  func moduleLoader(for caller: BackendCaller) throws(BackendError) -> any ModuleLoader { self }
}

extension PTXBackend: ModuleLoader {
  func load(_ image: UnsafeRawBufferPointer, for caller: BackendCaller) throws(BackendError) -> any BackendModule {
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
      return PTXBackendModule(
        try PTXModule(source: source.text, progress: { caller.reportProgress() }), backend: self)
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
  unowned let backend: PTXBackend
  /// The variables the device places: defined ones (an `.extern` is another module's).
  let placed: [PTXGlobalVariable]

  init(_ module: PTXModule, backend: PTXBackend) {
    self.module = module
    self.backend = backend
    placed = module.globals.filter { !$0.isExtern && ($0.space == .global || $0.space == .const) }
  }

  var kernelNames: [String] { module.kernelNames }

  /// The device places every variable.
  func global(named name: String) throws(BackendError) -> PlacedVariable? { nil }

  func unload() {}

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
    // CU_FUNC_ATTRIBUTE_PTX_VERSION is the PTX *virtual architecture* the code
    // was compiled for (the `.target`, sm_52 → 52; not the PTX ISA version),
    // BINARY_VERSION the architecture it runs as: a driver that JIT-compiles PTX
    // reports the device's. CUB picks its kernels' tuning policy by PTX_VERSION
    // (cub::PtxVersion, major × 100 + minor × 10): reporting the ISA version
    // made CuPy's sort ask for kernels the module does not have.
    let sm = UInt16(k.target.split(separator: ",").first.map { $0.dropFirst(3).prefix { $0.isNumber } } ?? "") ?? 0
    info = FunctionInfo(
      parameterCount: UInt32(k.parameters.count), parameterBytes: UInt32(k.parameterBytes),
      maxThreadsPerBlock: UInt32(k.maxThreadsPerBlock),
      sharedBytes: UInt32(k.staticSharedBytes), localBytes: UInt32(k.localBytesPerThread),
      constBytes: UInt32(k.constBytes), registers: UInt32(k.registerCount),
      ptxVersion: sm, binaryVersion: UInt16(module.backend.computeCapability))
    slots = k.parameters.map { ParameterSlot(offset: UInt32($0.offset), size: UInt32($0.size)) }
  }

  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, caller: BackendCaller,
    output: inout DeviceOutput, inlineSlice: UInt64
  ) throws(BackendError) -> (any BackendWork)? {
    let context = PTXLaunchContext(caller: caller, memory: module.backend.memory)
    let g = geometry.grid
    let b = geometry.block
    let started: PTXLaunch
    do throws(PTXError) {
      started = try module.module.prepareLaunch(
        kernel: name, grid: PTXDim3(g.x, g.y, g.z), block: PTXDim3(b.x, b.y, b.z),
        dynamicSharedBytes: Int(geometry.sharedBytes), parameters: parameters, memory: context,
        options: PTXLaunchOptions(
          instructionBudget: module.backend.instructionBudget, printf: { context.text.append(contentsOf: $0.utf8) },
          progress: { context.progress() }, cooperative: geometry.cooperative))
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

/// What a launch's callbacks reach: the caller as the thread running it
/// now sees it (the serving thread first, then a worker), the device
/// memory, its cancel flag, and its printf text, kept until the launch is
/// done so that a client gets a launch's output whole.
final class PTXLaunchContext: PTXGlobalMemory, @unchecked Sendable {
  var caller: BackendCaller
  let memory: DeviceMemory
  let cancelled = Atomic<Bool>(false)
  var text: [UInt8] = []

  init(caller: BackendCaller, memory: DeviceMemory) {
    self.caller = caller
    self.memory = memory
  }

  /// The engine asks for the allocation holding an address (and caches it);
  /// the device answers from the launching process's live ranges.
  func region(containing address: UInt64) -> PTXMemoryRegion? {
    guard let r = caller.range(containing: address) else { return nil }
    return PTXMemoryRegion(
      base: r.address, count: Int(r.size), pointer: memory.base + Int(r.address - deviceAddressBase))
  }

  /// The engine's progress callback: the device is alive; false stops the launch.
  func progress() -> Bool {
    caller.reportProgress()
    return !cancelled.load(ordering: .relaxed)
  }
}

/// A PTX launch in progress (`PTXLaunch`), as the device continues it.
final class PTXBackendLaunch: BackendWork, @unchecked Sendable {
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

  func finish(caller: BackendCaller, output: inout DeviceOutput) throws(BackendError) {
    context.caller = caller
    _ = try run(until: .max, output: &output)
  }

  func cancel() { context.cancelled.store(true, ordering: .relaxed) }
}
