import CSupport
import DeviceAccess
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Tells the device as soon as a process that owns queue pairs exits, so an
/// idle device needs no periodic scan of /proc: one thread sleeps in poll(2)
/// on a pidfd per owner (pidfd_open(2), Linux 5.3; readable once the process
/// has exited, zombie or not). Exits are handed over by `takeExited()`.
///
/// Only the watch thread closes pidfds, so an fd number it polls is never
/// reused under it; `unwatch` queues the close and wakes the thread.
final class OwnerWatch: @unchecked Sendable {
  private struct State {
    var watched: [Int: Int32] = [:]  // queue pair → pidfd
    var exited: [Int] = []
    var toClose: [Int32] = []
    var stopping = false
  }
  /// Taken by the watch thread and the device thread in turn: a Mutex TSan can follow.
  private let state = SanitizerVisibleMutex(State())
  private let wake: Int32
  private let onExit: @Sendable () -> Void
  private var thread: pthread_t?

  /// nil where pidfds are not available (the device then scans /proc).
  init?(onExit: @escaping @Sendable () -> Void) {
    let probe = vgpu_pidfd_open(getpid())
    guard probe >= 0 else { return nil }
    close(probe)
    wake = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    guard wake >= 0 else { return nil }
    self.onExit = onExit
    guard let t = startThread({ self.run() }) else {
      close(wake)
      return nil
    }
    thread = t
  }

  /// Watches `pid` as the owner of `qp`; false if it could not (already gone,
  /// or out of fds): the caller falls back on /proc.
  func watch(queuePair qp: Int, pid: UInt32) -> Bool {
    let fd = vgpu_pidfd_open(Int32(bitPattern: pid))
    guard fd >= 0 else { return false }
    state.withLock { s in
      if let old = s.watched.updateValue(fd, forKey: qp) { s.toClose.append(old) }
    }
    _ = vgpu_eventfd_signal(wake)
    return true
  }

  /// Stops watching `qp`'s owner (released), forgetting an exit not yet taken.
  func unwatch(queuePair qp: Int) {
    state.withLock { s in
      if let fd = s.watched.removeValue(forKey: qp) { s.toClose.append(fd) }
      s.exited.removeAll { $0 == qp }
    }
    _ = vgpu_eventfd_signal(wake)
  }

  /// Queue pairs whose owner exited since the last call.
  func takeExited() -> [Int] {
    state.withLock { s in
      defer { s.exited = [] }
      return s.exited
    }
  }

  var hasExits: Bool { state.withLock { !$0.exited.isEmpty } }

  func stop() {
    guard let t = thread else { return }
    thread = nil
    state.withLock { $0.stopping = true }
    _ = vgpu_eventfd_signal(wake)
    pthread_join(t, nil)
    state.withLock { s in
      for fd in s.toClose + Array(s.watched.values) { close(fd) }
      s.toClose = []
      s.watched = [:]
    }
    close(wake)
  }

  deinit { stop() }

  private func run() {
    while true {
      let (fds, queuePairs, stopping) = state.withLock { s -> ([pollfd], [Int], Bool) in
        for fd in s.toClose { close(fd) }
        s.toClose = []
        var fds = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        var qps: [Int] = []
        for (qp, fd) in s.watched {
          fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
          qps.append(qp)
        }
        return (fds, qps, s.stopping)
      }
      if stopping { return }
      var polled = fds
      guard poll(&polled, nfds_t(polled.count), -1) >= 0 || errno == EINTR else { return }
      if polled[0].revents != 0 { _ = vgpu_eventfd_wait(wake, 0) }
      var any = false
      state.withLock { s in
        for (i, p) in polled.enumerated().dropFirst() where p.revents != 0 {
          let qp = queuePairs[i - 1]
          // Still the same watch (not unwatched or replaced meanwhile)?
          guard s.watched[qp] == p.fd else { continue }
          s.watched[qp] = nil
          s.toClose.append(p.fd)
          s.exited.append(qp)
          any = true
        }
      }
      if any { onExit() }
    }
  }
}
