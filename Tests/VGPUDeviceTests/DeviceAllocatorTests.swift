import Testing

@testable import VGPUDevice

/// A small deterministic generator so failures reproduce (SplitMix64).
struct SplitMix64: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

@Suite struct DeviceAllocatorTests {
  static let mib: UInt64 = 1 << 20
  static let gib: UInt64 = 1 << 30

  @Test func roundsSizesUpTo256Bytes() throws {
    var allocator = DeviceAllocator(capacity: Self.mib)
    let a = try allocator.allocate(1, owner: 1)
    #expect(a == DeviceAllocator.Allocation(offset: 0, size: 256, requested: 1, owner: 1))
    let b = try allocator.allocate(257, owner: 1)
    #expect(b.offset == 256 && b.size == 512 && b.requested == 257)
    let c = try allocator.allocate(512, owner: 2)
    #expect(c.offset == 768 && c.size == 512)
    #expect(allocator.allocatedBytes == 1280)
    #expect(allocator.freeBytes == Self.mib - 1280)
    #expect(allocator.liveAllocations == 3)
    #expect(allocator.allocatedBytes(owner: 1) == 768)
    #expect(allocator.allocatedBytes(owner: 2) == 512)
    #expect(allocator.allocatedBytes(owner: 3) == 0)
  }

  @Test func honoursLargeAlignmentsAndKeepsTheLeadingRemainderFree() throws {
    var allocator = DeviceAllocator(capacity: 64 * Self.mib)
    let small = try allocator.allocate(1000, owner: 1)
    #expect(small.offset == 0)
    let oneMiB = try allocator.allocate(4096, alignment: Self.mib, owner: 1)
    #expect(oneMiB.offset % Self.mib == 0)
    #expect(oneMiB.offset == Self.mib)
    let twoMiB = try allocator.allocate(3 * Self.mib, alignment: 2 * Self.mib, owner: 1)
    #expect(twoMiB.offset % (2 * Self.mib) == 0)
    #expect(twoMiB.offset == 2 * Self.mib)
    // The leading remainders [1024, 1 MiB) and [1 MiB + 4096, 2 MiB) stayed free.
    #expect(allocator.freeRanges.prefix(2).map(\.offset) == [1024, Self.mib + 4096])
    // Best fit: a small request goes to the smaller of the two gaps...
    let filler = try allocator.allocate(256, owner: 1)
    #expect(filler.offset == Self.mib + 4096)
    // ...and a request that fits only the first gap exactly fills it.
    let exact = try allocator.allocate(Self.mib - 1024, owner: 1)
    #expect(exact.offset == 1024)
    #expect(allocator.freeBytes + allocator.allocatedBytes == allocator.capacity)
  }

  @Test func rejectsBadAlignmentsAndSizes() {
    var allocator = DeviceAllocator(capacity: Self.mib)
    for alignment: UInt64 in [0, 1, 128, 255, 384, 1000, 3 << 20] {
      #expect(throws: AllocationError.invalidAlignment(alignment)) {
        try allocator.allocate(16, alignment: alignment, owner: 1)
      }
    }
    #expect(throws: AllocationError.invalidSize(0)) { try allocator.allocate(0, owner: 1) }
    #expect(allocator.liveAllocations == 0)
    // Sizes whose rounding overflows are simply too large.
    #expect(throws: AllocationError.outOfMemory(requested: .max, free: Self.mib, largestFreeBlock: Self.mib)) {
      try allocator.allocate(.max, owner: 1)
    }
    // Alignment so large that aligning any offset but 0 overflows.
    #expect(throws: Never.self) { try allocator.allocate(256, alignment: 1 << 63, owner: 1) }
  }

  @Test func outOfMemoryReportsTheFacts() throws {
    var allocator = DeviceAllocator(capacity: 4096)
    _ = try allocator.allocate(3000, owner: 1)  // 3072 bytes
    #expect(throws: AllocationError.outOfMemory(requested: 2000, free: 1024, largestFreeBlock: 1024)) {
      try allocator.allocate(2000, owner: 1)
    }
    let error = AllocationError.outOfMemory(requested: 2000, free: 1024, largestFreeBlock: 1024)
    #expect(error.description.contains("2000") && error.description.contains("1024"))
  }

  @Test func fragmentationAndCoalescing() throws {
    let block = 64 * 1024 as UInt64
    let count = 64
    var allocator = DeviceAllocator(capacity: block * UInt64(count))
    var blocks: [DeviceAllocator.Allocation] = []
    for _ in 0..<count { blocks.append(try allocator.allocate(block, owner: 7)) }
    #expect(allocator.freeBytes == 0)
    #expect(allocator.largestFreeBlock == 0)
    for i in stride(from: 0, to: count, by: 2) { try allocator.free(offset: blocks[i].offset, owner: 7) }
    #expect(allocator.freeBytes == block * UInt64(count / 2))
    #expect(allocator.largestFreeBlock == block)
    #expect(
      throws: AllocationError.outOfMemory(
        requested: 2 * block, free: block * UInt64(count / 2), largestFreeBlock: block)
    ) {
      try allocator.allocate(2 * block, owner: 7)
    }
    // Free the rest in a scrambled order; all ranges must coalesce back into one.
    for i in stride(from: 1, to: count, by: 2).reversed() where i % 4 == 1 {
      try allocator.free(offset: blocks[i].offset, owner: nil)
    }
    for i in stride(from: 3, to: count, by: 4) { try allocator.free(offset: blocks[i].offset, owner: 7) }
    #expect(allocator.liveAllocations == 0)
    #expect(allocator.freeRanges.count == 1)
    #expect(allocator.largestFreeBlock == allocator.capacity)
    let whole = try allocator.allocate(allocator.capacity, owner: 7)
    #expect(whole.offset == 0)
  }

  @Test func wrongOwnerAndDoubleFree() throws {
    var allocator = DeviceAllocator(capacity: Self.mib)
    let a = try allocator.allocate(4096, owner: 1)
    let b = try allocator.allocate(4096, owner: 2)
    #expect(throws: AllocationError.wrongOwner(b.offset, owner: 2)) { try allocator.free(offset: b.offset, owner: 1) }
    #expect(allocator.liveAllocations == 2)
    #expect(throws: AllocationError.notAllocated(a.offset + 256)) {
      try allocator.free(offset: a.offset + 256, owner: 1)
    }
    #expect(try allocator.free(offset: a.offset, owner: 1) == a)
    #expect(throws: AllocationError.notAllocated(a.offset)) { try allocator.free(offset: a.offset, owner: 1) }
    #expect(throws: AllocationError.notAllocated(Self.mib * 10)) {
      try allocator.free(offset: Self.mib * 10, owner: nil)
    }
    #expect(try allocator.free(offset: b.offset, owner: nil) == b)
    #expect(allocator.allocatedBytes == 0)
  }

  @Test func containingLookupsAtBoundaries() throws {
    var allocator = DeviceAllocator(capacity: Self.mib)
    let a = try allocator.allocate(1000, owner: 1)  // [0, 1000) requested, 1024 occupied
    let b = try allocator.allocate(4096, owner: 2)  // [1024, 5120)
    #expect(allocator.allocation(containing: 0, length: 1000) == a)
    #expect(allocator.allocation(containing: 0, length: 0) == a)
    #expect(allocator.allocation(containing: 999, length: 1) == a)
    #expect(allocator.allocation(containing: 999, length: 0) == a)
    #expect(allocator.allocation(containing: 0, length: 1001) == nil)  // past the requested size
    #expect(allocator.allocation(containing: 1000, length: 0) == nil)  // in the rounding padding
    #expect(allocator.allocation(containing: 1000, length: 24) == nil)
    #expect(allocator.allocation(containing: 1023, length: 2) == nil)  // straddles a and b
    #expect(allocator.allocation(containing: 1024, length: 4096) == b)
    #expect(allocator.allocation(containing: 5119, length: 1) == b)
    #expect(allocator.allocation(containing: 5119, length: 2) == nil)
    #expect(allocator.allocation(containing: 5120, length: 0) == nil)
    #expect(allocator.allocation(containing: 900, length: 200) == nil)  // spans two allocations
    // Overflow: offset + length wraps around.
    #expect(allocator.allocation(containing: 1024, length: .max) == nil)
    #expect(allocator.allocation(containing: 2000, length: .max - 1000) == nil)
    #expect(allocator.allocation(containing: .max, length: 1) == nil)
    #expect(allocator.allocation(containing: .max, length: .max) == nil)
    #expect(allocator.allocation(containing: .max - 10, length: 20) == nil)
    try allocator.free(offset: a.offset, owner: 1)
    #expect(allocator.allocation(containing: 0, length: 1) == nil)
    #expect(allocator.allocation(containing: 1024, length: 1) == b)
  }

  @Test func lookupsNearTheTopOfA64BitSpace() throws {
    var allocator = DeviceAllocator(capacity: .max)
    let low = try allocator.allocate(UInt64.max - (1 << 20), owner: 1)
    let high = try allocator.allocate(4096, owner: 2)
    #expect(high.offset > low.offset)
    #expect(allocator.allocation(containing: high.offset + 4095, length: 1) == high)
    #expect(allocator.allocation(containing: high.offset + 4095, length: 2) == nil)
    #expect(allocator.allocation(containing: high.offset, length: .max) == nil)
    #expect(allocator.freeBytes == .max - low.size - high.size)
    #expect(allocator.freeBytes + allocator.allocatedBytes == .max)
  }

  @Test func freeAllReleasesOneOwner() throws {
    var allocator = DeviceAllocator(capacity: Self.mib)
    var owned: [UInt32: UInt64] = [:]
    for i in 0..<30 {
      let owner = UInt32(i % 3)
      let a = try allocator.allocate(UInt64(100 + i * 300), owner: owner)
      owned[owner, default: 0] += a.size
    }
    let result = allocator.freeAll(owner: 1)
    #expect(result.count == 10)
    #expect(result.bytes == owned[1])
    #expect(allocator.allocatedBytes(owner: 1) == 0)
    #expect(allocator.allocatedBytes == owned[0]! + owned[2]!)
    #expect(allocator.freeAll(owner: 1) == (0, 0) as (Int, UInt64))
    _ = allocator.freeAll(owner: 0)
    _ = allocator.freeAll(owner: 2)
    #expect(allocator.freeRanges == [DeviceAllocator.FreeRange(offset: 0, size: Self.mib)])
  }

  @Test func an80GiBCapacityWorks() throws {
    var allocator = DeviceAllocator(capacity: 80 * Self.gib)
    #expect(allocator.freeBytes == 80 * Self.gib)
    let big = try allocator.allocate(79 * Self.gib, alignment: 2 * Self.mib, owner: 1)
    let rest = try allocator.allocate(Self.gib, owner: 2)
    #expect(big.offset == 0 && rest.offset == 79 * Self.gib)
    #expect(allocator.freeBytes == 0)
    #expect(allocator.allocation(containing: 79 * Self.gib - 1, length: 1) == big)
    #expect(allocator.allocation(containing: 80 * Self.gib - 1, length: 1) == rest)
    #expect(throws: AllocationError.self) { try allocator.allocate(1, owner: 3) }
  }

  /// Thousands of random operations against a simple model, checking every invariant each step.
  @Test(arguments: [1 as UInt64, 2, 3])
  func randomizedAgainstAModel(seed: UInt64) throws {
    var rng = SplitMix64(state: seed)
    let capacity: UInt64 = 8 * Self.mib + 12_288  // not a power of two on purpose
    var allocator = DeviceAllocator(capacity: capacity)
    var model: [UInt64: DeviceAllocator.Allocation] = [:]  // offset → allocation

    for step in 0..<4000 {
      let roll = rng.next(upperBound: 100 as UInt64)
      let owner = UInt32(rng.next(upperBound: 4 as UInt64))
      if roll < 55 || model.isEmpty {
        let size: UInt64 =
          rng.next(upperBound: 2 as UInt64) == 0 ? 1 + rng.next(upperBound: 4096) : 1 + rng.next(upperBound: 600_000)
        let alignment: UInt64 = 256 << rng.next(upperBound: 12 as UInt64)
        do throws(AllocationError) {
          let a = try allocator.allocate(size, alignment: alignment, owner: owner)
          #expect(a.offset % alignment == 0)
          #expect(a.size % 256 == 0 && a.size >= size && a.size - size < 256)
          #expect(a.requested == size && a.owner == owner)
          #expect(a.offset + a.size <= capacity)
          model[a.offset] = a
        } catch {
          guard case .outOfMemory(let requested, let free, _) = error else {
            Issue.record("unexpected \(error)")
            return
          }
          #expect(requested == size)
          #expect(free == allocator.freeBytes)
          // A failure must be genuine: no free range can hold the aligned request.
          let rounded = (size + 255) / 256 * 256
          for range in allocator.freeRanges {
            let start = (range.offset + alignment - 1) / alignment * alignment
            #expect(start + rounded > range.offset + range.size, "step \(step): a fit was missed")
          }
        }
      } else if roll < 95 {
        let offsets = Array(model.keys)
        let offset = offsets[Int(rng.next(upperBound: UInt64(offsets.count)))]
        let expected = model[offset]!
        if rng.next(upperBound: 5 as UInt64) == 0 && owner != expected.owner {
          #expect(throws: AllocationError.wrongOwner(offset, owner: expected.owner)) {
            try allocator.free(offset: offset, owner: owner)
          }
        } else {
          #expect(try allocator.free(offset: offset, owner: expected.owner) == expected)
          model[offset] = nil
          #expect(throws: AllocationError.notAllocated(offset)) { try allocator.free(offset: offset, owner: nil) }
        }
      } else {
        let freed = allocator.freeAll(owner: owner)
        let mine = model.values.filter { $0.owner == owner }
        #expect(freed.count == mine.count)
        #expect(freed.bytes == mine.reduce(0) { $0 + $1.size })
        for a in mine { model[a.offset] = nil }
      }
      try checkInvariants(allocator, model, capacity: capacity, step: step, rng: &rng)
    }
  }

  private func checkInvariants(
    _ allocator: DeviceAllocator, _ model: [UInt64: DeviceAllocator.Allocation], capacity: UInt64, step: Int,
    rng: inout SplitMix64
  ) throws {
    let live = allocator.allocations
    #expect(live == model.values.sorted { $0.offset < $1.offset }, "step \(step)")
    #expect(allocator.liveAllocations == model.count)
    // Sorted, no overlaps among allocations; free ranges sorted, coalesced and disjoint.
    for (x, y) in zip(live, live.dropFirst()) { #expect(x.offset + x.size <= y.offset, "overlap at step \(step)") }
    let free = allocator.freeRanges
    for (x, y) in zip(free, free.dropFirst()) { #expect(x.offset + x.size < y.offset, "uncoalesced at step \(step)") }
    // Together, allocations and free ranges tile [0, capacity) exactly.
    var pieces = live.map { ($0.offset, $0.size) } + free.map { ($0.offset, $0.size) }
    pieces.sort { $0.0 < $1.0 }
    var cursor: UInt64 = 0
    for (offset, size) in pieces {
      #expect(offset == cursor, "gap or overlap at \(offset), step \(step)")
      cursor = offset + size
    }
    #expect(cursor == capacity)
    let allocated = model.values.reduce(0) { $0 + $1.size }
    #expect(allocator.allocatedBytes == allocated)
    #expect(allocator.allocatedBytes + allocator.freeBytes == capacity)
    #expect(allocator.freeBytes == free.reduce(0) { $0 + $1.size })
    #expect(allocator.freeBytes <= capacity)
    var perOwner: UInt64 = 0
    for owner: UInt32 in 0..<4 {
      let expected = model.values.filter { $0.owner == owner }.reduce(0) { $0 + $1.size }
      #expect(allocator.allocatedBytes(owner: owner) == expected)
      perOwner += expected
    }
    #expect(perOwner == allocated)
    // A few random containing-lookups agree with the model.
    for _ in 0..<4 {
      let offset = rng.next(upperBound: capacity + 1024)
      let length = rng.next(upperBound: 8192 as UInt64)
      let expected = model.values.first {
        offset >= $0.offset && offset < $0.offset + $0.requested && offset + length <= $0.offset + $0.requested
      }
      #expect(allocator.allocation(containing: offset, length: length) == expected)
    }
  }
}
