import CSupport
import VGPUProtocol

/// The queue pair lifecycle (docs/PROTOCOL.md §7) as the device enforces it.
/// The state word, the owner's pid, `control` and `status` sit in guest-
/// writable memory, so each is hostile input: the device acts only on the
/// transitions the protocol allows (claiming → active, active → closing →
/// free) and puts any other value back as it was, so that a scribble changes
/// nothing: no second accept, no lost or double-counted memory. Nothing a
/// guest writes stops the device or touches another pair's resources.
extension Executor {
  /// What the device makes of a pair's state word, given its own record.
  enum LifecycleAction: Equatable {
    case none
    /// A free pair was claimed and its owner's pid is there.
    case accept
    /// The owner closed it (or handed back a claim the device never took).
    case release
    /// A state the protocol does not allow here: a guest wrote it. The word
    /// is put back to what the device knows (`active` or `free`).
    case restore(QueuePairState)
  }

  func lifecycleAction(_ qp: Int) -> LifecycleAction {
    let state = views[qp].state
    if served[qp].active {
      switch state {
      case QueuePairState.active.rawValue: return .none
      case QueuePairState.closing.rawValue: return .release
      default: return .restore(.active)
      }
    }
    switch state {
    case QueuePairState.free.rawValue: return .none
    // The guest writes its pid right after claiming; accept once it is there.
    case QueuePairState.claiming.rawValue: return views[qp].ownerPID != 0 ? .accept : .none
    case QueuePairState.closing.rawValue: return .release
    default: return .restore(.free)
    }
  }

  func lifecycleNeedsAction(_ qp: Int) -> Bool { lifecycleAction(qp) != .none }

  /// Acts on queue pair `qp`'s state word. Returns whether anything changed.
  func observeLifecycle(_ qp: Int) -> Bool {
    switch lifecycleAction(qp) {
    case .none:
      return false
    case .accept:
      accept(qp)
    case .release:
      release(qp)
    case .restore(let state):
      // Quietly: a scribbler must not flood the operator's log. The owner
      // of an active pair keeps it, with everything it holds.
      views[qp].setState(state)
      if state == .free { views[qp].setOwnerPID(0) }
    }
    return true
  }

  /// The guest's `control` word: a reset is honoured only while the device
  /// asks for one (`needsReset`); anything else is cleared, so that no guest
  /// can drop the others' queue pairs.
  func observeControl() -> Bool {
    let request = registers.load(Register.control)
    guard request != ControlRequest.none.rawValue else { return false }
    registers.store(Register.control, ControlRequest.none.rawValue)
    if request == ControlRequest.reset.rawValue && status.contains(.needsReset) { resetAll() }
    return true
  }

  private func accept(_ qp: Int) {
    views[qp].resetRings()
    // A BAR of one process's own: the pid its socket vouches for, not the one it declared.
    let pid = fixedOwner ?? views[qp].ownerPID
    // The claim may have been withdrawn meanwhile: take it only if it still stands.
    guard views[qp].exchangeState(from: .claiming, to: .active) else { return }
    served[qp] = ServedQueuePair(depth: layout.depth)
    served[qp].active = true
    generations &+= 1
    served[qp].generation = generations
    served[qp].pid = pid
    served[qp].ownerStart = ProcessLiveness.startTime(pid) ?? 0
    served[qp].watched = ownerWatch?.watch(queuePair: qp, pid: pid) ?? false
    activeQueuePairs.append(qp)
    claimingSince[qp] = 0
    deviceTotals.queuePairs &+= 1
    report(.attached(queuePair: qp, pid: pid), qp)
  }

  /// Closes a queue pair: its allocations and handles are reclaimed, and it is free again.
  func release(_ qp: Int, because reason: DeviceEvent.ReleaseReason = .closed) {
    if let job = served[qp].busy {
      // Its kernel may still touch the pair's memory: stop it, release when it has.
      job.work.cancel()
      served[qp].pendingRelease = reason
      return
    }
    let pid = served[qp].pid
    if served[qp].watched { ownerWatch?.unwatch(queuePair: qp) }
    let (count, bytes) = freeAll(ownedBy: qp)
    sharedHost.removeAll(owner: qp)
    releaseWindowRanges(ownedBy: qp)
    if served[qp].active || reason != .closed {
      report(.released(queuePair: qp, pid: pid, reason: reason, allocations: count, bytes: bytes), qp)
    }
    claimingSince[qp] = 0
    for i in modules.slots.indices where modules.slots[i].value != nil && modules.slots[i].queuePair == qp {
      modules.slots[i].value?.module.unload()
    }
    modules.removeAll(queuePair: qp)
    functions.removeAll(queuePair: qp)
    for i in uploads.slots.indices where uploads.slots[i].queuePair == qp {
      if let u = uploads.slots[i].value { uploadBytes -= UInt64(u.size) }
    }
    uploads.removeAll(queuePair: qp)
    // The output of a process that holds no other queue pair goes with it.
    if !activeQueuePairs.contains(where: { $0 != qp && served[$0].pid == pid }) { outputs[pid] = nil }
    streams.removeAll(queuePair: qp)
    for i in events.slots.indices where events.slots[i].value != nil && events.slots[i].queuePair == qp {
      if let token = events.slots[i].value { backend.destroyEvent(token) }
    }
    events.removeAll(queuePair: qp)
    backend.release(queuePair: queuePairBase + qp)
    served[qp] = ServedQueuePair(depth: layout.depth)
    activeQueuePairs.removeAll { $0 == qp }
    views[qp].resetRings()
    views[qp].setOwnerPID(0)
    views[qp].setState(.free)
  }

  func resetAll() {
    for qp in views.indices where views[qp].state != QueuePairState.free.rawValue || served[qp].active {
      release(qp, because: .reset)
    }
    setStatus(.ready)
  }

  /// Stops serving a pair whose doorbells broke the protocol, until its owner closes it.
  func fault(_ qp: Int, _ f: QueuePairFault) {
    served[qp].faulted = true
    views[qp].setFault(f)
    wakeGuest(qp)
    report(.faulted(queuePair: qp, pid: served[qp].pid, fault: f), qp)
  }

  /// Releases the queue pairs of processes that ended without closing them,
  /// and claims abandoned before the claimer wrote its pid. Called a few
  /// times a second, so a killed client's memory returns within a second.
  func reapDeadOwners(now: UInt64) {
    for qp in views.indices {
      let state = views[qp].state
      if served[qp].active {
        if !served[qp].watched && !ProcessLiveness.isAlive(served[qp].pid, startTime: served[qp].ownerStart) {
          release(qp, because: .ownerExited)
        }
      } else if state == QueuePairState.claiming.rawValue && views[qp].ownerPID == 0 {
        if claimingSince[qp] == 0 {
          claimingSince[qp] = now
        } else if now &- claimingSince[qp] > 1_000_000_000 {
          release(qp, because: .abandonedClaim)
        }
      }
    }
  }

  /// Releases the pairs whose owners announced the guest heartbeat (2.3)
  /// and whose heartbeat word has not changed for `heartbeatSilence`: a
  /// VM's process killed without closing. Called every
  /// `GuestHeartbeat.checkNanoseconds`. Only a change of the word counts,
  /// measured on the device's clock from when the device saw it, so a
  /// device that was itself kept off the CPU reclaims no living guest: its
  /// first look after the gap sees the beats it missed.
  func reapSilentGuests(now: UInt64) {
    guard let silence = heartbeatSilence else { return }
    // By index over a copy (a release removes from the array): a for-in
    // allocated in a debug build (see `servePass`).
    let active = activeQueuePairs
    for i in active.indices {
      let qp = active[i]
      guard served[qp].heartbeatWatched && served[qp].pendingRelease == nil else { continue }
      let word = views[qp].heartbeat
      if word != served[qp].beat {
        served[qp].beat = word
        served[qp].beatSeenAt = now
      } else if now &- served[qp].beatSeenAt > silence {
        release(qp, because: .heartbeatStopped)
      }
    }
  }

  /// Releases the queue pairs whose owners the OwnerWatch saw exit (checked
  /// once more in /proc; one still alive goes back to being scanned).
  func reapExited() {
    guard let watch = ownerWatch, watch.hasExits else { return }
    for qp in watch.takeExited() where served[qp].active {
      if ProcessLiveness.isAlive(served[qp].pid, startTime: served[qp].ownerStart) {
        served[qp].watched = false
      } else {
        release(qp, because: .ownerExited)
      }
    }
  }

  /// Whether anything needs looking at while idle: owners only /proc can
  /// tell about, or a claim still without its pid.
  var needsPolling: Bool {
    for qp in views.indices {
      // Work on a worker: the device says it is alive while it runs (`tickForWorkers`).
      if served[qp].busy != nil { return true }
      if served[qp].active && !served[qp].watched && fixedOwner == nil { return true }
      if served[qp].heartbeatWatched { return true }
      if !served[qp].active && views[qp].state == QueuePairState.claiming.rawValue { return true }
    }
    return false
  }

  // MARK: Registers a guest must not change

  /// Sets the status register, and what it is put back to.
  func setStatus(_ s: StatusRegister) {
    status = s
    registers.store(Register.status, s.rawValue)
  }

  /// Remembers the register block as the device wrote it (after setup, and
  /// after each later change of a fixed register, such as the mediator's pid).
  func rememberRegisters() {
    // Marked once: hashing each of the 1,024 words into `Register.changing`
    // was most of a device's set-up (the fuzz target makes one per input).
    var changing = [Bool](repeating: false, count: Register.blockSize / 4)
    for offset in Register.changing { changing[offset / 4] = true }
    registerImage = (0..<Register.blockSize / 4).compactMap { i in
      changing[i] ? nil : (Register32(i * 4), registers.load(Register32(i * 4)))
    }
  }

  /// Remembers one fixed register's new value (cheaper than `rememberRegisters`,
  /// which a client's connection would otherwise pay for a second time).
  func remember(_ register: Register32, _ word: UInt32) {
    if let i = registerImage.firstIndex(where: { $0.0 == register }) { registerImage[i].1 = word }
  }

  /// Undoes guests' stores into device-written registers: the status, the
  /// layout and identity that new clients read. Returns how many words were put back.
  @discardableResult
  func restoreRegisters() -> Int {
    var restored = 0
    if registers.load(Register.status) != status.rawValue {
      registers.store(Register.status, status.rawValue)
      restored += 1
    }
    // By index: a for-in over the array of tuples, unspecialized in a debug
    // build, allocated a coroutine frame per element (the pool's thread, at
    // each wake-up).
    for i in registerImage.indices {
      let (register, word) = registerImage[i]
      guard registers.load(register) != word else { continue }
      registers.store(register, word)
      restored += 1
    }
    return restored
  }
}
