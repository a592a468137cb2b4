import CSupport
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// QEMU's inter-VM shared-memory device, as its guest sees it
/// (QEMU docs/specs/ivshmem-spec.txt): BAR 0 holds four 32-bit registers,
/// BAR 1 the MSI-X table (ivshmem-doorbell only), BAR 2 the shared memory.
public enum Ivshmem {
  /// BAR 0 register offsets (ivshmem-spec.txt, "The ivshmem PCI device's guest interface").
  public static let interruptMask = 0x00
  public static let interruptStatus = 0x04
  /// This guest's peer id (read-only); 0 or -1 when there is no server.
  public static let ivPosition = 0x08
  /// Write `peer << 16 | vector` to make `peer`'s eventfd `vector` readable.
  public static let doorbell = 0x0c

  /// The peer id the vGPU's device (the mediator, acting as ivshmem server)
  /// gives itself, and the vector it listens on: guests ring `0 << 16 | 0`.
  public static let devicePeer: UInt16 = 0
  public static let deviceVector: UInt16 = 0

  /// The doorbell register value that raises `vector` at `peer`.
  @inline(__always) public static func doorbellValue(peer: UInt16, vector: UInt16) -> UInt32 {
    UInt32(peer) << 16 | UInt32(vector)
  }
}

/// The ivshmem server that `ivshmem-doorbell` guests connect to through a
/// QEMU chardev (`-chardev socket,path=SOCK,id=ID -device
/// ivshmem-doorbell,chardev=ID,vectors=N`). It hands QEMU the shared-memory
/// fd and the eventfds that carry wake-ups both ways, following
/// ivshmem-spec.txt ("Client-Server Protocol"): each message is a
/// little-endian int64, some with one fd (SCM_RIGHTS) —
/// version 0; the client's id; -1 with the shared memory; then, per peer,
/// that peer's id once per eventfd (one per vector), its own id last.
///
/// The server is peer 0 with one eventfd, ``hostEventFD``: a guest's
/// doorbell write `0 << 16 | 0` makes it readable, so the device sleeps on it.
/// Each guest gets `vectors` eventfds; writing eventfd `v` raises the
/// guest's MSI-X vector `v` (``signalGuests(vector:)``).
///
/// One thread accepts clients and notices them leave (a VM powered off);
/// nothing blocks the device thread but a short mutex.
public final class IvshmemServer: @unchecked Sendable {
  public let socketPath: String
  public let vectors: Int
  /// Peer 0's eventfd: readable after a guest rang the device's doorbell.
  public let hostEventFD: Int32
  private let sharedMemoryFD: Int32
  private let listener: Int32
  private let wake: Int32  // eventfd that stops the thread
  private let log: @Sendable (String) -> Void
  private struct Peer {
    var id: UInt16
    var socket: Int32
    var eventFDs: [Int32]
  }
  private let peers = Mutex<[Peer]>([])
  /// Guests one server admits at once. A BAR is one VM's (the VM is the
  /// tenant, PROTOCOL.md §23): QEMU connects once per ivshmem device, and a
  /// restart or migration briefly twice. Each guest costs `vectors` eventfds
  /// and every connect sends every other guest's (ivshmem-spec.txt), so
  /// without a bound a local process connecting in a loop would make the
  /// server's work and descriptors grow with the square of its connects.
  public static let maxPeers = 16
  /// How long one message to a guest may wait for room in its socket: a
  /// guest that stops reading (QEMU reads its chardev as messages come) is
  /// dropped instead of holding the server thread, and with it every
  /// other guest's connect and disconnect.
  static let sendTimeout = timeval(tv_sec: 2, tv_usec: 0)
  private var thread: pthread_t?
  /// Doorbells a guest rang, and interrupts sent to guests (for logs and tests).
  private let counters = Mutex<(doorbells: UInt64, interrupts: UInt64)>((0, 0))

  /// Listens on `socketPath` (replacing a stale socket file, refusing a live
  /// server's) and serves `sharedMemoryFD` with `vectors` interrupt vectors
  /// per guest — QEMU's `vectors=` must be at least this.
  public init(
    socketPath: String, sharedMemoryFD: Int32, vectors: Int, log: @escaping @Sendable (String) -> Void = { _ in }
  ) throws(AccessError) {
    let attempted = "serve ivshmem clients on \(socketPath)"
    guard (1...Int(VGPU_MAX_FDS)).contains(vectors) else {
      throw AccessError(.failed, attempted: attempted, found: "\(vectors) vectors; 1 to \(VGPU_MAX_FDS) are possible")
    }
    let l = vgpu_path_listen(socketPath)
    guard l >= 0 else {
      throw AccessError(
        .busy, attempted: attempted,
        found: -l == EADDRINUSE
          ? "another server listens there"
          : -l == ENOTSOCK ? "it exists and is not a socket (left as it is)" : "could not listen",
        remedy: -l == EADDRINUSE
          ? "stop the other mediator, or use another socket path" : -l == ENOTSOCK ? "name another socket path" : nil,
        errno: Errno(-l))
    }
    let host = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    let stop = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    guard host >= 0, stop >= 0 else {
      let e = errno
      close(l)
      if host >= 0 { close(host) }
      throw AccessError(.failed, attempted: attempted, found: "eventfd failed", errno: Errno(e))
    }
    self.socketPath = socketPath
    self.sharedMemoryFD = sharedMemoryFD
    self.vectors = vectors
    self.listener = l
    self.hostEventFD = host
    self.wake = stop
    self.log = log
  }

  deinit {
    stop()
    close(hostEventFD)
    close(wake)
  }

  /// Starts the thread that accepts guests.
  public func start() {
    guard thread == nil else { return }
    thread = startThread { self.run() }
    precondition(thread != nil, "pthread_create failed: \(errno)")
  }

  /// Stops accepting, disconnects every guest and removes the socket file.
  public func stop() {
    guard let t = thread else { return }
    thread = nil
    _ = vgpu_eventfd_signal(wake)
    pthread_join(t, nil)
    close(listener)
    unlink(socketPath)
    for peer in peers.withLock({ p in
      defer { p = [] }
      return p
    }) { drop(peer) }
  }

  /// Guests connected now, by peer id.
  public var connectedPeers: [UInt16] { peers.withLock { $0.map(\.id) } }

  public var doorbellsReceived: UInt64 { counters.withLock { $0.doorbells } }
  public var interruptsSent: UInt64 { counters.withLock { $0.interrupts } }

  /// The device thread, after its sleep on ``hostEventFD`` was ended by a doorbell.
  public func countDoorbell() { counters.withLock { $0.doorbells &+= 1 } }

  /// Raises MSI-X vector `vector % vectors` in every connected guest. Called
  /// by the device only when a guest said it sleeps; nothing allocates.
  public func signalGuests(vector: Int) {
    peers.withLock { list in
      for peer in list { _ = vgpu_eventfd_signal(peer.eventFDs[vector % peer.eventFDs.count]) }
      if !list.isEmpty { counters.withLock { $0.interrupts &+= 1 } }
    }
  }

  // MARK: The server thread

  private func run() {
    while true {
      var fds = [
        pollfd(fd: wake, events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
      ]
      let sockets = peers.withLock { $0.map(\.socket) }
      for s in sockets { fds.append(pollfd(fd: s, events: Int16(POLLIN), revents: 0)) }
      if poll(&fds, nfds_t(fds.count), -1) < 0 {
        if errno == EINTR { continue }
        log("ivshmem server stopped: poll failed (\(Errno(errno)))")
        return
      }
      if fds[0].revents != 0 { return }
      if fds[1].revents & Int16(POLLIN) != 0 { accept() }
      // QEMU never writes to the server: readable or hung up means it left.
      for p in fds.dropFirst(2) where p.revents != 0 { disconnect(p.fd) }
    }
  }

  private func accept() {
    let s = Glibc.accept(listener, nil, nil)
    guard s >= 0 else { return }
    _ = fcntl(s, F_SETFD, FD_CLOEXEC)
    var timeout = Self.sendTimeout
    _ = setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var own: [Int32] = []
    var eventFDError: Int32 = 0
    for _ in 0..<vectors {
      let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
      if fd < 0 {
        eventFDError = errno
        break
      }
      own.append(fd)
    }
    let (id, connected) = peers.withLock { list in (Self.freePeerID(taken: list.map(\.id)), list.count) }
    guard let id, own.count == vectors else {
      log(
        connected >= Self.maxPeers
          ? "ivshmem: refused a client: \(connected) guests are connected, the most one server admits (one VM's QEMU, and a second while it restarts)"
          : id == nil
            ? "ivshmem: refused a client: no free peer id"
            : "ivshmem: refused a client: out of eventfds (\(Errno(eventFDError)))")
      own.forEach { close($0) }
      close(s)
      return
    }
    let others = peers.withLock { $0 }
    var ok = true
    for m in Self.setupMessages(
      id: id, sharedMemoryFD: sharedMemoryFD, hostEventFD: hostEventFD, others: others.map { ($0.id, $0.eventFDs) },
      own: own)
    where ok {
      ok = send(s, m.value, fd: m.fd)
    }
    guard ok else {
      log("ivshmem: a client left, or did not read, during set-up")
      own.forEach { close($0) }
      close(s)
      return
    }
    // Tell the guests already there about the new one (guest-to-guest doorbells).
    var unread: [Int32] = []
    for other in others where !own.allSatisfy({ send(other.socket, Int64(id), fd: $0) }) { unread.append(other.socket) }
    peers.withLock { $0.append(Peer(id: id, socket: s, eventFDs: own)) }
    log("ivshmem: guest connected as peer \(id) (\(vectors) vectors)")
    dropUnread(unread)
  }

  /// Disconnects the guests whose sockets took no message within
  /// ``sendTimeout`` (or are gone), telling the others as for any departure.
  private func dropUnread(_ sockets: [Int32]) {
    for socket in sockets {
      log(
        "ivshmem: a guest took no message within \(Self.sendTimeout.tv_sec) s (it does not read its socket, or it left); disconnecting it"
      )
      disconnect(socket)
    }
  }

  private func disconnect(_ socket: Int32) {
    guard
      let peer = peers.withLock({ list -> Peer? in
        guard let i = list.firstIndex(where: { $0.socket == socket }) else { return nil }
        return list.remove(at: i)
      })
    else { return }
    drop(peer)
    let unread = peers.withLock({ $0 }).filter { !send($0.socket, Int64(peer.id)) }.map(\.socket)
    log("ivshmem: guest peer \(peer.id) disconnected")
    dropUnread(unread)
  }

  private func drop(_ peer: Peer) {
    peer.eventFDs.forEach { close($0) }
    close(peer.socket)
  }

  /// The lowest peer id not in `taken` (1...65535; 0 is the device's own),
  /// nil when all are or `limit` guests are connected. Pure, so that it can
  /// be fuzzed against any pattern of guests coming and going
  /// (Fuzz/Sources/ivshmem-messages).
  static func freePeerID(taken: [UInt16], limit: Int = maxPeers) -> UInt16? {
    guard taken.count < limit else { return nil }
    // One pass over the sorted ids (a search of `taken` per candidate was
    // quadratic in the guests connected).
    var id: UInt16 = 1
    for t in taken.sorted() where t >= id {
      guard t == id else { break }
      if id == UInt16.max { return nil }
      id += 1
    }
    return id
  }

  /// What a new guest `id` is sent, in the order QEMU expects
  /// (ivshmem-spec.txt): version 0, its id, -1 with the shared memory, the
  /// device's id with its eventfd, each other guest's id once per eventfd,
  /// and its own id once per eventfd of its own. `fd` is -1 where none goes with it.
  static func setupMessages(
    id: UInt16, sharedMemoryFD: Int32, hostEventFD: Int32, others: [(id: UInt16, eventFDs: [Int32])], own: [Int32]
  ) -> [(value: Int64, fd: Int32)] {
    var messages: [(value: Int64, fd: Int32)] = [(0, -1), (Int64(id), -1), (-1, sharedMemoryFD)]
    messages.append((Int64(Ivshmem.devicePeer), hostEventFD))
    for other in others { for fd in other.eventFDs { messages.append((Int64(other.id), fd)) } }
    for fd in own { messages.append((Int64(id), fd)) }
    return messages
  }

  /// One protocol message: a little-endian int64, with `fd` attached when ≥ 0.
  private func send(_ socket: Int32, _ value: Int64, fd: Int32 = -1) -> Bool {
    var v = value.littleEndian
    return withUnsafeBytes(of: &v) { b in
      var f = fd
      return vgpu_send_fds(socket, b.baseAddress, b.count, &f, fd >= 0 ? 1 : 0) == 0
    }
  }
}
