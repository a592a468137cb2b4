#if canImport(Glibc)
  import Glibc
#endif

/// Runs `body` on a new POSIX thread and returns it (to join), or nil when
/// the system would not create one. A pthread rather than Foundation's
/// Thread: nothing of Foundation is needed, and libraries that use this
/// start threads only on a real call, never at load.
public func startThread(detached: Bool = false, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
  final class Body: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
  }
  let box = Unmanaged.passRetained(Body(body))
  var thread = pthread_t()
  let rc = pthread_create(
    &thread, nil,
    { arg in
      Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
      return nil
    }, box.toOpaque())
  guard rc == 0 else {
    box.release()
    return nil
  }
  if detached { pthread_detach(thread) }
  return thread
}
