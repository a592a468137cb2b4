import Testing

@testable import VGPUDevice

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Resident set size of this process in bytes, from the second field of /proc/self/statm.
private func residentBytes() -> UInt64 {
  let fd = open("/proc/self/statm", O_RDONLY)
  guard fd >= 0 else { return 0 }
  defer { close(fd) }
  var buffer = [UInt8](repeating: 0, count: 256)
  let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
  guard count > 0 else { return 0 }
  let fields = buffer[0..<count].split(separator: UInt8(ascii: " "))
  guard fields.count >= 2, let pages = UInt64(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
  return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
}

/// How many pages of `[address, address + length)` are resident, from mincore(2). Unlike RSS,
/// this counts only our mapping, so tests running in parallel cannot disturb it.
private func residentPages(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int {
  let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  var vector = [UInt8](repeating: 0, count: (length + page - 1) / page)
  let rc = vector.withUnsafeMutableBufferPointer { mincore(address, length, $0.baseAddress) }
  precondition(rc == 0, "mincore failed: errno \(errno)")
  return vector.reduce(0) { $0 + Int($1 & 1) }
}

// Serialized: the tests measure the process's resident memory.
@Suite(.serialized) struct DeviceMemoryTests {
  static let gib: UInt64 = 1 << 30

  @Test func reserves80GiBAndTouchingPagesCostsOnlyThosePages() throws {
    let memory = try DeviceMemory(size: 80 * Self.gib)
    #expect(memory.size == 80 * Self.gib)
    #expect(UInt(bitPattern: memory.base) % UInt(memory.pageSize) == 0)
    let before = residentBytes()
    #expect(before > 0)
    let offsets: [UInt64] = [0, 20 * Self.gib + 12345, 50 * Self.gib, 80 * Self.gib - 4]
    for (i, offset) in offsets.enumerated() {
      memory.base.storeBytes(of: UInt32(0xA5A5_0000) | UInt32(i), toByteOffset: Int(offset), as: UInt32.self)
    }
    for (i, offset) in offsets.enumerated() {
      #expect(
        memory.base.loadUnaligned(fromByteOffset: Int(offset), as: UInt32.self) == UInt32(0xA5A5_0000) | UInt32(i))
    }
    let after = residentBytes()
    // RSS is process-wide and other suites run in parallel, so only the brief's bound here...
    #expect(Int64(after) - Int64(before) < Int64(Self.gib))
    // ...and the count from mincore: just the pages written (the write at 80 GiB - 4 straddles
    // none). With transparent huge pages set to "always" a touch may fault in a 2 MiB page.
    let span = 2 << 20
    let pages = offsets.reduce(0) { total, offset in
      let start = min(Int(offset) / span * span, Int(memory.size) - span)
      return total + residentPages(memory.base + start, span)
    }
    #expect(pages >= 4 && pages <= 4 * 512, "\(pages) pages resident")
  }

  @Test func discardZeroesWholePagesAndLeavesPartialPagesAlone() throws {
    let memory = try DeviceMemory(size: 1 << 20)
    let page = Int(memory.pageSize)
    let bytes = UnsafeMutableRawBufferPointer(start: memory.base, count: 1 << 20)
    for i in 0..<(4 * page) { bytes[i] = 0xEE }
    // [page/2, 3.5 pages): only pages 1 and 2 are wholly inside.
    memory.discard(offset: UInt64(page / 2), length: UInt64(3 * page))
    #expect(bytes[page / 2] == 0xEE)
    #expect(bytes[page - 1] == 0xEE)
    #expect(bytes[page] == 0)
    #expect(bytes[3 * page - 1] == 0)
    #expect(bytes[3 * page] == 0xEE)
    #expect((page..<(3 * page)).allSatisfy { bytes[$0] == 0 })
    // Touching again works and reads what is written.
    bytes[page] = 7
    #expect(bytes[page] == 7)
  }

  @Test func discardReleasesResidentMemory() throws {
    let size: UInt64 = 64 << 20
    let memory = try DeviceMemory(size: size)
    let pages = Int(size / memory.pageSize)
    #expect(residentPages(memory.base, Int(size)) == 0)
    memset(memory.base, 0x5A, Int(size))
    #expect(residentPages(memory.base, Int(size)) == pages)
    memory.discard(offset: 0, length: size)
    #expect(residentPages(memory.base, Int(size)) == 0)
    #expect(memory.base.load(fromByteOffset: Int(size) - 8, as: UInt64.self) == 0)
  }

  @Test func discardIgnoresOutOfRangeAndOverflowingRanges() throws {
    let memory = try DeviceMemory(size: 1 << 16)
    memory.base.storeBytes(of: 0x1234, toByteOffset: 0, as: UInt64.self)
    memory.discard(offset: 1 << 20, length: 1 << 20)
    memory.discard(offset: 0, length: 0)
    memory.discard(offset: UInt64.max, length: UInt64.max)
    #expect(memory.base.load(fromByteOffset: 0, as: UInt64.self) == 0x1234)
    memory.discard(offset: 0, length: UInt64.max)  // clamped to the whole reservation
    #expect(memory.base.load(fromByteOffset: 0, as: UInt64.self) == 0)
  }

  @Test func impossibleSizesFailWithAnExplanation() {
    #expect(throws: DeviceMemoryError.self) { try DeviceMemory(size: 0) }
    do {
      // 2^62 bytes: larger than the 47-bit user address space, so mmap fails.
      _ = try DeviceMemory(size: 1 << 62)
      Issue.record("reserving 4 EiB should fail")
    } catch {
      #expect(error.errno == ENOMEM)
      #expect(error.description.contains("mmap"))
      #expect(error.description.contains("overcommit_memory"))
    }
  }
}
