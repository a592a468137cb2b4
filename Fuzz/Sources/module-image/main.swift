// module-image: what the device does with a module image a guest uploads.
// ModuleImageLoader picks PTX out of a fat binary (entries, LZ4/zstd), an ELF
// cubin (refused) or PTX text; the PTX engine parses and lowers it; a kernel,
// when there is one, is launched over a tiny grid with a small instruction
// budget (an endless loop ends as budgetExhausted, not as a hang) on 4 KiB
// of fake global memory whose address is every pointer parameter.
//
// Input: one byte of launch settings, then the image.
import FatBinary
import FuzzSupport
import PTX
import VGPUProtocol

/// Device memory of one 4 KiB block at a fixed address: every access outside it is the kernel's bug.
final class FakeGlobalMemory: PTXGlobalMemory, @unchecked Sendable {
  static let base: UInt64 = 0x7f00_0000_0000
  let pointer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
  init() { pointer.initializeMemory(as: UInt8.self, repeating: 0, count: 4096) }
  deinit { pointer.deallocate() }
  func region(containing address: UInt64) -> PTXMemoryRegion? {
    guard address >= Self.base, address < Self.base + 4096 else { return nil }
    return PTXMemoryRegion(base: Self.base, count: 4096, pointer: pointer)
  }
}

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let settings = input.byte()
  let image = input.rest()
  // The sizer runs on the guest side first (how many bytes to send): it must agree with itself.
  _ = try? ModuleImageSizer.extent(of: image)
  guard let source = try? ModuleImageLoader.ptx(from: image, computeCapability: settings & 1 == 0 ? 90 : 75),
    let module = try? PTXModule(source: source.text)
  else { return 0 }
  let memory = FakeGlobalMemory()
  for name in module.kernelNames.prefix(2) {
    guard let info = try? module.kernel(named: name), info.parameterBytes <= 4096 else { continue }
    // Parameters: every 8-byte-aligned word points into the fake memory, so loads through pointer parameters land.
    var parameters = [UInt8](repeating: 0, count: info.parameterBytes)
    for p in info.parameters where p.size == 8 && p.offset + 8 <= parameters.count {
      withUnsafeBytes(of: (FakeGlobalMemory.base + UInt64(settings >> 4) * 16).littleEndian) {
        for i in 0..<8 { parameters[p.offset + i] = $0[i] }
      }
    }
    let grid = PTXDim3(UInt32(settings >> 1 & 1) + 1)
    let block = PTXDim3(UInt32(settings >> 2 & 3) + 1, 2)
    _ = parameters.withUnsafeBytes { raw in
      try? module.launch(
        kernel: name, grid: grid, block: block, dynamicSharedBytes: 64, parameters: raw, memory: memory,
        options: PTXLaunchOptions(instructionBudget: 100_000))
    }
  }
  return 0
}
