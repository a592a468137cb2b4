import Foundation
import Testing

/// pcitool's vGPU commands (probe, selftest, bench), run as a user runs them.
@Suite(.serialized) struct VGPUCommandTests {
  typealias Output = PCIToolTests.Output

  static let kernels = ["fill", "vector_add", "saxpy", "scale", "reduce_sum", "matmul"]

  static func pcitool(_ arguments: String..., environment: [String: String]? = nil) throws -> Output {
    try PCIToolTests.run(PCIToolTests.pcitool, arguments, environment: environment)
  }

  /// This process's environment without VGPU_DEVICE, plus `extra`.
  static func environment(_ extra: [String: String] = [:]) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["VGPU_DEVICE"] = nil
    return env.merging(extra) { $1 }
  }

  static func json(_ text: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
  }

  static func lines(_ text: String) -> [Substring] { text.split(separator: "\n") }

  // MARK: probe

  @Test func probeSimPrintsTheIdentity() throws {
    let r = try Self.pcitool("probe", "sim")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.isEmpty)
    for fact in [
      "Name:", "vGPU Reference H100 80GB", "UUID:                GPU-", "PCI bus ID:          0000:00:05.0",
      "Compute capability:  9.0", "Memory:              80.00 GiB", "Driver version:      570.124.06",
      "CUDA driver version: 12.8 (12080)", "Memory free/total:   80 GiB free of 80 GiB", "Protocol:            2.4",
      "streams, process-list, function-info, kernel-images, process-activity, cooperative-launch, shared-host-memory,",
      "Wake-ups:            futexes in the shared BAR (same host)", "Queue pairs:",
      "Queue depth:", "Staging:",
    ] {
      #expect(r.stdout.contains(fact), "missing \(fact) in:\n\(r.stdout)")
    }
  }

  @Test func probeJSONParses() throws {
    let r = try Self.pcitool("probe", "sim", "--json")
    #expect(r.status == 0, "\(r.stderr)")
    let j = try Self.json(r.stdout)
    #expect(j["device"] as? String == "sim")
    #expect((j["uuid"] as? String)?.hasPrefix("GPU-") == true)
    #expect(j["pciBusID"] as? String == "0000:00:05.0")
    #expect(j["computeCapability"] as? String == "9.0")
    #expect((j["memoryTotal"] as? UInt64 ?? 0) > 0)
    #expect(j["memoryFree"] as? UInt64 == j["memoryTotal"] as? UInt64)
    #expect((j["queuePairsHeld"] as? Int ?? 0) >= 1)
    #expect((j["stagingSlotSize"] as? Int ?? 0) > 0)
    #expect(
      j["features"] as? [String] == [
        "event-suppression", "streams", "process-list", "function-info", "kernel-images", "process-activity",
        "cooperative-launch", "shared-host-memory", "coalesced-completions",
      ])
    #expect((j["wakeups"] as? String)?.hasPrefix("futexes") == true)
  }

  @Test func probeOfAMissingSharedMemoryFileFailsInOneLine() throws {
    let r = try Self.pcitool("probe", "shm:/dev/shm/vgpu-does-not-exist")
    #expect(r.status == 1)
    #expect(r.stdout.isEmpty)
    #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
    #expect(r.stderr.hasPrefix("pcitool: ") && r.stderr.contains("vgpu-does-not-exist"))
  }

  @Test func probeOfAMissingSocketSaysToStartTheMediator() throws {
    let r = try Self.pcitool("probe", "unix:/dev/shm/vgpu-no-such-socket")
    #expect(r.status == 1)
    #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
    #expect(r.stderr.contains("is vgpu-mediator running? start it: vgpu-mediator --socket"), "\(r.stderr)")
  }

  @Test func aDeviceStringThatIsNoneIsAUsageError() throws {
    for command in ["probe", "selftest", "bench"] {
      let r = try Self.pcitool(command, "nonsense")
      #expect(r.status == 2, "\(command): \(r.stderr)")
      #expect(Self.lines(r.stderr).count == 1, "\(command): \(r.stderr)")
      #expect(r.stderr.contains("sim, unix:PATH, shm:PATH"), "\(command): \(r.stderr)")
    }
  }

  @Test func probeTakesVGPUDeviceFromTheEnvironment() throws {
    let r = try Self.pcitool("probe", environment: Self.environment(["VGPU_DEVICE": "sim"]))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("Device:              sim (VGPU_DEVICE=sim)"), "\(r.stdout)")
  }

  // MARK: selftest

  @Test func selftestSimPassesEveryStep() throws {
    let r = try Self.pcitool("selftest", "sim")
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stderr.isEmpty)
    let rows = Self.lines(r.stdout)
    #expect(rows.first == "using sim: given on the command line")
    for step in [
      "handshake", "memory info", "alloc", "copy 1 B", "copy 4 KiB", "copy 1 MiB + 1 B", "copy 16 MiB", "copy 64 MiB",
      "copy device to device", "memset", "load module", "free", "accounting",
    ] + Self.kernels.map({ "kernel \($0)" }) {
      // Columns: step (24 characters), result, time, detail.
      let row = rows.first { $0.prefix(24).trimmingCharacters(in: .whitespaces) == step }
      #expect(row?.dropFirst(24).hasPrefix("pass ") == true, "\(step) did not pass:\n\(r.stdout)")
    }
    #expect(rows.last?.hasPrefix("selftest passed") == true)
  }

  @Test func selftestJSONListsEveryKernelAsPassed() throws {
    let r = try Self.pcitool("selftest", "sim", "--json")
    #expect(r.status == 0, "\(r.stderr)")
    let j = try Self.json(r.stdout)
    #expect(j["passed"] as? Bool == true)
    let steps = j["steps"] as? [[String: Any]] ?? []
    for kernel in Self.kernels {
      let step = steps.first { $0["name"] as? String == "kernel \(kernel)" }
      #expect(step?["status"] as? String == "pass", "kernel \(kernel)")
    }
    let copies = steps.filter { ($0["name"] as? String)?.hasPrefix("copy ") == true && $0["h2dMBps"] != nil }
    #expect(copies.count == 5)
    #expect(copies.allSatisfy { ($0["h2dMBps"] as? Double ?? 0) > 0 && ($0["d2hMBps"] as? Double ?? 0) > 0 })
  }

  @Test func selftestWithoutADeviceSaysWhichItChoseAndWhy() throws {
    let r = try Self.pcitool("selftest", environment: Self.environment())
    let first = Self.lines(r.stdout).first.map(String.init) ?? ""
    #expect(first.hasPrefix("using "), "\(r.stdout)\n\(r.stderr)")
    #expect(first.contains(": VGPU_DEVICE is not set and "), "\(first)")
    // 0000:00:05.0 here is either not a vGPU (then sim, which must pass), or an ivshmem function.
    if first.hasPrefix("using sim: ") {
      #expect(first.contains("0000:00:05.0"), "\(first)")
      #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    } else {
      #expect(first.hasPrefix("using 0000:00:05.0: ") && first.contains("1af4:1110"), "\(first)")
    }
  }

  @Test func selftestFromFourThreadsPasses() throws {
    let r = try Self.pcitool("selftest", "sim", "--threads", "4")
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.contains("4 threads, checksums match"))
    #expect(Self.lines(r.stdout).last?.hasPrefix("selftest passed") == true)
  }

  // MARK: bench

  @Test func benchQuickJSONGivesPositiveNumbersAndRatios() throws {
    let r = try Self.pcitool("bench", "sim", "--quick", "--json")
    #expect(r.status == 0, "\(r.stderr)")
    let j = try Self.json(r.stdout)
    let cases = j["cases"] as? [[String: Any]] ?? []
    #expect(
      cases.compactMap { $0["name"] as? String } == [
        "NOP round trip p50", "NOP round trip p99", "NOPs, 32 a doorbell", "H2D 64 MiB", "D2H 64 MiB", "H2D 256 MiB",
        "D2H 256 MiB",
      ])
    for c in cases {
      for key in ["value", "baseline", "ratio"] {
        #expect((c[key] as? Double ?? 0) > 0, "\(c["name"] ?? "?") \(key): \(c[key] ?? "missing")")
      }
    }
    #expect((j["samples"] as? Int ?? 0) > 0 && (j["baselineSamples"] as? Int ?? 0) > 0)
    #expect((j["problems"] as? [Any])?.isEmpty == true)
  }

  @Test func theHiddenPingPongCommandIsNotListed() throws {
    let r = try Self.pcitool("--help")
    #expect(r.status == 0)
    #expect(r.stdout.contains("probe") && r.stdout.contains("selftest") && r.stdout.contains("bench"))
    #expect(!r.stdout.contains("_pingpong"))
  }
}
