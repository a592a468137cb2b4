import CSupport
import DeviceAccess
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// How a guest wakes its device, and how it is woken when completions are
/// posted (docs/PROTOCOL.md §11). On one host both are futexes in the shared
/// BAR. A futex does not cross a VM boundary: there QEMU's ivshmem-doorbell
/// carries them — a write of `0 << 16 | 0` to the doorbell register in BAR 0
/// wakes the mediator, and the mediator raises MSI-X vector `qp % vectors`,
/// which VFIO delivers to an eventfd of the process owning that queue pair
/// (when qp is below both sides' vector counts, so no vector is shared).
///
/// A value type with no existentials: it sits in every queue pair and its
/// calls are on the submit and wait paths.
struct Wakeups: @unchecked Sendable {
  enum Doorbell: @unchecked Sendable {
    case none
    /// BAR 0 mapped (sysfs `resource0`, UIO): a store to `base + 12`.
    case mapped(UnsafeMutableRawPointer)
    /// A VFIO device fd: pwrite to BAR 0's region offset + 12 (BAR 0 is
    /// smaller than a page and may not be mmap-able).
    case deviceFD(Int32, offset: Int64)
  }

  var doorbell = Doorbell.none
  /// A VFIO device fd whose MSI-X vectors this process may point at its own
  /// eventfds, and how many vectors are enabled; -1 / 0 when none.
  var interruptFD: Int32 = -1
  var vectors = 0
  /// The vectors the device raises (its ivshmemVectors register); a pair
  /// waits on an interrupt only below both counts.
  var deviceVectors = 0
  /// What was set up, for `DeviceInfo.wakeups`.
  var description = "futexes in the shared BAR (same host)"
  /// Keeps a mapped BAR 0 alive.
  var keep: MappedRegion?

  static let sameHost = Wakeups()

  /// Wakes the device: its ivshmem doorbell from a VM's guest (a futex there
  /// would reach no one on the host), else its futex.
  @inline(__always) func wakeDevice(_ registers: RegisterBlock) {
    let value = Ivshmem.doorbellValue(peer: Ivshmem.devicePeer, vector: Ivshmem.deviceVector)
    switch doorbell {
    case .none:
      _ = vgpu_fetch_add_u32(registers.deviceWakeWord, 1)
      _ = vgpu_futex_wake(registers.deviceWakeWord, 1)
    case .mapped(let base): vgpu_store_seqcst_u32(base + Ivshmem.doorbell, value)
    case .deviceFD(let fd, let offset): _ = vgpu_pwrite_u32(fd, value, offset + Int64(Ivshmem.doorbell))
    }
  }

  /// Without the device's promise (feature `ivshmemDoorbell`) nobody listens
  /// at the doorbell or raises vectors: keep only what works without it.
  func restricted(to features: FeatureBits, deviceVectors: UInt32) -> Wakeups {
    if features.contains(.ivshmemDoorbell) {
      var w = self
      w.deviceVectors = Int(deviceVectors)
      return w
    }
    if case .none = doorbell, interruptFD < 0 { return self }
    var w = Wakeups()
    w.description =
      "polling in short sleeps (the device offers no ivshmem doorbell: ivshmem-plain, or a mediator without --ivshmem-socket)"
    return w
  }

  /// An eventfd for queue pair `qp`'s completions, wired to its vector; -1
  /// (and the reason) when this process cannot receive interrupts.
  func completionEventFD(queuePair qp: Int) -> (fd: Int32, note: String?) {
    guard interruptFD >= 0, vectors > 0 else { return (-1, nil) }
    // Vector = qp on both sides only below both counts; a shared vector
    // would wake only its last owner, a missing one nobody.
    guard qp < vectors, qp < deviceVectors else {
      return (
        -1,
        "queue pair \(qp) has no vector of its own (the device raises \(deviceVectors), the VM has \(vectors); QEMU's ivshmem-doorbell vectors= and the mediator's --vectors should both be at least its --queue-pairs)"
      )
    }
    let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    guard fd >= 0 else { return (-1, "eventfd failed (\(Errno(errno)))") }
    do throws(Errno) {
      try VFIODevice.setInterruptTrigger(deviceFD: interruptFD, vector: qp, eventfd: fd)
    } catch {
      close(fd)
      return (-1, "wiring MSI-X vector \(qp) failed (\(error))")
    }
    return (fd, nil)
  }
}
