import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice

#if canImport(Glibc)
  import Glibc
#endif

/// NVIDIA's CUDA runtime, unmodified: libcudart.so.12 and its headers from the
/// PyPI wheel nvidia-cuda-runtime-cu12 (tools/requirements-test.txt), over
/// libcuda.so.1 — its private export tables and their integrity check
/// included (shims/cuda_export_tables.def, docs/CUDART.md).
@Suite struct CUDARuntimeTests {
  static let identity = ReferenceDeviceConfiguration().identity

  /// Where tools/setup put the wheels: nvidia/cuda_runtime (headers and
  /// libcudart.so.12) and nvidia/cuda_nvcc (the crt/ headers
  /// cuda_runtime_api.h includes, which NVIDIA ships with nvcc).
  static func wheels() throws -> (runtime: URL, nvcc: URL) {
    let lib = Paths.packageRoot.appendingPathComponent(".venv/lib")
    let pythons = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
    for python in pythons.sorted() where python.hasPrefix("python3") {
      let nvidia = lib.appendingPathComponent("\(python)/site-packages/nvidia")
      let runtime = nvidia.appendingPathComponent("cuda_runtime")
      let nvcc = nvidia.appendingPathComponent("cuda_nvcc")
      if FileManager.default.fileExists(atPath: runtime.appendingPathComponent("lib/libcudart.so.12").path),
        FileManager.default.fileExists(atPath: nvcc.appendingPathComponent("include/crt/host_defines.h").path)
      {
        return (runtime, nvcc)
      }
    }
    try #require(
      Bool(false), "no nvidia-cuda-runtime-cu12 / nvidia-cuda-nvcc-cu12 wheel in \(lib.path): run tools/setup")
    fatalError()
  }

  /// clients/cudart_client.c, built with the system cc against the wheel.
  static func client() throws -> URL {
    try CUDAClient.requireShims()
    let (runtime, nvcc) = try wheels()
    let output = CUDAClient.directory.appendingPathComponent("cudart_client-\(UUID().uuidString)")
    let cc = try CUDAClient.run(
      "/usr/bin/cc",
      [
        "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror",
        "-I", runtime.appendingPathComponent("include").path, "-I", nvcc.appendingPathComponent("include").path,
        "-o", output.path, CUDAClient.sources.appendingPathComponent("cudart_client.c").path,
        "-L", runtime.appendingPathComponent("lib").path, "-l:libcudart.so.12",
        "-Wl,-rpath," + runtime.appendingPathComponent("lib").path,
        "-L", Paths.shims.path, "-l:libnvidia-ml.so.1", "-ldl",
      ], device: nil)
    try #require(cc.status == 0, "cc cudart_client.c failed:\n\(cc)")
    return output
  }

  /// Every check the program makes, in its order.
  static let checks = [
    "device_count", "nvml_queries", "props_name_nvml", "props_memory_nvml", "props_cc_nvml", "props_pci_nvml",
    "props_uuid_nvml", "driver_loaded", "driver_queries", "props_driver", "mem_get_info", "nvml_held_before",
    "malloc", "nvml_held_after_malloc", "random_data", "memcpy_roundtrip", "memset", "memcpy_device_to_device",
    "memcpy_default", "memcpy_peer", "malloc_pitch", "memcpy_2d", "pointer_attributes", "synchronize", "free",
    "nvml_held_after_free", "no_error_pending",
  ]

  /// Asserts that one run passed every check and reported this device.
  static func expectPassed(_ r: CUDAClient.Output, memory: UInt64) {
    #expect(r.status == 0, "\(r)")
    #expect(r.stderr.isEmpty, "the runtime and the shims must stay quiet: \(r)")
    #expect(r.lines.filter { $0.hasPrefix("check ") } == checks.map { "check \($0) ok" }, "\(r)")
    let facts = Set(r.lines)
    let cc = identity.computeCapability
    for fact in [
      "fact runtime 12090", "fact name \(identity.name)", "fact total \(memory)", "fact cc \(cc.major).\(cc.minor)",
      "fact pci 0000:00:05", "fact uuid \(identity.uuidString)", "done",
    ] {
      #expect(facts.contains(fact), "missing '\(fact)': \(r)")
    }
  }

  /// What NVML says is in use on the device once the clients have gone.
  static func deviceMemoryInUse(_ program: URL, _ mediator: MediatorProcess) throws -> String {
    let r = try CUDAClient.run(program.path, ["--used"], device: mediator.spec)
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// The integrity value's hash, against RFC 1319's MD2 test suite and the
  /// intermediate states ZLUDA's tests publish.
  @Test func integrityHashMatchesPublishedVectors() throws {
    let output = CUDAClient.directory.appendingPathComponent("cuda_integrity_vectors-\(UUID().uuidString)")
    let shims = Paths.packageRoot.appendingPathComponent("shims")
    let cc = try CUDAClient.run(
      "/usr/bin/cc",
      [
        "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-I", shims.path, "-o", output.path,
        CUDAClient.sources.appendingPathComponent("cuda_integrity_vectors.c").path,
        shims.appendingPathComponent("cuda_integrity.c").path,
      ], device: nil)
    try #require(cc.status == 0, "\(cc)")
    let r = try CUDAClient.run(output.path, [], device: nil)
    #expect(r.status == 0 && r.lines.last == "ok", "\(r)")
    #expect(r.lines.count == 14 && r.lines.dropLast().allSatisfy { $0.hasSuffix(" ok") }, "\(r)")
  }

  /// One process: properties as NVML and the driver API report them,
  /// memory, 64 MiB of random data both ways, memset, a device-to-device
  /// copy, synchronize, free, and the device's accounting back to zero.
  @Test func cudartOnTheVGPU() throws {
    let program = try Self.client()
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    let r = try CUDAClient.run(program.path, [], device: mediator.spec)
    Self.expectPassed(r, memory: 8 << 30)
    #expect(r.lines.contains("fact free_after \(8 << 30)"), "all memory free again: \(r)")
    #expect(try Self.deviceMemoryInUse(program, mediator) == "used 0")
  }

  /// The same program as two processes at once, each finding the device on its own.
  @Test func cudartInTwoProcessesAtOnce() throws {
    let program = try Self.client()
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    let results = Mutex<[Result<CUDAClient.Output, any Error>]>([])
    DispatchQueue.concurrentPerform(iterations: 2) { _ in
      let r = Result { try CUDAClient.run(program.path, [], device: mediator.spec) }
      results.withLock { $0.append(r) }
    }
    let outputs = try results.withLock { $0 }.map { try $0.get() }
    #expect(outputs.count == 2)
    for r in outputs { Self.expectPassed(r, memory: 8 << 30) }
    #expect(try Self.deviceMemoryInUse(program, mediator) == "used 0")
  }
}
