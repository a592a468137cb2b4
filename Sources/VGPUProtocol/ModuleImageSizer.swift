/// Module images as `cuModuleLoadData`, `cuLibraryLoadData` and cudart's
/// registration hand them over: a bare pointer, no length. The guest must
/// decide what the pointer holds and how many bytes to send before it can
/// stream the image to the device; the device parses it again from the bytes
/// (the `FatBinary` target), trusting nothing.
///
/// The layouts are in /work/shared/REAL-KERNELS.md §3 (fatbinary_section.h in
/// the nvidia-cuda-nvcc wheel, ZLUDA `dark_api/src/fatbin.rs`, lupine
/// `cuda_client.cpp:4585-4650`), and the ELF header in the System V gABI
/// ("ELF-64 Object File Format", §"ELF Header" and §"Sections").

/// What a module image is, judged from its first bytes.
public enum ModuleImageKind: String, Equatable, Sendable, CustomStringConvertible {
  /// `__fatBinC_Wrapper_t {u32 magic 0x466243B1; u32 version; u64 data; u64 filename_or_fatbins}`:
  /// what nvcc puts in `.nvFatBinSegment` and cudart passes to the driver. It
  /// holds a pointer to the fatbin, so only the pointer variant can follow it.
  case fatbinWrapper
  /// A fat binary: `u32 magic 0xBA55ED50, u16 version, u16 headerSize, u64 filesSize`, then entries.
  case fatbin
  /// An ELF64 object (a cubin), magic `7F 45 4C 46`.
  case elf
  /// NUL-terminated PTX text.
  case ptx
  /// None of the above (the driver answers CUDA_ERROR_INVALID_IMAGE).
  case unknown

  public var description: String { rawValue }
}

/// Magic numbers and fixed sizes, with their sources.
public enum ModuleImageLayout {
  /// `FATBINC_MAGIC` (fatbinary_section.h).
  public static let wrapperMagic: UInt32 = 0x4662_43B1
  /// The wrapper: two u32, two u64.
  public static let wrapperSize = 24
  /// `FATBIN_MAGIC`, the fat binary header's first word (REAL-KERNELS.md §3).
  public static let fatbinMagic: UInt32 = 0xBA55_ED50
  /// The fat binary header: u32 magic, u16 version, u16 headerSize, u64 filesSize.
  public static let fatbinHeaderSize = 16
  /// `\x7FELF` (gABI, e_ident[EI_MAG0..3]).
  public static let elfMagic: UInt32 = 0x464C_457F
  /// `sizeof(Elf64_Ehdr)` and `sizeof(Elf64_Shdr)` (gABI).
  public static let elf64HeaderSize = 64
  public static let elf64SectionHeaderSize = 64
  /// `SHT_NOBITS`: the section takes no bytes in the file (.bss, `.nv.shared.*`).
  public static let sectionTypeNoBits: UInt32 = 8
  /// The largest image either side accepts by default. The biggest real fatbins
  /// (PyTorch, cuSPARSELt) run to hundreds of MiB per module; this bounds a
  /// garbage size field, not a real image.
  public static let defaultLimit = 1 << 30
}

/// Where an image is and how long it is: what the guest sends to the device.
public struct ModuleImageExtent {
  /// The kind of the bytes in `bytes`: `.fatbin` when a wrapper was followed.
  public var kind: ModuleImageKind
  /// The wrapper's version (1, or 2 for the RDC form) when the image was a
  /// `__fatBinC_Wrapper_t`; nil otherwise.
  public var wrapperVersion: UInt32?
  /// The image: from its first byte to its computed end.
  public var bytes: UnsafeRawBufferPointer

  public init(kind: ModuleImageKind, wrapperVersion: UInt32? = nil, bytes: UnsafeRawBufferPointer) {
    self.kind = kind
    self.wrapperVersion = wrapperVersion
    self.bytes = bytes
  }
}

/// Why an image could not be sized: what was read, where, and what to do.
public enum ModuleImageSizeError: Error, Equatable, Sendable, CustomStringConvertible {
  /// The first bytes match no known image kind.
  case unknownKind(firstBytes: [UInt8])
  /// The image (of `available` bytes) ends before `needed` bytes that `what` requires.
  case truncated(what: String, needed: Int, available: Int)
  /// A size field says the image is larger than the limit.
  case tooLarge(kind: ModuleImageKind, size: UInt64, limit: Int)
  /// A header field makes no sense.
  case malformed(kind: ModuleImageKind, reason: String)
  /// A wrapper's `data` pointer is NULL.
  case nullWrapperData(version: UInt32)
  /// A wrapper was found in a byte buffer: its pointer means nothing there.
  case wrapperInBuffer
  /// No NUL within the limit after PTX text.
  case unterminatedPTX(limit: Int)

  public var description: String {
    switch self {
    case .unknownKind(let bytes):
      let hex = bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
      return
        "module image: not a fatbin wrapper (B1 43 62 46), fat binary (50 ED 55 BA), ELF cubin (7F 45 4C 46) or PTX text (.version first); the first bytes are [\(hex)]"
    case .truncated(let what, let needed, let available):
      return "module image: truncated: the \(what) needs \(needed) bytes, the image has \(available)"
    case .tooLarge(let kind, let size, let limit):
      return "module image: the \(kind) header says \(size) bytes, over the \(limit)-byte limit: a corrupt size field"
    case .malformed(let kind, let reason):
      return "module image: malformed \(kind): \(reason)"
    case .nullWrapperData(let version):
      return "module image: the fatbin wrapper (version \(version)) has a NULL data pointer; nothing to load"
    case .wrapperInBuffer:
      return
        "module image: a __fatBinC_Wrapper_t holds a pointer, which means nothing inside a byte buffer; size it where the pointer is valid (ModuleImageSizer.extent(at:)) and send the fatbin it points to"
    case .unterminatedPTX(let limit):
      return "module image: PTX text has no terminating NUL within \(limit) bytes"
    }
  }
}

/// Sniffing and sizing of module images.
public enum ModuleImageSizer {
  // MARK: Through a bare pointer (guest side: all cuModuleLoadData gets)

  /// The kind of the image at `pointer`. It reads byte by byte and stops at the
  /// first byte that rules a kind out or at a NUL, so it never reads past a
  /// short NUL-terminated string.
  public static func kind(at pointer: UnsafeRawPointer) -> ModuleImageKind {
    func matches(_ magic: UInt32) -> Bool {
      for i in 0..<4
      where pointer.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: magic >> (8 * i)) {
        return false  // No magic contains a NUL byte, so this stops at a terminator too.
      }
      return true
    }
    if matches(ModuleImageLayout.wrapperMagic) { return .fatbinWrapper }
    if matches(ModuleImageLayout.fatbinMagic) { return .fatbin }
    if matches(ModuleImageLayout.elfMagic) { return .elf }
    return ptxStart(byteAt: { pointer.load(fromByteOffset: $0, as: UInt8.self) }, count: Int.max) ? .ptx : .unknown
  }

  /// The image at `pointer` and its size. A wrapper is followed to its fatbin
  /// (`data`), and the extent is that fatbin's. Each step reads only the bytes
  /// the previous one proved are part of the image: the magic byte by byte,
  /// then the fixed header, then the tables the header locates.
  ///
  /// Wrapper version 2 (`FATBINC_LINK_VERSION`, relocatable device code) also
  /// has `data` pointing to one fatbin, plus a NULL-terminated list of
  /// prelinked fatbins in `filename_or_fatbins`. The list is not followed:
  /// cudart links those itself (`__cudaRegisterLinkedBinary`) and passes the
  /// result; a v2 wrapper given to `cuModuleLoadData` loads `data`'s fatbin,
  /// and device code it calls in other fatbins is reported missing at load.
  /// [measured] An nvcc 13.5 executable (static cudart, no -rdc) has a v2
  /// wrapper whose `data` is a cubin-only fatbin (sm_XX, no PTX) and a v1
  /// wrapper whose fatbin holds the program's kernels (FatBinaryTests).
  public static func extent(
    at pointer: UnsafeRawPointer, limit: Int = ModuleImageLayout.defaultLimit
  ) throws(ModuleImageSizeError) -> ModuleImageExtent {
    switch kind(at: pointer) {
    case .fatbinWrapper:
      let version = pointer.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
      guard version == 1 || version == 2 else {
        throw .malformed(kind: .fatbinWrapper, reason: "version \(version), expected 1 or 2 (fatbinary_section.h)")
      }
      let data = pointer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
      guard data != 0, let fatbin = UnsafeRawPointer(bitPattern: UInt(data)) else {
        throw .nullWrapperData(version: version)
      }
      guard kind(at: fatbin) == .fatbin else {
        throw .malformed(
          kind: .fatbinWrapper,
          reason: "its data pointer (0x\(String(data, radix: 16))) does not point to a fat binary (magic 50 ED 55 BA)")
      }
      var inner = try fatbinExtent(header: fatbin, available: nil, limit: limit)
      inner.wrapperVersion = version
      return inner
    case .fatbin:
      return try fatbinExtent(header: pointer, available: nil, limit: limit)
    case .elf:
      let count = try elfSize(
        read: { offset, count in UnsafeRawBufferPointer(start: pointer + offset, count: count) },
        available: nil, limit: limit)
      return ModuleImageExtent(kind: .elf, bytes: UnsafeRawBufferPointer(start: pointer, count: count))
    case .ptx:
      var n = 0
      while pointer.load(fromByteOffset: n, as: UInt8.self) != 0 {
        n += 1
        guard n < limit else { throw .unterminatedPTX(limit: limit) }
      }
      return ModuleImageExtent(kind: .ptx, bytes: UnsafeRawBufferPointer(start: pointer, count: n + 1))
    case .unknown:
      var first: [UInt8] = []
      for i in 0..<8 {
        let b = pointer.load(fromByteOffset: i, as: UInt8.self)
        first.append(b)
        if b == 0 { break }
      }
      throw .unknownKind(firstBytes: first)
    }
  }

  // MARK: Over a byte buffer of known length (validating)

  /// The kind of the image in `bytes`, reading nothing past its end.
  public static func kind(of bytes: UnsafeRawBufferPointer) -> ModuleImageKind {
    func matches(_ magic: UInt32) -> Bool {
      bytes.count >= 4 && (0..<4).allSatisfy { bytes[$0] == UInt8(truncatingIfNeeded: magic >> (8 * $0)) }
    }
    if matches(ModuleImageLayout.wrapperMagic) { return .fatbinWrapper }
    if matches(ModuleImageLayout.fatbinMagic) { return .fatbin }
    if matches(ModuleImageLayout.elfMagic) { return .elf }
    return ptxStart(byteAt: { bytes[$0] }, count: bytes.count) ? .ptx : .unknown
  }

  /// The kind and size of the image at the start of `bytes`, checked against
  /// `bytes.count`: a size field that points past the end is `.truncated`, not
  /// trusted. The image may be followed by other bytes (a `.nv_fatbin` section
  /// holds fatbins back to back); the extent covers the first image only.
  /// PTX text must have its NUL inside the buffer.
  public static func extent(of bytes: UnsafeRawBufferPointer, limit: Int = ModuleImageLayout.defaultLimit)
    throws(ModuleImageSizeError) -> ModuleImageExtent
  {
    guard let base = bytes.baseAddress, bytes.count > 0 else { throw .unknownKind(firstBytes: []) }
    switch kind(of: bytes) {
    case .fatbinWrapper:
      throw .wrapperInBuffer
    case .fatbin:
      return try fatbinExtent(header: base, available: bytes.count, limit: limit)
    case .elf:
      let count = try elfSize(
        read: { offset, count in UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]) },
        available: bytes.count, limit: limit)
      return ModuleImageExtent(kind: .elf, bytes: UnsafeRawBufferPointer(rebasing: bytes[0..<count]))
    case .ptx:
      guard let nul = bytes.firstIndex(of: 0) else {
        throw bytes.count >= limit
          ? .unterminatedPTX(limit: limit)
          : .truncated(what: "PTX text's terminating NUL", needed: bytes.count + 1, available: bytes.count)
      }
      return ModuleImageExtent(kind: .ptx, bytes: UnsafeRawBufferPointer(rebasing: bytes[0...nul]))
    case .unknown:
      throw .unknownKind(firstBytes: Array(bytes.prefix(8)))
    }
  }

  // MARK: Steps shared by both variants

  /// Whether text starts like PTX: whitespace and `//` or `/* */` comments,
  /// then `.version` (the PTX ISA requires `.version` as the first directive;
  /// nvcc's fatbin copies start with blank lines where the comments were).
  /// `byteAt` is called only for indices before the first NUL and below `count`.
  static func ptxStart(byteAt: (Int) -> UInt8, count: Int) -> Bool {
    var i = 0
    func at(_ j: Int) -> UInt8 { j < count ? byteAt(j) : 0 }
    while i < count {
      let c = at(i)
      switch c {
      case 0x20, 0x09, 0x0A, 0x0D, 0x0B, 0x0C:
        i += 1
      case UInt8(ascii: "/"):
        let next = at(i + 1)
        if next == UInt8(ascii: "/") {
          i += 2
          while at(i) != 0 && at(i) != 0x0A { i += 1 }
        } else if next == UInt8(ascii: "*") {
          i += 2
          while at(i) != 0 && !(at(i) == UInt8(ascii: "*") && at(i + 1) == UInt8(ascii: "/")) { i += 1 }
          guard at(i) != 0 else { return false }
          i += 2
        } else {
          return false
        }
      default:
        for (k, expected) in ".version".utf8.enumerated() where at(i + k) != expected { return false }
        return true
      }
    }
    return false
  }

  /// A fat binary's extent: headerSize + filesSize (REAL-KERNELS.md §3).
  /// `available` is the buffer's length, or nil behind a bare pointer.
  static func fatbinExtent(header: UnsafeRawPointer, available: Int?, limit: Int) throws(ModuleImageSizeError)
    -> ModuleImageExtent
  {
    let fixed = ModuleImageLayout.fatbinHeaderSize
    if let available, available < fixed {
      throw .truncated(what: "fat binary header", needed: fixed, available: available)
    }
    let version = header.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
    let headerSize = Int(header.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
    let filesSize = header.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
    guard version == 1 else {
      throw .malformed(kind: .fatbin, reason: "header version \(version), expected 1")
    }
    guard headerSize >= fixed else {
      throw .malformed(kind: .fatbin, reason: "header size \(headerSize), less than the \(fixed)-byte header")
    }
    let (total, overflow) = filesSize.addingReportingOverflow(UInt64(headerSize))
    guard !overflow, total <= UInt64(limit) else { throw .tooLarge(kind: .fatbin, size: filesSize, limit: limit) }
    if let available, Int(total) > available {
      throw .truncated(
        what: "fat binary (header \(headerSize) + files \(filesSize))", needed: Int(total), available: available)
    }
    return ModuleImageExtent(kind: .fatbin, bytes: UnsafeRawBufferPointer(start: header, count: Int(total)))
  }

  /// An ELF64 image's size: the furthest of the section header table's end,
  /// every non-NOBITS section's end and the program header table's end (what
  /// lupine computes, REAL-KERNELS.md §3). `read(offset, count)` yields bytes
  /// the caller has checked against `available` (nil: a bare pointer, where
  /// the header itself vouches for them).
  static func elfSize(
    read: (Int, Int) -> UnsafeRawBufferPointer, available: Int?, limit: Int
  ) throws(ModuleImageSizeError) -> Int {
    func need(_ end: UInt64, _ what: String) throws(ModuleImageSizeError) {
      guard end <= UInt64(limit) else { throw .tooLarge(kind: .elf, size: end, limit: limit) }
      if let available, end > UInt64(available) {
        throw .truncated(what: what, needed: Int(end), available: available)
      }
    }
    func end(_ offset: UInt64, _ count: UInt64, _ size: UInt64) throws(ModuleImageSizeError) -> UInt64 {
      let (bytes, o1) = count.multipliedReportingOverflow(by: size)
      let (sum, o2) = offset.addingReportingOverflow(bytes)
      guard !o1, !o2 else { throw .tooLarge(kind: .elf, size: .max, limit: limit) }
      return sum
    }
    let h = ModuleImageLayout.elf64HeaderSize
    try need(UInt64(h), "ELF64 header")
    let header = read(0, h)
    // e_ident[EI_CLASS] = ELFCLASS64 (2), e_ident[EI_DATA] = ELFDATA2LSB (1): cubins are both.
    guard header[4] == 2, header[5] == 1 else {
      throw .malformed(
        kind: .elf, reason: "class \(header[4]) / data \(header[5]), expected ELFCLASS64 (2) little-endian (1)")
    }
    let phoff = header.loadUnaligned(fromByteOffset: 32, as: UInt64.self)
    let shoff = header.loadUnaligned(fromByteOffset: 40, as: UInt64.self)
    let phentsize = UInt64(header.loadUnaligned(fromByteOffset: 54, as: UInt16.self))
    let phnum = UInt64(header.loadUnaligned(fromByteOffset: 56, as: UInt16.self))
    let shentsize = UInt64(header.loadUnaligned(fromByteOffset: 58, as: UInt16.self))
    var shnum = UInt64(header.loadUnaligned(fromByteOffset: 60, as: UInt16.self))
    var size = UInt64(h)
    if phnum > 0 { size = max(size, try end(phoff, phnum, phentsize)) }
    guard shoff != 0 else {
      try need(size, "ELF program header table")
      return Int(size)
    }
    guard shentsize >= UInt64(ModuleImageLayout.elf64SectionHeaderSize) else {
      throw .malformed(kind: .elf, reason: "e_shentsize \(shentsize), less than sizeof(Elf64_Shdr) = 64")
    }
    if shnum == 0 {
      // gABI: with SHN_LORESERVE (0xff00) or more sections, e_shnum is 0 and
      // the count is section 0's sh_size.
      try need(try end(shoff, 1, shentsize), "ELF section header 0")
      shnum = read(Int(shoff), 64).loadUnaligned(fromByteOffset: 32, as: UInt64.self)
    }
    let tableEnd = try end(shoff, shnum, shentsize)
    try need(tableEnd, "ELF section header table (\(shnum) × \(shentsize) bytes at \(shoff))")
    size = max(size, tableEnd)
    for i in 0..<shnum {
      let s = read(Int(shoff + i * shentsize), 64)
      let type = s.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
      guard type != ModuleImageLayout.sectionTypeNoBits else { continue }
      let offset = s.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
      let bytes = s.loadUnaligned(fromByteOffset: 32, as: UInt64.self)
      size = max(size, try end(offset, 1, bytes))
    }
    try need(size, "ELF image (sections and program headers)")
    return Int(size)
  }
}
