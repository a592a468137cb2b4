import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// What the host threads running one launch's blocks share (`PTXLaunch.run(until: .max)`):
/// the next block to claim, the launch's instruction count, and how it ended.
///
/// Each thread has its own `BlockRunner` (stack, shared memory, barriers), so a block is
/// all on one thread and blocks share only global memory, whose atomics are real ones.
/// Runners stop every `quantum` instructions to add their count to the launch's, check
/// the budget and whether another thread stopped the launch; the launching thread also
/// reports progress there, so the progress callback never runs on a helper.
final class ParallelRun: @unchecked Sendable {
  struct Outcome {
    /// The failing block with the lowest index, and its error: the one a serial run meets first.
    var fault: (block: Int, error: PTXError)?
    /// A budget or cancel, which stops every block.
    var stopped: PTXError?
    /// printf lines per block, handed on in block order when all are done.
    var texts: [Int: [String]] = [:]
    var helperExecuted: UInt64 = 0
  }

  let grid: PTXDim3
  let count: Int
  let budget: UInt64
  let quantum: UInt64
  let progress: (() -> Bool)?
  let progressInterval: UInt64
  /// Only the launching thread reads and writes it.
  var nextProgress: UInt64
  /// The next block to claim.
  let next: Atomic<Int>
  /// Instructions run by all runners, added at each quantum's end.
  let executed: Atomic<UInt64>
  /// Set by a budget or cancel: every runner stops at its next quantum.
  let stop = Atomic<Bool>(false)
  /// Blocks after this one are not started (a block before it failed); `.max` while none has.
  let lastBlock = Atomic<Int>(.max)
  let outcome = Mutex(Outcome())
  /// Helper threads still running, less those not yet counted in (`awaitHelpers`).
  let helpersLeft = Atomic<Int>(0)

  init(grid: PTXDim3, next: Int, executed: UInt64, options: PTXLaunchOptions) {
    self.grid = grid
    count = grid.count
    budget = options.instructionBudget
    quantum = Self.quantum(options)
    progress = options.progress
    progressInterval = max(1, options.progressInterval)
    nextProgress = executed &+ progressInterval
    self.next = Atomic(next)
    self.executed = Atomic(executed)
  }

  /// Instructions a runner goes between looks at the launch: 2^16 (well under a millisecond),
  /// or fewer when progress is asked for more often.
  static func quantum(_ options: PTXLaunchOptions) -> UInt64 {
    min(1 << 16, max(1 << 10, options.progressInterval))
  }

  /// Runs blocks on this thread until none is left or the launch stops: `started` first (a
  /// block the runner has begun), then blocks claimed one at a time.
  func work(_ r: inout BlockRunner, started: Int?, main: Bool) {
    var k = started ?? next.wrappingAdd(1, ordering: .relaxed).oldValue
    while k < count && k <= lastBlock.load(ordering: .relaxed) && !stop.load(ordering: .relaxed) {
      if k != started { r.startBlock(grid.block(k)) }
      var done = false
      while !done {
        let total = executed.load(ordering: .relaxed)
        r.budgetEnd = r.executed &+ (budget &- min(budget, total))
        r.suspendAt = r.executed &+ quantum
        let before = r.executed
        do throws(PTXError) {
          done = try r.continueBlock()
        } catch {
          fail(block: k, error, text: r.printed)
          return
        }
        let now = executed.wrappingAdd(r.executed &- before, ordering: .relaxed).newValue
        if now > budget {
          halt(.budgetExhausted(kernel: r.kernel, budget: budget))
          return
        }
        if stop.load(ordering: .relaxed) || k > lastBlock.load(ordering: .relaxed) { return }
        if main, let progress, now >= nextProgress {
          guard progress() else {
            halt(.launchFailed(kernel: r.kernel, reason: "cancelled by the device (its client went away)"))
            return
          }
          nextProgress = now &+ progressInterval
        }
      }
      if let text = r.printed, !text.isEmpty {
        outcome.withLock { $0.texts[k] = text }
        r.printed = []
      }
      k = next.wrappingAdd(1, ordering: .relaxed).oldValue
    }
  }

  /// On the launching thread once it has no block left: waits for the `started` helpers,
  /// reporting progress meanwhile (a helper's long last block must not look like a hang to
  /// the client, whose waits count silence), and cancelling them when asked to.
  func awaitHelpers(started: Int, kernel: String) {
    var left = helpersLeft.wrappingAdd(started, ordering: .acquiringAndReleasing).newValue
    while left > 0 {
      var pause = timespec(tv_sec: 0, tv_nsec: 100_000)
      nanosleep(&pause, nil)
      let now = executed.load(ordering: .relaxed)
      if let progress, now >= nextProgress, !stop.load(ordering: .relaxed) {
        if progress() {
          nextProgress = now &+ progressInterval
        } else {
          halt(.launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)"))
        }
      }
      left = helpersLeft.load(ordering: .acquiring)
    }
  }

  /// Block `k` failed: blocks after it are not started, and of several failures the first
  /// block's is reported (what a serial run would meet). A budget stops every block.
  private func fail(block k: Int, _ error: PTXError, text: [String]?) {
    if case .budgetExhausted = error {
      halt(error)
      return
    }
    var seen = lastBlock.load(ordering: .relaxed)
    while k < seen {
      let (done, now) = lastBlock.compareExchange(expected: seen, desired: k, ordering: .relaxed)
      if done { break }
      seen = now
    }
    outcome.withLock { o in
      if let text, !text.isEmpty { o.texts[k] = text }
      if o.fault == nil || k < o.fault!.block { o.fault = (k, error) }
    }
  }

  private func halt(_ error: PTXError) {
    outcome.withLock { o in if o.stopped == nil { o.stopped = error } }
    stop.store(true, ordering: .relaxed)
  }
}

/// A value moved to another thread that the compiler cannot prove safe to: a launch's
/// memory and callbacks, which its contract says may be used from the launch's threads.
struct UncheckedSendable<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}

/// Runs `helper` on `extra` new POSIX threads and `main` on this one (given how many helpers
/// started), and returns when all have returned; returns how many helpers ran. A thread the
/// system will not start is simply missing: the work is claimed from a shared counter, so
/// fewer threads only take longer.
func onThreads(_ extra: Int, _ helper: @escaping @Sendable () -> Void, main: (Int) -> Void) -> Int {
  final class Body: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
  }
  var threads: [pthread_t] = []
  for _ in 0..<max(0, extra) {
    let box = Unmanaged.passRetained(Body(helper))
    var thread = pthread_t()
    let rc = pthread_create(
      &thread, nil,
      { arg in
        Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
      }, box.toOpaque())
    if rc == 0 { threads.append(thread) } else { box.release() }
  }
  main(threads.count)
  for t in threads { pthread_join(t, nil) }
  return threads.count
}
