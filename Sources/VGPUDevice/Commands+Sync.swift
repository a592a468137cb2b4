import CSupport
import VGPUProtocol

/// Streams and events. Commands run in order and to completion, so a
/// stream's work is done when a later command of it runs.
extension Executor {
  func streamCreate(qp: Int) -> CompletionEntry {
    CompletionEntry(status: .success, result0: streams.insert((), pid: served[qp].pid, queuePair: qp))
  }

  func streamDestroy(_ c: Command.StreamDestroy, qp: Int) throws(Refusal) -> CompletionEntry {
    streams.remove(at: try streams.slot(c.stream, pid: served[qp].pid, argument: 1))
    return CompletionEntry(status: .success)
  }

  func streamSynchronize(_ c: Command.StreamSynchronize, qp: Int) throws(Refusal) -> CompletionEntry {
    if c.stream != 0 { _ = try streams.slot(c.stream, pid: served[qp].pid, argument: 1) }
    return CompletionEntry(status: .success)
  }

  func eventCreate(qp: Int) -> CompletionEntry {
    CompletionEntry(status: .success, result0: events.insert(0, pid: served[qp].pid, queuePair: qp))
  }

  func eventDestroy(_ c: Command.EventDestroy, qp: Int) throws(Refusal) -> CompletionEntry {
    events.remove(at: try events.slot(c.event, pid: served[qp].pid, argument: 1))
    return CompletionEntry(status: .success)
  }

  func eventRecord(_ c: Command.EventRecord, qp: Int) throws(Refusal) -> CompletionEntry {
    let slot = try events.slot(c.event, pid: served[qp].pid, argument: 1)
    if c.stream != 0 { _ = try streams.slot(c.stream, pid: served[qp].pid, argument: 2) }
    events.slots[slot].value = vgpu_monotonic_ns()
    return CompletionEntry(status: .success)
  }

  func eventQuery(_ c: Command.EventQuery, qp: Int) throws(Refusal) -> CompletionEntry {
    _ = try events.slot(c.event, pid: served[qp].pid, argument: 1)
    return CompletionEntry(status: .success)
  }

  func eventElapsed(_ c: Command.EventElapsed, qp: Int) throws(Refusal) -> CompletionEntry {
    let start = try events.value(c.start, pid: served[qp].pid, argument: 1)
    let end = try events.value(c.end, pid: served[qp].pid, argument: 2)
    guard start != 0 else { throw Refusal(status: .notReady, detail: 1) }
    guard end != 0 else { throw Refusal(status: .notReady, detail: 2) }
    return CompletionEntry(status: .success, result0: end >= start ? end - start : 0)
  }
}
