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
/// A phase runs each block that is ready until it ends or until all its live threads wait at
/// the grid barrier: on this thread one block after another (`run(until:)` with a limit, or
/// `VGPU_PTX_ENGINE=serial`), or with blocks claimed by several host threads, which meet at a
/// host barrier when no block is left to claim. At a phase's end:
///
/// - no block waits: the launch is done;
/// - some blocks wait and every other block has ended without reaching the barrier (its
///   threads exited): on a GPU the waiting blocks would hang; here the launch fails
///   (`launchFailed`, naming a block that ended);
/// - otherwise every block waits: all are released (their waiting threads readied) and the
///   next phase starts. The host barrier (release/acquire) orders every memory operation of
///   a phase before every one of the next, which is the grid barrier's memory guarantee.
final class CooperativeRun: @unchecked Sendable {
  enum BlockState {
    static let ready: UInt8 = 0
    static let waiting: UInt8 = 1
    static let done: UInt8 = 2
  }

  let kernel: String
  let grid: PTXDim3
  let count: Int
  let options: PTXLaunchOptions
  let makeRunner: @Sendable () -> BlockRunner
  /// Per block: its runner while it has one (nil before it starts and after it ends).
  let runners: UnsafeMutablePointer<BlockRunner?>
  let state: UnsafeMutablePointer<UInt8>
  /// Instructions run by all blocks so far.
  let executed = Atomic<UInt64>(0)
  /// The serial scheduler's place: the next block of the current phase.
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
    self.makeRunner = makeRunner
    runners = .allocate(capacity: count)
    runners.initialize(repeating: nil, count: count)
    state = .allocate(capacity: count)
    state.initialize(repeating: BlockState.ready, count: count)
  }

  deinit {
    for k in 0..<count { runners[k]?.release() }
    runners.deinitialize(count: count)
    runners.deallocate()
    state.deallocate()
  }

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
    state[k] = BlockState.done
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
      while next < count {
        let k = next
        if state[k] == BlockState.ready {
          startIfNeeded(k)
          let total = executed.load(ordering: .relaxed)
          let before = runners[k]!.executed
          runners[k]!.budgetEnd = before &+ (budget &- min(budget, total))
          runners[k]!.suspendAt = stopAt == .max ? .max : before &+ (stopAt &- min(stopAt, total))
          let done = try runners[k]!.continueBlock()
          executed.wrappingAdd(runners[k]!.executed &- before, ordering: .relaxed)
          if done {
            flushPrinted(k)
            finish(k)
          } else if runners[k]!.gridWaiting {
            state[k] = BlockState.waiting
          } else {
            return false  // suspended: `limit` reached
          }
        }
        next += 1
        if next < count && executed.load(ordering: .relaxed) >= stopAt { return false }
      }
      if try endPhase() {
        ended = true
        return true
      }
      next = 0
    }
  }

  /// The phase is over (every block has ended or waits): true when the launch is done; else
  /// releases the barrier, or fails when only some blocks reached it.
  private func endPhase() throws(PTXError) -> Bool {
    var waiting = 0
    var ended: Int? = nil
    for k in 0..<count {
      if state[k] == BlockState.waiting { waiting += 1 }
      if state[k] == BlockState.done && ended == nil { ended = k }
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
      state[k] = BlockState.ready
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
    let claim: Atomic<Int>
    let arrived = Atomic<Int>(0)
    let generation = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)
    let outcome = Mutex<(fault: (block: Int, error: PTXError)?, stopped: PTXError?, phaseError: PTXError?)>(
      (nil, nil, nil))
    var nextProgress: UInt64
    var threads = 1
    init(claim: Int, nextProgress: UInt64) {
      self.claim = Atomic(claim)
      self.nextProgress = nextProgress
    }
  }

  private func runParallel() throws(PTXError) -> Bool {
    ended = true
    let quantum = ParallelRun.quantum(options)
    let shared = Shared(
      claim: next, nextProgress: executed.load(ordering: .relaxed) &+ max(1, options.progressInterval))
    let helpers = min(options.hostThreads, count) - 1
    let buffered = options.printf != nil
    for k in 0..<count where runners[k] != nil {
      runners[k]!.nextProgress = .max
      if buffered && runners[k]!.printed == nil { runners[k]!.printed = [] }
    }
    let body = UncheckedSendable(self)
    let ran = onThreads(helpers) {
      body.value.work(shared, quantum: quantum, main: false, buffered: buffered)
    } main: { started in
      shared.threads = 1 + started
      work(shared, quantum: quantum, main: true, buffered: buffered)
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

  /// One host thread's share of a parallel run: blocks claimed one at a time, each run until
  /// it ends or waits at the grid barrier; then the host barrier; until the launch is done.
  private func work(_ shared: Shared, quantum: UInt64, main: Bool, buffered: Bool) {
    let budget = options.instructionBudget
    var generation = 0
    while true {
      claiming: while !shared.stop.load(ordering: .relaxed) {
        let k = shared.claim.wrappingAdd(1, ordering: .relaxed).oldValue
        if k >= count { break }
        if state[k] != BlockState.ready { continue }
        if runners[k] == nil {
          startIfNeeded(k)
          runners[k]!.nextProgress = .max
          if buffered { runners[k]!.printed = [] }
        }
        while true {
          let total = executed.load(ordering: .relaxed)
          let before = runners[k]!.executed
          runners[k]!.budgetEnd = before &+ (budget &- min(budget, total))
          runners[k]!.suspendAt = before &+ quantum
          let done: Bool
          do throws(PTXError) {
            done = try runners[k]!.continueBlock()
          } catch {
            flushPrinted(k)
            if case .budgetExhausted = error {
              halt(shared, error)
            } else {
              shared.outcome.withLock { o in
                if o.fault == nil || k < o.fault!.block { o.fault = (k, error) }
              }
              shared.stop.store(true, ordering: .relaxed)
            }
            break claiming
          }
          let now = executed.wrappingAdd(runners[k]!.executed &- before, ordering: .relaxed).newValue
          if now > budget {
            halt(shared, .budgetExhausted(kernel: kernel, budget: budget))
            break claiming
          }
          if main, let progress = options.progress, now >= shared.nextProgress {
            guard progress() else {
              halt(shared, .launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)"))
              break claiming
            }
            shared.nextProgress = now &+ max(1, options.progressInterval)
          }
          if done {
            flushPrinted(k)
            finish(k)
            break
          }
          if runners[k]!.gridWaiting {
            state[k] = BlockState.waiting
            break
          }
          if shared.stop.load(ordering: .relaxed) { break claiming }
        }
      }
      // The host barrier: the last thread to arrive ends the phase for everyone.
      let arrived = shared.arrived.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
      if arrived == shared.threads {
        shared.arrived.store(0, ordering: .relaxed)
        if shared.stop.load(ordering: .relaxed) {
          shared.finished.store(true, ordering: .relaxed)
        } else {
          do throws(PTXError) {
            if try endPhase() { shared.finished.store(true, ordering: .relaxed) }
          } catch {
            shared.outcome.withLock { $0.phaseError = error }
            shared.finished.store(true, ordering: .relaxed)
          }
          shared.claim.store(0, ordering: .relaxed)
        }
        generation += 1
        shared.generation.store(generation, ordering: .releasing)
      } else {
        generation += 1
        var spins = 0
        while shared.generation.load(ordering: .acquiring) < generation {
          spins += 1
          if spins < 64 {
            sched_yield()
            continue
          }
          var pause = timespec(tv_sec: 0, tv_nsec: 50_000)
          nanosleep(&pause, nil)
          if main, let progress = options.progress, !shared.stop.load(ordering: .relaxed) {
            let now = executed.load(ordering: .relaxed)
            if now >= shared.nextProgress {
              if progress() {
                shared.nextProgress = now &+ max(1, options.progressInterval)
              } else {
                halt(shared, .launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)"))
              }
            }
          }
        }
      }
      if shared.finished.load(ordering: .relaxed) { return }
    }
  }

  private func halt(_ shared: Shared, _ error: PTXError) {
    shared.outcome.withLock { o in if o.stopped == nil { o.stopped = error } }
    shared.stop.store(true, ordering: .relaxed)
  }
}
