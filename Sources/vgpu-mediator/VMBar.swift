import Foundation

/// One VM of several that one mediator serves (`--vm-bar`): its BAR file,
/// the ivshmem server socket its QEMU connects to, its own memory limit and
/// the name its log lines and metrics carry.
struct VMBar: Equatable {
  /// The BAR file QEMU's memory backend (or ivshmem-doorbell's server) maps.
  var path: String
  /// The ivshmem server socket (as `--ivshmem-socket`), or nil: no doorbells, the device polls.
  var socket: String?
  /// This VM's own limit within `--memory`, or nil: all of `--memory`.
  var memory: UInt64?
  /// Its label in log lines (`vm=NAME`) and metrics (`vm="NAME"`).
  var name: String
  /// Its page-locked window's least size (as `--host-window`), or nil: none.
  var window: UInt64? = nil

  /// The form `--help` teaches and every parse error repeats.
  static let form = "PATH[,socket=SOCKET][,memory=SIZE][,name=NAME][,window=SIZE]"

  /// Parses `PATH[,socket=SOCKET][,memory=SIZE][,name=NAME][,window=SIZE]`, or says what
  /// is wrong with `text` and how the value is written.
  static func parse(_ text: String) -> Result<VMBar, VMBarError> {
    func wrong(_ what: String) -> Result<VMBar, VMBarError> {
      .failure(VMBarError(description: "--vm-bar '\(text)': \(what); write it as \(form)"))
    }
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    let path = parts[0]
    guard !path.isEmpty, !path.contains("=") else {
      return wrong("the BAR file comes first (e.g. /dev/shm/vm1), found '\(path)'")
    }
    var bar = VMBar(path: path, socket: nil, memory: nil, name: (path as NSString).lastPathComponent)
    var seen = Set<String>()
    for part in parts.dropFirst() {
      guard let equals = part.firstIndex(of: "="), equals != part.startIndex else {
        return wrong("'\(part)' is not KEY=VALUE (keys: socket, memory, name, window)")
      }
      let key = String(part[..<equals])
      let value = String(part[part.index(after: equals)...])
      guard seen.insert(key).inserted else { return wrong("\(key)= is given twice") }
      guard !value.isEmpty else { return wrong("\(key)= has no value") }
      switch key {
      case "socket": bar.socket = value
      case "memory":
        guard let size = Size.parse(value) else { return wrong("memory=\(value) is not a size such as 8G or 512M") }
        bar.memory = size
      case "window":
        guard let size = Size.parse(value), size > 0, size % 4096 == 0, size <= 1 << 40 else {
          return wrong("window=\(value) is not a size of whole 4 KiB pages up to 1T, such as 256M")
        }
        bar.window = size
      case "name":
        guard value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
          return wrong(
            "name=\(value) may hold only letters, digits, '.', '_' and '-' (it labels log lines and metrics)")
        }
        bar.name = value
      default: return wrong("unknown key '\(key)' (keys: socket, memory, name, window)")
      }
    }
    return .success(bar)
  }

  /// What is wrong with `bars` together under a shared limit of `total`
  /// bytes (`--memory`, written `totalText`), or nil: two VMs may not share
  /// a file, a socket or a name, and no VM's own limit exceeds the total.
  static func conflicts(_ bars: [VMBar], total: UInt64, totalText: String) -> String? {
    for (i, a) in bars.enumerated() {
      for b in bars[..<i] {
        if a.path == b.path {
          return "two --vm-bar values name the BAR file \(a.path): each VM needs a file of its own"
        }
        if let s = a.socket, s == b.socket {
          return "two --vm-bar values name the socket \(s): each VM's QEMU needs an ivshmem server socket of its own"
        }
        if a.name == b.name {
          return
            "two --vm-bar values have the name '\(a.name)' (the default is the file's name): give each VM its own with name="
        }
      }
      if let m = a.memory, m > total {
        return
          "--vm-bar \(a.path): memory= (\(m >> 20) MiB) is more than --memory \(totalText) (\(total >> 20) MiB), which all VMs share; give this VM at most that, or raise --memory"
      }
    }
    return nil
  }
}

/// A `--vm-bar` value that cannot be parsed.
struct VMBarError: Error, CustomStringConvertible {
  var description: String
}
