import TestSupport
import Testing
import VGPU
import VGPUProtocol
import VGPUSimulator

/// Protocol 2.0's module transport: images larger than a staging slot go
/// in chunks; a refused image, a missing variable or kernel comes back with
/// the device's own line; the device output starts empty.
@Suite struct ModuleImageTransportTests {
  @Test func anImageLargerThanASlotIsUploadedAndTheDeviceExplainsItsRefusal() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    #expect(device.info.features.contains(.kernelImages))
    // Over 1 MiB of PTX: four slots' worth, so the upload pipelines through several.
    let padding = String(repeating: "// padding, so that the image is larger than a staging slot\n", count: 18_000)
    let image = Array((TestPTX.fillAndVectorAdd + padding).utf8)
    #expect(image.count > 1 << 20)
    let module = try device.loadModule(image)
    let fill = try device.function("fill", in: module)
    let p = try device.allocate(64 * 4)
    try device.launch(
      fill, grid: Dimensions(1), block: Dimensions(64),
      parameters: try #require(fill.layout).pack([.pointer(p.address), .f32(2.5), .u32(64)]))
    #expect(
      try device.read(p, count: 64 * 4)
        == Array(repeating: withUnsafeBytes(of: Float(2.5)) { Array($0) }, count: 64).flatMap { $0 })
    // The same, broken on its last line: the device says which line.
    let lines = (TestPTX.fillAndVectorAdd + padding).split(separator: "\n", omittingEmptySubsequences: false).count
    do {
      _ = try device.loadModule(image + Array(".bogus directive\n".utf8))
      Issue.record("a broken image was accepted")
    } catch {
      #expect(error.status == .invalidPTX)
      // The text the device kept, with the line it could not read.
      #expect("\(error)".contains("line \(lines)"), "\(error)")
    }
    // The device serves the next command, on every queue pair.
    for _ in 0..<4 { try device.nop() }
  }

  @Test func aMissingKernelOrVariableIsNamed() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    let module = try device.loadModule(TestPTX.fillAndVectorAddImage)
    #expect(throws: VGPUError.self) { try device.function("nope", in: module) }
    do {
      _ = try device.function("nope", in: module)
    } catch {
      #expect(error.status == .notFound)
      #expect("\(error)".contains("no kernel 'nope' in this module (it has: fill, vector_add)"), "\(error)")
    }
    do {
      _ = try device.global("counter", in: module)
      Issue.record("a variable the module lacks was found")
    } catch {
      #expect(error.status == .notFound)
      #expect("\(error)".contains("no variable 'counter'"), "\(error)")
    }
    let output = try device.takeOutput()
    #expect(output.bytes.isEmpty && output.dropped == 0)
  }
}
