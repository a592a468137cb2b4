import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Happens-before edges that ThreadSanitizer cannot see by itself, told to it
/// in a build with the runtime (tools/test --sanitize thread) and nothing in
/// any other build.
///
/// Why: `Synchronization.Mutex` on Linux hands a contended lock over with
/// PI futexes (FUTEX_UNLOCK_PI / FUTEX_LOCK_PI): the kernel writes the new
/// owner into the lock word, and the waiter returns owning the lock without
/// an atomic operation TSan observes. TSan then reports the data the mutex
/// protects as raced between the previous owner and the next (docs/SANITIZERS.md).
/// A lock that calls `acquired` after taking and `releasing` before giving
/// back is seen as the lock it is.
public enum ThreadSanitizer {
  @usableFromInline typealias Annotation = @convention(c) (UnsafeMutableRawPointer?) -> Void
  /// The runtime's `__tsan_acquire` / `__tsan_release` (compiler-rt's
  /// tsan_interface.h), found once: absent from every process without it.
  @usableFromInline static let annotations: (acquire: Annotation, release: Annotation)? = {
    guard let a = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_acquire"),
      let r = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_release")
    else { return nil }
    return (unsafeBitCast(a, to: Annotation.self), unsafeBitCast(r, to: Annotation.self))
  }()

  /// After taking the lock identified by `object`.
  @inlinable @inline(__always)
  public static func acquired(_ object: AnyObject) {
    if let annotations { annotations.acquire(Unmanaged.passUnretained(object).toOpaque()) }
  }

  /// Before giving back the lock identified by `object`.
  @inlinable @inline(__always)
  public static func releasing(_ object: AnyObject) {
    if let annotations { annotations.release(Unmanaged.passUnretained(object).toOpaque()) }
  }
}

/// A `Mutex` as ThreadSanitizer sees it: a lock (see ``ThreadSanitizer``).
/// A drop-in for `Mutex(value)` where threads that TSan watches share it.
///
/// Inlinable so that each caller's `withLock` is specialized: unspecialized,
/// every call instantiated its generic metadata, a tenth of a serving
/// thread's time when it polls 64 idle devices (issue 17).
public final class SanitizerVisibleMutex<Value>: @unchecked Sendable {
  @usableFromInline let mutex: Mutex<Value>

  @inlinable public init(_ value: consuming sending Value) { mutex = Mutex(value) }

  @inlinable @inline(__always)
  public func withLock<R, E: Error>(_ body: (inout sending Value) throws(E) -> sending R) throws(E) -> sending R {
    try mutex.withLock { (value: inout sending Value) throws(E) -> sending R in
      ThreadSanitizer.acquired(self)
      defer { ThreadSanitizer.releasing(self) }
      return try body(&value)
    }
  }
}

/// `Mutex(())`, the lock beside the state it guards, as TSan sees it.
public typealias SanitizerVisibleLock = SanitizerVisibleMutex<Void>

extension SanitizerVisibleMutex where Value == Void {
  @inlinable public convenience init() { self.init(()) }
}
