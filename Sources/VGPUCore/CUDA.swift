import ShimCore
import Synchronization
import VGPU
import VGPUProtocol

// The CUDA driver API, as the vgpucore_cu* functions libcuda.so.1's
// trampolines call (shims/cuda.c, shims/cuda.def). Split by concern:
//   CUDA.swift         CUresult values, error mapping, cuInit, cuDriverGetVersion
//   CUDADevice.swift   devices: count, name, UUID, memory, attributes, PCI ids
//   CUDAObjects.swift  the handle tables and the per-thread context stack
//   CUDAContext.swift  contexts and the primary context
//   CUDAMemory.swift   device and host memory, copies, memsets
//   CUDAModule.swift   modules, functions, kernel launches
//   CUDAStream.swift   streams and events
//
// Every call completes on the device before it returns, so the Async forms
// are the synchronous ones and every stream is always idle.

// MARK: CUresult (cuda.h, enum cudaError_enum)

let CUDA_SUCCESS: Int32 = 0
let CUDA_ERROR_INVALID_VALUE: Int32 = 1
let CUDA_ERROR_OUT_OF_MEMORY: Int32 = 2
let CUDA_ERROR_NOT_INITIALIZED: Int32 = 3
let CUDA_ERROR_DEINITIALIZED: Int32 = 4
let CUDA_ERROR_DEVICE_UNAVAILABLE: Int32 = 46
let CUDA_ERROR_NO_DEVICE: Int32 = 100
let CUDA_ERROR_INVALID_DEVICE: Int32 = 101
let CUDA_ERROR_INVALID_IMAGE: Int32 = 200
let CUDA_ERROR_INVALID_CONTEXT: Int32 = 201
let CUDA_ERROR_NO_BINARY_FOR_GPU: Int32 = 209
let CUDA_ERROR_INVALID_PTX: Int32 = 218
let CUDA_ERROR_FILE_NOT_FOUND: Int32 = 301
let CUDA_ERROR_INVALID_HANDLE: Int32 = 400
let CUDA_ERROR_NOT_FOUND: Int32 = 500
let CUDA_ERROR_NOT_READY: Int32 = 600
let CUDA_ERROR_ILLEGAL_ADDRESS: Int32 = 700
let CUDA_ERROR_LAUNCH_TIMEOUT: Int32 = 702
let CUDA_ERROR_ASSERT: Int32 = 710
let CUDA_ERROR_LAUNCH_FAILED: Int32 = 719
let CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE: Int32 = 720
let CUDA_ERROR_NOT_SUPPORTED: Int32 = 801
let CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: Int32 = 803
let CUDA_ERROR_TIMEOUT: Int32 = 909
let CUDA_ERROR_UNKNOWN: Int32 = 999

/// Whether this process has called cuInit. Before it, CUDA answers
/// CUDA_ERROR_NOT_INITIALIZED; after a cuInit that found no device,
/// CUDA_ERROR_NO_DEVICE (and a device count of 0).
let cuInitCalled = Atomic<Bool>(false)

/// The CUresult for a failed device call. Device statuses map through
/// `CommandStatus.cudaResult`; failures to reach the device are said once on stderr
/// (every one with VGPU_DEBUG set).
func cudaResult(_ error: VGPUError, _ call: StaticString) -> Int32 {
  let runtime = ShimRuntime.shared
  switch error.kind {
  case .device(let status):
    if runtime.debug { ShimRuntime.printLine("vgpu: \(call): \(error)") }
    // CommandStatus.versionMismatch's cudaResult, 35, is a runtime-API code
    // (cudaErrorInsufficientDriver) that cuda.h does not have.
    return status == .versionMismatch ? CUDA_ERROR_SYSTEM_DRIVER_MISMATCH : status.cudaResult
  case .invalidArgument:
    if runtime.debug { ShimRuntime.printLine("vgpu: \(call): \(error)") }
    return CUDA_ERROR_INVALID_VALUE
  case .unsupported:
    if runtime.debug { ShimRuntime.printLine("vgpu: \(call): \(error)") }
    return CUDA_ERROR_NOT_SUPPORTED
  case .timeout:
    runtime.reportFailure("\(call)", error)
    return CUDA_ERROR_TIMEOUT
  case .protocolViolation:
    runtime.reportFailure("\(call)", error)
    return CUDA_ERROR_UNKNOWN
  case .unavailable:
    runtime.reportFailure("\(call)", error)
    return CUDA_ERROR_DEVICE_UNAVAILABLE
  case .versionMismatch:
    runtime.reportFailure("\(call)", error)
    return CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
  case .closed:
    runtime.reportFailure("\(call)", error)
    return CUDA_ERROR_DEINITIALIZED
  }
}

// MARK: Sticky errors
//
// CUDA: "a kernel launch that fails with CUDA_ERROR_ILLEGAL_ADDRESS,
// CUDA_ERROR_LAUNCH_FAILED, CUDA_ERROR_ASSERT or CUDA_ERROR_LAUNCH_TIMEOUT
// leaves the process in an inconsistent state and any further CUDA work
// will return the same error" (cuda.h, cudaError_enum on each of them). The
// state that is lost is the context's: another context of the same process
// goes on working, and the error goes with its context (cuCtxDestroy, or
// cuDevicePrimaryCtxReset for the primary one). So the error is kept in the
// record of the context that was current on the thread whose launch
// faulted, and answered to calls made while that context is current. A
// launch made with no current context (the shim does not insist on one)
// leaves a process-wide error instead, as before contexts kept their own.

/// The sticky error of a launch made with no current context, 0 while there is none.
let processStickyError = Atomic<Int32>(0)

/// How many live contexts hold a sticky error: while none does, checking
/// costs one atomic load, no lock and no thread-state lookup.
let stickyContextCount = Atomic<Int>(0)

/// The sticky error the calling thread's calls get: the process-wide one,
/// else its current context's; 0 when there is none.
@inline(__always)
func currentStickyError() -> Int32 {
  let process = processStickyError.load(ordering: .relaxed)
  if process != 0 { return process }
  guard stickyContextCount.load(ordering: .relaxed) > 0 else { return 0 }
  return currentContextStickyError()
}

/// The current context's sticky error (the slow path of currentStickyError).
func currentContextStickyError() -> Int32 {
  guard let handle = CUDAThread.current.currentContext else { return 0 }
  return cudaObjects.withLock { $0.contexts[handle]?.stickyError ?? 0 }
}

extension CUDAObjects {
  /// Makes `code` the sticky error of context `handle`; false if there is no such context.
  mutating func setStickyError(_ code: Int32, context handle: UInt) -> Bool {
    guard let old = contexts[handle]?.stickyError else { return false }
    if old == 0 { stickyContextCount.add(1, ordering: .relaxed) }
    contexts[handle]!.stickyError = code
    return true
  }

  /// Clears the sticky error of context `handle` (its record stays).
  mutating func clearStickyError(context handle: UInt) {
    guard let old = contexts[handle]?.stickyError, old != 0 else { return }
    stickyContextCount.subtract(1, ordering: .relaxed)
    contexts[handle]!.stickyError = 0
  }

  /// Forgets context `handle`, and its sticky error with it.
  mutating func removeContext(_ handle: UInt) {
    clearStickyError(context: handle)
    contexts[handle] = nil
  }
}

/// Runs `body` with this process's device: CUDA_ERROR_NOT_INITIALIZED before
/// cuInit, the sticky error once a launch has left one in the current context (`context`: false for
/// calls about the device itself, which CUDA still answers),
/// CUDA_ERROR_NO_DEVICE without a device, the mapped error if `body`
/// throws. A forked child gets a device of its own (ShimRuntime).
@inline(__always)
func withDevice(_ call: StaticString, context: Bool = true, _ body: (Device) throws(VGPUError) -> Int32) -> Int32 {
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  if context {
    let sticky = currentStickyError()
    if sticky != 0 { return sticky }
  }
  let device: Device
  switch ShimRuntime.shared.device() {
  case .success(let d): device = d
  case .failure(let error):
    ShimRuntime.shared.reportFailure("\(call)", error)
    return CUDA_ERROR_NO_DEVICE
  }
  do throws(VGPUError) {
    return try body(device)
  } catch {
    return cudaResult(error, call)
  }
}

/// Runs `body` with the device if `dev` names it (ordinal 0, the only one).
@inline(__always)
func withDevice(_ dev: Int32, _ call: StaticString, _ body: (Device) throws(VGPUError) -> Int32) -> Int32 {
  withDevice(call, context: false) { (device) throws(VGPUError) in
    guard dev == 0 else { return CUDA_ERROR_INVALID_DEVICE }
    return try body(device)
  }
}

// MARK: Initialization and version

/// cuInit(unsigned int Flags): opens the device named by VGPU_DEVICE (else
/// 0000:00:05.0), trying again after an earlier failure; with none,
/// CUDA_ERROR_NO_DEVICE and one line on stderr saying why.
@_cdecl("vgpucore_cuInit")
public func vgpucore_cuInit(_ flags: UInt32) -> Int32 {
  guard flags == 0 else { return CUDA_ERROR_INVALID_VALUE }
  cuInitCalled.store(true, ordering: .releasing)
  switch ShimRuntime.shared.device(retry: true) {
  case .success: return CUDA_SUCCESS
  case .failure(let error):
    ShimRuntime.shared.reportFailure("cuInit", error)
    return CUDA_ERROR_NO_DEVICE
  }
}

/// The version reported when no device can be opened: CUDA 12.8, what the
/// reference device reports by default.
let defaultDriverVersion: Int32 = 12080

/// cuDriverGetVersion(int *driverVersion): the device's CUDA version (the
/// mediator's --cuda-driver-version). It opens the device if need be: CUDA
/// 13's runtime asks before cuInit and refuses a driver older than itself.
/// Without a device, 12080 and success, as a driver without GPUs answers.
@_cdecl("vgpucore_cuDriverGetVersion")
public func vgpucore_cuDriverGetVersion(_ version: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let version else { return CUDA_ERROR_INVALID_VALUE }
  version.pointee = defaultDriverVersion
  if case .success(let device) = ShimRuntime.shared.device(),
    let reported = Int32(exactly: device.info.identity.cudaDriverVersion), reported > 0
  {
    version.pointee = reported
  }
  return CUDA_SUCCESS
}
