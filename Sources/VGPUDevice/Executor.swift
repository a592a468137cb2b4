import CSupport
import DeviceAccess
import Synchronization
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Where device addresses start: nonzero, so NULL is never valid, and in the
/// range CUDA's unified addressing hands out, so they look familiar.
public let deviceAddressBase: UInt64 = 0x7000_0000_0000

/// A command the device refuses: its status and the 1-based argument at fault.
struct Refusal: Error {
  var status: Status
  var detail: UInt32 = 0
  var result0: UInt64 = 0
  var result1: UInt64 = 0
}

/// The device's private view of one queue pair. Nothing here is read back
/// from the BAR: the guest can only move the doorbells, which are checked.
struct ServedQueuePair {
  var active = false
  var pid: UInt32 = 0
  /// The owner's start time (/proc/PID/stat field 22), so a reused pid is not mistaken for it.
  var ownerStart: UInt64 = 0
  var head: UInt32 = 0
  var completionTail: UInt32 = 0
  var phase: UInt16 = 1
  var identified = false
  var faulted = false
  /// Its owner's exit is reported by the OwnerWatch (else found by scanning /proc).
  var watched = false
  var stats = StatisticsRecord()
}

/// Handles are `kind << 56 | generation << 32 | slot + 1`: never 0, and a
/// stale or forged handle fails the generation or kind check.
struct HandleTable<Value> {
  struct Slot {
    var generation: UInt32 = 0
    var value: Value?
    var pid: UInt32 = 0
    var queuePair: Int = 0
  }
  let kind: UInt64
  var slots: [Slot] = []
  var free: [Int] = []

  init(kind: UInt8) { self.kind = UInt64(kind) }

  mutating func insert(_ value: Value, pid: UInt32, queuePair: Int) -> UInt64 {
    let index: Int
    if let f = free.popLast() {
      index = f
    } else {
      slots.append(Slot())
      index = slots.count - 1
    }
    slots[index].generation = (slots[index].generation &+ 1) & 0xff_ffff
    slots[index].value = value
    slots[index].pid = pid
    slots[index].queuePair = queuePair
    return kind << 56 | UInt64(slots[index].generation) << 32 | UInt64(index + 1)
  }

  /// The slot of a live handle owned by `pid`, or the refusal to send.
  func slot(_ handle: UInt64, pid: UInt32, argument: UInt32) throws(Refusal) -> Int {
    let index = Int(handle & 0xffff_ffff) - 1
    guard handle >> 56 == kind, index >= 0, index < slots.count, slots[index].value != nil,
      UInt64(slots[index].generation) == (handle >> 32) & 0xff_ffff
    else { throw Refusal(status: .invalidHandle, detail: argument) }
    guard slots[index].pid == pid else { throw Refusal(status: .permissionDenied, detail: argument) }
    return index
  }

  mutating func remove(at index: Int) {
    slots[index].value = nil
    free.append(index)
  }

  /// Drops every handle created through queue pair `qp`.
  mutating func removeAll(queuePair qp: Int) {
    for i in slots.indices where slots[i].value != nil && slots[i].queuePair == qp { remove(at: i) }
  }
}

/// The device's state and its command interpreter. Runs on the serving
/// thread, under `lock` (which tests and `stop` also take). The lock is what
/// keeps accesses exclusive, so Swift's dynamic checks on the properties
/// (swift_beginAccess: ~250 instructions a NOP in callgrind) are off.
final class Executor: @unchecked Sendable {
  let lock = Mutex(())
  let base: UnsafeMutableRawPointer
  let layout: BARLayout
  let registers: RegisterBlock
  let views: [QueuePairView]
  let memory: DeviceMemory
  @exclusivity(unchecked) var allocator: DeviceAllocator
  @exclusivity(unchecked) var served: [ServedQueuePair]
  /// The queue pairs accepted and not yet released, for the quick pass.
  @exclusivity(unchecked) var activeQueuePairs: [Int] = []
  @exclusivity(unchecked) var modules = HandleTable<ModuleImage>(kind: 1)
  @exclusivity(unchecked) var functions = HandleTable<BuiltinKernel>(kind: 2)
  @exclusivity(unchecked) var streams = HandleTable<Void>(kind: 3)
  @exclusivity(unchecked) var events = HandleTable<UInt64>(kind: 4)  // the time it was recorded, 0 = never
  @exclusivity(unchecked) var deviceTotals = StatisticsRecord()
  @exclusivity(unchecked) var progress: UInt64 = 0
  let mask: UInt32
  /// When each queue pair was first seen claiming without a pid (0 = not).
  @exclusivity(unchecked) var claimingSince: [UInt64]
  /// Told of attachments, releases, reclaims and faults (never per command).
  var onEvent: (@Sendable (DeviceEvent) -> Void)?
  /// Reports owners' exits as they happen (local owners, where pidfds work).
  @exclusivity(unchecked) var ownerWatch: OwnerWatch?
  /// Across a VM boundary: raises the guests' MSI-X vectors (set before serving).
  @exclusivity(unchecked) var ivshmem: IvshmemServer?

  init(base: UnsafeMutableRawPointer, layout: BARLayout, memory: DeviceMemory, registers: RegisterBlock) {
    self.base = base
    self.layout = layout
    self.registers = registers
    self.memory = memory
    self.allocator = DeviceAllocator(capacity: memory.size)
    self.views = (0..<Int(layout.queuePairs)).map { QueuePairView(base: base, layout: layout, index: $0) }
    self.served = Array(repeating: ServedQueuePair(), count: Int(layout.queuePairs))
    self.mask = layout.depth - 1
    self.claimingSince = Array(repeating: 0, count: Int(layout.queuePairs))
  }

  var memoryInUse: (allocated: UInt64, total: UInt64) { (allocator.allocatedBytes, memory.size) }

  // MARK: Serving

  /// One pass: over every queue pair (claims, closes, reset), or — `quick` —
  /// over the active ones' rings only, which is what a busy device does
  /// between full passes. Returns whether anything happened.
  func servePass(quick: Bool = false) -> Bool {
    if quick {
      var worked = false
      for qp in activeQueuePairs where !served[qp].faulted { worked = serve(qp) || worked }
      return worked
    }
    var worked = false
    if registers.load32(Register.control) == ControlRequest.reset.rawValue {
      resetAll()
      worked = true
    }
    for qp in views.indices {
      let view = views[qp]
      switch view.state {
      case QueuePairState.claiming.rawValue:
        // The guest writes its pid right after claiming; accept once it is there.
        if views[qp].ownerPID != 0 {
          accept(qp)
          worked = true
        }
      case QueuePairState.closing.rawValue:
        release(qp)
        worked = true
      case QueuePairState.active.rawValue:
        if served[qp].active && !served[qp].faulted { worked = serve(qp) || worked }
      default:
        break
      }
    }
    return worked
  }

  func hasPendingWork() -> Bool {
    if registers.load32(Register.control) == ControlRequest.reset.rawValue { return true }
    for qp in views.indices {
      let state = views[qp].state
      if state == QueuePairState.claiming.rawValue && views[qp].ownerPID != 0 { return true }
      if state == QueuePairState.closing.rawValue { return true }
      // Work is pending only if it can be done: commands waiting and room for their completions.
      if state == QueuePairState.active.rawValue && served[qp].active && !served[qp].faulted
        && views[qp].submissionTail != served[qp].head
        && (served[qp].completionTail + 1) & mask != views[qp].completionHead
      {
        return true
      }
    }
    return false
  }

  private func accept(_ qp: Int) {
    views[qp].resetRings()
    let pid = views[qp].ownerPID
    served[qp] = ServedQueuePair(active: true, pid: pid, ownerStart: ProcessLiveness.startTime(pid) ?? 0)
    served[qp].watched = ownerWatch?.watch(queuePair: qp, pid: pid) ?? false
    activeQueuePairs.append(qp)
    claimingSince[qp] = 0
    deviceTotals.queuePairs += 1
    views[qp].setState(.active)
    onEvent?(.attached(queuePair: qp, pid: pid))
  }

  /// Closes a queue pair: its allocations and handles are reclaimed.
  func release(_ qp: Int, because reason: DeviceEvent.ReleaseReason = .closed) {
    let pid = served[qp].pid
    if served[qp].watched { ownerWatch?.unwatch(queuePair: qp) }
    for a in allocator.allocations where a.owner == UInt32(qp) { scrub(a.offset, a.size) }
    let (count, bytes) = allocator.freeAll(owner: UInt32(qp))
    deviceTotals.bytesAllocated -= bytes
    if served[qp].active || reason != .closed {
      onEvent?(.released(queuePair: qp, pid: pid, reason: reason, allocations: count, bytes: bytes))
    }
    claimingSince[qp] = 0
    modules.removeAll(queuePair: qp)
    functions.removeAll(queuePair: qp)
    streams.removeAll(queuePair: qp)
    events.removeAll(queuePair: qp)
    served[qp] = ServedQueuePair()
    activeQueuePairs.removeAll { $0 == qp }
    views[qp].resetRings()
    views[qp].setOwnerPID(0)
    views[qp].setState(.free)
  }

  private func resetAll() {
    for qp in views.indices where views[qp].state != QueuePairState.free.rawValue || served[qp].active {
      release(qp, because: .reset)
    }
    registers.store32(Register.control, ControlRequest.none.rawValue)
    registers.store32(Register.status, DeviceStatus.ready.rawValue)
  }

  private func serve(_ qp: Int) -> Bool {
    let view = views[qp]
    let tail = view.submissionTail
    guard tail <= mask else {
      fault(qp, .tailOutOfRange)
      return true
    }
    var s = served[qp]
    var posted = false
    // Busy time is taken per pass over the ring, from its first command
    // that does work: two clock reads cost more than a NOP.
    var started: UInt64 = 0
    while s.head != tail {
      let completionHead = view.completionHead
      guard completionHead <= mask else {
        served[qp] = s
        fault(qp, .headOutOfRange)
        return true
      }
      // Full: the guest has not consumed enough completions yet.
      if (s.completionTail + 1) & mask == completionHead { break }
      let entry = view.readSubmission(at: s.head)
      s.head = (s.head + 1) & mask
      if started == 0 && entry.opcode != Opcode.nop.rawValue { started = vgpu_monotonic_ns() }
      var c = execute(entry, qp: qp, state: &s)
      s.stats.commands &+= 1
      deviceTotals.commands &+= 1
      c.commandID = entry.commandID
      c.sqHead = UInt16(s.head)
      c.phase = s.phase
      view.postCompletion(c, at: s.completionTail)
      s.completionTail = (s.completionTail + 1) & mask
      if s.completionTail == 0 { s.phase ^= 1 }
      posted = true
    }
    if started != 0 {
      let busy = vgpu_monotonic_ns() &- started
      s.stats.busyNanoseconds &+= busy
      deviceTotals.busyNanoseconds &+= busy
    }
    served[qp] = s
    if posted {
      // Store (completion) then load (guestWaiting) needs a full barrier:
      // the guest does the mirror image, so one of us sees the other.
      vgpu_fence_seqcst()
      if view.guestWaiting { wakeGuest(qp) }
    }
    return posted
  }

  /// Wakes whoever waits on queue pair `qp`: a futex sleeper on this host,
  /// and through ivshmem the guest's vector for the pair.
  func wakeGuest(_ qp: Int) {
    views[qp].wakeGuest()
    ivshmem?.signalGuests(vector: qp)
  }

  private func fault(_ qp: Int, _ f: QueuePairFault) {
    served[qp].faulted = true
    views[qp].setFault(f)
    wakeGuest(qp)
    onEvent?(.faulted(queuePair: qp, pid: served[qp].pid, fault: f))
  }

  /// Releases the queue pairs of processes that ended without closing them,
  /// and claims abandoned before the claimer wrote its pid. Called a few
  /// times a second, so a killed client's memory returns within a second.
  func reapDeadOwners(now: UInt64) {
    for qp in views.indices {
      let state = views[qp].state
      if served[qp].active && state != QueuePairState.free.rawValue {
        let s = served[qp]
        if !s.watched && !ProcessLiveness.isAlive(s.pid, startTime: s.ownerStart) { release(qp, because: .ownerExited) }
      } else if state == QueuePairState.claiming.rawValue && views[qp].ownerPID == 0 {
        if claimingSince[qp] == 0 {
          claimingSince[qp] = now
        } else if now &- claimingSince[qp] > 1_000_000_000 {
          release(qp, because: .abandonedClaim)
        }
      }
    }
  }

  /// Releases the queue pairs whose owners the OwnerWatch saw exit (checked
  /// once more in /proc; one still alive goes back to being scanned).
  func reapExited() {
    guard let watch = ownerWatch, watch.hasExits else { return }
    for qp in watch.takeExited() where served[qp].active {
      if ProcessLiveness.isAlive(served[qp].pid, startTime: served[qp].ownerStart) {
        served[qp].watched = false
      } else {
        release(qp, because: .ownerExited)
      }
    }
  }

  /// Whether anything needs looking at while idle: owners only /proc can
  /// tell about, or a claim still without its pid.
  var needsPolling: Bool {
    for qp in views.indices {
      if served[qp].active && !served[qp].watched { return true }
      if !served[qp].active && views[qp].state == QueuePairState.claiming.rawValue { return true }
    }
    return false
  }

  // MARK: Commands

  func execute(_ e: SubmissionEntry, qp: Int, state s: inout ServedQueuePair) -> CompletionEntry {
    do throws(Refusal) {
      guard e.flags == 0, e.reserved == 0 else { throw Refusal(status: .invalidValue, detail: 0) }
      guard let op = Opcode(rawValue: e.opcode) else { throw Refusal(status: .invalidOpcode) }
      if op != .identify && op != .nop && !s.identified { throw Refusal(status: .notInitialized) }
      switch op {
      case .nop:
        return CompletionEntry(commandID: 0, status: .success)
      case .identify:
        let guest = UInt32(truncatingIfNeeded: e.a0)
        guard guest >> 16 == UInt32(ProtocolVersion.major) else {
          throw Refusal(status: .versionMismatch, detail: 1, result1: UInt64(ProtocolVersion.packed))
        }
        s.identified = true
        let features = FeatureBits.all.rawValue & e.a1
        return CompletionEntry(
          commandID: 0, status: .success, result0: features, result1: UInt64(ProtocolVersion.packed))
      case .memoryInfo:
        return CompletionEntry(commandID: 0, status: .success, result0: allocator.freeBytes, result1: memory.size)
      case .alloc:
        return try alloc(e, qp: qp, state: &s)
      case .free:
        let offset = try deviceOffset(e.a0, argument: 1)
        guard let a = allocator.allocation(containing: offset, length: 1), a.offset == offset else {
          throw Refusal(status: .invalidAddress, detail: 1)
        }
        guard served[Int(a.owner)].pid == s.pid else { throw Refusal(status: .permissionDenied, detail: 1) }
        guard let freed = try? allocator.free(offset: offset, owner: nil) else {
          throw Refusal(status: .invalidAddress, detail: 1)
        }
        scrub(freed.offset, freed.size)
        if Int(freed.owner) == qp {
          s.stats.bytesAllocated -= freed.size
        } else {
          served[Int(freed.owner)].stats.bytesAllocated -= freed.size
        }
        deviceTotals.bytesAllocated -= freed.size
        return CompletionEntry(commandID: 0, status: .success, result0: freed.size)
      case .copyToDevice, .copyFromDevice:
        let length = e.a2
        let device = try deviceRange(e.a0, length, pid: s.pid, argument: 1)
        let staging = try stagingRange(e.a1, length, qp: qp, argument: 2)
        if op == .copyToDevice {
          // A whole slot is part of a large copy: write around the cache.
          // (Measured with pcitool bench, alternating: H2D 256 MiB 9.2 GB/s
          // with streaming stores, 6.9 without.)
          if length >= 64 << 10 {
            vgpu_copy_nontemporal(device, staging, Int(length))
          } else {
            device.copyMemory(from: staging, byteCount: Int(length))
          }
        } else {
          staging.copyMemory(from: device, byteCount: Int(length))
        }
        countCopy(length, &s)
        return CompletionEntry(commandID: 0, status: .success, result0: length)
      case .copyDeviceToDevice:
        let length = e.a2
        let dst = try deviceRange(e.a0, length, pid: s.pid, argument: 1)
        let src = try deviceRange(e.a1, length, pid: s.pid, argument: 2)
        copyInChunks(dst, src, Int(length))
        countCopy(length, &s)
        return CompletionEntry(commandID: 0, status: .success, result0: length)
      case .memset:
        return try memset(e, state: &s)
      case .moduleLoad:
        let staging = try stagingRange(e.a1, e.a2, qp: qp, argument: 2)
        do throws(ModuleImageError) {
          let image = try ModuleImage(parsing: UnsafeRawBufferPointer(start: staging, count: Int(e.a2)))
          return CompletionEntry(
            commandID: 0, status: .success, result0: modules.insert(image, pid: s.pid, queuePair: qp))
        } catch {
          throw Refusal(status: .invalidImage, detail: UInt32(clamping: error.line))
        }
      case .moduleUnload:
        let slot = try modules.slot(e.a0, pid: s.pid, argument: 1)
        modules.remove(at: slot)
        return CompletionEntry(commandID: 0, status: .success)
      case .getFunction:
        let slot = try modules.slot(e.a0, pid: s.pid, argument: 1)
        guard e.a2 > 0, e.a2 <= 256 else { throw Refusal(status: .invalidValue, detail: 3) }
        let staging = try stagingRange(e.a1, e.a2, qp: qp, argument: 2)
        let name = String(decoding: UnsafeRawBufferPointer(start: staging, count: Int(e.a2)), as: UTF8.self)
        guard let kernel = modules.slots[slot].value?.kernels.first(where: { $0.rawValue == name }) else {
          throw Refusal(status: .notFound, detail: 3)
        }
        return CompletionEntry(
          commandID: 0, status: .success, result0: functions.insert(kernel, pid: s.pid, queuePair: qp),
          result1: UInt64(kernel.parameterBufferSize))
      case .launch:
        return try launch(e, qp: qp, state: &s)
      case .streamCreate:
        return CompletionEntry(commandID: 0, status: .success, result0: streams.insert((), pid: s.pid, queuePair: qp))
      case .streamDestroy:
        streams.remove(at: try streams.slot(e.a0, pid: s.pid, argument: 1))
        return CompletionEntry(commandID: 0, status: .success)
      case .streamSynchronize:
        // Commands run in order and to completion: a stream's work is done when this runs.
        if e.a0 != 0 { _ = try streams.slot(e.a0, pid: s.pid, argument: 1) }
        return CompletionEntry(commandID: 0, status: .success)
      case .eventCreate:
        return CompletionEntry(commandID: 0, status: .success, result0: events.insert(0, pid: s.pid, queuePair: qp))
      case .eventDestroy:
        events.remove(at: try events.slot(e.a0, pid: s.pid, argument: 1))
        return CompletionEntry(commandID: 0, status: .success)
      case .eventRecord:
        let slot = try events.slot(e.a0, pid: s.pid, argument: 1)
        if e.a1 != 0 { _ = try streams.slot(e.a1, pid: s.pid, argument: 2) }
        events.slots[slot].value = vgpu_monotonic_ns()
        return CompletionEntry(commandID: 0, status: .success)
      case .eventQuery:
        _ = try events.slot(e.a0, pid: s.pid, argument: 1)
        return CompletionEntry(commandID: 0, status: .success)
      case .eventElapsed:
        let start = events.slots[try events.slot(e.a0, pid: s.pid, argument: 1)].value ?? 0
        let end = events.slots[try events.slot(e.a1, pid: s.pid, argument: 2)].value ?? 0
        guard start != 0 else { throw Refusal(status: .notReady, detail: 1) }
        guard end != 0 else { throw Refusal(status: .notReady, detail: 2) }
        return CompletionEntry(commandID: 0, status: .success, result0: end >= start ? end - start : 0)
      case .statistics:
        return try statistics(e, qp: qp, state: s)
      case .processes:
        return try processes(e, qp: qp, state: s)
      }
    } catch {
      return CompletionEntry(
        commandID: 0, status: error.status, result0: error.result0, result1: error.result1, detail: error.detail)
    }
  }

  /// Freed memory must not carry one process's data to the next: whole pages
  /// go back to the OS (and read as zero), the partial pages at the ends are zeroed.
  func scrub(_ offset: UInt64, _ size: UInt64) {
    let page = memory.pageSize
    let first = (offset + page - 1) / page * page
    let last = (offset + size) / page * page
    guard first < last else {
      Glibc.memset(memory.base + Int(offset), 0, Int(size))
      return
    }
    Glibc.memset(memory.base + Int(offset), 0, Int(first - offset))
    Glibc.memset(memory.base + Int(last), 0, Int(offset + size - last))
    memory.discard(offset: first, length: last - first)
  }

  /// Long operations run in chunks of this size, telling waiting guests after
  /// each that the device is working (the progress register), so that their
  /// deadlines measure silence, not the size of the job.
  static let chunk = 64 << 20

  /// Bumps the progress register: "still working on your command".
  @inline(__always) func tick() {
    progress &+= 1
    registers.store64(Register.progress, progress)
  }

  /// memmove, in chunks when the ranges do not overlap (they rarely do).
  func copyInChunks(_ dst: UnsafeMutableRawPointer, _ src: UnsafeMutableRawPointer, _ count: Int) {
    guard dst + count <= src || src + count <= dst else {
      memmove(dst, src, count)
      return
    }
    var done = 0
    while done < count {
      let n = min(Self.chunk, count - done)
      memcpy(dst + done, src + done, n)
      done += n
      tick()
    }
  }

  /// Fills `bytes` with a 1-, 2- or 4-byte pattern at libc speed (a debug
  /// build's element loop would be 100× slower): the first bytes element by
  /// element, the rest by copying what is already filled, doubling each time.
  func fill(_ p: UnsafeMutableRawPointer, pattern: UInt64, width: Int, bytes: Int) {
    if width == 1 {
      var done = 0
      while done < bytes {
        let n = min(Self.chunk, bytes - done)
        Glibc.memset(p + done, Int32(truncatingIfNeeded: pattern & 0xff), n)
        done += n
        tick()
      }
      return
    }
    let seed = min(bytes, 4096)
    for i in stride(from: 0, to: seed, by: width) {
      if width == 2 {
        (p + i).storeBytes(of: UInt16(truncatingIfNeeded: pattern), as: UInt16.self)
      } else {
        (p + i).storeBytes(of: UInt32(truncatingIfNeeded: pattern), as: UInt32.self)
      }
    }
    var filled = seed
    while filled < bytes {
      let n = min(filled, bytes - filled, Self.chunk)
      memcpy(p + filled, p, n)
      filled += n
      if n == Self.chunk { tick() }
    }
  }

  private func countCopy(_ length: UInt64, _ s: inout ServedQueuePair) {
    s.stats.copies &+= 1
    s.stats.bytesCopied &+= length
    deviceTotals.copies &+= 1
    deviceTotals.bytesCopied &+= length
  }

  private func alloc(_ e: SubmissionEntry, qp: Int, state s: inout ServedQueuePair) throws(Refusal) -> CompletionEntry {
    let alignment = e.a1 == 0 ? DeviceAllocator.granularity : e.a1
    do throws(AllocationError) {
      let a = try allocator.allocate(e.a0, alignment: alignment, owner: UInt32(qp))
      s.stats.bytesAllocated += a.size
      s.stats.allocations &+= 1
      deviceTotals.bytesAllocated += a.size
      deviceTotals.allocations &+= 1
      return CompletionEntry(commandID: 0, status: .success, result0: deviceAddressBase + a.offset, result1: a.size)
    } catch {
      switch error {
      case .outOfMemory(_, let free, let largest):
        throw Refusal(status: .outOfMemory, detail: 1, result0: free, result1: largest)
      case .invalidAlignment: throw Refusal(status: .invalidValue, detail: 2)
      default: throw Refusal(status: .invalidValue, detail: 1)
      }
    }
  }

  private func memset(_ e: SubmissionEntry, state s: inout ServedQueuePair) throws(Refusal) -> CompletionEntry {
    let width = e.a2
    guard width == 1 || width == 2 || width == 4 else { throw Refusal(status: .invalidValue, detail: 3) }
    let (bytes, overflow) = e.a3.multipliedReportingOverflow(by: width)
    guard !overflow else { throw Refusal(status: .invalidValue, detail: 4) }
    let p = try deviceRange(e.a0, bytes, pid: s.pid, argument: 1)
    fill(p, pattern: e.a1, width: Int(width), bytes: Int(bytes))
    return CompletionEntry(commandID: 0, status: .success, result0: bytes)
  }

  private func launch(_ e: SubmissionEntry, qp: Int, state s: inout ServedQueuePair) throws(Refusal) -> CompletionEntry
  {
    let slot = try functions.slot(e.a0, pid: s.pid, argument: 1)
    guard let kernel = functions.slots[slot].value else { throw Refusal(status: .invalidHandle, detail: 1) }
    if e.a6 != 0 { _ = try streams.slot(e.a6, pid: s.pid, argument: 7) }
    let grid = (UInt64(e.a1 & 0xffff_ffff), e.a1 >> 32, UInt64(e.a2 & 0xffff_ffff))
    let block = (e.a2 >> 32, UInt64(e.a3 & 0xffff_ffff), e.a3 >> 32)
    // CUDA limits (CUDA C Programming Guide, "Compute Capabilities", table 21):
    // grid x < 2^31, y and z < 65536; at most 1024 threads per block, block z ≤ 64.
    guard grid.0 >= 1, grid.0 < 1 << 31, grid.1 >= 1, grid.1 < 65536, grid.2 >= 1, grid.2 < 65536 else {
      throw Refusal(status: .invalidValue, detail: 2)
    }
    // Each dimension is bounded first, so the products below cannot overflow.
    guard (1...1024).contains(block.0), (1...1024).contains(block.1), (1...64).contains(block.2),
      block.0 * block.1 * block.2 <= 1024
    else {
      throw Refusal(status: .invalidValue, detail: 3)
    }
    let shared = e.a4 & 0xffff_ffff
    guard shared <= 228 << 10 else { throw Refusal(status: .invalidValue, detail: 5) }  // H100: 228 KiB per SM
    let parameterLength = e.a4 >> 32
    guard parameterLength == UInt64(kernel.parameterBufferSize) else {
      throw Refusal(
        status: .invalidParameters, detail: 5, result0: UInt64(kernel.parameterBufferSize), result1: parameterLength)
    }
    let params = try stagingRange(e.a5, parameterLength, qp: qp, argument: 6)
    // Below 2^31 · 2^16 · 2^16 · 2^10 = 2^73: saturate rather than trap.
    let (gridThreads, o1) = (grid.0 * grid.1).multipliedReportingOverflow(by: grid.2)
    let (threads, o2) = gridThreads.multipliedReportingOverflow(by: block.0 * block.1 * block.2)
    do throws(KernelError) {
      try kernel.run(
        parameters: UnsafeRawBufferPointer(start: params, count: Int(parameterLength)),
        threads: o1 || o2 ? UInt64.max : threads,
        memory: ResolvingMemory(executor: self, pid: s.pid))
    } catch {
      switch error {
      case .parameterSize(let expected, let got):
        throw Refusal(status: .invalidParameters, detail: 5, result0: UInt64(expected), result1: UInt64(got))
      case .invalidPointer(let index, _, _):
        throw Refusal(status: .invalidAddress, detail: UInt32(100 + index))
      case .dimensionsOverflow:
        throw Refusal(status: .invalidValue, detail: 6)
      }
    }
    s.stats.launches &+= 1
    deviceTotals.launches &+= 1
    return CompletionEntry(commandID: 0, status: .success)
  }

  private func statistics(_ e: SubmissionEntry, qp: Int, state s: ServedQueuePair) throws(Refusal) -> CompletionEntry {
    guard let scope = StatisticsScope(rawValue: e.a0) else { throw Refusal(status: .invalidValue, detail: 1) }
    guard e.a2 >= UInt64(StatisticsRecord.size) else { throw Refusal(status: .invalidValue, detail: 3) }
    let out = try stagingRange(e.a1, UInt64(StatisticsRecord.size), qp: qp, argument: 2)
    var record: StatisticsRecord
    switch scope {
    case .queuePair:
      record = s.stats
      record.queuePairs = 1
    case .process:
      record = StatisticsRecord()
      for i in served.indices where served[i].active && served[i].pid == s.pid {
        record = record + (i == qp ? s.stats : served[i].stats)
        record.queuePairs += 1
      }
    case .device:
      record = deviceTotals
      record.bytesAllocated = allocator.allocatedBytes
      record.queuePairs = UInt64(served.filter(\.active).count)
    }
    out.storeBytes(of: record, as: StatisticsRecord.self)
    return CompletionEntry(commandID: 0, status: .success, result0: UInt64(StatisticsRecord.size))
  }

  /// One ProcessRecord per pid among the active queue pairs, in the order of
  /// each pid's first queue pair, as many as `a2` bytes hold. Allocates
  /// nothing: a pid is new at its first queue pair, and its record sums the
  /// pairs from there on (at most 256² steps).
  private func processes(_ e: SubmissionEntry, qp: Int, state s: ServedQueuePair) throws(Refusal) -> CompletionEntry {
    let size = UInt64(ProcessRecord.size)
    guard e.a2 >= size, e.a2 % size == 0 else { throw Refusal(status: .invalidValue, detail: 3) }
    let out = try stagingRange(e.a1, e.a2, qp: qp, argument: 2)
    let capacity = e.a2 / size
    // The submitting pair's counters are in `s` until this command completes.
    func pair(_ i: Int) -> ServedQueuePair { i == qp ? s : served[i] }
    var written: UInt64 = 0
    var total: UInt64 = 0
    for i in served.indices where pair(i).active {
      let pid = pair(i).pid
      if served[..<i].indices.contains(where: { pair($0).active && pair($0).pid == pid }) { continue }
      total += 1
      guard written < capacity else { continue }
      var record = ProcessRecord(pid: pid)
      for j in i..<served.count where pair(j).active && pair(j).pid == pid {
        let stats = pair(j).stats
        record.queuePairs += 1
        record.bytesAllocated &+= stats.bytesAllocated
        record.launches &+= stats.launches
        record.busyNanoseconds &+= stats.busyNanoseconds
      }
      (out + Int(written * size)).storeBytes(of: record, as: ProcessRecord.self)
      written += 1
    }
    return CompletionEntry(commandID: 0, status: .success, result0: written, result1: total)
  }

  // MARK: Validation

  private func deviceOffset(_ address: UInt64, argument: UInt32) throws(Refusal) -> UInt64 {
    guard address >= deviceAddressBase, address - deviceAddressBase < memory.size else {
      throw Refusal(status: .invalidAddress, detail: argument)
    }
    return address - deviceAddressBase
  }

  /// `length` bytes at device `address`, inside one live allocation of process `pid`.
  func deviceRange(_ address: UInt64, _ length: UInt64, pid: UInt32, argument: UInt32) throws(Refusal)
    -> UnsafeMutableRawPointer
  {
    let offset = try deviceOffset(address, argument: argument)
    guard let a = allocator.allocation(containing: offset, length: max(length, 1)) else {
      throw Refusal(status: .invalidAddress, detail: argument)
    }
    guard served[Int(a.owner)].pid == pid else { throw Refusal(status: .permissionDenied, detail: argument) }
    return memory.base + Int(offset)
  }

  /// `length` bytes at staging address `address`, inside queue pair `qp`'s window.
  private func stagingRange(_ address: UInt64, _ length: UInt64, qp: Int, argument: UInt32) throws(Refusal)
    -> UnsafeMutableRawPointer
  {
    let start = layout.staging(qp)
    guard address >= start, length <= layout.stagingPerQueue, address - start <= layout.stagingPerQueue - length else {
      throw Refusal(status: .invalidStaging, detail: argument)
    }
    return base + Int(address)
  }
}

/// Kernel memory: device addresses checked against the launching process's allocations.
struct ResolvingMemory: KernelMemory {
  unowned(unsafe) let executor: Executor
  let pid: UInt32

  func resolve(_ address: UInt64, byteCount: UInt64) -> UnsafeMutableRawPointer? {
    try? executor.deviceRange(address, byteCount, pid: pid, argument: 0)
  }
}

extension ModuleImageError {
  /// The line at fault (0 when the whole image is), sent back as the completion's detail.
  var line: Int {
    switch self {
    case .tooLarge: 0
    case .notUTF8(let l), .badMagic(let l, _), .unsupportedVersion(let l, _), .syntax(let l, _),
      .unknownKernel(let l, _), .duplicateKernel(let l, _, _), .tooManyKernels(let l, _):
      l
    }
  }
}
