import PTX

/// A bump allocator over host memory standing in for the device's global memory: every region
/// is one allocation, and the engine's bounds checks apply to it.
final class TestMemory: PTXGlobalMemory, @unchecked Sendable {
  struct Block {
    var base: UInt64
    var pointer: UnsafeMutableRawPointer
    var count: Int
  }
  var blocks: [Block] = []
  var next: UInt64 = 0x7f00_0000_0000

  deinit { for b in blocks { b.pointer.deallocate() } }

  func region(containing address: UInt64) -> PTXMemoryRegion? {
    for b in blocks where address >= b.base && address < b.base + UInt64(b.count) {
      return PTXMemoryRegion(base: b.base, count: b.count, pointer: b.pointer)
    }
    return nil
  }

  func alloc(_ count: Int, align: Int = 256) -> UInt64 {
    next = (next + UInt64(align) - 1) / UInt64(align) * UInt64(align)
    let p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: max(count, 1))
    blocks.append(Block(base: next, pointer: p, count: count))
    defer { next += UInt64(count) + 256 }  // a gap so overruns fault
    return next
  }

  func upload<T>(_ values: [T]) -> UInt64 {
    let a = alloc(values.count * MemoryLayout<T>.stride)
    values.withUnsafeBytes { pointer(a).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    return a
  }

  func pointer(_ address: UInt64) -> UnsafeMutableRawPointer {
    let b = blocks.first { address >= $0.base && address < $0.base + UInt64($0.count) }!
    return b.pointer + Int(address - b.base)
  }

  func download<T>(_ address: UInt64, count: Int, as: T.Type) -> [T] {
    let p = pointer(address)
    return (0..<count).map { p.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.stride, as: T.self) }
  }

  /// Allocates and initialises a module's globals, then binds them.
  func load(_ module: PTXModule) throws {
    var addresses: [String: UInt64] = [:]
    for g in module.globals { addresses[g.name] = alloc(g.size, align: max(g.alignment, 16)) }
    module.bind(globalAddresses: addresses)
    for g in module.globals {
      let bytes = try module.initialBytes(ofGlobal: g.name)
      bytes.withUnsafeBytes { pointer(addresses[g.name]!).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
  }
}

/// Packs kernel arguments at the offsets the module reports.
func pack(_ info: PTXKernelInfo, _ values: [Any]) -> [UInt8] {
  var buf = [UInt8](repeating: 0, count: info.parameterBytes)
  for (k, v) in values.enumerated() {
    let off = info.parameters[k].offset
    var bytes: [UInt8] = []
    switch v {
    case let x as UInt64: bytes = withUnsafeBytes(of: x) { Array($0) }
    case let x as Int32: bytes = withUnsafeBytes(of: x) { Array($0) }
    case let x as UInt32: bytes = withUnsafeBytes(of: x) { Array($0) }
    case let x as Float: bytes = withUnsafeBytes(of: x) { Array($0) }
    case let x as Double: bytes = withUnsafeBytes(of: x) { Array($0) }
    case let x as Int64: bytes = withUnsafeBytes(of: x) { Array($0) }
    default: fatalError("unsupported argument \(v)")
    }
    for (j, b) in bytes.enumerated() { buf[off + j] = b }
  }
  return buf
}

/// Loads `source`, binds its globals in `memory`, and runs `kernel`.
@discardableResult
func run(
  _ source: String, _ kernel: String, grid: PTXDim3 = PTXDim3(1), block: PTXDim3, args: [Any], memory: TestMemory,
  dynamicShared: Int = 0, budget: UInt64 = 100_000_000, printf: ((String) -> Void)? = nil
) throws -> PTXLaunchStats {
  let module = try PTXModule(source: source)
  try memory.load(module)
  let info = try module.kernel(named: kernel)
  return try module.launch(
    kernel: kernel, grid: grid, block: block, dynamicSharedBytes: dynamicShared, parameters: pack(info, args),
    memory: memory, options: PTXLaunchOptions(instructionBudget: budget, printf: printf))
}
