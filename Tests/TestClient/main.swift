// A client process for the cross-process tests. Usage:
//
//   vgpu-test-client loop DEVICE BYTES [HOLD_BYTES] [THREADS]
//   vgpu-test-client hold DEVICE [QUEUE_PAIRS]  opens, prints "ready", sleeps until killed
//   vgpu-test-client scan SOCKET HEX          (RawBAR.swift)
//   vgpu-test-client scribble SOCKET ROUNDS   (RawBAR.swift)
//
// Allocates HOLD_BYTES (kept until exit), then in each of THREADS threads
// copies BYTES of random data to the device and back, forever, verifying each
// round trip. Prints "ready" once every thread has done one round trip, and
// on the first failure prints "error: ..." and exits 1 (data mismatch: 2).
import Foundation
import TestSupport
import VGPU
import VGPUSimulator

let args = CommandLine.arguments
if args.count == 4 && args[1] == "scan" { RawBAR.scan(args[2], args[3]) }
if args.count == 4 && args[1] == "scribble", let rounds = Int(args[3]) { RawBAR.scribble(args[2], rounds: rounds) }
// A client that only holds its place (a mediator's, a queue pair), costing no CPU.
if (3...4).contains(args.count) && args[1] == "hold" {
  var options = OpenOptions()
  options.queuePairs = args.count == 4 ? Int(args[3]) ?? 1 : 1
  let device: Device
  do { device = try Device.open(args[2], options: options) } catch { fail("\(error)", 1) }
  say("ready")
  while true { withExtendedLifetime(device) { sleep(60) } }
}
guard args.count >= 4, args[1] == "loop", let bytes = Int(args[3]) else {
  fail(
    "usage: vgpu-test-client loop DEVICE BYTES [HOLD_BYTES] [THREADS] [DEADLINE_SECONDS] | hold DEVICE [QUEUE_PAIRS] | scan SOCKET HEX | scribble SOCKET ROUNDS",
    64)
}
let hold = args.count > 4 ? Int(args[4]) ?? 0 : 0
let threads = args.count > 5 ? Int(args[5]) ?? 1 : 1

var options = OpenOptions.simulator()
// A sanitized run (tools/test --sanitize; the variable is inherited) stretches the 2 s silence deadline as
// the shims' clients get VGPU_TIMEOUT: a 1 GiB memset in an ASan mediator at load 12+ took longer.
if Sanitizer.active { options.timeout = .seconds(2 * Sanitizer.slowdown) }
if args.count > 6, let seconds = Int(args[6]) { options.timeout = .seconds(seconds) }
let device: Device
do { device = try Device.open(args[2], options: options) } catch { fail("\(error)", 1) }
if hold > 0 {
  do {
    let p = try device.allocate(hold)
    try device.memset(p, value: 0x5a, count: hold)
  } catch { fail("\(error)", 1) }
}

let started = DispatchSemaphore(value: 0)
for t in 0..<threads {
  Thread.detachNewThread {
    var data = [UInt8](repeating: 0, count: bytes)
    var seed = UInt64(getpid()) << 8 | UInt64(t)
    do {
      let p = try device.allocate(bytes)
      var first = true
      while true {
        for i in data.indices {
          seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
          data[i] = UInt8(truncatingIfNeeded: seed >> 56)
        }
        try device.copy(to: p, from: data)
        if try device.read(p, count: bytes) != data { fail("thread \(t): data read back differs", 2) }
        if first {
          first = false
          started.signal()
        }
      }
    } catch { fail("\(error)", 1) }
  }
}
for _ in 0..<threads { started.wait() }
say("ready")
while true { sleep(60) }
