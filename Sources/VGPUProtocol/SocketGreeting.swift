/// The mediator's one message to a host process that connects to its Unix
/// socket (docs/PROTOCOL.md §23): the BAR of the process's own, as a memfd
/// in SCM_RIGHTS (unix(7)), or why there is none. Fixed size, little-endian:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `0x4B4E_4847` ("GHNK") |
/// | 4 | 4 | protocol version (major << 16 \| minor), as `Register.version` |
/// | 8 | 4 | status: 0 accepted (the fd comes with it), 1 refused, 2 failed, 3 waiting |
/// | 12 | 4 | length of `reason` in bytes (0...`reasonCapacity`) |
/// | 16 | 8 | BAR size in bytes (the fd's size; 0 unless accepted) |
/// | 24 | 8 | reserved, 0 |
/// | 32 | 224 | reason, UTF-8 (refused, failed or waiting: one line for a person) |
///
/// `waiting` is not the last message: a mediator at its `--max-clients`
/// says so at once, then sends the final greeting when a client exits.
/// Both sides check every field (`init(decoding:)`): the bytes come from
/// the other side of a socket.
public struct SocketGreeting: Sendable, Equatable {
  public static let magic: UInt32 = 0x4B4E_4847
  public static let size = 256
  public static let reasonCapacity = size - 32
  /// The largest BAR a guest maps (1 TiB: far beyond any layout's 256 pairs).
  public static let maximumBARSize: UInt64 = 1 << 40

  public enum Status: UInt32, Sendable {
    /// The BAR's fd comes with the message.
    case accepted = 0
    /// The allow-list does not admit the peer (`reason` says why and what to do).
    case refused = 1
    /// The mediator admits it but could not make its BAR (out of memory, stopping).
    case failed = 2
    /// The mediator serves its maximum of processes: another greeting follows
    /// when one exits (`reason` says how many, which, and what to do).
    case waiting = 3
  }

  public var status: Status
  public var version: UInt32
  public var barSize: UInt64
  public var reason: String

  public init(status: Status, barSize: UInt64 = 0, reason: String = "", version: UInt32 = ProtocolVersion.packed) {
    self.status = status
    self.barSize = barSize
    self.reason = reason
    self.version = version
  }

  /// The message's bytes; a reason longer than `reasonCapacity` is cut at a character boundary.
  public var encoded: [UInt8] {
    var text = Array(reason.utf8)
    if text.count > Self.reasonCapacity {
      text = Array(text.prefix(Self.reasonCapacity))
      // Not in the middle of a character: the last lead byte (not 10xxxxxx)
      // says how long its UTF-8 sequence is; an incomplete one goes.
      if let lead = text.lastIndex(where: { $0 & 0xC0 != 0x80 }) {
        let b = text[lead]
        let length = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2
        if text.count - lead < length { text.removeSubrange(lead...) }
      }
    }
    var bytes = [UInt8](repeating: 0, count: Self.size)
    bytes.withUnsafeMutableBytes { b in
      b.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
      b.storeBytes(of: version.littleEndian, toByteOffset: 4, as: UInt32.self)
      b.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 8, as: UInt32.self)
      b.storeBytes(of: UInt32(text.count).littleEndian, toByteOffset: 12, as: UInt32.self)
      b.storeBytes(of: barSize.littleEndian, toByteOffset: 16, as: UInt64.self)
    }
    bytes.replaceSubrange(32..<32 + text.count, with: text)
    return bytes
  }

  /// Reads a message, checking each field; throws what is wrong with it.
  public init(decoding bytes: UnsafeRawBufferPointer) throws(GreetingError) {
    guard bytes.count == Self.size else { throw .init("it has \(bytes.count) bytes, not \(Self.size)") }
    let magic = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
    guard magic == Self.magic else {
      throw .init("its magic is 0x\(String(magic, radix: 16)), not 0x\(String(Self.magic, radix: 16))")
    }
    version = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
    let rawStatus = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
    guard let status = Status(rawValue: rawStatus) else { throw .init("its status \(rawStatus) is unknown") }
    self.status = status
    let length = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
    guard length <= Self.reasonCapacity else { throw .init("its reason claims \(length) bytes") }
    barSize = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    if status == .accepted {
      guard barSize >= 4096, barSize <= Self.maximumBARSize, barSize % 4096 == 0 else {
        throw .init("its BAR size \(barSize) is not whole pages from 4 KiB to 1 TiB")
      }
    }
    reason = String(decoding: bytes[32..<32 + Int(length)], as: UTF8.self)
  }
}

/// Where a mediator serves host processes unless told otherwise: `/run/vgpu`
/// where it may create it, else /dev/shm (both tmpfs, gone at reboot).
public enum HostSocketPath {
  public static let standard = "/run/vgpu/vgpu0.sock"
  public static let fallback = "/dev/shm/vgpu0.sock"
}

/// A greeting that breaks `SocketGreeting`'s rules.
public struct GreetingError: Error, CustomStringConvertible, Sendable {
  public var description: String
  public init(_ description: String) { self.description = description }
}
