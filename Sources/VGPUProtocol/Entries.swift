/// A command in a submission ring: 64 bytes, one cache line.
///
/// Layout (offsets pinned by tests): opcode u8 @0, flags u8 @1 (0), commandID
/// u16 @2, reserved u32 @4 (0), then seven u64 arguments @8...@56 whose meaning
/// depends on the opcode (see ``Opcode``).
@frozen
public struct SubmissionEntry: Equatable, Sendable {
  public var opcode: UInt8
  public var flags: UInt8
  public var commandID: UInt16
  public var reserved: UInt32
  public var a0: UInt64
  public var a1: UInt64
  public var a2: UInt64
  public var a3: UInt64
  public var a4: UInt64
  public var a5: UInt64
  public var a6: UInt64

  /// An entry with the given words; the typed commands (``Command``) build
  /// these, so the meaning of each word is written once.
  @inlinable
  public init(
    opcode: Opcode, a0: UInt64 = 0, a1: UInt64 = 0, a2: UInt64 = 0, a3: UInt64 = 0, a4: UInt64 = 0, a5: UInt64 = 0,
    a6: UInt64 = 0
  ) {
    self.opcode = opcode.rawValue
    self.flags = 0
    self.commandID = 0
    self.reserved = 0
    self.a0 = a0
    self.a1 = a1
    self.a2 = a2
    self.a3 = a3
    self.a4 = a4
    self.a5 = a5
    self.a6 = a6
  }

  /// Raw words, for tests that send what no typed command would (an
  /// argument out of range, a malformed launch). Everything else uses ``Command``.
  @inlinable
  public init(
    raw opcode: Opcode, _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0, _ a3: UInt64 = 0, _ a4: UInt64 = 0,
    _ a5: UInt64 = 0, _ a6: UInt64 = 0
  ) {
    self.init(opcode: opcode, a0: a0, a1: a1, a2: a2, a3: a3, a4: a4, a5: a5, a6: a6)
  }

  public static let size = 64
}

/// A completion: 32 bytes. The device writes bytes 0-23 and 28-31 first and
/// the 32-bit word at 24 (commandID | phase << 16) last, with release order;
/// a reader that sees the new phase with acquire order sees the whole entry.
///
/// Layout: result0 u64 @0, result1 u64 @8, detail u32 @16, status u16 @20,
/// sqHead u16 @22, commandID u16 @24, phase u16 @26 (bit 0), following u32 @28.
@frozen
public struct CompletionEntry: Equatable, Sendable {
  public var result0: UInt64
  public var result1: UInt64
  /// With an error status: which argument was at fault (1-based a0...a6 = 1...7,
  /// 0 = none or the whole command), or a status-specific fact documented
  /// with the status: the line for `invalidImage`; for `launch`, 100 + i
  /// (`invalidAddress`: kernel pointer parameter i, 0-based) and 6
  /// (`invalidValue`: matmul dimensions overflow).
  public var detail: UInt32
  public var status: UInt16
  /// The device's submission-ring head after consuming this command (as NVMe's SQHD).
  public var sqHead: UInt16
  public var commandID: UInt16
  public var phase: UInt16
  /// Further commands this completion answers (2.4, feature
  /// `coalescedCompletions`): ids `commandID + 1 … commandID + following`,
  /// consecutive in the submission ring, each a NOP that succeeded. 0
  /// otherwise (and always without the feature).
  public var following: UInt32

  @inlinable
  public init(
    commandID: UInt16 = 0, status: CommandStatus, result0: UInt64 = 0, result1: UInt64 = 0, detail: UInt32 = 0,
    sqHead: UInt16 = 0, phase: UInt16 = 0
  ) {
    self.result0 = result0
    self.result1 = result1
    self.detail = detail
    self.status = status.rawValue
    self.sqHead = sqHead
    self.commandID = commandID
    self.phase = phase
    self.following = 0
  }

  public static let size = 32
  /// Offset of the word written last: commandID | phase << 16.
  public static let tagOffset = 24
}

/// Operations, with the meaning of each argument. `dev` = device address,
/// `stg` = staging address (a byte offset in the BAR inside the submitting
/// queue pair's staging window, or 2.4 inside one page-locked window range
/// of its process), `len` = bytes. Results in result0/result1.
public enum Opcode: UInt8, Sendable, CaseIterable {
  /// Nothing; completes with success. Measures the round trip.
  case nop = 0x00
  /// a0 guest version (major << 16 | minor), a1 guest features →
  /// r0 features both sides have, r1 device version. Every command but `nop`
  /// needs it first (else `notInitialized`); it may be sent again.
  case identify = 0x01
  /// → r0 free bytes, r1 total bytes of device memory.
  case memoryInfo = 0x02
  /// a0 len, a1 alignment (0 = 256; else a power of two ≥ 256) → r0 dev,
  /// r1 bytes reserved (len rounded up to 256).
  case alloc = 0x03
  /// a0 dev (as alloc returned it) → r0 bytes released: the rounded size
  /// (alloc's r1), not the length asked for.
  case free = 0x04
  /// a0 dev (destination), a1 stg, a2 len → r0 len.
  case copyToDevice = 0x05
  /// a0 dev (source), a1 stg, a2 len → r0 len.
  case copyFromDevice = 0x06
  /// a0 dev destination, a1 dev source, a2 len → r0 len. Overlap allowed.
  case copyDeviceToDevice = 0x07
  /// a0 dev, a1 value (low bytes used), a2 element size (1, 2 or 4), a3 count → r0 bytes set.
  case memset = 0x08
  /// a1 stg, a2 len of a module image (a fat binary, its wrapper's data, an
  /// ELF cubin or PTX text; docs/PROTOCOL.md §18); or a0 an
  /// upload handle (2.0) whose chunks hold the image → r0 module handle.
  case moduleLoad = 0x09
  /// a0 module handle.
  case moduleUnload = 0x0a
  /// a0 module handle, a1 stg, a2 len of the UTF-8 name, a3 stg and a4
  /// capacity for a ``FunctionInfo`` (1.3, feature `functionInfo`; a4 = 0:
  /// none) → r0 function handle, r1 the parameter buffer size the function takes.
  /// A nonzero a4 below the record's size: `invalidValue`, detail 5, r0 the size needed.
  case getFunction = 0x0b
  /// a0 function handle; a1 grid x | y << 32; a2 grid z | block x << 32;
  /// a3 block y | z << 32; a4 shared bytes | parameter len << 32; a5 stg of the
  /// packed parameter buffer; a6 stream handle (0 = default stream). Besides
  /// argument numbers, a refusal's detail may be 100 + i (`invalidAddress`:
  /// pointer parameter i, 0-based, does not resolve) or 6 (`invalidValue`:
  /// matmul dimensions overflow); `invalidParameters` has r0 the bytes the
  /// kernel takes, r1 those given.
  case launch = 0x0c
  /// → r0 stream handle.
  case streamCreate = 0x0d
  /// a0 stream handle.
  case streamDestroy = 0x0e
  /// a0 stream handle (0 = default): completes when the stream's work has.
  case streamSynchronize = 0x0f
  /// → r0 event handle.
  case eventCreate = 0x10
  /// a0 event handle.
  case eventDestroy = 0x11
  /// a0 event handle, a1 stream handle (0 = default): the work it follows.
  case eventRecord = 0x12
  /// a0 event handle → success. Commands run to completion, so the work an
  /// event follows is always done: the reference device never answers
  /// `notReady`, recorded or not.
  case eventQuery = 0x13
  /// a0 start event, a1 end event → r0 nanoseconds between them.
  case eventElapsed = 0x14
  /// a0 scope (StatisticsScope), a1 stg, a2 len (≥ 64) → a StatisticsRecord at stg; r0 = 64.
  case statistics = 0x15
  /// Version 1.1, feature `processList`. a0 record size (0 or 32: a
  /// ProcessRecord; 64, 2.1 feature `processActivity`: a
  /// ProcessActivityRecord), a1 stg, a2 len (a multiple of the record size,
  /// at least one record) → one record per process with active queue pairs, in
  /// the order of their first queue pair, as many as fit; r0 records written,
  /// r1 processes in all.
  case processes = 0x16
  /// 2.0, feature `kernelImages`. One chunk of a module image too large for
  /// one staging slot: a0 upload handle (0 = start one; then a4 is the
  /// image's total length, at most 512 MiB), a1 stg, a2 len, a3 the chunk's
  /// offset in the image → r0 len (as a copy answers), r1 upload handle. Chunks may come in any order
  /// and be pipelined once the handle is known; `moduleLoad` with a0 = the
  /// handle loads the image and ends the upload.
  case moduleUpload = 0x17
  /// 2.0, feature `kernelImages`. a0 module handle, a1 stg, a2 len of the
  /// UTF-8 name of a module variable (`__device__`, `__constant__`) → r0 its
  /// device address, r1 its size in bytes.
  case moduleGlobal = 0x18
  /// 2.0, feature `kernelImages`. a1 stg, a2 capacity → the oldest bytes of
  /// the process's device output (kernels' `printf`), as many as fit; r0
  /// bytes written, r1 bytes still held, detail = bytes dropped since the
  /// last `output` because the buffer was full (clamped to 2^32 − 1).
  case output = 0x19
  /// 2.0, feature `kernelImages`. a1 stg, a2 capacity → the text of the last
  /// failed command on this queue pair (UTF-8, one line, no NUL), as much as
  /// fits; r0 bytes written. Empty after a success.
  case errorText = 0x1a
  /// 2.0, feature `kernelImages`. a0 module handle, a1 stg, a2 capacity →
  /// the module's kernel names, each followed by a NUL, as many whole names
  /// as fit; r0 the kernels in the module, r1 bytes written
  /// (cuLibraryGetKernelCount, cuLibraryEnumerateKernels).
  case moduleKernels = 0x1b
  /// 2.4, feature `sharedHostMemory`. a0 a descriptor number of the
  /// submitting process: a memfd sealed against shrinking (memfd_create(2),
  /// F_SEAL_SHRINK), a1 where the process mapped it (page-aligned), a2 the
  /// mapped length (≤ the file's size) → r0 len. The device takes the
  /// descriptor (pidfd_getfd(2)) and maps the file: later `copyFromHost` and
  /// `copyToHost` commands of the process name addresses inside it.
  case hostMemoryShare = 0x1c
  /// 2.4, feature `sharedHostMemory`. a1 the address `hostMemoryShare` named
  /// → r0 len. The device unmaps it.
  case hostMemoryUnshare = 0x1d
  /// 2.4, feature `sharedHostMemory`. a0 dev (destination), a1 host address
  /// inside one range the process shared, a2 len → r0 len: one copy, from
  /// the process's pages to device memory.
  case copyFromHost = 0x1e
  /// 2.4, feature `sharedHostMemory`. a0 dev (source), a1 host address
  /// inside one range the process shared, a2 len → r0 len.
  case copyToHost = 0x1f
  /// 2.4, feature `hostWindow`. a0 len → r0 the BAR offset of a page-aligned
  /// range of the page-locked window, zeroed, owned by the submitting queue
  /// pair (any pair of its process may use it), r1 its length (len rounded
  /// up to pages). Staging arguments may then name bytes inside it.
  /// `outOfMemory`: r0 the largest range that would fit.
  case windowAlloc = 0x20
  /// 2.4, feature `hostWindow`. a0 the BAR offset `windowAlloc` returned →
  /// r0 the range's length. The device zeroes the range.
  case windowFree = 0x21
}

/// Which activity a `statistics` command reports.
public enum StatisticsScope: UInt64, Sendable {
  /// The submitting process (every queue pair it owns).
  case process = 0
  /// The submitting queue pair only.
  case queuePair = 1
  /// The whole device.
  case device = 2
}

/// What `statistics` writes: eight u64 counters, 64 bytes.
@frozen
public struct StatisticsRecord: Equatable, Sendable {
  public var bytesAllocated: UInt64
  public var allocations: UInt64
  public var launches: UInt64
  public var copies: UInt64
  public var bytesCopied: UInt64
  public var busyNanoseconds: UInt64
  public var commands: UInt64
  public var queuePairs: UInt64

  public init(
    bytesAllocated: UInt64 = 0, allocations: UInt64 = 0, launches: UInt64 = 0, copies: UInt64 = 0,
    bytesCopied: UInt64 = 0, busyNanoseconds: UInt64 = 0, commands: UInt64 = 0, queuePairs: UInt64 = 0
  ) {
    self.bytesAllocated = bytesAllocated
    self.allocations = allocations
    self.launches = launches
    self.copies = copies
    self.bytesCopied = bytesCopied
    self.busyNanoseconds = busyNanoseconds
    self.commands = commands
    self.queuePairs = queuePairs
  }

  public static let size = 64

  public static func + (a: StatisticsRecord, b: StatisticsRecord) -> StatisticsRecord {
    StatisticsRecord(
      bytesAllocated: a.bytesAllocated + b.bytesAllocated, allocations: a.allocations + b.allocations,
      launches: a.launches + b.launches, copies: a.copies + b.copies, bytesCopied: a.bytesCopied + b.bytesCopied,
      busyNanoseconds: a.busyNanoseconds + b.busyNanoseconds, commands: a.commands + b.commands,
      queuePairs: a.queuePairs + b.queuePairs)
  }
}

/// What `processes` writes for each process using the device: 32 bytes.
///
/// Layout (pinned by tests): pid u32 @0, queuePairs u32 @4, bytesAllocated
/// u64 @8, launches u64 @16, busyNanoseconds u64 @24. The counters are the
/// sums over the process's active queue pairs, as `statistics` with scope
/// `process` reports them to the process itself.
@frozen
public struct ProcessRecord: Equatable, Sendable {
  /// As the process declared it when it claimed its queue pairs.
  public var pid: UInt32
  /// Active queue pairs the process holds.
  public var queuePairs: UInt32
  /// Live allocated bytes (rounded sizes) made through those queue pairs.
  public var bytesAllocated: UInt64
  /// Successful launches through them.
  public var launches: UInt64
  /// Device time spent executing their commands.
  public var busyNanoseconds: UInt64

  public init(
    pid: UInt32, queuePairs: UInt32 = 0, bytesAllocated: UInt64 = 0, launches: UInt64 = 0, busyNanoseconds: UInt64 = 0
  ) {
    self.pid = pid
    self.queuePairs = queuePairs
    self.bytesAllocated = bytesAllocated
    self.launches = launches
    self.busyNanoseconds = busyNanoseconds
  }

  public static let size = 32
}

/// What `processes` writes with a0 = 64 (2.1, feature `processActivity`): a
/// ``ProcessRecord`` followed by the process's copies by direction and its
/// commands, 64 bytes.
///
/// Layout (pinned by tests): the ProcessRecord @0 (32 bytes), bytesToDevice
/// u64 @32, bytesFromDevice u64 @40, bytesWithinDevice u64 @48, commands u64
/// @56. Like the ProcessRecord's, the counters are sums over the process's
/// active queue pairs: they start at 0 when a pair is accepted.
@frozen
public struct ProcessActivityRecord: Equatable, Sendable {
  public var process: ProcessRecord
  /// Bytes of successful copyToDevice commands (host to device).
  public var bytesToDevice: UInt64
  /// Bytes of successful copyFromDevice commands (device to host).
  public var bytesFromDevice: UInt64
  /// Bytes of successful copyDeviceToDevice commands.
  public var bytesWithinDevice: UInt64
  /// Commands executed, any status.
  public var commands: UInt64

  public init(
    process: ProcessRecord, bytesToDevice: UInt64 = 0, bytesFromDevice: UInt64 = 0, bytesWithinDevice: UInt64 = 0,
    commands: UInt64 = 0
  ) {
    self.process = process
    self.bytesToDevice = bytesToDevice
    self.bytesFromDevice = bytesFromDevice
    self.bytesWithinDevice = bytesWithinDevice
    self.commands = commands
  }

  public static let size = 64
}
