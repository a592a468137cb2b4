// vgpu-hostile: a client that attacks the device it is given, for the
// hostile-client test and tools/hostile-run. Usage:
//
//   vgpu-hostile DEVICE SECONDS SEED [--marker HEX] [--storm]
//
// It maps the BAR as any client can and takes queue pairs of its own, then
// sends random and structured commands (forged addresses, handles and staging
// offsets), rewrites its pairs' state and owner pid (forged pids), writes
// `control` and `status`, and rings doorbells with bogus indices. With
// --storm it only rings: its doorbells and the device's wake word, as fast
// as it can, with no or out-of-range tails. With --marker it scans all of
// its mapping for that byte pattern (a victim's) twice a second.
//
// Prints "ready", then a "stats ..." line each second (it is usually ended
// by SIGKILL) and at the end; "leak ..." the first time the marker is found.
import CSupport
import DeviceAccess
import Foundation
import TestSupport
import VGPU
import VGPUProtocol

let usage = "usage: vgpu-hostile DEVICE SECONDS SEED [--marker HEX] [--storm]"
var arguments = Array(CommandLine.arguments.dropFirst())
let storm = arguments.contains("--storm")
arguments.removeAll { $0 == "--storm" }
var marker: [UInt8] = []
if let m = arguments.firstIndex(of: "--marker"), m + 1 < arguments.count {
  guard let b = hexBytes(arguments[m + 1]), b.count >= 8 else { fail("--marker takes at least 8 bytes in hex", 64) }
  marker = b
  arguments.removeSubrange(m...(m + 1))
}
guard arguments.count == 3, let seconds = Double(arguments[1]), let seed = UInt64(arguments[2]) else {
  fail(usage, 64)
}

/// The BAR as a client process maps it, from the device spec. Only the
/// shared file (shm:PATH) maps the same bytes in every client; another
/// transport adds its case here.
/// The BAR the attacker works on: the shared file (shm:), or the BAR of its
/// own that a mediator's socket hands this process (unix:).
func mapBAR(_ spec: String) -> MappedRegion {
  do {
    if spec.hasPrefix("shm:") { return try MappedRegion.sharedFile(String(spec.dropFirst(4))) }
    if spec.hasPrefix("unix:") { return try MediatorSocket.connect(String(spec.dropFirst(5)), spec: spec) }
  } catch {
    fail("cannot map \(spec): \(error); is vgpu-mediator serving it?")
  }
  fail("vgpu-hostile maps shm:PATH and unix:PATH devices; '\(spec)' is neither", 64)
}

let region = mapBAR(arguments[0])
let registers = RegisterBlock(region.base)
let layout: BARLayout
do { layout = try BARLayout(reading: registers, size: region.size) } catch {
  fail("the BAR at \(arguments[0]) has no valid layout: \(error)")
}

var attacker = Attacker(region: region, registers: registers, layout: layout, seed: seed, marker: marker)
let deadline = vgpu_monotonic_ns() + UInt64(seconds * 1e9)
attacker.run(until: deadline, storm: storm)
say(attacker.stats)
