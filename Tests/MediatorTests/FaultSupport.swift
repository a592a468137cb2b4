import Foundation
import TestSupport
import VGPU

/// What the fault-injection, stress and hostile-client tests share. Every
/// client is given the mediator's device spec (`mediator.spec`), so that
/// another transport is a change in `MediatorProcess` alone.
enum Faults {
  /// A kernel of Tests/Kernels compiled to PTX by NVRTC, in a file a client process loads.
  static func ptxFile(_ kernel: String) throws -> String {
    let source = try String(contentsOf: CUDAToolchain.kernels.appendingPathComponent("\(kernel).cu"), encoding: .utf8)
    let ptx = try CUDAToolchain.nvrtcPTX(source: source, name: "\(kernel).cu", compute: 75)
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-\(kernel)-\(getpid()).ptx").path
    try ptx.write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }

  /// Waits up to `seconds` for `client` to exit; SIGKILLs it if it has not
  /// (a hang), returning whether it exited by itself.
  static func exits(_ client: ClientProcess, within seconds: Double) -> Bool {
    let exited = waitUntil(seconds: seconds) { !client.process.isRunning }
    if !exited { client.kill() }
    client.process.waitUntilExit()
    return exited
  }

  /// SIGKILLs `client`, then returns the seconds from the signal until its
  /// process holds no queue pair or memory on the device `observer` has open
  /// (nil: not within `limit`).
  static func killAndTimeReclaim(_ client: ClientProcess, _ observer: Device, limit: Double = 5) -> Double? {
    let pid = UInt32(client.process.processIdentifier)
    let start = Date()
    client.kill()
    let gone = waitUntil(seconds: limit) { !((try? observer.processes())?.contains { $0.pid == pid } ?? true) }
    return gone ? Date().timeIntervalSince(start) : nil
  }

  /// Whether the device holds nothing but what `observer` itself holds (no
  /// memory in use, no other process, only its own queue pairs), within `seconds`.
  static func settled(_ observer: Device, within seconds: Double = 5) -> Bool {
    waitUntil(seconds: seconds) {
      guard let (free, total) = try? observer.memoryInfo(), free == total,
        let processes = try? observer.processes(), processes.map(\.pid) == [UInt32(getpid())],
        let device = try? observer.statistics(.device), device.queuePairs == UInt64(observer.info.queuePairs)
      else { return false }
      return true
    }
  }

  /// The mediator's CPU time over `seconds`, in clock ticks (10 ms each).
  static func cpuTicks(of mediator: MediatorProcess, over seconds: Double) -> Int {
    let before = mediator.cpuTicks
    usleep(UInt32(seconds * 1e6))
    return mediator.cpuTicks - before
  }

  /// A `pcitool selftest` client process, run to its end: whether it passed, and its output.
  static func selftest(_ spec: String) throws -> (passed: Bool, output: String) {
    let client = try ClientProcess("pcitool", ["selftest", spec, "--timeout", "10"])
    client.process.waitUntilExit()
    return (client.process.terminationStatus == 0, client.output.joined(separator: "\n"))
  }
}
