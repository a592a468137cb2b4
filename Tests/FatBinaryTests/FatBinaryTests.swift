import FatBinary
import Foundation
import TestSupport
import Testing
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// PTX compared as tokens: nvcc's fatbin copy has its comments blanked and
/// its indentation dropped (REAL-KERNELS.md §1), the instructions are the same.
func ptxTokens(_ text: String) -> [Substring] {
  text.split(separator: "\n").flatMap { line in
    (line.firstRange(of: "//").map { line[..<$0.lowerBound] } ?? line[...]).split(whereSeparator: \.isWhitespace)
  }
}

func kernel(_ name: String) -> URL { CUDAToolchain.kernels.appendingPathComponent(name) }

/// A fat binary built by hand: each entry (kind, arch, payload) uncompressed,
/// with the 64-byte header nvcc writes.
func handmadeFatbin(_ entries: [(kind: UInt16, arch: UInt32, payload: [UInt8])]) -> [UInt8] {
  var files: [UInt8] = []
  func put<T: FixedWidthInteger>(_ v: T, into a: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { a += $0 } }
  for e in entries {
    var payload = e.payload
    while payload.count % 8 != 0 { payload.append(0) }
    var h: [UInt8] = []
    put(e.kind, into: &h)
    put(UInt16(0x0101), into: &h)
    put(UInt32(64), into: &h)
    put(UInt64(payload.count), into: &h)
    put(UInt32(0), into: &h)  // compressed size
    put(UInt32(0), into: &h)
    put(UInt16(5), into: &h)  // minor
    put(UInt16(9), into: &h)  // major
    put(e.arch, into: &h)
    put(UInt64(0), into: &h)  // name offset, length
    put(UInt64(0x11), into: &h)  // flags: 64-bit, Linux
    put(UInt64(0), into: &h)
    put(UInt64(0), into: &h)  // uncompressed size
    files += h + payload
  }
  var image: [UInt8] = []
  put(ModuleImageLayout.fatbinMagic, into: &image)
  put(UInt16(1), into: &image)
  put(UInt16(16), into: &image)
  put(UInt64(files.count), into: &image)
  return image + files
}

func ptxText(_ marker: String) -> [UInt8] { Array(".version 9.5\n.target sm_75\n// \(marker)\n".utf8) }

@Suite struct FatBinaryTests {
  /// What nvcc 13.5 stores for each compression mode, measured (CUDAToolchain's notes).
  static let modes:
    [(CUDAToolchain.FatbinCompression, ptx: FatBinary.Entry.Compression, elf: FatBinary.Entry.Compression)] = [
      (.nvccDefault, .zstd, .none), (.none, .none, .none), (.all, .zstd, .zstd), (.size, .zstd, .zstd),
      (.speed, .lz4, .none),
    ]

  @Test(arguments: ["vector_add.cu", "softmax.cu", "double_math.cu", "device_globals.cu"])
  func extractedPTXIsNvccsPTX(file: String) throws {
    let reference = String(decoding: try CUDAToolchain.nvccBytes(source: kernel(file), output: .ptx), as: UTF8.self)
    for (mode, ptxCompression, elfCompression) in Self.modes {
      let image = try CUDAToolchain.nvccBytes(source: kernel(file), output: .fatbin(mode))
      let fatbin = try FatBinary(parsing: image)
      #expect(fatbin.entries.map(\.kind) == [.elf, .ptx], "\(mode)")
      #expect(fatbin.entries.map(\.arch) == [75, 75], "\(mode)")
      #expect(fatbin.entries.map(\.compression) == [elfCompression, ptxCompression], "\(mode)")
      let ptx = try ModuleImageLoader.ptx(from: image, computeCapability: 90)
      #expect(ptx.origin == .fatbinEntry(index: 1, arch: 75, major: 9, minor: 5), "\(mode)")
      #expect(!ptx.text.hasSuffix("\0"))
      #expect(ptxTokens(ptx.text) == ptxTokens(reference), "\(file), \(mode): the fatbin's PTX differs from nvcc -ptx")
      // The cubin entry, decompressed, is an ELF of its stated size.
      let elf = try fatbin.payload(of: fatbin.entries[0])
      #expect(Array(elf.prefix(4)) == [0x7F, 0x45, 0x4C, 0x46])
      let sized = try elf.withUnsafeBytes { try ModuleImageSizer.extent(of: $0) }
      #expect(sized.kind == .elf && sized.bytes.count <= elf.count)
    }
  }

  @Test func sizerOnNvccImages() throws {
    let fatbin = try CUDAToolchain.nvccBytes(source: kernel("saxpy.cu"), output: .fatbin(.nvccDefault))
    let cubin = try CUDAToolchain.nvccBytes(source: kernel("saxpy.cu"), output: .cubin)
    let nvrtcCubin = try CUDAToolchain.nvrtc(
      source: try String(contentsOf: kernel("saxpy.cu"), encoding: .utf8), target: .cubin(sm: 90))
    let ptx = try CUDAToolchain.nvccBytes(source: kernel("saxpy.cu"), output: .ptx) + [0]
    for (image, kind) in [(fatbin, ModuleImageKind.fatbin), (cubin, .elf), (nvrtcCubin, .elf), (ptx, .ptx)] {
      // Buffer variant, with trailing bytes that are not part of the image.
      let padded = image + randomBytes(100, seed: 7)
      let e = try padded.withUnsafeBytes { try ModuleImageSizer.extent(of: $0) }
      #expect(e.kind == kind && e.bytes.count == image.count && e.wrapperVersion == nil, "\(kind)")
      // Pointer variant, with the image ending at a page no one may read.
      try atEndOfPage(image) { p in
        #expect(ModuleImageSizer.kind(at: p) == kind)
        let e = try ModuleImageSizer.extent(at: p)
        #expect(e.kind == kind && e.bytes.count == image.count && e.bytes.baseAddress == p, "\(kind)")
      }
    }
    #expect(cubin.withUnsafeBytes { ModuleImageLoader.cubinArch($0) } == 75)
  }

  @Test(arguments: [UInt32(1), 2])
  func sizerFollowsAWrapper(version: UInt32) throws {
    let fatbin = try CUDAToolchain.nvccBytes(source: kernel("vector_add.cu"), output: .fatbin(.all))
    try atEndOfPage(fatbin) { data in
      var wrapper: [UInt64] = [
        UInt64(ModuleImageLayout.wrapperMagic) | UInt64(version) << 32, UInt64(UInt(bitPattern: data)), 0,
      ]
      try wrapper.withUnsafeMutableBytes { w in
        #expect(ModuleImageSizer.kind(at: w.baseAddress!) == .fatbinWrapper)
        #expect(ModuleImageSizer.kind(of: UnsafeRawBufferPointer(w)) == .fatbinWrapper)
        let e = try ModuleImageSizer.extent(at: w.baseAddress!)
        #expect(e.kind == .fatbin && e.wrapperVersion == version && e.bytes.baseAddress == data)
        #expect(e.bytes.count == fatbin.count)
        #expect(throws: ModuleImageSizeError.wrapperInBuffer) {
          try ModuleImageSizer.extent(of: UnsafeRawBufferPointer(w))
        }
      }
      var null: [UInt64] = [UInt64(ModuleImageLayout.wrapperMagic) | UInt64(version) << 32, 0, 0]
      #expect(throws: ModuleImageSizeError.nullWrapperData(version: version)) {
        try null.withUnsafeMutableBytes { try ModuleImageSizer.extent(at: $0.baseAddress!) }
      }
    }
    var bad: [UInt64] = [UInt64(ModuleImageLayout.wrapperMagic) | 3 << 32, 8, 0]
    #expect(throws: ModuleImageSizeError.self) {
      try bad.withUnsafeMutableBytes { try ModuleImageSizer.extent(at: $0.baseAddress!) }
    }
  }

  /// What an nvcc 13.5 executable holds [measured]: two fatbins back to back in
  /// .nv_fatbin, found here by magic. The first (behind the version-2 wrapper)
  /// is an sm_75 cubin only, so a PTX-only device answers it NO_BINARY_FOR_GPU;
  /// the second (version 1) holds the program's kernels as zstd PTX and a cubin.
  @Test func fatbinsInsideAnExecutable() throws {
    let exe = [UInt8](
      try Data(contentsOf: try CUDAToolchain.nvcc(source: kernel("vector_add_program.cu"), output: .executable)))
    var sized = 0
    var noPTX: [FatBinaryError] = []
    var entries: Set<String> = []
    exe.withUnsafeBytes { raw in
      for i in stride(from: 0, to: raw.count - 16, by: 8)
      where raw.loadUnaligned(fromByteOffset: i, as: UInt32.self) == ModuleImageLayout.fatbinMagic {
        let slice = UnsafeRawBufferPointer(rebasing: raw[i...])
        guard let e = try? ModuleImageSizer.extent(of: slice) else { continue }
        sized += 1
        do throws(FatBinaryError) {
          let ptx = try ModuleImageLoader.ptx(from: UnsafeRawBufferPointer(rebasing: slice[0..<e.bytes.count]))
          for m in ptx.text.matches(of: /\.entry\s+(\w+)/) { entries.insert(String(m.output.1)) }
        } catch {
          noPTX.append(error)
        }
      }
    }
    #expect(sized == 2)
    #expect(noPTX == [.noPTX(present: ["ELF sm_75"])])
    #expect(entries == ["vector_add", "scale_by_global", "count_threads"])
  }

  @Test func cubinHasNoPTX() throws {
    let cubin = try CUDAToolchain.nvccBytes(source: kernel("vector_add.cu"), output: .cubin, arch: 90)
    #expect(throws: FatBinaryError.noPTX(present: ["ELF sm_90"])) { try ModuleImageLoader.ptx(from: cubin) }
    let nvrtc = try CUDAToolchain.nvrtc(
      source: try String(contentsOf: kernel("vector_add.cu"), encoding: .utf8), target: .cubin(sm: 75))
    #expect(throws: FatBinaryError.noPTX(present: ["ELF sm_75"])) { try ModuleImageLoader.ptx(from: nvrtc) }
    let elfOnly = handmadeFatbin([(2, 75, Array(cubin.prefix(64))), (2, 90, Array(cubin.prefix(64)))])
    do {
      _ = try ModuleImageLoader.ptx(from: elfOnly)
      Issue.record("an ELF-only fatbin gave PTX")
    } catch {
      #expect(error == .noPTX(present: ["ELF sm_75", "ELF sm_90"]))
      #expect(error.description.hasPrefix("no PTX: binary for ELF sm_75, ELF sm_90 only"))
    }
  }

  @Test func plainPTXText() throws {
    let nvrtc = try CUDAToolchain.nvrtcPTX(
      source: try String(contentsOf: kernel("saxpy.cu"), encoding: .utf8), compute: 75)
    let image = Array(nvrtc.utf8) + [0]
    let ptx = try ModuleImageLoader.ptx(from: image)
    #expect(ptx.origin == .text && ptx.text == nvrtc)
    for text in ["/* c */ .version 8.8", "\n\n.version 9.5\n", "// x\n\t// y\n.version 7.0"] {
      #expect(Array(text.utf8).withUnsafeBytes { ModuleImageSizer.kind(of: $0) } == .ptx, "\(text)")
    }
    for text in ["", ".versio", "/* .version", "x.version", "/ .version", ".target sm_75"] {
      let bytes = Array(text.utf8) + [0]
      #expect(bytes.withUnsafeBytes { ModuleImageSizer.kind(of: $0) } == .unknown, "\(text)")
      try atEndOfPage(bytes) { #expect(ModuleImageSizer.kind(at: $0) == .unknown, "\(text)") }
    }
    #expect(throws: ModuleImageSizeError.self) {
      try Array(".version 9.5".utf8).withUnsafeBytes { try ModuleImageSizer.extent(of: $0) }
    }
  }

  @Test func choosesThePTXForComputeCapability90() throws {
    let three = handmadeFatbin([
      (1, 52, ptxText("52")), (2, 90, [0x7F]), (1, 75, ptxText("75")), (1, 100, ptxText("100")),
    ])
    #expect(try ModuleImageLoader.ptx(from: three).text.contains("// 75"))
    #expect(try ModuleImageLoader.ptx(from: three, computeCapability: 120).text.contains("// 100"))
    let newer = handmadeFatbin([(1, 120, ptxText("120")), (1, 100, ptxText("100"))])
    #expect(try ModuleImageLoader.ptx(from: newer).text.contains("// 120"))
  }

  @Test func typedErrorsOnBadFields() throws {
    let good = try CUDAToolchain.nvccBytes(source: kernel("vector_add.cu"), output: .fatbin(.nvccDefault))
    let ptxEntry = try FatBinary(parsing: good).entries[1]
    func patched(_ offset: Int, _ value: UInt64, _ width: Int) -> [UInt8] {
      var b = good
      for i in 0..<width { b[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
      return b
    }
    #expect(throws: FatBinaryError.badMagic(found: 0xBA55_ED51, expected: 0xBA55_ED50, what: "fat binary")) {
      try FatBinary(parsing: patched(0, 0xBA55_ED51, 4))
    }
    #expect(throws: FatBinaryError.unknownCompression(index: 1, flags: 0xA011)) {
      try FatBinary(parsing: patched(ptxEntry.offset + 40, 0xA011, 8))
    }
    #expect(throws: FatBinaryError.self) { try FatBinary(parsing: patched(ptxEntry.offset + 8, 1 << 40, 8)) }
    let huge = try FatBinary(parsing: patched(ptxEntry.offset + 56, 1 << 40, 8))
    #expect(throws: FatBinaryError.tooLarge(index: 1, size: 1 << 40, limit: FatBinary.Limits.maxDecompressedSize)) {
      try huge.payload(of: huge.entries[1])
    }
    var corrupt = good
    for i in 0..<4 { corrupt[ptxEntry.payloadOffset + i] ^= 0x5A }  // the zstd frame magic
    let bad = try FatBinary(parsing: corrupt)
    do {
      _ = try bad.ptxText(of: bad.entries[1])
      Issue.record("a corrupt zstd payload decompressed")
    } catch {
      guard case .decompressionFailed(1, .zstd, _) = error else { throw error }
    }
    do {
      _ = try FatBinary(parsing: Array(good.prefix(100)))
      Issue.record("a truncated fatbin parsed")
    } catch {
      #expect(error.description.hasPrefix("fat binary: truncated at offset 0"))
    }
  }

  /// Every prefix of real images, and thousands of mutated ones: a typed error
  /// or a result, never a crash or a read out of bounds.
  @Test func truncatedAndMutatedImages() throws {
    var images: [[UInt8]] = []
    for mode in [CUDAToolchain.FatbinCompression.nvccDefault, .speed, .all] {
      images.append(try CUDAToolchain.nvccBytes(source: kernel("reduce_sum.cu"), output: .fatbin(mode)))
    }
    images.append(try CUDAToolchain.nvccBytes(source: kernel("reduce_sum.cu"), output: .cubin))
    for image in images {
      for n in 0..<image.count {
        let prefix = Array(image.prefix(n))
        #expect(throws: (any Error).self) { try prefix.withUnsafeBytes { try ModuleImageSizer.extent(of: $0) } }
        _ = try? ModuleImageLoader.ptx(from: prefix)
        if n < image.count - 8 {
          // A fatbin prefix never parses; an ELF prefix never sizes.
          #expect(throws: (any Error).self) { try ModuleImageLoader.ptx(from: prefix.isEmpty ? [1] : prefix + [0]) }
        }
      }
    }
    var state: UInt64 = 0x1234_5678
    func next() -> UInt64 {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    var outcomes = (ok: 0, failed: 0)
    for round in 0..<4000 {
      var image = images[round % images.count]
      // Mostly the headers: the first 300 bytes hold the fatbin header and the entry headers of small images.
      for _ in 0..<(1 + Int(next() % 4)) {
        let at = next() % 2 == 0 ? Int(next() % UInt64(min(300, image.count))) : Int(next() % UInt64(image.count))
        image[at] = UInt8(truncatingIfNeeded: next())
      }
      if next() % 4 == 0 { image.removeLast(Int(next() % UInt64(image.count))) }
      do {
        _ = try ModuleImageLoader.ptx(from: image)
        outcomes.ok += 1
      } catch {
        #expect(!error.description.isEmpty)
        outcomes.failed += 1
      }
      _ = try? image.withUnsafeBytes { try ModuleImageSizer.extent(of: $0) }
    }
    #expect(outcomes.ok + outcomes.failed == 4000)
    for seed in 0..<200 {
      var garbage = randomBytes(64 + seed * 7, seed: UInt64(seed))
      withUnsafeBytes(of: ModuleImageLayout.fatbinMagic) { garbage.replaceSubrange(0..<4, with: $0) }
      _ = try? ModuleImageLoader.ptx(from: garbage)
      _ = try? garbage.withUnsafeBytes { try ModuleImageSizer.extent(of: $0) }
    }
  }
}

/// Runs `body` with `bytes` copied to the end of a page whose next page is
/// PROT_NONE: a read past the image's last byte faults.
func atEndOfPage(_ bytes: [UInt8], _ body: (UnsafeRawPointer) throws -> Void) throws {
  let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  let pages = (bytes.count + page - 1) / page + 1
  guard let map = mmap(nil, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), map != MAP_FAILED
  else { throw CUDAToolchainError("mmap failed") }
  defer { munmap(map, pages * page) }
  let guardPage = map + (pages - 1) * page
  mprotect(guardPage, page, PROT_NONE)
  let start = guardPage - bytes.count
  bytes.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
  try body(UnsafeRawPointer(start))
}

/// An ELF64 header and section table built by hand, for the sizer's rules
/// (gABI): the table need not be last, NOBITS sections take no file bytes,
/// and e_shnum = 0 means section 0's sh_size holds the count.
func handmadeELF(
  shoff: UInt64, sections: [(type: UInt32, offset: UInt64, size: UInt64)], phoff: UInt64 = 0, phnum: UInt16 = 0,
  extendedCount: Bool = false, length: Int
) -> [UInt8] {
  var image = [UInt8](repeating: 0, count: length)
  func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
    withUnsafeBytes(of: v.littleEndian) { image.replaceSubrange(offset..<offset + $0.count, with: $0) }
  }
  image.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
  image[4] = 2  // ELFCLASS64
  image[5] = 1  // ELFDATA2LSB
  image[6] = 1
  put(UInt16(190), at: 18)  // EM_CUDA
  put(phoff, at: 32)
  put(shoff, at: 40)
  put(UInt16(56), at: 54)  // e_phentsize
  put(phnum, at: 56)
  put(UInt16(64), at: 58)  // e_shentsize
  put(UInt16(extendedCount ? 0 : sections.count), at: 60)
  for (i, s) in sections.enumerated() {
    let at = Int(shoff) + 64 * i
    put(s.type, at: at + 4)
    put(s.offset, at: at + 24)
    put(s.size, at: at + 32)
  }
  if extendedCount { put(UInt64(sections.count), at: Int(shoff) + 32) }
  return image
}

@Suite struct ModuleImageSizerTests {
  func size(_ image: [UInt8]) throws(ModuleImageSizeError) -> Int {
    var result: Result<Int, ModuleImageSizeError>!
    image.withUnsafeBytes { raw in
      result = Result { () throws(ModuleImageSizeError) in try ModuleImageSizer.extent(of: raw).bytes.count }
    }
    return try result.get()
  }

  @Test func elfSizeIsTheFurthestEnd() throws {
    // Section table at 64 (2 × 64 bytes, ends at 192); a PROGBITS section ends at 300;
    // a NOBITS one "ends" at 1 MiB but takes no file bytes.
    let elf = handmadeELF(
      shoff: 64, sections: [(0, 0, 0), (1, 200, 100), (8, 200, 1 << 20)], length: 400)
    #expect(try size(elf) == 300)
    // A program header table past the sections counts too.
    let withPhdrs = handmadeELF(shoff: 64, sections: [(0, 0, 0), (1, 256, 16)], phoff: 300, phnum: 2, length: 420)
    #expect(try size(withPhdrs) == 412)
    // e_shnum = 0: the count is section 0's sh_size.
    let extended = handmadeELF(shoff: 64, sections: [(0, 0, 0), (1, 256, 44)], extendedCount: true, length: 400)
    #expect(try size(extended) == 300)
    // The pointer variant agrees, with nothing readable past the image.
    try atEndOfPage(Array(elf.prefix(300))) { p throws in #expect(try ModuleImageSizer.extent(at: p).bytes.count == 300)
    }
  }

  @Test func elfFieldsThatPointOutside() throws {
    let past = handmadeELF(shoff: 64, sections: [(0, 0, 0), (1, 200, 1000)], length: 400)
    #expect(
      throws: ModuleImageSizeError.truncated(
        what: "ELF image (sections and program headers)", needed: 1200, available: 400)
    ) {
      try size(past)
    }
    let overflow = handmadeELF(shoff: 64, sections: [(0, 0, 0), (1, .max - 8, 100)], length: 400)
    #expect(throws: ModuleImageSizeError.tooLarge(kind: .elf, size: .max, limit: ModuleImageLayout.defaultLimit)) {
      try size(overflow)
    }
    let tableOutside = handmadeELF(shoff: 64, sections: [(0, 0, 0)], length: 200)
    var moved = tableOutside
    moved[40] = 0xF0  // e_shoff = 240: the table is past the end
    #expect(throws: ModuleImageSizeError.self) { try size(moved) }
    var bigEndian = tableOutside
    bigEndian[5] = 2
    #expect(
      throws: ModuleImageSizeError.malformed(
        kind: .elf, reason: "class 2 / data 2, expected ELFCLASS64 (2) little-endian (1)")
    ) {
      try size(bigEndian)
    }
  }

  @Test func fatbinHeaderFields() throws {
    let fatbin = handmadeFatbin([(1, 75, ptxText("x"))])
    #expect(try size(fatbin + [1, 2, 3]) == fatbin.count)
    #expect(
      throws: ModuleImageSizeError.truncated(
        what: "fat binary (header 16 + files \(fatbin.count - 16))", needed: fatbin.count, available: fatbin.count - 1)
    ) {
      try size(Array(fatbin.dropLast()))
    }
    var huge = fatbin
    huge.replaceSubrange(8..<16, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    #expect(throws: ModuleImageSizeError.tooLarge(kind: .fatbin, size: .max, limit: ModuleImageLayout.defaultLimit)) {
      try size(huge)
    }
    var shortHeader = fatbin
    shortHeader[6] = 8
    #expect(throws: ModuleImageSizeError.self) { try size(shortHeader) }
    #expect(throws: ModuleImageSizeError.unknownKind(firstBytes: [1, 2, 3])) { try size([1, 2, 3]) }
  }
}
