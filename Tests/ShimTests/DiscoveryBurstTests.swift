import Foundation
import TestSupport
import Testing

/// Ollama starts discovery processes in bursts (a server, runners,
/// gpu-discover, several at once): 32 processes at once, each through the
/// real libcuda.so.1 and libnvidia-ml.so.1, all find the device with its
/// real memory, and the mediator is back to nothing held once they exit.
@Suite(.serialized) struct DiscoveryBurstTests {
  /// Runs `ollama_discovery --burst n` against `mediator`; the pids that
  /// completed the whole sequence with `memory` bytes seen by CUDA and NVML,
  /// and the output.
  static func burst(_ n: Int, _ mediator: MediatorProcess, memory: UInt64, extra: [String: String] = [:]) throws
    -> (complete: Set<String>, output: CUDAClient.Output)
  {
    let program = try CUDAClient.program("ollama_discovery", linked: false)
    let r = try CUDAClient.run(program.path, ["--burst", "\(n)"], device: mediator.spec, extra: extra)
    let pids = Set(r.lines.compactMap { $0.split(separator: " ").first?.dropFirst(4) }.map(String.init))
    let complete = pids.filter { pid in
      let facts = CUDATests.lines(of: pid, in: r)
      return facts.contains("count 1")
        && facts.contains("device 0 totalmem \(memory) pci 0000:00:05.0 integrated 0 vmm 0")
        && facts.contains { $0.hasPrefix("device 0 free ") && $0.hasSuffix(" total \(memory)") }
        && facts.contains("nvml count 1 driver \(CUDATests.identity.driverVersion)")
        && facts.contains("nvml device 0 total \(memory) name \(CUDATests.identity.name)") && facts.contains("done")
    }
    return (complete, r)
  }

  @Test func thirtyTwoDiscoveryProcessesAtOnceAllFindTheDevice() throws {
    try CUDAClient.requireShims()
    let mediator = try MediatorProcess(arguments: ["--metrics-listen", "127.0.0.1:0"])
    defer { mediator.stop() }
    let port = try #require(mediator.metricsPort(), "no metrics port in:\n\(mediator.log)")
    let memory: UInt64 = 8 << 30
    let (complete, r) = try Self.burst(32, mediator, memory: memory)
    #expect(r.status == 0, "\(r)")
    #expect(r.stderr.isEmpty, "\(r)")
    // 32 processes and the parent that started them.
    #expect(complete.count == 32, "\(complete.count) of 32 completed discovery with \(memory) bytes:\n\(r)")
    // Afterwards the mediator holds nothing for them: no process, no memory, no pair.
    var now: [String: Double?] = [:]
    let settled = try waitUntil(seconds: 10) {
      now = try Dictionary(
        uniqueKeysWithValues: [
          "vgpu_device_processes", "vgpu_device_memory_used_bytes", "vgpu_device_queue_pairs_in_use",
        ].map { ($0, try mediator.metric($0, port: port)) })
      return now.values.allSatisfy { $0 == 0 }
    }
    #expect(settled, "the mediator still accounts for the burst: \(now)")
    // Each process connected (CUDA's device closes with its last context,
    // NVML's opens again: twice each), and every connection was released.
    let log = mediator.stop()
    let lines = log.split(separator: "\n")
    func pids(_ event: String) -> [String] {
      lines.filter { $0.contains(event) }.compactMap { line in
        line.split(separator: " ").first { $0.hasPrefix("pid=") }.map { String($0.dropFirst(4)) }
      }
    }
    let connected = pids("] client connected")
    #expect(Set(connected) == complete, "\(log.suffix(3000))")
    #expect(connected.sorted() == pids("] client disconnected").sorted(), "\(log.suffix(3000))")
    #expect(!log.contains("waits for a place") && !log.contains("refused"), "\(log.suffix(3000))")
  }

  /// A VM's BAR (one for all its processes, 8 pairs): 32 discovery
  /// processes at once share the pairs, the 24 beyond them waiting for one.
  @Test func thirtyTwoDiscoveryProcessesShareAVMsEightQueuePairs() throws {
    try CUDAClient.requireShims()
    let mediator = try MediatorProcess(arguments: ["--shared-bar", "--queue-pairs", "8"])
    defer { mediator.stop() }
    // Generous: on two shared cores a process may wait for several rounds of others.
    let (complete, r) = try Self.burst(32, mediator, memory: 8 << 30, extra: ["VGPU_TIMEOUT": "60"])
    #expect(r.status == 0 && complete.count == 32, "\(complete.count) of 32 completed:\n\(r)")
  }
}
