import ArgumentParser
import CSupport
import DeviceAccess
import Foundation
import VGPU

#if canImport(Glibc)
  import Glibc
#endif

/// Shows that an idle client and device wake each other rather than poll
/// (used by tools/vm/e2e; hidden from --help): NOPs sent after pauses long
/// enough for the device to fall asleep, timed, with the CPU this process
/// used and — in a VM guest — the MSI-X interrupts the kernel counted.
struct WakeupsProbe: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "_wakeups", abstract: "Cold-start NOPs after idle pauses (tests).", shouldDisplay: false)

  @OptionGroup var target: DeviceArgument

  @Option(
    help:
      "NOPs, each after a pause (at least: in a guest with MSI-X, more, up to 5×, until the kernel has counted an interrupt)."
  )
  var rounds = 20

  @Option(name: .customLong("pause-ms"), help: "Idle time before each NOP, in ms (the device sleeps after 50 µs).")
  var pauseMilliseconds = 100

  func validate() throws {
    guard (1...100_000).contains(rounds) else { throw ValidationError("--rounds must be 1 to 100000") }
    guard (0...60_000).contains(pauseMilliseconds) else { throw ValidationError("--pause-ms must be 0 to 60000") }
  }

  func run() throws {
    let device = try openDevice(try target.chosen(), timeout: target.timeout)
    defer { device.close() }
    print("Wake-ups: \(device.info.wakeups)")
    let interruptsBefore = Self.vfioInterrupts()
    let cpuBefore = Self.cpuNanoseconds()
    let started = vgpu_monotonic_ns()
    var samples: [UInt64] = []
    // A NOP answered within the guest's short spin needs no interrupt; on a
    // loaded host a whole series can be (a descheduled vCPU spins in wall
    // time). In a guest with MSI-X, rounds go on (up to 5×) until the kernel
    // has counted one, so the interrupt path is exercised, not assumed.
    func interrupted() -> Bool { interruptsBefore.map { (Self.vfioInterrupts() ?? $0) > $0 } ?? true }
    while samples.count < rounds || (samples.count < 5 * rounds && !interrupted()) {
      usleep(UInt32(pauseMilliseconds * 1000))
      let t0 = vgpu_monotonic_ns()
      try device.nop()
      samples.append(vgpu_monotonic_ns() - t0)
    }
    let wall = vgpu_monotonic_ns() - started
    let cpu = Self.cpuNanoseconds() - cpuBefore
    samples.sort()
    func micro(_ ns: UInt64) -> String { String(format: "%.0f µs", Double(ns) / 1000) }
    print(
      "cold NOPs: \(samples.count) after \(pauseMilliseconds) ms pauses: p50 \(micro(samples[samples.count / 2])), max \(micro(samples.last!))"
    )
    print(
      String(
        format: "CPU used: %.1f ms in %.0f ms (%.2f%%)", Double(cpu) / 1e6, Double(wall) / 1e6,
        100 * Double(cpu) / Double(wall)))
    if let before = interruptsBefore, let after = Self.vfioInterrupts() {
      print("MSI-X interrupts received (vfio-msix in /proc/interrupts): \(after - before)")
    }
  }

  /// This process's user + system CPU time.
  static func cpuNanoseconds() -> UInt64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func ns(_ t: timeval) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_usec) * 1000 }
    return ns(usage.ru_utime) + ns(usage.ru_stime)
  }

  /// The sum of the per-CPU counts of every vfio-msix line, or nil when there is none.
  static func vfioInterrupts() -> UInt64? {
    // To the end (String(contentsOfFile:) stops at 4 KiB of a /proc file; see Top).
    guard let text = HostEnvironment.live.readText("/proc/interrupts", limit: .max) else { return nil }
    var total: UInt64 = 0
    var found = false
    for line in text.split(separator: "\n") where line.contains("vfio-msix") {
      found = true
      for field in line.split(separator: " ").dropFirst() {
        guard let n = UInt64(field) else { break }
        total += n
      }
    }
    return found ? total : nil
  }
}
