/// Every command's meaning, in one place: one typed value per opcode, which
/// the guest encodes into a ``SubmissionEntry`` and the device decodes from
/// it, and one typed reply that the device encodes into a
/// ``CompletionEntry`` and the guest decodes. The socket RPC baseline and the
/// tests use the same types, so the packing of an argument is written once.
///
/// Adding an opcode: a case in ``Opcode``, a type here (arguments, reply,
/// `entry`, `init(_:)`), and its handler in the device (VGPUDevice's
/// `Commands+<Family>.swift`); docs/PROTOCOL.md §14 lists it.
///
/// Decoding never fails: it only reads words. Whether the values make sense
/// (a live handle, a range inside an allocation) is the device's validation.
public enum Command {}

/// What every command type offers.
public protocol CommandCodec {
  /// The opcode whose arguments this type carries.
  static var opcode: Opcode { get }
  /// Reads the arguments of `entry` (whose opcode is `Self.opcode`).
  init(_ entry: SubmissionEntry)
  /// The entry carrying these arguments; the queue pair sets its command id.
  var entry: SubmissionEntry { get }
}

/// Three extents, as CUDA's `dim3` (grid and block geometry).
@frozen
public struct Dimensions: Equatable, Hashable, Sendable, CustomStringConvertible {
  public var x: UInt32, y: UInt32, z: UInt32
  @inlinable public init(_ x: UInt32, _ y: UInt32 = 1, _ z: UInt32 = 1) {
    self.x = x
    self.y = y
    self.z = z
  }
  public var description: String { "(\(x), \(y), \(z))" }
}

extension Command {
  /// Does nothing; measures the round trip.
  @frozen public struct Nop: CommandCodec {
    public static var opcode: Opcode { .nop }
    @inlinable public init() {}
    @inlinable public init(_ entry: SubmissionEntry) {}
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .nop) }
  }

  /// The first command on a queue pair: versions and features.
  @frozen public struct Identify: CommandCodec {
    public static var opcode: Opcode { .identify }
    /// `major << 16 | minor`.
    public var guestVersion: UInt32
    public var guestFeatures: FeatureBits
    @inlinable public init(guestVersion: UInt32 = ProtocolVersion.packed, guestFeatures: FeatureBits = .all) {
      self.guestVersion = guestVersion
      self.guestFeatures = guestFeatures
    }
    @inlinable public init(_ e: SubmissionEntry) {
      guestVersion = UInt32(truncatingIfNeeded: e.a0)
      guestFeatures = FeatureBits(rawValue: e.a1)
    }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .identify, a0: UInt64(guestVersion), a1: guestFeatures.rawValue)
    }
    /// r0 the features both sides have, r1 the device's version. With
    /// `versionMismatch`, r1 still carries the device's version.
    @frozen public struct Reply {
      public var features: FeatureBits
      public var deviceVersion: UInt32
      @inlinable public init(features: FeatureBits, deviceVersion: UInt32) {
        self.features = features
        self.deviceVersion = deviceVersion
      }
      @inlinable public init(_ c: CompletionEntry) {
        features = FeatureBits(rawValue: c.result0)
        deviceVersion = UInt32(truncatingIfNeeded: c.result1)
      }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: features.rawValue, result1: UInt64(deviceVersion))
      }
    }
  }

  /// Free and total device memory.
  @frozen public struct MemoryInfo: CommandCodec {
    public static var opcode: Opcode { .memoryInfo }
    @inlinable public init() {}
    @inlinable public init(_ entry: SubmissionEntry) {}
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .memoryInfo) }
    @frozen public struct Reply {
      public var free: UInt64
      public var total: UInt64
      @inlinable public init(free: UInt64, total: UInt64) {
        self.free = free
        self.total = total
      }
      @inlinable public init(_ c: CompletionEntry) { (free, total) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: free, result1: total)
      }
    }
  }

  /// Allocates device memory.
  @frozen public struct Alloc: CommandCodec {
    public static var opcode: Opcode { .alloc }
    public var length: UInt64
    /// 0 = 256; else a power of two ≥ 256.
    public var alignment: UInt64
    @inlinable public init(length: UInt64, alignment: UInt64 = 0) {
      self.length = length
      self.alignment = alignment
    }
    @inlinable public init(_ e: SubmissionEntry) { (length, alignment) = (e.a0, e.a1) }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .alloc, a0: length, a1: alignment) }
    /// r0 the device address, r1 the bytes reserved (length rounded up to 256).
    /// With `outOfMemory`: r0 free bytes, r1 the largest free block.
    @frozen public struct Reply {
      public var address: UInt64
      public var reserved: UInt64
      @inlinable public init(address: UInt64, reserved: UInt64) {
        self.address = address
        self.reserved = reserved
      }
      @inlinable public init(_ c: CompletionEntry) { (address, reserved) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: address, result1: reserved)
      }
    }
  }

  /// Frees an allocation; r0 the bytes released.
  @frozen public struct Free: CommandCodec {
    public static var opcode: Opcode { .free }
    /// As `alloc` returned it.
    public var address: UInt64
    @inlinable public init(address: UInt64) { self.address = address }
    @inlinable public init(_ e: SubmissionEntry) { address = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .free, a0: address) }
  }

  /// Host bytes in the staging window → device memory; r0 the length.
  @frozen public struct CopyToDevice: CommandCodec {
    public static var opcode: Opcode { .copyToDevice }
    public var device: UInt64
    /// A BAR offset inside the submitting queue pair's staging window, or
    /// (2.4) inside one page-locked window range of its process.
    public var staging: UInt64
    public var length: UInt64
    @inlinable public init(device: UInt64, staging: UInt64, length: UInt64) {
      self.device = device
      self.staging = staging
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) { (device, staging, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .copyToDevice, a0: device, a1: staging, a2: length)
    }
  }

  /// Device memory → the staging window; r0 the length.
  /// The entry's flags byte may hold ``CopyFlags/streaming`` (2.4: a chunk
  /// of a large copy into the page-locked window).
  @frozen public struct CopyFromDevice: CommandCodec {
    public static var opcode: Opcode { .copyFromDevice }
    public var device: UInt64
    public var staging: UInt64
    public var length: UInt64
    /// Part of a large copy: the device writes around the cache.
    public var streaming: Bool
    @inlinable public init(device: UInt64, staging: UInt64, length: UInt64, streaming: Bool = false) {
      self.device = device
      self.staging = staging
      self.length = length
      self.streaming = streaming
    }
    @inlinable public init(_ e: SubmissionEntry) {
      (device, staging, length) = (e.a0, e.a1, e.a2)
      streaming = e.flags & CopyFlags.streaming != 0
    }
    @inlinable public var entry: SubmissionEntry {
      var e = SubmissionEntry(opcode: .copyFromDevice, a0: device, a1: staging, a2: length)
      e.flags = streaming ? CopyFlags.streaming : 0
      return e
    }
  }

  /// Lends the device a memfd of the submitting process (2.4): r0 the length.
  @frozen public struct HostMemoryShare: CommandCodec {
    public static var opcode: Opcode { .hostMemoryShare }
    /// The descriptor's number in the submitting process.
    public var descriptor: UInt32
    /// Where the process mapped it.
    public var address: UInt64
    public var length: UInt64
    @inlinable public init(descriptor: UInt32, address: UInt64, length: UInt64) {
      self.descriptor = descriptor
      self.address = address
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) {
      (descriptor, address, length) = (UInt32(truncatingIfNeeded: e.a0), e.a1, e.a2)
    }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .hostMemoryShare, a0: UInt64(descriptor), a1: address, a2: length)
    }
  }

  /// Takes back what `HostMemoryShare` lent (2.4): r0 its length.
  @frozen public struct HostMemoryUnshare: CommandCodec {
    public static var opcode: Opcode { .hostMemoryUnshare }
    public var address: UInt64
    @inlinable public init(address: UInt64) { self.address = address }
    @inlinable public init(_ e: SubmissionEntry) { address = e.a1 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .hostMemoryUnshare, a1: address) }
  }

  /// Shared host memory → device memory, one copy (2.4); r0 the length.
  @frozen public struct CopyFromHost: CommandCodec {
    public static var opcode: Opcode { .copyFromHost }
    public var device: UInt64
    /// An address of the submitting process inside a range it shared.
    public var host: UInt64
    public var length: UInt64
    @inlinable public init(device: UInt64, host: UInt64, length: UInt64) {
      self.device = device
      self.host = host
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) { (device, host, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .copyFromHost, a0: device, a1: host, a2: length)
    }
  }

  /// Device memory → shared host memory, one copy (2.4); r0 the length.
  /// The entry's flags byte may hold ``CopyFlags/streaming``.
  @frozen public struct CopyToHost: CommandCodec {
    public static var opcode: Opcode { .copyToHost }
    public var device: UInt64
    public var host: UInt64
    public var length: UInt64
    /// Part of a large copy: the device writes around the cache.
    public var streaming: Bool
    @inlinable public init(device: UInt64, host: UInt64, length: UInt64, streaming: Bool = false) {
      self.device = device
      self.host = host
      self.length = length
      self.streaming = streaming
    }
    @inlinable public init(_ e: SubmissionEntry) {
      (device, host, length) = (e.a0, e.a1, e.a2)
      streaming = e.flags & CopyFlags.streaming != 0
    }
    @inlinable public var entry: SubmissionEntry {
      var e = SubmissionEntry(opcode: .copyToHost, a0: device, a1: host, a2: length)
      e.flags = streaming ? CopyFlags.streaming : 0
      return e
    }
  }

  /// A range of the page-locked window (2.4, feature `hostWindow`).
  @frozen public struct WindowAlloc: CommandCodec {
    public static var opcode: Opcode { .windowAlloc }
    public var length: UInt64
    @inlinable public init(length: UInt64) { self.length = length }
    @inlinable public init(_ e: SubmissionEntry) { length = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .windowAlloc, a0: length) }
    /// r0 the range's BAR offset, r1 its length (whole pages).
    /// With `outOfMemory`: r0 the largest range that would fit.
    @frozen public struct Reply {
      public var offset: UInt64
      public var length: UInt64
      @inlinable public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
      }
      @inlinable public init(_ c: CompletionEntry) { (offset, length) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: offset, result1: length)
      }
    }
  }

  /// Gives back a range of the page-locked window (2.4); r0 its length.
  @frozen public struct WindowFree: CommandCodec {
    public static var opcode: Opcode { .windowFree }
    /// As `windowAlloc` returned it.
    public var offset: UInt64
    @inlinable public init(offset: UInt64) { self.offset = offset }
    @inlinable public init(_ e: SubmissionEntry) { offset = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .windowFree, a0: offset) }
  }

  /// The flags byte of a `copyToHost` or `copyFromDevice` entry (2.4); see ``Opcode/allowedFlags``.
  public enum CopyFlags {
    /// The chunk is part of a copy larger than any cache: the device writes
    /// it with streaming stores, which leave the caches to what the process
    /// uses next (a small copy's bytes are read soon, from the cache).
    public static let streaming: UInt8 = 1
  }

  /// Device memory to device memory (overlap allowed); r0 the length.
  @frozen public struct CopyDeviceToDevice: CommandCodec {
    public static var opcode: Opcode { .copyDeviceToDevice }
    public var destination: UInt64
    public var source: UInt64
    public var length: UInt64
    @inlinable public init(destination: UInt64, source: UInt64, length: UInt64) {
      self.destination = destination
      self.source = source
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) { (destination, source, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .copyDeviceToDevice, a0: destination, a1: source, a2: length)
    }
  }

  /// Sets `count` elements of 1, 2 or 4 bytes; r0 the bytes set.
  @frozen public struct Memset: CommandCodec {
    public static var opcode: Opcode { .memset }
    public var address: UInt64
    /// The low `elementSize` bytes are used.
    public var value: UInt64
    public var elementSize: UInt64
    public var count: UInt64
    @inlinable public init(address: UInt64, value: UInt64, elementSize: UInt64, count: UInt64) {
      self.address = address
      self.value = value
      self.elementSize = elementSize
      self.count = count
    }
    @inlinable public init(_ e: SubmissionEntry) { (address, value, elementSize, count) = (e.a0, e.a1, e.a2, e.a3) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .memset, a0: address, a1: value, a2: elementSize, a3: count)
    }
  }

  /// Loads a module image from the staging window (docs/PROTOCOL.md §18);
  /// r0 the module handle. With `invalidImage`, detail is the line at fault.
  /// Loads a module from an image in one staging range, or (2.0) from an
  /// upload whose chunks `moduleUpload` sent.
  @frozen public struct ModuleLoad: CommandCodec {
    public static var opcode: Opcode { .moduleLoad }
    /// 0: the image is at `staging`; else the upload holding it.
    public var upload: UInt64
    public var staging: UInt64
    public var length: UInt64
    @inlinable public init(staging: UInt64, length: UInt64) {
      self.upload = 0
      self.staging = staging
      self.length = length
    }
    @inlinable public init(upload: UInt64) {
      self.upload = upload
      self.staging = 0
      self.length = 0
    }
    @inlinable public init(_ e: SubmissionEntry) { (upload, staging, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .moduleLoad, a0: upload, a1: staging, a2: length)
    }
  }

  /// One chunk of a large module image (2.0).
  @frozen public struct ModuleUpload: CommandCodec {
    public static var opcode: Opcode { .moduleUpload }
    /// 0 starts an upload of `totalLength` bytes.
    public var upload: UInt64
    public var staging: UInt64
    public var length: UInt64
    public var offset: UInt64
    public var totalLength: UInt64
    /// The largest image an upload takes: PyTorch's and cuSPARSELt's fat
    /// binaries run to hundreds of MiB (docs/REAL-KERNELS, §4).
    public static let maximumImageBytes: UInt64 = 512 << 20
    @inlinable public init(upload: UInt64, staging: UInt64, length: UInt64, offset: UInt64, totalLength: UInt64 = 0) {
      self.upload = upload
      self.staging = staging
      self.length = length
      self.offset = offset
      self.totalLength = totalLength
    }
    @inlinable public init(_ e: SubmissionEntry) {
      (upload, staging, length, offset, totalLength) = (e.a0, e.a1, e.a2, e.a3, e.a4)
    }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .moduleUpload, a0: upload, a1: staging, a2: length, a3: offset, a4: totalLength)
    }
  }

  /// A module variable's device address and size (2.0).
  @frozen public struct ModuleGlobal: CommandCodec {
    public static var opcode: Opcode { .moduleGlobal }
    public var module: UInt64
    public var name: UInt64
    public var nameLength: UInt64
    @inlinable public init(module: UInt64, name: UInt64, nameLength: UInt64) {
      self.module = module
      self.name = name
      self.nameLength = nameLength
    }
    @inlinable public init(_ e: SubmissionEntry) { (module, name, nameLength) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .moduleGlobal, a0: module, a1: name, a2: nameLength)
    }
    @frozen public struct Reply {
      public var address: UInt64
      public var size: UInt64
      @inlinable public init(address: UInt64, size: UInt64) {
        self.address = address
        self.size = size
      }
      @inlinable public init(_ c: CompletionEntry) { (address, size) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: address, result1: size)
      }
    }
  }

  /// The process's device output (kernels' `printf`), oldest first (2.0).
  @frozen public struct Output: CommandCodec {
    public static var opcode: Opcode { .output }
    public var staging: UInt64
    public var capacity: UInt64
    @inlinable public init(staging: UInt64, capacity: UInt64) {
      self.staging = staging
      self.capacity = capacity
    }
    @inlinable public init(_ e: SubmissionEntry) { (staging, capacity) = (e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .output, a1: staging, a2: capacity) }
    @frozen public struct Reply {
      public var written: UInt64
      public var remaining: UInt64
      public var dropped: UInt32
      @inlinable public init(written: UInt64, remaining: UInt64, dropped: UInt32) {
        self.written = written
        self.remaining = remaining
        self.dropped = dropped
      }
      @inlinable public init(_ c: CompletionEntry) { (written, remaining, dropped) = (c.result0, c.result1, c.detail) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: written, result1: remaining, detail: dropped)
      }
    }
  }

  /// The names of a module's kernels (2.0).
  @frozen public struct ModuleKernels: CommandCodec {
    public static var opcode: Opcode { .moduleKernels }
    public var module: UInt64
    public var staging: UInt64
    public var capacity: UInt64
    @inlinable public init(module: UInt64, staging: UInt64, capacity: UInt64) {
      self.module = module
      self.staging = staging
      self.capacity = capacity
    }
    @inlinable public init(_ e: SubmissionEntry) { (module, staging, capacity) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .moduleKernels, a0: module, a1: staging, a2: capacity)
    }
    @frozen public struct Reply {
      /// Kernels in the module (some may not have fit).
      public var count: UInt64
      public var written: UInt64
      @inlinable public init(count: UInt64, written: UInt64) {
        self.count = count
        self.written = written
      }
      @inlinable public init(_ c: CompletionEntry) { (count, written) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: count, result1: written)
      }
    }
  }

  /// The text of the queue pair's last failed command (2.0).
  @frozen public struct ErrorText: CommandCodec {
    public static var opcode: Opcode { .errorText }
    public var staging: UInt64
    public var capacity: UInt64
    @inlinable public init(staging: UInt64, capacity: UInt64) {
      self.staging = staging
      self.capacity = capacity
    }
    @inlinable public init(_ e: SubmissionEntry) { (staging, capacity) = (e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .errorText, a1: staging, a2: capacity) }
  }

  @frozen public struct ModuleUnload: CommandCodec {
    public static var opcode: Opcode { .moduleUnload }
    public var module: UInt64
    @inlinable public init(module: UInt64) { self.module = module }
    @inlinable public init(_ e: SubmissionEntry) { module = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .moduleUnload, a0: module) }
  }

  /// Looks a kernel up by name: r0 the function handle, r1 the bytes of
  /// parameters it takes. With feature `functionInfo` (1.3) and room for it,
  /// the device also writes a ``FunctionInfo`` at `reply`: the parameter
  /// layout, so the guest never needs a catalogue of kernels.
  @frozen public struct GetFunction: CommandCodec {
    public static var opcode: Opcode { .getFunction }
    public var module: UInt64
    /// The UTF-8 name (no NUL) in the staging window.
    public var name: UInt64
    public var nameLength: UInt64
    /// Where the FunctionInfo goes (staging), and how many bytes it may take; 0 = none.
    public var reply: UInt64
    public var replyCapacity: UInt64
    @inlinable public init(
      module: UInt64, name: UInt64, nameLength: UInt64, reply: UInt64 = 0, replyCapacity: UInt64 = 0
    ) {
      self.module = module
      self.name = name
      self.nameLength = nameLength
      self.reply = reply
      self.replyCapacity = replyCapacity
    }
    @inlinable public init(_ e: SubmissionEntry) {
      (module, name, nameLength, reply, replyCapacity) = (e.a0, e.a1, e.a2, e.a3, e.a4)
    }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .getFunction, a0: module, a1: name, a2: nameLength, a3: reply, a4: replyCapacity)
    }
    @frozen public struct Reply {
      public var function: UInt64
      public var parameterBytes: UInt64
      @inlinable public init(function: UInt64, parameterBytes: UInt64) {
        self.function = function
        self.parameterBytes = parameterBytes
      }
      @inlinable public init(_ c: CompletionEntry) { (function, parameterBytes) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: function, result1: parameterBytes)
      }
    }
  }

  /// Runs a kernel. Packing (docs/PROTOCOL.md §14): a1 grid x | y << 32;
  /// a2 grid z | block x << 32; a3 block y | z << 32; a4 shared bytes |
  /// parameter length << 32; a5 the packed parameters (staging); a6 stream (0 = default).
  /// With `invalidParameters`: r0 the bytes the kernel takes, r1 those given.
  /// The entry's flags byte holds ``LaunchFlags`` (2.2, feature `cooperativeLaunch`).
  @frozen public struct Launch: CommandCodec {
    public static var opcode: Opcode { .launch }
    public var function: UInt64
    public var grid: Dimensions
    public var block: Dimensions
    public var sharedBytes: UInt32
    public var parameterLength: UInt32
    public var parameters: UInt64
    public var stream: UInt64
    /// A cooperative launch (`LaunchFlags.cooperative`).
    public var cooperative: Bool
    @inlinable public init(
      function: UInt64, grid: Dimensions, block: Dimensions, sharedBytes: UInt32 = 0, parameterLength: UInt32,
      parameters: UInt64, stream: UInt64 = 0, cooperative: Bool = false
    ) {
      self.cooperative = cooperative
      self.function = function
      self.grid = grid
      self.block = block
      self.sharedBytes = sharedBytes
      self.parameterLength = parameterLength
      self.parameters = parameters
      self.stream = stream
    }
    @inlinable public init(_ e: SubmissionEntry) {
      function = e.a0
      grid = Dimensions(
        UInt32(truncatingIfNeeded: e.a1), UInt32(truncatingIfNeeded: e.a1 >> 32), UInt32(truncatingIfNeeded: e.a2))
      block = Dimensions(
        UInt32(truncatingIfNeeded: e.a2 >> 32), UInt32(truncatingIfNeeded: e.a3), UInt32(truncatingIfNeeded: e.a3 >> 32)
      )
      sharedBytes = UInt32(truncatingIfNeeded: e.a4)
      parameterLength = UInt32(truncatingIfNeeded: e.a4 >> 32)
      parameters = e.a5
      stream = e.a6
      cooperative = e.flags & LaunchFlags.cooperative != 0
    }
    @inlinable public var entry: SubmissionEntry {
      var e = SubmissionEntry(
        opcode: .launch, a0: function, a1: UInt64(grid.x) | UInt64(grid.y) << 32,
        a2: UInt64(grid.z) | UInt64(block.x) << 32, a3: UInt64(block.y) | UInt64(block.z) << 32,
        a4: UInt64(sharedBytes) | UInt64(parameterLength) << 32, a5: parameters, a6: stream)
      e.flags = cooperative ? LaunchFlags.cooperative : 0
      return e
    }
  }

  /// The flags byte of a `launch` entry (2.2, feature `cooperativeLaunch`); other opcodes keep it 0.
  public enum LaunchFlags {
    /// Every block of the grid must be resident at once (`cuLaunchCooperativeKernel`): the
    /// kernel may use the grid-wide barrier (docs/PROTOCOL.md §14).
    public static let cooperative: UInt8 = 1
  }

  /// Creates a stream; r0 its handle.
  @frozen public struct StreamCreate: CommandCodec {
    public static var opcode: Opcode { .streamCreate }
    @inlinable public init() {}
    @inlinable public init(_ e: SubmissionEntry) {}
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .streamCreate) }
  }

  @frozen public struct StreamDestroy: CommandCodec {
    public static var opcode: Opcode { .streamDestroy }
    public var stream: UInt64
    @inlinable public init(stream: UInt64) { self.stream = stream }
    @inlinable public init(_ e: SubmissionEntry) { stream = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .streamDestroy, a0: stream) }
  }

  /// Completes when the stream's work has (0 = the default stream).
  @frozen public struct StreamSynchronize: CommandCodec {
    public static var opcode: Opcode { .streamSynchronize }
    public var stream: UInt64
    @inlinable public init(stream: UInt64 = 0) { self.stream = stream }
    @inlinable public init(_ e: SubmissionEntry) { stream = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .streamSynchronize, a0: stream) }
  }

  /// Creates an event; r0 its handle.
  @frozen public struct EventCreate: CommandCodec {
    public static var opcode: Opcode { .eventCreate }
    @inlinable public init() {}
    @inlinable public init(_ e: SubmissionEntry) {}
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .eventCreate) }
  }

  @frozen public struct EventDestroy: CommandCodec {
    public static var opcode: Opcode { .eventDestroy }
    public var event: UInt64
    @inlinable public init(event: UInt64) { self.event = event }
    @inlinable public init(_ e: SubmissionEntry) { event = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .eventDestroy, a0: event) }
  }

  /// Marks the point after the work so far on `stream` (0 = default).
  @frozen public struct EventRecord: CommandCodec {
    public static var opcode: Opcode { .eventRecord }
    public var event: UInt64
    public var stream: UInt64
    @inlinable public init(event: UInt64, stream: UInt64 = 0) {
      self.event = event
      self.stream = stream
    }
    @inlinable public init(_ e: SubmissionEntry) { (event, stream) = (e.a0, e.a1) }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .eventRecord, a0: event, a1: stream) }
  }

  /// Whether the work before the event is done: commands run to completion,
  /// so the reference device always answers success (recorded or not).
  @frozen public struct EventQuery: CommandCodec {
    public static var opcode: Opcode { .eventQuery }
    public var event: UInt64
    @inlinable public init(event: UInt64) { self.event = event }
    @inlinable public init(_ e: SubmissionEntry) { event = e.a0 }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .eventQuery, a0: event) }
  }

  /// r0 the nanoseconds between two recorded events (`notReady`, detail 1
  /// or 2, for one not recorded yet).
  @frozen public struct EventElapsed: CommandCodec {
    public static var opcode: Opcode { .eventElapsed }
    public var start: UInt64
    public var end: UInt64
    @inlinable public init(start: UInt64, end: UInt64) {
      self.start = start
      self.end = end
    }
    @inlinable public init(_ e: SubmissionEntry) { (start, end) = (e.a0, e.a1) }
    @inlinable public var entry: SubmissionEntry { SubmissionEntry(opcode: .eventElapsed, a0: start, a1: end) }
  }

  /// Writes a ``StatisticsRecord`` into the staging window; r0 = 64.
  @frozen public struct Statistics: CommandCodec {
    public static var opcode: Opcode { .statistics }
    /// A ``StatisticsScope`` raw value (checked by the device).
    public var scope: UInt64
    public var staging: UInt64
    public var length: UInt64
    @inlinable public init(scope: StatisticsScope, staging: UInt64, length: UInt64 = UInt64(StatisticsRecord.size)) {
      self.scope = scope.rawValue
      self.staging = staging
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) { (scope, staging, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .statistics, a0: scope, a1: staging, a2: length)
    }
  }

  /// Version 1.1, feature `processList`: one ``ProcessRecord`` per process
  /// with active queue pairs, as many as fit; r0 records written, r1 processes in all.
  /// With `recordSize` 64 (2.1, feature `processActivity`) the records are
  /// ``ProcessActivityRecord``s.
  @frozen public struct Processes: CommandCodec {
    public static var opcode: Opcode { .processes }
    /// 0 or 32 (a ProcessRecord, what a 1.1 guest sends as 0), or 64 (a ProcessActivityRecord).
    public var recordSize: UInt64
    public var staging: UInt64
    /// A multiple of the record size, at least one record.
    public var length: UInt64
    @inlinable public init(recordSize: UInt64 = 0, staging: UInt64, length: UInt64) {
      self.recordSize = recordSize
      self.staging = staging
      self.length = length
    }
    @inlinable public init(_ e: SubmissionEntry) { (recordSize, staging, length) = (e.a0, e.a1, e.a2) }
    @inlinable public var entry: SubmissionEntry {
      SubmissionEntry(opcode: .processes, a0: recordSize, a1: staging, a2: length)
    }
    @frozen public struct Reply {
      public var written: UInt64
      public var total: UInt64
      @inlinable public init(written: UInt64, total: UInt64) {
        self.written = written
        self.total = total
      }
      @inlinable public init(_ c: CompletionEntry) { (written, total) = (c.result0, c.result1) }
      @inlinable public var completion: CompletionEntry {
        CompletionEntry(status: .success, result0: written, result1: total)
      }
    }
  }
}

/// What `getFunction` writes with feature `functionInfo`: a 32-byte header,
/// then `parameterCount` slots of 8 bytes (offset u32, size u32), in order.
///
/// Header layout (pinned by tests): parameterCount u32 @0, parameterBytes
/// u32 @4, maxThreadsPerBlock u32 @8, sharedBytes u32 @12, localBytes u32
/// @16, constBytes u32 @20, registers u32 @24, ptxVersion u16 @28 (major × 10
/// + minor, 0 = none), binaryVersion u16 @30 (sm major × 10 + minor, 0 = none).
@frozen
public struct FunctionInfo: Equatable, Sendable {
  public var parameterCount: UInt32
  public var parameterBytes: UInt32
  public var maxThreadsPerBlock: UInt32
  public var sharedBytes: UInt32
  public var localBytes: UInt32
  public var constBytes: UInt32
  public var registers: UInt32
  public var ptxVersion: UInt16
  public var binaryVersion: UInt16

  public init(
    parameterCount: UInt32, parameterBytes: UInt32, maxThreadsPerBlock: UInt32 = 1024, sharedBytes: UInt32 = 0,
    localBytes: UInt32 = 0, constBytes: UInt32 = 0, registers: UInt32 = 0, ptxVersion: UInt16 = 0,
    binaryVersion: UInt16 = 0
  ) {
    self.parameterCount = parameterCount
    self.parameterBytes = parameterBytes
    self.maxThreadsPerBlock = maxThreadsPerBlock
    self.sharedBytes = sharedBytes
    self.localBytes = localBytes
    self.constBytes = constBytes
    self.registers = registers
    self.ptxVersion = ptxVersion
    self.binaryVersion = binaryVersion
  }

  public static let headerSize = 32
  public static let slotSize = 8
  /// CUDA passes at most 32 764 bytes of parameters (CUDA C++ Programming
  /// Guide, "Function Parameters", for compute capability ≥ 7.0 and CUDA ≥ 12.1).
  public static let maximumParameterBytes: UInt32 = 32_764

  /// Bytes a record with `count` parameters takes.
  public static func size(parameters count: Int) -> Int { headerSize + count * slotSize }
}

/// One kernel parameter: where it sits in the packed buffer and how big it is.
@frozen
public struct ParameterSlot: Equatable, Sendable {
  public var offset: UInt32
  public var size: UInt32
  public init(offset: UInt32, size: UInt32) {
    self.offset = offset
    self.size = size
  }
}

/// A kernel's parameter layout: what a shim needs to pack `kernelParams`
/// (an array of pointers, one per parameter) into the buffer a launch carries.
public struct ParameterLayout: Equatable, Sendable {
  public var slots: [ParameterSlot]
  public var bufferSize: Int
  public init(slots: [ParameterSlot], bufferSize: Int) {
    self.slots = slots
    self.bufferSize = bufferSize
  }

  /// Writes `info` and `layout` at `p` (device side); `capacity` was checked by the caller.
  public static func write(_ info: FunctionInfo, _ slots: [ParameterSlot], to p: UnsafeMutableRawPointer) {
    p.storeBytes(of: info, as: FunctionInfo.self)
    for (i, s) in slots.enumerated() {
      p.storeBytes(of: s, toByteOffset: FunctionInfo.headerSize + i * FunctionInfo.slotSize, as: ParameterSlot.self)
    }
  }

  /// Reads a record the device wrote into `capacity` bytes at `p`, checking
  /// every slot against the buffer size (guest side: nothing is trusted).
  /// Returns nil with the reason when the record makes no sense.
  public static func read(from p: UnsafeRawPointer, capacity: Int, parameterBytes: UInt64) -> (
    FunctionInfo, ParameterLayout
  )? {
    guard capacity >= FunctionInfo.headerSize else { return nil }
    let info = p.loadUnaligned(as: FunctionInfo.self)
    let count = Int(info.parameterCount)
    guard UInt64(info.parameterBytes) == parameterBytes, info.parameterBytes <= FunctionInfo.maximumParameterBytes,
      count <= Int(info.parameterBytes), FunctionInfo.size(parameters: count) <= capacity
    else { return nil }
    var slots: [ParameterSlot] = []
    slots.reserveCapacity(count)
    for i in 0..<count {
      let s = p.loadUnaligned(
        fromByteOffset: FunctionInfo.headerSize + i * FunctionInfo.slotSize, as: ParameterSlot.self)
      guard s.size > 0, UInt64(s.offset) + UInt64(s.size) <= UInt64(info.parameterBytes) else { return nil }
      slots.append(s)
    }
    return (info, ParameterLayout(slots: slots, bufferSize: Int(info.parameterBytes)))
  }
}

extension Opcode {
  /// The bits a submission entry's flags byte may carry for this opcode
  /// (docs/PROTOCOL.md §8): a launch's ``Command/LaunchFlags`` (2.2), the
  /// ``Command/CopyFlags`` of the copies into host memory (2.4); none for the rest.
  @inlinable public var allowedFlags: UInt8 {
    switch self {
    case .launch: Command.LaunchFlags.cooperative
    case .copyToHost, .copyFromDevice: Command.CopyFlags.streaming
    default: 0
    }
  }
}
