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
    // 1 MiB: four slots' worth, so the upload pipelines through several.
    var image = Array("vgpu-module 1\n".utf8)
    image += [UInt8](repeating: UInt8(ascii: "#"), count: (1 << 20) - image.count)
    do {
      _ = try device.loadModule(image)
      Issue.record("a 1 MiB text image was accepted")
    } catch {
      #expect(error.status == .invalidImage)
      // The text the device kept: the built-in image's size limit, with the size it got.
      #expect("\(error)".contains("1048576 bytes; at most 65536 bytes are accepted"), "\(error)")
    }
    // The device serves the next command, on every queue pair.
    for _ in 0..<4 { try device.nop() }
  }

  @Test func aMissingKernelOrVariableIsNamed() throws {
    let device = try Device.open("sim", options: .simulator())
    defer { device.close() }
    let module = try device.loadModule(Array("vgpu-module 1\nkernel fill\n".utf8))
    #expect(throws: VGPUError.self) { try device.function("nope", in: module) }
    do {
      _ = try device.function("nope", in: module)
    } catch {
      #expect(error.status == .notFound)
      #expect("\(error)".contains("no kernel 'nope' in this module (it has: fill)"), "\(error)")
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
