import CSupport
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A failure of the benchmark itself (a baseline child that did not start, a
/// socket that broke), said in one line.
public struct BenchError: Error, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}

/// This executable, for starting the helper processes of baselines.
public let selfExecutable: String =
  (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]

/// A small /dev/shm file mapped by a baseline and its child process.
public struct SharedFile {
  public let base: UnsafeMutableRawPointer
  public let size: Int
  public let path: String

  /// Creates a new file of `size` bytes (never an existing one).
  public static func create(_ prefix: String, size: Int) throws -> SharedFile {
    let path = "/dev/shm/\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    return try SharedFile(path: path, size: size, create: true)
  }

  public init(path: String, size: Int, create: Bool) throws {
    self.path = path
    self.size = size
    let fd = create ? open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) : open(path, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { throw BenchError("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    if create, ftruncate(fd, off_t(size)) != 0 {
      let reason = String(cString: strerror(errno))
      unlink(path)
      throw BenchError("cannot size \(path): \(reason)")
    }
    // An existing file must hold what is mapped: touching a page past its end is SIGBUS.
    var st = stat()
    if !create, fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG || Int(st.st_size) < size {
      throw BenchError("cannot use \(path): not a file of at least \(size) bytes, as the benchmark makes them")
    }
    guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
      throw BenchError("cannot map \(path): \(String(cString: strerror(errno)))")
    }
    base = p
  }

  public func unmap() { munmap(base, size) }
}

/// A helper process running this executable in one of its internal modes.
public final class HelperProcess {
  public let process = Process()

  public init(_ arguments: [String], executable: String = selfExecutable) throws {
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = FileHandle.nullDevice
    do { try process.run() } catch {
      throw BenchError("cannot start \(executable) \(arguments.joined(separator: " ")): \(error)")
    }
  }

  public var pid: Int32 { process.processIdentifier }

  /// Waits until the word at `flag` says ready, or fails if the child exits or 10 s pass.
  public func waitReady(_ flag: UnsafeMutableRawPointer, _ what: String) throws {
    let started = now()
    while vgpu_load_acquire_u32(flag) == 0 {
      guard process.isRunning else {
        throw BenchError("the \(what) child exited with status \(process.terminationStatus)")
      }
      guard now() - started < 10_000_000_000 else { throw BenchError("the \(what) child was not ready within 10 s") }
      usleep(200)
    }
  }

  /// Waits up to 2 s for it to exit (after being told to), then kills it.
  public func finish() { stop(process, signal: 0, grace: 2_000_000_000) }
}

/// Sends `signal` (0: none, the process was told otherwise), waits up to
/// `grace` ns, then SIGKILLs. SIGKILL because a parent such as the test runner
/// may have SIGTERM blocked, and children inherit the mask.
public func stop(_ process: Process, signal: Int32 = SIGTERM, grace: UInt64 = 3_000_000_000) {
  // waitUntilExit also when it has exited: it is what drops the run-loop
  // source that holds the Process (swift-corelibs-foundation's Process.run
  // makes that cycle; LeakSanitizer reports the Process and all it holds).
  guard process.isRunning else { return process.waitUntilExit() }
  if signal != 0 { kill(process.processIdentifier, signal) }
  let started = now()
  while process.isRunning && now() - started < grace { usleep(1000) }
  if process.isRunning { kill(process.processIdentifier, SIGKILL) }
  process.waitUntilExit()
}

/// A benchmark child's wait for its parent's next message: spin ~8 µs, then
/// yield the CPU on every poll, after 1 ms nap (the parent may be measuring
/// something else in between, in interleaved blocks; a napping child does not
/// take a core from it); stop when the parent sets the stop word, fail after
/// 5 s of silence (the parent is gone).
struct ChildIdle {
  let stop: UnsafeMutableRawPointer
  let what: String
  private var spins = 0
  private var idleSince: UInt64 = 0

  init(stop: UnsafeMutableRawPointer, what: String) {
    self.stop = stop
    self.what = what
  }

  /// A message came: the next wait starts afresh.
  mutating func reset() { spins = 0 }

  /// After an empty poll. True when the parent asked the child to stop.
  mutating func idle() throws -> Bool {
    vgpu_cpu_relax()
    spins += 1
    if spins & 255 == 0 {
      if vgpu_load_acquire_u32(stop) != 0 { return true }
      let t = now()
      if spins == 256 { idleSince = t }
      if t - idleSince > 5_000_000_000 { throw BenchError("no \(what) for 5 s; the parent is gone") }
      if t - idleSince > 1_000_000 { usleep(200) }
    }
    if spins >= 256 { sched_yield() }
    return false
  }
}

/// Waits for `condition` by spinning, then yielding the CPU, so that two
/// processes that share one core still progress; fails after `deadline` ns.
@inline(__always)
public func spinWait(deadline: UInt64 = 1_000_000_000, _ what: @autoclosure () -> String, until condition: () -> Bool)
  throws
{
  var spins = 0
  var since: UInt64 = 0
  while !condition() {
    vgpu_cpu_relax()
    spins += 1
    // After ~8 µs of spinning each poll also yields the CPU.
    if spins >= 256 {
      sched_yield()
      if spins & 255 == 0 {
        let t = now()
        if since == 0 {
          since = t
        } else if t - since > deadline {
          throw BenchError("\(what()) did not happen within \(deadline / 1_000_000) ms")
        }
      }
    }
  }
}
