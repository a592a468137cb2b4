import Foundation

/// What `tools/test --sanitize address|thread` tells the tests (docs/SANITIZERS.md).
///
/// Swift executables built with `-sanitize=` (the tests, vgpu-mediator, pcitool,
/// vgpu-test-client) carry the sanitizer runtime linked in statically. The shim
/// libraries built likewise only refer to it, so a program that is not ours and
/// loads them (Python, the C clients compiled with cc) needs the runtime's shared
/// copy loaded first, by LD_PRELOAD. That is added to those processes only: a
/// sanitized Swift executable given it too would hold two runtimes.
public enum Sanitizer {
  /// The sanitizer tools/test built with (`address`, `thread`), or nil in a normal run.
  public static let kind: String? = ProcessInfo.processInfo.environment["VGPU_SANITIZE"].flatMap {
    $0.isEmpty ? nil : $0
  }
  /// What a client preloads: the toolchain's shared runtime for `kind`
  /// (libclang_rt.asan-x86_64.so, ...), for TSan followed by the libdispatch
  /// it refers to (a colon-separated list, as LD_PRELOAD takes it).
  public static let runtime: String? = ProcessInfo.processInfo.environment["VGPU_SANITIZER_RUNTIME"].flatMap {
    $0.isEmpty ? nil : $0
  }

  public static var active: Bool { kind != nil }

  /// How many times longer a wall-clock bound may be in this run: the
  /// sanitizers' own slowdown (AddressSanitizer about 2-3x, ThreadSanitizer
  /// 5-15x, by their documentation) on top of a shared 2-core machine. For
  /// bounds that stand for "soon, not after a second deadline", never for a
  /// figure a test measures.
  public static let slowdown: Double = kind == "thread" ? 5 : kind == "address" ? 3 : 1

  /// `environment` for `executable`, a program that is not a sanitized Swift
  /// executable but may load the sanitized shims (a client the tests compiled,
  /// the venv's Python): the runtime preloaded. System tools (/usr/bin, /bin:
  /// cc, sh, pkg-config, nm) load no shim and run as they are. Leak checking
  /// is off in a preloaded client: what such a host leaks at exit (an
  /// interpreter's objects) is not ours; the shims' Swift code is leak-checked
  /// in the test process and the mediators.
  public static func clientEnvironment(_ environment: [String: String], executable: String) -> [String: String] {
    guard let runtime, !["/usr/bin/", "/bin/"].contains(where: { executable.hasPrefix($0) }) else {
      return environment
    }
    var env = environment
    // tools/test: what a library's own dlopen no longer finds under an interposed dlopen (NVRTC's builtins).
    if let extra = ProcessInfo.processInfo.environment["VGPU_SANITIZER_LIBRARY_PATH"], !extra.isEmpty {
      env["LD_LIBRARY_PATH"] = [env["LD_LIBRARY_PATH"], extra].compactMap { $0 }.filter { !$0.isEmpty }.joined(
        separator: ":")
    }
    env["LD_PRELOAD"] = [runtime, env["LD_PRELOAD"]].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ":")
    // The shims' silence deadline (2 s) stretched by the sanitizer's slowdown,
    // as a user on a slow host would (VGPU_TIMEOUT, ShimRuntime.timeout).
    if env["VGPU_TIMEOUT"] == nil { env["VGPU_TIMEOUT"] = "\(Int(2 * slowdown))" }
    if kind == "address" {
      env["ASAN_OPTIONS"] = [env["ASAN_OPTIONS"], "detect_leaks=0"].compactMap { $0 }.joined(separator: ":")
    }
    return env
  }
}
