import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// An address in device memory, as `alloc` hands it out (a `CUdeviceptr`).
public struct DevicePointer: Hashable, Sendable, CustomStringConvertible {
  public var address: UInt64
  public init(_ address: UInt64) { self.address = address }
  public static func + (p: DevicePointer, offset: Int) -> DevicePointer { DevicePointer(p.address + UInt64(offset)) }
  public var description: String { "0x" + String(address, radix: 16) }
}

/// A loaded module, a function in one, a stream, an event: device handles.
public struct ModuleHandle: Hashable, Sendable {
  public var raw: UInt64
  /// A handle as the device gave it (e.g. one a C caller kept).
  public init(raw: UInt64) { self.raw = raw }
}
public struct FunctionHandle: Hashable, Sendable {
  public var raw: UInt64
  /// Bytes of packed parameters the function takes.
  public var parameterSize: Int
  /// Where each parameter goes in the packed buffer, as the device reported
  /// it (nil from a device without feature `functionInfo`).
  public var layout: ParameterLayout?
  /// What the device reported about the function with its layout (threads
  /// per block, static shared/local/const bytes, registers, PTX and binary
  /// versions): what cuFuncGetAttribute answers. Nil with `layout`.
  public var info: FunctionInfo?
  public init(raw: UInt64, parameterSize: Int, layout: ParameterLayout? = nil, info: FunctionInfo? = nil) {
    self.raw = raw
    self.parameterSize = parameterSize
    self.layout = layout
    self.info = info
  }
  public static func == (a: Self, b: Self) -> Bool { a.raw == b.raw }
  public func hash(into h: inout Hasher) { h.combine(raw) }
}
public struct EventHandle: Hashable, Sendable {
  public var raw: UInt64
  public init(raw: UInt64) { self.raw = raw }
}
/// A stream: device work in order, bound to one of this client's queue pairs.
public struct StreamHandle: Hashable, Sendable {
  public var raw: UInt64
  /// Which of the client's queue pairs (0..<info.queuePairs) carries it.
  public var queuePair: Int
}

/// Launch geometry, as CUDA's `gridDim` / `blockDim` (defined with the launch command).
public typealias Dimensions = VGPUProtocol.Dimensions

/// What the device said about itself when it was opened.
public struct DeviceInfo: Sendable {
  public var spec: DeviceSpec
  public var identity: DeviceIdentity
  public var protocolVersion: (major: UInt16, minor: UInt16)
  public var features: FeatureBits
  /// Queue pairs this client holds, and how many the device has.
  public var queuePairs: Int
  public var queuePairsOnDevice: Int
  public var queueDepth: Int
  public var stagingSlotSize: Int
  public var stagingSlotsPerQueue: Int
  /// How the BAR was reached: `vfio (type1v2 container /dev/vfio/vfio, group
  /// /dev/vfio/7), BAR 2: 16 MiB`, `sysfs (...resource2) ...`, `shm (...)`, `sim (...)`.
  /// For a bare PCI address it also says why the others were not chosen.
  public var backend: String
  /// How the client wakes the device and is woken by it: futexes on one
  /// host; across a VM, the ivshmem doorbell and MSI-X interrupts (or polling).
  public var wakeups: String
}

/// How to open a device.
public struct OpenOptions: Sendable {
  /// The deadline for the handshake and for each command's completion.
  public var timeout: Duration = .seconds(2)
  /// Queue pairs to claim; more let more threads submit at once, fewer
  /// leave more for other processes (a mediator has 8 by default).
  public var queuePairs = 2
  /// What opens `sim`, the in-process device: the guest library carries no
  /// device model, so a program that wants one supplies it (the
  /// `VGPUSimulator` module's `OpenOptions.simulator(_:)`). Nil: `sim` is refused.
  public var simulator: (@Sendable () throws(VGPUError) -> any InProcessDevice)?
  /// Where PCI backends look for /sys, /dev and /proc and how they make
  /// system calls: the real machine, or (tests) a fixture tree and fakes.
  var host = HostEnvironment.live
  public init() {}

  var timeoutNanoseconds: UInt64 {
    UInt64(timeout.components.seconds) * 1_000_000_000 + UInt64(timeout.components.attoseconds / 1_000_000_000)
  }
}

/// A device model run inside the client's process (the `sim` device): a BAR
/// in this process's memory, served by a thread, stopped when the client closes.
public protocol InProcessDevice: AnyObject, Sendable {
  /// The BAR the device serves.
  var region: MappedRegion { get }
  /// Stops serving; guests waiting see the device stop.
  func stop()
}

/// A vGPU, opened: the client API that the shims and `pcitool` use.
///
/// Thread-safe: each queue pair has its own lock and a thread takes whichever
/// is free, so many threads submit at once without a global lock. Every call
/// is synchronous: when it returns, the device has done the work.
public final class Device: @unchecked Sendable {
  public let info: DeviceInfo
  let region: MappedRegion
  let registers: RegisterBlock
  let layout: BARLayout
  private let queues: [QueuePairLock]
  /// The in-process device behind `sim`, kept alive with the client.
  private let simulated: (any InProcessDevice)?
  private let wakeups: Wakeups
  /// Beats for this client's pairs while the device needs it (2.3, a VM's mediator).
  private let heartbeat: HeartbeatThread?
  private let closed = Atomic<Bool>(false)
  /// Round-robin counter placing new streams on queue pairs.
  let nextStream = Atomic<Int>(0)
  /// Host memory shared with the device (2.4): copies from and to it take one copy.
  let hostShares = Mutex(SharedHostRanges())
  /// How many ranges `hostShares` holds, written under its lock: a copy
  /// looks it up only when there are some.
  let hostSharesHeld = Atomic<Int>(0)
  /// The page-locked window (2.4, feature `hostWindow`), checked at open:
  /// its BAR offset and size; size 0 = none.
  let window: (offset: UInt64, size: UInt64)

  /// A queue pair behind its lock, taken only through `withLock` and
  /// `withLockIfAvailable`, which tell ThreadSanitizer about the lock
  /// (`ThreadSanitizer`: a contended Mutex's hand-over is invisible to it).
  final class QueuePairLock: @unchecked Sendable {
    private let mutex: Mutex<GuestQueuePair>
    init(_ qp: consuming GuestQueuePair) { mutex = Mutex(qp) }

    @inline(__always)
    func withLock<R: Sendable, E: Error>(_ body: (inout GuestQueuePair) throws(E) -> R) throws(E) -> R {
      try mutex.withLock { (qp: inout GuestQueuePair) throws(E) -> R in
        ThreadSanitizer.acquired(self)
        defer { ThreadSanitizer.releasing(self) }
        return try body(&qp)
      }
    }

    @inline(__always)
    func withLockIfAvailable<R: Sendable, E: Error>(_ body: (inout GuestQueuePair) throws(E) -> R) throws(E) -> R? {
      try mutex.withLockIfAvailable { (qp: inout GuestQueuePair) throws(E) -> R in
        ThreadSanitizer.acquired(self)
        defer { ThreadSanitizer.releasing(self) }
        return try body(&qp)
      }
    }
  }

  /// Opens the device `spec` names (see ``DeviceSpec``) and handshakes with it.
  public static func open(_ spec: String, options: OpenOptions = .init()) throws(VGPUError) -> Device {
    let parsed = try DeviceSpec(parsing: spec)
    switch parsed {
    case .simulated:
      guard let simulator = options.simulator else {
        throw VGPUError(
          .unavailable, "open", device: spec,
          found: "sim is an in-process reference device, and this program carries none",
          remedy:
            "run the device in vgpu-mediator and open unix:PATH, or (a Swift program) set OpenOptions.simulator from VGPUSimulator"
        )
      }
      let device = try simulator()
      return try Device(
        spec: parsed, region: device.region, simulated: device, options: options,
        how: "sim (in-process reference device)")
    case .unixSocket(let path):
      let region = try MediatorSocket.connect(path, spec: spec, timeoutNanoseconds: options.timeoutNanoseconds)
      // The socket vouches for the mediator (its pid may be another namespace's).
      return try Device(spec: parsed, region: region, options: options, how: "unix (a BAR of its own from \(path))")
    case .sharedMemory(let path):
      let region: MappedRegion
      do throws(RegionError) { region = try MappedRegion.sharedFile(path) } catch {
        let remedy =
          switch error.errno {
          case ENOENT where MediatorSocket.servesHostsInstead(of: path):
            "vgpu-mediator serves host processes on a Unix socket now: VGPU_DEVICE=unix:\(MediatorSocket.socketNear(path))"
          case ENOENT:
            "start the mediator: vgpu-mediator --vm --path \(path) (a VM's BAR file), or use unix:SOCKET on this host"
          case EACCES, EPERM: "run as a user allowed to read and write \(path) (its group, or root)"
          default: "check that \(path) is a vGPU BAR file served by vgpu-mediator"
          }
        throw VGPUError(.unavailable, "open", device: spec, found: error.description, remedy: remedy)
      }
      return try Device(
        spec: parsed, region: region, options: options, servedByAnotherProcess: true,
        how: "shm (shared-memory file \(path))")
    case .pci(let address, let backend):
      let mapped = try PCISlot(address, host: options.host).map(spec: spec, backend: backend)
      let (region, how) = (mapped.region, mapped.how)
      // The mediator serving the BAR runs on the VM's host: its pid means nothing here.
      do throws(VGPUError) {
        return try Device(spec: parsed, region: region, options: options, how: how, wakeups: mapped.wakeups)
      } catch {
        var e = error
        e.found = "BAR mapped through \(how); \(e.found)"
        if error.kind == .protocolViolation && registersAreBlank(region) {
          e.remedy =
            "the shared memory is blank: start vgpu-mediator on the VM's host on the file behind this ivshmem device (QEMU's -object memory-backend-file,mem-path=...)"
        }
        throw e
      }
    }
  }

  /// The wake-up mechanism and, with interrupts, which vectors carry this client's pairs.
  private static func describe(_ w: Wakeups, _ queues: [QueuePairLock]) -> String {
    let notes = queues.compactMap { q in q.withLock { $0.interruptNote } }
    let wired = queues.compactMap { q in q.withLock { $0.completionEventFD >= 0 ? $0.index : nil } }
    var s = w.description
    if !wired.isEmpty {
      s += "; this client: vector\(wired.count == 1 ? "" : "s") \(wired.map(String.init).joined(separator: ", "))"
    }
    if let note = notes.first { s += "; but \(note), so it polls" }
    return s
  }

  /// Claims up to `count` free queue pairs; with none free, waits for one
  /// (its process exits or closes) until `deadline`, then fails saying who
  /// holds them. Polls with backoff, 1 to 16 ms: a freed pair has no wake-up
  /// a guest can sleep on, and a crowd of waiters must not eat the cores.
  private static func claimWaiting(
    upTo count: Int, region: MappedRegion, layout: BARLayout, pid: UInt32, deadline: UInt64, timeout: Duration,
    fail: (VGPUError.Kind, String, String) -> VGPUError
  ) throws(VGPUError) -> [Int] {
    let pairs = Int(layout.queuePairs)
    let view = { QueuePairView(base: region.base, layout: layout, index: $0) }
    var pause: UInt32 = 1000
    while true {
      let claimed = QueuePairClaim.claim(upTo: count, of: pairs, pid: pid, view: view)
      if !claimed.isEmpty { return claimed }
      if vgpu_monotonic_ns() >= deadline { break }
      usleep(pause)
      pause = min(pause * 2, 16_000)
    }
    // Who holds them, as the BAR says (guest-written words: a hint, not proof).
    var holders: [UInt32: Int] = [:]
    for qp in 0..<pairs { holders[view(qp).ownerPID, default: 0] += 1 }
    let named = holders.sorted { $0.key < $1.key }.prefix(16).map { owner, n in
      (owner == 0 ? "0 (a claim in progress)" : owner == pid ? "\(owner) (this process)" : "\(owner)")
        + (n > 1 ? " ×\(n)" : "")
    }
    let more = holders.count > 16 ? " and \(holders.count - 16) more" : ""
    let onlyMine = holders.keys.allSatisfy { $0 == pid }
    throw fail(
      .unavailable,
      "all \(pairs) queue pairs are in use (held by pid \(named.joined(separator: ", "))\(more)) and none was freed within \(timeout)",
      onlyMine
        ? "this process holds them all: close a device it opened, or start vgpu-mediator with more --queue-pairs"
        : "end or close one of those clients, start vgpu-mediator with more --queue-pairs, or wait longer (VGPU_TIMEOUT=SECONDS)"
    )
  }

  /// No device has written the register block yet (all zero).
  private static func registersAreBlank(_ region: MappedRegion) -> Bool {
    let words = min(region.size, Register.blockSize) / 4
    return (0..<words).allSatisfy { region.base.load(fromByteOffset: $0 * 4, as: UInt32.self) == 0 }
  }

  /// Attaches to a BAR that a device serves: checks registers and layout,
  /// claims queue pairs and sends `identify` on each.
  ///
  /// - Parameter servedByAnotherProcess: the BAR names the serving process's pid
  ///   (the mediator); refuse it at once if that process is gone, rather than
  ///   time out on a file that nobody serves.
  init(
    spec: DeviceSpec, region: MappedRegion, simulated: (any InProcessDevice)? = nil, options: OpenOptions,
    servedByAnotherProcess: Bool = false, how: String? = nil, wakeups: Wakeups = .sameHost
  ) throws(VGPUError) {
    let name = spec.description
    func fail(_ kind: VGPUError.Kind, _ found: String, _ remedy: String) -> VGPUError {
      VGPUError(kind, "open", device: name, found: found, remedy: remedy)
    }
    let timeout = options.timeoutNanoseconds
    guard region.size >= Register.blockSize else {
      throw fail(
        .protocolViolation, "the BAR has \(region.size) bytes, fewer than the 4096 of the registers", "is this a vGPU?")
    }
    let registers = RegisterBlock(region.base)
    let magic = registers.load(Register.magic)
    guard magic == vgpuMagic else {
      throw fail(
        .protocolViolation,
        "magic is 0x\(String(magic, radix: 16)), expected 0x\(String(vgpuMagic, radix: 16)) ('VGPU')",
        "this is not a vGPU BAR, or its device has not initialised it yet")
    }
    let version = registers.load(Register.version)
    guard version >> 16 == UInt32(ProtocolVersion.major) else {
      throw fail(
        .versionMismatch,
        "the device speaks protocol \(version >> 16).\(version & 0xffff), this client \(ProtocolVersion.major).\(ProtocolVersion.minor)",
        "update the guest library or the device to the same major version")
    }
    if servedByAnotherProcess {
      let server = registers.load(Register.devicePID)
      guard server != 0 else {
        throw fail(
          .unavailable, "no mediator serves it (the file is left from one that stopped)",
          "start vgpu-mediator --path \(region.origin)")
      }
      guard kill(pid_t(server), 0) == 0 || errno == EPERM else {
        throw fail(
          .unavailable, "its mediator, pid \(server), is not running", "start vgpu-mediator --path \(region.origin)")
      }
    }
    // A device may still be starting: wait up to the status grace for it to
    // say it is ready. The status word is writable by every client, so past
    // the grace it is not believed alone: the claim below proves whether the
    // device serves (a device that accepts a claim is serving, whatever the
    // word says), and its failure is reported with the status seen.
    let started = vgpu_monotonic_ns()
    var claimDeadline = started + timeout
    var statusSeen = registers.status
    while !(statusSeen.contains(.ready) && !statusSeen.contains(.stopping)) {
      let waited = vgpu_monotonic_ns() &- started
      wakeups.wakeDevice(registers)
      if waited >= min(GuestQueuePair.statusGraceNanoseconds, timeout) {
        // A device reporting an error gets one more grace to answer, not the whole deadline.
        if !statusSeen.intersection([.fatal, .needsReset]).isEmpty {
          claimDeadline = min(claimDeadline, vgpu_monotonic_ns() + GuestQueuePair.statusGraceNanoseconds)
        }
        break
      }
      usleep(1000)
      statusSeen = registers.status
    }
    let notAccepted = { (qp: UInt32) -> VGPUError in
      let status = registers.status
      let hex = "status 0x\(String(status.rawValue, radix: 16))"
      if status.contains(.fatal) {
        return fail(
          .unavailable, "the device reports a fatal error (\(hex)) and did not accept a queue pair", "restart it")
      }
      if status.contains(.needsReset) {
        return fail(
          .unavailable, "the device needs a reset (\(hex)) and did not accept a queue pair",
          "reset it (write 1 to its control register), then reopen")
      }
      if !status.contains(.ready) || status.contains(.stopping) {
        return fail(
          .unavailable,
          "the device is not ready (\(hex)) and did not accept queue pair \(qp) within \(options.timeout)",
          "start the device or mediator")
      }
      return fail(
        .timeout, "the device did not accept queue pair \(qp) within \(options.timeout)",
        "the device (or the mediator serving it) is not answering; check that it runs")
    }
    let layout: BARLayout
    do throws(LayoutError) { layout = try BARLayout(reading: registers, size: region.size) } catch {
      throw fail(.protocolViolation, "its \(error)", "the device's layout is broken; report it")
    }
    let identity = DeviceIdentity(reading: registers)
    var offered = FeatureBits(rawValue: registers.load(Register.features))
    var window: (offset: UInt64, size: UInt64) = (0, 0)
    // A window of no bytes is none, whatever the bit says.
    if registers.load(Register.hostWindowSize) == 0 { offered.remove(.hostWindow) }
    if offered.contains(.hostWindow) {
      // Untrusted like the layout: whole pages past it, inside the BAR.
      let (offset, size) = (registers.load(Register.hostWindowOffset), registers.load(Register.hostWindowSize))
      let bar = UInt64(region.size)
      guard offset % ProtocolLimits.hostWindowAlignment == 0, size % ProtocolLimits.hostWindowAlignment == 0,
        offset >= layout.regionSize,
        offset <= bar, size <= bar - offset
      else {
        throw fail(
          .protocolViolation,
          "its page-locked window (offset \(offset), \(size) bytes) is not whole pages between the layout's end (\(layout.regionSize)) and the BAR's (\(bar))",
          "the device's window registers are broken; report it")
      }
      window = (offset, size)
    }
    let wakeups = wakeups.restricted(to: offered, deviceVectors: registers.load(Register.ivshmemVectors))

    // Claim queue pairs: free → claiming (ours), then the device makes them active.
    let pid = UInt32(bitPattern: getpid())
    let claimed = try Self.claimWaiting(
      upTo: max(1, options.queuePairs), region: region, layout: layout, pid: pid, deadline: claimDeadline,
      timeout: options.timeout, fail: fail)
    // A pair freed late still gets its grace to be accepted.
    claimDeadline = max(claimDeadline, vgpu_monotonic_ns() &+ min(timeout, GuestQueuePair.statusGraceNanoseconds))
    // A device that cannot see this process (a VM's mediator) asks for a
    // heartbeat: it starts before the first identify announces it, so the
    // device's count of silence never starts before the first beat.
    var heartbeat =
      offered.contains(.guestHeartbeat)
      ? HeartbeatThread(
        views: claimed.map { QueuePairView(base: region.base, layout: layout, index: $0) }, pid: pid) : nil
    let identify = Command.Identify(
      guestFeatures: heartbeat != nil ? FeatureBits.all.union(.guestHeartbeat) : FeatureBits.all
    ).entry
    func handBack() {
      heartbeat?.stop()
      for q in claimed { QueuePairClaim.release(QueuePairView(base: region.base, layout: layout, index: q)) }
    }
    wakeups.wakeDevice(registers)
    var queues: [QueuePairLock] = []
    var features = offered
    // Whether the device watches any of the pairs' heartbeats (agreed in its identify).
    var watched = false
    for qp in claimed {
      let view = QueuePairView(base: region.base, layout: layout, index: qp)
      guard QueuePairClaim.awaitAcceptance(view, deadline: claimDeadline, poll: { usleep(50) }) else {
        handBack()
        throw notAccepted(UInt32(qp))
      }
      // Across a VM (a PCI device) the device's CPU numbers are the host's.
      let sameHost: Bool
      if case .pci = spec { sameHost = false } else { sameHost = true }
      var pair = GuestQueuePair(
        view: view, registers: registers, layout: layout, base: region.base, timeoutNanoseconds: timeout,
        deviceName: name,
        serverPID: servedByAnotherProcess ? Int32(bitPattern: registers.load(Register.devicePID)) : 0,
        serverSocket: MediatorSocket.socket(of: region), wakeups: wakeups, sameHost: sameHost)
      do throws(VGPUError) {
        let c = try pair.execute(identify, "identify")
        let both = offered.intersection(Command.Identify.Reply(c).features)
        watched = watched || both.contains(.guestHeartbeat)
        features = features.intersection(both)
        pair.deviceExplainsFailures = both.contains(.kernelImages)
        pair.acceptsCoalescedCompletions = both.contains(.coalescedCompletions)
      } catch {
        handBack()
        throw error
      }
      queues.append(QueuePairLock(pair))
    }
    if !watched {
      heartbeat?.stop()
      heartbeat = nil
    }
    self.heartbeat = heartbeat
    self.window = window
    self.region = region
    self.registers = registers
    self.layout = layout
    self.queues = queues
    self.simulated = simulated
    self.wakeups = wakeups
    self.info = DeviceInfo(
      spec: spec, identity: identity, protocolVersion: (UInt16(version >> 16), UInt16(version & 0xffff)),
      features: features, queuePairs: queues.count, queuePairsOnDevice: Int(layout.queuePairs),
      queueDepth: Int(layout.depth), stagingSlotSize: Int(layout.stagingSlotSize),
      stagingSlotsPerQueue: Int(layout.slotsPerQueue), backend: how ?? "\(region.origin)",
      wakeups: Self.describe(wakeups, queues))
  }

  deinit { close() }

  /// The process that opened the device. After a fork the child is another
  /// process: the queue pairs it inherited are the parent's and in use there.
  public let openedBy = getpid()

  /// For a forked child: lets go of the parent's device without touching its
  /// queue pairs (closing them would take them from under the parent). The
  /// child opens a device of its own.
  public func abandonAfterFork() {
    closed.store(true, ordering: .releasing)
  }

  /// Gives the queue pairs back; the device reclaims their memory and handles.
  /// Safe to call twice. A simulated device stops with its client.
  public func close() {
    guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
    // No beat after the pairs are handed back: one could land on a pair the
    // device has given to another process meanwhile.
    heartbeat?.stop()
    let deadline = vgpu_monotonic_ns() + 2_000_000_000
    for q in queues {
      let view = q.withLock { $0.view }
      QueuePairClaim.release(view)
      wakeups.wakeDevice(registers)
      while view.state == QueuePairState.closing.rawValue && registers.status.contains(.ready)
        && vgpu_monotonic_ns() < deadline
      {
        usleep(50)
      }
    }
    simulated?.stop()
  }

  // MARK: Choosing a queue pair

  /// Runs `body` on a free queue pair: this thread's usual one if free, else
  /// any free one, else waits for the usual one.
  @inline(__always)
  func withQueuePair<R: Sendable>(_ body: (inout GuestQueuePair) throws(VGPUError) -> R) throws(VGPUError) -> R {
    if closed.load(ordering: .relaxed) {
      throw VGPUError(
        .closed, "use the device", device: info.spec.description, found: "it was closed", remedy: "open it again")
    }
    try refuseIfLost()
    let n = queues.count
    // Fibonacci hashing spreads thread ids (addresses, MiB apart) over the pairs.
    let home = Int(((UInt(pthread_self()) &* 0x9E37_79B9_7F4A_7C15) >> 40) % UInt(n))
    for i in 0..<n {
      let q = queues[(home + i) % n]
      if let r = try q.withLockIfAvailable({ (qp: inout GuestQueuePair) throws(VGPUError) -> R in try body(&qp) }) {
        return r
      }
    }
    return try queues[home].withLock { (qp: inout GuestQueuePair) throws(VGPUError) -> R in try body(&qp) }
  }

  func withQueuePair<R: Sendable>(_ index: Int, _ body: (inout GuestQueuePair) throws(VGPUError) -> R) throws(VGPUError)
    -> R
  {
    try refuseIfLost()
    return try queues[index].withLock { (qp: inout GuestQueuePair) throws(VGPUError) -> R in try body(&qp) }
  }

  /// Its pairs were taken back by the device for a silent heartbeat (2.3):
  /// then no command may go into rings that may be another process's now.
  @inline(__always)
  private func refuseIfLost() throws(VGPUError) {
    if let heartbeat, !closed.load(ordering: .relaxed), heartbeat.lost {
      throw VGPUError(
        .unavailable, "use the device", device: info.spec.description,
        found:
          "the device took back this process's queue pairs: their heartbeat stopped for more than \(GuestHeartbeat.silenceNanoseconds / 1_000_000) ms (was the process stopped, or its VM paused?); their memory and handles are gone",
        remedy: "close the device and open it again")
    }
  }

  /// Queue pair `index` if given (a stream's), else any free one.
  @inline(__always)
  func withQueuePair<R: Sendable>(_ index: Int?, _ body: (inout GuestQueuePair) throws(VGPUError) -> R)
    throws(VGPUError) -> R
  {
    if let index { return try withQueuePair(index, body) }
    return try withQueuePair(body)
  }
}
