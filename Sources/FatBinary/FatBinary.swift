import CCompression
import VGPUProtocol

/// The device side of module images: a fat binary's entries, their
/// decompression, and the PTX a device of a given compute capability runs.
///
/// Layout (REAL-KERNELS.md §3, measured on nvcc 13.5 and NVRTC 12.9 output;
/// agrees with Cricket `cpu-elf2.c`, ZLUDA `FatbinFileHeader`, jiegec/fatbinary):
///
///     header  +0 u32 magic 0xBA55ED50, +4 u16 version 1, +6 u16 headerSize, +8 u64 filesSize
///     entry   +0 u16 kind, +2 u16 version, +4 u32 headerSize, +8 u64 payloadSize,
///             +16 u32 compressedSize, +24 u16 minor, +26 u16 major, +28 u32 arch,
///             +32 u32 nameOffset, +36 u32 nameLength, +40 u64 flags, +56 u64 uncompressedSize
///
/// The payload follows the entry header; the next entry is at headerSize + payloadSize.
/// Every field is untrusted: the image comes from a guest.
public struct FatBinary: Sendable {
  /// One entry of a fat binary.
  public struct Entry: Sendable, Equatable {
    /// What the payload is.
    public enum Kind: Sendable, Equatable, CustomStringConvertible {
      case ptx, elf, ltoIR
      case other(UInt16)

      init(_ raw: UInt16) {
        switch raw {
        case 1: self = .ptx
        case 2: self = .elf
        case 4: self = .ltoIR
        default: self = .other(raw)
        }
      }

      public var description: String {
        switch self {
        case .ptx: "PTX"
        case .elf: "ELF"
        case .ltoIR: "LTO-IR"
        case .other(let raw): "kind \(raw)"
        }
      }
    }

    /// How the payload is stored (the entry's flags).
    public enum Compression: Sendable, Equatable, CustomStringConvertible {
      case none
      /// Flag 0x2000: an LZ4 *block* (no frame), decoded with `LZ4_decompress_safe`.
      case lz4
      /// Flag 0x8000: a zstd *frame* (magic 28 B5 2F FD).
      case zstd

      public var description: String {
        switch self {
        case .none: "uncompressed"
        case .lz4: "LZ4 block"
        case .zstd: "zstd frame"
        }
      }
    }

    /// Its index among the image's entries.
    public var index: Int
    public var kind: Kind
    /// Where its header starts, from the start of the image.
    public var offset: Int
    public var headerSize: Int
    /// The stored payload's size, padded to 8 (the next entry follows it).
    public var payloadSize: Int
    /// The compressed bytes at the start of the payload; 0 when uncompressed.
    public var compressedSize: Int
    /// The PTX ISA version, for PTX entries (9.5 from nvcc 13.5, 8.8 from NVRTC 12.9).
    public var ptxVersion: (major: UInt16, minor: UInt16)
    /// The SM architecture: 75 for compute_75 PTX or an sm_75 cubin.
    public var arch: UInt32
    public var flags: UInt64
    /// What the payload decompresses to; 0 when uncompressed.
    public var uncompressedSize: UInt64
    public var compression: Compression

    /// Where the payload starts, from the start of the image.
    public var payloadOffset: Int { offset + headerSize }

    public static func == (a: Entry, b: Entry) -> Bool {
      a.index == b.index && a.kind == b.kind && a.offset == b.offset && a.headerSize == b.headerSize
        && a.payloadSize == b.payloadSize && a.compressedSize == b.compressedSize
        && a.ptxVersion == b.ptxVersion && a.arch == b.arch && a.flags == b.flags
        && a.uncompressedSize == b.uncompressedSize && a.compression == b.compression
    }
  }

  /// Limits on what a guest's image may make the device do.
  public enum Limits {
    /// The most one entry may decompress to. Real PTX entries run to tens of
    /// MiB (PyTorch); this bounds a hostile `uncompressedSize`.
    public static let maxDecompressedSize = 512 << 20
  }

  /// Entry flag bits (REAL-KERNELS.md §3: 0x1 64-bit, 0x2 debug, 0x10 Linux).
  public enum Flags {
    public static let lz4: UInt64 = 0x2000
    public static let zstd: UInt64 = 0x8000
  }

  public static let entryHeaderSize = 64

  /// The image's bytes, from its header to headerSize + filesSize.
  public let bytes: [UInt8]
  public let entries: [Entry]

  /// Parses the fat binary at the start of `image`. Bytes after its
  /// headerSize + filesSize are ignored (a `.nv_fatbin` section holds several).
  public init(parsing image: UnsafeRawBufferPointer) throws(FatBinaryError) {
    let fixed = ModuleImageLayout.fatbinHeaderSize
    guard image.count >= fixed else {
      throw .truncated(what: "fat binary header", offset: 0, needed: fixed, available: image.count)
    }
    let magic = image.loadUnaligned(as: UInt32.self)
    guard magic == ModuleImageLayout.fatbinMagic else {
      throw .badMagic(found: magic, expected: ModuleImageLayout.fatbinMagic, what: "fat binary")
    }
    let version = image.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
    let headerSize = Int(image.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
    let filesSize = image.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
    guard version == 1, headerSize >= fixed else {
      throw .malformed("fat binary header: version \(version), header size \(headerSize); expected version 1 and ≥ 16")
    }
    guard filesSize <= UInt64(image.count), headerSize + Int(filesSize) <= image.count else {
      throw .truncated(
        what: "fat binary (header \(headerSize) + files \(filesSize))", offset: 0,
        needed: filesSize > UInt64(Int.max / 2) ? Int.max : headerSize + Int(filesSize), available: image.count)
    }
    let end = headerSize + Int(filesSize)
    var entries: [Entry] = []
    var offset = headerSize
    while offset < end {
      let h = Self.entryHeaderSize
      guard end - offset >= h else {
        throw .truncated(what: "entry \(entries.count)'s header", offset: offset, needed: h, available: end - offset)
      }
      func u16(_ at: Int) -> UInt16 { image.loadUnaligned(fromByteOffset: offset + at, as: UInt16.self) }
      func u32(_ at: Int) -> UInt32 { image.loadUnaligned(fromByteOffset: offset + at, as: UInt32.self) }
      func u64(_ at: Int) -> UInt64 { image.loadUnaligned(fromByteOffset: offset + at, as: UInt64.self) }
      let entryHeader = Int(u32(4))
      let payload = u64(8)
      let compressed = Int(u32(16))
      let flags = u64(40)
      let index = entries.count
      guard entryHeader >= h else {
        throw .malformed("entry \(index) at offset \(offset): header size \(entryHeader), less than \(h)")
      }
      guard payload <= UInt64(end), entryHeader <= end - offset, Int(payload) <= end - offset - entryHeader else {
        throw .entryOverflows(
          index: index, offset: offset, headerSize: entryHeader, payloadSize: payload, imageEnd: end)
      }
      let compression: Entry.Compression
      switch flags & (Flags.lz4 | Flags.zstd) {
      case 0: compression = .none
      case Flags.lz4: compression = .lz4
      case Flags.zstd: compression = .zstd
      default: throw .unknownCompression(index: index, flags: flags)
      }
      guard compression == .none || compressed <= Int(payload) else {
        throw .entryOverflows(
          index: index, offset: offset, headerSize: entryHeader, payloadSize: UInt64(compressed), imageEnd: end)
      }
      entries.append(
        Entry(
          index: index, kind: Entry.Kind(u16(0)), offset: offset, headerSize: entryHeader, payloadSize: Int(payload),
          compressedSize: compressed, ptxVersion: (u16(26), u16(24)), arch: u32(28), flags: flags,
          uncompressedSize: u64(56), compression: compression))
      offset += entryHeader + Int(payload)
    }
    self.bytes = Array(image[0..<end])
    self.entries = entries
  }

  public init(parsing image: [UInt8]) throws(FatBinaryError) {
    var result: Result<FatBinary, FatBinaryError>!
    image.withUnsafeBytes { raw in result = Result { () throws(FatBinaryError) in try FatBinary(parsing: raw) } }
    self = try result.get()
  }

  /// The entry's payload, decompressed. PTX keeps its trailing NULs here;
  /// `ptxText(of:)` strips them.
  public func payload(of entry: Entry) throws(FatBinaryError) -> [UInt8] {
    let start = entry.payloadOffset
    switch entry.compression {
    case .none:
      return Array(bytes[start..<start + entry.payloadSize])
    case .lz4, .zstd:
      guard entry.uncompressedSize <= UInt64(Limits.maxDecompressedSize) else {
        throw .tooLarge(index: entry.index, size: entry.uncompressedSize, limit: Limits.maxDecompressedSize)
      }
      let capacity = Int(entry.uncompressedSize)
      var out = [UInt8](repeating: 0, count: capacity)
      let result: Result<Int, FatBinaryError> = bytes.withUnsafeBytes { all in
        out.withUnsafeMutableBytes { dst in
          let src = all.baseAddress! + start
          return entry.compression == .lz4
            ? Self.lz4(src, entry.compressedSize, dst, index: entry.index)
            : Self.zstd(src, entry.compressedSize, dst, index: entry.index)
        }
      }
      out.removeSubrange(try result.get()...)
      return out
    }
  }

  /// `LZ4_decompress_safe` (lz4.h: "never writes outside the output buffer, nor reads outside the input buffer";
  /// returns the decompressed size, negative on malformed input).
  static func lz4(_ src: UnsafeRawPointer, _ count: Int, _ dst: UnsafeMutableRawBufferPointer, index: Int)
    -> Result<Int, FatBinaryError>
  {
    guard count <= Int(Int32.max), dst.count <= Int(Int32.max) else {
      return .failure(.decompressionFailed(index: index, codec: .lz4, reason: "sizes over LZ4's 2 GiB int range"))
    }
    guard let out = dst.baseAddress else { return .success(0) }
    let n = LZ4_decompress_safe(
      src.assumingMemoryBound(to: CChar.self), out.assumingMemoryBound(to: CChar.self), Int32(count), Int32(dst.count))
    guard n >= 0 else {
      return .failure(
        .decompressionFailed(
          index: index, codec: .lz4,
          reason:
            "LZ4_decompress_safe returned \(n) (malformed block, or larger than the \(dst.count) bytes the entry states)"
        ))
    }
    return .success(Int(n))
  }

  /// `ZSTD_decompress` over the whole payload (zstd.h: decodes one or more
  /// frames into at most dstCapacity bytes; `ZSTD_isError` on the result).
  static func zstd(_ src: UnsafeRawPointer, _ count: Int, _ dst: UnsafeMutableRawBufferPointer, index: Int)
    -> Result<Int, FatBinaryError>
  {
    let content = ZSTD_getFrameContentSize(src, count)
    if content == vgpu_zstd_contentsize_error() {
      return .failure(
        .decompressionFailed(index: index, codec: .zstd, reason: "not a zstd frame (ZSTD_getFrameContentSize)"))
    }
    if content != vgpu_zstd_contentsize_unknown(), content > UInt64(dst.count) {
      return .failure(
        .decompressionFailed(
          index: index, codec: .zstd,
          reason: "the frame holds \(content) bytes, the entry states \(dst.count)"))
    }
    let n = ZSTD_decompress(dst.baseAddress, dst.count, src, count)
    if ZSTD_isError(n) != 0 {
      return .failure(
        .decompressionFailed(index: index, codec: .zstd, reason: String(cString: ZSTD_getErrorName(n))))
    }
    return .success(n)
  }

  /// A PTX entry's text: decompressed, trailing NULs stripped (the payload is padded to 8).
  public func ptxText(of entry: Entry) throws(FatBinaryError) -> String {
    var bytes = try payload(of: entry)
    while bytes.last == 0 { bytes.removeLast() }
    guard let text = String(validating: bytes, as: UTF8.self) else {
      throw .malformed("entry \(entry.index) (PTX, sm_\(entry.arch)): the payload is not UTF-8 text")
    }
    return text
  }

  /// The PTX entry a device of compute capability `cc` (major × 10 + minor,
  /// 90 for 9.0) runs: the highest arch ≤ cc, else the newest, as ZLUDA picks
  /// (REAL-KERNELS.md §3). Nil when there is no PTX entry.
  public func ptxEntry(forComputeCapability cc: UInt32) -> Entry? {
    let ptx = entries.filter { $0.kind == .ptx }
    return ptx.filter { $0.arch <= cc }.max { $0.arch < $1.arch } ?? ptx.max { $0.arch < $1.arch }
  }
}

/// PTX for the interpreter, with where it came from.
public struct PTXSource: Sendable, Equatable {
  /// Where the text came from.
  public enum Origin: Sendable, Equatable {
    /// A fat binary's entry: its index, arch and PTX ISA version.
    case fatbinEntry(index: Int, arch: UInt32, major: UInt16, minor: UInt16)
    /// The image was PTX text.
    case text
  }

  public var text: String
  public var origin: Origin
}

/// Module image loading on the device: what to run from the bytes a guest sent.
public enum ModuleImageLoader {
  /// The PTX in `image` for a device of compute capability `cc`: from a fat
  /// binary (its best PTX entry, decompressed) or plain PTX text. A cubin, or a
  /// fat binary with no PTX entry, is `.noPTX` (the device answers CUDA 209,
  /// NO_BINARY_FOR_GPU: this device runs PTX only).
  public static func ptx(from image: UnsafeRawBufferPointer, computeCapability cc: UInt32 = 90)
    throws(FatBinaryError) -> PTXSource
  {
    switch ModuleImageSizer.kind(of: image) {
    case .fatbin:
      let fatbin = try FatBinary(parsing: image)
      guard let entry = fatbin.ptxEntry(forComputeCapability: cc) else {
        throw .noPTX(present: fatbin.entries.map { "\($0.kind) sm_\($0.arch)" })
      }
      return PTXSource(
        text: try fatbin.ptxText(of: entry),
        origin: .fatbinEntry(
          index: entry.index, arch: entry.arch, major: entry.ptxVersion.major, minor: entry.ptxVersion.minor))
    case .elf:
      guard let arch = cubinArch(image) else {
        throw .noPTX(present: ["ELF (arch unreadable)"])
      }
      throw .noPTX(present: ["ELF sm_\(arch)"])
    case .ptx:
      var end = image.count
      if let nul = image.firstIndex(of: 0) { end = nul }
      guard let text = String(validating: image[0..<end], as: UTF8.self) else {
        throw .malformed("PTX text is not UTF-8")
      }
      return PTXSource(text: text, origin: .text)
    case .fatbinWrapper:
      throw .malformed(
        "a __fatBinC_Wrapper_t reached the device; the guest must send the fat binary its data pointer names")
    case .unknown:
      throw .badMagic(
        found: image.count >= 4 ? image.loadUnaligned(as: UInt32.self) : 0, expected: nil, what: "module image")
    }
  }

  public static func ptx(from image: [UInt8], computeCapability cc: UInt32 = 90) throws(FatBinaryError) -> PTXSource {
    var result: Result<PTXSource, FatBinaryError>!
    image.withUnsafeBytes { raw in
      result = Result { () throws(FatBinaryError) in try ptx(from: raw, computeCapability: cc) }
    }
    return try result.get()
  }

  /// A cubin's SM arch from e_flags, nil if the header is short. Measured, not
  /// documented by NVIDIA: ELF ABI version (e_ident[8]) 7 (NVRTC 12.9) keeps the
  /// arch in bits 0–7 (sm_75: 0x4b054b); version 8 (nvcc 13.5) in bits 8–15
  /// (sm_75: 0x6004b04, sm_120: 0x6007802).
  public static func cubinArch(_ image: UnsafeRawBufferPointer) -> UInt32? {
    guard image.count >= ModuleImageLayout.elf64HeaderSize else { return nil }
    let flags = image.loadUnaligned(fromByteOffset: 48, as: UInt32.self)
    return image[8] >= 8 ? (flags >> 8) & 0xff : flags & 0xff
  }
}

/// Why a module image could not give PTX: one line, with what was found.
public enum FatBinaryError: Error, Equatable, Sendable, CustomStringConvertible {
  case truncated(what: String, offset: Int, needed: Int, available: Int)
  case badMagic(found: UInt32, expected: UInt32?, what: String)
  case malformed(String)
  case entryOverflows(index: Int, offset: Int, headerSize: Int, payloadSize: UInt64, imageEnd: Int)
  case unknownCompression(index: Int, flags: UInt64)
  case tooLarge(index: Int, size: UInt64, limit: Int)
  case decompressionFailed(index: Int, codec: FatBinary.Entry.Compression, reason: String)
  /// No PTX entry; `present` lists what the image holds ("ELF sm_75").
  case noPTX(present: [String])

  public var description: String {
    func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
    switch self {
    case .truncated(let what, let offset, let needed, let available):
      return "fat binary: truncated at offset \(offset): the \(what) needs \(needed) bytes, \(available) remain"
    case .badMagic(let found, let expected, let what):
      let wanted =
        expected.map { hex($0) } ?? "a fat binary (0xba55ed50), an ELF cubin (0x464c457f) or PTX text (.version)"
      return "\(what): bad magic \(hex(found)), expected \(wanted)"
    case .malformed(let reason):
      return "fat binary: malformed: \(reason)"
    case .entryOverflows(let index, let offset, let headerSize, let payloadSize, let end):
      return
        "fat binary: entry \(index) at offset \(offset) (header \(headerSize) + payload \(payloadSize) bytes) overflows the image, which ends at \(end)"
    case .unknownCompression(let index, let flags):
      return
        "fat binary: entry \(index) has unknown compression (flags 0x\(String(flags, radix: 16)); known: 0x2000 LZ4, 0x8000 zstd, not both)"
    case .tooLarge(let index, let size, let limit):
      return "fat binary: entry \(index) states \(size) decompressed bytes, over the \(limit)-byte limit"
    case .decompressionFailed(let index, let codec, let reason):
      return "fat binary: entry \(index): \(codec) decompression failed: \(reason)"
    case .noPTX(let present):
      return
        "no PTX: binary for \(present.isEmpty ? "nothing (no entries)" : present.joined(separator: ", ")) only; this device runs PTX only (CUDA_ERROR_NO_BINARY_FOR_GPU): build with -gencode arch=compute_XX,code=compute_XX, or CUPY_COMPILE_WITH_PTX=1"
    }
  }
}
