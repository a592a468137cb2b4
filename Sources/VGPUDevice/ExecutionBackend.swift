import Synchronization
import VGPUProtocol

/// What does the device's work: places device memory and moves bytes in
/// and out of it, loads modules and runs kernels. The reference device's
/// backend (`PTXBackend`) keeps memory in the host's RAM and interprets
/// PTX; a host's real GPU (`CUDABackend`) hands the same work to its
/// driver. The executor sees only this interface: it owns the rings,
/// handles, validation, the memory ledger (who owns which range, the
/// memory limit) and accounting, shared by every backend.
///
/// Calls come from the serving thread, under the executor's lock, one at a
/// time, after the executor has checked every address against its ledger.
/// A call whose work has not finished when it returns hands back a
/// `BackendWork`: a worker finishes it and the command completes then, so
/// a long job of one client holds up no one else (the pair's later
/// commands wait, keeping each pair's commands in order).
public protocol ExecutionBackend: AnyObject, Sendable {
  /// A short name for logs and `probe` ("PTX interpreter").
  var name: String { get }

  /// Places `size` bytes (the ledger checked the memory limit) and returns
  /// their device address, which the guest gets unchanged.
  func allocate(_ size: UInt64, alignment: UInt64, for caller: BackendCaller) throws(BackendError) -> UInt64
  /// Frees what `allocate` placed at `address`, wiping it first: freed
  /// memory must not carry one tenant's data to the next.
  func free(_ address: UInt64, size: UInt64, for caller: BackendCaller)
  /// Whether `write` and `read` are done with the host memory they were
  /// given when they return, whatever work they hand back. Host memory
  /// shared by clients (2.4) is offered only then: a client may take a
  /// range back at any time, and it is unmapped at once.
  var finishesHostAccessOnReturn: Bool { get }
  /// Copies `count` bytes from `source` (the caller's staging, or host memory it shared) to device `address`.
  func write(_ address: UInt64, from source: UnsafeRawPointer, count: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  /// Copies `count` bytes at device `address` to `destination` (the caller's
  /// staging, or host memory it shared); `streaming`: around the caches
  /// (part of a large copy into shared memory, `CopyFlags.streaming`).
  func read(
    _ address: UInt64, into destination: UnsafeMutableRawPointer, count: Int, streaming: Bool, for caller: BackendCaller
  ) throws(BackendError) -> (any BackendWork)?
  /// Copies `count` bytes between device addresses (the ranges may overlap).
  func copy(to destination: UInt64, from source: UInt64, count: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  /// Fills `bytes` bytes at `address` with a 1-, 2- or 4-byte `pattern`.
  func fill(_ address: UInt64, pattern: UInt64, width: Int, bytes: Int, for caller: BackendCaller)
    throws(BackendError) -> (any BackendWork)?
  /// Waits for the work the caller's queue pair queued before (a stream's
  /// synchronize).
  func synchronize(for caller: BackendCaller) throws(BackendError) -> (any BackendWork)?

  /// An event, recorded in the caller's command order (`eventRecord`); the
  /// token names it to the calls below.
  func createEvent(for caller: BackendCaller) throws(BackendError) -> UInt64
  func destroyEvent(_ event: UInt64)
  func recordEvent(_ event: UInt64, for caller: BackendCaller) throws(BackendError)
  /// Whether the work before the event's last record is done; nil when it was never recorded.
  func eventCompleted(_ event: UInt64) throws(BackendError) -> Bool?
  /// Nanoseconds between two completed records.
  func elapsed(from start: UInt64, to end: UInt64) throws(BackendError) -> UInt64

  /// What loads module images for the caller (its process's context made
  /// here, on the serving thread); its `load` may then run on a worker.
  func moduleLoader(for caller: BackendCaller) throws(BackendError) -> any ModuleLoader

  /// Moves the device output (`printf` text) the backend holds for
  /// process `pid` to `output` (the reference device has put it there already).
  func takeOutput(pid: UInt32, into output: inout DeviceOutput)

  /// The device's busy time so far when the backend knows it better than
  /// the time spent serving commands (a GPU's, from the host's NVML); nil: it does not.
  func busyNanoseconds() -> UInt64?

  /// Queue pair `queuePair` was released (its memory and modules already
  /// freed): what the backend kept for it (a stream; with a process's last
  /// pair, its context) goes.
  func release(queuePair: Int)
}

/// Loads module images. Runs on the serving thread (a small image) or on a
/// worker, without the executor's lock (a big one, which may take seconds
/// to parse or JIT): it touches nothing the serving thread changes.
public protocol ModuleLoader: Sendable {
  /// Reads a module image as the guest sent it (a fat binary, a wrapper's
  /// data, an ELF cubin or PTX text). Every byte is untrusted. A long load
  /// calls `caller.reportProgress()` now and then (the device moves its
  /// progress register, so the waiting client's deadline counts silence, not work).
  func load(_ image: UnsafeRawBufferPointer, for caller: BackendCaller) throws(BackendError) -> any BackendModule
}

/// A loaded module: its variables and its kernels.
public protocol BackendModule: AnyObject {
  /// The module's `.global` and `.const` variables the device must place
  /// in its memory before any launch, in a fixed order (none when the
  /// backend's driver places them: see `placedVariables`).
  var variables: [ModuleVariable] { get }
  /// Where the device placed `variables` (same order): kernels see these addresses.
  func bind(variableAddresses: [UInt64])
  /// Variable `index`'s first bytes, once bound (an initializer may hold
  /// other variables' addresses: printf's format strings, numba's
  /// environment); shorter than its size means zeros after.
  func initializer(ofVariable index: Int) throws(BackendError) -> [UInt8]
  /// A variable the backend placed itself (a driver loads a module's
  /// globals with it), by name; nil when there is none. The device records
  /// it, so that copies may name it.
  func global(named name: String) throws(BackendError) -> PlacedVariable?
  /// The module's kernels (`.entry` functions), in the order of the image.
  var kernelNames: [String] { get }
  /// A kernel by name: its layout, attributes and code. A kernel whose code
  /// could not be read fails here, alone (the rest of the module works).
  func function(named name: String) throws(BackendError) -> any BackendFunction
  /// The guest unloaded it, or its queue pair went: free what the backend holds for it.
  func unload()
}

/// A module variable a backend placed: its name, device address and size.
public struct PlacedVariable: Sendable, Equatable {
  public var name: String
  public var address: UInt64
  public var size: UInt64
  public init(name: String, address: UInt64, size: UInt64) {
    self.name = name
    self.address = address
    self.size = size
  }
}

/// One kernel, ready to launch.
public protocol BackendFunction: AnyObject {
  /// Attributes `getFunction` reports.
  var info: FunctionInfo { get }
  /// Where each parameter sits in the packed buffer.
  var slots: [ParameterSlot] { get }
  /// Starts the kernel. The reference device runs it on the calling thread
  /// (the serving thread, under the executor's lock) for about
  /// `inlineSlice` thread-instructions; a GPU queues it. Returns nil when
  /// the command is done (its `printf` text then appended to `output`), or
  /// the work in progress, which a worker finishes: a small kernel
  /// completes without a hand-off, a long one holds up no one. `parameters`
  /// has exactly `info.parameterBytes` bytes and may be reused once this
  /// returns; the reference device reaches global memory through `caller`,
  /// which checks every access against the launching process's allocations.
  func launch(
    _ geometry: KernelGeometry, parameters: UnsafeRawBufferPointer, caller: BackendCaller,
    output: inout DeviceOutput, inlineSlice: UInt64
  ) throws(BackendError) -> (any BackendWork)?
}

/// A command's work that did not finish on the serving thread (a kernel
/// past its inline slice, a GPU copy still in flight), for a worker.
public protocol BackendWork: AnyObject, Sendable {
  /// Finishes it on a worker (`caller` is a view for this thread), with any
  /// device output (`printf` text) appended to `output`.
  func finish(caller: BackendCaller, output: inout DeviceOutput) throws(BackendError)
  /// Asks a running `finish` to stop at its next checkpoint (its client went
  /// away, or the device stops); callable from any thread.
  func cancel()
}

/// A grid: blocks, threads per block and dynamic shared memory (cuLaunchKernel's arguments).
public struct KernelGeometry: Sendable, Equatable {
  public var grid: Dimensions
  public var block: Dimensions
  public var sharedBytes: UInt32
  /// A cooperative launch: every block resident at once, grid-wide sync allowed.
  public var cooperative: Bool
  public init(grid: Dimensions, block: Dimensions, sharedBytes: UInt32 = 0, cooperative: Bool = false) {
    self.cooperative = cooperative
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

/// Who a backend call is for — the queue pair and its process — and the
/// device's means to check that process's memory and to say it is alive. A
/// value type, so a backend's generic code calls it without existential dispatch.
public struct BackendCaller: @unchecked Sendable {
  unowned(unsafe) let executor: Executor
  /// The queue pair the command came through, as a key unique among the
  /// devices that share the backend (`SharedExecution`): not the BAR's index.
  public let queuePair: Int
  /// Its owner process (as the device knows it: a host pid, or a guest's).
  public let pid: UInt32
  /// Whether the caller holds the executor's lock (the serving thread); a
  /// worker takes it for each lookup (only on its cache misses).
  let locked: Bool

  /// Says the device is alive while long work runs: moves the progress
  /// register, which clients' deadlines watch (PROTOCOL.md §11).
  public func reportProgress() {
    if locked {
      executor.tick()
    } else {
      executor.lock.withLock { _ in executor.tick() }
    }
  }

  /// The live range of this process holding device `address` (what a
  /// kernel of it may touch), from the device's ledger.
  public func range(containing address: UInt64) -> (address: UInt64, size: UInt64)? {
    locked
      ? executor.range(containing: address, pid: pid)
      : executor.lock.withLock { _ in executor.range(containing: address, pid: pid) }
  }

  /// The same caller, for a worker thread (which does not hold the lock).
  var onWorker: BackendCaller { BackendCaller(executor: executor, queuePair: queuePair, pid: pid, locked: false) }
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
