import CSupport
import DeviceAccess
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The guest heartbeat (protocol 2.3, feature `guestHeartbeat`,
/// docs/PROTOCOL.md §7 "Guest heartbeat"): one thread per open device that
/// adds 1 to the heartbeat word of each of its queue pairs every
/// `GuestHeartbeat.periodNanoseconds`, so that a device that cannot see this
/// process (the mediator of the VM it runs in) reclaims its pairs and memory
/// within 2 s when it is killed without closing. A process that is alive
/// keeps beating however idle it is; one that is stopped (SIGSTOP) or whose
/// VM is paused for longer than `GuestHeartbeat.silenceNanoseconds` loses its
/// pairs, as a dead one would: the thread then finds a pair no longer this
/// process's, beats for it no more (it may be another's by now), and says
/// so (`lost`), so that the device refuses further calls at once rather
/// than write into rings that are not its own any more.
///
/// Started by `Device.init` only when the device offers the feature (never
/// for a host process's own BAR, whose socket says when it ends, nor at
/// library load), and stopped by `close()`. Between beats it sleeps on a
/// private futex word that `stop()` changes, so it wakes 2.5 times a second
/// and leaves at once when told.
final class HeartbeatThread: @unchecked Sendable {
  /// Two words: [0] 0 while beating, `stop()` stores 1 and wakes the
  /// thread; [1] 1 once a pair the thread beat for was taken back.
  private let words: UnsafeMutablePointer<UInt32>
  private var thread: pthread_t?
  /// The process that started the thread: a forked child has no copy of
  /// it, and must not join (or wake) what is not its own.
  private let startedBy = getpid()
  private let views: [QueuePairView]
  private let pid: UInt32

  /// Starts beating on `views` (the claimed pairs; the device counts the
  /// beats of each only from its `identify`), for as long as each is
  /// active and names `pid` as its owner. Nil when no thread could be
  /// started: then the guest does not announce the heartbeat.
  init?(views: [QueuePairView], pid: UInt32, periodNanoseconds: UInt64 = GuestHeartbeat.periodNanoseconds) {
    let words = UnsafeMutablePointer<UInt32>.allocate(capacity: 2)
    words.initialize(repeating: 0, count: 2)
    self.words = words
    self.views = views
    self.pid = pid
    let shared = Words(stop: UnsafeMutableRawPointer(words), lost: UnsafeMutableRawPointer(words + 1))
    thread = startThread {
      // Per pair: seen active and ours. Before the device accepts a claim
      // there is nothing to beat for, and nothing lost either.
      var held = [Bool](repeating: false, count: views.count)
      while vgpu_load_acquire_u32(shared.stop) == 0 {
        for (i, view) in views.enumerated() {
          if view.state == QueuePairState.active.rawValue && view.ownerPID == pid {
            held[i] = true
            view.beat()
          } else if held[i] {
            // Taken back (its silence outlasted the device's patience):
            // never beat for it again, it may be another process's now.
            held[i] = false
            vgpu_store_release_u32(shared.lost, 1)
          }
        }
        // Returns early only when stop() changed the word (or a stray wake-up:
        // one beat more, which costs nothing).
        _ = vgpu_futex_wait(shared.stop, 0, periodNanoseconds)
      }
    }
    if thread == nil {
      words.deallocate()
      return nil
    }
  }

  /// The words, handed to the thread (which stop() joins before they go).
  private struct Words: @unchecked Sendable {
    let stop: UnsafeMutableRawPointer
    let lost: UnsafeMutableRawPointer
  }

  /// Whether the device took back a pair this process held (it stopped
  /// beating for longer than the device waits: stopped, or its VM paused).
  /// Looks at the pairs too (a load or two each), so that a process just
  /// continued after a stop knows before its first command, whichever of
  /// its threads runs first. Ask only once every pair was accepted (the
  /// device is open) and while it is not closed: a pair still claiming, or
  /// handed back, is not active either, and the answer sticks.
  var lost: Bool {
    let flag = UnsafeMutableRawPointer(words + 1)
    if vgpu_load_acquire_u32(flag) != 0 { return true }
    // An index loop: an array iterator allocates in a debug build, and this runs per command.
    for i in 0..<views.count where views[i].state != QueuePairState.active.rawValue || views[i].ownerPID != pid {
      vgpu_store_release_u32(flag, 1)
      return true
    }
    return false
  }

  /// Stops beating and joins the thread. Safe to call twice.
  func stop() {
    guard getpid() == startedBy, let thread else { return }
    self.thread = nil
    vgpu_store_release_u32(UnsafeMutableRawPointer(words), 1)
    _ = vgpu_futex_wake(UnsafeMutableRawPointer(words), 1)
    pthread_join(thread, nil)
  }

  deinit {
    stop()
    // Joined, or (a forked child) never copied into this process: nothing reads the words now.
    words.deallocate()
  }
}
