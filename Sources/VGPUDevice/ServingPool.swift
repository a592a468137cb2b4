import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Threads that serve reference devices. Each thread serves its devices in
/// turn — one pass over each, every ring at most `commandsPerTurn` commands
/// and `turnNanoseconds` of work while it serves more than one — spins while
/// work may come, and sleeps on
/// all of its devices' wake words at once (futex_waitv(2), Linux 5.16) when
/// none has any.
///
/// A device alone on a thread (`ReferenceDevice.start()` without a pool: a
/// VM's BAR, `sim`) is a pool of one: it sleeps on its own wake word, or on
/// its ivshmem doorbells' eventfd. A mediator serving many host processes
/// gives them a few threads between them (`--serving-threads`): with a
/// thread per process, every process's device spun on its own thread, and
/// from 8 processes on 2 cores the threads mostly waited for each other
/// (docs/bench/README.md, "Scale").
public final class ServingPool: @unchecked Sendable {
  /// Commands a ring runs in one turn while its thread serves several
  /// devices: a client with a queue of copies or launches holds up the
  /// others for this many commands at most before each gets its turn.
  public static let defaultCommandsPerTurn = 16
  /// Work a ring does in one turn, at most (the turn ends after the command
  /// that passes it): a 256 KiB copy chunk takes about 25 µs here, so a
  /// client copying gigabytes holds the others up for about one chunk.
  public static let defaultTurnNanoseconds: UInt64 = 20_000

  /// One serving thread and the devices it serves.
  private final class Lane: @unchecked Sendable {
    /// Bumped (and woken) when the members change or the pool stops.
    let wakeWord = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    let members = SanitizerVisibleMutex<[ReferenceDevice]>([])
    /// Bumped with each change of `members`; the thread acknowledges the
    /// value it has taken up, at the start of a round.
    let generation = Atomic<UInt64>(0)
    let acknowledged = Atomic<UInt64>(0)
    let running = Atomic<Bool>(true)
    var thread: pthread_t?
    /// Set by the thread before `started`: why it runs without its priority.
    var refusal: String?
    let started = Atomic<Bool>(false)
    /// With an allocation probe (tests): rounds begun, and the thread's
    /// allocations as the probe read them at the start of the latest.
    let rounds = Atomic<UInt64>(0)
    let allocations = Atomic<UInt64>(0)
    init() { wakeWord.initialize(to: 0) }
    deinit { wakeWord.deallocate() }

    func wake() {
      _ = vgpu_fetch_add_u32(UnsafeMutableRawPointer(wakeWord), 1)
      _ = vgpu_futex_wake(UnsafeMutableRawPointer(wakeWord), Int32.max)
    }
  }

  /// How the serving threads are scheduled beside the processes they serve.
  public enum Priority: Sendable, Equatable, CustomStringConvertible {
    /// As any thread (SCHED_OTHER, nice 0).
    case normal
    /// SCHED_OTHER with this nice value (-20...19; below 0 needs CAP_SYS_NICE).
    case nice(Int32)
    /// SCHED_FIFO at this priority (1...99; needs CAP_SYS_NICE): a serving
    /// thread with work runs ahead of every client, as a device would; the
    /// kernel's RT throttling (sched_rt_runtime_us) still leaves others 5 %.
    case realtime(Int32)

    public var description: String {
      switch self {
      case .normal: "normal"
      case .nice(let n): "nice \(n)"
      case .realtime(let p): "SCHED_FIFO \(p)"
      }
    }
  }

  private let lanes: [Lane]
  /// Why the threads could not get their priority (nil: they have it).
  public private(set) var priorityRefusal: String?
  private let wait: WaitPolicy
  private let turn: Turn
  /// A pool made for one device: its thread sleeps on that device's own
  /// wake word or eventfd rather than on a set of words.
  private let solo: Bool

  /// Reads the calling thread's heap allocations (a test's malloc counter).
  typealias AllocationProbe = @convention(c) () -> UInt64
  /// Tests only: read by each serving thread at the start of every round,
  /// since the count is per thread. nil in production: one check a round.
  private let allocationProbe: AllocationProbe?

  /// Starts `threads` serving threads (at least 1), idle until devices are added.
  public convenience init(
    threads: Int, wait: WaitPolicy = .device, commandsPerTurn: Int = defaultCommandsPerTurn,
    turnNanoseconds: UInt64 = defaultTurnNanoseconds, priority: Priority = .normal
  ) {
    self.init(
      threads: threads, wait: wait, turn: Turn(commands: max(1, commandsPerTurn), nanoseconds: turnNanoseconds),
      priority: priority, solo: false)
  }

  init(
    threads: Int, wait: WaitPolicy, turn: Turn = .unbounded, priority: Priority = .normal, solo: Bool,
    allocationProbe: AllocationProbe? = nil
  ) {
    self.allocationProbe = allocationProbe
    self.wait = wait
    self.turn = turn
    self.solo = solo
    lanes = (0..<max(1, threads)).map { _ in Lane() }
    for lane in lanes {
      lane.thread = startThread { [self] in
        lane.refusal = Self.take(priority)
        lane.started.store(true, ordering: .releasing)
        serve(lane)
      }
      precondition(lane.thread != nil, "pthread_create failed: \(errno)")
    }
    // Each thread has its priority (or knows why not) before the pool is used.
    for lane in lanes { while !lane.started.load(ordering: .acquiring) { usleep(20) } }
    priorityRefusal = lanes.lazy.compactMap(\.refusal).first
  }

  /// Gives the calling thread `priority`; why not, if it could not have it.
  private static func take(_ priority: Priority) -> String? {
    switch priority {
    case .normal:
      return nil
    case .nice(let n):
      // On Linux a nice value is a thread's, named by its tid (setpriority(2), NOTES).
      guard setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(vgpu_gettid()), n) == 0 else {
        return "nice \(n): \(String(cString: strerror(errno)))"
      }
      return nil
    case .realtime(let p):
      var param = sched_param()
      param.sched_priority = p
      let rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param)
      return rc == 0 ? nil : "SCHED_FIFO \(p): \(String(cString: strerror(rc)))"
    }
  }

  deinit { stop() }

  /// Serving threads.
  public var threadCount: Int { lanes.count }

  /// Devices each thread serves now.
  public var devicesPerThread: [Int] { lanes.map { $0.members.withLock { $0.count } } }

  /// The CPU time each serving thread has used (an idle pool's stays still).
  public var cpuNanoseconds: [UInt64] {
    lanes.map { lane in
      var clock = clockid_t()
      var ts = timespec()
      guard let thread = lane.thread, pthread_getcpuclockid(thread, &clock) == 0, clock_gettime(clock, &ts) == 0
      else { return 0 }
      return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
  }

  /// Each thread's rounds begun and its allocations at the start of the
  /// latest, as `allocationProbe` read them (zeros without one).
  var probedRounds: [(rounds: UInt64, allocations: UInt64)] {
    lanes.map { ($0.rounds.load(ordering: .acquiring), $0.allocations.load(ordering: .relaxed)) }
  }

  /// Serves `device` on the thread that serves the fewest.
  func add(_ device: ReferenceDevice) {
    let lane = lanes.min { a, b in a.members.withLock { $0.count } < b.members.withLock { $0.count } }!
    lane.members.withLock { members in
      members.append(device)
      lane.generation.add(1, ordering: .releasing)
    }
    lane.wake()
  }

  /// Stops serving `device`; when this returns, no thread of the pool touches it.
  func remove(_ device: ReferenceDevice) {
    for lane in lanes {
      let generation = lane.members.withLock { members -> UInt64? in
        guard let i = members.firstIndex(where: { $0 === device }) else { return nil }
        members.remove(at: i)
        return lane.generation.add(1, ordering: .releasing).newValue
      }
      guard let generation else { continue }
      lane.wake()
      // A solo thread sleeps on the device's own word or eventfd.
      device.wakeServingThread()
      // On the serving thread itself (a device stopped from its own event): nothing to wait for.
      if let thread = lane.thread, pthread_equal(thread, pthread_self()) != 0 { return }
      while lane.running.load(ordering: .relaxed) && lane.acknowledged.load(ordering: .acquiring) < generation {
        usleep(50)
      }
      return
    }
  }

  /// Stops every thread (the devices they served are left as they are) and joins them.
  public func stop() {
    for lane in lanes {
      guard lane.running.exchange(false, ordering: .acquiringAndReleasing) else { continue }
      lane.wake()
      for device in lane.members.withLock({ $0 }) { device.wakeServingThread() }
      if let thread = lane.thread { pthread_join(thread, nil) }
      lane.thread = nil
    }
  }

  private func serve(_ lane: Lane) {
    var members: [ReferenceDevice] = []
    // The same devices, for calls that need no retain: `members` keeps them
    // alive. Fetched from the array, each call retained and released its
    // device, a third of a pass over 64 idle ones (issue 17).
    var devices: [Unmanaged<ReferenceDevice>] = []
    // The words a sleep waits on and their values, reused from sleep to sleep.
    var words: [UnsafeMutableRawPointer?] = []
    var seen: [UInt32] = []
    words.reserveCapacity(Int(VGPU_FUTEX_WAITV_MAX))
    seen.reserveCapacity(Int(VGPU_FUTEX_WAITV_MAX))
    var known: UInt64 = .max
    // Idle polls since the last pass that had work.
    var idle = Spin()
    // After a sleep that ended by its timeout, nobody is about to submit:
    // look once and sleep again, rather than spin (an idle device uses no CPU).
    var spin = true
    let probe = allocationProbe
    while lane.running.load(ordering: .relaxed) {
      if let probe {
        lane.allocations.store(probe(), ordering: .relaxed)
        lane.rounds.add(1, ordering: .releasing)
      }
      let generation = lane.generation.load(ordering: .acquiring)
      if generation != known {
        members = lane.members.withLock { $0 }
        devices.removeAll(keepingCapacity: true)
        for i in members.indices { devices.append(Unmanaged.passUnretained(members[i])) }
        known = generation
        lane.acknowledged.store(generation, ordering: .releasing)
        idle.restart()
        spin = true
      }
      let budget = members.count > 1 ? turn : .unbounded
      var worked = false
      var answeredGuestHere = false
      // The loops over `members` go by index: a for-in, unspecialized in a
      // debug build, allocated a coroutine frame per device (HotPathTests).
      for i in members.indices {
        let pass = devices[i]._withUnsafeGuaranteedRef { $0.servingPass(budget: budget) }
        worked = worked || pass.worked
        answeredGuestHere = answeredGuestHere || pass.answeredGuestHere
      }
      if worked {
        idle.restart()
        // A guest just woken on this CPU runs only once this thread stops:
        // sleep (after the checks below) instead of spinning. Spinning here
        // while the guest spun on the same core made every command cost
        // both spins, about 95 µs (issue 17, docs/bench/README.md).
        spin = !answeredGuestHere
        continue
      }
      if spin && idle.keepPolling(wait) {
        vgpu_cpu_relax()
        continue
      }
      // Sleep, but only after each device says so and finds no work (event suppression).
      let laneSeen = vgpu_load_acquire_u32(UnsafeMutableRawPointer(lane.wakeWord))
      if lane.generation.load(ordering: .acquiring) != known { continue }
      words.removeAll(keepingCapacity: true)
      seen.removeAll(keepingCapacity: true)
      var slice: UInt64 = 1_000_000_000
      var ready = true
      for i in members.indices {
        let ok = devices[i]._withUnsafeGuaranteedRef { device in
          guard let value = device.prepareToSleep() else { return false }
          words.append(device.wakeWord)
          seen.append(value)
          slice = min(slice, device.sleepSlice)
          return true
        }
        guard ok else {
          ready = false
          break
        }
      }
      guard ready else {
        for i in 0..<words.count { devices[i]._withUnsafeGuaranteedRef { $0.awake() } }
        continue
      }
      let woken: Bool
      // Set when futex_waitv ended the sleep: a device whose word did not
      // move had nothing come (its claims, closes and doorbells all move it).
      var byWord = false
      if solo, members.count == 1, let fd = members[0].doorbellEventFD {
        // A guest's doorbell (or a wake-up missed meanwhile: the eventfd keeps it).
        woken = vgpu_eventfd_wait(fd, slice) == 1
        if woken { members[0].countDoorbell() }
      } else if solo, members.count == 1 {
        woken = vgpu_futex_wait(words[0], seen[0], slice) != -ETIMEDOUT
      } else if words.count < Int(VGPU_FUTEX_WAITV_MAX) {
        words.append(UnsafeMutableRawPointer(lane.wakeWord))
        seen.append(laneSeen)
        let r = words.withUnsafeBufferPointer { w in
          seen.withUnsafeBufferPointer { s in vgpu_futex_waitv(w.baseAddress, s.baseAddress, Int32(w.count), slice) }
        }
        if r == -ENOSYS {
          // Before Linux 5.16: short sleeps on the lane's word, then a look at every device.
          _ = vgpu_futex_wait(UnsafeMutableRawPointer(lane.wakeWord), laneSeen, min(slice, 1_000_000))
          woken = true
        } else {
          woken = r != -ETIMEDOUT
          byWord = woken
        }
      } else {
        // More devices than one futex_waitv takes: short sleeps, then a look at every device.
        _ = vgpu_futex_wait(UnsafeMutableRawPointer(lane.wakeWord), laneSeen, min(slice, 1_000_000))
        woken = true
      }
      for i in members.indices {
        if byWord && vgpu_load_acquire_u32(words[i]) == seen[i] {
          devices[i]._withUnsafeGuaranteedRef { $0.wokeForAnother() }
        } else {
          devices[i]._withUnsafeGuaranteedRef { $0.woke() }
        }
      }
      idle.restart()
      spin = woken
    }
    // Whatever waits for an acknowledgement stops waiting: the thread is gone.
    lane.acknowledged.store(.max, ordering: .releasing)
  }
}
