import Foundation
import TestSupport
import Testing

/// libnvidia-ml.so.1 as real NVML clients see it: nvidia-ml-py, gpustat and a C program,
/// against a vgpu-mediator with a client process holding device memory.
@Suite struct NVMLTests {
  static let hold = 96 << 20

  /// A `vgpu-test-client` process holding `hold` bytes of device memory (and copying).
  static func clientHoldingMemory(_ mediator: MediatorProcess) throws -> ClientProcess {
    let client = try ClientProcess("vgpu-test-client", ["loop", mediator.spec, "65536", "\(hold)", "1"])
    try #require(client.waitFor("ready", seconds: 30) != nil, "the client did not start: \(client.output)")
    return client
  }

  @Test func pynvmlSeesTheDeviceAndTheProcessesUsingIt() throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpu.so", "libvgpucore.so"])
    let python = try ShimProgram.requirePython()
    // One BAR for all, as a VM's processes share theirs: NVML lists the
    // other process. (On unix: each process sees only itself.)
    let mediator = try MediatorProcess(arguments: ["--shared-bar"])
    let client = try Self.clientHoldingMemory(mediator)
    let allocate = 5 << 20
    let r = try ShimProgram.run(
      python, [ShimProgram.clients.appendingPathComponent("nvml_pynvml.py").path, "\(allocate)"],
      environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.isEmpty, "monitoring must stay quiet: \(r.stderr)")
    let j = try ShimProgram.json(r.stdout)
    #expect(j["count"] as? Int == 1)
    #expect(j["index"] as? Int == 0)
    #expect(j["name"] as? String == "vGPU Reference H100 80GB")
    #expect(j["uuid"] as? String == "GPU-56475055-2d72-6566-2d64-657669636530")
    #expect(j["byUUID"] as? String == "vGPU Reference H100 80GB")
    #expect(j["byPciBusId"] as? String == j["uuid"] as? String)
    let pci = try #require(j["pci"] as? [String: Any])
    #expect(pci["busId"] as? String == "00000000:00:05.0")
    #expect(pci["busIdLegacy"] as? String == "0000:00:05.0")
    #expect(pci["domain"] as? Int == 0 && pci["bus"] as? Int == 0 && pci["device"] as? Int == 5)

    // Memory: the mediator's 8 GiB; in use, at least what the client and this script hold.
    let memory = try #require(j["memory"] as? [String: UInt64])
    let memory2 = try #require(j["memory_v2"] as? [String: UInt64])
    #expect(memory["total"] == 8 << 30)
    #expect(memory["used"]! >= UInt64(Self.hold + allocate))
    #expect(memory["used"]! + memory["free"]! == memory["total"]!)
    #expect(memory2["total"] == memory["total"] && memory2["reserved"] == 0)

    // Processes: the client with its memory, and this script (it allocated through libvgpu).
    let processes = try #require(j["processes"] as? [[String: UInt64]])
    let clientPID = UInt64(client.process.processIdentifier)
    let listedClient = try #require(
      processes.first { $0["pid"] == clientPID }, "client pid \(clientPID) not in \(processes)")
    #expect(listedClient["usedGpuMemory"]! >= UInt64(Self.hold))
    #expect(listedClient["gpuInstanceId"] == 0xffff_ffff)
    let me = try #require(j["pid"] as? UInt64)
    let listedMe = try #require(processes.first { $0["pid"] == me }, "python pid \(me) not in \(processes)")
    #expect(listedMe["usedGpuMemory"]! >= UInt64(allocate))
    #expect((j["processes_v2"] as? [UInt64]).map(Set.init) == Set(processes.compactMap { $0["pid"] }))
    #expect((j["graphics"] as? [Any])?.isEmpty == true)

    let utilization = try #require(j["utilization"] as? [String: Int])
    #expect((0...100).contains(utilization["gpu"]!) && utilization["memory"] == utilization["gpu"])
    #expect(j["driver"] as? String == "570.124.06")
    #expect(j["cuda"] as? Int == 12080)
    #expect(j["computeCapability"] as? [Int] == [9, 0])
    // No invented figures: what a virtual device cannot know is NOT_SUPPORTED.
    let errors = try #require(j["errors"] as? [String: String])
    for what in ["temperature", "fan", "power", "powerLimit", "clock", "encoder", "decoder"] {
      #expect(errors[what] == "NotSupported", "\(what): \(errors[what] ?? "answered")")
    }
    client.kill()
  }

  @Test func gpustatShowsTheDeviceAndItsProcesses() throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpucore.so"])
    let python = try ShimProgram.requirePython()
    // One BAR for all, as a VM's processes share theirs: NVML lists the
    // other process. (On unix: each process sees only itself.)
    let mediator = try MediatorProcess(arguments: ["--shared-bar"])
    let client = try Self.clientHoldingMemory(mediator)
    let r = try ShimProgram.run(
      python, ["-m", "gpustat", "--json"], environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.isEmpty, "\(r.stderr)")
    let j = try ShimProgram.json(r.stdout)
    #expect(j["driver_version"] as? String == "570.124.06")
    let gpus = try #require(j["gpus"] as? [[String: Any]])
    try #require(gpus.count == 1, "\(r.stdout)")
    let gpu = gpus[0]
    #expect(gpu["name"] as? String == "vGPU Reference H100 80GB")
    #expect(gpu["uuid"] as? String == "GPU-56475055-2d72-6566-2d64-657669636530")
    #expect(gpu["memory.total"] as? Int == 8192)
    #expect((gpu["memory.used"] as? Int ?? 0) >= Self.hold >> 20)
    #expect(gpu["temperature.gpu"] is NSNull && gpu["power.draw"] is NSNull && gpu["fan.speed"] is NSNull)
    let processes = try #require(gpu["processes"] as? [[String: Any]], "\(gpu)")
    let listed = try #require(
      processes.first { $0["pid"] as? Int == Int(client.process.processIdentifier) },
      "client \(client.process.processIdentifier) not in \(processes)")
    #expect(listed["command"] as? String == "vgpu-test-client")
    #expect((listed["gpu_memory_usage"] as? Int ?? 0) >= Self.hold >> 20)

    // And as people read it.
    let text = try ShimProgram.run(
      python, ["-m", "gpustat"], environment: ShimProgram.environment(device: mediator.spec))
    #expect(text.status == 0 && text.stdout.contains("vGPU Reference H100 80GB"), "\(text.stdout)\(text.stderr)")
    #expect(text.stdout.contains("/  8192 MB"), "\(text.stdout)")
    client.kill()
  }

  @Test func noDeviceMeansZeroDevicesAndOneLineOnStderr() throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpucore.so"])
    let python = try ShimProgram.requirePython()
    let script = """
      import pynvml as N
      N.nvmlInit()
      print(N.nvmlDeviceGetCount())
      N.nvmlShutdown()
      """
    let r = try ShimProgram.run(python, ["-c", script], environment: ShimProgram.environment(device: nil))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout == "0\n")
    #expect(r.stderrLines.count == 1, "\(r.stderr)")
    #expect(r.stderr.hasPrefix("vgpu: ") && r.stderr.contains("0 devices"), "\(r.stderr)")
    #expect(r.stderr.contains("0000:00:05.0") && r.stderr.contains("VGPU_DEVICE"), "\(r.stderr)")

    // gpustat: no GPU, and still only that line.
    let g = try ShimProgram.run(python, ["-m", "gpustat", "--json"], environment: ShimProgram.environment(device: nil))
    #expect(g.status == 0, "\(g.stderr)")
    #expect((try ShimProgram.json(g.stdout)["gpus"] as? [Any])?.isEmpty == true)
    #expect(g.stderrLines.count == 1, "\(g.stderr)")
  }

  @Test func aCProgramGetsNVMLsABI() throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpucore.so"])
    // One BAR for all, as a VM's processes share theirs: NVML lists the
    // other process. (On unix: each process sees only itself.)
    let mediator = try MediatorProcess(arguments: ["--shared-bar"])
    let client = try Self.clientHoldingMemory(mediator)
    let program = try ShimProgram.compile("nvml_client.c", flags: "-L'\(Paths.shims.path)' -lnvidia-ml")
    let r = try ShimProgram.run(
      program.path, ["\(client.process.processIdentifier)", "\(Self.hold)"],
      environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.hasSuffix("ok\n"), "\(r.stdout)")
    #expect(r.stdout.contains("pci: 00000000:00:05.0 0000:00:05.0 domain=0 bus=0 device=5"), "\(r.stdout)")
    #expect(r.stdout.contains("process v1: pid=\(client.process.processIdentifier) "), "\(r.stdout)")
    client.kill()
  }

  @Test func unimplementedFunctionsSayTheirNameOnce() throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpucore.so"])
    let python = try ShimProgram.requirePython()
    let mediator = try MediatorProcess()
    let script = """
      import pynvml as N
      N.nvmlInit()
      h = N.nvmlDeviceGetHandleByIndex(0)
      for _ in range(3):
          try:
              N.nvmlDeviceGetProcessUtilization(h, 0)
          except N.NVMLError_NotSupported:
              print("not supported")
      N.nvmlShutdown()
      """
    let r = try ShimProgram.run(python, ["-c", script], environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout == String(repeating: "not supported\n", count: 3))
    #expect(
      r.stderrLines == ["vgpu: nvmlDeviceGetProcessUtilization is not implemented; it answers NVML_ERROR_NOT_SUPPORTED"]
    )
  }
}
