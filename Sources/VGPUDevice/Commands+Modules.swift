import Glibc
import VGPUProtocol

/// A loaded module: the backend's, and where its variables live.
struct ModuleEntry {
  let module: any BackendModule
  /// The module's variables: placed by the device (owned by the loading
  /// queue pair) or by the backend's driver, recorded in the ledger either way.
  var variables: [PlacedVariable]
}

/// A kernel handle's target, and the module it came from (unloading the
/// module ends its functions, as cuModuleUnload does).
struct FunctionEntry {
  let function: any BackendFunction
  let module: UInt64
}

/// A module image loaded on a worker: the image (the guest's staging, which
/// it leaves alone until the completion, or an upload kept alive here) and
/// then the module, which the serving thread places.
final class ModuleLoadWork: BackendWork, @unchecked Sendable {
  let loader: any ModuleLoader
  let image: UnsafeRawBufferPointer
  let upload: UploadBuffer?
  var module: (any BackendModule)?

  init(loader: any ModuleLoader, image: UnsafeRawBufferPointer, upload: UploadBuffer?) {
    self.loader = loader
    self.image = image
    self.upload = upload
  }

  func finish(caller: BackendCaller, output: inout DeviceOutput) throws(BackendError) {
    module = try loader.load(image, for: caller)
  }

  /// A parse or a driver's JIT cannot be interrupted; it ends on its own.
  func cancel() {}
}

/// One process's device output, boxed so a launch reaches it without a
/// dictionary modify.
final class OutputBox {
  var output = DeviceOutput()
}

/// A module image arriving in chunks (`moduleUpload`). Anonymous memory, so
/// the pages no chunk wrote read as zeros and cost nothing.
final class UploadBuffer {
  let base: UnsafeMutableRawPointer
  let size: Int
  /// Bytes received, counted per chunk (overlaps count twice; only a sanity check).
  var received: UInt64 = 0

  init?(size: Int) {
    guard let p = mmap(nil, max(size, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
      p != MAP_FAILED
    else { return nil }
    base = p
    self.size = size
  }
  deinit { munmap(base, max(size, 1)) }
}

/// Modules, functions, variables, launches and the device output.
extension Executor {
  /// Uploads in progress, at most this many bytes in all: a guest cannot
  /// make the device hold more host memory than this for images.
  static let uploadBudget: UInt64 = 1 << 30

  func moduleUpload(_ c: Command.ModuleUpload, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    var handle = c.upload
    if handle == 0 {
      guard c.totalLength > 0, c.totalLength <= Command.ModuleUpload.maximumImageBytes else {
        throw Refusal(
          status: .invalidValue, detail: 5,
          message:
            "an image of \(c.totalLength) bytes; uploads take 1 byte to \(Command.ModuleUpload.maximumImageBytes >> 20) MiB"
        )
      }
      guard uploadBytes + c.totalLength <= Self.uploadBudget, let buffer = UploadBuffer(size: Int(c.totalLength))
      else {
        throw Refusal(
          status: .outOfMemory, detail: 5,
          message: "uploads in progress hold \(uploadBytes >> 20) MiB; load or drop them first")
      }
      uploadBytes += c.totalLength
      handle = uploads.insert(buffer, pid: pid, queuePair: qp)
    }
    let buffer = try uploads.value(handle, pid: pid, argument: 1)
    guard c.offset <= UInt64(buffer.size), c.length <= UInt64(buffer.size) - c.offset else {
      throw Refusal(
        status: .invalidValue, detail: 4,
        message: "chunk \(c.offset)..+\(c.length) lies outside the \(buffer.size)-byte image")
    }
    let staging = try stagingRange(c.staging, c.length, qp: qp, argument: 2)
    (buffer.base + Int(c.offset)).copyMemory(from: staging, byteCount: Int(c.length))
    buffer.received &+= c.length
    return CompletionEntry(status: .success, result0: c.length, result1: handle)
  }

  func moduleLoad(_ c: Command.ModuleLoad, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let image: UnsafeRawBufferPointer
    var upload: UploadBuffer? = nil
    if c.upload != 0 {
      let slot = try uploads.slot(c.upload, pid: pid, argument: 1)
      guard let buffer = uploads.slots[slot].value else { throw Refusal(status: .invalidHandle, detail: 1) }
      uploads.remove(at: slot)
      uploadBytes -= UInt64(buffer.size)
      guard buffer.received >= UInt64(buffer.size) else {
        throw Refusal(
          status: .invalidImage, detail: 1,
          message: "the upload received \(buffer.received) of its \(buffer.size) bytes; send every chunk before loading"
        )
      }
      upload = buffer
      image = UnsafeRawBufferPointer(start: buffer.base, count: buffer.size)
    } else {
      image = UnsafeRawBufferPointer(
        start: try stagingRange(c.staging, c.length, qp: qp, argument: 2), count: Int(c.length))
    }
    defer { withExtendedLifetime(upload) {} }
    let loader: any ModuleLoader
    do throws(BackendError) { loader = try backend.moduleLoader(for: caller(qp)) } catch { throw Refusal(error) }
    if workers != nil && image.count >= Self.inlineModuleBytes {
      // A big image may take seconds to parse or JIT: a worker loads it, and
      // the serving thread places it when it is done (`completeLoad`), so
      // the load holds up no other client.
      let work = ModuleLoadWork(loader: loader, image: image, upload: upload)
      return handOver(work, qp: qp, success: CompletionEntry(status: .success), then: work)
    }
    let module: any BackendModule
    do throws(BackendError) { module = try loader.load(image, for: caller(qp)) } catch { throw Refusal(error) }
    return try completeLoad(module, qp: qp)
  }

  /// Images smaller than this load on the serving thread (PTX parses at
  /// tens of MB/s: a millisecond or two), bigger ones on a worker.
  static let inlineModuleBytes = 64 << 10

  /// A loaded module's variables placed and its handle made: the end of
  /// moduleLoad, on the serving thread.
  func completeLoad(_ module: any BackendModule, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    var placed: [PlacedVariable] = []
    do throws(Refusal) {
      placed = try placeVariables(of: module, qp: qp)
    } catch {
      module.unload()
      throw error
    }
    countModuleLoad(qp)
    return CompletionEntry(
      status: .success, result0: modules.insert(ModuleEntry(module: module, variables: placed), pid: pid, queuePair: qp)
    )
  }

  /// Places the module's variables in device memory, owned by this queue
  /// pair (freed with it, or at unload), and initialises them from the image
  /// (whose initializers may hold the addresses just chosen).
  private func placeVariables(of module: any BackendModule, qp: Int) throws(Refusal) -> [PlacedVariable] {
    var placed: [PlacedVariable] = []
    for v in module.variables {
      // The allocator's 256 bytes cover every PTX alignment but absurd ones, which are capped.
      let wanted = UInt64(min(max(v.alignment, 1), 4096))
      let alignment = max(DeviceAllocator.granularity, 1 << (64 - (wanted - 1).leadingZeroBitCount))
      let e: AllocationLedger.Entry
      do throws(Refusal) {
        e = try place(UInt64(max(v.size, 1)), alignment: alignment, qp: qp, kind: .moduleVariable)
      } catch {
        forget(placed)
        throw Refusal(
          status: .outOfMemory, detail: 1, message: "no device memory for module variable '\(v.name)' (\(v.size) bytes)"
        )
      }
      placed.append(PlacedVariable(name: v.name, address: e.address, size: UInt64(v.size)))
      do throws(BackendError) {
        _ = try backend.fill(e.address, pattern: 0, width: 1, bytes: Int(e.requested), for: caller(qp))
      } catch {
        forget(placed)
        throw Refusal(error)
      }
    }
    module.bind(variableAddresses: placed.map(\.address))
    for (i, v) in placed.enumerated() {
      do throws(BackendError) {
        let bytes = try module.initializer(ofVariable: i)
        let n = min(bytes.count, Int(v.size))
        if n > 0 {
          let staged = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 16)
          defer { staged.deallocate() }
          bytes.withUnsafeBytes { staged.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
          _ = try backend.write(v.address, from: staged.baseAddress!, count: n, for: caller(qp))
        }
      } catch {
        forget(placed)
        throw Refusal(error)
      }
    }
    return placed
  }

  /// Frees module variables (the device's) or forgets them (a driver's, which go with the module).
  private func forget(_ variables: [PlacedVariable]) {
    for v in variables {
      guard let e = ledger.remove(startingAt: v.address) else { continue }
      if e.kind != .driverVariable { backend.free(e.address, size: e.size, for: caller(Int(e.owner))) }
      countFree(e.size, owner: Int(e.owner))
    }
  }

  func moduleUnload(_ c: Command.ModuleUnload, qp: Int) throws(Refusal) -> CompletionEntry {
    let slot = try modules.slot(c.module, pid: served[qp].pid, argument: 1)
    if let entry = modules.slots[slot].value {
      forget(entry.variables)
      entry.module.unload()
    }
    modules.remove(at: slot)
    for i in functions.slots.indices where functions.slots[i].value?.module == c.module { functions.remove(at: i) }
    return CompletionEntry(status: .success)
  }

  /// Names are at most 4096 bytes (C++ mangled names run long); with room
  /// at `reply`, the kernel's ``FunctionInfo`` and parameter slots go there
  /// (feature `functionInfo`).
  func getFunction(_ c: Command.GetFunction, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let module = try modules.value(c.module, pid: pid, argument: 1).module
    let name = try stagedName(c.name, c.nameLength, qp: qp)
    let function: any BackendFunction
    do throws(BackendError) { function = try module.function(named: name) } catch { throw Refusal(error) }
    if c.replyCapacity > 0 {
      let slots = function.slots
      let needed = UInt64(FunctionInfo.size(parameters: slots.count))
      guard c.replyCapacity >= needed else { throw Refusal(status: .invalidValue, detail: 5, result0: needed) }
      let reply = try stagingRange(c.reply, needed, qp: qp, argument: 4)
      ParameterLayout.write(function.info, slots, to: reply)
    }
    let handle = functions.insert(FunctionEntry(function: function, module: c.module), pid: pid, queuePair: qp)
    return Command.GetFunction.Reply(function: handle, parameterBytes: UInt64(function.info.parameterBytes)).completion
  }

  func moduleGlobal(_ c: Command.ModuleGlobal, qp: Int) throws(Refusal) -> CompletionEntry {
    let slot = try modules.slot(c.module, pid: served[qp].pid, argument: 1)
    guard let entry = modules.slots[slot].value else { throw Refusal(status: .invalidHandle, detail: 1) }
    let name = try stagedName(c.name, c.nameLength, qp: qp)
    if let v = entry.variables.first(where: { $0.name == name }) {
      return Command.ModuleGlobal.Reply(address: v.address, size: v.size).completion
    }
    // One the backend's driver placed: recorded at its first lookup, owned
    // by the pair that loaded the module, so that copies may name it.
    let found: PlacedVariable?
    do throws(BackendError) { found = try entry.module.global(named: name) } catch { throw Refusal(error) }
    guard let v = found else {
      throw Refusal(status: .notFound, detail: 2, message: "no variable '\(name)' in this module")
    }
    let owner = modules.slots[slot].queuePair
    let e = AllocationLedger.Entry(
      address: v.address, size: max(v.size, 1), requested: max(v.size, 1), owner: UInt32(owner), kind: .driverVariable)
    guard ledger.insert(e) else {
      throw Refusal(
        status: .invalidImage, detail: 2,
        message: "module variable '\(name)' at 0x\(String(v.address, radix: 16)) overlaps live device memory")
    }
    countAllocation(e.size, owner: owner)
    modules.slots[slot].value?.variables.append(v)
    return Command.ModuleGlobal.Reply(address: v.address, size: v.size).completion
  }

  func moduleKernels(_ c: Command.ModuleKernels, qp: Int) throws(Refusal) -> CompletionEntry {
    let names = try modules.value(c.module, pid: served[qp].pid, argument: 1).module.kernelNames
    let staging = try stagingRange(c.staging, c.capacity, qp: qp, argument: 2)
    var written = 0
    for name in names {
      let bytes = name.utf8
      guard written + bytes.count + 1 <= Int(c.capacity) else { break }
      UnsafeMutableRawBufferPointer(start: staging + written, count: bytes.count).copyBytes(from: bytes)
      staging.storeBytes(of: 0, toByteOffset: written + bytes.count, as: UInt8.self)
      written += bytes.count + 1
    }
    return Command.ModuleKernels.Reply(count: UInt64(names.count), written: UInt64(written)).completion
  }

  private func stagedName(_ address: UInt64, _ length: UInt64, qp: Int) throws(Refusal) -> String {
    guard length > 0, length <= 4096 else { throw Refusal(status: .invalidValue, detail: 3) }
    let staging = try stagingRange(address, length, qp: qp, argument: 2)
    return String(decoding: UnsafeRawBufferPointer(start: staging, count: Int(length)), as: UTF8.self)
  }

  func launch(_ c: Command.Launch, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let slot = try functions.slot(c.function, pid: pid, argument: 1)
    guard let function = functions.slots[slot].value?.function else { throw Refusal(status: .invalidHandle, detail: 1) }
    if c.stream != 0 { _ = try streams.slot(c.stream, pid: pid, argument: 7) }
    let grid = c.grid
    let block = c.block
    // CUDA limits (CUDA C++ Programming Guide, "Compute Capabilities", table 21):
    // grid x < 2^31, y and z < 65536; at most 1024 threads per block, block z ≤ 64.
    guard grid.x >= 1, grid.x < 1 << 31, grid.y >= 1, grid.y < 65536, grid.z >= 1, grid.z < 65536 else {
      throw Refusal(status: .invalidValue, detail: 2)
    }
    // Each dimension is bounded first, so the product below cannot overflow.
    guard (1...1024).contains(block.x), (1...1024).contains(block.y), (1...64).contains(block.z),
      block.x * block.y * block.z <= 1024
    else {
      throw Refusal(status: .invalidValue, detail: 3)
    }
    guard c.sharedBytes <= 228 << 10 else { throw Refusal(status: .invalidValue, detail: 5) }  // H100: 228 KiB per SM
    let length = UInt64(c.parameterLength)
    let expected = UInt64(function.info.parameterBytes)
    guard length == expected else {
      throw Refusal(status: .invalidParameters, detail: 5, result0: expected, result1: length)
    }
    let parameters = try stagingRange(c.parameters, length, qp: qp, argument: 6)
    let geometry = KernelGeometry(grid: grid, block: block, sharedBytes: c.sharedBytes, cooperative: c.cooperative)
    let arguments = UnsafeRawBufferPointer(start: parameters, count: Int(length))
    // A box per process, found with the dictionary's getter: its modify
    // accessor (and a default value's closure) would allocate per launch.
    let box: OutputBox
    if let b = outputs[pid] {
      box = b
    } else {
      box = OutputBox()
      outputs[pid] = box
    }
    // A launch starts here, on the serving thread: a small kernel completes
    // without the cost of a hand-off. One that runs past the slice goes on
    // on a worker, so it holds up no other client (without workers, a device
    // driven by hand, it runs to the end here).
    let pending: (any BackendWork)?
    do throws(BackendError) {
      pending = try function.launch(
        geometry, parameters: arguments, caller: caller(qp), output: &box.output,
        inlineSlice: workers == nil ? .max : inlineSlice)
    } catch {
      throw Refusal(error)
    }
    if let pending { return handOver(pending, qp: qp, isLaunch: true, success: CompletionEntry(status: .success)) }
    countLaunch(qp)
    return CompletionEntry(status: .success)
  }

  func output(_ c: Command.Output, qp: Int) throws(Refusal) -> CompletionEntry {
    let pid = served[qp].pid
    let staging = try stagingRange(c.staging, c.capacity, qp: qp, argument: 2)
    var held = DeviceOutput()
    backend.takeOutput(pid: pid, into: &held)
    appendOutput(held, pid: pid)
    guard let box = outputs[pid] else { return Command.Output.Reply(written: 0, remaining: 0, dropped: 0).completion }
    let (written, dropped) = box.output.take(into: staging, capacity: Int(c.capacity))
    return Command.Output.Reply(
      written: UInt64(written), remaining: UInt64(box.output.count), dropped: UInt32(clamping: dropped)
    ).completion
  }

  func errorText(_ c: Command.ErrorText, qp: Int) throws(Refusal) -> CompletionEntry {
    let staging = try stagingRange(c.staging, c.capacity, qp: qp, argument: 2)
    let text = served[qp].errorText.utf8
    let n = min(text.count, Int(c.capacity))
    UnsafeMutableRawBufferPointer(start: staging, count: n).copyBytes(from: text.prefix(n))
    return CompletionEntry(status: .success, result0: UInt64(n))
  }
}
