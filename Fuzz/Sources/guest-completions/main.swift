// guest-completions: the guest's queue pair against a hostile device. The
// device side is the input: the BAR's registers as the guest reads them at
// open (layout, identity), then completion-ring contents written before and
// between the guest's operations (commands waited for one by one or several
// at once, pipelined copies both ways, module uploads, error texts), plus
// the fault word, status and progress registers. No thread serves the pair;
// what the input did not post is a silence, which the guest must end with
// its deadline (100 µs here). Whatever comes back, the guest may only throw
// a VGPUError: a trap, an out-of-bounds access or a hang is a finding.
import DeviceAccess
import FuzzSupport
import VGPUProtocol

@testable import VGPU

let layout = BARLayout(queuePairs: 1, depth: 8, stagingSlotSize: 4096, slotsPerQueue: 2)
let region: MappedRegion = {
  do { return try MappedRegion.anonymous(size: Int(layout.regionSize)) } catch {
    fatalError("fuzz set-up: no in-memory BAR of \(layout.regionSize) bytes: \(error)")
  }
}()

/// The completion ring as the input writes it: each slot's 32 bytes, with
/// fix-ups that make a field right (the command id the guest will look for,
/// the phase of this lap, a plausible head, success, a copy's length) so that
/// the fuzzer reaches the checks behind the first ones.
func post(_ input: inout FuzzInput, _ view: QueuePairView, slot: UInt32, id: UInt16, lap: UInt32) {
  let fixups = input.byte()
  var raw = [UInt8](repeating: 0, count: 32)
  let bytes = input.take(32)
  for i in 0..<bytes.count { raw[i] = bytes[i] }
  var c = raw.withUnsafeBytes { $0.loadUnaligned(as: CompletionEntry.self) }
  if fixups & 1 != 0 { c.commandID = id }
  if fixups & 2 != 0 { c.phase = lap & 1 == 0 ? 1 : 0 }
  if fixups & 4 != 0 { c.sqHead = UInt16((slot + 1) & (layout.depth - 1)) }
  if fixups & 8 != 0 { c.status = CommandStatus.success.rawValue }
  if fixups & 16 != 0 { c.result0 = UInt64(layout.stagingSlotSize) }
  if fixups & 32 != 0 { c.status %= CommandStatus.highest + 1 }
  // A short coalesced run (2.4), else any word at all (mostly refused).
  c.following = fixups & 64 != 0 ? c.following % 4 : fixups & 128 != 0 ? c.following : 0
  view.postCompletion(c, at: slot & (layout.depth - 1))
}

let scratch = UnsafeMutableRawPointer.allocate(byteCount: 3 * 4096, alignment: 64)
scratch.initializeMemory(as: UInt8.self, repeating: 0xa5, count: 3 * 4096)

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let base = region.base
  base.initializeMemory(as: UInt8.self, repeating: 0, count: Int(layout.regionSize))
  let registers = RegisterBlock(base)

  // The registers a guest reads at open: any bytes, checked by the layout's reader.
  let header = input.take(Int(input.byte()))
  if let source = header.baseAddress { base.copyMemory(from: source, byteCount: header.count) }
  if let read = try? BARLayout(reading: registers, size: region.size) {
    invariant(
      read.regionSize <= UInt64(region.size),
      "a layout of \(read.regionSize) bytes was accepted for a BAR of \(region.size)")
  }
  _ = DeviceIdentity(reading: registers)

  // Then a device that looks right, serving nothing: the input answers for it.
  base.initializeMemory(as: UInt8.self, repeating: 0, count: Register.blockSize)
  registers.store(Register.magic, vgpuMagic)
  registers.store(Register.version, ProtocolVersion.packed)
  registers.store(Register.status, StatusRegister.ready.rawValue)
  layout.write(to: registers)
  let view = QueuePairView(base: base, layout: layout, index: 0)
  view.setState(.active)
  var qp = GuestQueuePair(
    view: view, registers: registers, layout: layout, base: base, timeoutNanoseconds: 100_000,
    deviceName: "fuzz")
  let flags = input.byte()
  qp.deviceExplainsFailures = flags & 1 != 0
  // Coalesced completions (2.4): the `following` word the input writes is
  // then read, its ids checked against those in flight.
  qp.acceptsCoalescedCompletions = flags & 2 != 0

  // The guest's ids and ring slots go up from 0; the input's fix-ups follow them.
  var nextSlot: UInt32 = 0
  var nextID: UInt16 = 0
  func prefill(_ count: Int, _ input: inout FuzzInput) {
    for _ in 0..<count {
      post(&input, view, slot: nextSlot, id: nextID, lap: nextSlot / layout.depth)
      nextSlot &+= 1
      nextID &+= 1
    }
  }
  prefill(Int(input.byte()) % Int(layout.depth), &input)

  var operations = 0
  while !input.isEmpty && operations < 32 {
    operations += 1
    let kind = input.byte()
    do throws(VGPUError) {
      switch kind % 8 {
      case 0:
        _ = try qp.execute(Command.Nop().entry, "nop")
      case 1:
        // Several in flight, collected in the order the input says.
        let n = Int(kind >> 3) % qp.capacity + 1
        var ids: [UInt16] = []
        for _ in 0..<n { ids.append(try qp.submit(Command.Nop().entry, "nop")) }
        qp.ring()
        if kind & 0x80 != 0 { ids.reverse() }
        for id in ids { _ = try qp.wait(for: id, "nop") }
      case 2:
        try qp.copyToDevice(0x1000, from: scratch, count: (Int(input.byte()) + 1) * 48)
      case 3:
        try qp.copyFromDevice(0x1000, into: scratch, count: (Int(input.byte()) + 1) * 48)
      case 4:
        _ = try qp.upload(UnsafeRawBufferPointer(start: scratch, count: (Int(input.byte()) + 1) * 40))
      case 5:
        // The device's own words, rewritten between operations.
        switch input.byte() % 3 {
        case 0: view.setFault(QueuePairFault(rawValue: input.integer(UInt32.self) % 4) ?? .none)
        case 1: registers.store(Register.status, input.integer(UInt32.self))
        default: registers.store(Register.progress, input.integer(UInt64.self))
        }
      default:
        prefill(Int(kind >> 3) % Int(layout.depth) + 1, &input)
      }
    } catch {
      // The only acceptable outcome of a hostile device, checked to say something.
      invariant(!error.description.isEmpty, "an error without a description")
    }
  }
  return 0
}
