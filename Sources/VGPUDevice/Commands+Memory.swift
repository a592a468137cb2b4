import CSupport
import VGPUProtocol

/// Memory commands: memoryInfo, alloc, free, the copies, memset. The
/// executor checks every address against its ledger and the memory limit;
/// the backend places memory and moves the bytes.
extension Executor {
  func memoryInfo() -> CompletionEntry {
    Command.MemoryInfo.Reply(free: memoryFree, total: memoryLimit).completion
  }

  func alloc(_ c: Command.Alloc, qp: Int) throws(Refusal) -> CompletionEntry {
    let alignment = c.alignment == 0 ? DeviceAllocator.granularity : c.alignment
    let e = try place(c.length, alignment: alignment, qp: qp, kind: .allocation)
    return Command.Alloc.Reply(address: e.address, reserved: e.size).completion
  }

  /// Places `length` bytes for queue pair `qp` within the memory limit and
  /// records them in the ledger.
  func place(_ length: UInt64, alignment: UInt64, qp: Int, kind: AllocationLedger.Kind) throws(Refusal)
    -> AllocationLedger.Entry
  {
    guard length > 0 else { throw Refusal(status: .invalidValue, detail: 1) }
    guard alignment >= DeviceAllocator.granularity, alignment & (alignment - 1) == 0, alignment <= 1 << 30 else {
      throw Refusal(status: .invalidValue, detail: 2)
    }
    // cudaMalloc's 256-byte granularity (DeviceAllocator.granularity), whichever backend places it.
    let (padded, overflow) = length.addingReportingOverflow(DeviceAllocator.granularity - 1)
    let size = padded & ~(DeviceAllocator.granularity - 1)
    let free = allocatable
    guard !overflow, size <= free else {
      throw Refusal(
        status: .outOfMemory, detail: 1, result0: free, result1: free, message: outOfMemory(length, free: free))
    }
    let address: UInt64
    do throws(BackendError) { address = try backend.allocate(size, alignment: alignment, for: caller(qp)) } catch {
      throw Refusal(error)
    }
    let e = AllocationLedger.Entry(address: address, size: size, requested: length, owner: UInt32(qp), kind: kind)
    guard ledger.insert(e) else {
      backend.free(address, size: size, for: caller(qp))
      throw Refusal(
        status: .launchFailed, detail: 1,
        message: "the backend placed \(size) bytes at 0x\(String(address, radix: 16)), over live memory: a device bug")
    }
    countAllocation(size, owner: qp)
    return e
  }

  /// Why `length` bytes do not fit: the device's limit, this BAR's own, or
  /// the memory this BAR shares with others (a VM whose own limit has room).
  func outOfMemory(_ length: UInt64, free: UInt64) -> String {
    guard ownMemoryLimit != nil else {
      return "\(length) bytes asked for; \(free) of this device's \(memoryLimit) bytes are free"
    }
    if memoryFree <= sharedFree {
      return
        "\(length) bytes asked for; \(free) of this VM's own limit of \(memoryLimit) bytes are free (the mediator's --vm-bar memory=)"
    }
    return
      "\(length) bytes asked for; this VM's own limit leaves \(memoryFree) bytes, but the device memory it shares with the mediator's other VMs (--memory, \(shared.memoryLimit) bytes) has \(free) free"
  }

  /// Frees an allocation of the submitting process, made through any of its queue pairs.
  func free(_ c: Command.Free, qp: Int) throws(Refusal) -> CompletionEntry {
    guard let e = ledger.entry(containing: c.address, length: 1), e.address == c.address, e.kind == .allocation else {
      throw Refusal(status: .invalidAddress, detail: 1)
    }
    guard served[Int(e.owner)].pid == served[qp].pid else { throw Refusal(status: .permissionDenied, detail: 1) }
    ledger.remove(startingAt: e.address)
    backend.free(e.address, size: e.size, for: caller(qp))
    countFree(e.size, owner: Int(e.owner))
    return CompletionEntry(status: .success, result0: e.size)
  }

  func copyToDevice(_ c: Command.CopyToDevice, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.device, c.length, pid: served[qp].pid, argument: 1)
    let staging = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    countCopy(c.length, qp, .toDevice)
    do throws(BackendError) {
      return completion(try backend.write(c.device, from: staging, count: Int(c.length), for: caller(qp)), qp, c.length)
    } catch { throw Refusal(error) }
  }

  func copyFromDevice(_ c: Command.CopyFromDevice, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.device, c.length, pid: served[qp].pid, argument: 1)
    let staging = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    countCopy(c.length, qp, .fromDevice)
    do throws(BackendError) {
      return completion(try backend.read(c.device, into: staging, count: Int(c.length), for: caller(qp)), qp, c.length)
    } catch { throw Refusal(error) }
  }

  func copyDeviceToDevice(_ c: Command.CopyDeviceToDevice, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.destination, c.length, pid: served[qp].pid, argument: 1)
    try deviceRange(c.source, c.length, pid: served[qp].pid, argument: 2)
    countCopy(c.length, qp, .withinDevice)
    do throws(BackendError) {
      let work = try backend.copy(to: c.destination, from: c.source, count: Int(c.length), for: caller(qp))
      return completion(work, qp, c.length)
    } catch { throw Refusal(error) }
  }

  func memset(_ c: Command.Memset, qp: Int) throws(Refusal) -> CompletionEntry {
    let width = c.elementSize
    guard width == 1 || width == 2 || width == 4 else { throw Refusal(status: .invalidValue, detail: 3) }
    let (bytes, overflow) = c.count.multipliedReportingOverflow(by: width)
    guard !overflow else { throw Refusal(status: .invalidValue, detail: 4) }
    try deviceRange(c.address, bytes, pid: served[qp].pid, argument: 1)
    do throws(BackendError) {
      let work = try backend.fill(c.address, pattern: c.value, width: Int(width), bytes: Int(bytes), for: caller(qp))
      return completion(work, qp, bytes)
    } catch { throw Refusal(error) }
  }

  /// The completion of a command whose backend call returned `work`: at
  /// once when it is done (nil), else when a worker has finished it.
  @inline(__always)
  func completion(_ work: (any BackendWork)?, _ qp: Int, _ result0: UInt64) -> CompletionEntry {
    let done = CompletionEntry(status: .success, result0: result0)
    guard let work else { return done }
    return handOver(work, qp: qp, success: done)
  }

  /// Bumps the progress register: "still working on your command".
  @inline(__always) func tick() {
    progress &+= 1
    registers.store(Register.progress, progress)
  }
}
