// device-commands: the reference device's command stream as a hostile guest
// writes it. The BAR is in memory and the device is served by hand
// (`servePass`, no threads), so a run is deterministic. The input is a
// sequence of operations, each one byte of kind and then its operands:
// submission entries (64 bytes, with an optional fix-up that makes the
// opcode a real one) rung in on a pair's doorbell, stores of any value to
// the lifecycle words (state, owner pid, fault, waiting flag), the doorbells,
// control and status, bytes into a pair's staging slots, completions taken
// (or not) and passes of the device.
//
// After the sequence every pair is closed: the device must hand all its
// memory back (no leaked or double-counted allocation, no underflow).
//
// Speed: the BAR, the 16 MiB device-memory reservation and the PTX backend
// are made once (mapping and faulting them in was most of an input's time);
// each input gets a fresh ReferenceDevice over them, so that no state of an
// earlier input (handles, counters, registers) reaches the next one. What
// outlives an input is put back as new: the BAR zeroed, device memory
// discarded (reads as zero again), the backend's allocator checked empty.
// VGPU_FUZZ_FRESH_DEVICE=1 makes all three anew per input instead, to tell
// a finding that needs an earlier input's leftovers from one that does not.
import DeviceAccess
import FuzzSupport
import VGPUProtocol

@testable import VGPUDevice

#if canImport(Glibc)
  import Glibc
#endif

let pairs = 4
let layout = BARLayout(queuePairs: UInt32(pairs), depth: 8, stagingSlotSize: 4096, slotsPerQueue: 2)

/// One past the highest opcode the protocol defines, for the fix-up that picks a real one.
let opcodeCount = Opcode.allCases.map(\.rawValue).max()! + 1

let configuration: ReferenceDeviceConfiguration = {
  var config = ReferenceDeviceConfiguration()
  config.layout = layout
  config.memorySize = 16 << 20
  // An endless kernel ends as launchTimeout after this many thread-instructions.
  config.kernelInstructionBudget = 100_000
  // Pids in the input mean nothing on this host: never look them up in /proc.
  // (So no host memory is lent: hostMemoryShare is refused notSupported.)
  config.ownersAreLocalProcesses = false
  // A page-locked window (2.4) after the layout: windowAlloc, windowFree and
  // staging arguments that name it are fuzzed too.
  config.hostWindow = 64 << 10
  return config
}()

/// What every input's device stands on: the in-memory BAR and the backend with its device memory.
struct Fixture {
  let region: MappedRegion
  let shared: SharedExecution
  init() {
    do {
      region = try MappedRegion.anonymous(size: Int(configuration.hostWindowOffset + configuration.hostWindow))
      shared = try SharedExecution(configuration: configuration)
    } catch {
      fatalError(
        "fuzz set-up: no BAR of \(layout.regionSize) bytes or no device memory of \(configuration.memorySize): \(error)"
      )
    }
  }
}

let freshPerInput = getenv("VGPU_FUZZ_FRESH_DEVICE").map { String(cString: $0) == "1" } ?? false
nonisolated(unsafe) var fixture: Fixture?

func makeDevice() -> ReferenceDevice {
  if fixture == nil || freshPerInput { fixture = Fixture() }
  let fixture = fixture!
  // A new BAR is zero-filled: so is this one before the device lays it out.
  fixture.region.base.initializeMemory(as: UInt8.self, repeating: 0, count: fixture.region.size)
  do { return try ReferenceDevice(configuration: configuration, region: fixture.region, sharing: fixture.shared) } catch
  {
    fatalError("fuzz set-up: the reference device did not start: \(error)")
  }
}

/// Checks that the backend holds nothing any more and puts its device memory back as new.
func checkAndClearBackend() {
  let shared = fixture!.shared
  let (inUse, _) = shared.memoryInUse
  invariant(inUse == 0, "\(inUse) bytes still counted in use by the shared backend after every queue pair was closed")
  guard let backend = shared.backend as? PTXBackend else { return }
  let allocator = backend.allocator
  invariant(
    allocator.liveAllocations == 0 && allocator.largestFreeBlock == allocator.capacity,
    "the backend's allocator holds \(allocator.liveAllocations) allocations (largest free block \(allocator.largestFreeBlock) of \(allocator.capacity)) after every queue pair was closed"
  )
  // Freed memory is discarded in whole pages only: zero the rest as a new reservation would be.
  backend.memory.discard(offset: 0, length: backend.memory.size)
}

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let device = makeDevice()
  let base = device.region.base
  let registers = RegisterBlock(base)
  let views = (0..<pairs).map { QueuePairView(base: base, layout: layout, index: $0) }
  var tails = [SubmissionCursor](repeating: SubmissionCursor(depth: layout.depth), count: pairs)
  var completions = [CompletionCursor](repeating: CompletionCursor(depth: layout.depth), count: pairs)
  var operations = 0

  while !input.isEmpty && operations < 256 {
    operations += 1
    let kind = input.byte()
    let qp = Int(kind >> 4) % pairs
    let view = views[qp]
    switch kind & 0x0f {
    case 0, 1, 2:
      // A submission entry (more often than anything else), rung in at once.
      let fixup = input.byte()
      var raw = [UInt8](repeating: 0, count: 64)
      let bytes = input.take(64)
      for i in 0..<bytes.count { raw[i] = bytes[i] }
      if fixup & 1 != 0 { raw[0] %= opcodeCount }
      // Point a staging word at this pair's own staging area, as a well-behaved guest would.
      if fixup & 2 != 0 {
        let word = 8 + 8 * Int(fixup >> 2 & 7) % 56
        withUnsafeBytes(of: (layout.staging(qp) + UInt64(raw[1]) * 16).littleEndian) {
          for i in 0..<8 { raw[word + i] = $0[i] }
        }
      }
      let entry = raw.withUnsafeBytes { $0.loadUnaligned(as: SubmissionEntry.self) }
      tails[qp].push(entry, into: view)
      view.ringSubmission(tail: tails[qp].index)
    case 3:
      // Claim the way a guest does (pid written after the state), or with any pid.
      _ = view.exchangeState(from: .free, to: .claiming)
      view.setOwnerPID(input.integer(UInt32.self) | (kind & 0x80 != 0 ? 0 : 1))
      tails[qp] = SubmissionCursor(depth: layout.depth)
      completions[qp] = CompletionCursor(depth: layout.depth)
    case 4:
      QueuePairClaim.release(view)
    case 5:
      // Any value into a lifecycle word of the pair.
      let value = input.integer(UInt32.self)
      let word = [
        QueuePairBlock.state, QueuePairBlock.ownerPID, QueuePairBlock.guestWaiting, QueuePairBlock.fault,
        QueuePairBlock.completionWake,
      ][Int(input.byte()) % 5]
      (view.block + word).storeBytes(of: value, as: UInt32.self)
    case 6:
      // Any value into a doorbell: out of range must fault the pair, not the device.
      let value = input.integer(UInt32.self)
      if kind & 0x80 != 0 { view.ringCompletion(head: value) } else { view.ringSubmission(tail: value) }
    case 7:
      registers.store(Register.control, input.integer(UInt32.self))
    case 8:
      registers.store(Register.status, input.integer(UInt32.self))
    case 9:
      // Bytes into the pair's staging area (module images, copy data).
      let offset = Int(input.integer(UInt16.self)) % Int(layout.stagingPerQueue)
      let length = min(Int(input.byte()) * 4, Int(layout.stagingPerQueue) - offset)
      let bytes = input.take(length)
      if let source = bytes.baseAddress {
        (base + Int(layout.staging(qp)) + offset).copyMemory(from: source, byteCount: bytes.count)
      }
    case 10:
      // Take the completions posted so far and acknowledge them.
      while completions[qp].take(from: view) != nil {}
      view.ringCompletion(head: completions[qp].index)
    default:
      device.servePass(quick: kind & 0x80 != 0)
    }
  }

  // Serve what is left, then close every pair: all device memory must come back.
  for _ in 0..<4 { device.servePass() }
  let (allocated, total) = device.memoryInUse
  invariant(allocated <= total, "device memory in use \(allocated) exceeds its size \(total)")
  registers.store(Register.status, StatusRegister.ready.rawValue)
  registers.store(Register.control, ControlRequest.none.rawValue)
  for view in views {
    view.setFault(.none)
    if view.state != QueuePairState.free.rawValue { QueuePairClaim.release(view) }
  }
  for _ in 0..<4 { device.servePass() }
  let after = device.memoryInUse
  invariant(
    after.allocated == 0,
    "\(after.allocated) bytes of device memory still allocated after every queue pair was closed (before: \(allocated))"
  )
  checkAndClearBackend()
  return 0
}
