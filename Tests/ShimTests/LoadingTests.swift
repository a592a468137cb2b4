import Foundation
import TestSupport
import Testing

/// What loading a shim does (nothing) and what the libraries export (the API only).
@Suite struct LoadingTests {
  @Test func shimsAreBuilt() {
    for lib in ["libcuda.so.1", "libvgpucore.so"] {
      #expect(
        FileManager.default.fileExists(atPath: Paths.shims.appendingPathComponent(lib).path),
        "\(lib) missing in \(Paths.shims.path): run tools/test, which builds the shims before swift test")
    }
  }
}
