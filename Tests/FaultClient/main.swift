// The client processes of the fault-injection, stress and hostile-client
// tests (and tools/hostile-run). Usage:
//
//   vgpu-fault-client launch DEVICE PTX KERNEL       launch KERNEL(int* flag = 0) once, 1 thread
//   vgpu-fault-client stress DEVICE SECONDS THREADS SEED PTX
//   vgpu-fault-client marker DEVICE SECONDS MARKER   copy MARKER (hex) through the staging, verified
//   vgpu-fault-client play-device PATH MODE          serve PATH as a device that answers wrongly
//   vgpu-fault-client settle DEVICE PID SECONDS [--kill]
//                                                    wait until PID holds nothing on the device
//                                                    (--kill: SIGKILL it first, timed from the signal)
//   vgpu-fault-client idle DEVICE SECONDS BYTES      allocate BYTES and fill them, say ready, make no
//                                                    call for SECONDS, then read them back and free them
//
// launch, marker and play-device print "ready" once they work; every mode
// prints "error: ..." and exits 1 on a failure (2 when data read back
// differs, 64 for a usage error), and its counts or time on a last "ok" line.
import Foundation
import TestSupport
import VGPU
import VGPUProtocol

func seconds(since start: Date) -> String { String(format: "%.3f", Date().timeIntervalSince(start)) }

let args = CommandLine.arguments
let usage =
  "usage: vgpu-fault-client launch DEVICE PTX KERNEL | stress DEVICE SECONDS THREADS SEED PTX"
  + " | marker DEVICE SECONDS HEX | play-device PATH MODE | settle DEVICE PID SECONDS [--kill]"
  + " | idle DEVICE SECONDS BYTES"
guard args.count >= 3 else { fail(usage, 64) }

func open(_ spec: String, queuePairs: Int = 2, timeout: Duration = .seconds(2)) -> Device {
  var options = OpenOptions()
  options.queuePairs = queuePairs
  options.timeout = timeout
  do { return try Device.open(spec, options: options) } catch { fail("\(error)") }
}

func readPTX(_ path: String) -> [UInt8] {
  guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read the PTX file \(path)", 64) }
  return Array(data)
}

switch args[1] {
case "launch" where args.count == 5:
  // A kernel that runs until the device's budget ends it (or its client or
  // device goes away): what "mid-launch" faults interrupt.
  let device = open(args[2], queuePairs: 1)
  let start = Date()
  do {
    let module = try device.loadModule(readPTX(args[3]))
    let function = try device.function(args[4], in: module)
    let flag = try device.allocate(4)
    try device.memset(flag, value: 0, count: 4)
    say("ready")
    try device.launch(
      function, grid: Dimensions(1), block: Dimensions(32), parameters: withUnsafeBytes(of: flag.address, Array.init))
    say("ok launch returned after \(seconds(since: start)) s")
  } catch { fail("\(error) (after \(seconds(since: start)) s)") }

case "stress" where args.count == 7:
  guard let duration = Double(args[3]), let threads = Int(args[4]), let seed = UInt64(args[5]) else { fail(usage, 64) }
  // Correctness under load, not latency: 16 processes × 4 threads and their
  // kernels on 2 cores took over the default 2 s per command in CI.
  let device = open(args[2], timeout: .seconds(60))
  let report = Stress.run(device, seconds: duration, threads: threads, seed: seed, ptx: readPTX(args[6]))
  device.close()
  say("ok \(report)")

case "marker" where args.count == 5:
  guard let duration = Double(args[3]), let marker = Marker(hex: args[4]) else { fail(usage, 64) }
  let device = open(args[2], queuePairs: 1)
  say("ready")
  let rounds = marker.copyUntil(Date().addingTimeInterval(duration), device)
  device.close()
  say("ok rounds=\(rounds)")

case "play-device" where args.count == 4:
  guard let mode = PlayedDevice.Mode(rawValue: args[3]) else {
    fail("unknown mode \(args[3]); one of \(PlayedDevice.Mode.allCases.map(\.rawValue).joined(separator: ", "))", 64)
  }
  PlayedDevice(path: args[2], mode: mode).serve()

case "settle" where args.count == 5 || (args.count == 6 && args[5] == "--kill"):
  guard let pid = UInt32(args[3]), let limit = Double(args[4]) else { fail(usage, 64) }
  let device = open(args[2], queuePairs: 1)
  let start = Date()
  if args.count == 6 { kill(pid_t(pid), SIGKILL) }
  while Date().timeIntervalSince(start) < limit {
    let holds = (try? device.processes())?.contains { $0.pid == pid } ?? true
    if !holds { break }
    usleep(5_000)
  }
  let took = Date().timeIntervalSince(start)
  guard took < limit else { fail("pid \(pid) still holds queue pairs after \(limit) s") }
  say("ok settled in \(String(format: "%.0f", took * 1000)) ms")

case "idle" where args.count == 5:
  // A process that holds memory and does nothing for a while: killed, it
  // shows how soon the device reclaims what it held; left alone, that an
  // idle but living process keeps its pair (the guest heartbeat, 2.3).
  guard let duration = Double(args[3]), let bytes = Int(args[4]), bytes > 0 else { fail(usage, 64) }
  let device = open(args[2], queuePairs: 1)
  let pattern = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
  do {
    let memory = try device.allocate(bytes)
    try device.copy(to: memory, from: pattern)
    say("ready pid=\(getpid()) features=0x\(String(device.info.features.rawValue, radix: 16))")
    usleep(UInt32(duration * 1e6))
    let start = Date()
    guard try device.read(memory, count: bytes) == pattern else { fail("the memory read back differs", 2) }
    try device.free(memory)
    device.close()
    say("ok idle \(args[3]) s, then read back and freed in \(seconds(since: start)) s")
  } catch { fail("\(error)") }

default:
  fail(usage, 64)
}
