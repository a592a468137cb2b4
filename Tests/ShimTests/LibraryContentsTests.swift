import Foundation
import TestSupport
import Testing

/// libvgpucore.so is loaded into every CUDA program: it carries the guest
/// client, never the device model. Every Swift symbol of a module carries
/// the module's name, so the device's (VGPUDevice) and the simulator's
/// would show in the library's bytes, as would the device's type names.
@Suite struct LibraryContentsTests {
  @Test func theCoreLibraryCarriesNoDeviceCode() throws {
    let library = Paths.shims.appendingPathComponent("libvgpucore.so")
    let bytes = try Data(contentsOf: library)
    #expect(bytes.count > 1 << 20, "\(library.path) looks empty")
    // Mangled module names (length-prefixed, as in `$s10VGPUDevice…`) and the device's types.
    for name in [
      "10VGPUDevice", "13VGPUSimulator", "3PTX", "9FatBinary", "ReferenceDevice", "DeviceAllocator", "PTXBackend",
      "HandleTable", "OwnerWatch", "DeviceMemory", "ServedQueuePair",
    ] {
      #expect(bytes.range(of: Data(name.utf8)) == nil, "libvgpucore.so contains \(name)")
    }
    // The guest side is there (so the check above looks at the right file).
    #expect(bytes.range(of: Data("12VGPUProtocol".utf8)) != nil)
    #expect(bytes.range(of: Data("4VGPU6Device".utf8)) != nil)
  }
}
