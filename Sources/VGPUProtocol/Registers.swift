/// The vGPU wire format, version 2.3: one definition for the guest client and
/// the device side (reference device, mediator). docs/PROTOCOL.md is the
/// prose form of this module; tests pin every size and offset written here.
///
/// Everything is little-endian. The BAR starts with a 4 KiB register block,
/// followed by the doorbells, the queue pairs and the staging area, whose
/// offsets the register block gives (so a device may lay them out freely).
public enum ProtocolVersion {
  /// A peer with another major version is refused.
  /// 2.0 carries real module images (fat binaries, cubins, PTX) of any size
  /// and CUDA's launch errors, whose statuses a 1.x guest would take for a
  /// device bug.
  public static let major: UInt16 = 2
  /// Minor versions add commands or fields behind feature bits; a peer with
  /// an older minor is served, without what its version lacks.
  /// 1.1 added `processes` (feature `processList`); 1.2 the transport bit
  /// `ivshmemDoorbell`; 1.3 the parameter layout `getFunction` writes
  /// (feature `functionInfo`); 2.0 module uploads, globals, device output
  /// and error text (feature `kernelImages`); 2.1 the per-process activity
  /// record of `processes` (feature `processActivity`); 2.2 cooperative
  /// launches (feature `cooperativeLaunch`, the launch's flag ``LaunchFlags``);
  /// 2.3 the guest heartbeat (feature `guestHeartbeat`, the pair's
  /// `QueuePairBlock.heartbeat` word), so that a device that cannot see its
  /// guests' processes (a VM's) reclaims the pairs of one killed without closing;
  /// 2.4 host memory shared with the device (feature `sharedHostMemory`):
  /// copies from and to it take one copy instead of two; and the
  /// page-locked window (feature `hostWindow`), the same for a VM's guests.
  public static let minor: UInt16 = 4
  /// `major << 16 | minor`, as the version register holds it.
  public static var packed: UInt32 { UInt32(major) << 16 | UInt32(minor) }
}

/// "VGPU" in ASCII, read as a little-endian u32 at offset 0.
public let vgpuMagic: UInt32 = 0x5550_4756

/// A 32-bit register: its byte offset in the register block. The width is in
/// the type, so a register cannot be read or written at the wrong width.
@frozen
public struct Register32: Sendable, Equatable {
  public let offset: Int
  @inlinable public init(_ offset: Int) { self.offset = offset }
}

/// A 64-bit register (8-byte aligned).
@frozen
public struct Register64: Sendable, Equatable {
  public let offset: Int
  @inlinable public init(_ offset: Int) { self.offset = offset }
}

/// A fixed-size byte field of the register block (identity strings, UUID).
public struct RegisterBytes: Sendable, Equatable {
  public let offset: Int
  public let count: Int
  public init(_ offset: Int, count: Int) {
    self.offset = offset
    self.count = count
  }
}

/// The register block (docs/PROTOCOL.md §4). Device-written unless noted;
/// a guest writes only `control` and `deviceWake`, and the device takes
/// nothing else a guest may have stored there on trust (§4, §7).
public enum Register {
  public static let magic = Register32(0x000)  // vgpuMagic
  public static let version = Register32(0x004)  // major << 16 | minor
  public static let features = Register64(0x008)  // FeatureBits offered by the device
  public static let status = Register32(0x010)  // StatusRegister bits
  /// Guest-written: ControlRequest.
  public static let control = Register32(0x014)
  public static let queuePairCount = Register32(0x018)
  public static let queueDepth = Register32(0x01c)  // entries per ring, power of two, 2...4096
  public static let submissionEntrySize = Register32(0x020)  // 64
  public static let completionEntrySize = Register32(0x024)  // 32
  public static let doorbellOffset = Register64(0x028)
  public static let doorbellStride = Register32(0x030)  // bytes between queue pairs' doorbells
  public static let queuePairStride = Register32(0x034)  // bytes between queue pair blocks
  public static let queueAreaOffset = Register64(0x038)
  public static let stagingOffset = Register64(0x040)
  public static let stagingSize = Register64(0x048)
  public static let stagingSlotSize = Register32(0x050)  // bytes per slot
  public static let stagingSlotsPerQueue = Register32(0x054)
  public static let regionSize = Register64(0x058)  // bytes in the whole BAR, for validation
  public static let heartbeat = Register64(0x060)  // bumped by a live device
  public static let devicePID = Register32(0x068)  // the serving process (mediator), 0 in-process
  public static let deviceSleeping = Register32(0x06c)  // 1 while the device waits on deviceWake
  /// Guest-written (added to): the device's futex word; guests add 1 and wake it.
  public static let deviceWake = Register32(0x070)
  /// With feature ivshmemDoorbell (1.2): the MSI-X vectors per guest the
  /// device raises, vector = queue pair % this; 0 otherwise.
  public static let ivshmemVectors = Register32(0x074)
  public static let progress = Register64(0x078)  // bumped while a long command runs (guests extend deadlines)
  /// With feature hostWindow (2.4): the page-locked window, BAR bytes past
  /// the layout that `windowAlloc` hands out; size 0 = no window.
  public static let hostWindowOffset = Register64(0x080)
  public static let hostWindowSize = Register64(0x088)
  // Identity, 0x100...
  public static let name = RegisterBytes(0x100, count: 64)  // UTF-8, NUL-padded
  public static let uuid = RegisterBytes(0x140, count: 16)
  public static let pciBusID = RegisterBytes(0x150, count: 16)  // ASCII "0000:00:05.0", NUL-padded
  public static let computeMajor = Register32(0x160)
  public static let computeMinor = Register32(0x164)
  public static let memorySize = Register64(0x168)  // bytes of device memory
  public static let cudaDriverVersion = Register32(0x170)  // as cuDriverGetVersion: 12080 = 12.8
  public static let multiprocessorCount = Register32(0x174)
  public static let driverVersion = RegisterBytes(0x178, count: 32)  // ASCII, as NVML: "570.124.06"
  /// The register block is one page.
  public static let blockSize = 0x1000
  /// The words the device changes while it runs (everything else it writes
  /// once at start, and puts back if a guest overwrote it).
  public static let changing: Set<Int> = [
    status.offset, control.offset, heartbeat.offset, heartbeat.offset + 4, deviceSleeping.offset,
    deviceWake.offset, progress.offset, progress.offset + 4,
  ]
}

/// Bits of the status register.
public struct StatusRegister: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// Serving commands.
  public static let ready = StatusRegister(rawValue: 1 << 0)
  /// Refuses commands until a guest writes `ControlRequest.reset`.
  public static let needsReset = StatusRegister(rawValue: 1 << 1)
  /// Broken beyond reset; the message is in the device's log.
  public static let fatal = StatusRegister(rawValue: 1 << 2)
  /// Stopping: in-flight commands finish, new ones fail with `deviceLost`.
  public static let stopping = StatusRegister(rawValue: 1 << 3)
}

/// Values a guest writes to the control register.
public enum ControlRequest: UInt32, Sendable {
  case none = 0
  /// While the status says `needsReset`: drop all queue pairs and device
  /// state, then return to `ready`. At any other time the device ignores it
  /// (a guest must not be able to drop other guests' work) and clears the word.
  case reset = 1
}

/// Optional parts of the protocol; a guest uses only what both sides set.
public struct FeatureBits: OptionSet, Sendable, Hashable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  /// Each side sleeps only after saying so, and is woken only then.
  public static let eventSuppression = FeatureBits(rawValue: 1 << 0)
  /// Reserved: 1.x devices set it for their text module image naming
  /// built-in Swift kernels ("vgpu-module 1"), which 2.0 retired (the
  /// device runs PTX). No 2.0 peer sets it or reads it; it keeps its value
  /// so that a 1.x peer's features still read as they did.
  public static let retiredBuiltinKernels = FeatureBits(rawValue: 1 << 1)
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
  public static let version1_0: FeatureBits = [.eventSuppression, .retiredBuiltinKernels, .streams]
  /// `getFunction` writes the function's ``FunctionInfo`` (1.3): its
  /// parameter layout, so a guest packs `kernelParams` without a catalogue.
  public static let functionInfo = FeatureBits(rawValue: 1 << 5)
  /// Real module images (2.0): `moduleUpload`, `moduleGlobal`, `output`,
  /// `errorText`, and the launch statuses of CUDA's sticky errors.
  public static let kernelImages = FeatureBits(rawValue: 1 << 6)
  /// `processes` with a0 = 64 writes ``ProcessActivityRecord``s (2.1): each
  /// process's copies by direction and its commands, for monitors such as
  /// `pcitool top`.
  public static let processActivity = FeatureBits(rawValue: 1 << 7)
  /// `launch` may carry ``LaunchFlags/cooperative`` in the entry's flags
  /// (2.2): `cuLaunchCooperativeKernel`, whose kernel may sync the whole grid.
  public static let cooperativeLaunch = FeatureBits(rawValue: 1 << 8)
  /// The guest heartbeat (2.3, docs/PROTOCOL.md §7 "Guest heartbeat"):
  /// set in the `features` register only by a device that cannot see its
  /// guests' processes (a VM's: their pids mean nothing to it) and reclaims
  /// a pair whose `QueuePairBlock.heartbeat` word stops moving. A guest
  /// names it in `identify` only when it will bump that word every
  /// ``GuestHeartbeat/periodNanoseconds``; the device then watches that pair.
  /// Not in ``all``: naming it is a promise, which a guest makes on purpose.
  public static let guestHeartbeat = FeatureBits(rawValue: 1 << 9)
  /// Host memory shared with the device (2.4, docs/PROTOCOL.md §12):
  /// `hostMemoryShare`, `hostMemoryUnshare`, `copyFromHost`, `copyToHost`.
  /// Offered only by a device that knows for certain which process submits
  /// (a host process's BAR of its own, vouched for by its socket) and can
  /// take that process's descriptors; never across a VM boundary.
  public static let sharedHostMemory = FeatureBits(rawValue: 1 << 10)
  /// The page-locked window (2.4, docs/PROTOCOL.md §12): `windowAlloc`,
  /// `windowFree`, and staging arguments inside a window range of the
  /// submitting process. Pinned memory for a guest in a VM, where
  /// ``sharedHostMemory`` cannot be: the window is BAR bytes, which both
  /// sides map, so a copy from or to it is one copy. Set only where the
  /// `hostWindowSize` register is nonzero.
  public static let hostWindow = FeatureBits(rawValue: 1 << 11)
  /// Coalesced completions (2.4, docs/PROTOCOL.md §9): one completion may
  /// answer a run of NOPs with consecutive ids (its `following` word), so a
  /// batch costs the guest one completion to read, not one per command.
  public static let coalescedCompletions = FeatureBits(rawValue: 1 << 12)
  /// Everything `identify` negotiates in this version without a promise
  /// (2.2 to 2.4; ``guestHeartbeat`` is named on purpose).
  public static let all: FeatureBits = [
    .eventSuppression, .streams, .processList, .functionInfo, .kernelImages, .processActivity, .cooperativeLaunch,
    .sharedHostMemory, .hostWindow, .coalescedCompletions,
  ]
}

/// Limits both sides hold each other to.
public enum ProtocolLimits {
  public static let minimumDepth: UInt32 = 2
  public static let maximumDepth: UInt32 = 4096
  public static let maximumQueuePairs: UInt32 = 256
  /// Staging slots must be whole pages so that a DMA mapping can cover them.
  public static let stagingAlignment: UInt64 = 4096
  /// The page-locked window and its ranges are whole pages (2.4).
  public static let hostWindowAlignment: UInt64 = 4096
}

/// The guest heartbeat's periods (2.3, feature ``FeatureBits/guestHeartbeat``;
/// docs/PROTOCOL.md §7). The guest's process bumps the heartbeat word of each
/// pair it announced it for; the device reclaims a pair whose word has not
/// changed for ``silenceNanoseconds`` (looking every ``checkNanoseconds``),
/// as it reclaims the pairs of a host process that exited. A process killed
/// without closing thus loses its pairs and memory within
/// `check + silence + check` ≤ 1.7 s of its last beat.
public enum GuestHeartbeat {
  /// How often the guest bumps the word: 400 ms, 2.5 wake-ups a second of
  /// one thread per open device, the cost of an idle guest.
  public static let periodNanoseconds: UInt64 = 400_000_000
  /// How long a word may stay unchanged before the device reclaims its
  /// pair: 1.5 s, nearly four periods, so that a living guest whose thread
  /// is late by up to 1.1 s (a loaded VM) keeps its pair.
  public static let silenceNanoseconds: UInt64 = 1_500_000_000
  /// How often the device looks at the words.
  public static let checkNanoseconds: UInt64 = 100_000_000
}
