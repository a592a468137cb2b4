import VGPUProtocol

/// One kernel argument, for packing a parameter buffer by the layout the
/// device reported (``FunctionHandle/layout``): what a C caller's
/// `kernelParams` entry would point to.
public enum KernelArgument: Sendable, Equatable {
  /// A device address (8 bytes).
  case pointer(UInt64)
  case f32(Float)
  case f64(Double)
  case u32(UInt32)
  case u64(UInt64)

  /// Its size in bytes: what the parameter's slot must hold.
  public var size: Int {
    switch self {
    case .f32, .u32: 4
    case .pointer, .f64, .u64: 8
    }
  }

  /// Stores the value, little-endian, at `offset` (unaligned-safe).
  func store(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
    switch self {
    case .pointer(let v), .u64(let v): buffer.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self)
    case .f64(let v): buffer.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: offset, as: UInt64.self)
    case .f32(let v): buffer.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: offset, as: UInt32.self)
    case .u32(let v): buffer.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
  }
}

/// Arguments that do not fit a kernel's parameter layout.
public struct KernelArgumentError: Error, Sendable, Equatable, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}

extension ParameterLayout {
  /// The parameter buffer for `arguments`: each stored at its slot's offset,
  /// the rest zero, `bufferSize` bytes. Fails when the count differs from the
  /// layout's or an argument's size differs from its slot's.
  public func pack(_ arguments: [KernelArgument]) throws(KernelArgumentError) -> [UInt8] {
    guard arguments.count == slots.count else {
      throw KernelArgumentError("the kernel takes \(slots.count) parameters, \(arguments.count) were given")
    }
    for (i, (a, s)) in zip(arguments, slots).enumerated() where a.size != Int(s.size) {
      throw KernelArgumentError("parameter \(i) is \(s.size) bytes; \(a) is \(a.size)")
    }
    var buffer = [UInt8](repeating: 0, count: bufferSize)
    buffer.withUnsafeMutableBytes { raw in
      for (a, s) in zip(arguments, slots) { a.store(into: raw, at: Int(s.offset)) }
    }
    return buffer
  }
}
