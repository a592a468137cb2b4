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
/// pairs, as a dead one would.
///
/// Started by `Device.init` only when the device offers the feature (never
/// for a host process's own BAR, whose socket says when it ends, nor at
/// library load), and stopped by `close()`. Between beats it sleeps on a
/// private futex word that `stop()` changes, so it wakes 2.5 times a second
/// and leaves at once when told.
final class HeartbeatThread: @unchecked Sendable {
  /// 0 while beating; `stop()` stores 1 and wakes the thread.
  private let stopWord: UnsafeMutablePointer<UInt32>
  private var thread: pthread_t?
  /// The process that started the thread: a forked child has no copy of
  /// it, and must not join (or wake) what is not its own.
  private let startedBy = getpid()

  /// Starts beating on `views` (the claimed pairs; the device counts the
  /// beats of each only from its `identify`). Nil when no thread could be
  /// started: then the guest does not announce the heartbeat.
  init?(views: [QueuePairView], periodNanoseconds: UInt64 = GuestHeartbeat.periodNanoseconds) {
    let stopWord = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    stopWord.initialize(to: 0)
    self.stopWord = stopWord
    let stop = StopWord(word: UnsafeMutableRawPointer(stopWord))
    thread = startThread {
      let word = stop.word
      while vgpu_load_acquire_u32(word) == 0 {
        for view in views { view.beat() }
        // Returns early only when stop() changed the word (or a stray wake-up:
        // one beat more, which costs nothing).
        _ = vgpu_futex_wait(word, 0, periodNanoseconds)
      }
    }
    if thread == nil {
      stopWord.deallocate()
      return nil
    }
  }

  /// The stop word, handed to the thread (which stop() joins before the word goes).
  private struct StopWord: @unchecked Sendable { let word: UnsafeMutableRawPointer }

  /// Stops beating and joins the thread. Safe to call twice.
  func stop() {
    guard getpid() == startedBy, let thread else { return }
    self.thread = nil
    vgpu_store_release_u32(UnsafeMutableRawPointer(stopWord), 1)
    _ = vgpu_futex_wake(UnsafeMutableRawPointer(stopWord), 1)
    pthread_join(thread, nil)
  }

  deinit {
    stop()
    // Joined, or (a forked child) never copied into this process: nothing reads the word now.
    stopWord.deallocate()
  }
}
