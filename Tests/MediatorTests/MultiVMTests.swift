import CSupport
import DeviceAccess
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// Issue 17: one mediator serves several VMs (`--vm-bar`), each with a BAR
/// file, a device thread and a memory limit of its own, over one backend and
/// one `--memory`. Host processes open each BAR file as `shm:FILE`, as a VM's
/// processes open its ivshmem BAR (no QEMU here: tools/vm/e2e boots two).
@Suite(.serialized) struct MultiVMTests {
  /// Two fresh BAR file paths in /dev/shm, removed when the test ends.
  final class Bars {
    let first = "/dev/shm/vgpu-vm1-\(getpid())-\(UUID().uuidString.prefix(8))"
    let second = "/dev/shm/vgpu-vm2-\(getpid())-\(UUID().uuidString.prefix(8))"
    deinit {
      unlink(first)
      unlink(second)
    }
  }

  /// A selftest in each VM at once: both pass, each VM's log lines carry its
  /// name, and each VM's device statistics count its own memory only.
  @Test func twoVMsRunSelftestsAtOnceAndEachSeesOnlyItsOwnMemory() throws {
    let bars = Bars()
    let mediator = try MediatorProcess(arguments: [
      "--memory", "8G", "--vm-bar", "\(bars.first),memory=1G,name=first", "--vm-bar", "\(bars.second),name=second",
    ])
    defer { mediator.stop() }
    #expect(mediator.log.contains("vms=first,second"), "\(mediator.log)")

    // A selftest in each VM at once. Each one's accounting step checks that
    // its device counts exactly what its process holds, while the other VM's
    // selftest holds up to 115 MiB.
    let one = try ClientProcess("pcitool", ["selftest", "shm:\(bars.first)"])
    let two = try ClientProcess("pcitool", ["selftest", "shm:\(bars.second)"])
    for client in [one, two] {
      client.process.waitUntilExit()
      #expect(client.process.terminationStatus == 0, "\(client.output)")
      #expect(client.output.contains { $0.hasPrefix("selftest passed") }, "\(client.output)")
    }

    // The second VM holds memory while a selftest runs in the first: it
    // passes only if the first VM's device counts none of it.
    var options = OpenOptions()
    options.queuePairs = 1
    let b = try Device.open("shm:\(bars.second)", options: options)
    defer { b.close() }
    let heldB = try b.allocate(5 << 20)
    let three = try ClientProcess("pcitool", ["selftest", "shm:\(bars.first)"])
    three.process.waitUntilExit()
    #expect(three.process.terminationStatus == 0, "\(three.output)")

    // Each sees its own limit as the device's memory, and its own use only.
    let a = try Device.open("shm:\(bars.first)", options: options)
    defer { a.close() }
    let heldA = try a.allocate(3 << 20)
    let (freeA, totalA) = try a.memoryInfo()
    let (_, totalB) = try b.memoryInfo()
    #expect(totalA == 1 << 30)
    #expect(totalB == 8 << 30)
    #expect(freeA == (1 << 30) - (3 << 20))
    #expect(try a.statistics(.device).bytesAllocated == 3 << 20)
    #expect(try b.statistics(.device).bytesAllocated == 5 << 20)
    try a.free(heldA)
    try b.free(heldB)

    let log = mediator.stop()
    let lines = log.split(separator: "\n")
    let attachedFirst = lines.filter { $0.contains("client attached") && $0.contains("vm=first") }.count
    let attachedSecond = lines.filter { $0.contains("client attached") && $0.contains("vm=second") }.count
    #expect(attachedFirst >= 2 && attachedSecond >= 2, "\(log)")
    #expect(!lines.contains { $0.contains("client attached") && !$0.contains("vm=") }, "\(log)")
    #expect(lines.contains { $0.contains("stopped") && $0.contains("vm=first") }, "\(log)")
  }

  /// A VM's own limit refuses an allocation (out of memory, naming that
  /// limit) although the shared total has room, and the other VM can still
  /// allocate; the shared total still binds both together, while each VM's
  /// memoryInfo tells of its own limit and use only.
  @Test func aVMsOwnLimitRefusesWhileTheOtherVMAllocates() throws {
    let bars = Bars()
    let mediator = try MediatorProcess(arguments: [
      "--memory", "256M", "--vm-bar", "\(bars.first),memory=64M,name=small", "--vm-bar", "\(bars.second),name=big",
    ])
    defer { mediator.stop() }
    let small = try Device.open("shm:\(bars.first)")
    defer { small.close() }
    let big = try Device.open("shm:\(bars.second)")
    defer { big.close() }

    let kept = try small.allocate(48 << 20)
    do {
      _ = try small.allocate(32 << 20)
      Issue.record("an allocation past the VM's own 64 MiB succeeded")
    } catch {
      #expect(error.status == .outOfMemory, "\(error)")
      #expect("\(error)".contains("own limit of"), "\(error)")
    }
    // The other VM is held only by the shared 256 MiB, less the 48 MiB held.
    let most = try big.allocate(200 << 20)
    do {
      _ = try big.allocate(16 << 20)
      Issue.record("an allocation past the shared 256 MiB succeeded")
    } catch {
      #expect(error.status == .outOfMemory, "\(error)")
      #expect("\(error)".contains("shares with the mediator's other VMs"), "\(error)")
    }
    // Each VM is told of its own limit and use only: 64 - 48 MiB, though the
    // shared memory has 8 MiB left (which its next allocation would meet).
    let (free, total) = try small.memoryInfo()
    #expect(free == 16 << 20 && total == 64 << 20, "free \(free), total \(total)")
    do {
      _ = try small.allocate(12 << 20)
      Issue.record("an allocation past the shared memory's 8 MiB left succeeded")
    } catch {
      #expect(error.status == .outOfMemory, "\(error)")
    }
    try big.free(most)
    try small.free(kept)
    #expect(try small.memoryInfo().free == 64 << 20)
  }

  /// A hostile guest in one VM faults its pair over and over (doorbells out
  /// of range, `control` and `status` scribbled) while the other VM runs
  /// selftests: they pass, and the faults are logged as the hostile VM's only.
  @Test(.timeLimit(.minutes(3))) func oneVMsFaultingGuestDoesNotStopTheOthersSelftests() throws {
    let bars = Bars()
    let mediator = try MediatorProcess(arguments: [
      "--vm-bar", "\(bars.first),name=hostile", "--vm-bar", "\(bars.second),name=victim",
    ])
    defer { mediator.stop() }
    let region = try MappedRegion.sharedFile(bars.first)
    let registers = RegisterBlock(region.base)
    let layout = try BARLayout(reading: registers, size: region.size)
    let view = QueuePairView(base: region.base, layout: layout, index: 0)
    let stop = Atomic<Bool>(false)
    let stores = Atomic<Int>(0)
    let wake: @Sendable () -> Void = {
      _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
      _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    }
    let hostile = Thread {
      var generator = SystemRandomNumberGenerator()
      var n = 0
      while !stop.load(ordering: .relaxed) {
        // Claim the pair (again, after each fault released it), then ring past the ring.
        if QueuePairClaim.claim(view, pid: UInt32(getpid())) {
          wake()
          _ = QueuePairClaim.awaitAcceptance(view, deadline: vgpu_monotonic_ns() + 100_000_000) { usleep(100) }
        }
        view.ringSubmission(tail: layout.depth * 2 + UInt32.random(in: 0..<1000, using: &generator))
        if n % 8 == 0 { registers.store(Register.control, generator.next()) }
        if n % 8 == 4 { registers.store(Register.status, 0) }
        wake()
        usleep(200)
        // Closing the faulted pair frees it for the next claim: attach, fault, release, over and over.
        QueuePairClaim.release(view)
        wake()
        n += 1
      }
      stores.store(n, ordering: .relaxed)
    }
    hostile.start()
    var passed = 0
    var failures: [String] = []
    for _ in 0..<3 {
      let client = try ClientProcess("pcitool", ["selftest", "shm:\(bars.second)", "--timeout", "10"])
      client.process.waitUntilExit()
      if client.process.terminationStatus == 0 {
        passed += 1
      } else {
        failures.append(client.output.joined(separator: "\n"))
      }
    }
    stop.store(true, ordering: .relaxed)
    while stores.load(ordering: .relaxed) == 0 { usleep(1000) }
    #expect(failures.isEmpty, "\(failures.first ?? "")")
    #expect(passed == 3)
    #expect(mediator.process.isRunning, "the mediator died")
    let lines = mediator.stop().split(separator: "\n")
    let faults = lines.filter { $0.contains("faulted") }
    #expect(!faults.isEmpty && faults.allSatisfy { $0.contains("vm=hostile") }, "\(faults.prefix(5))")
    print(
      "hostile VM: \(stores.load(ordering: .relaxed)) rounds, \(faults.count) faults logged; the other VM's \(passed) selftests passed"
    )
  }

  /// The metrics endpoint has each VM's series under its own `vm` label.
  @Test func metricsCarryEachVMsName() throws {
    let bars = Bars()
    let mediator = try MediatorProcess(arguments: [
      "--metrics-listen", "127.0.0.1:0", "--vm-bar", "\(bars.first),name=first", "--vm-bar",
      "\(bars.second),name=second",
    ])
    defer { mediator.stop() }
    let port = try #require(mediator.metricsPort(), "no 'metrics listening' line in:\n\(mediator.log)")
    let a = try Device.open("shm:\(bars.first)")
    defer { a.close() }
    _ = try a.allocate(7 << 20)
    let body = try HTTP.get(port: port, path: "/metrics").body
    let used = body.split(separator: "\n").filter { $0.hasPrefix("vgpu_device_memory_used_bytes{") }
    #expect(used.count == 2, "\(body)")
    #expect(used.contains { $0.contains("vm=\"first\"") && Self.value(of: $0) == Double(7 << 20) }, "\(used)")
    #expect(used.contains { $0.contains("vm=\"second\"") && Self.value(of: $0) == 0 }, "\(used)")
  }

  /// The number at the end of an exposition line.
  static func value(of line: Substring) -> Double? {
    line.split(separator: " ").last.flatMap { Double(String($0)) }
  }
}
