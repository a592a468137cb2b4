import CSupport
import DeviceAccess
import Foundation
import Logging
import Synchronization
import VGPUDevice
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Who may connect to the host socket, by the uid and groups SO_PEERCRED
/// and /proc give (never by anything the client says).
struct AllowList: Sendable {
  var uids: [UInt32]
  var groups: [(name: String, gid: UInt32)]

  /// `uids` and `groupNames` as given (`--allow-uid`, `--allow-group`); with
  /// neither, the mediator's own user, root and group `vgpu` if it exists.
  static func make(uids: [UInt32], groupNames: [String]) throws -> AllowList {
    guard uids.isEmpty && groupNames.isEmpty else {
      var groups: [(String, UInt32)] = []
      for name in groupNames {
        guard let g = getgrnam(name) else {
          throw Failure("--allow-group \(name): no such group (getent group \(name)); create it or name another")
        }
        groups.append((name, g.pointee.gr_gid))
      }
      return AllowList(uids: uids, groups: groups)
    }
    let vgpu = getgrnam("vgpu").map { [("vgpu", $0.pointee.gr_gid)] } ?? []
    return AllowList(uids: Array(Set([UInt32(geteuid()), 0])).sorted(), groups: vgpu)
  }

  /// Why a peer is refused (one line for it to print), or nil if admitted.
  func refusal(pid: UInt32, uid: UInt32, gid: UInt32) -> String? {
    if uids.contains(uid) { return nil }
    if !groups.isEmpty {
      let theirs = Set([gid] + Self.supplementaryGroups(of: pid))
      if groups.contains(where: { theirs.contains($0.gid) }) { return nil }
    }
    return "uid \(uid) (pid \(pid)) is not admitted; vgpu-mediator admits \(summary)"
  }

  /// "uid 0, 1000; group vgpu (998)".
  var summary: String {
    var parts: [String] = []
    if !uids.isEmpty { parts.append("uid \(uids.map(String.init).joined(separator: ", "))") }
    if !groups.isEmpty { parts.append("group \(groups.map { "\($0.name) (\($0.gid))" }.joined(separator: ", "))") }
    return parts.isEmpty ? "no one" : parts.joined(separator: "; ")
  }

  /// Whether others than the mediator's user (and root) may connect: the socket file must let them.
  var admitsOthers: Bool { uids.contains { $0 != geteuid() && $0 != 0 } }

  /// The `Groups:` line of /proc/PID/status (proc(5)): the supplementary groups.
  static func supplementaryGroups(of pid: UInt32) -> [UInt32] {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
      let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") })
    else { return [] }
    return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap {
      UInt32($0)
    }
  }
}

/// Serves host processes on a Unix socket, each with a BAR of its own
/// (docs/PROTOCOL.md §23): a sealed memfd of the configured layout, served
/// by its own `ReferenceDevice` over the mediator's one `SharedExecution`;
/// a process's further connections (its other shims) get the same BAR.
/// A process sees and touches only its own rings, staging and memory; its
/// identity is its socket's SO_PEERCRED and its liveness the socket: when
/// its last connection closes (exit, SIGKILL) everything the process held is
/// released at once.
///
/// At most `maxClients` processes are served at once: a process beyond that
/// is told so (greeting `waiting`, with who holds the places) and admitted
/// when one exits; it gives up at its own open deadline. The limit bounds
/// what the mediator holds per process (a BAR, its serving thread, file
/// descriptors), not a layout: BARs are made on demand.
///
/// One thread polls the listening socket and every client's socket (an idle
/// mediator sleeps in poll(2)); the client devices are served by a
/// `ServingPool` of a few threads, each serving its share of the clients in
/// turn and sleeping on all their BARs' futexes at once while idle
/// (`servingThreads` 0: a thread per client, as before). The shared lock
/// keeps the backend's calls one at a time.
final class HostClientServer: @unchecked Sendable {
  let socketPath: String
  let allow: AllowList
  private let listener: Int32
  /// An eventfd that stops the thread.
  private let wake: Int32
  private let shared: SharedExecution
  private let configuration: ReferenceDeviceConfiguration
  private let log: Logger
  private let onEvent: @Sendable (DeviceEvent) -> Void
  private var thread: pthread_t?
  /// Processes served at once (`--max-clients`).
  let maxClients: Int
  /// The threads that serve the clients' devices; nil: a thread per client.
  private let pool: ServingPool?
  /// The shared serving threads (for their metrics); nil with a thread per client.
  var servingPool: ServingPool? { pool }
  /// Processes that may wait for a place beyond `maxClients`; more are told
  /// at once that the mediator is full (each waiter holds a descriptor).
  var maxWaiting: Int { max(64, maxClients) }

  /// One process: its BAR and device, shared by all its connections (the
  /// shims of one process each connect; they are one tenant). Known by pid
  /// and start time, so that a reused pid is another tenant. `connections`
  /// changes under `state` only.
  private final class Tenant: @unchecked Sendable {
    let pid: UInt32
    let startTime: UInt64
    let uid: UInt32
    let device: ReferenceDevice
    var connections = 0
    init(pid: UInt32, startTime: UInt64, uid: UInt32, device: ReferenceDevice) {
      self.pid = pid
      self.startTime = startTime
      self.uid = uid
      self.device = device
    }
  }
  /// A connection admitted by the allow-list, waiting for a place.
  private struct Waiter {
    var fd: Int32
    var pid: UInt32
    var uid: UInt32
    var startTime: UInt64
  }
  private struct State {
    /// Each connected socket's tenant.
    var clients: [Int32: Tenant] = [:]
    /// Connections waiting for a place, oldest first.
    var waiting: [Waiter] = []
    /// What departed tenants' devices counted, so the totals never go down.
    var retired: DeviceSnapshot?
    /// Each tenant once.
    var tenants: [Tenant] {
      var seen = Set<ObjectIdentifier>()
      return clients.values.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }
  }
  private let state = SanitizerVisibleMutex(State())

  /// Binds `socketPath` (a stale socket file is replaced; one a live mediator
  /// serves is refused), gives it the mode the allow-list needs, and listens.
  init(
    socketPath: String, allow: AllowList, shared: SharedExecution, configuration: ReferenceDeviceConfiguration,
    maxClients: Int, servingThreads: Int, servingPriority: ServingPool.Priority, log: Logger,
    onEvent: @escaping @Sendable (DeviceEvent) -> Void
  ) throws {
    self.socketPath = socketPath
    self.maxClients = maxClients
    self.allow = allow
    self.shared = shared
    self.configuration = configuration
    self.log = log
    self.onEvent = onEvent
    let parent = (socketPath as NSString).deletingLastPathComponent
    if !parent.isEmpty && mkdir(parent, 0o755) != 0 && errno != EEXIST {
      throw Failure(
        "cannot create \(parent) for --socket \(socketPath) (\(String(cString: strerror(errno)))); name a socket in a writable directory"
      )
    }
    // 0660 for the user and the admitted group; anyone may connect (0666)
    // when other users are admitted: the allow-list then decides.
    let mode: UInt32 = allow.admitsOthers ? 0o666 : 0o660
    let fd = vgpu_path_listen_mode(socketPath, 128, mode)
    guard fd >= 0 else {
      if -fd == EADDRINUSE {
        throw Failure("\(socketPath) is served by a running vgpu-mediator; stop it first, or use another --socket")
      }
      if -fd == ENOTSOCK {
        throw Failure(
          "cannot listen on \(socketPath): it exists and is not a socket (left as it is); name another --socket")
      }
      throw Failure(
        "cannot listen on \(socketPath) (\(String(cString: strerror(-fd)))); check the directory's permissions or use another --socket"
      )
    }
    if let group = allow.groups.first, chown(socketPath, uid_t.max, group.gid) != 0 {
      log.warning("cannot give \(socketPath) to group \(group.name): \(String(cString: strerror(errno)))")
    }
    listener = fd
    wake = eventfd(0, Int32(EFD_CLOEXEC))
    guard wake >= 0 else {
      close(fd)
      throw Failure("eventfd failed (\(String(cString: strerror(errno))))")
    }
    pool =
      servingThreads > 0
      ? ServingPool(threads: servingThreads, wait: configuration.wait, priority: servingPriority) : nil
    if let refusal = pool?.priorityRefusal {
      log.warning(
        "the serving threads run at normal priority: \(refusal); run vgpu-mediator as root or with CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE), or drop --serving-priority"
      )
    }
  }

  deinit {
    close(listener)
    close(wake)
  }

  func start() {
    thread = startThread { [self] in serve() }
    precondition(thread != nil, "pthread_create failed: \(errno)")
  }

  /// Stops accepting, releases every client (their devices stop; waiting
  /// clients see the device stop), and removes the socket file.
  func stop() {
    var one: UInt64 = 1
    _ = write(wake, &one, 8)
    if let thread { pthread_join(thread, nil) }
    thread = nil
    // The clients still map their BARs: their devices stop (waiting clients
    // see the status), and their pairs are left as they are, not reset under them.
    for fd in state.withLock({ Array($0.clients.keys) }) {
      disconnect(fd, reason: "the mediator stops", release: false)
    }
    for waiter in state.withLock({ s in
      defer { s.waiting = [] }
      return s.waiting
    }) {
      send(SocketGreeting(status: .failed, reason: "vgpu-mediator stopped while this process waited"), to: waiter.fd)
      close(waiter.fd)
    }
    pool?.stop()
    unlink(socketPath)
  }

  /// All tenants' devices as one, with what departed tenants counted.
  func snapshot() -> DeviceSnapshot {
    let (devices, retired) = state.withLock { s in (s.tenants.map(\.device), s.retired) }
    let parts = devices.map { $0.snapshot() } + (retired.map { [$0] } ?? [])
    return DeviceSnapshot.combining(
      parts, memoryTotal: shared.memoryLimit, busyNanoseconds: shared.backendBusyNanoseconds())
  }

  private func serve() {
    var fds: [pollfd] = []
    // Out of file descriptors, accept(2) fails while the listener stays
    // readable: it is left alone for a while instead of spun on.
    var acceptPausedUntil: UInt64 = 0
    var descriptorsShort = false
    while true {
      let paused = vgpu_monotonic_ns() < acceptPausedUntil
      fds = [
        pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
        pollfd(fd: paused ? -1 : listener, events: Int16(POLLIN), revents: 0),
      ]
      fds += state.withLock { s in
        (Array(s.clients.keys) + s.waiting.map(\.fd)).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
      }
      // No timeout but a paused accept's: an idle mediator sleeps here; stop() writes `wake`.
      let n = poll(&fds, nfds_t(fds.count), paused ? 100 : -1)
      if n < 0 && errno == EINTR { continue }
      guard n >= 0, fds[0].revents == 0 else { return }
      var departed = false
      for p in fds.dropFirst(2) where p.revents != 0 && hasClosed(p) {
        departed = disconnect(p.fd, reason: "its socket closed") || departed
      }
      if departed { admitWaiting() }
      if fds[1].revents & Int16(POLLIN) != 0 {
        let accepted = accept()
        if !accepted && !descriptorsShort {
          // Said once per shortage: it lasts until a process departs.
          log.error(
            "cannot accept clients: out of file descriptors; they wait in the backlog until a process exits. Raise the mediator's limit (ulimit -n, LimitNOFILE=) or lower --max-clients",
            metadata: ["clients": "\(state.withLock { $0.tenants.count })"])
        }
        descriptorsShort = !accepted
        if !accepted { acceptPausedUntil = vgpu_monotonic_ns() + 100_000_000 }
      }
    }
  }

  /// Whether a client's socket closed (POLLHUP, an error, or end of file).
  /// A client has nothing to say on it: bytes it sends are read and dropped.
  private func hasClosed(_ p: pollfd) -> Bool {
    if p.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 { return true }
    var scratch = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
    let n = withUnsafeMutableBytes(of: &scratch) { recv(p.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)
  }

  /// Takes one connection from the backlog: refuses it, makes it wait, or
  /// serves it. False when accept(2) found no descriptor to give (EMFILE, ENFILE).
  private func accept() -> Bool {
    let fd = vgpu_accept_cloexec(listener)
    guard fd >= 0 else { return -fd != EMFILE && -fd != ENFILE }
    var pid: UInt32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    guard vgpu_peer_ucred(fd, &pid, &uid, &gid) == 0 else {
      close(fd)
      return true
    }
    // SO_PEERCRED gives pid 0 for a peer outside this PID namespace's view
    // (unix(7)): such peers could not be told apart, so none is served.
    let invisible =
      pid == 0
      ? "this process's pid is not visible from the mediator's PID namespace; run vgpu-mediator in the host's" : nil
    if let reason = invisible ?? allow.refusal(pid: pid, uid: uid, gid: gid) {
      log.notice(
        "client refused", metadata: ["pid": "\(pid)", "uid": "\(uid)", "gid": "\(gid)", "reason": "\(reason)"])
      send(SocketGreeting(status: .refused, reason: reason), to: fd)
      close(fd)
      return true
    }
    let waiter = Waiter(fd: fd, pid: pid, uid: uid, startTime: ProcessLiveness.startTime(pid) ?? 0)
    // A process already served connects again (its other shim): same tenant, no new place.
    enum Decision {
      case serve
      case wait(String)
      case full(String)
    }
    let decision = state.withLock { s -> Decision in
      let tenants = s.tenants
      if tenants.count < maxClients && s.waiting.isEmpty
        || tenants.contains(where: { $0.pid == pid && $0.startTime == waiter.startTime })
      {
        return .serve
      }
      let full = self.fullness(tenants)
      guard s.waiting.count < maxWaiting else {
        return .full("\(full), and \(s.waiting.count) more processes wait already")
      }
      s.waiting.append(waiter)
      return .wait(full)
    }
    switch decision {
    case .serve:
      admit(waiter)
    case .wait(let full):
      log.notice("client waits for a place", metadata: ["pid": "\(pid)", "uid": "\(uid)", "reason": "\(full)"])
      send(SocketGreeting(status: .waiting, reason: full), to: fd)
    case .full(let full):
      log.warning("client refused: too many wait", metadata: ["pid": "\(pid)", "uid": "\(uid)"])
      send(SocketGreeting(status: .failed, reason: full), to: fd)
      close(fd)
    }
    return true
  }

  /// "serves its maximum of 4 processes (--max-clients 4): pids 10, 11, 12, 13",
  /// as much as a greeting's reason holds.
  private func fullness(_ tenants: [Tenant]) -> String {
    let pids = tenants.map(\.pid).sorted()
    let shown = pids.prefix(12).map(String.init).joined(separator: ", ")
    let more = pids.count > 12 ? " and \(pids.count - 12) more" : ""
    let processes = maxClients == 1 ? "1 process" : "\(maxClients) processes"
    return
      "serves its maximum of \(processes) (--max-clients \(maxClients)): pid\(pids.count == 1 ? "" : "s") \(shown)\(more)"
  }

  /// Gives places freed by departed processes to the oldest waiters (and
  /// serves at once a waiter whose process is served meanwhile).
  private func admitWaiting() {
    while true {
      let next = state.withLock { s -> Waiter? in
        let tenants = s.tenants
        let i = s.waiting.firstIndex { w in
          tenants.contains { $0.pid == w.pid && $0.startTime == w.startTime }
        }
        if let i { return s.waiting.remove(at: i) }
        return tenants.count < maxClients && !s.waiting.isEmpty ? s.waiting.removeFirst() : nil
      }
      guard let next else { return }
      admit(next)
    }
  }

  /// Serves a connection: its process's BAR, made now for a new process.
  private func admit(_ client: Waiter) {
    let (fd, pid, uid, startTime) = (client.fd, client.pid, client.uid, client.startTime)
    let started = vgpu_monotonic_ns()
    let known = state.withLock { s in s.clients.values.first { $0.pid == pid && $0.startTime == startTime } }
    let tenant: Tenant
    if let known {
      tenant = known
    } else {
      do {
        tenant = Tenant(pid: pid, startTime: startTime, uid: uid, device: try makeDevice(for: pid))
      } catch {
        log.error("no BAR for a client", metadata: ["pid": "\(pid)", "error": "\(error)"])
        send(SocketGreeting(status: .failed, reason: "\(error)"), to: fd)
        close(fd)
        return
      }
    }
    let region = tenant.device.region
    guard send(SocketGreeting(status: .accepted, barSize: UInt64(region.size)), to: fd, with: region.fileDescriptor)
    else {
      if known == nil { tenant.device.stop() }
      close(fd)
      return
    }
    state.withLock { s in
      tenant.connections += 1
      s.clients[fd] = tenant
    }
    log.info(
      known == nil ? "client connected" : "client connected again (its process's BAR)",
      metadata: [
        "pid": "\(pid)", "uid": "\(uid)", "bar": "\(region.size) bytes",
        "setupMicroseconds": "\((vgpu_monotonic_ns() - started) / 1000)",
      ])
  }

  /// A BAR of `pid`'s own: a sealed memfd laid out and served by a new device.
  private func makeDevice(for pid: UInt32) throws -> ReferenceDevice {
    let region: MappedRegion
    do {
      region = try MappedRegion.sealedMemory(name: "vgpu-client-\(pid)", size: Int(configuration.layout.regionSize))
    } catch {
      throw Failure(error.description)
    }
    var c = configuration
    c.owner = pid
    let device: ReferenceDevice
    do { device = try ReferenceDevice(configuration: c, region: region, sharing: shared) } catch {
      throw Failure(error.description)
    }
    device.onEvent = onEvent
    device.announce(pid: UInt32(getpid()))
    device.start(in: pool)
    return device
  }

  /// Sends `greeting` (with `fd` when accepted); whether it went whole.
  @discardableResult
  private func send(_ greeting: SocketGreeting, to socket: Int32, with fd: Int32 = -1) -> Bool {
    let bytes = greeting.encoded
    var f = fd
    return bytes.withUnsafeBytes { b in vgpu_send_fds(socket, b.baseAddress, b.count, &f, fd >= 0 ? 1 : 0) == 0 }
  }

  /// Closes one connection (a waiter's, or a tenant's); with a tenant's
  /// last, stops its device, releases everything it held (`release`: the
  /// process is gone), and unmaps its BAR. Whether a tenant departed.
  @discardableResult
  private func disconnect(_ fd: Int32, reason: String, release: Bool = true) -> Bool {
    let (last, wasWaiting) = state.withLock { s -> (Tenant?, Bool) in
      if let i = s.waiting.firstIndex(where: { $0.fd == fd }) {
        s.waiting.remove(at: i)
        return (nil, true)
      }
      guard let tenant = s.clients.removeValue(forKey: fd) else { return (nil, false) }
      tenant.connections -= 1
      return (tenant.connections == 0 ? tenant : nil, false)
    }
    close(fd)
    if wasWaiting { log.info("a waiting client gave up", metadata: ["why": "\(reason)"]) }
    guard let tenant = last else { return false }
    let started = vgpu_monotonic_ns()
    let (bytes, _) = tenant.device.memoryInUse
    tenant.device.stop()
    if release { tenant.device.releaseAll() }
    var final = tenant.device.snapshot()
    // What it counted stays in the totals; its pairs are gone with it.
    final.queuePairs = 0
    state.withLock { s in
      s.retired = DeviceSnapshot.combining([final] + (s.retired.map { [$0] } ?? []), memoryTotal: shared.memoryLimit)
    }
    log.info(
      "client disconnected",
      metadata: [
        "pid": "\(tenant.pid)", "uid": "\(tenant.uid)", "why": "\(reason)",
        "\(release ? "released" : "held")Bytes": "\(bytes)",
        "teardownMicroseconds": "\((vgpu_monotonic_ns() - started) / 1000)",
      ])
    return true
  }
}
