/// The vGPU wire format, version 1.1: one definition for the guest client and
/// the device side (reference device, mediator). docs/PROTOCOL.md is the
/// prose form of this module; tests pin every size and offset written here.
///
/// Everything is little-endian. The BAR starts with a 4 KiB register block,
/// followed by the doorbells, the queue pairs and the staging area, whose
/// offsets the register block gives (so a device may lay them out freely).
public enum ProtocolVersion {
  /// A peer with another major version is refused.
  public static let major: UInt16 = 1
  /// Minor versions add commands or fields behind feature bits; a peer with
  /// an older minor is served, without what its version lacks.
  /// 1.1 added `processes` (feature `processList`); 1.2 the transport bit
  /// `ivshmemDoorbell`.
  public static let minor: UInt16 = 2
  /// `major << 16 | minor`, as the version register holds it.
  public static var packed: UInt32 { UInt32(major) << 16 | UInt32(minor) }
}

/// "VGPU" in ASCII, read as a little-endian u32 at offset 0.
public let vgpuMagic: UInt32 = 0x5550_4756

/// Byte offsets in the register block. Device-written unless noted.
public enum Register {
  public static let magic = 0x000  // u32 vgpuMagic
  public static let version = 0x004  // u32 major << 16 | minor
  public static let features = 0x008  // u64 FeatureBits offered by the device
  public static let status = 0x010  // u32 DeviceStatus bits
  public static let control = 0x014  // u32, guest-written: ControlRequest
  public static let queuePairCount = 0x018  // u32
  public static let queueDepth = 0x01c  // u32 entries per ring, power of two, 2...4096
  public static let submissionEntrySize = 0x020  // u32, 64
  public static let completionEntrySize = 0x024  // u32, 32
  public static let doorbellOffset = 0x028  // u64
  public static let doorbellStride = 0x030  // u32 bytes between queue pairs' doorbells
  public static let queuePairStride = 0x034  // u32 bytes between queue pair blocks
  public static let queueAreaOffset = 0x038  // u64
  public static let stagingOffset = 0x040  // u64
  public static let stagingSize = 0x048  // u64
  public static let stagingSlotSize = 0x050  // u32 bytes per slot
  public static let stagingSlotsPerQueue = 0x054  // u32
  public static let regionSize = 0x058  // u64 bytes in the whole BAR, for validation
  public static let heartbeat = 0x060  // u64, bumped by a live device
  public static let devicePID = 0x068  // u32 the serving process (mediator), 0 in-process
  public static let deviceSleeping = 0x06c  // u32 1 while the device waits on deviceWake
  public static let deviceWake = 0x070  // u32 futex word; guests add 1 and wake it
  /// u32, with feature ivshmemDoorbell (1.2): the MSI-X vectors per guest the
  /// device raises, vector = queue pair % this; 0 otherwise.
  public static let ivshmemVectors = 0x074
  public static let progress = 0x078  // u64, bumped while a long command runs (guests extend deadlines)
  // Identity, 0x100...
  public static let name = 0x100  // 64 bytes UTF-8, NUL-padded
  public static let uuid = 0x140  // 16 bytes
  public static let pciBusID = 0x150  // 16 bytes ASCII "0000:00:05.0", NUL-padded
  public static let computeMajor = 0x160  // u32
  public static let computeMinor = 0x164  // u32
  public static let memorySize = 0x168  // u64 bytes of device memory
  public static let cudaDriverVersion = 0x170  // u32, as cuDriverGetVersion: 12080 = 12.8
  public static let multiprocessorCount = 0x174  // u32
  public static let driverVersion = 0x178  // 32 bytes ASCII, as NVML: "570.124.06"
  public static let blockSize = 0x1000  // the register block is one page
}

/// Bits of the status register.
public struct DeviceStatus: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// Serving commands.
  public static let ready = DeviceStatus(rawValue: 1 << 0)
  /// Refuses commands until a guest writes `ControlRequest.reset`.
  public static let needsReset = DeviceStatus(rawValue: 1 << 1)
  /// Broken beyond reset; the message is in the device's log.
  public static let fatal = DeviceStatus(rawValue: 1 << 2)
  /// Stopping: in-flight commands finish, new ones fail with `deviceLost`.
  public static let stopping = DeviceStatus(rawValue: 1 << 3)
}

/// Values a guest writes to the control register.
public enum ControlRequest: UInt32, Sendable {
  case none = 0
  /// Drop all queue pairs and device state, then return to `ready`.
  case reset = 1
}

/// Optional parts of the protocol; a guest uses only what both sides set.
public struct FeatureBits: OptionSet, Sendable, Hashable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  /// Each side sleeps only after saying so, and is woken only then.
  public static let eventSuppression = FeatureBits(rawValue: 1 << 0)
  /// Kernels and modules of the built-in set (docs/PROTOCOL.md, "Modules").
  public static let builtinKernels = FeatureBits(rawValue: 1 << 1)
  /// Streams and events.
  public static let streams = FeatureBits(rawValue: 1 << 2)
  /// The `processes` command (version 1.1): who uses the device, per process.
  /// A guest sends it only when both sides set this bit.
  public static let processList = FeatureBits(rawValue: 1 << 3)
  /// Transport, not negotiated by `identify`: the device listens on QEMU's
  /// ivshmem doorbell (it is ivshmem peer 0, vector 0) and raises MSI-X
  /// vector `qp % vectors` for a guest waiting on queue pair `qp`
  /// (docs/PROTOCOL.md §11, "VM transport"). Set only in the features register.
  public static let ivshmemDoorbell = FeatureBits(rawValue: 1 << 4)
  /// Everything version 1.0 defines.
  public static let version1_0: FeatureBits = [.eventSuppression, .builtinKernels, .streams]
  /// Everything `identify` negotiates in this version (1.2).
  public static let all: FeatureBits = [.eventSuppression, .builtinKernels, .streams, .processList]
}

/// Limits both sides hold each other to.
public enum ProtocolLimits {
  public static let minimumDepth: UInt32 = 2
  public static let maximumDepth: UInt32 = 4096
  public static let maximumQueuePairs: UInt32 = 256
  /// Staging slots must be whole pages so that a DMA mapping can cover them.
  public static let stagingAlignment: UInt64 = 4096
}
