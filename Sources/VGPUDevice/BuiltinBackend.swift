import Synchronization
import VGPUProtocol

/// The six Swift kernels named by the text image (docs/PROTOCOL.md §18),
/// as an execution backend. It stays until the PTX engine runs the same
/// kernels from real PTX (issue 13), so the rest of the device is already
/// written against the one backend interface.
final class BuiltinBackend: ExecutionBackend {
  var name: String { "built-in kernels" }

  func loadModule(_ image: UnsafeRawBufferPointer) throws(BackendError) -> any BackendModule {
    do throws(ModuleImageError) {
      return BuiltinModule(try ModuleImage(parsing: image))
    } catch {
      throw BackendError(.invalidImage, error.description, detail: UInt32(clamping: error.line))
    }
  }
}

final class BuiltinModule: BackendModule {
  let image: ModuleImage
  init(_ image: ModuleImage) { self.image = image }
  var variables: [ModuleVariable] { [] }
  func bind(variableAddresses: [UInt64]) {}
  func initializer(ofVariable index: Int) throws(BackendError) -> [UInt8] { [] }
  func function(named name: String) throws(BackendError) -> any BackendFunction {
    guard let kernel = image.kernels.first(where: { $0.rawValue == name }) else {
      let known = image.kernels.map(\.rawValue).joined(separator: ", ")
      throw BackendError(.notFound, "no kernel '\(name)' in this module (it has: \(known))", detail: 3)
    }
    return BuiltinFunction(kernel)
  }
}

final class BuiltinFunction: BackendFunction {
  let kernel: BuiltinKernel
  let info: FunctionInfo
  let slots: [ParameterSlot]
  init(_ kernel: BuiltinKernel) {
    self.kernel = kernel
    // Swift kernels: no PTX or binary version, registers or static memory.
    info = FunctionInfo(
      parameterCount: UInt32(kernel.parameters.count), parameterBytes: UInt32(kernel.parameterBufferSize))
    slots = zip(kernel.parameterOffsets, kernel.parameters).map {
      ParameterSlot(offset: UInt32($0), size: UInt32($1.size))
    }
  }

  var runsInline: Bool { true }

  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, memory: KernelMemoryView,
    output: inout DeviceOutput, cancelled: borrowing Atomic<Bool>
  ) throws(BackendError) {
    let g = geometry.grid
    let b = geometry.block
    // Below 2^31 · 2^16 · 2^16 · 2^10 = 2^73: saturate rather than trap.
    let (gridThreads, o1) = (UInt64(g.x) * UInt64(g.y)).multipliedReportingOverflow(by: UInt64(g.z))
    let (threads, o2) = gridThreads.multipliedReportingOverflow(by: UInt64(b.x) * UInt64(b.y) * UInt64(b.z))
    do throws(KernelError) {
      try kernel.run(parameters: parameters, threads: o1 || o2 ? UInt64.max : threads, memory: memory)
    } catch {
      switch error {
      case .parameterSize(let expected, let got):
        throw BackendError(.invalidParameters, error.description, detail: 5, result0: UInt64(expected))
          .with(result1: UInt64(got))
      case .invalidPointer(let index, _, _):
        throw BackendError(.invalidAddress, error.description, detail: UInt32(100 + index))
      case .dimensionsOverflow:
        throw BackendError(.invalidValue, error.description, detail: 6)
      }
    }
  }
}

extension KernelMemoryView: KernelMemory {
  public func resolve(_ address: UInt64, byteCount: UInt64) -> UnsafeMutableRawPointer? {
    guard byteCount <= UInt64(Int.max) else { return nil }
    return resolve(address, count: Int(byteCount))
  }
}
