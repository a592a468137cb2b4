import CSupport
import VGPUProtocol

/// Streams and events. A queue pair's commands run in order, so a stream's
/// work is done when the pair's earlier work is; events are the backend's.
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
    do throws(BackendError) { return completion(try backend.synchronize(for: caller(qp)), qp, 0) } catch {
      throw Refusal(error)
    }
  }

  func eventCreate(qp: Int) throws(Refusal) -> CompletionEntry {
    do throws(BackendError) {
      let token = try backend.createEvent(for: caller(qp))
      return CompletionEntry(status: .success, result0: events.insert(token, pid: served[qp].pid, queuePair: qp))
    } catch {
      throw Refusal(error)
    }
  }

  func eventDestroy(_ c: Command.EventDestroy, qp: Int) throws(Refusal) -> CompletionEntry {
    let slot = try events.slot(c.event, pid: served[qp].pid, argument: 1)
    if let token = events.slots[slot].value { backend.destroyEvent(token) }
    events.remove(at: slot)
    return CompletionEntry(status: .success)
  }

  func eventRecord(_ c: Command.EventRecord, qp: Int) throws(Refusal) -> CompletionEntry {
    let token = try events.value(c.event, pid: served[qp].pid, argument: 1)
    if c.stream != 0 { _ = try streams.slot(c.stream, pid: served[qp].pid, argument: 2) }
    do throws(BackendError) { try backend.recordEvent(token, for: caller(qp)) } catch { throw Refusal(error) }
    return CompletionEntry(status: .success)
  }

  /// Success when the work before the event's record is done (or it was
  /// never recorded, as cuEventQuery says), notReady while it runs.
  func eventQuery(_ c: Command.EventQuery, qp: Int) throws(Refusal) -> CompletionEntry {
    let token = try events.value(c.event, pid: served[qp].pid, argument: 1)
    let done: Bool?
    do throws(BackendError) { done = try backend.eventCompleted(token) } catch { throw Refusal(error) }
    guard done ?? true else { throw Refusal(status: .notReady, detail: 1) }
    return CompletionEntry(status: .success)
  }

  func eventElapsed(_ c: Command.EventElapsed, qp: Int) throws(Refusal) -> CompletionEntry {
    let start = try events.value(c.start, pid: served[qp].pid, argument: 1)
    let end = try events.value(c.end, pid: served[qp].pid, argument: 2)
    do throws(BackendError) {
      return CompletionEntry(status: .success, result0: try backend.elapsed(from: start, to: end))
    } catch { throw Refusal(error) }
  }
}
