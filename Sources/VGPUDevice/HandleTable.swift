/// The device's handles (modules, functions, streams, events): `kind << 56
/// | generation << 32 | slot + 1`. Never 0, and a stale or forged handle
/// fails the generation or kind check; each handle belongs to one process.
struct HandleTable<Value> {
  struct Slot {
    var generation: UInt32 = 0
    var value: Value?
    var pid: UInt32 = 0
    var queuePair: Int = 0
  }
  let kind: UInt64
  var slots: [Slot] = []
  var free: [Int] = []

  init(kind: UInt8) { self.kind = UInt64(kind) }

  mutating func insert(_ value: Value, pid: UInt32, queuePair: Int) -> UInt64 {
    let index: Int
    if let f = free.popLast() {
      index = f
    } else {
      slots.append(Slot())
      index = slots.count - 1
    }
    slots[index].generation = (slots[index].generation &+ 1) & 0xff_ffff
    slots[index].value = value
    slots[index].pid = pid
    slots[index].queuePair = queuePair
    return kind << 56 | UInt64(slots[index].generation) << 32 | UInt64(index + 1)
  }

  /// The slot of a live handle owned by `pid`, or the refusal to send.
  func slot(_ handle: UInt64, pid: UInt32, argument: UInt32) throws(Refusal) -> Int {
    let index = Int(handle & 0xffff_ffff) - 1
    guard handle >> 56 == kind, index >= 0, index < slots.count, slots[index].value != nil,
      UInt64(slots[index].generation) == (handle >> 32) & 0xff_ffff
    else { throw Refusal(status: .invalidHandle, detail: argument) }
    guard slots[index].pid == pid else { throw Refusal(status: .permissionDenied, detail: argument) }
    return index
  }

  /// The value behind a live handle owned by `pid`.
  func value(_ handle: UInt64, pid: UInt32, argument: UInt32) throws(Refusal) -> Value {
    let i = try slot(handle, pid: pid, argument: argument)
    guard let v = slots[i].value else { throw Refusal(status: .invalidHandle, detail: argument) }
    return v
  }

  mutating func remove(at index: Int) {
    slots[index].value = nil
    free.append(index)
  }

  /// Drops every handle created through queue pair `qp`.
  mutating func removeAll(queuePair qp: Int) {
    for i in slots.indices where slots[i].value != nil && slots[i].queuePair == qp { remove(at: i) }
  }
}
