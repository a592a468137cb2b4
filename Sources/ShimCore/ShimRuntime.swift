import Synchronization
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

/// The one device a shim library (libcuda, libnvidia-ml, libvgpu) talks to,
/// opened on the first call that needs it — never when the library loads.
///
/// Device selection: `VGPU_DEVICE` (unix:PATH, shm:PATH, a PCI address), else the
/// vGPU's PCI slot 0000:00:05.0. No device means no device, and one line on
/// stderr says why. (`sim` is refused: this library carries no device model.)
///
/// Every process finds the device on its own (nothing is inherited through
/// the environment but the name), and a process forked after opening opens
/// its own instead of sharing the parent's queue pairs.
public final class ShimRuntime: Sendable {
  /// Created on first use: Swift initialises globals lazily (swift_once), so
  /// loading a library that contains this does nothing.
  public static let shared = ShimRuntime()

  /// The PCI slot of the vGPU in a VM (ARCHITECTURE.md).
  public static let defaultDevice = "0000:00:05.0"

  private struct State: ~Copyable {
    var device: Device?
    var error: VGPUError?
    var reported = false
    /// Users that need the device kept open whatever the others do (NVML between
    /// nvmlInit and nvmlShutdown): while any hold it, `close` leaves it open.
    var holds = 0
  }
  private let state = Mutex(State())

  private init() {}

  /// The device name this process uses.
  public var deviceName: String {
    if let value = getenv("VGPU_DEVICE"), value.pointee != 0 { return String(cString: value) }
    return Self.defaultDevice
  }

  /// `VGPU_TIMEOUT`: how long, in seconds, a command may go without any sign
  /// of life from the device before it fails (default 2: `OpenOptions.timeout`;
  /// the device's progress register restarts the wait while long work runs).
  /// For devices slower than that allows: a sanitized mediator, an
  /// overloaded host. Nil when unset; an error for anything but 0.1 to 3600.
  public var timeout: Result<Duration?, VGPUError> {
    guard let value = getenv("VGPU_TIMEOUT"), value.pointee != 0 else { return .success(nil) }
    let text = String(cString: value)
    guard let seconds = Double(text), seconds.isFinite, seconds >= 0.1, seconds <= 3600 else {
      return .failure(
        VGPUError(
          .invalidArgument, "open", device: deviceName,
          found: "VGPU_TIMEOUT='\(text)' is not a number of seconds from 0.1 to 3600",
          remedy: "unset it for the default of 2 s, or give one such as VGPU_TIMEOUT=10"))
    }
    return .success(.nanoseconds(Int64(seconds * 1e9)))
  }

  /// Whether `VGPU_DEBUG` asks for diagnostics on stderr: off when unset, empty, `0`,
  /// `false`, `no` or `off` (any case), on for anything else.
  public var debug: Bool {
    guard let value = getenv("VGPU_DEBUG") else { return false }
    return !["", "0", "false", "no", "off"].contains(String(cString: value).lowercased())
  }

  /// The open device, opening it if needed (`retry`: try again after an
  /// earlier failure, as cuInit / nvmlInit do). On failure the error.
  public func device(retry: Bool = false) -> Result<Device, VGPUError> {
    state.withLock { s in
      if let d = s.device {
        if d.openedBy == getpid() { return .success(d) }
        // Forked: the parent's queue pairs stay the parent's.
        d.abandonAfterFork()
        s.device = nil
        s.error = nil
      }
      if let e = s.error, !retry { return .failure(e) }
      var options = OpenOptions()
      // One queue pair per process: the shims' callers submit from few threads,
      // and a VM's default 8-pair BAR then serves 8 processes at once (Ollama
      // runs several discovery processes at once); one more waits for a pair
      // until the open deadline (VGPU_TIMEOUT).
      options.queuePairs = 1
      do throws(VGPUError) {
        if let timeout = try timeout.get() { options.timeout = timeout }
        let d = try Device.open(deviceName, options: options)
        s.device = d
        s.error = nil
        return .success(d)
      } catch {
        s.error = error
        if debug && !s.reported {
          s.reported = true
          Self.printLine("vgpu: no device: \(error)")
        }
        return .failure(error)
      }
    }
  }

  /// The device if one is open or can be opened, else nil (a count of 0).
  public var deviceIfAvailable: Device? { try? device().get() }

  /// Says once, on stderr, why a call failed for want of a device.
  public func reportFailure(_ call: String, _ error: VGPUError) {
    let first = state.withLock { s in
      defer { s.reported = true }
      return !s.reported
    }
    if first || debug { Self.printLine("vgpu: \(call) failed: \(error)") }
  }

  /// Keeps the device open until the matching `release` (NVML's init/shutdown).
  public func hold() { state.withLock { $0.holds += 1 } }
  public func release() { state.withLock { $0.holds = max(0, $0.holds - 1) } }

  /// Closes the device when nobody holds it (CUDA, when its last context goes),
  /// so an idle process gives its queue pairs back. A device inherited through
  /// fork is let go of without touching the parent's queue pairs.
  public func close() {
    let d = state.withLock { s -> Device? in
      guard s.holds == 0 || s.device?.openedBy != getpid() else { return nil }
      defer { s.device = nil }
      return s.device
    }
    guard let d else { return }
    if d.openedBy == getpid() { d.close() } else { d.abandonAfterFork() }
  }

  /// One line on stderr, written whole (the host program's stdio is not ours).
  public static func printLine(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
  }
}
