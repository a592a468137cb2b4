import CSupport

/// Where everything lives in a BAR. The device chooses it and writes it to the
/// registers (``write(to:)``); a guest reads it back (``init(reading:size:)``),
/// which checks every field against the BAR's size before anything is used.
public struct BARLayout: Equatable, Sendable {
  public var queuePairs: UInt32
  public var depth: UInt32
  public var doorbellOffset: UInt64
  public var doorbellStride: UInt32
  public var queueAreaOffset: UInt64
  public var queuePairStride: UInt32
  public var stagingOffset: UInt64
  public var stagingSlotSize: UInt32
  public var slotsPerQueue: UInt32
  public var regionSize: UInt64

  /// A compact layout: registers, doorbells, queue pair blocks, staging, each page-aligned.
  ///
  /// Slots of 256 KiB pipeline best on these machines (../shared/LIMITS.md);
  /// 8 queue pairs of 7 slots keep the whole BAR (14.2 MiB) inside a 16 MiB
  /// ivshmem shared-memory object.
  public init(
    queuePairs: UInt32 = 8, depth: UInt32 = 256, stagingSlotSize: UInt32 = 256 << 10, slotsPerQueue: UInt32 = 7
  ) {
    self.queuePairs = queuePairs
    self.depth = depth
    self.doorbellOffset = UInt64(Register.blockSize)
    self.doorbellStride = 64
    self.queueAreaOffset = Self.pageAlign(doorbellOffset + UInt64(queuePairs) * 64)
    self.queuePairStride = UInt32(Self.pageAlign(UInt64(QueuePairBlock.ringsOffset) + UInt64(depth) * 96))
    self.stagingOffset = Self.pageAlign(queueAreaOffset + UInt64(queuePairs) * UInt64(queuePairStride))
    self.stagingSlotSize = stagingSlotSize
    self.slotsPerQueue = slotsPerQueue
    self.regionSize = stagingOffset + UInt64(queuePairs) * UInt64(slotsPerQueue) * UInt64(stagingSlotSize)
  }

  static func pageAlign(_ x: UInt64) -> UInt64 { (x + 4095) & ~4095 }

  public var stagingSize: UInt64 { regionSize - stagingOffset }
  public var stagingPerQueue: UInt64 { UInt64(slotsPerQueue) * UInt64(stagingSlotSize) }

  @inlinable @inline(__always) public func doorbell(_ qp: Int) -> Int { Int(doorbellOffset) + qp * Int(doorbellStride) }
  @inlinable @inline(__always) public func queuePair(_ qp: Int) -> Int {
    Int(queueAreaOffset) + qp * Int(queuePairStride)
  }
  @inlinable @inline(__always) public func submissionRing(_ qp: Int) -> Int {
    queuePair(qp) + QueuePairBlock.ringsOffset
  }
  @inlinable @inline(__always) public func completionRing(_ qp: Int) -> Int {
    submissionRing(qp) + Int(depth) * SubmissionEntry.size
  }
  /// The first byte of queue pair `qp`'s staging window.
  @inlinable @inline(__always) public func staging(_ qp: Int) -> UInt64 { stagingOffset + UInt64(qp) * stagingPerQueue }

  /// Writes the layout registers. Device side.
  public func write(to r: RegisterBlock) {
    r.store(Register.queuePairCount, queuePairs)
    r.store(Register.queueDepth, depth)
    r.store(Register.submissionEntrySize, UInt32(SubmissionEntry.size))
    r.store(Register.completionEntrySize, UInt32(CompletionEntry.size))
    r.store(Register.doorbellOffset, doorbellOffset)
    r.store(Register.doorbellStride, doorbellStride)
    r.store(Register.queuePairStride, queuePairStride)
    r.store(Register.queueAreaOffset, queueAreaOffset)
    r.store(Register.stagingOffset, stagingOffset)
    r.store(Register.stagingSize, stagingSize)
    r.store(Register.stagingSlotSize, stagingSlotSize)
    r.store(Register.stagingSlotsPerQueue, slotsPerQueue)
    r.store(Register.regionSize, regionSize)
  }

  /// Reads and checks a layout from the registers of a BAR of `size` bytes.
  /// Guest side: nothing here is trusted until it has passed these checks.
  public init(reading r: RegisterBlock, size: Int) throws(LayoutError) {
    func fail(_ field: String, _ value: UInt64, _ why: String) -> LayoutError {
      LayoutError(field: field, value: value, problem: why)
    }
    queuePairs = r.load(Register.queuePairCount)
    depth = r.load(Register.queueDepth)
    doorbellOffset = r.load(Register.doorbellOffset)
    doorbellStride = r.load(Register.doorbellStride)
    queueAreaOffset = r.load(Register.queueAreaOffset)
    queuePairStride = r.load(Register.queuePairStride)
    stagingOffset = r.load(Register.stagingOffset)
    stagingSlotSize = r.load(Register.stagingSlotSize)
    slotsPerQueue = r.load(Register.stagingSlotsPerQueue)
    regionSize = r.load(Register.regionSize)
    let bar = UInt64(size)

    guard (1...ProtocolLimits.maximumQueuePairs).contains(queuePairs) else {
      throw fail("queue pair count", UInt64(queuePairs), "must be 1...\(ProtocolLimits.maximumQueuePairs)")
    }
    guard depth >= ProtocolLimits.minimumDepth, depth <= ProtocolLimits.maximumDepth, depth & (depth - 1) == 0 else {
      throw fail("queue depth", UInt64(depth), "must be a power of two in 2...4096")
    }
    guard r.load(Register.submissionEntrySize) == UInt32(SubmissionEntry.size) else {
      throw fail("submission entry size", UInt64(r.load(Register.submissionEntrySize)), "must be 64")
    }
    guard r.load(Register.completionEntrySize) == UInt32(CompletionEntry.size) else {
      throw fail("completion entry size", UInt64(r.load(Register.completionEntrySize)), "must be 32")
    }
    guard regionSize <= bar else { throw fail("region size", regionSize, "exceeds the BAR's \(bar) bytes") }
    guard doorbellStride >= 8, doorbellStride % 8 == 0 else {
      throw fail("doorbell stride", UInt64(doorbellStride), "must be a multiple of 8")
    }
    let n = UInt64(queuePairs)
    guard Self.fits(doorbellOffset, n * UInt64(doorbellStride), in: regionSize),
      doorbellOffset >= UInt64(Register.blockSize), doorbellOffset % 8 == 0
    else { throw fail("doorbell offset", doorbellOffset, "doorbells do not fit in the BAR after the registers") }
    let ringBytes =
      UInt64(QueuePairBlock.ringsOffset) + UInt64(depth) * UInt64(SubmissionEntry.size + CompletionEntry.size)
    guard UInt64(queuePairStride) >= ringBytes, queuePairStride % 64 == 0 else {
      throw fail("queue pair stride", UInt64(queuePairStride), "must hold \(ringBytes) bytes, 64-byte aligned")
    }
    guard Self.fits(queueAreaOffset, n * UInt64(queuePairStride), in: regionSize), queueAreaOffset % 64 == 0,
      queueAreaOffset >= UInt64(Register.blockSize)
    else { throw fail("queue area offset", queueAreaOffset, "queue pairs do not fit in the BAR after the registers") }
    guard stagingSlotSize > 0, UInt64(stagingSlotSize) % ProtocolLimits.stagingAlignment == 0, slotsPerQueue > 0,
      slotsPerQueue <= depth
    else {
      throw fail("staging slot size", UInt64(stagingSlotSize), "slots must be whole pages, 1...depth per queue pair")
    }
    guard stagingOffset % ProtocolLimits.stagingAlignment == 0, stagingOffset >= UInt64(Register.blockSize),
      Self.fits(stagingOffset, n * UInt64(slotsPerQueue) * UInt64(stagingSlotSize), in: regionSize)
    else { throw fail("staging offset", stagingOffset, "the staging area does not fit in the BAR") }
    // The three areas must not overlap each other.
    let areas = [
      (doorbellOffset, n * UInt64(doorbellStride)), (queueAreaOffset, n * UInt64(queuePairStride)),
      (stagingOffset, n * stagingPerQueue),
    ].sorted { $0.0 < $1.0 }
    for i in 1..<areas.count where areas[i - 1].0 + areas[i - 1].1 > areas[i].0 {
      throw fail("layout", areas[i].0, "doorbells, queue pairs and staging overlap")
    }
  }

  @inline(__always)
  static func fits(_ offset: UInt64, _ length: UInt64, in size: UInt64) -> Bool {
    offset <= size && length <= size - offset
  }
}

/// A layout register that failed its check, in words.
public struct LayoutError: Error, Equatable, CustomStringConvertible {
  public var field: String
  public var value: UInt64
  public var problem: String
  public var description: String { "\(field) register holds \(value): \(problem)" }
}

/// The fixed part of each queue pair block, before its two rings.
///
/// Two cache lines, so the sides never write the same line: the guest line
/// (owner, state, waiting flag) and the device line (consumed head, wake word).
public enum QueuePairBlock {
  // Guest line.
  /// u32 QueuePairState; the guest moves free→claiming and active→closing,
  /// the device claiming→active and closing→free.
  public static let state = 0x00
  /// u32 the owning process's pid.
  public static let ownerPID = 0x04
  /// u32 1 while the guest sleeps on `completionWake` (event suppression).
  public static let guestWaiting = 0x08
  /// u32 (2.3, feature `guestHeartbeat`) the guest adds 1 to every
  /// `GuestHeartbeat.periodNanoseconds` while its process lives; any value,
  /// only its changes mean anything. The device zeroes it at accept.
  public static let heartbeat = 0x0C
  // Device line.
  /// u32 futex word the device bumps (and wakes) after posting completions.
  public static let completionWake = 0x40
  /// u32 a protocol error the device found in this queue pair (QueuePairFault), 0 = none.
  public static let fault = 0x44
  /// Submission ring (depth × 64 bytes), then completion ring (depth × 32 bytes).
  public static let ringsOffset = 0x80
}

/// Per queue pair doorbells, guest-written: the submission tail and the
/// completion head, each a ring index in 0..<depth.
public enum Doorbell {
  public static let submissionTail = 0x0
  public static let completionHead = 0x4
}

public enum QueuePairState: UInt32, Sendable {
  case free = 0
  case claiming = 1
  case active = 2
  case closing = 3
}

/// What a device found wrong in a queue pair's indices; it stops serving
/// that queue pair (other queue pairs go on) until the guest closes it.
public enum QueuePairFault: UInt32, Sendable {
  case none = 0
  /// The submission tail doorbell is not below the depth.
  case tailOutOfRange = 1
  /// The completion head doorbell is not below the depth.
  case headOutOfRange = 2
}

/// Typed, ordered access to the registers at the start of a BAR.
public struct RegisterBlock: @unchecked Sendable {
  public let base: UnsafeMutableRawPointer
  public init(_ base: UnsafeMutableRawPointer) { self.base = base }

  @inlinable @inline(__always) public func load(_ r: Register32) -> UInt32 { vgpu_load_acquire_u32(base + r.offset) }
  @inlinable @inline(__always) public func store(_ r: Register32, _ v: UInt32) {
    vgpu_store_release_u32(base + r.offset, v)
  }
  @inlinable @inline(__always) public func load(_ r: Register64) -> UInt64 { vgpu_load_acquire_u64(base + r.offset) }
  @inlinable @inline(__always) public func store(_ r: Register64, _ v: UInt64) {
    vgpu_store_release_u64(base + r.offset, v)
  }
  /// The field's bytes.
  public func bytes(_ r: RegisterBytes) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(start: base + r.offset, count: r.count)
  }

  public var status: StatusRegister { StatusRegister(rawValue: load(Register.status)) }

  @inlinable @inline(__always) public var deviceSleeping: Bool {
    vgpu_load_seqcst_u32(base + Register.deviceSleeping.offset) != 0
  }
  @inlinable @inline(__always) public func setDeviceSleeping(_ sleeping: Bool) {
    vgpu_store_seqcst_u32(base + Register.deviceSleeping.offset, sleeping ? 1 : 0)
  }
  @inlinable @inline(__always) public var deviceWakeWord: UnsafeMutableRawPointer { base + Register.deviceWake.offset }
}

/// Where device addresses start (docs/PROTOCOL.md, "Device addresses"):
/// nonzero, so NULL is never valid, and in the range CUDA's unified
/// addressing hands out, so they look familiar. The device's memory follows it.
public let deviceAddressBase: UInt64 = 0x7000_0000_0000
