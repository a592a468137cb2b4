import VGPUDevice
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// One queue pair of an in-process reference device, driven from the calling
/// thread with no device thread: submit, then `ReferenceDevice.servePass()`
/// here, then read the completions. What an API-remoting server does with its
/// GPU driver, and a single-threaded way to count the device's instructions.
public struct DirectQueue: ~Copyable {
  let device: ReferenceDevice
  let view: QueuePairView
  let mask: UInt32
  var tail: UInt32 = 0
  var head: UInt32 = 0
  var phase: UInt16 = 1
  public private(set) var pending = 0
  /// Staging slot 0 of this pair: BAR offset and local pointer.
  public let stagingAddress: UInt64
  public let staging: UnsafeMutableRawPointer
  public let slotSize: Int
  public var depth: Int { Int(mask) + 1 }

  public init(device: ReferenceDevice, index: Int) throws {
    self.device = device
    view = QueuePairView(base: device.region.base, layout: device.layout, index: index)
    mask = device.layout.depth - 1
    stagingAddress = device.layout.staging(index)
    staging = device.region.base + Int(stagingAddress)
    slotSize = Int(device.layout.stagingSlotSize)
    guard view.exchangeState(from: .free, to: .claiming) else { throw BenchError("queue pair \(index) is taken") }
    view.setOwnerPID(UInt32(getpid()))
    for _ in 0..<100 where view.state != QueuePairState.active.rawValue { device.servePass() }
    guard view.state == QueuePairState.active.rawValue else {
      throw BenchError("the device did not accept queue pair \(index)")
    }
    _ = try execute(SubmissionEntry(.identify, UInt64(ProtocolVersion.packed), FeatureBits.all.rawValue))
  }

  /// Writes a command (seen by the device at the next `complete`).
  public mutating func submit(_ entry: SubmissionEntry) {
    var e = entry
    e.commandID = UInt16(truncatingIfNeeded: tail)
    view.writeSubmission(e, at: tail)
    tail = (tail + 1) & mask
    pending += 1
  }

  /// Rings, serves and collects until every submitted command completed, in order.
  public mutating func complete(_ each: (CompletionEntry) -> Void) {
    view.ringSubmission(tail: tail)
    while pending > 0 {
      device.servePass(quick: true)
      while let c = view.completion(at: head, phase: phase) {
        each(c)
        head = (head + 1) & mask
        if head == 0 { phase ^= 1 }
        pending -= 1
      }
      view.ringCompletion(head: head)
    }
  }

  public mutating func execute(_ entry: SubmissionEntry) throws -> CompletionEntry {
    submit(entry)
    var result = CompletionEntry(commandID: 0, status: .success)
    complete { result = $0 }
    guard result.status == Status.success.rawValue else {
      throw BenchError("the device answered status \(result.status) to opcode \(entry.opcode)")
    }
    return result
  }
}
