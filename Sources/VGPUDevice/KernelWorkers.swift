import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// A command's work handed to a worker thread (a long kernel, GPU work
/// still in flight), and what comes back: the serving thread posts its
/// completion, in its pair's order (the pair serves nothing else
/// meanwhile), and appends its output to the process's.
final class WorkerJob: @unchecked Sendable {
  let qp: Int
  /// The pair's generation when the work was taken: a completion for a
  /// pair released and claimed again since is dropped.
  let generation: UInt64
  var commandID: UInt16 = 0
  var sqHead: UInt16 = 0
  let work: any BackendWork
  /// Whether it is a launch (counted as one when it succeeds).
  let isLaunch: Bool
  /// When its command started on the serving thread (monotonic ns): its
  /// latency (and a launch's kernel time) run until the worker is done.
  var startedAt: UInt64 = 0
  /// Its command's opcode, for the latency histograms.
  var opcode: UInt8 = Opcode.launch.rawValue
  /// For the worker: takes the executor's lock per lookup.
  let caller: BackendCaller
  // Written by the worker, read by the serving thread after `finished`.
  var output = DeviceOutput()
  /// The completion to post: the command's success reply, or its error.
  var result: CompletionEntry
  var errorText = ""
  /// A module load, which the serving thread completes (places and names the module).
  var load: ModuleLoadWork?
  /// How long the worker worked on it: the device's busy time.
  var busyNanoseconds: UInt64 = 0

  init(
    qp: Int, generation: UInt64, work: any BackendWork, isLaunch: Bool, caller: BackendCaller, success: CompletionEntry
  ) {
    self.qp = qp
    self.generation = generation
    self.work = work
    self.isLaunch = isLaunch
    self.caller = caller
    self.result = success
  }

  func run() {
    let started = vgpu_monotonic_ns()
    defer { busyNanoseconds = vgpu_monotonic_ns() &- started }
    do throws(BackendError) {
      try work.finish(caller: caller, output: &output)
    } catch {
      result = CompletionEntry(
        status: error.status, result0: error.result0, result1: error.result1, detail: error.detail)
      errorText = error.message
    }
  }
}

/// The threads that run kernels, so that a long kernel of one client does
/// not hold up another client's commands: the serving thread hands a launch
/// over and goes on serving the other pairs; a pair's later commands wait
/// for its launch (in order per pair, and so per stream).
final class KernelWorkers: @unchecked Sendable {
  // Locks TSan can see (the serving thread and the workers contend for both:
  // a plain Mutex hands over through PI futexes, which TSan reports as races).
  private let queue = SanitizerVisibleMutex<[WorkerJob]>([])
  private let done = SanitizerVisibleMutex<[WorkerJob]>([])
  /// Bumped per job queued; workers sleep on it (futex).
  private let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
  /// Jobs finished and not yet collected: the serving thread's cheap check.
  let finished = Atomic<Int>(0)
  private let running = Atomic<Bool>(true)
  /// Started with the first job, under `queue`'s lock: a mediator serves
  /// each host process with a device of its own, and most (discovery) never
  /// launch, so an idle device costs its serving thread only.
  private var threads: [pthread_t] = []
  private let count: Int
  /// Wakes the serving thread (as a doorbell would) when a job is done.
  private let wakeDevice: @Sendable () -> Void

  init(count: Int, wakeDevice: @escaping @Sendable () -> Void) {
    word.initialize(to: 0)
    self.wakeDevice = wakeDevice
    self.count = max(1, count)
  }

  deinit { word.deallocate() }

  func submit(_ job: WorkerJob) {
    queue.withLock { jobs in
      jobs.append(job)
      guard threads.isEmpty, running.load(ordering: .acquiring) else { return }
      for _ in 0..<count {
        if let t = startThread({ [self] in work() }) { threads.append(t) }
      }
    }
    _ = vgpu_fetch_add_u32(word, 1)
    _ = vgpu_futex_wake(word, 1)
  }

  /// The finished jobs, oldest first.
  func collect() -> [WorkerJob] {
    let jobs = done.withLock { d -> [WorkerJob] in
      let all = d
      d.removeAll(keepingCapacity: true)
      return all
    }
    finished.subtract(jobs.count, ordering: .relaxed)
    return jobs
  }

  /// Stops the workers after the jobs in hand (cancel them first to be quick).
  func stop() {
    running.store(false, ordering: .releasing)
    _ = vgpu_fetch_add_u32(word, 1)
    _ = vgpu_futex_wake(word, Int32.max)
    let started = queue.withLock { _ in
      defer { threads = [] }
      return threads
    }
    for t in started { pthread_join(t, nil) }
  }

  private func work() {
    while running.load(ordering: .acquiring) {
      let seen = vgpu_load_acquire_u32(word)
      guard let job = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
        // Bounded, so a stop is noticed even if its wake-up is missed.
        _ = vgpu_futex_wait(word, seen, 100_000_000)
        continue
      }
      job.run()
      done.withLock { $0.append(job) }
      finished.add(1, ordering: .releasing)
      wakeDevice()
    }
  }
}
