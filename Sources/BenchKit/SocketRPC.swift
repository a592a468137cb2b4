import CSupport
import DeviceAccess
import Foundation
import VGPU
import VGPUDevice
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

/// The alternative a user would otherwise pick: API remoting as rCUDA,
/// GVirtuS and Cricket do it, the same commands as request/response over a
/// Unix stream socket.
///
/// Requests are the 64-byte submission entries of docs/PROTOCOL.md; answers
/// the 32-byte completions the device wrote. Bulk data travels inline:
/// `copyToDevice` (a0 destination, a2 length) is followed by its bytes,
/// `copyFromDevice`'s completion by the bytes read; `moduleLoad`,
/// `getFunction` and `launch` carry their image, name or parameters after the
/// request (length in a2; for a launch in a4's high half). The server runs
/// every command on an in-process reference device (the same executor as the
/// mediator), driven from the connection's thread with no extra hop, and
/// receives copies straight into its staging memory, as a server would into
/// pinned memory. Made as fast as it honestly can be: 4 MiB socket buffers,
/// requests batched per read and answers per write, one thread per client.
public enum SocketRPC {
  /// Device memory of the server's device (only touched pages cost RAM).
  static let memory: UInt64 = 16 << 30
  static let slotSize: UInt32 = 1 << 20
  static let socketBuffer: Int32 = 4 << 20

  /// Serves `path` until the process is killed; one thread per connection.
  public static func serve(_ path: String, ready: () -> Void) throws -> Never {
    var config = ReferenceDeviceConfiguration()
    config.memorySize = memory
    config.layout = BARLayout(queuePairs: 4, depth: 256, stagingSlotSize: slotSize, slotsPerQueue: 1)
    let device: ReferenceDevice
    do { device = try ReferenceDevice(configuration: config) } catch { throw BenchError("socket server: \(error)") }
    unlink(path)
    let listener = vgpu_path_listen(path)
    guard listener >= 0 else { throw BenchError("cannot listen on \(path): \(String(cString: strerror(errno)))") }
    ready()
    var next = 0
    while true {
      let fd = accept(listener, nil, nil)
      if fd < 0 { continue }
      tune(fd)
      let index = next % Int(config.layout.queuePairs)
      next += 1
      let connection = Connection(fd: fd, device: device, index: index)
      if startThread(detached: true, { connection.run() }) == nil { close(fd) }
    }
  }

  static func tune(_ fd: Int32) {
    var size = socketBuffer
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
  }

  /// Commands whose whole request is the entry: batched into one device pass.
  static func isSimple(_ opcode: UInt8) -> Bool {
    switch Opcode(rawValue: opcode) {
    case .copyToDevice, .copyFromDevice, .moduleLoad, .getFunction, .launch, .statistics, .processes, nil: false
    default: true
    }
  }

  final class Connection: @unchecked Sendable {
    let fd: Int32
    let device: ReferenceDevice
    let index: Int
    init(fd: Int32, device: ReferenceDevice, index: Int) {
      self.fd = fd
      self.device = device
      self.index = index
    }

    func run() {
      defer { close(fd) }
      // The first free queue pair from `index` on (an earlier client's may still be open).
      let pairs = Int(device.layout.queuePairs)
      for i in 0..<pairs {
        let qp = (index + i) % pairs
        guard var q = try? DirectQueue(device: device, index: qp) else { continue }
        defer { QueuePairView(base: device.region.base, layout: device.layout, index: qp).setState(.closing) }
        try? serve(&q)
        break
      }
      // Give the pair back, as a client's close does; the device frees it on its next pass.
      device.servePass()
    }

    func serve(_ q: inout DirectQueue) throws {
      let capacity = 1 << 16
      let input = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
      let output = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
      defer {
        input.deallocate()
        output.deallocate()
      }
      var start = 0
      var end = 0
      var out = 0
      let fd = self.fd
      func flush() throws {
        if out > 0 { try writeAll(fd, output, out) }
        out = 0
      }
      func answer(_ c: CompletionEntry) throws {
        if out + CompletionEntry.size > capacity { try flush() }
        (output + out).storeBytes(of: c, as: CompletionEntry.self)
        out += CompletionEntry.size
      }
      /// Takes `count` payload bytes: first what is buffered, then straight from the socket.
      func take(_ count: Int, into destination: UnsafeMutableRawPointer) throws {
        let buffered = min(count, end - start)
        destination.copyMemory(from: input + start, byteCount: buffered)
        start += buffered
        if count > buffered { try readAll(fd, destination + buffered, count - buffered) }
      }
      while true {
        if end - start < SubmissionEntry.size {
          // Nothing complete is buffered: answer what was done, then read what has come.
          try flush()
          if start > 0 {
            input.copyMemory(from: input + start, byteCount: end - start)
            end -= start
            start = 0
          }
          let n = read(fd, input + end, capacity - end)
          if n <= 0 { return }
          end += n
          continue
        }
        let e = (input + start).loadUnaligned(as: SubmissionEntry.self)
        if SocketRPC.isSimple(e.opcode) {
          // Every complete simple request buffered goes to the device in one pass.
          while end - start >= SubmissionEntry.size && q.pending < q.depth - 1 {
            let e = (input + start).loadUnaligned(as: SubmissionEntry.self)
            guard SocketRPC.isSimple(e.opcode) else { break }
            start += SubmissionEntry.size
            var entry = e
            entry.commandID = 0
            q.submit(entry)
          }
          var failure: Error?
          q.complete { c in
            do { try answer(c) } catch { failure = error }
          }
          if let failure { throw failure }
          continue
        }
        start += SubmissionEntry.size
        try flush()
        switch Opcode(rawValue: e.opcode) {
        case .copyToDevice:
          var done = 0
          var status = CompletionEntry(status: .success)
          let total = Int(e.a2)
          while done < total {
            let n = min(q.slotSize, total - done)
            try take(n, into: q.staging)
            if status.status == CommandStatus.success.rawValue {
              q.submit(
                Command.CopyToDevice(device: e.a0 + UInt64(done), staging: q.stagingAddress, length: UInt64(n)).entry)
              q.complete { status = $0 }
            }
            done += n
          }
          if status.status == CommandStatus.success.rawValue { status.result0 = UInt64(total) }
          try answer(status)
        case .copyFromDevice:
          var done = 0
          let total = Int(e.a2)
          repeat {
            let n = min(q.slotSize, total - done)
            var c = CompletionEntry(status: .success)
            q.submit(
              Command.CopyFromDevice(device: e.a0 + UInt64(done), staging: q.stagingAddress, length: UInt64(n)).entry)
            q.complete { c = $0 }
            if done == 0 {
              // The answer goes first; a failed copy sends no bytes.
              c.result0 = UInt64(total)
              try withUnsafeBytes(of: &c) { try writeAll(fd, $0.baseAddress!, CompletionEntry.size) }
              if c.status != CommandStatus.success.rawValue { break }
            } else if c.status != CommandStatus.success.rawValue {
              throw BenchError("copy from device failed after the answer was sent")
            }
            try writeAll(fd, q.staging, n)
            done += n
          } while done < total
        case .moduleLoad, .getFunction, .launch:
          // The payload follows the request; it goes to the staging slot,
          // whose address replaces the request's staging argument.
          var entry: SubmissionEntry
          let length: Int
          switch Opcode(rawValue: e.opcode) {
          case .moduleLoad:
            var c = Command.ModuleLoad(e)
            length = Int(c.length)
            c.staging = q.stagingAddress
            entry = c.entry
          case .getFunction:
            var c = Command.GetFunction(e)
            length = Int(c.nameLength)
            c.name = q.stagingAddress
            entry = c.entry
          default:
            var c = Command.Launch(e)
            length = Int(c.parameterLength)
            c.parameters = q.stagingAddress
            entry = c.entry
          }
          guard length <= q.slotSize else { throw BenchError("request payload of \(length) bytes") }
          try take(length, into: q.staging)
          var c = CompletionEntry(status: .success)
          q.submit(entry)
          q.complete { c = $0 }
          try answer(c)
        default:
          throw BenchError("opcode \(e.opcode) is not served over the socket")
        }
      }
    }
  }
}

func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) throws {
  var done = 0
  while done < count {
    let n = write(fd, p + done, count - done)
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else { throw BenchError("socket write failed: \(String(cString: strerror(errno)))") }
    done += n
  }
}

func readAll(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ count: Int) throws {
  var done = 0
  while done < count {
    let n = read(fd, p + done, count - done)
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else {
      throw BenchError(n == 0 ? "the socket peer closed" : "socket read failed: \(String(cString: strerror(errno)))")
    }
    done += n
  }
}

/// A client of `SocketRPC`: each call is one request and its answer.
public final class SocketClient: BenchTarget {
  let fd: Int32
  /// Requests and answers of a batch, built and read in place (no allocation per call).
  let requests: UnsafeMutableRawPointer
  let answers: UnsafeMutableRawPointer
  static let maxBatch = 255

  public init(path: String) throws {
    let started = now()
    var fd: Int32 = -1
    // The server may still be starting.
    while true {
      fd = vgpu_path_connect(path)
      if fd >= 0 { break }
      guard now() - started < 5_000_000_000 else {
        throw BenchError("cannot connect to the socket server at \(path): \(String(cString: strerror(errno)))")
      }
      usleep(2000)
    }
    self.fd = fd
    SocketRPC.tune(fd)
    requests = .allocate(byteCount: Self.maxBatch * SubmissionEntry.size, alignment: 64)
    answers = .allocate(byteCount: Self.maxBatch * CompletionEntry.size, alignment: 64)
  }

  deinit {
    close(fd)
    requests.deallocate()
    answers.deallocate()
  }

  @inline(__always) func check(_ c: CompletionEntry, _ what: StaticString) throws -> CompletionEntry {
    guard c.status == CommandStatus.success.rawValue else {
      throw BenchError("\(what) over the socket: status \(c.status)")
    }
    return c
  }

  /// One request with an optional payload after it, and its answer.
  func call(_ e: SubmissionEntry, payload: UnsafeRawBufferPointer? = nil, _ what: StaticString) throws
    -> CompletionEntry
  {
    requests.storeBytes(of: e, as: SubmissionEntry.self)
    if let payload, payload.count > 0 {
      // Header and payload in one system call.
      var iov = [
        iovec(iov_base: requests, iov_len: SubmissionEntry.size),
        iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress!), iov_len: payload.count),
      ]
      var total = 0
      let want = SubmissionEntry.size + payload.count
      while total < want {
        let n = iov.withUnsafeMutableBufferPointer { writev(fd, $0.baseAddress!, 2) }
        guard n > 0 else { throw BenchError("socket write failed: \(String(cString: strerror(errno)))") }
        total += n
        if total < want {
          // Partial: send the rest of whichever part it stopped in.
          if total < SubmissionEntry.size {
            try writeAll(fd, requests + total, SubmissionEntry.size - total)
            total = SubmissionEntry.size
          }
          try writeAll(fd, payload.baseAddress! + (total - SubmissionEntry.size), want - total)
          total = want
        }
      }
    } else {
      try writeAll(fd, requests, SubmissionEntry.size)
    }
    try readAll(fd, answers, CompletionEntry.size)
    return try check(answers.load(as: CompletionEntry.self), what)
  }

  public func nop() throws { _ = try call(Command.Nop().entry, "nop") }

  public func nops(_ count: Int, batch: Int) throws {
    var left = count
    while left > 0 {
      let n = min(left, batch, Self.maxBatch)
      for i in 0..<n { (requests + i * 64).storeBytes(of: Command.Nop().entry, as: SubmissionEntry.self) }
      try writeAll(fd, requests, n * SubmissionEntry.size)
      try readAll(fd, answers, n * CompletionEntry.size)
      for i in 0..<n { _ = try check((answers + i * 32).load(as: CompletionEntry.self), "nop") }
      left -= n
    }
  }

  public func allocate(_ bytes: Int) throws -> UInt64 {
    try call(Command.Alloc(length: UInt64(bytes)).entry, "alloc").result0
  }
  public func free(_ address: UInt64) throws { _ = try call(Command.Free(address: address).entry, "free") }

  public func copyIn(_ destination: UInt64, from source: UnsafeRawBufferPointer) throws {
    _ = try call(
      Command.CopyToDevice(device: destination, staging: 0, length: UInt64(source.count)).entry, payload: source,
      "copy in")
  }

  public func copyOut(_ source: UInt64, into destination: UnsafeMutableRawBufferPointer) throws {
    _ = try call(
      Command.CopyFromDevice(device: source, staging: 0, length: UInt64(destination.count)).entry, "copy out")
    try readAll(fd, destination.baseAddress!, destination.count)
  }

  public func copyDevice(_ destination: UInt64, from source: UInt64, count: Int) throws {
    _ = try call(
      Command.CopyDeviceToDevice(destination: destination, source: source, length: UInt64(count)).entry, "copy device")
  }

  public func loadFill() throws -> FunctionHandle {
    let module = try FillKernel.image.withUnsafeBytes {
      try call(Command.ModuleLoad(staging: 0, length: UInt64($0.count)).entry, payload: $0, "load module").result0
    }
    let name = Array("fill".utf8)
    let c = try name.withUnsafeBytes {
      try call(
        Command.GetFunction(module: module, name: 0, nameLength: UInt64($0.count)).entry, payload: $0, "get function")
    }
    return FunctionHandle(raw: c.result0, parameterSize: Int(c.result1))
  }

  public func launchFill(_ function: FunctionHandle, parameters: [UInt8], grid: Int, block: Int) throws {
    // The same fields as Device.launch: grid, block, the parameters after the request.
    _ = try parameters.withUnsafeBytes {
      try call(
        Command.Launch(
          function: function.raw, grid: Dimensions(UInt32(grid)), block: Dimensions(UInt32(block)),
          parameterLength: UInt32($0.count),
          parameters: 0
        ).entry,
        payload: $0, "launch")
    }
  }
}
