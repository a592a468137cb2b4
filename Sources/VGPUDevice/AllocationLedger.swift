/// Live device memory by address: who owns each range and how big it is.
/// Every device address a guest names is checked against it, whichever
/// backend placed the range (the reference device's allocator, or a real
/// GPU's driver). Sorted by address, so a lookup is a binary search that
/// never allocates; inserting and removing may.
public struct AllocationLedger: Sendable {
  /// What a range is, which decides who may free it and how.
  public enum Kind: UInt8, Sendable {
    /// An allocation (`alloc`): the guest frees it, or its pair's release does.
    case allocation
    /// A module variable the device placed (the reference device): freed at unload or release.
    case moduleVariable
    /// A module variable the backend's driver placed: it goes with the
    /// module, so the device never frees it, only forgets it.
    case driverVariable
  }

  /// One live range.
  public struct Entry: Sendable, Equatable {
    /// Its first device address.
    public var address: UInt64
    /// The bytes it occupies (rounded), which the memory limit counts.
    public var size: UInt64
    /// The size asked for: accesses are checked against it.
    public var requested: UInt64
    /// Who made it (a queue pair, or for the allocator's own use an owner id).
    public var owner: UInt32
    public var kind: Kind

    public init(address: UInt64, size: UInt64, requested: UInt64, owner: UInt32, kind: Kind = .allocation) {
      self.address = address
      self.size = size
      self.requested = requested
      self.owner = owner
      self.kind = kind
    }
  }

  /// Live ranges, sorted by address, never overlapping.
  public private(set) var entries: [Entry] = []
  /// The sum of the live ranges' sizes.
  public private(set) var bytes: UInt64 = 0

  public init() {}

  /// Records a range. A range that overlaps a live one is refused (false):
  /// a backend that places memory twice is a bug, not a guest's doing.
  @discardableResult
  public mutating func insert(_ entry: Entry) -> Bool {
    let i = upperBound(entry.address)
    if i > 0, entries[i - 1].address &+ entries[i - 1].size > entry.address { return false }
    if i < entries.count, entry.size > entries[i].address - entry.address { return false }
    entries.insert(entry, at: i)
    bytes &+= entry.size
    return true
  }

  /// Removes the range that starts at `address`.
  @discardableResult
  public mutating func remove(startingAt address: UInt64) -> Entry? {
    let i = upperBound(address) - 1
    guard i >= 0, entries[i].address == address else { return nil }
    let e = entries.remove(at: i)
    bytes -= e.size
    return e
  }

  /// Removes every range of `owner`, returning them.
  public mutating func removeAll(owner: UInt32) -> [Entry] {
    var removed: [Entry] = []
    entries.removeAll { e in
      guard e.owner == owner else { return false }
      removed.append(e)
      return true
    }
    for e in removed { bytes -= e.size }
    return removed
  }

  /// The live range that holds all of `[address, address + length)`, or nil.
  ///
  /// Checked against the *requested* size, so an access past what the guest
  /// asked for is refused (as compute-sanitizer would report it) even inside
  /// the rounding. A `length` of 0 is accepted inside a range. O(log n), no
  /// allocation, no overflow for any input.
  public func entry(containing address: UInt64, length: UInt64) -> Entry? {
    let i = upperBound(address) - 1
    guard i >= 0 else { return nil }
    let e = entries[i]
    let within = address - e.address  // address >= e.address by the search
    guard within < e.requested, length <= e.requested - within else { return nil }
    return e
  }

  /// The sum of the sizes of `owner`'s ranges.
  public func bytes(owner: UInt32) -> UInt64 {
    var total: UInt64 = 0
    for e in entries where e.owner == owner { total += e.size }
    return total
  }

  /// Index of the first range whose address is greater than `address`.
  private func upperBound(_ address: UInt64) -> Int {
    var low = 0
    var high = entries.count
    while low < high {
      let mid = low + (high - low) / 2
      if entries[mid].address <= address { low = mid + 1 } else { high = mid }
    }
    return low
  }
}
