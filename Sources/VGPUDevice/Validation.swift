import VGPUProtocol

/// A command the device refuses: its status, the 1-based argument at fault
/// (or the status's own fact, as docs/PROTOCOL.md §14 and §15 give it), and results.
struct Refusal: Error {
  var status: CommandStatus
  var detail: UInt32 = 0
  var result0: UInt64 = 0
  var result1: UInt64 = 0
  /// What a person reads (`errorText`); empty: the status and detail say it all.
  var message: String = ""

  init(status: CommandStatus, detail: UInt32 = 0, result0: UInt64 = 0, result1: UInt64 = 0, message: String = "") {
    self.status = status
    self.detail = detail
    self.result0 = result0
    self.result1 = result1
    self.message = message
  }

  init(_ e: BackendError) {
    self.init(status: e.status, detail: e.detail, result0: e.result0, result1: e.result1, message: e.message)
  }
}

/// Every address a guest names is checked here before it is used.
extension Executor {
  /// `length` bytes at device `address`, inside one live range of process
  /// `pid`: the range's ledger entry.
  @discardableResult
  func deviceRange(_ address: UInt64, _ length: UInt64, pid: UInt32, argument: UInt32) throws(Refusal)
    -> AllocationLedger.Entry
  {
    guard let e = ledger.entry(containing: address, length: max(length, 1)) else {
      throw Refusal(status: .invalidAddress, detail: argument)
    }
    guard served[Int(e.owner)].pid == pid else { throw Refusal(status: .permissionDenied, detail: argument) }
    return e
  }

  /// The live range of process `pid` holding device `address`: its start
  /// and size (what a kernel may touch).
  func range(containing address: UInt64, pid: UInt32) -> (address: UInt64, size: UInt64)? {
    guard let e = ledger.entry(containing: address, length: 1), served[Int(e.owner)].pid == pid else { return nil }
    return (e.address, e.size)
  }

  /// `length` bytes at staging address `address`: inside queue pair `qp`'s
  /// staging window, or (2.4) inside one page-locked window range of its process.
  @inline(__always)
  func stagingRange(_ address: UInt64, _ length: UInt64, qp: Int, argument: UInt32) throws(Refusal)
    -> UnsafeMutableRawPointer
  {
    let start = layout.staging(qp)
    if address >= start, length <= layout.stagingPerQueue, address - start <= layout.stagingPerQueue - length {
      return base + Int(address)
    }
    guard let owner = hostWindow?.owner(of: address, length) else {
      throw Refusal(status: .invalidStaging, detail: argument)
    }
    guard served[owner].pid == served[qp].pid else {
      throw Refusal(
        status: .permissionDenied, detail: argument,
        message:
          "staging 0x\(String(address, radix: 16)) + \(length) lies in a page-locked window range of another process")
    }
    return base + Int(address)
  }
}
