import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// One allocation of device global memory, as the device hands it to the engine.
public struct PTXMemoryRegion {
  /// Device address of the first byte.
  public var base: UInt64
  /// Size in bytes; the engine never touches bytes outside `base ..< base + count`.
  public var count: Int
  /// Host memory behind it. It must stay valid until the launch returns.
  public var pointer: UnsafeMutableRawPointer
  /// Whether stores and atomics may write it.
  public var writable: Bool
  /// Describes an allocation.
  public init(base: UInt64, count: Int, pointer: UnsafeMutableRawPointer, writable: Bool = true) {
    self.base = base
    self.count = count
    self.pointer = pointer
    self.writable = writable
  }
}

/// The device's global memory as the engine sees it. The engine asks for the allocation that
/// holds an address and caches it per block, so the device is called on a cache miss only; the
/// engine bounds-checks every access against the region returned.
///
/// Blocks may later run on several host threads at once, so `region(containing:)` must be safe
/// to call concurrently (a read-only lookup is).
public protocol PTXGlobalMemory {
  /// The allocation containing `address`, or nil when no allocation does.
  func region(containing address: UInt64) -> PTXMemoryRegion?
}

/// Per-launch settings beyond the geometry.
public struct PTXLaunchOptions {
  /// The most thread-instructions the launch may run before failing with `budgetExhausted`.
  public var instructionBudget: UInt64
  /// Receives each device `printf`'s formatted text, in execution order.
  public var printf: ((String) -> Void)?
  /// Called about every `progressInterval` thread-instructions of a thread
  /// that keeps running (a loop), so the device can show it is alive while a
  /// long kernel runs (clients' waits count silence, not time). Returning
  /// false stops the launch (`launchFailed`, cancelled): its client went away.
  public var progress: (() -> Bool)?
  /// Thread-instructions between `progress` calls (2^18: a few milliseconds
  /// in a release build, well under a second in a debug one on a busy machine).
  public var progressInterval: UInt64 = 1 << 18
  /// Host threads a launch run to its end (`run(until: .max)`) may spread its blocks over;
  /// 1 runs them one after another on the calling thread (the serial engine).
  public var hostThreads: Int
  /// A cooperative launch (`cuLaunchCooperativeKernel`): every block of the grid is resident
  /// at once, so the kernel may call the grid-wide barrier of CUDA's device runtime
  /// (`cudaCGSynchronize`, DeviceRuntime.swift). Its blocks run in phases between barriers
  /// (`CooperativeRun`); in a launch that is not cooperative such a call fails the launch.
  public var cooperative = false
  /// Whether each warp's threads run in lockstep, one instruction for all its converged
  /// lanes (the default), or thread by thread (the engine of issue 10, kept to compare
  /// with; `VGPU_PTX_ENGINE=serial` picks it with one host thread). Results are the same.
  public var lockstep = PTXLaunchOptions.defaultLockstep
  /// Thread-instructions a launch may run unless told otherwise: 10^11, a few minutes of
  /// this engine on two cores (2–5·10^8 a second in lockstep). Enough for the real
  /// workloads measured (numba's test_matmul, a 1600² matmul, ≈ 3.6·10^10; its
  /// test_ex_3d_grid ≈ 2·10^10), still a watchdog for an endless loop.
  public static let defaultInstructionBudget: UInt64 = 100_000_000_000

  /// Default settings: a budget of `defaultInstructionBudget`, printf output dropped, blocks
  /// over `defaultHostThreads`.
  public init(
    instructionBudget: UInt64 = PTXLaunchOptions.defaultInstructionBudget, printf: ((String) -> Void)? = nil,
    progress: (() -> Bool)? = nil,
    hostThreads: Int = PTXLaunchOptions.defaultHostThreads, cooperative: Bool = false
  ) {
    self.cooperative = cooperative
    self.instructionBudget = instructionBudget
    self.printf = printf
    self.progress = progress
    self.hostThreads = max(1, hostThreads)
  }

  /// The host's online cores (at most 64), or 1 when the environment has
  /// `VGPU_PTX_ENGINE=serial` (the engine of issue 10, kept to compare with),
  /// or `VGPU_PTX_THREADS` when it holds a count.
  public static var defaultHostThreads: Int {
    if let e = getenv("VGPU_PTX_ENGINE"), String(cString: e) == "serial" { return 1 }
    if let e = getenv("VGPU_PTX_THREADS"), let n = Int(String(cString: e)), n > 0 { return min(n, 64) }
    return min(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))), 64)
  }

  /// True unless the environment has `VGPU_PTX_ENGINE=serial` (issue 10's engine).
  public static var defaultLockstep: Bool {
    guard let e = getenv("VGPU_PTX_ENGINE") else { return true }
    return String(cString: e) != "serial"
  }

  /// What is wrong with `VGPU_PTX_ENGINE` or `VGPU_PTX_THREADS` in `environment`, as one
  /// line, or nil when both are unset, empty or settings (`serial`; a count from 1 to 64).
  /// The library goes on with its default for a value that is not one; the programs that
  /// run the engine (vgpu-mediator, vgpu-bench, pcitool on `sim`) refuse to start with it.
  public static func environmentProblem(_ environment: [String: String]) -> String? {
    if let engine = environment["VGPU_PTX_ENGINE"], !engine.isEmpty, engine != "serial" {
      return
        "VGPU_PTX_ENGINE='\(engine)' is not an engine: set it to 'serial' (one thread, blocks in order) or unset it"
    }
    if let threads = environment["VGPU_PTX_THREADS"], !threads.isEmpty {
      guard let n = Int(threads), (1...64).contains(n) else {
        return "VGPU_PTX_THREADS='\(threads)' is not a thread count: give a whole number from 1 to 64, or unset it"
      }
    }
    return nil
  }
}

/// What a finished launch reports.
public struct PTXLaunchStats: Sendable {
  /// Thread-instructions executed (guarded-off ones included).
  public var instructions: UInt64
  /// Host threads that ran its blocks (1 for a serial run).
  public var hostThreads: Int = 1
}

/// A kernel's launch-invariant tables (see `PTXModule.plan`); read-only
/// once built, so concurrent launches share it.
final class LaunchPlan: @unchecked Sendable {
  let info: PTXKernelInfo
  let root: Int
  let funcs: UnsafeMutablePointer<FuncRT>
  var templates: [UnsafeMutablePointer<UInt64>] = []
  let stack: (localBytes: Int, frameSlots: Int)
  let dynamicBase: Int
  init(
    info: PTXKernelInfo, root: Int, funcs: UnsafeMutablePointer<FuncRT>, stack: (localBytes: Int, frameSlots: Int),
    dynamicBase: Int
  ) {
    self.info = info
    self.root = root
    self.funcs = funcs
    self.stack = stack
    self.dynamicBase = dynamicBase
  }
  deinit {
    for t in templates { t.deallocate() }
    funcs.deallocate()
  }
}

struct FuncRT {
  var code: UnsafeMutablePointer<Instr>
  var slots: Int
  var frameSlots: Int
  var localBytes: Int
  var template: UnsafeMutablePointer<UInt64>
  var extraPointer: UnsafeMutablePointer<Int32>
}

extension PTXModule {
  /// Runs `kernel` over `grid` × `block` threads. `parameters` is the packed parameter buffer
  /// laid out as `kernel(named:)` reports; `dynamicSharedBytes` is the launch's dynamic shared
  /// memory. Blocks run on up to `options.hostThreads` host threads (`PTXLaunch.run(until:)`).
  public func launch(
    kernel: String, grid: PTXDim3, block: PTXDim3, dynamicSharedBytes: Int = 0, parameters: UnsafeRawBufferPointer,
    memory: any PTXGlobalMemory, options: PTXLaunchOptions = PTXLaunchOptions()
  ) throws(PTXError) -> PTXLaunchStats {
    let launch = try prepareLaunch(
      kernel: kernel, grid: grid, block: block, dynamicSharedBytes: dynamicSharedBytes, parameters: parameters,
      memory: memory, options: options)
    _ = try launch.run(until: .max)
    return launch.stats
  }

  /// Checks a launch of `kernel` and sets it up without running anything: `run(until:)` on the
  /// result runs it, in slices if the caller likes. The parameters are copied, so the buffer
  /// may be reused at once; `memory` is used until the launch finishes.
  public func prepareLaunch(
    kernel: String, grid: PTXDim3, block: PTXDim3, dynamicSharedBytes: Int = 0, parameters: UnsafeRawBufferPointer,
    memory: any PTXGlobalMemory, options: PTXLaunchOptions = PTXLaunchOptions()
  ) throws(PTXError) -> PTXLaunch {
    let plan = try self.plan(kernel)
    let info = plan.info
    guard block.count > 0, block.count <= 1024, grid.count > 0, block.z <= 64 else {
      throw .launchFailed(kernel: kernel, reason: "invalid launch geometry grid \(grid) block \(block)")
    }
    guard parameters.count >= info.parameterBytes else {
      throw .launchFailed(
        kernel: kernel,
        reason: "parameter buffer has \(parameters.count) bytes, the kernel needs \(info.parameterBytes)")
    }
    return PTXLaunch(
      kernel: kernel, module: self, plan: plan, grid: grid, block: block, dynamicSharedBytes: dynamicSharedBytes,
      parameters: parameters, memory: memory, options: options)
  }

  /// What a launch of `kernel` needs that does not change between launches:
  /// its metadata, the functions it reaches with their register templates
  /// (constants and symbol addresses), the shared-memory layout and stack
  /// needs. Built at the first launch (after `bind`) and kept, so a small
  /// launch does not pay for it again.
  func plan(_ kernel: String) throws(PTXError) -> LaunchPlan {
    if let p = plans.withLock({ $0[kernel] }) { return p }
    let info = try self.kernel(named: kernel)
    let (root, _) = try lowered(kernel)
    let reach = try reachable(root)
    let layout = sharedLayout(reach)
    let stack = stackNeeds(root)
    let funcs = UnsafeMutablePointer<FuncRT>.allocate(capacity: functions.count)
    var templates: [UnsafeMutablePointer<UInt64>] = []
    let plan = LaunchPlan(
      info: info, root: root, funcs: funcs, stack: stack, dynamicBase: layout.dynamicBase)
    for i in 0..<functions.count {
      guard reach.contains(i), case .success(let f) = functions[i] else {
        funcs[i] = FuncRT(
          code: UnsafeMutablePointer(bitPattern: 8)!, slots: 0, frameSlots: 0, localBytes: 0,
          template: UnsafeMutablePointer(bitPattern: 8)!, extraPointer: UnsafeMutablePointer(bitPattern: 8)!)
        continue
      }
      let t = UnsafeMutablePointer<UInt64>.allocate(capacity: f.slots)
      t.initialize(repeating: 0, count: f.slots)
      templates.append(t)
      plan.templates = templates
      for (slot, source) in f.constants {
        switch source {
        case .value(let v): t[Int(slot)] = v
        case .global(let g, let off):
          guard let a = addresses[g] else { throw .unboundSymbol(name: globals[g].name) }
          t[Int(slot)] = a &+ UInt64(bitPattern: off)
        case .shared(let s, let off, let generic):
          t[Int(slot)] = (layout.offsets[s] ?? 0) &+ UInt64(bitPattern: off) &+ (generic ? Memory.sharedWindow : 0)
        }
      }
      funcs[i] = FuncRT(
        code: f.code, slots: f.slots, frameSlots: f.frameSlots, localBytes: (f.localBytes + 15) / 16 * 16, template: t,
        extraPointer: f.extra)
    }
    return plans.withLock { p in
      if let existing = p[kernel] { return existing }  // built meanwhile by another launch
      p[kernel] = plan
      return plan
    }
  }

  /// Convenience overload taking the parameter buffer as bytes.
  public func launch(
    kernel: String, grid: PTXDim3, block: PTXDim3, dynamicSharedBytes: Int = 0, parameters: [UInt8],
    memory: any PTXGlobalMemory, options: PTXLaunchOptions = PTXLaunchOptions()
  ) throws(PTXError) -> PTXLaunchStats {
    var result: Result<PTXLaunchStats, PTXError> = .failure(.launchFailed(kernel: kernel, reason: "not run"))
    parameters.withUnsafeBytes { buf in
      result = Result { () throws(PTXError) -> PTXLaunchStats in
        try launch(
          kernel: kernel, grid: grid, block: block, dynamicSharedBytes: dynamicSharedBytes, parameters: buf,
          memory: memory, options: options)
      }
    }
    return try result.get()
  }
}

/// One launch in progress: the blocks' runner, where it stopped, and its own copy of the
/// parameters. `run(until:)` runs it in slices; between slices every thread of the current
/// block is parked where it can go on (at a sync point, exited, or before a branch, call or
/// return it has not yet executed), so no instruction ever runs twice.
///
/// Not thread-safe, but free of thread-local state: a launch started on one thread may be
/// continued on another, one `run` at a time.
public final class PTXLaunch: @unchecked Sendable {
  private let plan: LaunchPlan
  private let parameters: UnsafeMutableRawBufferPointer
  private var runner: BlockRunner
  private let grid: PTXDim3
  private let options: PTXLaunchOptions
  /// A fresh runner like `runner`, for a helper thread.
  private let makeRunner: @Sendable () -> BlockRunner
  /// The linear index of the block running (or next to run).
  private var nextBlock = 0
  /// Whether block `nextBlock` has been set up (its threads started).
  private var blockStarted = false
  /// Set once the launch finished or failed: `run` then does nothing more.
  private var ended = false
  /// Instructions run by helper threads' runners (`runner.executed` counts this thread's).
  private var helperExecuted: UInt64 = 0
  /// Host threads that have run blocks of it.
  private var hostThreads = 1
  /// A cooperative launch's scheduler (`options.cooperative`), which runs it instead.
  private var cooperative: CooperativeRun?
  /// A cooperative launch's grid workspace (`Memory.gridWorkspace`).
  private let workspace: UnsafeMutableRawPointer?

  init(
    kernel: String, module: PTXModule, plan: LaunchPlan, grid: PTXDim3, block: PTXDim3, dynamicSharedBytes: Int,
    parameters: UnsafeRawBufferPointer, memory: any PTXGlobalMemory, options: PTXLaunchOptions
  ) {
    self.plan = plan
    self.grid = grid
    self.options = options
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(parameters.count, 16), alignment: 16)
    if let b = parameters.baseAddress, parameters.count > 0 {
      copy.baseAddress!.copyMemory(from: b, byteCount: parameters.count)
    }
    self.parameters = copy
    let stack = plan.stack
    let params = UnsafeRawBufferPointer(start: copy.baseAddress, count: parameters.count)
    // A cooperative launch's grid workspace: { wsSize, barrier } as CUDA's cooperative_groups
    // reads it (`Memory.gridWorkspace`).
    if options.cooperative {
      let w = UnsafeMutableRawPointer.allocate(byteCount: Memory.gridWorkspaceBytes, alignment: 16)
      w.initializeMemory(as: UInt8.self, repeating: 0, count: Memory.gridWorkspaceBytes)
      w.storeBytes(of: UInt32(Memory.gridWorkspaceBytes), as: UInt32.self)
      workspace = w
    } else {
      workspace = nil
    }
    let shape = UncheckedSendable((module, memory, options, params, workspace))
    makeRunner = {
      let (module, memory, options, params, workspace) = shape.value
      return BlockRunner(
        kernel: kernel, module: module, funcs: plan.funcs, root: plan.root, block: block, grid: grid,
        stackSlots: stack.frameSlots + 64, localBytes: stack.localBytes,
        sharedBytes: plan.dynamicBase + max(0, dynamicSharedBytes), dynamicShared: UInt32(max(0, dynamicSharedBytes)),
        params: params, memory: memory, budget: options.instructionBudget, printf: options.printf,
        progress: options.progress, progressInterval: max(1, options.progressInterval),
        cooperative: options.cooperative, workspace: workspace, lockstep: options.lockstep)
    }
    runner = makeRunner()
    if options.cooperative {
      cooperative = CooperativeRun(kernel: kernel, grid: grid, options: options, makeRunner: makeRunner)
    }
  }

  deinit {
    cooperative = nil  // its runners first: they use the workspace
    runner.release()
    parameters.deallocate()
    workspace?.deallocate()
  }

  /// What the launch has done so far.
  public var stats: PTXLaunchStats {
    if let cooperative {
      return PTXLaunchStats(
        instructions: cooperative.executed.load(ordering: .relaxed), hostThreads: cooperative.hostThreads)
    }
    return PTXLaunchStats(instructions: runner.executed &+ helperExecuted, hostThreads: hostThreads)
  }

  /// Runs the launch until it finishes (true) or until it has run at least `limit` more
  /// thread-instructions (at least one) and can stop (false; call again to go on). A failure
  /// (a fault, the budget, a cancel) ends the launch: later calls return true at once.
  ///
  /// With no limit (`.max`) and `options.hostThreads` > 1, the blocks left after a short start
  /// on this thread run on that many host threads, each block on one of them, and the call
  /// returns when all are done. The outcome is the serial one (printf lines in block order;
  /// of several faults, the first block's) except where blocks race on global memory.
  public func run(until limit: UInt64) throws(PTXError) -> Bool {
    if let cooperative { return try cooperative.run(until: limit) }
    if ended { return true }
    if limit == .max && options.hostThreads > 1 && grid.count - nextBlock > 1 {
      // A small launch ends within the start and never pays for threads.
      if try runSerial(until: ParallelRun.quantum(options)) { return true }
      if grid.count - nextBlock > 1 { return try runParallel() }
    }
    return try runSerial(until: limit)
  }

  /// Runs blocks one after another on this thread (`run(until:)`).
  private func runSerial(until limit: UInt64) throws(PTXError) -> Bool {
    let l = max(1, limit)
    runner.suspendAt = runner.executed > UInt64.max - l ? .max : runner.executed + l
    do throws(PTXError) {
      let count = grid.count
      while nextBlock < count {
        if !blockStarted {
          runner.startBlock(grid.block(nextBlock))
          blockStarted = true
        }
        guard try runner.continueBlock() else { return false }
        blockStarted = false
        nextBlock += 1
        // Between blocks every thread is at rest: a good place to stop.
        if nextBlock < count && runner.executed >= runner.suspendAt { return false }
      }
    } catch {
      ended = true
      throw error
    }
    ended = true
    return true
  }

  /// Runs the blocks left (the one started, if any, then the others) on up to
  /// `options.hostThreads` threads: this one and helpers started for the purpose.
  private func runParallel() throws(PTXError) -> Bool {
    ended = true
    let budget = options.instructionBudget
    let run = ParallelRun(
      grid: grid, next: nextBlock + (blockStarted ? 1 : 0), executed: runner.executed &+ helperExecuted,
      options: options)
    let started = blockStarted ? nextBlock : nil
    let buffered = options.printf != nil
    let helpers = min(options.hostThreads, grid.count - nextBlock) - 1
    let makeRunner = self.makeRunner
    let helpersRan = onThreads(helpers) {
      var r = makeRunner()
      r.nextProgress = .max
      r.printed = buffered ? [] : nil
      run.work(&r, started: nil, main: false)
      run.outcome.withLock { $0.helperExecuted &+= r.executed }
      r.release()
      run.helpersLeft.subtract(1, ordering: .releasing)
    } main: { helpersStarted in
      runner.nextProgress = .max
      runner.printed = buffered ? [] : nil
      run.work(&runner, started: started, main: true)
      runner.printed = nil
      run.awaitHelpers(started: helpersStarted, kernel: runner.kernel)
    }
    hostThreads = 1 + helpersRan
    let outcome = run.outcome.withLock { $0 }
    helperExecuted &+= outcome.helperExecuted
    if let printf = options.printf {
      let last = outcome.fault?.block ?? .max
      for k in outcome.texts.keys.sorted() where k <= last {
        for line in outcome.texts[k]! { printf(line) }
      }
    }
    if let fault = outcome.fault { throw fault.error }
    if let error = outcome.stopped { throw error }
    if runner.executed &+ helperExecuted > budget {
      throw .budgetExhausted(kernel: runner.kernel, budget: budget)
    }
    return true
  }
}

extension PTXDim3 {
  /// The block with linear index `k` in this grid (x fastest).
  func block(_ k: Int) -> PTXDim3 {
    PTXDim3(
      UInt32(k % Int(x)), UInt32((k / Int(x)) % Int(y)), UInt32(k / (Int(x) * Int(y))))
  }
}
