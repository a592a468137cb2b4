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
  case module, function, stream, event, link, graph, graphExec, graphNode, userObject
}

struct ContextRecord {
  var device: Int32
  var flags: UInt32
  var primary: Bool
  /// The CUresult a faulting launch in this context left (CUDA.swift, "Sticky
  /// errors"); 0 while there is none. Changed only through
  /// CUDAObjects.setStickyError / clearStickyError, which keep stickyContextCount.
  var stickyError: Int32 = 0
}

/// A loaded module, or a library (cuLibraryLoadData): the same record, so
/// that cuLibraryGetModule can hand the library's handle out as its module.
struct ModuleRecord: @unchecked Sendable {
  /// The device's module; nil for a library not used yet.
  var handle: ModuleHandle?
  /// A library's image, kept until its first use loads it (CUDA's lazy
  /// loading, the Linux default since 12.2: "the driver defers loading until
  /// a kernel is used"). NVIDIA's runtime loads every fatbin of a program
  /// with cuLibraryLoadData when it starts; loading them only when used means
  /// that a program whose kernels the device cannot run still allocates and
  /// copies, and fails where it launches.
  var pending: (kind: ModuleImageKind, bytes: [UInt8])?
  /// The CUresult the first load of `pending` failed with, answered again.
  var failure: Int32 = 0
  /// Functions got from it, by name: CUDA hands out the same CUfunction for
  /// the same name, and they become invalid with the module (the device
  /// drops them with it).
  var functions: [String: UInt] = [:]
  /// Made by cuLibraryLoadData/FromFile.
  var library = false
}

/// A CUfunction, and a CUkernel: one record for both (Sendable: its name
/// pointer is interned, never written or freed). cuda.h (cuLaunchKernel)
/// lets a CUkernel be cast to a CUfunction, which cuda.core and numba do, so
/// a kernel handle must work wherever a function handle does.
struct FunctionRecord: @unchecked Sendable {
  /// With the parameter layout and FunctionInfo the device reported.
  var handle: FunctionHandle
  var module: UInt
  /// The name, NUL-terminated, for cuFuncGetName (interned: never freed).
  var name: UnsafePointer<CChar>
  /// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: what a launch may ask
  /// for, by default what is left of the 48 KiB a block gets without opting in.
  var maxDynamicShared: Int32
  /// CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT (-1: no preference).
  var carveout: Int32 = -1
}

/// A cuLinkCreate state: the inputs added so far, and the output it owns
/// (Sendable: its pointers are used under the objects lock or by the caller).
struct LinkRecord: @unchecked Sendable {
  var inputs: [(type: Int32, bytes: [UInt8], name: String)] = []
  /// The error and info log buffers the caller passed to cuLinkCreate.
  var errorLog: UnsafeMutableRawBufferPointer?
  var infoLog: UnsafeMutableRawBufferPointer?
  /// The option values to write the logs' lengths back into.
  var errorLogSize: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
  var infoLogSize: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
  /// cuLinkComplete's image, valid until cuLinkDestroy.
  var output: UnsafeMutableRawBufferPointer?
  /// CU_JIT_MAX_REGISTERS: the most registers per thread the linked kernels may use.
  var maxRegisters: UInt32?
  /// CUDA's device runtime (libcudadevrt.a) was added: the PTX engine provides its functions.
  var deviceRuntime = false
}

struct EventRecord {
  var handle: EventHandle
  /// False for CU_EVENT_DISABLE_TIMING.
  var timing: Bool
  /// The id of the capture sequence it was last recorded in (0: none):
  /// cuEventQuery and cuEventSynchronize refuse such an event (CUDA_ERROR_CAPTURED_EVENT).
  var capture: UInt64 = 0
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
  var links: [UInt: LinkRecord] = [:]
  /// Stream captures in progress, by stream handle (CUDAGraph.swift).
  var captures: [UInt: CaptureRecord] = [:]
  var captureSerial: UInt64 = 0
  /// Graphs cuStreamEndCapture made, and instantiated ones (CUgraphExec).
  var graphs: [UInt: GraphRecord] = [:]
  var graphExecs: [UInt: GraphRecord] = [:]
  /// cuUserObjectCreate's objects, by handle.
  var userObjects: [UInt: UserObjectRecord] = [:]
  /// Page-locked host allocations (cuMemAllocHost, cuMemHostAlloc), for
  /// cuMemFreeHost to check and pointer attributes to report.
  var hostRanges = AddressRanges()
  /// Those of them shared with the device (mapped memfds, not malloc's), by
  /// start and mapped length: a forked child's device does not know the
  /// parent's, and must unmap rather than free them. A page-locked window
  /// range (a VM's, 2.4) has its length negated: BAR memory, never unmapped.
  var sharedHostStarts: [UInt64: Int] = [:]
  /// The caller's host memory page-locked by cuMemHostRegister, until cuMemHostUnregister.
  var registeredRanges = AddressRanges()
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
  /// The thread's stream capture interaction mode (cuThreadExchangeStreamCaptureMode).
  var captureMode = CaptureMode.global

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
