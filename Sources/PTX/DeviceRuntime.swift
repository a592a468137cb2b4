/// CUDA's device runtime as the engine provides it.
///
/// A kernel that uses grid-wide cooperative groups calls functions of `libcudadevrt.a`
/// (declared in CUDA's `cuda_device_runtime_api.h`, "CG API"): numba-cuda's
/// `cg.this_grid().sync()` and CUDA C++ compiled with `-rdc=true` that calls them emit
/// `.extern .func cudaCGGetIntrinsicHandle` and `.extern .func cudaCGSynchronize`, and the
/// library comes to the linker as an archive of SASS objects, which an interpreter cannot
/// run. The engine runs these functions itself: a call to one of the names below that the
/// module only declares (no definition from any linked PTX) is lowered to a built-in
/// (`CallSite.Target.deviceRuntime`). Any other function the module declares but does not
/// define stays an error of the functions that call it, at launch.
///
/// The grid-wide barrier needs every block of the grid resident at once, which CUDA
/// guarantees only for a cooperative launch (`cuLaunchCooperativeKernel`, CUDA C++
/// Programming Guide, "Grid Synchronization"): such a launch sets
/// `PTXLaunchOptions.cooperative`, and the engine then keeps every block's state and runs
/// the grid in phases between barriers (`CooperativeRun`).
public enum DeviceRuntimeFunction: String, CaseIterable, Sendable {
  /// `unsigned long long cudaCGGetIntrinsicHandle(enum cudaCGScope scope)`: an opaque handle
  /// of the group of `scope` (cudaCGScopeGrid = 1; cudaCGScopeMultiGrid = 2 is not provided:
  /// multi-device launches do not exist here). The engine answers a non-zero handle for the
  /// grid of a cooperative launch, and 0 (no valid group) otherwise.
  case getIntrinsicHandle = "cudaCGGetIntrinsicHandle"
  /// `cudaError_t cudaCGSynchronize(unsigned long long handle, unsigned int flags)`: a
  /// barrier over every thread of the grid; memory operations before it are visible to
  /// every thread of the grid after it (CUDA C++ Programming Guide, "Grid Synchronization";
  /// PTX ISA §8 memory consistency: a barrier that orders all threads). Returns 0.
  case synchronize = "cudaCGSynchronize"
  /// `cudaError_t cudaCGSynchronizeGrid(unsigned long long handle, unsigned int flags)`: the same.
  case synchronizeGrid = "cudaCGSynchronizeGrid"
  /// `cudaError_t cudaCGGetSize(unsigned int *numThreads, unsigned int *numGrids,
  /// unsigned long long handle)`: the grid's thread count and 1 (either pointer may be null).
  case getSize = "cudaCGGetSize"
  /// `cudaError_t cudaCGGetRank(unsigned int *threadRank, unsigned int *gridRank,
  /// unsigned long long handle)`: the calling thread's rank in the grid (blocks in linear
  /// order, threads linear within their block) and 0.
  case getRank = "cudaCGGetRank"

  /// The handle `cudaCGGetIntrinsicHandle(cudaCGScopeGrid)` answers in a cooperative launch.
  static let gridHandle: UInt64 = 0x6772_6964  // "grid"

  /// The names the engine provides, for messages (the shim's linker keeps the same list).
  public static var names: [String] { allCases.map(\.rawValue) }
}

extension BlockRunner {
  /// Runs a device-runtime built-in for thread `t` (`call` to a `DeviceRuntimeFunction`);
  /// true when the thread must park at the grid barrier.
  @inline(never)
  mutating func deviceRuntimeCall(
    _ f: DeviceRuntimeFunction, _ site: CallSite, _ t: Int, _ r: UnsafeMutablePointer<UInt64>,
    _ pbase: UnsafeMutableRawPointer, line: Int32
  ) throws(Fault) -> Bool {
    var result: UInt64 = 0  // cudaSuccess
    switch f {
    case .getIntrinsicHandle:
      let scope = UInt32(truncatingIfNeeded: site.argument(0, 4, r, pbase))
      result = cooperative && scope == 1 ? DeviceRuntimeFunction.gridHandle : 0
    case .synchronize, .synchronizeGrid:
      let handle = site.argument(0, 8, r, pbase)
      guard cooperative else {
        throw .launch(
          "the kernel called \(f.rawValue) (a grid-wide sync, PTX line \(line)) in a launch that is not "
            + "cooperative: every block of the grid must be resident at once, which only "
            + "cuLaunchCooperativeKernel (or cuLaunchKernelEx with CU_LAUNCH_ATTRIBUTE_COOPERATIVE) "
            + "guarantees; launch it that way (numba does for a kernel that uses cg.this_grid().sync())")
      }
      guard handle == DeviceRuntimeFunction.gridHandle else {
        throw .launch(
          "the kernel called \(f.rawValue) (PTX line \(line)) with handle 0x\(String(handle, radix: 16)), which "
            + "is not the grid's (cudaCGGetIntrinsicHandle(cudaCGScopeGrid) gives 0x"
            + "\(String(DeviceRuntimeFunction.gridHandle, radix: 16)) here; multi-grid groups are not provided)")
      }
      for res in site.results { store(pbase + res.callerOffset, UInt8(Swift.min(res.size, 4)), 0) }
      return true
    case .getSize, .getRank:
      let first = site.argument(0, 8, r, pbase)
      let second = site.argument(1, 8, r, pbase)
      let blockThreads = UInt64(nthreads)
      let value: UInt64
      if f == .getSize {
        value = UInt64(grid.count) &* blockThreads
      } else {
        let blockRank = (UInt64(ctaid.z) * UInt64(grid.y) + UInt64(ctaid.y)) * UInt64(grid.x) + UInt64(ctaid.x)
        let s = threads[t]
        let threadRank = (UInt64(s.z) * UInt64(block.y) + UInt64(s.y)) * UInt64(block.x) + UInt64(s.x)
        value = blockRank &* blockThreads &+ threadRank
      }
      for (address, v) in [(first, value), (second, f == .getSize ? 1 : 0)] where address != 0 {
        guard let p = generic(address, 4, write: true) else { throw .illegal(address, 4, true, line) }
        guard address & 3 == 0 else { throw .misaligned(address, 4, line) }
        store(p, 4, v)
      }
    }
    for res in site.results { store(pbase + res.callerOffset, UInt8(Swift.min(res.size, 8)), result) }
    return false
  }
}
