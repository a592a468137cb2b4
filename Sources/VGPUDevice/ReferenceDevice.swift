import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// What a reference device reports and how it lays out its BAR.
public struct ReferenceDeviceConfiguration: Sendable {
  public var name = "vGPU Reference H100 80GB"
  /// Device memory; address space is reserved, pages cost RAM only once touched.
  public var memorySize: UInt64 = 80 << 30
  /// A limit of this BAR's own on the device memory its clients hold, on
  /// top of the limit it shares (`SharedExecution.memoryLimit`): one VM
  /// among several on one mediator. Its clients then see this BAR's figures
  /// only: memoryInfo's total is this limit and the device statistics count
  /// this BAR's bytes. Nil: the BAR's clients see the shared limit and
  /// everyone's use (host processes on one GPU).
  public var ownMemoryLimit: UInt64?
  /// Thread-instructions a kernel launch may run before it fails with
  /// `launchTimeout` (CUDA 702): the watchdog that ends an endless loop.
  public var kernelInstructionBudget: UInt64 = PTXBackend.defaultInstructionBudget
  /// Threads that run kernels (interpreted PTX) beside the serving thread,
  /// so that clients' kernels run at once and a long one holds up no one
  /// else's commands. Default: the host's cores, at least 2.
  public var kernelWorkers = max(2, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
  /// Thread-instructions a launch runs on the serving thread before the
  /// rest goes to a worker: a small kernel then completes without a
  /// hand-off's cost, while a long one holds up other clients for no more
  /// than this (2^14: tens of microseconds in a release build).
  public var inlineLaunchSlice: UInt64 = 1 << 14
  public var layout = BARLayout()
  public var uuid: [UInt8] = [
    0x56, 0x47, 0x50, 0x55, 0x2d, 0x72, 0x65, 0x66, 0x2d, 0x64, 0x65, 0x76, 0x69, 0x63, 0x65, 0x30,
  ]
  public var pciBusID = "0000:00:05.0"
  /// H100 (sm_90): Ollama keeps devices of compute capability 5.0 and above.
  public var computeCapability: (major: UInt32, minor: UInt32) = (9, 0)
  /// CUDA 12.8, which a runtime ≥ 12.4 accepts (../shared/REAL-CLIENTS.md).
  public var cudaDriverVersion: UInt32 = 12080
  public var multiprocessorCount: UInt32 = 132
  /// An R570 driver, new enough for Ollama's bundled runtimes.
  public var driverVersion = "570.124.06"
  /// How long the device polls an idle BAR before it sleeps on its wake
  /// word, and its longest sleep while something must be polled (owners
  /// whose exit only /proc tells, a claim without its pid). A guest in a VM
  /// cannot wake the device's futex, so across a VM boundary (without
  /// ivshmem doorbells) the sleep bounds the latency of a command that
  /// arrives while the device sleeps.
  public var wait = WaitPolicy.device
  /// How often to look for queue pairs whose owning process has ended.
  public var reapIntervalNanoseconds: UInt64 = 200_000_000
  /// Whether owners are processes of this host, whose pids can be checked.
  /// False for guests in a VM (their pids mean nothing here).
  public var ownersAreLocalProcesses = true
  /// How long a pair whose owner announced a heartbeat (2.3) may go without
  /// a beat before it is reclaimed (`GuestHeartbeat.silenceNanoseconds`;
  /// tests shorten it). Heartbeats are offered only where owners' exits
  /// cannot be seen otherwise: see `watchesHeartbeats`.
  public var heartbeatSilenceNanoseconds = GuestHeartbeat.silenceNanoseconds
  /// Whether the device offers the guest heartbeat (feature
  /// `guestHeartbeat`): its owners are not this host's processes (a VM's
  /// guests), so neither /proc nor pidfds nor a socket says when one ends.
  public var watchesHeartbeats: Bool { !ownersAreLocalProcesses && owner == nil }
  /// The features register: what `identify` negotiates, and the heartbeat where it is offered.
  public var offeredFeatures: FeatureBits {
    var f = watchesHeartbeats ? FeatureBits.all.union(.guestHeartbeat) : FeatureBits.all
    if !sharesHostMemory { f.remove(.sharedHostMemory) }
    if hostWindow == 0 { f.remove(.hostWindow) }
    return f
  }
  /// Whether clients may lend the device host memory (2.4): only where the
  /// submitting process is known for certain (a BAR of one local process's
  /// own, `owner`) — a claim's pid could name any process, whose
  /// descriptors the device would then take.
  public var sharesHostMemory: Bool { owner != nil && ownersAreLocalProcesses }
  /// The longest sleep when every wake-up comes as an event (doorbells,
  /// claims, closes, owners' exits through pidfds): an idle device wakes
  /// once a second, for its heartbeat.
  public var idleSleepNanoseconds: UInt64 = 1_000_000_000
  /// The one process every queue pair of this BAR belongs to, whatever pid
  /// a guest writes into a claim: a host process with a BAR of its own,
  /// known by its socket's SO_PEERCRED. Its exit is reported by whoever
  /// holds that socket (`releaseAll`), not found in /proc. Nil: each claim
  /// names its owner.
  public var owner: UInt32?
  /// The page-locked window (2.4, feature `hostWindow`): at least this many
  /// bytes of the BAR past the layout, which `windowAlloc` hands out as
  /// pinned memory a VM's guest copies through in one copy. The device takes
  /// all the region has there (a VM's BAR file is rounded up to a power of
  /// two), from `hostWindowOffset`. 0: no window, the feature is not offered.
  public var hostWindow: UInt64 = 0
  /// Where the window starts: the layout's end, rounded up to a page.
  public var hostWindowOffset: UInt64 { (layout.regionSize + HostWindow.page - 1) & ~(HostWindow.page - 1) }

  public init() {}

  public var identity: DeviceIdentity {
    DeviceIdentity(
      name: name, uuid: uuid, pciBusID: pciBusID, computeCapability: computeCapability, memorySize: memorySize,
      cudaDriverVersion: cudaDriverVersion, multiprocessorCount: multiprocessorCount, driverVersion: driverVersion)
  }
}

/// The device side of the protocol, run on the CPU: it lays out a BAR, then
/// serves every queue pair a guest claims from one thread, validating every
/// command and answering bad ones with an error completion.
///
/// Used in-process (the `sim` device) and by the mediator (shared-memory BAR).
public final class ReferenceDevice: @unchecked Sendable {
  public let region: MappedRegion
  public let configuration: ReferenceDeviceConfiguration
  public var layout: BARLayout { configuration.layout }
  let registers: RegisterBlock
  let executor: Executor
  private let running = Atomic<Bool>(false)

  /// Lays out `region` (or a new anonymous one of the layout's size) as a
  /// vGPU BAR whose work `backend` does: by default the PTX interpreter,
  /// with device memory in this host's RAM; a host GPU's `CUDABackend`
  /// (then `configuration` should carry that GPU's identity).
  public convenience init(
    configuration: ReferenceDeviceConfiguration = .init(), region: MappedRegion? = nil,
    backend: (any ExecutionBackend)? = nil
  ) throws(DeviceSetupError) {
    try self.init(
      configuration: configuration, region: region,
      sharing: try SharedExecution(configuration: configuration, backend: backend))
  }

  /// Lays out `region` as a vGPU BAR whose work `shared`'s backend does,
  /// within `shared`'s memory limit, beside the other devices over it.
  public init(
    configuration: ReferenceDeviceConfiguration, region: MappedRegion?, sharing shared: SharedExecution
  ) throws(DeviceSetupError) {
    self.configuration = configuration
    let layout = configuration.layout
    if let region {
      self.region = region
    } else {
      let window = (configuration.hostWindow + HostWindow.page - 1) & ~(HostWindow.page - 1)
      let size = window > 0 ? configuration.hostWindowOffset + window : layout.regionSize
      do throws(RegionError) { self.region = try MappedRegion.anonymous(size: Int(size)) } catch {
        throw DeviceSetupError(description: error.description)
      }
    }
    guard UInt64(self.region.size) >= layout.regionSize else {
      throw DeviceSetupError(
        description:
          "the BAR (\(self.region.origin)) has \(self.region.size) bytes; the layout needs \(layout.regionSize)")
    }
    var window: HostWindow?
    if configuration.hostWindow > 0 {
      let start = configuration.hostWindowOffset
      let available =
        UInt64(self.region.size) > start ? (UInt64(self.region.size) - start) / HostWindow.page * HostWindow.page : 0
      guard available >= configuration.hostWindow else {
        throw DeviceSetupError(
          description:
            "the BAR (\(self.region.origin)) has \(self.region.size) bytes; a page-locked window of \(configuration.hostWindow) bytes after the layout's \(start) needs \(start + configuration.hostWindow)"
        )
      }
      window = HostWindow(offset: start, size: available)
    }
    registers = RegisterBlock(self.region.base)
    executor = Executor(
      base: self.region.base, layout: layout, registers: registers, shared: shared,
      ownMemoryLimit: configuration.ownMemoryLimit)

    var offered = configuration.offeredFeatures
    if !shared.backend.finishesHostAccessOnReturn { offered.remove(.sharedHostMemory) }
    if let window {
      // A reused BAR file may hold a former run's bytes: every range starts zeroed.
      HostWindow.scrub(self.region.base, window.offset, window.size)
      executor.hostWindow = window
    } else {
      offered.remove(.hostWindow)
    }
    registers.store(Register.hostWindowOffset, window?.offset ?? 0)
    registers.store(Register.hostWindowSize, window?.size ?? 0)
    executor.setStatus([])
    registers.store(Register.magic, vgpuMagic)
    registers.store(Register.version, ProtocolVersion.packed)
    registers.store(Register.features, offered.rawValue)
    registers.store(Register.control, ControlRequest.none.rawValue)
    layout.write(to: registers)
    configuration.identity.write(to: registers)
    for qp in 0..<Int(layout.queuePairs) { executor.views[qp].setState(.free) }
    executor.rememberRegisters()
    executor.fixedOwner = configuration.owner
    executor.offeredFeatures = offered
    executor.heartbeatSilence = configuration.watchesHeartbeats ? configuration.heartbeatSilenceNanoseconds : nil
    serving.watch.reserveCapacity(Int(layout.queuePairs))
  }

  /// Whether owners' exits are looked for here (pidfds, /proc), rather than
  /// told by the socket of a BAR's one owner, or meaningless (a VM's pids).
  private var watchesOwners: Bool { configuration.ownersAreLocalProcesses && configuration.owner == nil }

  deinit { stop() }

  /// What does the device's work ("PTX interpreter", "CUDA driver 12.8 on NVIDIA H100 80GB HBM3").
  public var backendName: String { executor.backend.name }

  /// Marks the device ready and starts serving it: on a thread of its own,
  /// or on one of `pool`'s threads beside other devices.
  public func start(in pool: ServingPool? = nil) {
    guard running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
      return
    }
    executor.lock.withLock { _ in executor.setStatus(.ready) }
    if watchesOwners {
      // An owner's exit wakes the device like a doorbell would.
      let registers = registers
      let doorbell = doorbells?.hostEventFD
      executor.lock.withLock { _ in
        executor.ownerWatch = OwnerWatch {
          _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
          _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
          if let doorbell { _ = vgpu_eventfd_signal(doorbell) }
        }
      }
    }
    let registers = registers
    let doorbell = doorbells?.hostEventFD
    let workers = KernelWorkers(count: configuration.kernelWorkers) {
      // A finished kernel wakes the device as a doorbell would.
      _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
      _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
      if let doorbell { _ = vgpu_eventfd_signal(doorbell) }
    }
    executor.lock.withLock { _ in
      executor.inlineSlice = configuration.inlineLaunchSlice
      executor.workers = workers
      executor.pendingEvents.reserveCapacity(64)
      executor.deferEvents = true
      serving.onEvent = executor.onEvent
    }
    serving.events.reserveCapacity(64)
    let now = vgpu_monotonic_ns()
    serving.lastReap = now
    serving.lastBeatCheck = now
    if let pool {
      // Many devices on one thread sleep on all their wake words at once
      // (futex_waitv); an eventfd is not among them.
      precondition(doorbells == nil, "a device with ivshmem doorbells is served on a thread of its own")
      self.pool = pool
    } else {
      self.pool = ServingPool(threads: 1, wait: configuration.wait, solo: true)
      ownsPool = true
    }
    self.pool?.add(self)
  }
  /// The pool serving the device; whether it was made for this device alone
  /// (and so stops with it).
  private var pool: ServingPool?
  private var ownsPool = false

  /// Says the device is stopping, finishes the command in hand, and joins the thread.
  /// Guests waiting on a completion see the status and fail with `deviceLost`.
  public func stop() {
    guard running.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged else {
      return
    }
    executor.lock.withLock { _ in executor.setStatus(.stopping) }
    // Once this returns, no pool thread touches the device.
    pool?.remove(self)
    if ownsPool { pool?.stop() }
    pool = nil
    ownsPool = false
    // Events the thread had no pass left to hand over; from here on they go out at once.
    let (events, onEvent) = executor.lock.withLock { _ in
      executor.deferEvents = false
      defer { executor.pendingEvents.removeAll() }
      return (executor.pendingEvents, executor.onEvent)
    }
    if let onEvent { for event in events { onEvent(event) } }
    // Kernels still running are stopped at their next checkpoint.
    let workers = executor.lock.withLock { _ in
      for qp in executor.views.indices { executor.served[qp].busy?.work.cancel() }
      return executor.workers
    }
    workers?.stop()
    executor.lock.withLock { _ in
      executor.ownerWatch?.stop()
      executor.setStatus([])
    }
    // Wake every guest so none sleeps through the news.
    for qp in executor.views.indices { executor.wakeGuest(qp) }
  }

  /// Releases every queue pair and all it holds (memory, modules, the
  /// backend's streams and contexts) as its owner's exit would: the socket
  /// of a BAR's one owner closed. Call after `stop()`.
  public func releaseAll() {
    executor.lock.withLock { _ in
      for qp in executor.views.indices where executor.served[qp].active {
        // stop() cancelled its work and joined the workers: nothing runs for it now.
        executor.served[qp].busy = nil
        executor.release(qp, because: .ownerExited)
      }
    }
  }

  /// Called on the serving thread when a queue pair is attached, released,
  /// reclaimed from a dead process, or faulted: after the pass that saw it,
  /// outside the lock the devices over one backend share (a slow log stalls
  /// this device only). Set it before `start()`.
  public var onEvent: (@Sendable (DeviceEvent) -> Void)? {
    get { executor.lock.withLock { _ in executor.onEvent } }
    set { executor.lock.withLock { _ in executor.onEvent = newValue } }
  }

  /// Serves guests in a VM through QEMU's ivshmem-doorbell: the device sleeps
  /// on the server's host eventfd (a guest's doorbell write wakes it) and
  /// raises a guest's MSI-X vector where it would wake a futex sleeper.
  /// Advertised to guests as feature `ivshmemDoorbell`. Call before `start()`.
  public func useDoorbells(_ server: IvshmemServer) {
    executor.lock.withLock { _ in executor.ivshmem = server }
    doorbells = server
    registers.store(Register.ivshmemVectors, UInt32(server.vectors))
    registers.store(Register.features, executor.offeredFeatures.union(.ivshmemDoorbell).rawValue)
    executor.lock.withLock { _ in executor.rememberRegisters() }
  }
  private var doorbells: IvshmemServer?

  /// Writes the serving process's pid where clients look for it (0 = in-process).
  public func announce(pid: UInt32) {
    registers.store(Register.devicePID, pid)
    executor.lock.withLock { _ in executor.remember(Register.devicePID, pid) }
  }

  /// Device memory in use and its total, as the device accounts it.
  public var memoryInUse: (allocated: UInt64, total: UInt64) { executor.lock.withLock { _ in executor.memoryInUse } }

  /// What the thread serving this device keeps between its passes; only
  /// that thread touches it (a `ServingPool`'s).
  struct ServingState {
    var passes: UInt64 = 0
    /// The first pass after a sleep is a full one: a claim or close may have woken it.
    var fullPass = true
    var lastReap: UInt64 = 0
    var lastBeatCheck: UInt64 = 0
    var lastHousekeeping: UInt64 = 0
    /// The rings as the last pass left them, and whether a quick pass may
    /// trust them to skip the lock (`Executor.watchRings`): with 64 idle
    /// clients, locking each device to find nothing was most of a serving
    /// thread's time (issue 17).
    var watch: [RingWatch] = []
    var watchValid = false
    /// Events of the passes (and of the housekeeping before them), handed
    /// to `onEvent` after the lock is let go; swapped with the executor's
    /// queue, so neither array grows after the first events.
    var events: [DeviceEvent] = []
    var onEvent: (@Sendable (DeviceEvent) -> Void)?
  }
  @exclusivity(unchecked) var serving = ServingState()

  /// Whether the device still serves (a pool drops it once `stop()` began).
  var isRunning: Bool { running.load(ordering: .relaxed) }

  /// One pass over the device's queue pairs, each ring running at most a
  /// `budget` turn; every 1024th pass its housekeeping (at most once in
  /// 10 ms), every 64th (and
  /// the first after a sleep) a full pass that looks for claims, closes and
  /// resets too. A quick pass takes the lock only when a guest rang a ring
  /// since the last pass (`RingWatch`). Returns whether it did work, and
  /// whether it woke a guest waiting on the CPU this thread runs on.
  func servingPass(budget: Turn) -> (worked: Bool, answeredGuestHere: Bool) {
    serving.passes &+= 1
    let passes = serving.passes
    if passes & 0xffff == 0 { registers.store(Register.heartbeat, passes) }
    if passes & 0x3ff == 0 && vgpu_monotonic_ns() &- serving.lastHousekeeping >= Self.housekeepingIntervalNanoseconds {
      housekeeping()
    }
    let quick = passes & 63 != 0 && !serving.fullPass
    serving.fullPass = false
    if quick && serving.watchValid && !anyRung() { return (false, false) }
    let result = executor.lock.withLock { _ in
      let worked = executor.servePass(quick: quick, budget: budget)
      serving.watchValid = executor.watchRings(into: &serving.watch)
      defer { executor.answeredGuestOnThisCPU = false }
      if !executor.pendingEvents.isEmpty { swap(&executor.pendingEvents, &serving.events) }
      return (worked, executor.answeredGuestOnThisCPU)
    }
    if !serving.events.isEmpty {
      if let onEvent = serving.onEvent { for event in serving.events { onEvent(event) } }
      serving.events.removeAll(keepingCapacity: true)
    }
    return result
  }

  /// Whether a guest rang a ring the last pass left empty.
  @inline(__always) private func anyRung() -> Bool {
    for i in serving.watch.indices where serving.watch[i].rung { return true }
    return false
  }

  /// Says the device sleeps, then checks once more (event suppression): the
  /// wake word's value to sleep on, or nil (and awake again) when work came
  /// meanwhile or the device stops.
  func prepareToSleep() -> UInt32? {
    let seen = vgpu_load_acquire_u32(registers.deviceWakeWord)
    registers.setDeviceSleeping(true)
    vgpu_fence_seqcst()
    if executor.lock.withLock({ _ in executor.hasPendingWork() }) || !isRunning {
      awake()
      return nil
    }
    return seen
  }

  /// Its longest sleep: bounded, so housekeeping (heartbeat, claims, reaping)
  /// goes on while idle; long when every wake-up comes as an event.
  var sleepSlice: UInt64 {
    let slice = configuration.wait.sleepSliceNanoseconds
    let eventsOnly = executor.lock.withLock { _ in
      (executor.ownerWatch != nil || executor.fixedOwner != nil) && !executor.needsPolling
    }
    return eventsOnly ? max(configuration.idleSleepNanoseconds, slice) : slice
  }

  /// After a sleep (or one given up): awake, the next pass a full one.
  func awake() {
    registers.setDeviceSleeping(false)
    serving.fullPass = true
  }

  /// After a sleep that happened: awake, the heartbeat, the housekeeping
  /// (the exits of owners at every wake-up, the rest at most once in
  /// `housekeepingIntervalNanoseconds`: a pool that slept between the
  /// commands of 64 clients spent most of its time housekeeping, issue 17).
  func woke() {
    awake()
    registers.store(Register.heartbeat, serving.passes)
    if vgpu_monotonic_ns() &- serving.lastHousekeeping >= Self.housekeepingIntervalNanoseconds {
      housekeeping()
    } else if watchesOwners {
      executor.lock.withLock { _ in executor.reapExited() }
    }
  }

  /// How often the housekeeping runs, at most (every 1024th pass and every
  /// wake-up ask for it; passes that find nothing cost little now). At 1 ms,
  /// 64 devices' register checks were 7 % of a busy serving thread.
  static let housekeepingIntervalNanoseconds: UInt64 = 10_000_000

  /// After a sleep that another device's doorbell ended (this one's wake
  /// word did not move): awake, but nothing of its own came, so no full
  /// pass and no housekeeping beyond the passes' own.
  func wokeForAnother() {
    registers.setDeviceSleeping(false)
  }

  /// Where the device sleeps when a thread serves it alone: its doorbells'
  /// eventfd (a VM's guests ring it), else its wake word.
  var doorbellEventFD: Int32? { doorbells?.hostEventFD }

  /// The word the device sleeps on (guests add to it and wake it).
  var wakeWord: UnsafeMutableRawPointer { registers.deviceWakeWord }

  /// Wakes the thread serving the device, wherever it sleeps.
  func wakeServingThread() {
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, Int32.max)
    if let fd = doorbells?.hostEventFD { _ = vgpu_eventfd_signal(fd) }
  }

  /// Counts a doorbell that woke the device.
  func countDoorbell() { doorbells?.countDoorbell() }

  /// Guests' stores into the device's registers undone, a few times a second
  /// at most, so a client that scribbles on `status` or the layout cannot
  /// lock new clients out; pairs of guests whose heartbeat stopped or whose
  /// processes exited reclaimed.
  private func housekeeping() {
    serving.lastHousekeeping = vgpu_monotonic_ns()
    executor.lock.withLock { _ in
      _ = executor.restoreRegisters()
      executor.tickForWorkers()
    }
    if configuration.watchesHeartbeats {
      // Guests whose processes the device cannot see (a VM's): a pair
      // whose announced heartbeat stopped is reclaimed as a dead owner's.
      let now = vgpu_monotonic_ns()
      if now &- serving.lastBeatCheck >= GuestHeartbeat.checkNanoseconds {
        serving.lastBeatCheck = now
        executor.lock.withLock { _ in executor.reapSilentGuests(now: now) }
      }
    }
    guard watchesOwners else { return }
    executor.lock.withLock { _ in executor.reapExited() }
    let now = vgpu_monotonic_ns()
    if now &- serving.lastReap > configuration.reapIntervalNanoseconds {
      serving.lastReap = now
      executor.lock.withLock { _ in executor.reapDeadOwners(now: now) }
    }
  }

  /// Serves one pass over every queue pair (`quick`: over the active ones'
  /// rings only, as the device thread does between full passes); for tests
  /// and benchmarks that drive the device by hand.
  @discardableResult
  public func servePass(quick: Bool = false) -> Bool {
    executor.lock.withLock { _ in executor.servePass(quick: quick) }
  }
}

/// Why a device could not be set up.
public struct DeviceSetupError: Error, CustomStringConvertible {
  public var description: String
}
