/// Why an allocation or a free was refused, with the facts a person needs.
public enum AllocationError: Error, Sendable, Equatable, CustomStringConvertible {
  /// A size of zero was requested.
  case invalidSize(UInt64)
  /// The alignment is not a power of two of at least `DeviceAllocator.granularity`.
  case invalidAlignment(UInt64)
  /// No free range can hold the request.
  case outOfMemory(requested: UInt64, free: UInt64, largestFreeBlock: UInt64)
  /// The offset is not the start of a live allocation (never allocated, or already freed).
  case notAllocated(UInt64)
  /// The allocation at the offset belongs to another owner.
  case wrongOwner(UInt64, owner: UInt32)

  public var description: String {
    switch self {
    case .invalidSize(let size):
      return "Allocation of \(size) bytes refused: the size must be at least 1 byte."
    case .invalidAlignment(let alignment):
      return
        "Allocation refused: alignment \(alignment) is not a power of two of at least \(DeviceAllocator.granularity) bytes."
    case .outOfMemory(let requested, let free, let largest):
      return
        "Out of device memory: \(requested) bytes requested, \(free) bytes free, largest free block \(largest) bytes. Free memory or request less."
    case .notAllocated(let offset):
      return "Free refused: offset 0x\(String(offset, radix: 16)) is not the start of a live allocation."
    case .wrongOwner(let offset, let owner):
      return "Free refused: the allocation at 0x\(String(offset, radix: 16)) belongs to owner \(owner)."
    }
  }
}

/// Hands out ranges of device memory offsets in `[0, capacity)` and remembers who owns them.
///
/// Free space is a sorted list of coalesced free ranges; allocation is best-fit over it.
/// Live allocations are kept sorted by offset so that `allocation(containing:length:)` — the
/// check every copy and kernel pointer goes through — is a binary search that never allocates.
/// Allocating and freeing may allocate (array bookkeeping); lookups do not.
public struct DeviceAllocator: Sendable {
  /// One live allocation.
  public struct Allocation: Sendable, Equatable {
    /// Start offset in device memory; a multiple of the requested alignment.
    public var offset: UInt64
    /// Size rounded up to `DeviceAllocator.granularity`; the bytes this allocation occupies.
    public var size: UInt64
    /// The size that was asked for; lookups validate against it.
    public var requested: UInt64
    /// Who allocated it (a process or context id); used for ownership checks and accounting.
    public var owner: UInt32

    public init(offset: UInt64, size: UInt64, requested: UInt64, owner: UInt32) {
      self.offset = offset
      self.size = size
      self.requested = requested
      self.owner = owner
    }

    init(_ e: AllocationLedger.Entry) {
      self.init(offset: e.address, size: e.size, requested: e.requested, owner: e.owner)
    }

    var entry: AllocationLedger.Entry {
      AllocationLedger.Entry(address: offset, size: size, requested: requested, owner: owner)
    }
  }

  /// Allocation granularity and minimum alignment: `cudaMalloc` memory is aligned to at
  /// least 256 bytes (CUDA C++ Programming Guide, "Device Memory Accesses").
  public static let granularity: UInt64 = 256

  struct FreeRange: Equatable {
    var offset: UInt64
    var size: UInt64
    var end: UInt64 { offset + size }
  }

  /// Total bytes under management.
  public let capacity: UInt64
  /// Live allocations (offsets as addresses), sorted, never overlapping.
  private(set) var ledger = AllocationLedger()
  /// Live allocations, sorted by offset.
  var allocations: [Allocation] { ledger.entries.map(Allocation.init) }
  /// Free ranges, sorted by offset, never overlapping and never adjacent (always coalesced).
  private(set) var freeRanges: [FreeRange]
  /// Sum of the (rounded) sizes of all live allocations.
  public var allocatedBytes: UInt64 { ledger.bytes }

  /// Manages offsets `[0, capacity)`.
  public init(capacity: UInt64) {
    self.capacity = capacity
    self.freeRanges = capacity > 0 ? [FreeRange(offset: 0, size: capacity)] : []
  }

  /// Bytes not allocated: always `capacity - allocatedBytes`.
  public var freeBytes: UInt64 { capacity - allocatedBytes }

  /// Number of live allocations.
  public var liveAllocations: Int { ledger.entries.count }

  /// The largest single request (in rounded bytes, at minimum alignment) that could succeed.
  public var largestFreeBlock: UInt64 {
    var largest: UInt64 = 0
    for range in freeRanges {
      // A range's usable part starts at the next granularity boundary and ends at a boundary.
      let start = Self.alignUp(range.offset, Self.granularity) ?? range.end
      let end = range.end / Self.granularity * Self.granularity
      if end > start { largest = max(largest, end - start) }
    }
    return largest
  }

  /// Sum of the (rounded) sizes of the live allocations of `owner`.
  public func allocatedBytes(owner: UInt32) -> UInt64 { ledger.bytes(owner: owner) }

  /// Allocates `size` bytes aligned to `alignment` for `owner`.
  ///
  /// The size is rounded up to `granularity`. Best fit: the smallest free range that can hold
  /// the aligned request is used; any part of it before the aligned start and after the end
  /// stays free.
  public mutating func allocate(_ size: UInt64, alignment: UInt64 = 256, owner: UInt32) throws(AllocationError)
    -> Allocation
  {
    guard size > 0 else { throw .invalidSize(size) }
    guard alignment >= Self.granularity, alignment & (alignment - 1) == 0 else {
      throw .invalidAlignment(alignment)
    }
    guard let rounded = Self.alignUp(size, Self.granularity) else {
      throw .outOfMemory(requested: size, free: freeBytes, largestFreeBlock: largestFreeBlock)
    }
    var best: (index: Int, start: UInt64)? = nil
    var bestSize = UInt64.max
    for (i, range) in freeRanges.enumerated() where range.size >= rounded && (best == nil || range.size < bestSize) {
      guard let start = Self.alignUp(range.offset, alignment) else { continue }
      let pad = start - range.offset
      guard pad <= range.size, range.size - pad >= rounded else { continue }
      best = (i, start)
      bestSize = range.size
    }
    guard let best else {
      throw .outOfMemory(requested: size, free: freeBytes, largestFreeBlock: largestFreeBlock)
    }
    let range = freeRanges[best.index]
    var rest: [FreeRange] = []
    if best.start > range.offset {
      rest.append(FreeRange(offset: range.offset, size: best.start - range.offset))
    }
    let end = best.start + rounded
    if end < range.end {
      rest.append(FreeRange(offset: end, size: range.end - end))
    }
    freeRanges.replaceSubrange(best.index...best.index, with: rest)

    let allocation = Allocation(offset: best.start, size: rounded, requested: size, owner: owner)
    ledger.insert(allocation.entry)
    return allocation
  }

  /// Frees the allocation that starts at `offset`.
  ///
  /// - Parameter owner: when non-nil, the allocation must belong to this owner.
  /// - Returns: the allocation that was freed (so the caller can discard its pages).
  @discardableResult
  public mutating func free(offset: UInt64, owner: UInt32?) throws(AllocationError) -> Allocation {
    guard let found = ledger.entry(containing: offset, length: 0), found.address == offset else {
      throw .notAllocated(offset)
    }
    if let owner, owner != found.owner { throw .wrongOwner(offset, owner: found.owner) }
    ledger.remove(startingAt: offset)
    let allocation = Allocation(found)
    insertFree(FreeRange(offset: allocation.offset, size: allocation.size))
    return allocation
  }

  /// Frees every allocation of `owner` (e.g. when its process goes away).
  public mutating func freeAll(owner: UInt32) -> (count: Int, bytes: UInt64) {
    let removed = ledger.removeAll(owner: owner)
    guard !removed.isEmpty else { return (0, 0) }
    let count = removed.count
    let bytes = removed.reduce(0) { $0 + $1.size }
    // Rebuild the free list as the gaps between the remaining allocations: coalesced by
    // construction and linear in the number of allocations.
    var gaps: [FreeRange] = []
    gaps.reserveCapacity(ledger.entries.count + 1)
    var cursor: UInt64 = 0
    for a in ledger.entries {
      if a.address > cursor { gaps.append(FreeRange(offset: cursor, size: a.address - cursor)) }
      cursor = a.address + a.size
    }
    if capacity > cursor { gaps.append(FreeRange(offset: cursor, size: capacity - cursor)) }
    freeRanges = gaps
    return (count, bytes)
  }

  /// The live allocation that fully contains `[offset, offset + length)`, or nil
  /// (checked against the requested size; see `AllocationLedger.entry(containing:length:)`).
  public func allocation(containing offset: UInt64, length: UInt64) -> Allocation? {
    ledger.entry(containing: offset, length: length).map(Allocation.init)
  }

  /// Inserts a free range, merging it with its neighbours when they touch.
  private mutating func insertFree(_ range: FreeRange) {
    var low = 0
    var high = freeRanges.count
    while low < high {
      let mid = low + (high - low) / 2
      if freeRanges[mid].offset < range.offset { low = mid + 1 } else { high = mid }
    }
    let mergesPrevious = low > 0 && freeRanges[low - 1].end == range.offset
    let mergesNext = low < freeRanges.count && freeRanges[low].offset == range.end
    switch (mergesPrevious, mergesNext) {
    case (true, true):
      freeRanges[low - 1].size += range.size + freeRanges[low].size
      freeRanges.remove(at: low)
    case (true, false):
      freeRanges[low - 1].size += range.size
    case (false, true):
      freeRanges[low].offset = range.offset
      freeRanges[low].size += range.size
    case (false, false):
      freeRanges.insert(range, at: low)
    }
  }

  /// `value` rounded up to a multiple of the power of two `alignment`; nil on overflow.
  static func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
    let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
    return overflow ? nil : sum & ~(alignment - 1)
  }
}
