import CSupport
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Lets several processes use one VFIO device, although a VFIO group opens
/// only once (vfio.rst): the process that opened it listens on an
/// abstract-namespace Unix socket named after the device and hands each
/// process of the same user (or root) a duplicate of the device fd with
/// SCM_RIGHTS — as DPDK passes the group fd to its secondary processes. The
/// receiver maps the BAR from that fd itself; queue pairs are then claimed
/// in the BAR as usual, so the broker assigns nothing else. The grant also
/// says where BAR 0 is (the ivshmem doorbell) and how many MSI-X vectors the
/// holder enabled: the receiver points its own pairs' vectors at its eventfds.
///
/// The listener is a thread started on the first real open, never at load.
/// When its process exits the socket disappears; processes already attached
/// keep their own fd and mapping.
public enum VFIOBroker {
  /// What the broker sends with the fd: where the BAR is in the device fd.
  struct Grant {
    var offset: UInt64
    var size: UInt64
    var pid: UInt32
    var bar: UInt32
    /// BAR 0's offset in the device fd, or UInt64.max when unknown.
    var bar0Offset: UInt64
    var vectors: UInt32
    var reserved: UInt32 = 0

    init(offset: UInt64, size: UInt64, pid: UInt32, bar: UInt32, bar0Offset: UInt64, vectors: UInt32) {
      self.offset = offset
      self.size = size
      self.pid = pid
      self.bar = bar
      self.bar0Offset = bar0Offset
      self.vectors = vectors
    }

    /// The grant in `message` (as another process sent it), checked before
    /// anything is mapped from it: the BAR asked for, a size that can be
    /// mapped, a vector count MSI-X allows. Pure, for Fuzz/Sources/vfio-broker-messages.
    init(decoding message: UnsafeRawBufferPointer, bar: Int, attempted: String) throws(AccessError) {
      guard message.count == MemoryLayout<Grant>.size else {
        throw AccessError(
          .failed, attempted: attempted,
          found: "the broker sent \(message.count) bytes, not a \(MemoryLayout<Grant>.size)-byte grant")
      }
      self = message.loadUnaligned(as: Grant.self)
      // The grant comes from another process: check it before mapping.
      guard self.bar == UInt32(truncatingIfNeeded: bar), size > 0, size <= 1 << 40, vectors <= 2048 else {
        throw AccessError(
          .failed, attempted: attempted, found: "the broker described BAR \(self.bar) of \(size) bytes")
      }
    }
  }

  /// What a process gets from the broker.
  public struct Attachment {
    public var region: MappedRegion
    public var pid: UInt32
    public var bar0Offset: UInt64?
    /// MSI-X vectors the holder enabled (0: none).
    public var vectors: Int
  }

  private static let serving = Mutex<[String: VFIODevice]>([:])

  static func socketName(_ address: String) -> String { "vgpu-vfio-\(address)" }

  /// Starts answering for `device` (once per device and process).
  public static func serve(_ device: VFIODevice, bar: Int, bar0Offset: UInt64? = nil, vectors: Int = 0) {
    let start = serving.withLock { s -> Bool in
      guard s[device.address] == nil else { return false }
      s[device.address] = device
      return true
    }
    guard start, let info = try? device.regionInfo(UInt32(bar)) else { return }
    let listener = vgpu_abstract_listen(socketName(device.address))
    guard listener >= 0 else { return }  // another process already brokers it
    let grant = Grant(
      offset: info.offset, size: info.size, pid: UInt32(getpid()), bar: UInt32(bar), bar0Offset: bar0Offset ?? .max,
      vectors: UInt32(vectors))
    let context = BrokerContext(listener: listener, deviceFD: device.fd, grant: grant)
    if startThread(detached: true, { context.run() }) == nil { close(listener) }
  }

  /// Maps BAR `bar` of `address` through the broker of the process that holds
  /// the device, waiting up to `seconds` for it to listen. Returns the region
  /// (which keeps the device fd) and what the broker said, or an error saying why not.
  public static func attach(_ address: String, bar: Int, seconds: Double) throws(AccessError) -> Attachment {
    let attempted = "get \(address) from the process that holds its VFIO group"
    let deadline = vgpu_monotonic_ns() + UInt64(seconds * 1e9)
    var sock: Int32
    repeat {
      sock = vgpu_abstract_connect(socketName(address))
      if sock >= 0 { break }
      usleep(10_000)
    } while vgpu_monotonic_ns() < deadline
    guard sock >= 0 else {
      throw AccessError(
        .busy, attempted: attempted, found: "no broker answers for \(address) (its holder is not a vGPU client)",
        errno: Errno(-sock))
    }
    defer { close(sock) }
    var message = [UInt8](repeating: 0, count: MemoryLayout<Grant>.size)
    var fd: Int32 = -1
    let rc = message.withUnsafeMutableBytes { vgpu_recv_fd(sock, $0.baseAddress, $0.count, &fd) }
    guard rc == 0, fd >= 0 else {
      throw AccessError(
        .permissionDenied, attempted: attempted,
        found: "the broker refused or sent nothing (it serves only its own user and root)", errno: Errno(-rc))
    }
    let grant: Grant
    do throws(AccessError) {
      grant = try message.withUnsafeBytes { raw in
        Result { () throws(AccessError) in try Grant(decoding: raw, bar: bar, attempted: attempted) }
      }.get()
    } catch {
      close(fd)
      throw error
    }
    let p = mmap(nil, Int(grant.size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(Int64(bitPattern: grant.offset)))
    guard let p, p != MAP_FAILED else {
      let e = errno
      close(fd)
      throw AccessError(
        .notMappable, attempted: attempted, found: "mmap of the device fd failed", errno: Errno(e))
    }
    let region = MappedRegion(
      base: p, size: Int(grant.size), origin: "vfio device fd from pid \(grant.pid)", fileDescriptor: fd,
      mappedRanges: nil, owner: nil, calls: .live)
    return Attachment(
      region: region, pid: grant.pid, bar0Offset: grant.bar0Offset == .max ? nil : grant.bar0Offset,
      vectors: Int(grant.vectors))
  }
}

/// The listener thread's state.
private final class BrokerContext: @unchecked Sendable {
  let listener: Int32
  let deviceFD: Int32
  let grant: VFIOBroker.Grant

  init(listener: Int32, deviceFD: Int32, grant: VFIOBroker.Grant) {
    self.listener = listener
    self.deviceFD = deviceFD
    self.grant = grant
  }

  func run() {
    let me = getuid()
    while true {
      let c = accept(listener, nil, nil)
      if c < 0 {
        if errno == EINTR { continue }
        return
      }
      var pid: UInt32 = 0
      var uid: UInt32 = 0
      // Same user or root only: the fd gives full access to the device.
      if vgpu_peer_credentials(c, &pid, &uid) == 0 && (uid == me || uid == 0) {
        var g = grant
        _ = withUnsafeBytes(of: &g) { vgpu_send_fd(c, $0.baseAddress, $0.count, deviceFD) }
      }
      close(c)
    }
  }
}
