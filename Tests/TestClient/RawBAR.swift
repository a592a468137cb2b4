import CSupport
import DeviceAccess
import Foundation
import TestSupport
import VGPU
import VGPUProtocol

/// The raw BAR modes, for the isolation tests: a process that maps the BAR
/// the mediator's socket gives it and looks at or scribbles on its bytes.
enum RawBAR {
  /// `scan SOCKET HEX`: "found" if the bytes occur anywhere in this
  /// process's BAR, else "absent".
  static func scan(_ socket: String, _ hex: String) -> Never {
    let needle = stride(from: 0, to: hex.count - 1, by: 2).compactMap { i -> UInt8? in
      let start = hex.index(hex.startIndex, offsetBy: i)
      return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)
    }
    guard !needle.isEmpty, let region = try? MediatorSocket.connect(socket) else { fail("cannot map \(socket)", 1) }
    let found = needle.withUnsafeBytes { n in
      // memchr for the first byte, memcmp for the rest (memmem is a GNU extension).
      var at = UnsafeRawPointer(region.base)
      let end = at + region.size
      while end - at >= n.count, let hit = memchr(at, Int32(n[0]), end - at) {
        if end - UnsafeRawPointer(hit) >= n.count && memcmp(hit, n.baseAddress!, n.count) == 0 { return true }
        at = UnsafeRawPointer(hit) + 1
      }
      return false
    }
    say(found ? "found" : "absent")
    exit(0)
  }

  /// `scribble SOCKET ROUNDS`: claims queue pair 0 under a forged pid (1),
  /// then stores a reset request, a zero status and stray doorbells ROUNDS
  /// times; says "done" and waits to be killed.
  static func scribble(_ socket: String, rounds: Int) -> Never {
    guard let region = try? MediatorSocket.connect(socket) else { fail("cannot map \(socket)", 1) }
    let registers = RegisterBlock(region.base)
    guard let layout = try? BARLayout(reading: registers, size: region.size) else { fail("bad layout", 1) }
    let view = QueuePairView(base: region.base, layout: layout, index: 0)
    func ring() {
      _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
      _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    }
    guard QueuePairClaim.claim(view, pid: 1) else { fail("cannot claim queue pair 0", 1) }
    ring()
    guard QueuePairClaim.awaitAcceptance(view, deadline: vgpu_monotonic_ns() + 5_000_000_000, poll: { usleep(100) })
    else { fail("the claim was not accepted", 1) }
    for round in 0..<rounds {
      registers.store(Register.control, ControlRequest.reset.rawValue)
      registers.store(Register.status, 0)
      view.ringSubmission(tail: UInt32(round) % (layout.depth * 2))
      ring()
    }
    say("done")
    while true { sleep(60) }
  }
}
