import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

/// The device's private view of one queue pair. Nothing here is read back
/// from the BAR: the guest can only move the doorbells and the state word,
/// and the device checks both before acting on them.
struct ServedQueuePair {
  var active = false
  var pid: UInt32 = 0
  /// The owner's start time (/proc/PID/stat field 22), so a reused pid is not mistaken for it.
  var ownerStart: UInt64 = 0
  /// Where the device reads the next command and posts the next completion.
  var head: SubmissionCursor
  var completions: CompletionCursor
  var identified = false
  /// Its guest agreed to coalesced completions (2.4): a run of NOPs with
  /// consecutive ids is answered by one completion.
  var coalesces = false
  var faulted = false
  /// Its owner's exit is reported by the OwnerWatch (else found by scanning /proc).
  var watched = false
  var stats = StatisticsRecord()
  /// What the wire's record does not carry (Observability.swift).
  var activity = ActivityCounters()
  /// The text of the last failed command (`errorText`).
  var errorText = ""
  /// Its work (a launch, GPU work in flight) on a worker: the pair serves nothing else meanwhile.
  var busy: WorkerJob?
  /// A release that waits for `busy` to finish (its kernel may still touch the pair's memory).
  var pendingRelease: DeviceEvent.ReleaseReason?
  /// Which claim of this pair this is (bumped at each accept).
  var generation: UInt64 = 0
  /// Its owner announced the guest heartbeat (2.3) in `identify`: the pair
  /// is reclaimed when `beat` stops changing. Never unset until release.
  var heartbeatWatched = false
  /// The heartbeat word when last read, and when it was last seen to change
  /// (the device's clock: a guest's clock means nothing here).
  var beat: UInt32 = 0
  var beatSeenAt: UInt64 = 0

  init(depth: UInt32) {
    head = SubmissionCursor(depth: depth)
    completions = CompletionCursor(depth: depth)
  }
}

/// The device's state and its command interpreter, run on the serving
/// thread under `lock` (which tests and `stop` also take). Its parts, one
/// concern a file:
/// - `Executor+Lifecycle`: claims, closes, the state word as hostile input,
///   owners that exit, the registers a guest must not change;
/// - `Executor+Serving`: passes over the rings;
/// - `Executor+Dispatch`: the one switch from opcode to handler;
/// - `Commands+Memory`, `+Modules`, `+Sync`, `+Info`: the handlers, by
///   family — a new opcode's handler goes in its family's file;
/// - `Accounting`: the counters; `Validation`: refusals and range checks;
///   `HandleTable`: handles.
///
/// The lock keeps accesses exclusive, so Swift's dynamic exclusivity checks
/// on the properties (swift_beginAccess: ~250 instructions a NOP in
/// callgrind) are off, and the per-pair state lives in one fixed buffer
/// that handlers update in place.
final class Executor: @unchecked Sendable {
  /// A Mutex ThreadSanitizer can follow (the device thread, workers and
  /// callers such as stop() take it in turn; see DeviceAccess.ThreadSanitizer).
  /// The one of `shared`: every device over the same backend takes it.
  let lock: SanitizerVisibleLock
  /// The backend, memory limit and lock this device shares with the other
  /// clients' devices of its mediator (or has to itself).
  let shared: SharedExecution
  /// This device's pair 0 as the backend knows it (`caller(_:)`).
  let queuePairBase: Int
  let base: UnsafeMutableRawPointer
  let layout: BARLayout
  let registers: RegisterBlock
  let views: [QueuePairView]
  /// The device memory this BAR's guests may hold in all: the shared limit
  /// (everyone's over `shared`), or this BAR's own where it is lower.
  let memoryLimit: UInt64
  /// This BAR's own limit (`ReferenceDeviceConfiguration.ownMemoryLimit`):
  /// enforced besides the shared one, and its clients see only this BAR's use.
  let ownMemoryLimit: UInt64?
  /// One entry per queue pair, allocated once.
  let served: UnsafeMutableBufferPointer<ServedQueuePair>
  /// Who holds which range of device memory: every address a guest names is checked here.
  @exclusivity(unchecked) var ledger = AllocationLedger()
  /// Host memory the clients lent the device (2.4): one copy instead of two.
  @exclusivity(unchecked) var sharedHost = SharedHostMemory()
  /// The page-locked window's ranges (2.4), or nil: the BAR has none.
  @exclusivity(unchecked) var hostWindow: HostWindow?
  /// The queue pairs accepted and not yet released, for the quick pass.
  @exclusivity(unchecked) var activeQueuePairs: [Int] = []
  @exclusivity(unchecked) var modules = HandleTable<ModuleEntry>(kind: 1)
  @exclusivity(unchecked) var functions = HandleTable<FunctionEntry>(kind: 2)
  @exclusivity(unchecked) var uploads = HandleTable<UploadBuffer>(kind: 5)
  /// Bytes held by uploads in progress (at most `uploadBudget`).
  @exclusivity(unchecked) var uploadBytes: UInt64 = 0
  /// Each process's device output (kernels' printf), until it fetches it.
  @exclusivity(unchecked) var outputs: [UInt32: OutputBox] = [:]
  /// What places memory, moves bytes and runs kernels.
  let backend: any ExecutionBackend
  /// The threads that run kernels which do not run inline; nil while the
  /// device is driven by hand (tests): then every launch runs inline.
  @exclusivity(unchecked) var workers: KernelWorkers?
  /// Work the handler handed over, for `serve` to give its ids and submit.
  @exclusivity(unchecked) var handedOver: WorkerJob?
  /// Set when a pass answered a guest that last waited on the serving
  /// thread's own CPU: the device thread sleeps at once instead of spinning,
  /// since the guest cannot run on this core while it spins (issue 17).
  @exclusivity(unchecked) var answeredGuestOnThisCPU = false
  /// The serving thread's CPU + 1 (0 unknown), read at each full pass (every
  /// 64th, and the first after a sleep): `sched_getcpu` costs about 20 ns
  /// here, too much for every pass of a NOP ping-pong.
  @exclusivity(unchecked) var servingCPU: UInt32 = 0
  @exclusivity(unchecked) var generations: UInt64 = 0
  /// Thread-instructions a launch runs on the serving thread before it is
  /// handed to a worker (`ReferenceDeviceConfiguration.inlineLaunchSlice`).
  @exclusivity(unchecked) var inlineSlice: UInt64 = 1 << 14
  @exclusivity(unchecked) var streams = HandleTable<Void>(kind: 3)
  @exclusivity(unchecked) var events = HandleTable<UInt64>(kind: 4)  // the backend's token
  @exclusivity(unchecked) var deviceTotals = StatisticsRecord()
  @exclusivity(unchecked) var deviceActivity = ActivityCounters()
  /// Latency buckets and failures by status, allocated once (Observability.swift).
  let commandCounters = CommandCounters()
  @exclusivity(unchecked) var progress: UInt64 = 0
  /// The status register as the device means it; a guest's store there is undone.
  @exclusivity(unchecked) var status: StatusRegister = []
  /// The fixed registers as the device wrote them, to undo a guest's stores.
  @exclusivity(unchecked) var registerImage: [(Register32, UInt32)] = []
  /// When each queue pair was first seen claiming without a pid (0 = not).
  @exclusivity(unchecked) var claimingSince: [UInt64]
  /// Told of attachments, releases, reclaims and faults (never per command).
  var onEvent: (@Sendable (DeviceEvent) -> Void)?
  /// Whether `report` queues events in `pendingEvents` (while the device
  /// thread serves: it hands them to `onEvent` outside the lock).
  @exclusivity(unchecked) var deferEvents = false
  /// Events reported under the lock, not yet handed over (room for 64 kept).
  @exclusivity(unchecked) var pendingEvents: [DeviceEvent] = []
  /// Per queue pair: the events reported in the current second, and those
  /// held back (see `report`).
  @exclusivity(unchecked) var eventBudget: [EventBudget]
  /// Reports owners' exits as they happen (local owners, where pidfds work).
  @exclusivity(unchecked) var ownerWatch: OwnerWatch?
  /// Across a VM boundary: raises the guests' MSI-X vectors (set before serving).
  @exclusivity(unchecked) var ivshmem: IvshmemServer?
  /// The process every claim belongs to, whatever pid the guest wrote
  /// (`ReferenceDeviceConfiguration.owner`); nil: the claim's pid.
  @exclusivity(unchecked) var fixedOwner: UInt32?
  /// The features register as the device set it (without transport bits):
  /// what `identify` can agree to.
  @exclusivity(unchecked) var offeredFeatures = FeatureBits.all
  /// With the guest heartbeat offered: how long an announced heartbeat may
  /// stay still before its pair is reclaimed. Nil: not offered.
  @exclusivity(unchecked) var heartbeatSilence: UInt64?

  init(
    base: UnsafeMutableRawPointer, layout: BARLayout, registers: RegisterBlock, shared: SharedExecution,
    ownMemoryLimit: UInt64? = nil
  ) {
    self.shared = shared
    self.lock = shared.lock
    self.backend = shared.backend
    self.ownMemoryLimit = ownMemoryLimit
    self.memoryLimit = min(ownMemoryLimit ?? shared.memoryLimit, shared.memoryLimit)
    self.queuePairBase = shared.reserveQueuePairs(Int(layout.queuePairs))
    self.base = base
    self.layout = layout
    self.registers = registers
    self.views = (0..<Int(layout.queuePairs)).map { QueuePairView(base: base, layout: layout, index: $0) }
    self.served = .allocate(capacity: Int(layout.queuePairs))
    served.initialize(repeating: ServedQueuePair(depth: layout.depth))
    self.claimingSince = Array(repeating: 0, count: Int(layout.queuePairs))
    self.eventBudget = Array(repeating: EventBudget(), count: Int(layout.queuePairs))
  }

  deinit {
    served.deinitialize()
    served.deallocate()
    commandCounters.deallocate()
  }

  var memoryInUse: (allocated: UInt64, total: UInt64) { (ledger.bytes, memoryLimit) }

  /// The memory the shared limit leaves to all clients of the backend together.
  var sharedFree: UInt64 { shared.memoryLimit - min(shared.bytesInUse, shared.memoryLimit) }

  /// The free memory this BAR's clients are told of (memoryInfo): what the
  /// shared limit leaves, or, where this BAR has a limit of its own, what
  /// that leaves (`ledger.bytes`: this BAR's bytes), so that a VM learns
  /// nothing of the others' use. Allocations take `allocatable`.
  var memoryFree: UInt64 {
    guard ownMemoryLimit != nil else { return sharedFree }
    return memoryLimit - min(ledger.bytes, memoryLimit)
  }

  /// What an allocation may take now: within this BAR's own limit and the shared one.
  var allocatable: UInt64 { min(memoryFree, sharedFree) }

  /// The caller a backend call from the serving thread is for (its queue
  /// pair as the backend knows it: unique among the devices sharing it).
  func caller(_ qp: Int) -> BackendCaller {
    BackendCaller(executor: self, queuePair: queuePairBase + qp, pid: served[qp].pid, locked: true)
  }

  /// Hands `work` (which a backend call returned unfinished) to a worker:
  /// `serve` gives it its ids and serves the pair nothing else until it is
  /// done. Without workers (a device driven by hand) it finishes here.
  func handOver(
    _ work: any BackendWork, qp: Int, isLaunch: Bool = false, success: CompletionEntry, then load: ModuleLoadWork? = nil
  ) -> CompletionEntry {
    // Without workers it runs here, on the serving thread, which holds the lock.
    let job = WorkerJob(
      qp: qp, generation: served[qp].generation, work: work, isLaunch: isLaunch,
      caller: workers == nil ? caller(qp) : caller(qp).onWorker, success: success)
    job.load = load
    guard workers != nil else {
      job.startedAt = vgpu_monotonic_ns()
      job.run()
      return complete(job)
    }
    handedOver = job
    return success
  }

  /// While work runs on a worker, the device says it is alive (the
  /// progress register, which waiting guests' deadlines watch) from the
  /// serving thread too: a worker blocked in a driver call (a vGPU as the
  /// host driver runs a kernel inside cuLaunchKernel) cannot say it itself.
  func tickForWorkers() {
    // By index: a for-in allocated in a debug build (see `servePass`).
    for i in activeQueuePairs.indices where served[activeQueuePairs[i]].busy != nil {
      tick()
      return
    }
  }

  /// Appends a launch's device output to its process's.
  func appendOutput(_ output: DeviceOutput, pid: UInt32) {
    guard !output.isEmpty else { return }
    let box = outputs[pid] ?? OutputBox()
    outputs[pid] = box
    box.output.append(output)
  }
}
