import CSupport
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

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
    return try write(c.device, from: try stagingRange(c.staging, c.length, qp: qp, argument: 2), c.length, qp)
  }

  func copyFromDevice(_ c: Command.CopyFromDevice, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.device, c.length, pid: served[qp].pid, argument: 1)
    let destination = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    return try read(c.device, into: destination, c.length, qp, streaming: c.streaming)
  }

  /// Host bytes (checked: staging or shared memory) → device memory (checked).
  @inline(__always)
  private func write(_ device: UInt64, from source: UnsafeRawPointer, _ length: UInt64, _ qp: Int) throws(Refusal)
    -> CompletionEntry
  {
    countCopy(length, qp, .toDevice)
    do throws(BackendError) {
      return completion(try backend.write(device, from: source, count: Int(length), for: caller(qp)), qp, length)
    } catch { throw Refusal(error) }
  }

  /// Device memory (checked) → host bytes (checked: staging or shared memory).
  @inline(__always)
  private func read(
    _ device: UInt64, into destination: UnsafeMutableRawPointer, _ length: UInt64, _ qp: Int, streaming: Bool = false
  ) throws(Refusal) -> CompletionEntry {
    countCopy(length, qp, .fromDevice)
    do throws(BackendError) {
      let work = try backend.read(
        device, into: destination, count: Int(length), streaming: streaming, for: caller(qp))
      return completion(work, qp, length)
    } catch { throw Refusal(error) }
  }

  /// Maps a memfd of the submitting process (2.4): taken from it by its
  /// descriptor number, checked to be sealed against resizing and long
  /// enough, then known by the address where the process mapped it.
  func hostMemoryShare(_ c: Command.HostMemoryShare, qp: Int) throws(Refusal) -> CompletionEntry {
    guard offeredFeatures.contains(.sharedHostMemory) else {
      throw Refusal(
        status: .notSupported, detail: 0,
        message: "this device cannot take its clients' memory (only a host process's BAR of its own can, 2.4)")
    }
    let pid = served[qp].pid
    let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
    guard c.length > 0, c.length <= 1 << 46, c.address % page == 0, c.address <= UInt64.max - c.length else {
      throw Refusal(status: .invalidValue, detail: c.length == 0 || c.length > 1 << 46 ? 3 : 2)
    }
    guard !sharedHost.overlaps(pid: pid, start: c.address, length: c.length) else {
      throw Refusal(status: .invalidValue, detail: 2, message: "the range overlaps one this process shared before")
    }
    guard sharedHost.count(pid: pid) < SharedHostMemory.perProcess else {
      throw Refusal(
        status: .outOfMemory, detail: 1,
        message: "process \(pid) shares \(SharedHostMemory.perProcess) ranges already, the most one process may")
    }
    let fd = try takeDescriptor(Int32(bitPattern: c.descriptor), from: pid, qp: qp)
    defer { close(fd) }
    var st = stat()
    let seals = vgpu_memfd_seals(fd)
    let needed = vgpu_memfd_size_seals()
    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, seals >= 0, seals & needed == needed,
      UInt64(st.st_size) >= c.length
    else {
      throw Refusal(
        status: .invalidValue, detail: 1,
        message:
          "descriptor \(c.descriptor) of process \(pid) is not a memfd sealed against resizing (F_SEAL_SHRINK | F_SEAL_GROW) of at least \(c.length) bytes (\(st.st_size) bytes, seals 0x\(String(max(seals, 0), radix: 16)))"
      )
    }
    let p = mmap(nil, Int(c.length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let p, p != MAP_FAILED else {
      throw Refusal(
        status: .outOfMemory, detail: 3,
        message: "mmap of \(c.length) bytes of process \(pid)'s memfd failed: \(String(cString: strerror(errno)))")
    }
    sharedHost.insert(.init(pid: pid, owner: qp, start: c.address, length: c.length, mapping: p))
    return CompletionEntry(status: .success, result0: c.length)
  }

  /// Unmaps a range the submitting process shared (2.4).
  func hostMemoryUnshare(_ c: Command.HostMemoryUnshare, qp: Int) throws(Refusal) -> CompletionEntry {
    guard let length = sharedHost.remove(pid: served[qp].pid, start: c.address) else {
      throw Refusal(status: .invalidAddress, detail: 2, message: unshared(c.address, 1))
    }
    return CompletionEntry(status: .success, result0: length)
  }

  /// Descriptor `number` of process `pid`, duplicated here (pidfd_getfd(2)):
  /// only of the process that claimed `qp`, checked through its start time
  /// once the pidfd pins it, so that a reused pid is never another's.
  private func takeDescriptor(_ number: Int32, from pid: UInt32, qp: Int) throws(Refusal) -> Int32 {
    let pidfd = vgpu_pidfd_open(Int32(bitPattern: pid))
    guard pidfd >= 0 else {
      throw Refusal(
        status: .notSupported, detail: 1,
        message:
          "pidfd_open(\(pid)) failed: \(String(cString: strerror(-pidfd))) (Linux 5.6 and a visible pid are needed)")
    }
    defer { close(pidfd) }
    guard served[qp].ownerStart == 0 || ProcessLiveness.startTime(pid) == served[qp].ownerStart else {
      throw Refusal(
        status: .permissionDenied, detail: 1, message: "process \(pid) is not the one that claimed this pair")
    }
    let fd = vgpu_pidfd_getfd(pidfd, number)
    guard fd >= 0 else {
      let why =
        -fd == EBADF
        ? "descriptor \(number) is not open in process \(pid)"
        : -fd == EPERM
          ? "the mediator may not take process \(pid)'s descriptors (pidfd_getfd needs ptrace access: run vgpu-mediator as root, or with CAP_SYS_PTRACE, or kernel.yama.ptrace_scope 0)"
          : "pidfd_getfd(\(pid), \(number)) failed: \(String(cString: strerror(-fd)))"
      throw Refusal(status: -fd == EBADF ? .invalidValue : .permissionDenied, detail: 1, message: why)
    }
    return fd
  }

  /// Host memory → device memory, one copy (2.4): the source lies in a range
  /// the submitting process shared.
  func copyFromHost(_ c: Command.CopyFromHost, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.device, c.length, pid: served[qp].pid, argument: 1)
    return try write(c.device, from: try sharedRange(c.host, c.length, qp: qp), c.length, qp)
  }

  /// Device memory → host memory, one copy (2.4).
  func copyToHost(_ c: Command.CopyToHost, qp: Int) throws(Refusal) -> CompletionEntry {
    try deviceRange(c.device, c.length, pid: served[qp].pid, argument: 1)
    return try read(c.device, into: try sharedRange(c.host, c.length, qp: qp), c.length, qp, streaming: c.streaming)
  }

  /// The mapped pages behind `[address, address + length)` of the submitting
  /// process, inside one range it shared (argument 2 of both copies).
  @inline(__always)
  private func sharedRange(_ address: UInt64, _ length: UInt64, qp: Int) throws(Refusal) -> UnsafeMutableRawPointer {
    guard let p = sharedHost.pointer(pid: served[qp].pid, address: address, length: length) else {
      throw Refusal(status: .invalidAddress, detail: 2, message: unshared(address, length))
    }
    return p
  }

  private func unshared(_ address: UInt64, _ length: UInt64) -> String {
    "host bytes 0x\(String(address, radix: 16)) + \(length) are not inside one range this process shared (hostMemoryShare)"
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

/// The page-locked window (2.4, feature `hostWindow`): ranges of BAR bytes a
/// process's staging arguments may name, so its copies are one copy.
extension Executor {
  func windowAlloc(_ c: Command.WindowAlloc, qp: Int) throws(Refusal) -> CompletionEntry {
    guard hostWindow != nil else {
      throw Refusal(
        status: .notSupported, detail: 0,
        message:
          "this BAR has no page-locked window (a VM's mediator makes one with --host-window SIZE or --vm-bar ...,window=SIZE)"
      )
    }
    guard c.length > 0 else { throw Refusal(status: .invalidValue, detail: 1) }
    let page = HostWindow.page
    let largest = hostWindow!.largestFree
    guard c.length <= hostWindow!.size else { throw windowFull(c.length, largest: largest) }
    let rounded = (c.length + page - 1) & ~(page - 1)
    let range: DeviceAllocator.Allocation
    do throws(AllocationError) {
      range = try hostWindow!.ranges.allocate(rounded, alignment: page, owner: UInt32(qp))
    } catch { throw windowFull(c.length, largest: largest) }
    // Scrubbed when freed (and the window when the device started): zero now.
    return Command.WindowAlloc.Reply(offset: hostWindow!.offset + range.offset, length: range.size).completion
  }

  private func windowFull(_ length: UInt64, largest: UInt64) -> Refusal {
    Refusal(
      status: .outOfMemory, detail: 1, result0: largest, result1: largest,
      message:
        "\(length) bytes of page-locked window asked for; the largest free range is \(largest) of its \(hostWindow!.size) bytes: free page-locked memory, or give the mediator a larger --host-window"
    )
  }

  func windowFree(_ c: Command.WindowFree, qp: Int) throws(Refusal) -> CompletionEntry {
    guard let e = hostWindow?.range(startingAt: c.offset) else {
      throw Refusal(
        status: .invalidAddress, detail: 1,
        message: "BAR offset 0x\(String(c.offset, radix: 16)) is not the start of a live page-locked window range")
    }
    guard served[Int(e.owner)].pid == served[qp].pid else {
      throw Refusal(
        status: .permissionDenied, detail: 1,
        message: "the page-locked window range at 0x\(String(c.offset, radix: 16)) belongs to another process")
    }
    _ = try? hostWindow!.ranges.free(offset: e.address, owner: nil)
    HostWindow.scrub(base, c.offset, e.size)
    return CompletionEntry(status: .success, result0: e.size)
  }

  /// Frees and scrubs every window range queue pair `qp` allocated (its release).
  func releaseWindowRanges(ownedBy qp: Int) {
    guard let window = hostWindow else { return }
    var any = false
    for e in window.ranges.ledger.entries where e.owner == UInt32(qp) {
      HostWindow.scrub(base, window.offset + e.address, e.size)
      any = true
    }
    if any { _ = hostWindow!.ranges.freeAll(owner: UInt32(qp)) }
  }
}
