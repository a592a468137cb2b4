#if canImport(Glibc)
  import Glibc
#endif

/// The one reader of `/sys`, `/dev` and `/proc`: it knows where each root is
/// and makes every read and write through ``SystemCalls``.
///
/// Callers name paths as a person would type them (`/sys/bus/pci/devices/...`,
/// `/dev/vfio/7`); ``resolve(_:)`` turns them into the file to open. The real
/// machine is ``live``; tests point the same reader at a fixture tree (another
/// root) and, where they want failures, at fake system calls. There is no
/// other fixture mechanism: `pcitool`'s `PCITOOL_SYSFS_ROOT` and
/// `PCITOOL_DEV_ROOT` only choose the roots given here.
public struct HostEnvironment: Sendable {
  /// Where `/sys` is: `/sys` on the real machine.
  public var sys: String
  /// Where `/dev` is.
  public var dev: String
  /// Where `/proc` is.
  public var proc: String
  public var calls: SystemCalls

  /// `/sys`, `/dev` and `/proc` under `root` (empty: the real ones).
  public init(root: String = "", calls: SystemCalls = .live) {
    self.init(sys: root + "/sys", dev: root + "/dev", proc: root + "/proc", calls: calls)
  }

  /// Each root on its own, e.g. a fixture `/sys` and `/dev` with the real `/proc`.
  public init(sys: String, dev: String, proc: String = "/proc", calls: SystemCalls = .live) {
    self.sys = sys
    self.dev = dev
    self.proc = proc
    self.calls = calls
  }

  /// The real machine.
  public static let live = HostEnvironment()

  /// Whether the roots are the real `/sys`, `/dev` and `/proc`.
  public var isLive: Bool { sys == "/sys" && dev == "/dev" && proc == "/proc" }

  /// The file to open for `path` (`/sys/...`, `/dev/...` or `/proc/...`);
  /// other paths are taken as they are.
  public func resolve(_ path: String) -> String {
    for (prefix, root) in [("/sys", sys), ("/dev", dev), ("/proc", proc)]
    where path == prefix || path.hasPrefix(prefix + "/") {
      return root + path.dropFirst(prefix.count)
    }
    return path
  }

  // MARK: Reading

  /// A text file (a sysfs attribute, `/proc/PID/comm`), whitespace and NULs
  /// trimmed from both ends; `nil` when it cannot be read.
  public func readText(_ path: String, limit: Int = 4096) -> String? {
    try? readTextOrThrow(path, limit: limit)
  }

  /// ``readText(_:limit:)`` that says why it failed. Reads up to `limit`
  /// bytes, to the end of the file (`/proc/PID/maps` can be long).
  public func readTextOrThrow(_ path: String, limit: Int = 4096) throws(Errno) -> String {
    let fd = try calls.open(resolve(path), O_RDONLY, 0)
    defer { calls.close(fd) }
    let chunk = max(1, min(limit, 65536))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 8)
    defer { buffer.deallocate() }
    var bytes: [UInt8] = []
    while bytes.count < limit {
      let want = min(chunk, limit - bytes.count)
      let n = try calls.pread(fd, UnsafeMutableRawBufferPointer(rebasing: buffer[..<want]), Int64(bytes.count))
      if n <= 0 { break }
      bytes += buffer[..<n]
    }
    let junk: Set<UInt8> = [0x20, 0x09, 0x0a, 0x0d, 0x00]
    let text = bytes.drop { junk.contains($0) }.reversed().drop { junk.contains($0) }.reversed()
    return String(decoding: text, as: UTF8.self)
  }

  /// A symlink's target as stored (`../../../bus/pci/drivers/vfio-pci`).
  public func readLink(_ path: String) -> String? { try? calls.readlink(resolve(path)) }

  /// The last component of a symlink's target (`driver` → `vfio-pci`,
  /// `iommu_group` → `7`).
  public func linkName(_ path: String) -> String? {
    readLink(path)?.split(separator: "/").last.map(String.init)
  }

  /// A folder's entries, sorted; empty when it cannot be read. Names that
  /// start with `.` are left out: sysfs, /dev and /proc have none, and
  /// fixture trees keep their controls in them.
  public func list(_ path: String) -> [String] { (try? listOrThrow(path)) ?? [] }

  /// ``list(_:)`` that says why it failed (`/proc/PID/fd` of another user: EACCES).
  public func listOrThrow(_ path: String) throws(Errno) -> [String] {
    try calls.listDirectory(resolve(path)).filter { !$0.hasPrefix(".") }
  }

  /// Whether `path` exists, a dangling symlink included.
  public func exists(_ path: String) -> Bool { facts(path) != nil || readLink(path) != nil }

  public func isDirectory(_ path: String) -> Bool {
    facts(path).map { $0.mode & UInt32(S_IFMT) == UInt32(S_IFDIR) } ?? false
  }

  /// What `ls -l` shows about `path` (symlinks followed); `nil` when absent.
  public func facts(_ path: String) -> FileFacts? { try? calls.stat(resolve(path)) }

  /// Whether this user may read and write `path` (a device node, `resourceN`).
  public func isReadWrite(_ path: String) -> Bool { calls.access(resolve(path), R_OK | W_OK) }

  /// The file `path` resolves to with every symlink followed, as the kernel
  /// names it in `/proc/PID/fd` and `/proc/PID/maps`; `nil` when absent.
  public func canonicalPath(_ path: String) -> String? { try? calls.realpath(resolve(path)) }

  // MARK: Writing

  /// Writes `text` to a sysfs attribute (`driver_override`, `bind`, `enable`)
  /// in one write, as `echo` does: the kernel answers a refused bind or
  /// unbind with that write's errno. Truncates, so a fixture file holds just `text`.
  public func writeText(_ path: String, _ text: String) throws(Errno) {
    let fd = try calls.open(resolve(path), O_WRONLY | O_TRUNC, 0)
    defer { calls.close(fd) }
    let bytes = Array(text.utf8)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 8)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    let n = try calls.pwrite(fd, UnsafeRawBufferPointer(rebasing: buffer[..<bytes.count]), 0)
    guard n == bytes.count else { throw Errno(EIO) }
  }

  // MARK: Processes

  /// A file a process holds open or has mapped.
  public struct ProcessFile: Sendable, Equatable {
    public var pid: Int32
    /// `/proc/PID/comm`, `?` when unreadable.
    public var command: String
    /// The path as `/proc` names it.
    public var path: String
  }

  /// The files of every process but this one that `matches` accepts: the
  /// `/proc/PID/fd/*` links and, with `mappings`, the files in `/proc/PID/maps`
  /// (a BAR mapped from `resourceN` stays in use after its fd is closed).
  /// `unreadable` counts the processes whose fds this user may not list
  /// (other users' processes, without root).
  public func processFiles(mappings: Bool = false, matching matches: (String) -> Bool) -> (
    files: [ProcessFile], unreadable: Int
  ) {
    var files: [ProcessFile] = []
    var unreadable = 0
    let me = calls.getpid()
    for entry in list("/proc") {
      guard let pid = Int32(entry), pid != me else { continue }
      let dir = "/proc/\(entry)"
      let fds: [String]
      do { fds = try listOrThrow(dir + "/fd") } catch {
        if exists(dir) { unreadable += 1 }
        continue
      }
      var command: String?
      func add(_ path: String) {
        if command == nil { command = readText(dir + "/comm") ?? "?" }
        files.append(ProcessFile(pid: pid, command: command!, path: path))
      }
      for fd in fds {
        if let target = readLink(dir + "/fd/" + fd), matches(target) { add(target) }
      }
      guard mappings, let maps = readText(dir + "/maps", limit: .max) else { continue }
      for line in maps.split(separator: "\n") {
        guard let slash = line.firstIndex(of: "/") else { continue }
        let path = String(line[slash...])
        if matches(path) { add(path) }
      }
    }
    return (files, unreadable)
  }
}
