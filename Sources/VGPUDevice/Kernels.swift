/// The kind of one kernel parameter.
public enum KernelParameter: Sendable, Equatable {
  /// A device address (8 bytes).
  case pointer
  /// A 32-bit IEEE 754 float (4 bytes).
  case f32
  /// A 32-bit unsigned integer (4 bytes).
  case u32

  /// Size in bytes; also the parameter's alignment inside the parameter buffer.
  public var size: Int {
    switch self {
    case .pointer: return 8
    case .f32, .u32: return 4
    }
  }
}

/// One parameter value, for packing a parameter buffer (guest side and tests).
public enum KernelArgument: Sendable, Equatable {
  case pointer(UInt64)
  case f32(Float)
  case u32(UInt32)

  /// The parameter kind this value fills.
  public var kind: KernelParameter {
    switch self {
    case .pointer: return .pointer
    case .f32: return .f32
    case .u32: return .u32
    }
  }
}

/// Why a kernel launch was refused. Nothing has been written when one of these is thrown.
public enum KernelError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The parameter buffer does not have the kernel's `parameterBufferSize`.
  case parameterSize(expected: Int, got: Int)
  /// A pointer parameter does not resolve to `byteCount` bytes of live device memory.
  case invalidPointer(parameterIndex: Int, address: UInt64, byteCount: UInt64)
  /// matmul dimensions whose product `m * n * k` (or a byte size) does not fit in 64 bits.
  case dimensionsOverflow(m: UInt32, n: UInt32, k: UInt32)

  public var description: String {
    switch self {
    case .parameterSize(let expected, let got):
      return "Kernel parameter buffer is \(got) bytes; this kernel takes exactly \(expected) bytes."
    case .invalidPointer(let index, let address, let count):
      return
        "Kernel parameter \(index): address 0x\(String(address, radix: 16)) does not point to \(count) bytes of allocated device memory."
    case .dimensionsOverflow(let m, let n, let k):
      return "matmul dimensions m=\(m) n=\(n) k=\(k) overflow 64-bit arithmetic."
    }
  }
}

/// Device memory as a kernel sees it. The device implements this by validating addresses
/// against live allocations (`DeviceAllocator.allocation(containing:length:)`) and translating
/// them into its `DeviceMemory` reservation.
public protocol KernelMemory {
  /// A host pointer to `byteCount` bytes at device `address`, or nil when any of those bytes
  /// is not valid device memory. Never called with `byteCount == 0`. Called on every launch,
  /// so implementations must not allocate.
  func resolve(_ address: UInt64, byteCount: UInt64) -> UnsafeMutableRawPointer?
}

/// The kernels the reference device runs on its CPU, named in module images.
///
/// All data is `Float` (f32), matrices row-major. Parameters, in order:
/// - `fill(dst: ptr, value: f32, n: u32)`: `dst[i] = value`
/// - `vector_add(a: ptr, b: ptr, c: ptr, n: u32)`: `c[i] = a[i] + b[i]`
/// - `saxpy(a: f32, x: ptr, y: ptr, n: u32)`: `y[i] = a * x[i] + y[i]`
/// - `scale(x: ptr, a: f32, n: u32)`: `x[i] *= a`
/// - `reduce_sum(x: ptr, out: ptr, n: u32)`: `out[0] = Float(sum of x[0..<n])`, summed in
///   `Double` in index order (deterministic, unlike a GPU's tree reduction)
/// - `matmul(a: ptr, b: ptr, c: ptr, m: u32, n: u32, k: u32)`: `C(m×n) = A(m×k) · B(k×n)`,
///   each output accumulated in `Float` in `k` order
///
/// A launch of `threads` threads behaves like a grid of that many GPU threads, one element
/// each: element-wise kernels process `min(n, threads)` elements; `reduce_sum` sums the first
/// `min(n, threads)` elements (and writes nothing when `threads == 0`); `matmul` computes the
/// first `min(m * n, threads)` outputs of C in row-major order.
public enum BuiltinKernel: String, CaseIterable, Sendable {
  case fill
  case vectorAdd = "vector_add"
  case saxpy
  case scale
  case reduceSum = "reduce_sum"
  case matmul

  /// The parameter kinds, in order. (Builds an array: for packing and docs, not the launch
  /// path, which reads parameters at constant offsets.)
  public var parameters: [KernelParameter] {
    switch self {
    case .fill: return [.pointer, .f32, .u32]
    case .vectorAdd: return [.pointer, .pointer, .pointer, .u32]
    case .saxpy: return [.f32, .pointer, .pointer, .u32]
    case .scale: return [.pointer, .f32, .u32]
    case .reduceSum: return [.pointer, .pointer, .u32]
    case .matmul: return [.pointer, .pointer, .pointer, .u32, .u32, .u32]
    }
  }

  /// Byte offset of each parameter inside the parameter buffer (see `parameterBufferSize`).
  public var parameterOffsets: [Int] {
    var offsets: [Int] = []
    var cursor = 0
    for p in parameters {
      cursor = (cursor + p.size - 1) / p.size * p.size
      offsets.append(cursor)
      cursor += p.size
    }
    return offsets
  }

  /// Size in bytes of the packed parameter buffer a launch carries.
  ///
  /// The guest packs the values `cuLaunchKernel`'s `kernelParams` point to into one buffer,
  /// in parameter order, each aligned to its own size (8 for pointers, 4 for f32/u32), the
  /// total rounded up to 8 — the layout of a C struct of those fields, and the layout
  /// `cuLaunchKernel`'s `extra` / `CU_LAUNCH_PARAM_BUFFER_POINTER` form expects (CUDA Driver
  /// API, cuLaunchKernel). Written out as constants so the launch path computes nothing;
  /// tests pin them against `parameterOffsets`.
  public var parameterBufferSize: Int {
    switch self {
    case .fill: return 16  // ptr@0 f32@8 u32@12
    case .vectorAdd: return 32  // ptr@0 ptr@8 ptr@16 u32@24
    case .saxpy: return 32  // f32@0 ptr@8 ptr@16 u32@24
    case .scale: return 16  // ptr@0 f32@8 u32@12
    case .reduceSum: return 24  // ptr@0 ptr@8 u32@16
    case .matmul: return 40  // ptr@0 ptr@8 ptr@16 u32@24 u32@28 u32@32
    }
  }

  /// Packs `values` into a parameter buffer for `kernel`. A guest/test helper: the kinds
  /// must match `kernel.parameters` (checked with a precondition).
  public static func pack(_ kernel: BuiltinKernel, _ values: [KernelArgument]) -> [UInt8] {
    let kinds = kernel.parameters
    precondition(
      values.map(\.kind) == kinds,
      "\(kernel.rawValue) takes \(kinds), got \(values.map(\.kind))")
    var buffer = [UInt8](repeating: 0, count: kernel.parameterBufferSize)
    let offsets = kernel.parameterOffsets
    buffer.withUnsafeMutableBytes { raw in
      for (value, offset) in zip(values, offsets) {
        switch value {
        case .pointer(let v): raw.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self)
        case .f32(let v): raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: offset, as: UInt32.self)
        case .u32(let v): raw.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
        }
      }
    }
    return buffer
  }

  /// Runs the kernel on the CPU.
  ///
  /// Validates the parameter buffer size, then resolves every pointer for exactly the bytes
  /// the launch will touch, before writing anything; a launch that throws has no effect.
  /// Parameters are little-endian and read unaligned-safe; data may be unaligned too.
  /// Does not allocate.
  public func run<M: KernelMemory>(parameters p: UnsafeRawBufferPointer, threads: UInt64, memory: M)
    throws(KernelError)
  {
    guard p.count == parameterBufferSize else {
      throw .parameterSize(expected: parameterBufferSize, got: p.count)
    }
    switch self {
    case .fill:
      let count = Self.elements(Self.u32(p, 12), threads)
      guard count > 0 else { return }
      let dst = try Self.resolve(memory, p, index: 0, offset: 0, floats: count)
      let value = Self.f32(p, 8)
      for i in 0..<count { Self.store(dst, i, value) }

    case .vectorAdd:
      let count = Self.elements(Self.u32(p, 24), threads)
      guard count > 0 else { return }
      let a = try Self.resolve(memory, p, index: 0, offset: 0, floats: count)
      let b = try Self.resolve(memory, p, index: 1, offset: 8, floats: count)
      let c = try Self.resolve(memory, p, index: 2, offset: 16, floats: count)
      for i in 0..<count { Self.store(c, i, Self.load(a, i) + Self.load(b, i)) }

    case .saxpy:
      let count = Self.elements(Self.u32(p, 24), threads)
      guard count > 0 else { return }
      let a = Self.f32(p, 0)
      let x = try Self.resolve(memory, p, index: 1, offset: 8, floats: count)
      let y = try Self.resolve(memory, p, index: 2, offset: 16, floats: count)
      for i in 0..<count { Self.store(y, i, a * Self.load(x, i) + Self.load(y, i)) }

    case .scale:
      let count = Self.elements(Self.u32(p, 12), threads)
      guard count > 0 else { return }
      let x = try Self.resolve(memory, p, index: 0, offset: 0, floats: count)
      let a = Self.f32(p, 8)
      for i in 0..<count { Self.store(x, i, Self.load(x, i) * a) }

    case .reduceSum:
      guard threads > 0 else { return }
      let count = Self.elements(Self.u32(p, 16), threads)
      let out = try Self.resolve(memory, p, index: 1, offset: 8, floats: 1)
      var sum = 0.0
      if count > 0 {
        let x = try Self.resolve(memory, p, index: 0, offset: 0, floats: count)
        for i in 0..<count { sum += Double(Self.load(x, i)) }
      }
      Self.store(out, 0, Float(sum))

    case .matmul:
      let m = Self.u32(p, 24)
      let n = Self.u32(p, 28)
      let k = Self.u32(p, 32)
      // m*n and m*k, n*k fit in 64 bits (32×32 bits); m*n*k and byte counts might not.
      let outputs = UInt64(m) * UInt64(n)
      let (work, o1) = outputs.multipliedReportingOverflow(by: UInt64(k))
      let (_, o2) = (UInt64(m) * UInt64(k)).multipliedReportingOverflow(by: 4)
      let (_, o3) = (UInt64(k) * UInt64(n)).multipliedReportingOverflow(by: 4)
      let (_, o4) = outputs.multipliedReportingOverflow(by: 4)
      guard !o1, !o2, !o3, !o4, work <= UInt64(Int.max), outputs <= UInt64(Int.max) else {
        throw .dimensionsOverflow(m: m, n: n, k: k)
      }
      let count = Int(min(outputs, threads))
      guard count > 0 else { return }
      let columns = Int(n)
      let depth = Int(k)
      // Bytes touched: the rows of A feeding the computed outputs, the columns of B up to the
      // last computed column (in every row of B), and the computed prefix of C. With k == 0,
      // A and B are not read at all and C = 0.
      var a: UnsafeMutableRawPointer? = nil
      var b: UnsafeMutableRawPointer? = nil
      if depth > 0 {
        let rows = (count + columns - 1) / columns
        a = try Self.resolve(memory, p, index: 0, offset: 0, floats: rows * depth)
        b = try Self.resolve(memory, p, index: 1, offset: 8, floats: (depth - 1) * columns + min(count, columns))
      }
      let c = try Self.resolve(memory, p, index: 2, offset: 16, floats: count)
      guard let a, let b else {
        for i in 0..<count { Self.store(c, i, 0) }
        return
      }
      for index in 0..<count {
        let row = index / columns
        let column = index % columns
        var acc: Float = 0
        for l in 0..<depth {
          acc += Self.load(a, row * depth + l) * Self.load(b, l * columns + column)
        }
        Self.store(c, index, acc)
      }
    }
  }

  // MARK: helpers (all inlined; no allocation)

  @inline(__always)
  private static func elements(_ n: UInt32, _ threads: UInt64) -> Int {
    Int(min(UInt64(n), threads))
  }

  @inline(__always)
  private static func u32(_ p: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
    UInt32(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
  }

  @inline(__always)
  private static func f32(_ p: UnsafeRawBufferPointer, _ offset: Int) -> Float {
    Float(bitPattern: u32(p, offset))
  }

  @inline(__always)
  private static func resolve<M: KernelMemory>(
    _ memory: M, _ p: UnsafeRawBufferPointer, index: Int, offset: Int, floats: Int
  ) throws(KernelError) -> UnsafeMutableRawPointer {
    let address = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    let byteCount = UInt64(floats) * 4
    guard let pointer = memory.resolve(address, byteCount: byteCount) else {
      throw .invalidPointer(parameterIndex: index, address: address, byteCount: byteCount)
    }
    return pointer
  }

  @inline(__always)
  private static func load(_ base: UnsafeMutableRawPointer, _ index: Int) -> Float {
    base.loadUnaligned(fromByteOffset: index &* 4, as: Float.self)
  }

  @inline(__always)
  private static func store(_ base: UnsafeMutableRawPointer, _ index: Int, _ value: Float) {
    base.storeBytes(of: value, toByteOffset: index &* 4, as: Float.self)
  }
}
