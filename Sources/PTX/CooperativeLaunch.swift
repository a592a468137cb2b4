import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A cooperative launch's grid (`PTXLaunchOptions.cooperative`), run in phases between
/// grid-wide barriers (`cudaCGSynchronize`, DeviceRuntime.swift).
///
/// Every block has a `BlockRunner` of its own, made when the block first runs and released
/// when it ends, so a block parked at the grid barrier keeps its registers, local and shared
/// memory while the others run. A cooperative grid is bounded by occupancy (multiprocessors ×
/// blocks per multiprocessor: `cuLaunchCooperativeKernel` refuses a larger one), which bounds
/// that memory too.
///
/// Within a phase the ready blocks take turns, a quantum of instructions each (2^16,
/// `ParallelRun.quantum`), until each has ended or all its live threads wait at the grid
/// barrier: on this thread (`run(until:)` with a limit, or `VGPU_PTX_ENGINE=serial`), or on
/// several host threads, each claiming the next ready block for one quantum. Taking turns
/// matters beyond the barrier: the blocks of a cooperative grid are resident together on a
/// GPU, so a block may wait for another block's write (a flag, a spin lock), which only
/// makes progress if the writer gets to run. At a phase's end (host threads meet at a host
/// barrier):
///
/// - no block waits: the launch is done;
/// - some blocks wait and another block has ended without reaching the barrier (its threads
///   exited): on a GPU the waiting blocks would hang; here the launch fails (`launchFailed`,
///   naming a block that ended);
/// - otherwise every block waits: all are released (their waiting threads readied) and the
///   next phase starts. The host barrier (release/acquire) orders every memory operation of
///   a phase before every one of the next, which is the grid barrier's memory guarantee.
final class CooperativeRun: @unchecked Sendable {
  enum BlockState {
    static let ready: UInt8 = 0
    static let waiting: UInt8 = 1
    static let done: UInt8 = 2
    /// Claimed by a host thread for a quantum (parallel runs).
    static let running: UInt8 = 3
  }

  let kernel: String
  let grid: PTXDim3
  let count: Int
  let options: PTXLaunchOptions
  let quantum: UInt64
  let makeRunner: @Sendable () -> BlockRunner
  /// Per block: its runner while it has one (nil before it starts and after it ends). Only
  /// the host thread that holds the block (`running`, or the only thread) touches it.
  let runners: UnsafeMutablePointer<BlockRunner?>
  /// Per block: a `BlockState`; a claim is a compare-exchange from ready to running.
  let state: UnsafeMutablePointer<Atomic<UInt8>>
  /// Instructions run by all blocks so far.
  let executed = Atomic<UInt64>(0)
  /// The serial scheduler's place: the next block of the current pass.
  var next = 0
  /// Grid barriers passed.
  var phases = 0
  var hostThreads = 1
  var ended = false

  init(kernel: String, grid: PTXDim3, options: PTXLaunchOptions, makeRunner: @escaping @Sendable () -> BlockRunner) {
    self.kernel = kernel
    self.grid = grid
    count = grid.count
    self.options = options
    quantum = ParallelRun.quantum(options)
    self.makeRunner = makeRunner
    runners = .allocate(capacity: count)
    runners.initialize(repeating: nil, count: count)
    state = .allocate(capacity: count)
    for k in 0..<count { (state + k).initialize(to: Atomic(BlockState.ready)) }
  }

  deinit {
    for k in 0..<count { runners[k]?.release() }
    runners.deinitialize(count: count)
    runners.deallocate()
    state.deinitialize(count: count)
    state.deallocate()
  }

  @inline(__always) private func stateOf(_ k: Int) -> UInt8 { state[k].load(ordering: .acquiring) }
  @inline(__always) private func setState(_ k: Int, _ v: UInt8) { state[k].store(v, ordering: .releasing) }

  /// Block `k`'s runner, made and started at the block's first run.
  private func startIfNeeded(_ k: Int) {
    if runners[k] == nil {
      var r = makeRunner()
      r.startBlock(grid.block(k))
      runners[k] = r
    }
  }

  /// Block `k` ended: its memory goes.
  private func finish(_ k: Int) {
    runners[k]!.release()
    runners[k] = nil
    setState(k, BlockState.done)
  }

  /// Runs until the launch ends (true) or has run at least `limit` more thread-instructions
  /// and can stop (false). With no limit and several host threads, the rest runs in parallel.
  func run(until limit: UInt64) throws(PTXError) -> Bool {
    if ended { return true }
    if limit == .max && options.hostThreads > 1 && count > 1 { return try runParallel() }
    do throws(PTXError) {
      return try runSerial(until: limit)
    } catch {
      ended = true
      throw error
    }
  }

  private func runSerial(until limit: UInt64) throws(PTXError) -> Bool {
    let budget = options.instructionBudget
    let start = executed.load(ordering: .relaxed)
    let l = max(1, limit)
    let stopAt = start > .max - l ? UInt64.max : start + l
    while true {
      // Passes over the blocks, a quantum each, until none is ready.
      while true {
        while next < count {
          let k = next
          if stateOf(k) == BlockState.ready {
            startIfNeeded(k)
            let total = executed.load(ordering: .relaxed)
            let before = runners[k]!.executed
            runners[k]!.budgetEnd = before &+ (budget &- min(budget, total))
            runners[k]!.suspendAt = before &+ min(quantum, stopAt &- min(stopAt, total))
            let done = try runners[k]!.continueBlock()
            let now = executed.wrappingAdd(runners[k]!.executed &- before, ordering: .relaxed).newValue
            if done {
              flushPrinted(k)
              finish(k)
            } else if runners[k]!.gridWaiting {
              setState(k, BlockState.waiting)
            } else if now >= stopAt {
              return false  // `limit` reached: this block goes on first when called again
            }
          }
          next += 1
          if next < count && executed.load(ordering: .relaxed) >= stopAt { return false }
        }
        next = 0
        guard (0..<count).contains(where: { stateOf($0) == BlockState.ready }) else { break }
        if executed.load(ordering: .relaxed) >= stopAt { return false }
      }
      if try endPhase() {
        ended = true
        return true
      }
    }
  }

  /// The phase is over (every block has ended or waits): true when the launch is done; else
  /// releases the barrier, or fails when only some blocks reached it.
  private func endPhase() throws(PTXError) -> Bool {
    var waiting = 0
    var ended: Int? = nil
    for k in 0..<count {
      let s = stateOf(k)
      if s == BlockState.waiting { waiting += 1 }
      if s == BlockState.done && ended == nil { ended = k }
    }
    if waiting == 0 { return true }
    if let ended {
      throw .launchFailed(
        kernel: kernel,
        reason:
          "a grid-wide sync (cudaCGSynchronize) was reached by \(waiting) of the grid's \(count) blocks, and "
          + "block \(grid.block(ended)) ended without reaching it (after \(phases) grid syncs): every block must "
          + "reach each grid sync (on a GPU the waiting blocks would hang)")
    }
    for k in 0..<count {
      runners[k]!.releaseGrid()
      setState(k, BlockState.ready)
    }
    phases += 1
    return false
  }

  /// A runner on this thread keeps its printf lines (`printed`) when the launch is parallel;
  /// they are handed on in block order at the end.
  private var texts: [Int: [String]] = [:]
  private let textLock = Mutex(())

  private func flushPrinted(_ k: Int) {
    guard let text = runners[k]!.printed, !text.isEmpty else { return }
    textLock.withLock { _ in texts[k, default: []] += text }
    runners[k]!.printed = []
  }

  // MARK: parallel

  /// Shared by the host threads of a parallel run.
  private final class Shared: @unchecked Sendable {
    /// Where the next look for a ready block starts (taken modulo the block count).
    let claim = Atomic<Int>(0)
    /// Blocks of this phase neither ended nor waiting at the barrier.
    let remaining: Atomic<Int>
    let arrived = Atomic<Int>(0)
    let generation = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)
    let outcome = Mutex<(fault: (block: Int, error: PTXError)?, stopped: PTXError?, phaseError: PTXError?)>(
      (nil, nil, nil))
    var nextProgress: UInt64
    /// Host threads that meet at the host barrier. Set before any starts (helpers may reach
    /// the barrier before the launching thread runs); lowered by the launching thread first
    /// thing when fewer helpers started, which no earlier arrival can have counted as last.
    let participants: Atomic<Int>
    init(remaining: Int, nextProgress: UInt64, participants: Int) {
      self.participants = Atomic(participants)
      self.remaining = Atomic(remaining)
      self.nextProgress = nextProgress
    }
  }

  private func runParallel() throws(PTXError) -> Bool {
    ended = true
    let buffered = options.printf != nil
    var ready = 0
    for k in 0..<count {
      if stateOf(k) == BlockState.ready { ready += 1 }
      guard runners[k] != nil else { continue }
      runners[k]!.nextProgress = .max
      if buffered && runners[k]!.printed == nil { runners[k]!.printed = [] }
    }
    let helpers = min(options.hostThreads, count) - 1
    let shared = Shared(
      remaining: ready, nextProgress: executed.load(ordering: .relaxed) &+ max(1, options.progressInterval),
      participants: 1 + helpers)
    shared.claim.store(next, ordering: .relaxed)
    let body = UncheckedSendable(self)
    let ran = onThreads(helpers) {
      body.value.work(shared, main: false, buffered: buffered)
    } main: { started in
      if started < helpers { shared.participants.wrappingSubtract(helpers - started, ordering: .acquiringAndReleasing) }
      work(shared, main: true, buffered: buffered)
    }
    hostThreads = 1 + ran
    for k in 0..<count where runners[k] != nil { flushPrinted(k) }
    let outcome = shared.outcome.withLock { $0 }
    if let printf = options.printf {
      let last = outcome.fault?.block ?? .max
      for k in texts.keys.sorted() where k <= last {
        for line in texts[k]! { printf(line) }
      }
    }
    if let fault = outcome.fault { throw fault.error }
    if let error = outcome.stopped ?? outcome.phaseError { throw error }
    return true
  }

  /// One host thread's share of a parallel run: ready blocks claimed one quantum at a time
  /// until none is left in the phase; then the host barrier; until the launch is done.
  private func work(_ shared: Shared, main: Bool, buffered: Bool) {
    var generation = 0
    var idle = 0
    var idleTurns = 0
    while true {
      while !shared.stop.load(ordering: .relaxed) && shared.remaining.load(ordering: .acquiring) > 0 {
        let k = shared.claim.wrappingAdd(1, ordering: .relaxed).oldValue % count
        guard
          state[k].compareExchange(
            expected: BlockState.ready, desired: BlockState.running, ordering: .acquiringAndReleasing
          ).exchanged
        else {
          // Nothing to claim in a whole turn: the blocks left are running on other threads,
          // which go on with them (a block put back after its quantum is claimed again by
          // the thread that ran it, if by no other). After a few turns this thread waits at
          // the host barrier, as a thread with no block left does.
          idle += 1
          if idle >= count {
            idle = 0
            idleTurns += 1
            if idleTurns > 4 { break }
            pause(shared, main: main, yieldOnly: true)
          }
          continue
        }
        idle = 0
        idleTurns = 0
        if !runQuantum(k, shared, main: main, buffered: buffered) { break }
      }
      // The host barrier: the last thread to arrive ends the phase for everyone.
      idle = 0
      idleTurns = 0
      generation += 1
      let arrived = shared.arrived.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
      if arrived == shared.participants.load(ordering: .acquiring) {
        shared.arrived.store(0, ordering: .relaxed)
        if shared.stop.load(ordering: .relaxed) {
          shared.finished.store(true, ordering: .relaxed)
        } else {
          do throws(PTXError) {
            if try endPhase() {
              shared.finished.store(true, ordering: .relaxed)
            } else {
              shared.claim.store(0, ordering: .relaxed)
              shared.remaining.store(count, ordering: .relaxed)
            }
          } catch {
            shared.outcome.withLock { $0.phaseError = error }
            shared.finished.store(true, ordering: .relaxed)
          }
        }
        shared.generation.store(generation, ordering: .releasing)
      } else {
        var spins = 0
        while shared.generation.load(ordering: .acquiring) < generation {
          spins += 1
          pause(shared, main: main, yieldOnly: spins < 64)
        }
      }
      if shared.finished.load(ordering: .relaxed) { return }
    }
  }

  /// Runs claimed block `k` for one quantum; false when the launch stops (a fault, the
  /// budget, a cancel).
  private func runQuantum(_ k: Int, _ shared: Shared, main: Bool, buffered: Bool) -> Bool {
    let budget = options.instructionBudget
    if runners[k] == nil {
      startIfNeeded(k)
      runners[k]!.nextProgress = .max
      if buffered { runners[k]!.printed = [] }
    }
    let total = executed.load(ordering: .relaxed)
    let before = runners[k]!.executed
    runners[k]!.budgetEnd = before &+ (budget &- min(budget, total))
    runners[k]!.suspendAt = before &+ quantum
    let done: Bool
    do throws(PTXError) {
      done = try runners[k]!.continueBlock()
    } catch {
      flushPrinted(k)
      setState(k, BlockState.done)
      if case .budgetExhausted = error {
        halt(shared, error)
      } else {
        shared.outcome.withLock { o in
          if o.fault == nil || k < o.fault!.block { o.fault = (k, error) }
        }
        shared.stop.store(true, ordering: .relaxed)
      }
      return false
    }
    let now = executed.wrappingAdd(runners[k]!.executed &- before, ordering: .relaxed).newValue
    if done {
      flushPrinted(k)
      finish(k)
      shared.remaining.wrappingSubtract(1, ordering: .releasing)
    } else if runners[k]!.gridWaiting {
      setState(k, BlockState.waiting)
      shared.remaining.wrappingSubtract(1, ordering: .releasing)
    } else {
      setState(k, BlockState.ready)
    }
    if now > budget {
      halt(shared, .budgetExhausted(kernel: kernel, budget: budget))
      return false
    }
    if main, let progress = options.progress, now >= shared.nextProgress {
      guard progress() else {
        halt(shared, .launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)"))
        return false
      }
      shared.nextProgress = now &+ max(1, options.progressInterval)
    }
    return true
  }

  /// A wait for other host threads: a yield, or a short sleep (reporting progress on the
  /// launching thread, so a client does not take a long phase for a hang).
  private func pause(_ shared: Shared, main: Bool, yieldOnly: Bool) {
    if yieldOnly {
      sched_yield()
      return
    }
    var pause = timespec(tv_sec: 0, tv_nsec: 50_000)
    nanosleep(&pause, nil)
    guard main, let progress = options.progress, !shared.stop.load(ordering: .relaxed) else { return }
    let now = executed.load(ordering: .relaxed)
    if now >= shared.nextProgress {
      if progress() {
        shared.nextProgress = now &+ max(1, options.progressInterval)
      } else {
        halt(shared, .launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)"))
      }
    }
  }

  private func halt(_ shared: Shared, _ error: PTXError) {
    shared.outcome.withLock { o in if o.stopped == nil { o.stopped = error } }
    shared.stop.store(true, ordering: .relaxed)
  }
}
