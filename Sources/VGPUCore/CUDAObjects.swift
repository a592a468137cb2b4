import Synchronization
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// The objects CUDA hands out as opaque pointers (CUcontext, CUmodule,
// CUfunction, CUstream, CUevent), and the per-thread context stack.
//
// A handle is a number shaped like a user-space address, never reused and
// never dereferenced: every call looks it up in a table, so a stale,
// destroyed or made-up handle is CUDA_ERROR_INVALID_HANDLE (or
// INVALID_CONTEXT), never a crash. Lookups allocate nothing.

enum HandleKind: UInt {
  case context = 1
  case module, function, stream, event
}

struct ContextRecord {
  var device: Int32
  var flags: UInt32
  var primary: Bool
}

struct ModuleRecord {
  var handle: ModuleHandle
  /// Functions got from it, invalidated with it (CUDA semantics; the device keeps them).
  var functions: [UInt] = []
}

struct FunctionRecord {
  /// With the parameter layout the device reported.
  var handle: FunctionHandle
  var module: UInt
}

struct EventRecord {
  var handle: EventHandle
  /// False for CU_EVENT_DISABLE_TIMING.
  var timing: Bool
}

struct CUDAObjects: ~Copyable {
  private var serial: UInt = 0
  var contexts: [UInt: ContextRecord] = [:]
  /// The primary context of device 0 (one handle for the process's life) and its retain count.
  var primary: UInt = 0
  var primaryRetains = 0
  var primaryFlags: UInt32 = 0
  var modules: [UInt: ModuleRecord] = [:]
  var functions: [UInt: FunctionRecord] = [:]
  var streams: [UInt: StreamHandle] = [:]
  var events: [UInt: EventRecord] = [:]
  /// Page-locked host allocations (cuMemAllocHost, cuMemHostAlloc), for
  /// cuMemFreeHost to check and pointer attributes to report.
  var hostRanges = AddressRanges()
  /// This process's device allocations (cuMemAlloc), for address ranges and pointer attributes.
  var deviceRanges = AddressRanges()

  /// A new handle: 0x0000_1K00_0000_0000 + 16 × serial for kind K.
  mutating func newHandle(_ kind: HandleKind) -> UInt {
    serial += 1
    return (0x10 + kind.rawValue) << 40 | serial << 4
  }
}

let cudaObjects = Mutex(CUDAObjects())

/// The handle a C pointer carries.
@inline(__always) func handleKey(_ p: UnsafeMutableRawPointer?) -> UInt { UInt(bitPattern: p) }
/// The C pointer for a handle.
@inline(__always) func handlePointer(_ h: UInt) -> UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: h) }

// MARK: Per-thread state

/// What CUDA keeps per thread: the context stack (its top is the current
/// context), and the buffers this thread packs launch parameters into.
final class CUDAThread {
  var contexts: [UInt] = []
  /// Indexed by buffer size / 8: reused, so a launch allocates nothing.

  init() { contexts.reserveCapacity(8) }

  /// This thread's state, created on its first CUDA call, freed when it exits.
  static var current: CUDAThread {
    if let p = pthread_getspecific(cudaThreadKey) { return Unmanaged<CUDAThread>.fromOpaque(p).takeUnretainedValue() }
    let state = CUDAThread()
    pthread_setspecific(cudaThreadKey, Unmanaged.passRetained(state).toOpaque())
    return state
  }

  var currentContext: UInt? { contexts.last }
}

/// Created on first use (a lazy global), not when the library loads.
let cudaThreadKey: pthread_key_t = {
  var key = pthread_key_t()
  pthread_key_create(&key) { p in
    if let p { Unmanaged<CUDAThread>.fromOpaque(p).release() }
  }
  return key
}()
