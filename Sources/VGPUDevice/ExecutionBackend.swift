import Synchronization
import VGPUProtocol

/// What runs kernels for the device. The reference device's backend reads
/// PTX and interprets it; a host's real GPU (issue 14) would hand the same
/// images to its driver. The executor sees only this interface: it owns
/// handles, memory, accounting and validation; a backend owns code.
///
/// Calls come from the serving thread, under the executor's lock, one at a time.
public protocol ExecutionBackend: AnyObject, Sendable {
  /// A short name for logs and `probe` ("PTX interpreter").
  var name: String { get }
  /// Reads a module image as the guest sent it (a fat binary, a wrapper's
  /// data, an ELF cubin or PTX text). Every byte is untrusted. A long load
  /// calls `progress` now and then (the device moves its progress register,
  /// so the waiting client's deadline counts silence, not work).
  func loadModule(_ image: UnsafeRawBufferPointer, progress: () -> Void) throws(BackendError) -> any BackendModule
}

/// A loaded module: its variables (placed by the device) and its kernels.
public protocol BackendModule: AnyObject {
  /// The module's `.global` and `.const` variables the device must place
  /// in its memory before any launch, in a fixed order.
  var variables: [ModuleVariable] { get }
  /// Where the device placed `variables` (same order): kernels see these addresses.
  func bind(variableAddresses: [UInt64])
  /// Variable `index`'s first bytes, once bound (an initializer may hold
  /// other variables' addresses: printf's format strings, numba's
  /// environment); shorter than its size means zeros after.
  func initializer(ofVariable index: Int) throws(BackendError) -> [UInt8]
  /// The module's kernels (`.entry` functions), in the order of the image.
  var kernelNames: [String] { get }
  /// A kernel by name: its layout, attributes and code. A kernel whose code
  /// could not be read fails here, alone (the rest of the module works).
  func function(named name: String) throws(BackendError) -> any BackendFunction
}

/// One kernel, ready to launch.
public protocol BackendFunction: AnyObject {
  /// Attributes `getFunction` reports.
  var info: FunctionInfo { get }
  /// Where each parameter sits in the packed buffer.
  var slots: [ParameterSlot] { get }
  /// Starts the kernel and runs it on the calling thread (the serving
  /// thread, under the executor's lock) for about `inlineSlice`
  /// thread-instructions. Returns nil when it finished (its `printf` text
  /// then appended to `output`), or the launch in progress, which a worker
  /// finishes: a small kernel completes without a hand-off, a long one holds
  /// up no one. `parameters` has exactly `info.parameterBytes` bytes and may
  /// be reused once this returns; global memory goes through `memory`, which
  /// checks every access against the launching process's allocations.
  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, memory: KernelMemoryView,
    output: inout DeviceOutput, inlineSlice: UInt64
  ) throws(BackendError) -> (any BackendLaunch)?
}

/// A launch that ran past its inline slice, for a worker thread to finish.
public protocol BackendLaunch: AnyObject, Sendable {
  /// Runs the rest of the launch, with `memory` (a view for this thread) and
  /// the text of all its `printf`s appended to `output`.
  func finish(memory: KernelMemoryView, output: inout DeviceOutput) throws(BackendError)
  /// Asks a running `finish` to stop at its next checkpoint (its client went
  /// away, or the device stops); callable from any thread.
  func cancel()
}

/// A grid: blocks, threads per block and dynamic shared memory (cuLaunchKernel's arguments).
public struct KernelGeometry: Sendable, Equatable {
  public var grid: Dimensions
  public var block: Dimensions
  public var sharedBytes: UInt32
  public init(grid: Dimensions, block: Dimensions, sharedBytes: UInt32 = 0) {
    self.grid = grid
    self.block = block
    self.sharedBytes = sharedBytes
  }
}

/// A module variable (`__device__`, `__constant__`, printf's format strings).
public struct ModuleVariable: Sendable, Equatable {
  public var name: String
  public var size: Int
  public var alignment: Int
  public init(name: String, size: Int, alignment: Int) {
    self.name = name
    self.size = size
    self.alignment = alignment
  }
}

/// Why a backend refused an image or a kernel failed: the status the guest
/// gets (with CUDA's number at the shim edge), and one line for a person,
/// which the guest fetches with `errorText`.
public struct BackendError: Error, Sendable, CustomStringConvertible {
  public var status: CommandStatus
  public var detail: UInt32
  /// Facts for the guest (an illegal address: the address in r0).
  public var result0: UInt64
  public var result1: UInt64 = 0
  public var message: String
  public init(_ status: CommandStatus, _ message: String, detail: UInt32 = 0, result0: UInt64 = 0) {
    self.status = status
    self.message = message
    self.detail = detail
    self.result0 = result0
  }
  public var description: String { message }
}

/// Device memory as a kernel of one process sees it: device addresses
/// checked against that process's live allocations and translated into the
/// device's reservation. A value type, so a backend's generic code calls it
/// without existential dispatch.
public struct KernelMemoryView: @unchecked Sendable {
  unowned(unsafe) let executor: Executor
  let pid: UInt32
  /// Whether the caller holds the executor's lock (a launch on the serving
  /// thread); a worker takes it for each lookup (only on its cache misses).
  let locked: Bool

  /// Says the device is alive while a long kernel runs: moves the progress
  /// register, which clients' deadlines watch (PROTOCOL.md §11).
  public func reportProgress() {
    if locked {
      executor.tick()
    } else {
      executor.lock.withLock { _ in executor.tick() }
    }
  }
}

/// A process's device output (kernels' `printf`), oldest first, bounded as
/// CUDA's printf FIFO is (1 MiB by default, cudaLimitPrintfFifoSize): what
/// does not fit is dropped and counted, never blocking a kernel.
public struct DeviceOutput: Sendable {
  public static let capacity = 1 << 20
  private(set) var bytes: [UInt8] = []
  private(set) var dropped: UInt64 = 0

  public init() {}

  /// Appends `text`, or counts it as dropped when the buffer is full.
  public mutating func append(_ text: some Collection<UInt8>) {
    guard bytes.count + text.count <= Self.capacity else {
      dropped &+= UInt64(text.count)
      return
    }
    bytes.append(contentsOf: text)
  }

  /// Moves up to `capacity` of the oldest bytes to `destination`; returns
  /// how many, and the drop count (then reset).
  mutating func take(into destination: UnsafeMutableRawPointer, capacity: Int) -> (written: Int, dropped: UInt64) {
    let n = min(capacity, bytes.count)
    if n > 0 {
      bytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress!, byteCount: n) }
      bytes.removeFirst(n)
    }
    let d = dropped
    dropped = 0
    return (n, d)
  }

  /// Appends what another buffer holds (a worker's launch), drops included.
  mutating func append(_ other: DeviceOutput) {
    append(other.bytes)
    dropped &+= other.dropped
  }

  var isEmpty: Bool { bytes.isEmpty }
  var count: Int { bytes.count }
}
