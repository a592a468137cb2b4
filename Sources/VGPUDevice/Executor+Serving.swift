import CSupport
import VGPUProtocol

/// How much of a ring's work one pass runs before going on to the next ring
/// (`ServingPool`: a thread serving several devices gives each a turn).
struct Turn {
  var commands: Int
  var nanoseconds: UInt64
  static let unbounded = Turn(commands: .max, nanoseconds: .max)
}

extension Executor {
  /// One pass: over every queue pair (claims, closes, the state words, the
  /// control register), or — `quick` — over the active ones' rings only,
  /// which is what a busy device does between full passes. Each ring runs a
  /// turn of at most `budget` commands and `turn` nanoseconds of work (when
  /// one thread serves many devices: the rest waits for the next pass).
  /// Returns whether anything happened.
  func servePass(quick: Bool = false, budget: Turn = .unbounded) -> Bool {
    var worked = false
    if let workers, workers.finished.load(ordering: .acquiring) > 0 { worked = collectLaunches(workers) }
    if quick {
      // By index, over a copy as a for-in would be: a for-in, unspecialized
      // in a debug build, allocated a coroutine frame per element.
      let active = activeQueuePairs
      for i in active.indices where !served[active[i]].faulted {
        worked = serve(active[i], budget: budget) || worked
      }
      return worked
    }
    servingCPU = vgpu_current_cpu()
    worked = observeControl()
    for qp in views.indices {
      worked = observeLifecycle(qp) || worked
      if served[qp].active && !served[qp].faulted { worked = serve(qp, budget: budget) || worked }
    }
    return worked
  }

  /// What the serving thread may look at without the lock between passes:
  /// each served ring's SQ-tail doorbell and the head the device has reached
  /// there. Filled after every pass (under the lock); false when a quick
  /// pass must take the lock whatever the rings say (a ring's work is on a
  /// kernel worker, whose end only the locked pass collects).
  func watchRings(into watch: inout [RingWatch]) -> Bool {
    watch.removeAll(keepingCapacity: true)
    for i in activeQueuePairs.indices {
      let qp = activeQueuePairs[i]
      if served[qp].busy != nil { return false }
      if !served[qp].faulted { watch.append(RingWatch(view: views[qp], head: served[qp].head.index)) }
    }
    return true
  }

  /// Whether a pass would find work: before the device sleeps, after saying so.
  func hasPendingWork() -> Bool {
    if registers.load(Register.control) != ControlRequest.none.rawValue { return true }
    if let workers, workers.finished.load(ordering: .acquiring) > 0 { return true }
    for qp in views.indices {
      if lifecycleNeedsAction(qp) { return true }
      // Work is pending only if it can be done: commands waiting and room for their completions.
      let s = served[qp]
      if s.active && !s.faulted && s.busy == nil && views[qp].submissionTail != s.head.index
        && !s.completions.isFull(guestHead: views[qp].completionHead)
      {
        return true
      }
    }
    return false
  }

  /// Executes the commands waiting on queue pair `qp` while the completion
  /// ring has room, within `budget`. Returns whether any was posted.
  func serve(_ qp: Int, budget: Turn = .unbounded) -> Bool {
    let view = views[qp]
    let tail = view.submissionTail
    guard tail <= layout.depth - 1 else {
      fault(qp, .tailOutOfRange)
      return true
    }
    var posted = false
    // Busy time is taken per pass over the ring, from its first command
    // that does work: two clock reads cost more than a NOP. Each timed
    // command then costs one clock read, at its end, which is also the next
    // command's start (its latency, for the histograms).
    var started: UInt64 = 0
    var last: UInt64 = 0
    var left = budget.commands
    // Completion slots known to be free: the CQ-head doorbell (the guest's
    // line) is read again only once they are used up. An honest guest only
    // moves it forward, so an older value never claims more room than there
    // is; one that moves it back only overwrites its own completions.
    var room: UInt32 = 0
    // NOPs served and not yet counted: counted at once before any other
    // command runs (a `statistics` among them sees them) and at the end.
    var nops: UInt64 = 0
    // The turn's time is the commands' own clock reads (no extra one); it
    // ends after the command that passes it, so every turn does some work.
    while served[qp].head.index != tail && left > 0 && (started == 0 || last &- started < budget.nanoseconds) {
      // Work of this pair is on a worker: its later commands wait.
      if served[qp].busy != nil { break }
      if room == 0 {
        let completionHead = view.completionHead
        guard completionHead <= layout.depth - 1 else {
          countNOPs(nops, qp)
          fault(qp, .headOutOfRange)
          return true
        }
        // Full: the guest has not consumed enough completions yet.
        room = served[qp].completions.room(guestHead: completionHead)
        if room == 0 { break }
      }
      // A run of NOPs is served from each entry's first word alone (opcode,
      // flags, id, reserved: the whole of what a NOP means), without the
      // dispatcher; anything else in that word takes the full path, which
      // refuses it as before.
      // With coalesced completions (2.4) a run whose ids follow each other
      // is answered by one completion (its `following` word): a batch of 32
      // costs the guest one completion to read instead of 32.
      var header = view.submissionHeader(at: served[qp].head.index)
      if header & Self.nopHeaderMask == 0 {
        var head = served[qp].head
        var completions = served[qp].completions
        let coalesces = served[qp].coalesces
        var first = UInt16(truncatingIfNeeded: header >> 16)
        var following: UInt32 = 0
        while true {
          head.skip()
          nops &+= 1
          left &-= 1
          let more = left > 0 && head.index != tail
          if more { header = view.submissionHeader(at: head.index) }
          let isNOP = more && header & Self.nopHeaderMask == 0
          let id = UInt16(truncatingIfNeeded: header >> 16)
          if coalesces && isNOP && id == first &+ UInt16(truncatingIfNeeded: following &+ 1) {
            following &+= 1
            continue
          }
          var c = CompletionEntry(commandID: first, status: .success, sqHead: UInt16(head.index))
          c.following = following
          completions.post(c, into: view)
          room &-= 1
          guard room > 0, isNOP else { break }
          first = id
          following = 0
        }
        served[qp].head = head
        served[qp].completions = completions
        posted = true
        continue
      }
      if nops > 0 {
        countNOPs(nops, qp)
        nops = 0
      }
      room &-= 1
      left &-= 1
      let entry = served[qp].head.pop(from: view)
      let timed = entry.opcode != Opcode.nop.rawValue
      if started == 0 && timed {
        started = vgpu_monotonic_ns()
        last = started
      }
      var c = execute(entry, qp: qp)
      countCommand(qp)
      if let job = handedOver {
        handedOver = nil
        // Its latency and kernel time are counted when the worker is done.
        job.opcode = entry.opcode
        job.startedAt = last
        last = vgpu_monotonic_ns()
        job.commandID = entry.commandID
        job.sqHead = UInt16(served[qp].head.index)
        served[qp].busy = job
        workers?.submit(job)
        break
      }
      var latency: UInt64? = nil
      if timed {
        let now = vgpu_monotonic_ns()
        let took = now &- last
        last = now
        latency = took
        // A launch that completed inline: the kernel ran in this command.
        if entry.opcode == Opcode.launch.rawValue && c.status == CommandStatus.success.rawValue {
          countKernelTime(took, qp)
        }
      }
      countCompletion(entry.opcode, c.status, nanoseconds: latency, qp)
      c.commandID = entry.commandID
      c.sqHead = UInt16(served[qp].head.index)
      served[qp].completions.post(c, into: view)
      posted = true
    }
    countNOPs(nops, qp)
    if started != 0 { countBusy(last &- started, qp) }
    if posted {
      // Store (completion) then load (guestWaiting) needs a full barrier:
      // the guest does the mirror image, so one of us sees the other.
      vgpu_fence_seqcst()
      // Where this thread runs, for the guest's choice between spinning and
      // sleeping; and a guest waiting on this very CPU, asleep or spinning,
      // means this thread should get off it: the guest runs only once it
      // does, and sooner still when the serving thread has the higher
      // priority (--serving-priority). Both hints: a wrong one costs time, not results.
      let cpu = servingCPU
      view.publishDeviceCPU(cpu)
      if view.guestWaiting { wakeGuest(qp) }
      if cpu != 0 && view.guestCPU == cpu { answeredGuestOnThisCPU = true }
    }
    return posted
  }

  /// The bits of a submission entry's first word (little-endian: opcode
  /// @0, flags @1, command id @2-3, reserved @4-7; PROTOCOL.md §8) that are
  /// all 0 in a well-formed NOP: the opcode, the flags and the reserved word.
  static let nopHeaderMask: UInt64 = 0xffff_ffff_0000_ffff

  /// Wakes whoever waits on queue pair `qp`: a futex sleeper on this host,
  /// and through ivshmem the guest's vector for the pair.
  func wakeGuest(_ qp: Int) {
    views[qp].wakeGuest()
    ivshmem?.signalGuests(vector: qp)
  }
}

extension Executor {
  /// The completion of a job whose work is done (by a worker, or inline on
  /// a device driven by hand): its output, busy time and counts, a module
  /// load's placing, the error text of a failure.
  func complete(_ job: WorkerJob) -> CompletionEntry {
    let qp = job.qp
    appendOutput(job.output, pid: served[qp].pid)
    countBusy(job.busyNanoseconds, qp)
    var c = job.result
    if c.status == CommandStatus.success.rawValue, let load = job.load, let module = load.module {
      do throws(Refusal) { c = try completeLoad(module, qp: qp) } catch {
        c = CompletionEntry(status: error.status, result0: error.result0, result1: error.result1, detail: error.detail)
        job.errorText = error.message.isEmpty ? "moduleLoad: \(error.status)" : error.message
      }
    }
    let latency = vgpu_monotonic_ns() &- job.startedAt
    if c.status != CommandStatus.success.rawValue {
      served[qp].errorText = job.errorText
    } else if job.isLaunch {
      countLaunch(qp)
      countKernelTime(latency, qp)
    }
    countCompletion(job.opcode, c.status, nanoseconds: latency, qp)
    return c
  }

  /// Posts the completions of the work the workers finished, each on its
  /// pair (which served nothing else meanwhile, so its ring has room), with
  /// its device output and error text; a pair released meanwhile is
  /// released now. Returns whether any was posted.
  func collectLaunches(_ workers: KernelWorkers) -> Bool {
    var posted = false
    for job in workers.collect() {
      let qp = job.qp
      guard served[qp].busy === job, served[qp].generation == job.generation else {
        job.load?.module?.unload()
        continue
      }
      served[qp].busy = nil
      if let reason = served[qp].pendingRelease {
        served[qp].pendingRelease = nil
        job.load?.module?.unload()
        release(qp, because: reason)
        continue
      }
      var c = complete(job)
      c.commandID = job.commandID
      c.sqHead = job.sqHead
      served[qp].completions.post(c, into: views[qp])
      posted = true
      vgpu_fence_seqcst()
      if views[qp].guestWaiting { wakeGuest(qp) }
    }
    return posted
  }
}

/// One served ring as the serving thread looks at it without the lock.
struct RingWatch {
  let view: QueuePairView
  let head: UInt32
  /// Whether the guest has rung commands the device has not run. (A stale
  /// watch errs towards yes: the locked pass then finds out.)
  @inline(__always) var rung: Bool { view.submissionTail != head }
}
