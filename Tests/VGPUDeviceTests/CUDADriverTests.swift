import Foundation
import TestSupport
import Testing

@testable import VGPUDevice

#if canImport(Glibc)
  import Glibc
#endif

/// CUDADriver, the host driver API the mediator's CUDA backend loads at run
/// time. Without a GPU, "the host driver" is this project's own
/// libcuda.so.1 shim (built by tools/build-shims), served by a real
/// vgpu-mediator process: loaded into this Swift process, which then holds
/// two Swift runtimes (the test's and libvgpucore.so's static one), as the
/// mediator will in layered mode.
@Suite(.serialized) struct CUDADriverTests {
  @Test func aMissingLibraryIsNamedWithWhatToDo() throws {
    let path = "/nonexistent/vgpu-test/libcuda.so.1"
    do {
      _ = try CUDADriver.load(path: path)
      Issue.record("loading \(path) succeeded")
    } catch {
      #expect(error.kind == .libraryNotFound)
      #expect(error.description.contains(path), "\(error)")
      #expect(error.description.contains("NVIDIA driver"), "\(error)")
      #expect(!error.description.contains("\n"), "one line: \(error)")
    }
    // A bare name: the loader's search is what was tried.
    do {
      _ = try CUDADriver.load(path: "libcuda-vgpu-test-absent.so.1")
      Issue.record("loading a made-up name succeeded")
    } catch {
      #expect(error.description.contains("LD_LIBRARY_PATH") && error.description.contains("ldconfig"), "\(error)")
    }
  }

  @Test func aLibraryWithoutTheDriverAPINamesTheMissingSymbol() throws {
    // libvgpu.so is a real shared library with none of cuda.h's entry points.
    let path = Paths.shims.appendingPathComponent("libvgpu.so").path
    try #require(FileManager.default.fileExists(atPath: path), "run tools/build-shims (tools/test does)")
    do {
      _ = try CUDADriver.load(path: path)
      Issue.record("loading \(path) as a CUDA driver succeeded")
    } catch {
      #expect(error.kind == .missingSymbol)
      #expect(error.description.contains("cuInit") && error.description.contains("too old"), "\(error)")
    }
  }

  /// The shim as the driver: every required symbol resolves, it says it is
  /// the shim, cuInit reaches the mediator, the identity is the device's,
  /// and memory, copies, memsets, streams, events and a kernel work through
  /// the stored function pointers.
  @Test func theProjectsOwnShimWorksAsTheDriver() throws {
    let path = Paths.shims.appendingPathComponent("libcuda.so.1").path
    try #require(FileManager.default.fileExists(atPath: path), "run tools/build-shims (tools/test does)")
    let mediator = try MediatorProcess()
    defer { mediator.stop() }
    // The shim reads VGPU_DEVICE when it opens the device (cuInit). Other
    // tests run processes with this process's environment: it is set only
    // for the load.
    setenv("VGPU_DEVICE", mediator.spec, 1)
    let loaded = Result { () throws(CUDADriverError) in try CUDADriver.load(path: path) }
    unsetenv("VGPU_DEVICE")
    let driver = try loaded.get()

    #expect(driver.isVGPUShim)
    #expect(driver.path == URL(fileURLWithPath: path).resolvingSymlinksInPath().path)
    #expect(driver.version >= 12000, "driver version \(driver.version)")
    #expect(driver.cuFuncGetParamInfo != nil && driver.cuFuncGetName != nil)
    #expect(driver.cuModuleGetFunctionCount != nil && driver.cuModuleEnumerateFunctions != nil)

    // Errors, named by the driver itself.
    #expect(driver.errorName(2) == "CUDA_ERROR_OUT_OF_MEMORY")
    #expect(driver.errorName(123_456) == "CUresult 123456")
    #expect(
      driver.describe(2, "cuMemAlloc(1048576 bytes)")
        == "cuMemAlloc(1048576 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory")

    #expect(try driver.deviceCount() == 1)
    let id = try driver.identity(ordinal: 0)
    #expect(!id.name.isEmpty, "\(id)")
    #expect(id.uuid.count == 16 && id.uuid.contains { $0 != 0 }, "\(id)")
    #expect(id.uuidString.hasPrefix("GPU-") && id.uuidString.count == 40, "\(id.uuidString)")
    #expect(id.computeCapabilityMajor >= 5 && id.multiprocessorCount > 0, "\(id)")
    #expect(id.totalMemory == 8 << 30, "MediatorProcess serves 8 GiB: \(id)")
    #expect(id.warpSize == 32 && id.maxThreadsPerBlock == 1024, "\(id)")
    do {
      _ = try driver.identity(ordinal: 3)
      Issue.record("a device at index 3")
    } catch {
      #expect(error.kind == .noDevice && error.description.contains("index 3"), "\(error)")
    }

    var context: OpaquePointer?
    try check(driver, driver.cuCtxCreate(&context, 0, 0), "cuCtxCreate")
    defer { _ = driver.cuCtxDestroy(context) }
    try check(driver, driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    var free = 0
    var total = 0
    try check(driver, driver.cuMemGetInfo(&free, &total), "cuMemGetInfo")
    #expect(total == 8 << 30 && free > 0 && free <= total)

    // A round trip: registered host memory → device → another device buffer → host.
    let count = 1 << 16
    var source = [UInt8](repeating: 0, count: count)
    for i in source.indices { source[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
    var stream: OpaquePointer?
    try check(driver, driver.cuStreamCreate(&stream, 0), "cuStreamCreate")
    var a: UInt64 = 0
    var b: UInt64 = 0
    try check(driver, driver.cuMemAlloc(&a, count), "cuMemAlloc")
    try check(driver, driver.cuMemAlloc(&b, count), "cuMemAlloc")
    try source.withUnsafeMutableBytes { s in
      try check(driver, driver.cuMemHostRegister(s.baseAddress, count, 0), "cuMemHostRegister")
      try check(driver, driver.cuMemcpyHtoDAsync(a, s.baseAddress, count, stream), "cuMemcpyHtoDAsync")
      try check(driver, driver.cuMemHostUnregister(s.baseAddress), "cuMemHostUnregister")
    }
    try check(driver, driver.cuMemcpyDtoDAsync(b, a, count, stream), "cuMemcpyDtoDAsync")
    var back = [UInt8](repeating: 0, count: count)
    try back.withUnsafeMutableBytes { d in
      try check(driver, driver.cuMemcpyDtoHAsync(d.baseAddress, b, count, stream), "cuMemcpyDtoHAsync")
    }
    try check(driver, driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
    #expect(driver.cuStreamQuery(stream) == 0)
    #expect(back == source)

    // Memsets, then an event after them.
    var event: OpaquePointer?
    try check(driver, driver.cuEventCreate(&event, 0), "cuEventCreate")
    try check(driver, driver.cuMemsetD8Async(a, 0xab, 16, stream), "cuMemsetD8Async")
    try check(driver, driver.cuMemsetD16Async(a + 16, 0x1234, 8, stream), "cuMemsetD16Async")
    try check(driver, driver.cuMemsetD32Async(a + 32, 0xdead_beef, 4, stream), "cuMemsetD32Async")
    try check(driver, driver.cuEventRecord(event, stream), "cuEventRecord")
    try check(driver, driver.cuEventSynchronize(event), "cuEventSynchronize")
    #expect(driver.cuEventQuery(event) == 0)
    var head = [UInt8](repeating: 0, count: 48)
    try head.withUnsafeMutableBytes { d in
      try check(driver, driver.cuMemcpyDtoHAsync(d.baseAddress, a, 48, nil), "cuMemcpyDtoHAsync")
    }
    try check(driver, driver.cuCtxSynchronize(), "cuCtxSynchronize")
    #expect(head[0..<16].allSatisfy { $0 == 0xab })
    #expect(head[16..<32] == ArraySlice([UInt8](repeating: 0, count: 8).indices.flatMap { _ in [0x34, 0x12] }))
    #expect(head[32..<48] == ArraySlice((0..<4).flatMap { _ in [0xef, 0xbe, 0xad, 0xde] as [UInt8] }))

    // A module: its functions, their parameters, a launch.
    var module: OpaquePointer?
    try TestPTX.fillAndVectorAdd.withCString { ptx in
      try check(driver, driver.cuModuleLoadData(&module, ptx), "cuModuleLoadData")
    }
    var functionCount: UInt32 = 0
    try check(driver, driver.cuModuleGetFunctionCount!(&functionCount, module), "cuModuleGetFunctionCount")
    #expect(functionCount == 2)
    var functions = [OpaquePointer?](repeating: nil, count: Int(functionCount))
    try check(
      driver, driver.cuModuleEnumerateFunctions!(&functions, functionCount, module), "cuModuleEnumerateFunctions")
    let names = functions.map { f -> String in
      var name: UnsafePointer<CChar>?
      return driver.cuFuncGetName!(&name, f) == 0 ? name.map { String(cString: $0) } ?? "" : ""
    }
    #expect(names.sorted() == ["fill", "vector_add"])
    var fill: OpaquePointer?
    try check(driver, driver.cuModuleGetFunction(&fill, module, "fill"), "cuModuleGetFunction")
    #expect(functions.contains(fill), "the handle cuModuleGetFunction gives is the enumerated one")
    var offset = 0
    var size = 0
    try check(driver, driver.cuFuncGetParamInfo!(fill, 1, &offset, &size), "cuFuncGetParamInfo")
    #expect(offset == 8 && size == 4)
    var threads: Int32 = 0
    try check(driver, driver.cuFuncGetAttribute(&threads, 0, fill), "cuFuncGetAttribute")  // MAX_THREADS_PER_BLOCK
    #expect(threads > 0)
    var dst = a
    var value: Float = 2.5
    var n: UInt32 = 256
    try withUnsafeMutablePointer(to: &dst) { pd in
      try withUnsafeMutablePointer(to: &value) { pv in
        try withUnsafeMutablePointer(to: &n) { pn in
          var params: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(pd), .init(pv), .init(pn)]
          try check(driver, driver.cuLaunchKernel(fill, 1, 1, 1, 256, 1, 1, 0, stream, &params, nil), "cuLaunchKernel")
        }
      }
    }
    try check(driver, driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
    var floats = [Float](repeating: 0, count: 256)
    try floats.withUnsafeMutableBytes { d in
      try check(driver, driver.cuMemcpyDtoHAsync(d.baseAddress, a, 1024, nil), "cuMemcpyDtoHAsync")
    }
    try check(driver, driver.cuCtxSynchronize(), "cuCtxSynchronize")
    #expect(floats.allSatisfy { $0 == 2.5 })

    try check(driver, driver.cuEventDestroy(event), "cuEventDestroy")
    try check(driver, driver.cuModuleUnload(module), "cuModuleUnload")
    try check(driver, driver.cuMemFree(a), "cuMemFree")
    try check(driver, driver.cuMemFree(b), "cuMemFree")
    try check(driver, driver.cuStreamDestroy(stream), "cuStreamDestroy")
  }

  struct Failed: Error, CustomStringConvertible { var description: String }

  /// Throws the driver's own description of a failed call.
  func check(_ driver: CUDADriver, _ r: Int32, _ what: String) throws {
    guard r == 0 else { throw Failed(description: driver.describe(r, what)) }
  }
}
