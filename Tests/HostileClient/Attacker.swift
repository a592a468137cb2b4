import CSupport
import DeviceAccess
import Foundation
import TestSupport
import VGPUProtocol

/// The hostile client's attacks, on queue pairs it claims like any client
/// (it never touches other clients' pairs: on a shared BAR file nothing
/// stops that, which is why tenants get BARs of their own).
struct Attacker {
  let region: MappedRegion
  let registers: RegisterBlock
  let layout: BARLayout
  var random: SplitMix
  let marker: [UInt8]

  /// The pair in use, with the guest's cursors for it.
  var view: QueuePairView?
  var tail: SubmissionCursor
  var completions: CompletionCursor
  var inFlight = 0
  /// Addresses the device gave out, to free, copy to and forge near.
  var allocations: [UInt64] = []
  /// The opcode of each command id sent, to know which successes were allocations.
  var opcodes = [UInt8](repeating: 0, count: 1 << 16)

  var sent = 0
  var answered = 0
  var statuses: [UInt16: Int] = [:]
  var faults = 0
  var claims = 0
  var stores = 0
  var rings = 0
  var scans = 0
  var leak: Int?
  /// The last owner pid forged into this process's pair, and when a pair was last claimed under a forged pid.
  var forgedPID: UInt32 = 0
  var lastForgedClaim: UInt64 = 0

  init(region: MappedRegion, registers: RegisterBlock, layout: BARLayout, seed: UInt64, marker: [UInt8]) {
    self.region = region
    self.registers = registers
    self.layout = layout
    self.random = SplitMix(seed)
    self.marker = marker
    tail = SubmissionCursor(depth: layout.depth)
    completions = CompletionCursor(depth: layout.depth)
  }

  var stats: String {
    let refused = statuses.filter { $0.key != CommandStatus.success.rawValue }.sorted { $0.key < $1.key }
      .map { "\(CommandStatus(rawValue: $0.key).map { "\($0)" } ?? "status\($0.key)"):\($0.value)" }
    return
      "stats sent=\(sent) answered=\(answered) succeeded=\(statuses[0] ?? 0) refused=[\(refused.joined(separator: ","))]"
      + " faults=\(faults) claims=\(claims) stores=\(stores) rings=\(rings) scans=\(scans)"
      + " leak=\(leak.map { "yes@0x" + String($0, radix: 16) } ?? "no")"
  }

  mutating func run(until deadline: UInt64, storm: Bool) {
    guard claim() else { fail("no queue pair of \(layout.queuePairs) was free or accepted within 5 s") }
    say("ready")
    var lastReport = vgpu_monotonic_ns()
    var lastScan: UInt64 = 0
    while vgpu_monotonic_ns() < deadline {
      if storm { ringStorm(65_536) } else { attack() }
      let now = vgpu_monotonic_ns()
      if !marker.isEmpty && now &- lastScan > 500_000_000 {
        scan()
        lastScan = now
      }
      if now &- lastReport > 1_000_000_000 {
        say(stats)
        lastReport = now
      }
    }
  }

  // MARK: Queue pairs

  /// Claims a free pair with this process's pid and waits for the device to accept it.
  mutating func claim() -> Bool {
    let deadline = vgpu_monotonic_ns() + 5_000_000_000
    while vgpu_monotonic_ns() < deadline {
      for qp in 0..<Int(layout.queuePairs) {
        let v = QueuePairView(base: region.base, layout: layout, index: qp)
        guard QueuePairClaim.claim(v, pid: UInt32(getpid())) else { continue }
        wakeDevice()
        if QueuePairClaim.awaitAcceptance(v, deadline: vgpu_monotonic_ns() + 2_000_000_000, poll: { usleep(100) }) {
          view = v
          tail = SubmissionCursor(depth: layout.depth)
          completions = CompletionCursor(depth: layout.depth)
          inFlight = 0
          allocations = []
          claims += 1
          identify(v)
          return true
        }
        QueuePairClaim.release(v)
      }
      usleep(10_000)
    }
    return false
  }

  /// Sends identify, as every claim must before the device takes other commands.
  mutating func identify(_ v: QueuePairView) {
    tail.push(QueuePairClaim.identify, into: v)
    v.ringSubmission(tail: tail.index)
    wakeDevice()
    let deadline = vgpu_monotonic_ns() + 2_000_000_000
    while completions.take(from: v) == nil && vgpu_monotonic_ns() < deadline {
      _ = vgpu_futex_wait(v.completionWakeWord, v.completionWakeValue, 1_000_000)
    }
    v.ringCompletion(head: completions.index)
  }

  /// Hands the pair back (the device reclaims what it held) and takes
  /// another. Only a pair still active under this process's pid (or the
  /// last one it forged): one the device took back may be another client's by now.
  mutating func reclaim() {
    if let v = view {
      // A state word this process scribbled is put back by the device's next pass.
      let deadline = vgpu_monotonic_ns() + 200_000_000
      while v.state != QueuePairState.active.rawValue && vgpu_monotonic_ns() < deadline {
        wakeDevice()
        usleep(1000)
      }
      if v.ownerPID == UInt32(getpid()) || v.ownerPID == forgedPID {
        _ = v.exchangeState(from: .active, to: .closing)
      }
    }
    wakeDevice()
    view = nil
    guard claim() else { fail("no queue pair came back within 5 s after closing one") }
  }

  func wakeDevice() {
    _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
    _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
  }

  // MARK: Attacks

  mutating func attack() {
    switch random.next() % 16 {
    case 0: lifecycle()
    case 1: registersAndDoorbells()
    default: commands(Int(random.next() % 8) + 1)
    }
    // Bursts with pauses, so that the attacker does not take a whole core of two.
    if random.next() % 32 == 0 { usleep(200) }
  }

  /// Submits `count` commands (one in four random words, the rest
  /// structured with forged arguments), rings, and collects what comes back.
  mutating func commands(_ count: Int) {
    guard let v = view else { return }
    for _ in 0..<min(count, Int(layout.depth) - 1 - inFlight) {
      var e = random.next() % 4 == 0 ? randomEntry() : structuredEntry()
      e.commandID = UInt16(truncatingIfNeeded: sent)
      opcodes[Int(e.commandID)] = e.opcode
      tail.push(e, into: v)
      inFlight += 1
      sent += 1
    }
    v.ringSubmission(tail: tail.index)
    wakeDevice()
    collect(v, seconds: 2)
  }

  /// Takes completions until none is in flight; a pair faulted, taken
  /// back, or silent that long is handed back and another claimed.
  mutating func collect(_ v: QueuePairView, seconds: Double) {
    let deadline = vgpu_monotonic_ns() + UInt64(seconds * 1e9)
    while inFlight > 0 {
      if let c = completions.take(from: v) {
        inFlight -= 1
        answered += 1
        statuses[c.status, default: 0] += 1
        if c.status == CommandStatus.success.rawValue && opcodes[Int(c.commandID)] == Opcode.alloc.rawValue {
          allocations.append(c.result0)
        }
        continue
      }
      if v.fault != 0 || vgpu_monotonic_ns() > deadline {
        if v.fault != 0 { faults += 1 }
        reclaim()
        return
      }
      _ = vgpu_futex_wait(v.completionWakeWord, v.completionWakeValue, 1_000_000)
    }
    v.ringCompletion(head: completions.index)
  }

  mutating func randomEntry() -> SubmissionEntry {
    var e = SubmissionEntry(opcode: .nop)
    e.opcode = UInt8(truncatingIfNeeded: random.next() % 40)
    e.flags = UInt8(truncatingIfNeeded: random.next())
    e.a0 = address()
    e.a1 = address()
    e.a2 = length()
    e.a3 = random.next()
    e.a4 = random.next()
    e.a5 = random.next()
    e.a6 = random.next()
    return e
  }

  /// A well-formed command of each kind, with arguments that are most often
  /// someone else's: other pairs' staging, addresses near the ones given
  /// out, freed ones, handles guessed.
  mutating func structuredEntry() -> SubmissionEntry {
    switch random.next() % 12 {
    // Allocations up to 16 MiB, at most 32 held: exhausting memory that is
    // rightfully allocated is a quota question, not an attack on the protocol.
    case 0:
      if allocations.count >= 32 { return Command.Free(address: allocations.removeFirst()).entry }
      return Command.Alloc(length: random.next() % (16 << 20) + 1).entry
    case 1: return Command.Free(address: address()).entry
    case 2: return Command.CopyToDevice(device: address(), staging: staging(), length: length()).entry
    case 3: return Command.CopyFromDevice(device: address(), staging: staging(), length: length()).entry
    case 4: return Command.CopyDeviceToDevice(destination: address(), source: address(), length: length()).entry
    case 5:
      return Command.Memset(
        address: address(), value: random.next(), elementSize: 1 << (random.next() % 4), count: length()
      ).entry
    case 6: return Command.ModuleLoad(staging: staging(), length: length()).entry
    case 7: return Command.ModuleUnload(module: random.next() % 64).entry
    case 8:
      return SubmissionEntry(
        opcode: .launch, a0: random.next() % 64, a1: random.next(), a2: random.next(), a3: staging(), a4: length())
    case 9: return SubmissionEntry(opcode: .statistics, a0: random.next() % 4, a1: staging(), a2: length())
    case 10: return SubmissionEntry(opcode: .processes, a1: staging(), a2: length())
    default: return Command.Identify(guestVersion: UInt32(truncatingIfNeeded: random.next())).entry
    }
  }

  /// A device address: one given out, one near it, or any.
  mutating func address() -> UInt64 {
    guard let a = allocations.randomElement(using: &random), random.next() % 4 != 0 else { return random.next() }
    return random.next() % 2 == 0 ? a : a &+ random.next() % (1 << 24) &- (1 << 23)
  }

  /// A staging offset: in this pair's window, another pair's, or out of the BAR.
  mutating func staging() -> UInt64 {
    switch random.next() % 4 {
    case 0: return layout.staging(view?.index ?? 0) + random.next() % layout.stagingPerQueue
    case 1: return layout.staging(Int(random.next() % UInt64(layout.queuePairs))) + random.next() % 4096
    case 2: return random.next() % layout.regionSize
    default: return random.next()
    }
  }

  mutating func length() -> UInt64 {
    switch random.next() % 4 {
    case 0: return random.next() % 4096
    case 1: return random.next() % UInt64(layout.stagingSlotSize * 2)
    case 2: return random.next() % (1 << 32)
    default: return random.next()
    }
  }

  /// The pair's own words: state, owner pid (forged: pids that do not
  /// exist, so that the device reaps them), fault; and claims under a forged
  /// pid, at most one a second (each holds a pair until the device reaps it).
  /// Never `free` into its own active pair: on a shared BAR another client
  /// could claim it in the moment before the device puts it back, and two
  /// clients would share one pair (per-client BARs remove that).
  mutating func lifecycle() {
    guard let v = view else { return }
    stores += 1
    switch random.next() % 6 {
    case 0:
      let state = UInt32(truncatingIfNeeded: random.next() % 5 + 1)
      // Not `closing` either: the device would free the pair under this process's view of it.
      v.block.storeBytes(of: state == 3 ? 7 : state, toByteOffset: QueuePairBlock.state, as: UInt32.self)
    case 1:
      forgedPID = UInt32(truncatingIfNeeded: random.next()) | 1 << 30
      v.setOwnerPID(forgedPID)
    case 2: v.setOwnerPID(UInt32(getpid()))
    case 3:
      v.block.storeBytes(
        of: UInt32(truncatingIfNeeded: random.next()), toByteOffset: QueuePairBlock.fault, as: UInt32.self)
    case 4:
      // Closes and claims again at once, with memory held.
      reclaim()
    default:
      let now = vgpu_monotonic_ns()
      guard now &- lastForgedClaim > 1_000_000_000 else { return }
      lastForgedClaim = now
      for qp in 0..<Int(layout.queuePairs) {
        // Pids above 2^30 exceed Linux's pid_max (2^22): no such process.
        if QueuePairClaim.claim(QueuePairView(base: region.base, layout: layout, index: qp), pid: 1 << 30 | 7) { break }
      }
    }
    wakeDevice()
  }

  /// `control` (reset requests), `status`, the device's wake word, and this pair's doorbells with bogus indices.
  mutating func registersAndDoorbells() {
    guard let v = view else { return }
    stores += 1
    switch random.next() % 5 {
    case 0:
      registers.store(
        Register.control,
        random.next() % 2 == 0 ? ControlRequest.reset.rawValue : UInt32(truncatingIfNeeded: random.next()))
    case 1: registers.store(Register.status, random.next() % 2 == 0 ? 0 : UInt32(truncatingIfNeeded: random.next()))
    case 2: v.ringSubmission(tail: UInt32(truncatingIfNeeded: random.next() % UInt64(layout.depth * 2)))
    case 3: v.ringCompletion(head: UInt32(truncatingIfNeeded: random.next() % UInt64(layout.depth * 2)))
    default: ringStorm(1024)
    }
    wakeDevice()
    rings += 1
  }

  /// Rings the pair's tail doorbell and the device's wake word `count`
  /// times with no new command (the tail as it is), one in 4096 out of range.
  mutating func ringStorm(_ count: Int) {
    guard let v = view else { return }
    for i in 0..<count {
      v.ringSubmission(tail: i & 4095 == 4095 ? layout.depth &+ UInt32(i & 7) : tail.index)
      wakeDevice()
    }
    rings += count
    if v.fault != 0 {
      faults += 1
      reclaim()
    }
  }

  // MARK: Looking for another client's data

  /// Scans all of the mapping for the marker; remembers the first offset found.
  mutating func scan() {
    scans += 1
    guard leak == nil else { return }
    guard let offset = find(marker, in: UnsafeRawBufferPointer(start: region.base, count: region.size)) else { return }
    leak = offset
    say("leak: the marker is at offset 0x\(String(offset, radix: 16)) of the BAR this client maps")
  }
}

/// The offset of the first `needle` in `haystack` (memchr for its first byte, then memcmp; Glibc has no memmem here).
func find(_ needle: [UInt8], in haystack: UnsafeRawBufferPointer) -> Int? {
  guard let base = haystack.baseAddress, !needle.isEmpty else { return nil }
  var at = 0
  while at + needle.count <= haystack.count {
    guard let hit = memchr(base + at, Int32(needle[0]), haystack.count - at - needle.count + 1) else { return nil }
    let offset = base.distance(to: UnsafeRawPointer(hit))
    if needle.withUnsafeBytes({ memcmp(base + offset, $0.baseAddress!, needle.count) }) == 0 { return offset }
    at = offset + 1
  }
  return nil
}
