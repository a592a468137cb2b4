import Foundation
import TestSupport
import Testing
import VGPU
import VGPUProtocol

/// `vgpu-mediator --backend cuda` without a GPU: its host driver is the
/// project's own libcuda.so.1, a client of a reference-device mediator.
/// Copies cross both layers byte for byte, and each layer's accounting is
/// exact: the GPU mediator's per guest process, the host's for the GPU
/// mediator's process.
@Suite(.serialized) final class LayeredTests {
  let layers: LayeredMediators

  /// A small watchdog on the host device, so an endless loop ends in a moment.
  init() throws { layers = try LayeredMediators(hostArguments: ["--kernel-budget", "3000000"]) }

  deinit { layers.stop() }

  /// What the host's device holds for the GPU mediator's process: its only
  /// other tenant (whose BAR a client of the host cannot see, but whose
  /// memory memoryInfo counts).
  func hostHolds() throws -> UInt64? {
    guard let host = layers.host else { return nil }
    let d = try Device.open(host.spec)
    defer { d.close() }
    let (free, total) = try d.memoryInfo()
    return total - free
  }

  @Test func copiesRoundTripThroughBothLayers() throws {
    let d = try Device.open(layers.spec)
    defer { d.close() }
    var generator = SystemRandomNumberGenerator()
    for size in [1, 4097, (1 << 20) + 3, 8 << 20] {
      let bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
      let p = try d.allocate(size)
      try d.copy(to: p, from: bytes)
      #expect(try d.read(p, count: size) == bytes, "\(size) bytes")
      // Device to device, and a memset over part of it, on the GPU side.
      let q = try d.allocate(size)
      try d.copy(to: q, from: p, count: size)
      #expect(try d.read(q, count: size) == bytes, "\(size) bytes, device to device")
      try d.free(p)
      try d.free(q)
    }
  }

  @Test func accountingIsExactOnBothLayers() throws {
    #expect(try hostHolds() == 0)
    let d = try Device.open(layers.spec)
    let sizes = [1, 256, 257, 4096, (1 << 20) + 1, 3 << 20]
    var pointers: [DevicePointer] = []
    for s in sizes { pointers.append(try d.allocate(s)) }
    // cudaMalloc's 256-byte granularity, counted the same by both devices.
    let expected = sizes.map { UInt64(($0 + 255) / 256 * 256) }.reduce(0, +)
    #expect(try d.statistics(.process).bytesAllocated == expected)
    #expect(try hostHolds() == expected)
    let (free, total) = try d.memoryInfo()
    #expect(total == 4 << 30 && free == total - expected, "the BAR's --memory slice, less what is held")
    try d.free(pointers.removeLast())
    #expect(try hostHolds() == expected - (3 << 20))
    // A process that goes without freeing: both layers give everything back.
    d.close()
    let deadline = Date().addingTimeInterval(5)
    while try hostHolds() != 0 && Date() < deadline { usleep(20_000) }
    #expect(try hostHolds() == 0)
    let probe = try Device.open(layers.spec)
    defer { probe.close() }
    #expect(try probe.statistics(.device).bytesAllocated == 0)
  }

  /// Guests' utilization is the GPU's, from the host's NVML (here the
  /// project's libnvidia-ml.so.1, which measures the host device's busy
  /// time), whoever keeps it busy: a kernel run on the host device by
  /// another client shows in the GPU mediator's busy time, though that
  /// mediator served nothing meanwhile.
  @Test func theGPUsBusyTimeReachesGuests() throws {
    let host = try #require(layers.host, "a real GPU: the host's NVML is not ours to drive")
    let guest = try Device.open(layers.spec)
    defer { guest.close() }
    let before = try guest.statistics(.device).busyNanoseconds
    let d = try Device.open(host.spec)
    defer { d.close() }
    let source = try String(
      contentsOf: CUDAToolchain.kernels.appendingPathComponent("endless_loop.cu"), encoding: .utf8)
    let image = Array(try CUDAToolchain.nvrtcPTX(source: source, name: "endless_loop.cu", compute: 75).utf8) + [0]
    let module = try d.loadModule(image)
    let f = try d.function("endless_loop", in: module)
    let flag = try d.allocate(4)
    try d.copy(to: flag, from: [0, 0, 0, 0])
    let started = Date()
    var parameters = [UInt8](repeating: 0, count: 8)
    withUnsafeBytes(of: flag.address.littleEndian) { parameters.replaceSubrange(0..<8, with: $0) }
    #expect(throws: VGPUError.self) {
      try d.launch(f, grid: Dimensions(1), block: Dimensions(32), parameters: parameters)
      try d.synchronize()
    }
    let ran = Date().timeIntervalSince(started)
    usleep(150_000)
    let busy = Double(try guest.statistics(.device).busyNanoseconds - before) / 1e9
    // The loop ran on the host device for most of `ran`: at least a third of it shows.
    #expect(busy >= ran / 3 && busy <= ran + 1, "busy \(busy) s of \(ran) s")
  }

  /// A cooperative launch (protocol 2.2) crosses both layers: the GPU mediator forwards it
  /// with cuLaunchKernelEx and CU_LAUNCH_ATTRIBUTE_COOPERATIVE to its host driver, here the
  /// vGPU shim, whose device runs the grid sync (`cudaCGSynchronize`, NVRTC `-rdc=true`).
  @Test func aCooperativeLaunchCrossesBothLayers() throws {
    let d = try Device.open(layers.spec)
    defer { d.close() }
    let source = try String(
      contentsOf: CUDAToolchain.kernels.appendingPathComponent("grid_sync_rdc.cu"), encoding: .utf8)
    let ptx = try CUDAToolchain.nvrtcPTX(source: source, name: "grid_sync_rdc.cu", options: ["-rdc=true"])
    let f = try d.function("rounds", in: try d.loadModule(Array(ptx.utf8) + [0]))
    let (blocks, threads, rounds) = (4, 32, 5)
    let n = blocks * threads
    let buf = try d.allocate(2 * n * 4)
    let out = try d.allocate(n * 4)
    var parameters = [UInt8](repeating: 0, count: 20)
    withUnsafeBytes(of: buf.address.littleEndian) { parameters.replaceSubrange(0..<8, with: $0) }
    withUnsafeBytes(of: out.address.littleEndian) { parameters.replaceSubrange(8..<16, with: $0) }
    withUnsafeBytes(of: Int32(rounds).littleEndian) { parameters.replaceSubrange(16..<20, with: $0) }
    try d.launch(
      f, grid: Dimensions(UInt32(blocks)), block: Dimensions(UInt32(threads)), parameters: parameters,
      cooperative: true)
    try d.synchronize()
    var expected = (0..<n).map { UInt32($0) }
    for _ in 0..<rounds {
      let published = expected
      for i in 0..<n { expected[i] = expected[i] &* 3 &+ published[(i + threads + 1) % n] }
    }
    let bytes = try d.read(out, count: n * 4)
    let got = (0..<n).map { k in bytes[(4 * k)..<(4 * k + 4)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
    #expect(got == expected)
  }

  /// The BAR's memory limit holds exactly, whatever the GPU has.
  @Test func theMemoryLimitIsTheBARs() throws {
    let d = try Device.open(layers.spec)
    defer { d.close() }
    let most = try d.allocate((4 << 30) - (1 << 20))
    do {
      _ = try d.allocate((1 << 20) + 1)
      Issue.record("an allocation past the 4 GiB slice succeeded")
    } catch {
      #expect(error.status == .outOfMemory, "\(error)")
    }
    _ = try d.allocate(1 << 20)
    try d.free(most)
  }
}

/// The mediator's start without a usable driver: one line naming what was
/// looked for, exit status 1.
@Suite struct CUDABackendStartTests {
  @Test func noDriverIsOneClearLine() throws {
    let p = Process()
    p.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
    p.arguments = [
      "--socket", "/dev/shm/vgpu-nodriver-\(getpid()).sock", "--backend", "cuda", "--cuda-library",
      "/nonexistent/libcuda.so.1",
    ]
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(p.terminationStatus == 1)
    #expect(text.split(separator: "\n").count == 1, "\(text)")
    #expect(text.contains("/nonexistent/libcuda.so.1") && text.contains("NVIDIA driver"), "\(text)")
    #expect(!FileManager.default.fileExists(atPath: "/dev/shm/vgpu-nodriver-\(getpid()).sock"))
  }

  @Test func aBadBackendIsRefused() throws {
    let p = Process()
    p.executableURL = MediatorProcess.binaries.appendingPathComponent("vgpu-mediator")
    p.arguments = ["--backend", "opencl"]
    p.standardError = Pipe()
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationStatus == 2)
  }
}
