import CSupport

#if canImport(Glibc)
  import Glibc
#endif

/// An errno value, named as the C constant it stands for (as swift-system's `Errno`).
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: Int32
  public init(_ rawValue: Int32) { self.rawValue = rawValue }
  /// The calling thread's `errno`, read right after a failed call.
  public static var current: Errno { Errno(errno) }

  public static let noEntry = Errno(ENOENT)
  public static let accessDenied = Errno(EACCES)
  public static let notPermitted = Errno(EPERM)
  public static let busy = Errno(EBUSY)
  public static let noMemory = Errno(ENOMEM)
  public static let noSpace = Errno(ENOSPC)
  public static let invalid = Errno(EINVAL)
  public static let noDevice = Errno(ENODEV)

  /// `EACCES` (`Permission denied`).
  public var name: String {
    let names: [Int32: String] = [
      EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", EBADF: "EBADF", ENOMEM: "ENOMEM", EACCES: "EACCES",
      EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EINVAL: "EINVAL",
      ENOSPC: "ENOSPC", ENOTTY: "ENOTTY", ENXIO: "ENXIO", EAGAIN: "EAGAIN", ENOSYS: "ENOSYS",
    ]
    return names[rawValue] ?? "errno \(rawValue)"
  }

  public var description: String { "\(name): \(String(cString: strerror(rawValue)))" }
}

/// Facts `ls -l` would show about a file, for permission diagnoses.
public struct FileFacts: Sendable, Equatable, CustomStringConvertible {
  public var mode: UInt32
  public var uid: UInt32
  public var gid: UInt32
  public var owner: String
  public var group: String
  public init(mode: UInt32, uid: UInt32, gid: UInt32, owner: String, group: String) {
    self.mode = mode
    self.uid = uid
    self.gid = gid
    self.owner = owner
    self.group = group
  }

  public var isCharacterDevice: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFCHR) }

  /// `crw-rw---- root vgpu`.
  public var description: String {
    let type = isCharacterDevice ? "c" : mode & UInt32(S_IFMT) == UInt32(S_IFDIR) ? "d" : "-"
    let bits = "rwxrwxrwx"
    var perms = ""
    for (i, c) in bits.enumerated() { perms.append(mode & (1 << (8 - UInt32(i))) != 0 ? c : "-") }
    return "\(type)\(perms) \(owner) \(group)"
  }
}

/// Every system call the mapping backends make, as replaceable function values
/// (the shape of swift-system's syscall mocking): `.live` calls the kernel;
/// tests copy it and replace the calls whose failures they want to see.
///
/// Failures come back as thrown ``Errno`` values, never through the global `errno`.
public struct SystemCalls: Sendable {
  public var open: @Sendable (_ path: String, _ flags: Int32, _ mode: UInt32) throws(Errno) -> Int32
  public var close: @Sendable (_ fd: Int32) -> Void
  /// ioctl(2) with its third argument as the kernel takes it: a value, or a pointer's bits.
  public var ioctl: @Sendable (_ fd: Int32, _ request: UInt, _ argument: UInt) throws(Errno) -> Int32
  public var pread:
    @Sendable (_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) throws(Errno) -> Int
  public var pwrite: @Sendable (_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) throws(Errno) -> Int
  /// mmap(2); `at` with MAP_FIXED places it inside a reservation.
  public var mmap:
    @Sendable (
      _ at: UnsafeMutableRawPointer?, _ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64
    ) throws(Errno) -> UnsafeMutableRawPointer
  public var munmap: @Sendable (_ address: UnsafeMutableRawPointer, _ length: Int) -> Void
  public var fstatSize: @Sendable (_ fd: Int32) throws(Errno) -> Int64
  public var stat: @Sendable (_ path: String) throws(Errno) -> FileFacts
  public var readlink: @Sendable (_ path: String) throws(Errno) -> String
  public var listDirectory: @Sendable (_ path: String) throws(Errno) -> [String]
  /// access(2): whether this user may use `path` in `mode` (`R_OK | W_OK`, ...).
  public var access: @Sendable (_ path: String, _ mode: Int32) -> Bool
  /// realpath(3): `path` with every symlink resolved.
  public var realpath: @Sendable (_ path: String) throws(Errno) -> String
  /// getrlimit(2): (soft, hard), `nil` for RLIM_INFINITY.
  public var getrlimit: @Sendable (_ resource: Int32) -> (soft: UInt64?, hard: UInt64?)
  public var eventfd: @Sendable (_ initial: UInt32, _ flags: Int32) throws(Errno) -> Int32
  public var getpid: @Sendable () -> Int32

  public init(
    open: @escaping @Sendable (String, Int32, UInt32) throws(Errno) -> Int32,
    close: @escaping @Sendable (Int32) -> Void,
    ioctl: @escaping @Sendable (Int32, UInt, UInt) throws(Errno) -> Int32,
    pread: @escaping @Sendable (Int32, UnsafeMutableRawBufferPointer, Int64) throws(Errno) -> Int,
    pwrite: @escaping @Sendable (Int32, UnsafeRawBufferPointer, Int64) throws(Errno) -> Int,
    mmap:
      @escaping @Sendable (UnsafeMutableRawPointer?, Int, Int32, Int32, Int32, Int64) throws(Errno) ->
      UnsafeMutableRawPointer,
    munmap: @escaping @Sendable (UnsafeMutableRawPointer, Int) -> Void,
    fstatSize: @escaping @Sendable (Int32) throws(Errno) -> Int64,
    stat: @escaping @Sendable (String) throws(Errno) -> FileFacts,
    readlink: @escaping @Sendable (String) throws(Errno) -> String,
    listDirectory: @escaping @Sendable (String) throws(Errno) -> [String],
    access: @escaping @Sendable (String, Int32) -> Bool,
    realpath: @escaping @Sendable (String) throws(Errno) -> String,
    getrlimit: @escaping @Sendable (Int32) -> (soft: UInt64?, hard: UInt64?),
    eventfd: @escaping @Sendable (UInt32, Int32) throws(Errno) -> Int32,
    getpid: @escaping @Sendable () -> Int32
  ) {
    self.open = open
    self.close = close
    self.ioctl = ioctl
    self.pread = pread
    self.pwrite = pwrite
    self.mmap = mmap
    self.munmap = munmap
    self.fstatSize = fstatSize
    self.stat = stat
    self.readlink = readlink
    self.listDirectory = listDirectory
    self.access = access
    self.realpath = realpath
    self.getrlimit = getrlimit
    self.eventfd = eventfd
    self.getpid = getpid
  }

  /// The kernel.
  public static let live = SystemCalls(
    open: { (path: String, flags: Int32, mode: UInt32) throws(Errno) -> Int32 in
      let fd = Glibc.open(path, flags | O_CLOEXEC, mode_t(mode))
      guard fd >= 0 else { throw Errno.current }
      return fd
    },
    close: { fd in _ = Glibc.close(fd) },
    ioctl: { (fd: Int32, request: UInt, argument: UInt) throws(Errno) -> Int32 in
      let r = vgpu_ioctl(fd, request, argument)
      guard r >= 0 else { throw Errno.current }
      return r
    },
    pread: { (fd: Int32, buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int in
      let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
      guard n >= 0 else { throw Errno.current }
      return n
    },
    pwrite: { (fd: Int32, buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int in
      let n = Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset))
      guard n >= 0 else { throw Errno.current }
      return n
    },
    mmap: {
      (at: UnsafeMutableRawPointer?, length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64)
        throws(Errno) -> UnsafeMutableRawPointer in
      let p = Glibc.mmap(at, length, protection, flags, fd, off_t(offset))
      guard let p, p != MAP_FAILED else { throw Errno.current }
      return p
    },
    munmap: { address, length in _ = Glibc.munmap(address, length) },
    fstatSize: { (fd: Int32) throws(Errno) -> Int64 in
      var st = Glibc.stat()
      guard Glibc.fstat(fd, &st) == 0 else { throw Errno.current }
      return Int64(st.st_size)
    },
    stat: { (path: String) throws(Errno) -> FileFacts in
      var st = Glibc.stat()
      guard fstatat(AT_FDCWD, path, &st, 0) == 0 else { throw Errno.current }
      func name(_ p: UnsafeMutablePointer<CChar>?, _ id: UInt32) -> String {
        p.map { String(cString: $0) } ?? String(id)
      }
      // getpwuid/getgrgid: the names `ls -l` prints; the numbers when there are none.
      let owner = name(getpwuid(st.st_uid)?.pointee.pw_name, st.st_uid)
      let group = name(getgrgid(st.st_gid)?.pointee.gr_name, st.st_gid)
      return FileFacts(mode: st.st_mode, uid: st.st_uid, gid: st.st_gid, owner: owner, group: group)
    },
    readlink: { (path: String) throws(Errno) -> String in
      var buffer = [CChar](repeating: 0, count: 4096)
      let n = Glibc.readlink(path, &buffer, buffer.count - 1)
      guard n >= 0 else { throw Errno.current }
      return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    },
    listDirectory: { (path: String) throws(Errno) -> [String] in
      guard let dir = opendir(path) else { throw Errno.current }
      defer { closedir(dir) }
      var names: [String] = []
      while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) {
          String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
      }
      return names.sorted()
    },
    access: { path, mode in Glibc.access(path, mode) == 0 },
    realpath: { (path: String) throws(Errno) -> String in
      guard let p = Glibc.realpath(path, nil) else { throw Errno.current }
      defer { free(p) }
      return String(cString: p)
    },
    getrlimit: { resource in
      var limit = rlimit()
      guard Glibc.getrlimit(__rlimit_resource_t(UInt32(resource)), &limit) == 0 else { return (nil, nil) }
      func value(_ v: rlim_t) -> UInt64? { v == rlim_t.max ? nil : UInt64(v) }
      return (value(limit.rlim_cur), value(limit.rlim_max))
    },
    eventfd: { (initial: UInt32, flags: Int32) throws(Errno) -> Int32 in
      let fd = CSupport.eventfd(initial, flags)
      guard fd >= 0 else { throw Errno.current }
      return fd
    },
    getpid: { Glibc.getpid() }
  )
}
