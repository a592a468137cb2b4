import CSupport
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
  var tail: SubmissionCursor
  var completions: CompletionCursor
  public private(set) var pending = 0
  /// Staging slot 0 of this pair: BAR offset and local pointer.
  public let stagingAddress: UInt64
  public let staging: UnsafeMutableRawPointer
  public let slotSize: Int
  public var depth: Int { Int(tail.mask) + 1 }

  /// `coalescing`: names coalesced completions (2.4), as the guest library
  /// does, so that a run of NOPs is answered by one completion; the socket
  /// server, which answers each request, does not.
  public init(device: ReferenceDevice, index: Int, coalescing: Bool = false) throws {
    self.device = device
    view = QueuePairView(base: device.region.base, layout: device.layout, index: index)
    tail = SubmissionCursor(depth: device.layout.depth)
    completions = CompletionCursor(depth: device.layout.depth)
    stagingAddress = device.layout.staging(index)
    staging = device.region.base + Int(stagingAddress)
    slotSize = Int(device.layout.stagingSlotSize)
    guard QueuePairClaim.claim(view, pid: UInt32(getpid())) else { throw BenchError("queue pair \(index) is taken") }
    var passes = 0
    guard
      QueuePairClaim.awaitAcceptance(
        view, deadline: vgpu_monotonic_ns() + 1_000_000_000,
        poll: {
          passes += 1
          device.servePass()
        })
    else {
      throw BenchError("the device did not accept queue pair \(index) in \(passes) passes")
    }
    let c = try execute(coalescing ? Command.Identify().entry : QueuePairClaim.identify)
    if case .failure(let refusal) = QueuePairClaim.negotiated(c) {
      throw BenchError("the device refused identify: status \(refusal.status)")
    }
  }

  /// Writes a command (seen by the device at the next `complete`).
  public mutating func submit(_ entry: SubmissionEntry) {
    var e = entry
    e.commandID = UInt16(truncatingIfNeeded: tail.index)
    tail.push(e, into: view)
    pending += 1
  }

  /// Rings, serves and collects until every submitted command completed, in order.
  public mutating func complete(_ each: (CompletionEntry) -> Void) {
    view.ringSubmission(tail: tail.index)
    while pending > 0 {
      device.servePass(quick: true)
      while let c = completions.take(from: view) {
        each(c)
        // A coalesced completion (2.4) answers `following` more NOPs.
        pending -= 1 + Int(c.following)
      }
      view.ringCompletion(head: completions.index)
    }
  }

  public mutating func execute(_ entry: SubmissionEntry) throws -> CompletionEntry {
    submit(entry)
    var result = CompletionEntry(status: .success)
    complete { result = $0 }
    guard result.status == CommandStatus.success.rawValue else {
      throw BenchError("the device answered status \(result.status) to opcode \(entry.opcode)")
    }
    return result
  }
}
