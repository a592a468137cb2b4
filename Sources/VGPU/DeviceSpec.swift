import VGPUProtocol

/// A device named by one string a user can type, the same everywhere
/// (pcitool's DEVICE, the shims' `VGPU_DEVICE`, tests):
///
/// - `sim`: the built-in simulated device, served in this process;
/// - `unix:PATH`: `vgpu-mediator`'s Unix socket, which gives this process a
///   BAR of its own (how host processes reach it; `MediatorSocket`);
/// - `shm:PATH`: a shared-memory BAR file served by `vgpu-mediator --vm`
///   (the file a VM's ivshmem device maps; every process that opens it is one tenant);
/// - `DDDD:BB:DD.F` or `BB:DD.F`, optionally prefixed `vfio:`, `uio:` or `sysfs:`:
///   a PCI device, mapped through that backend (the best available without one).
public enum DeviceSpec: Equatable, Sendable, CustomStringConvertible {
  case simulated
  case unixSocket(path: String)
  case sharedMemory(path: String)
  case pci(address: String, backend: PCIBackend?)

  public enum PCIBackend: String, Sendable, CaseIterable { case vfio, uio, sysfs }

  public static let grammar =
    "sim, unix:PATH, shm:PATH, or a PCI address DDDD:BB:DD.F (optionally vfio:, uio: or sysfs: before it)"

  public init(parsing text: String) throws(VGPUError) {
    func bad(_ why: String) -> VGPUError {
      VGPUError(.invalidArgument, "open device '\(text)'", device: text, found: why, remedy: "use \(Self.grammar)")
    }
    if text == "sim" {
      self = .simulated
    } else if text.hasPrefix("unix:") {
      let path = String(text.dropFirst(5))
      guard !path.isEmpty else { throw bad("unix: needs a path, e.g. unix:\(HostSocketPath.standard)") }
      self = .unixSocket(path: path)
    } else if text.hasPrefix("shm:") {
      let path = String(text.dropFirst(4))
      guard !path.isEmpty else { throw bad("shm: needs a path, e.g. shm:/dev/shm/vgpu0") }
      self = .sharedMemory(path: path)
    } else {
      var rest = Substring(text)
      var backend: PCIBackend? = nil
      if let colon = rest.firstIndex(of: ":"), let b = PCIBackend(rawValue: String(rest[..<colon])) {
        backend = b
        rest = rest[rest.index(after: colon)...]
      }
      guard Self.looksLikePCIAddress(rest) else {
        throw bad(
          rest.contains(":") && rest.contains(".")
            ? "not a PCI address (bus 00-ff, device 00-1f, function 0-7)" : "not a device name")
      }
      self = .pci(address: String(rest), backend: backend)
    }
  }

  /// `[DDDD:]BB:DD.F` in hex with the fields in range (domain up to 8 digits, bus 2,
  /// device at most 1f, function 0-7): a name that cannot be a PCI function is a usage
  /// error, not a device that is missing.
  static func looksLikePCIAddress(_ s: Substring) -> Bool {
    let parts = s.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2 || parts.count == 3, let last = parts.last else { return false }
    let slot = last.split(separator: ".", omittingEmptySubsequences: false)
    let fields = parts.dropLast() + slot
    guard slot.count == 2, fields.allSatisfy({ !$0.isEmpty && $0.count <= 8 && $0.allSatisfy(\.isHexDigit) }) else {
      return false
    }
    let bus = parts[parts.count - 2]
    guard bus.count <= 2, slot[0].count <= 2, let device = Int(slot[0], radix: 16), device <= 0x1f,
      slot[1].count == 1, let function = Int(slot[1], radix: 16), function <= 7
    else { return false }
    return true
  }

  public var description: String {
    switch self {
    case .simulated: "sim"
    case .unixSocket(let path): "unix:\(path)"
    case .sharedMemory(let path): "shm:\(path)"
    case .pci(let address, let backend): backend.map { "\($0.rawValue):\(address)" } ?? address
    }
  }
}
