import Foundation
import TestSupport
import Testing
import VGPUDevice

#if canImport(Glibc)
  import Glibc
#endif

/// libcuda.so.1 as real clients use it: C programs built with cc (Ollama's
/// discovery, a program linked against the driver, a fork), and NVIDIA's
/// cuda-bindings from Python, against a real vgpu-mediator process.
@Suite struct CUDATests {
  /// What the reference device says it is (as the mediator serves it).
  static let identity = ReferenceDeviceConfiguration().identity

  /// The lines of `output` that process `pid` printed ("pid=N ..."), without the prefix.
  static func lines(of pid: String, in output: CUDAClient.Output) -> [String] {
    output.lines.filter { $0.hasPrefix("pid=\(pid) ") }.map { String($0.dropFirst("pid=\(pid) ".count)) }
  }

  /// Ollama's discovery, all three generations' symbols and the v0.12.3 and
  /// v0.30 sequences, in a parent and in 4 children running at once, each
  /// finding the device on its own.
  @Test func ollamaDiscovery() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("ollama_discovery", linked: false)
    try CUDATarget.mediator { device, memory in
      let r = try CUDAClient.run(program.path, ["--children", "4"], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.stderr.isEmpty, "\(r)")
      let pids = Set(r.lines.compactMap { $0.split(separator: " ").first?.dropFirst(4) }.map(String.init))
      #expect(pids.count == 5, "a parent and 4 children: \(r)")
      for pid in pids {
        let facts = Self.lines(of: pid, in: r)
        let expected = [
          "symbols v0.12.3 ok", "symbols runner ok", "symbols v0.30 ok", "driver 12.8", "count 1",
          "device 0 totalmem \(memory) pci 0000:00:05.0 integrated 0 vmm 0",
          "device 0 cc \(Self.identity.computeCapability.major).\(Self.identity.computeCapability.minor)",
          "device 0 uuid \(Self.identity.uuidString)",
          "device 0 name \(Self.identity.name)", "done",
        ]
        for fact in expected { #expect(facts.contains(fact), "pid \(pid) did not say '\(fact)': \(facts)") }
        // Free memory as cuMemGetInfo_v2 reports it: all of it, or nearly (other processes may hold some).
        let info = facts.first { $0.hasPrefix("device 0 free ") }?.split(separator: " ")
        #expect(info?.count == 6 && info?[5] == "\(memory)", "pid \(pid): \(facts)")
        if let info, info.count == 6, let free = UInt64(info[3]) { #expect(free > 0 && free <= memory) }
      }
      #expect(Self.identity.computeCapability == (9, 0))
    }
  }

  /// The CUDA version the mediator is told to report reaches a program that
  /// asks before cuInit (CUDA 13's runtime refuses a 12.x driver there).
  @Test func theDriverVersionIsTheDevicesEvenBeforeCuInit() throws {
    try CUDAClient.requireShims()
    let mediator = try MediatorProcess(arguments: ["--cuda-driver-version", "13.0"])
    let program = try CUDAClient.program("count_devices", linked: false)
    let r = try CUDAClient.run(program.path, [], device: mediator.spec)
    #expect(r.status == 0 && r.lines == ["version 13000 (0) cuInit 0 count 1 (0) cuDeviceGet 0"], "\(r)")
    #expect(r.stderr.isEmpty, "\(r)")
  }

  /// No VGPU_DEVICE, and no vGPU at 0000:00:05.0: no device — never a made-up
  /// one — and one line on stderr saying why. Likewise a mediator that is not there.
  @Test func noDeviceMeansZero() throws {
    try CUDAClient.requireShims()
    let slot = "/sys/bus/pci/devices/0000:00:05.0"
    let vendor = (try? String(contentsOfFile: slot + "/vendor", encoding: .utf8)) ?? ""
    let deviceID = (try? String(contentsOfFile: slot + "/device", encoding: .utf8)) ?? ""
    try #require(
      !(vendor.hasPrefix("0x1af4") && deviceID.hasPrefix("0x1110")), "this machine has an ivshmem device at \(slot)")
    let program = try CUDAClient.program("count_devices", linked: false)
    for device in [nil, "shm:/dev/shm/vgpu-no-such-mediator-\(getpid())"] {
      let r = try CUDAClient.run(program.path, [], device: device)
      #expect(r.status == 0, "\(r)")
      // cuInit: CUDA_ERROR_NO_DEVICE; count 0 (CUDA_SUCCESS); cuDeviceGet: CUDA_ERROR_NO_DEVICE.
      // cuDriverGetVersion: 12080 and CUDA_SUCCESS, as a driver without GPUs answers.
      #expect(r.lines == ["version 12080 (0) cuInit 100 count 0 (0) cuDeviceGet 100"], "\(r)")
      #expect(r.stderrLines.count == 1, "one line on stderr: \(r)")
      #expect(r.stderr.hasPrefix("vgpu: cuInit failed: "), "\(r)")
      if device != nil { #expect(r.stderr.contains("vgpu-mediator"), "says what to do: \(r)") }
    }
  }

  /// `sim` names the in-process reference device, which the shims do not
  /// carry: no device, and one line on stderr saying what to use instead.
  @Test func simIsRefused() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("count_devices", linked: false)
    let r = try CUDAClient.run(program.path, [], device: "sim")
    #expect(r.status == 0, "\(r)")
    #expect(r.lines == ["version 12080 (0) cuInit 100 count 0 (0) cuDeviceGet 100"], "\(r)")
    #expect(r.stderrLines.count == 1, "one line on stderr: \(r)")
    #expect(r.stderr.hasPrefix("vgpu: cuInit failed: open on sim: "), "\(r)")
    #expect(r.stderr.contains("carries none") && r.stderr.contains("vgpu-mediator"), "says what to do: \(r)")
  }

  /// `VGPU_TIMEOUT` that is no number of seconds in range: no device, and
  /// the one line says which variable and what to give instead; a good one
  /// opens the device as usual.
  @Test func badTimeoutIsRefused() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("count_devices", linked: false)
    try CUDATarget.mediator { device, _ in
      for bad in ["abc", "0", "-1", "1e9", "nan"] {
        let r = try CUDAClient.run(program.path, [], device: device, extra: ["VGPU_TIMEOUT": bad])
        #expect(r.lines == ["version 12080 (0) cuInit 100 count 0 (0) cuDeviceGet 100"], "\(bad): \(r)")
        #expect(r.stderrLines.count == 1, "one line on stderr: \(r)")
        #expect(r.stderr.contains("VGPU_TIMEOUT='\(bad)'") && r.stderr.contains("VGPU_TIMEOUT=10"), "\(r)")
      }
      let good = try CUDAClient.run(program.path, [], device: device, extra: ["VGPU_TIMEOUT": "7.5"])
      #expect(good.lines.first?.contains("cuInit 0 count 1") == true, "\(good)")
    }
  }

  /// NVIDIA's cuda-bindings: everything through cuGetProcAddress_v2 by name
  /// and version; copies of random bytes; Tests/Kernels/vector_add.cu as PTX
  /// (cuModuleLoadData, kernelParams) and as nvcc's fat binary (`extra`),
  /// launched on the device's PTX engine and checked in the script.
  @Test func cudaBindings() throws {
    try CUDAClient.requireShims()
    let python = try CUDAClient.requirePython()
    let script = CUDAClient.sources.appendingPathComponent("cuda_bindings_client.py").path
    try CUDATarget.mediator { device, memory in
      let source = CUDAToolchain.kernels.appendingPathComponent("vector_add.cu")
      let ptx = try CUDAToolchain.nvcc(source: source, output: .ptx)
      let fatbin = try CUDAToolchain.nvcc(source: source, output: .fatbin(.nvccDefault))
      let r = try CUDAClient.run(python, [script, ptx.path, fatbin.path], device: device)
      #expect(r.status == 0, "\(r)")
      let facts = r.lines
      for fact in [
        "version 12080", "count 1", "name \(Self.identity.name)", "total \(memory)", "cc 9.0",
        "uuid \(Self.identity.uuid.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())", "ctxdevice 0",
        "roundtrip 1048576", "vector_add 4096", "fatbin_extra 4096", "ptx CUDA_ERROR_INVALID_PTX",
        "missing_kernel CUDA_ERROR_NOT_FOUND",
        "error 1 CUDA_ERROR_INVALID_VALUE | invalid argument",
        "error 100 CUDA_ERROR_NO_DEVICE | no CUDA-capable device is detected",
        "error 801 CUDA_ERROR_NOT_SUPPORTED | operation not supported", "done",
      ] {
        #expect(facts.contains(fact), "missing '\(fact)': \(r)")
      }
      // The broken kernel: at most one line, naming the PTX line and token.
      #expect(r.stderrLines.count <= 1, "\(r)")
    }
  }

  /// A program that initialises, allocates and copies, then forks: the child
  /// opens the device on its own and works; the parent's memory and queues
  /// still work after the child has gone.
  @Test func forkAfterInitialisation() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("fork_after_init", linked: true)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines == ["child ok", "parent ok"], "\(r)")
      #expect(r.stderr.isEmpty, "\(r)")
    }
  }

  /// cuMemAllocHost in a VM whose BAR has a page-locked window (2.4,
  /// `--vm --host-window`): the memory lies in the BAR file, copies through
  /// it are right, and memory freed and allocated again is zeroed.
  @Test func pageLockedMemoryInAVMIsItsWindow() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("pinned_window", linked: true)
    let mediator = try MediatorProcess(arguments: ["--vm", "--host-window", "16M"])
    defer { mediator.stop() }
    let r = try CUDAClient.run(program.path, [mediator.path], device: mediator.spec)
    #expect(r.status == 0, "\(r)")
    #expect(r.lines == ["ok"], "\(r)")
  }

  /// The rest of the driver API a linked program uses: cuGetProcAddress's
  /// version table, errors, contexts, attributes, memory, modules, launches,
  /// streams, events, stubs, and no allocations on the copy path.
  @Test func driverAPI() throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("cuda_api", linked: true)
    try CUDATarget.mediator { device, _ in
      let r = try CUDAClient.run(program.path, [], device: device)
      #expect(r.status == 0, "\(r)")
      #expect(r.lines.last?.hasPrefix("ok ") == true, "\(r)")
      #expect(!r.stdout.contains("FAIL"), "\(r)")
      // Said once each: the cubin refused by the device, 1.x's text image (no
      // image this driver knows, never sent), the stub called twice.
      #expect(r.stderrLines.count == 3, "\(r)")
      #expect(r.stderrLines.contains { $0.contains("the device refused a 64-byte elf image") }, "\(r)")
      #expect(
        r.stderrLines.contains { $0.contains("cuModuleLoadData") && $0.contains("CUDA_ERROR_INVALID_IMAGE") }, "\(r)")
      #expect(
        r.stderrLines.contains("vgpu: cuMemCreate is not supported by this virtual GPU (CUDA_ERROR_NOT_SUPPORTED)"),
        "\(r)")
    }
  }
}
