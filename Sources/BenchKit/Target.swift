import SelftestKernels
import VGPU
import VGPUProtocol

/// What a benchmark case drives: the vGPU through its queue pairs, or the
/// same commands as request/response over a Unix socket (`SocketClient`).
public protocol BenchTarget: AnyObject {
  func nop() throws
  /// `count` NOPs, `batch` per doorbell (per write, over a socket).
  func nops(_ count: Int, batch: Int) throws
  func allocate(_ bytes: Int) throws -> UInt64
  func free(_ address: UInt64) throws
  func copyIn(_ destination: UInt64, from source: UnsafeRawBufferPointer) throws
  func copyOut(_ source: UInt64, into destination: UnsafeMutableRawBufferPointer) throws
  func copyDevice(_ destination: UInt64, from source: UInt64, count: Int) throws
  /// Loads the PTX `fill` kernel (SelftestKernels): what the launch case launches.
  func loadFill() throws -> FunctionHandle
  /// Launches `fill` on `grid` blocks of `block` threads (parameters for as many elements).
  func launchFill(_ function: FunctionHandle, parameters: [UInt8], grid: Int, block: Int) throws
}

extension BenchTarget {
  /// Launches `fill` on one element: the cost of a launch, not of its work.
  public func launchFill(_ function: FunctionHandle, parameters: [UInt8]) throws {
    try launchFill(function, parameters: parameters, grid: 1, block: 1)
  }
}

/// The image of a module holding `fill` (the project's PTX, SelftestKernels),
/// and its parameters for one element at `address`.
public enum FillKernel {
  public static let image = Array(SelftestKernels.ptx.utf8)
  /// `fill(float* dst, float value, unsigned n)` by PTX's rules (each `.param`
  /// at a multiple of its size): what a function handle without a reported
  /// layout (the socket's getFunction asks for none) is packed by.
  public static let layout = ParameterLayout(
    slots: [ParameterSlot(offset: 0, size: 8), ParameterSlot(offset: 8, size: 4), ParameterSlot(offset: 12, size: 4)],
    bufferSize: 16)

  /// `dst = address, value = 1, n = count`, packed by the layout the device
  /// reported for `function` (else `layout`, when the sizes agree).
  public static func parameters(_ function: FunctionHandle, _ address: UInt64, count: UInt32 = 1) throws -> [UInt8] {
    let l = function.layout ?? layout
    guard l.bufferSize == function.parameterSize else {
      throw BenchError("fill takes \(function.parameterSize) bytes of parameters; its layout says \(l.bufferSize)")
    }
    return try l.pack([.pointer(address), .f32(1), .u32(count)])
  }
}

/// The client API as a benchmark target.
public final class DeviceTarget: BenchTarget {
  public let device: Device
  public init(_ device: Device) { self.device = device }
  public func nop() throws { try device.nop() }
  public func nops(_ count: Int, batch: Int) throws { try device.nops(count, batch: batch) }
  public func allocate(_ bytes: Int) throws -> UInt64 { try device.allocate(bytes).address }
  public func free(_ address: UInt64) throws { try device.free(DevicePointer(address)) }
  public func copyIn(_ destination: UInt64, from source: UnsafeRawBufferPointer) throws {
    try device.copy(to: DevicePointer(destination), from: source)
  }
  public func copyOut(_ source: UInt64, into destination: UnsafeMutableRawBufferPointer) throws {
    try device.copy(from: DevicePointer(source), into: destination)
  }
  public func copyDevice(_ destination: UInt64, from source: UInt64, count: Int) throws {
    try device.copy(to: DevicePointer(destination), from: DevicePointer(source), count: count)
  }
  public func loadFill() throws -> FunctionHandle {
    try device.function("fill", in: device.loadModule(FillKernel.image))
  }
  public func launchFill(_ function: FunctionHandle, parameters: [UInt8], grid: Int, block: Int) throws {
    try device.launch(
      function, grid: Dimensions(UInt32(grid)), block: Dimensions(UInt32(block)), parameters: parameters)
  }
}
