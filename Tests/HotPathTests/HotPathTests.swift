import MallocCounter
import Testing
import VGPUDevice
import VGPUProtocol

@testable import VGPU

/// The submit / doorbell / poll / complete / copy path allocates nothing, on
/// either side: counted by a malloc replacement, per thread.
@Suite(.serialized) struct HotPathTests {
  func allocations(_ body: () throws -> Void) rethrows -> UInt64 {
    let before = malloc_counter_thread_allocations()
    try body()
    return malloc_counter_thread_allocations() - before
  }

  @Test func theCounterCounts() {
    let n = allocations { _ = [Int](repeating: 1, count: 1000 + Int.random(in: 0...1)) }
    #expect(n >= 1)
  }

  @Test func guestNOPAllocatesNothing() throws {
    let device = try Device.open("sim")
    defer { device.close() }
    for _ in 0..<1000 { try device.nop() }  // warm up: lazy runtime metadata, page faults
    let n = try allocations { for _ in 0..<10_000 { try device.nop() } }
    #expect(n == 0, "\(n) allocations in 10000 NOP round trips")
    let batched = try allocations { try device.nops(10_000, batch: 32) }
    #expect(batched == 0)
  }

  @Test func guestCopiesAllocateNothing() throws {
    let device = try Device.open("sim")
    defer { device.close() }
    let size = 3 << 20
    let host = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    defer { host.deallocate() }
    let p = try device.allocate(size)
    try device.copy(to: p, from: UnsafeRawBufferPointer(host))
    try device.copy(from: p, into: host)
    let n = try allocations {
      for _ in 0..<20 {
        try device.copy(to: p, from: UnsafeRawBufferPointer(host))
        try device.copy(from: p, into: host)
        try device.copy(to: p + 4096, from: p, count: 8192)
      }
    }
    #expect(n == 0, "\(n) allocations in 60 copies")
  }

  @Test func deviceServingAllocatesNothing() throws {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 1 << 30
    config.layout = BARLayout(queuePairs: 1, depth: 64, stagingSlotSize: 64 << 10, slotsPerQueue: 2)
    let device = try ReferenceDevice(configuration: config)
    let view = QueuePairView(base: device.region.base, layout: config.layout, index: 0)
    _ = view.exchangeState(from: .free, to: .claiming)
    view.setOwnerPID(1)
    device.servePass()
    var tail: UInt32 = 0
    var head: UInt32 = 0
    var phase: UInt16 = 1
    func batch(_ entries: [SubmissionEntry]) -> UInt64 {
      for e in entries {
        view.writeSubmission(e, at: tail)
        tail = (tail + 1) % 64
      }
      view.ringSubmission(tail: tail)
      let n = allocations { device.servePass() }
      while view.completion(at: head, phase: phase) != nil {
        head = (head + 1) % 64
        if head == 0 { phase ^= 1 }
      }
      view.ringCompletion(head: head)
      return n
    }
    _ = batch([SubmissionEntry(.identify, UInt64(ProtocolVersion.packed))])
    let alloc = SubmissionEntry(.alloc, 1 << 20)
    _ = batch([alloc])
    let address = deviceAddressBase
    let stg = config.layout.staging(0)
    let work = [
      SubmissionEntry(.nop), SubmissionEntry(.copyToDevice, address, stg, 65536),
      SubmissionEntry(.copyFromDevice, address + 65536, stg, 65536),
      SubmissionEntry(.copyDeviceToDevice, address, address + 4096, 4096),
      SubmissionEntry(.memset, address, 7, 4, 1024),
      SubmissionEntry(.memoryInfo),
    ]
    _ = batch(work)  // warm up
    var total: UInt64 = 0
    for _ in 0..<100 { total += batch(work) }
    #expect(total == 0, "\(total) allocations serving 600 commands")
  }
}
