import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

struct ThreadState {
  var pc: Int32 = 0
  var fn: Int32 = 0
  var frame: Int32 = 0  // slot offset of the current frame in the thread's stack
  var status: UInt8 = 0  // Status.*
  var barrier: UInt8 = 0
  /// What this thread brings to a bar.red (its predicate, 0 or 1).
  var barrierValue: UInt8 = 0
  var barrierCount: UInt32 = 0
  var x: UInt32 = 0
  var y: UInt32 = 0
  var z: UInt32 = 0
}

enum Status {
  static let ready: UInt8 = 0
  static let barrier: UInt8 = 1
  static let collective: UInt8 = 2
  static let exited: UInt8 = 3
  /// At a grid-wide barrier (`cudaCGSynchronize`), past the call: released by the launch
  /// once every block has arrived (`CooperativeRun`), never by its own block.
  static let gridBarrier: UInt8 = 4
}

enum Fault: Error {
  case illegal(UInt64, Int, Bool, Int32)
  case misaligned(UInt64, Int, Int32)
  case unsupported(String, Int32)
  case budget
  case cancelled
  case trap(Int32)
  case assertion(String, String, Int, String)
  case launch(String)
}

@inline(__always) func sext(_ v: UInt64, _ sh: UInt8) -> Int64 { Int64(bitPattern: v << UInt64(sh)) >> Int64(sh) }
@inline(__always) func f32(_ v: UInt64) -> Float { Float(bitPattern: UInt32(truncatingIfNeeded: v)) }
@inline(__always) func f64(_ v: UInt64) -> Double { Double(bitPattern: v) }
@inline(__always) func bits(_ f: Float) -> UInt64 { UInt64(f.bitPattern) }
/// `.ftz`: subnormal f32 inputs and results become zero of the same sign (PTX ISA §9.7.3).
@inline(__always) func flush(_ x: Float) -> Float {
  x.isSubnormal ? Float(sign: x.sign, exponent: 0, significand: 0) : x
}
@inline(__always) func fin(_ v: UInt64, _ fl: UInt8) -> Float { fl & Flag.ftz != 0 ? flush(f32(v)) : f32(v) }
@inline(__always) func fout(_ v: Float, _ fl: UInt8) -> UInt64 {
  if fl & (Flag.ftz | Flag.sat) == 0 { return bits(v) }
  var v = fl & Flag.ftz != 0 ? flush(v) : v
  if fl & Flag.sat != 0 { v = v.isNaN ? 0 : Swift.min(Swift.max(v, 0), 1) }
  return bits(v)
}
@inline(__always) func dout(_ v: Double, _ fl: UInt8) -> UInt64 {
  if fl & Flag.sat == 0 { return v.bitPattern }
  return (v.isNaN ? 0 : Swift.min(Swift.max(v, 0), 1)).bitPattern
}
@inline(__always) func load(_ p: UnsafeRawPointer, _ size: UInt8) -> UInt64 {
  switch size {
  case 1: return UInt64(p.load(as: UInt8.self))
  case 2: return UInt64(p.loadUnaligned(as: UInt16.self))
  case 4: return UInt64(p.loadUnaligned(as: UInt32.self))
  default: return p.loadUnaligned(as: UInt64.self)
  }
}
@inline(__always) func store(_ p: UnsafeMutableRawPointer, _ size: UInt8, _ v: UInt64) {
  switch size {
  case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
  case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: 0, as: UInt16.self)
  case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: 0, as: UInt32.self)
  default: p.storeBytes(of: v, toByteOffset: 0, as: UInt64.self)
  }
}
/// An aligned global load as a relaxed atomic: blocks on other host threads may write the
/// same word (a CAS loop's first read, a flag), and a relaxed access is a plain `mov` on
/// x86-64 that ThreadSanitizer does not report as a race.
@inline(__always) func loadRelaxed(_ p: UnsafeMutableRawPointer, _ size: UInt8) -> UInt64 {
  switch size {
  case 1: return UInt64(p.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.load(ordering: .relaxed))
  case 2: return UInt64(p.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.load(ordering: .relaxed))
  case 4: return UInt64(p.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .relaxed))
  default: return p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .relaxed)
  }
}
/// An aligned global store as a relaxed atomic (see `loadRelaxed`).
@inline(__always) func storeRelaxed(_ p: UnsafeMutableRawPointer, _ size: UInt8, _ v: UInt64) {
  switch size {
  case 1:
    p.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.store(UInt8(truncatingIfNeeded: v), ordering: .relaxed)
  case 2:
    p.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.store(UInt16(truncatingIfNeeded: v), ordering: .relaxed)
  case 4:
    p.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(UInt32(truncatingIfNeeded: v), ordering: .relaxed)
  default: p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(v, ordering: .relaxed)
  }
}
func reverseBits(_ v: UInt64) -> UInt64 {
  var x = v
  x = ((x >> 1) & 0x5555_5555_5555_5555) | ((x & 0x5555_5555_5555_5555) << 1)
  x = ((x >> 2) & 0x3333_3333_3333_3333) | ((x & 0x3333_3333_3333_3333) << 2)
  x = ((x >> 4) & 0x0F0F_0F0F_0F0F_0F0F) | ((x & 0x0F0F_0F0F_0F0F_0F0F) << 4)
  return x.byteSwapped
}
/// Ordered and unordered compares (PTX ISA §9.7.3 setp: "u" forms are true when either is NaN).
@inline(__always) func fcompare(_ x: Double, _ y: Double, _ c: UInt8) -> Bool {
  let unordered = x.isNaN || y.isNaN
  switch Cmp(rawValue: c)! {
  case .eq: return x == y
  case .ne: return x != y && !unordered
  case .lt: return x < y
  case .le: return x <= y
  case .gt: return x > y
  case .ge: return x >= y
  case .equ: return x == y || unordered
  case .neu: return x != y
  case .ltu: return !(x >= y)
  case .leu: return !(x > y)
  case .gtu: return !(x <= y)
  case .geu: return !(x < y)
  case .num: return !unordered
  case .nan: return unordered
  default: return false
  }
}
@inline(__always) func icompare(_ x: UInt64, _ y: UInt64, _ signed: Bool, _ sh: UInt8, _ c: UInt8) -> Bool {
  let xs = sext(x, sh)
  let ys = sext(y, sh)
  let xu = (x << UInt64(sh)) >> UInt64(sh)
  let yu = (y << UInt64(sh)) >> UInt64(sh)
  switch Cmp(rawValue: c)! {
  case .eq: return xu == yu
  case .ne: return xu != yu
  case .lt: return signed ? xs < ys : xu < yu
  case .le: return signed ? xs <= ys : xu <= yu
  case .gt: return signed ? xs > ys : xu > yu
  case .ge: return signed ? xs >= ys : xu >= yu
  case .lo: return xu < yu
  case .ls: return xu <= yu
  case .hi: return xu > yu
  case .hs: return xu >= yu
  default: return false
  }
}
@inline(__always) func fminmax(_ x: Double, _ y: Double, _ isMax: Bool, _ nanProp: Bool) -> Double {
  if x.isNaN || y.isNaN {
    if nanProp || (x.isNaN && y.isNaN) { return .nan }
    return x.isNaN ? y : x
  }
  if x == y { return isMax ? (x.sign == .minus ? y : x) : (x.sign == .minus ? x : y) }
  return isMax ? Swift.max(x, y) : Swift.min(x, y)
}

/// A global region as the runner caches it.
struct CachedRegion {
  var base: UInt64
  var end: UInt64
  var pointer: UnsafeMutableRawPointer
  var writable: Bool

  /// Whether `addr ..< end` lies inside (and may be written when `write`).
  @inline(__always) func holds(_ addr: UInt64, _ end: UInt64, _ write: Bool) -> Bool {
    addr >= base && end <= self.end && end >= addr && (!write || writable)
  }
}

/// Runs the blocks of one launch. All storage is allocated once per launch and reused per
/// block, so a block's run allocates nothing; a block depends on nothing but its own buffers,
/// which is what lets blocks move to separate host threads later.
struct BlockRunner {
  let kernel: String
  let module: PTXModule
  let funcs: UnsafeMutablePointer<FuncRT>
  let root: Int
  let block: PTXDim3
  let grid: PTXDim3
  let nthreads: Int
  let stackSlots: Int
  let stack: UnsafeMutablePointer<UInt64>
  let localBytes: Int
  let local: UnsafeMutableRawPointer
  let sharedBytes: Int
  let shared: UnsafeMutableRawPointer
  let dynamicShared: UInt32
  let params: UnsafeRawPointer
  let paramBytes: Int
  let memory: any PTXGlobalMemory
  let threads: UnsafeMutablePointer<ThreadState>
  /// The launch's instruction budget (for its error message).
  let budget: UInt64
  /// When `executed` passes this, the next checkpoint fails with `.budget`: the budget for
  /// a lone runner; what was left of the launch's at a quantum's start for one of several.
  var budgetEnd: UInt64
  let printf: ((String) -> Void)?
  /// When non-nil, printf text is kept here instead of going to `printf`: a runner on a
  /// helper thread keeps its block's lines, which the launch hands on in block order.
  var printed: [String]? = nil
  /// printf lines of the warp running in lockstep, with their threads (`emitPrintf`).
  var warpLines: [(Int, String)] = []
  let progress: (() -> Bool)?
  let progressInterval: UInt64
  var executed: UInt64 = 0
  /// Whether the launch is cooperative: grid-wide barriers are allowed (DeviceRuntime.swift).
  let cooperative: Bool
  /// Whether warps run in lockstep (`runWarp`) rather than thread by thread (`run`).
  let lockstep: Bool
  /// A cooperative launch's grid workspace (`Memory.gridWorkspace`), shared by its blocks.
  let workspace: UnsafeMutableRawPointer?
  /// Set when `continueBlock` returned false because every live thread of the block waits
  /// at the grid barrier (not because of `suspendAt`).
  var gridWaiting = false
  /// When `executed` reaches this, the next checkpoint calls `progress`.
  var nextProgress: UInt64
  /// When `executed` reaches this, the next checkpoint suspends its thread (`PTXLaunch.run(until:)`).
  var suspendAt: UInt64 = .max
  var ctaid = PTXDim3(0)
  var arrivals = [Int](repeating: 0, count: 16)
  // The global regions used last, most recent first: `cache` is checked inline, the others
  // on a miss, so that a kernel with a few buffers (vector add's three) seldom asks `memory`.
  var cache: CachedRegion
  var cache2: CachedRegion
  var cache3: CachedRegion
  var cache4: CachedRegion
  var nextCache = 0

  init(
    kernel: String, module: PTXModule, funcs: UnsafeMutablePointer<FuncRT>, root: Int, block: PTXDim3, grid: PTXDim3,
    stackSlots: Int, localBytes: Int, sharedBytes: Int, dynamicShared: UInt32, params: UnsafeRawBufferPointer,
    memory: any PTXGlobalMemory, budget: UInt64, printf: ((String) -> Void)?, progress: (() -> Bool)? = nil,
    progressInterval: UInt64 = 1 << 18, cooperative: Bool = false, workspace: UnsafeMutableRawPointer? = nil,
    lockstep: Bool = true
  ) {
    self.cooperative = cooperative
    self.lockstep = lockstep
    self.workspace = workspace
    self.progress = progress
    self.progressInterval = progressInterval
    nextProgress = progressInterval
    self.kernel = kernel
    self.module = module
    self.funcs = funcs
    self.root = root
    self.block = block
    self.grid = grid
    nthreads = block.count
    self.stackSlots = stackSlots
    stack = .allocate(capacity: stackSlots * nthreads)
    self.localBytes = localBytes
    local = .allocate(byteCount: max(localBytes * nthreads, 16), alignment: 16)
    self.sharedBytes = sharedBytes
    shared = .allocate(byteCount: max(sharedBytes, 16), alignment: 16)
    self.dynamicShared = dynamicShared
    self.params = params.baseAddress ?? UnsafeRawPointer(bitPattern: 16)!
    paramBytes = params.count
    self.memory = memory
    threads = .allocate(capacity: nthreads)
    self.budget = budget
    budgetEnd = budget
    self.printf = printf
    let dummy = UnsafeMutableRawPointer(bitPattern: 16)!
    cache = CachedRegion(base: 1, end: 0, pointer: dummy, writable: false)
    (cache2, cache3, cache4) = (cache, cache, cache)
  }

  func release() {
    stack.deallocate()
    local.deallocate()
    shared.deallocate()
    threads.deallocate()
  }

  func dim(_ t: Int) -> PTXDim3 {
    let s = threads[t]
    return PTXDim3(s.x, s.y, s.z)
  }

  func error(_ f: Fault, thread t: Int) -> PTXError {
    switch f {
    case .illegal(let a, let size, let isStore, let line):
      return .illegalAddress(
        kernel: kernel, block: ctaid, thread: dim(t), address: a, size: size, isStore: isStore, line: Int(line))
    case .misaligned(let a, let size, let line):
      return .misalignedAddress(kernel: kernel, block: ctaid, thread: dim(t), address: a, size: size, line: Int(line))
    case .unsupported(let text, let line): return .unsupported(kernel: kernel, instruction: text, line: Int(line))
    case .budget: return .budgetExhausted(kernel: kernel, budget: budget)
    case .cancelled: return .launchFailed(kernel: kernel, reason: "cancelled by the device (its client went away)")
    case .trap(let line):
      return .launchFailed(kernel: kernel, reason: "trap at PTX line \(line) in block \(ctaid) thread \(dim(t))")
    case .assertion(let m, let file, let line, let fn):
      return .assertion(message: m, file: file, line: line, function: fn, block: ctaid, thread: dim(t))
    case .launch(let reason): return .launchFailed(kernel: kernel, reason: reason)
    }
  }

  // MARK: memory

  /// Host pointer for `size` bytes of global memory at `addr`, or nil.
  @inline(__always) mutating func global(_ addr: UInt64, _ size: Int, write: Bool) -> UnsafeMutableRawPointer? {
    let end = addr &+ UInt64(size)
    if cache.holds(addr, end, write) {
      return cache.pointer + Int(addr - cache.base)
    }
    return globalMiss(addr, size, write: write)
  }

  mutating func globalMiss(_ addr: UInt64, _ size: Int, write: Bool) -> UnsafeMutableRawPointer? {
    // These are checked in turn. In lockstep one that holds the address swaps with `cache`,
    // so the group's other lanes find it inline; thread by thread nothing moves (a thread
    // goes from buffer to buffer: swapping cost vector add 4.5 host instructions per
    // thread-instruction). A region found anew replaces one in rotation.
    let end = addr &+ UInt64(size)
    if cache2.holds(addr, end, write) {
      if lockstep { swap(&cache, &cache2) } else { return cache2.pointer + Int(addr - cache2.base) }
      return cache.pointer + Int(addr - cache.base)
    }
    if cache3.holds(addr, end, write) {
      if lockstep { swap(&cache, &cache3) } else { return cache3.pointer + Int(addr - cache3.base) }
      return cache.pointer + Int(addr - cache.base)
    }
    if cache4.holds(addr, end, write) {
      if lockstep { swap(&cache, &cache4) } else { return cache4.pointer + Int(addr - cache4.base) }
      return cache.pointer + Int(addr - cache.base)
    }
    let r: PTXMemoryRegion
    if let workspace, addr &- Memory.gridWorkspace < UInt64(Memory.gridWorkspaceBytes) {
      r = PTXMemoryRegion(base: Memory.gridWorkspace, count: Memory.gridWorkspaceBytes, pointer: workspace)
    } else {
      guard let found = memory.region(containing: addr), found.count >= 0 else { return nil }
      r = found
    }
    let found = CachedRegion(base: r.base, end: r.base &+ UInt64(r.count), pointer: r.pointer, writable: r.writable)
    guard found.holds(addr, end, write) else { return nil }
    switch nextCache & 3 {
    case 0: cache = found
    case 1: cache2 = found
    case 2: cache3 = found
    default: cache4 = found
    }
    nextCache &+= 1
    return r.pointer + Int(addr - r.base)
  }

  /// Generic address → host pointer: shared window, local window, else global (PTX ISA §6.4.1).
  @inline(__always) mutating func generic(_ addr: UInt64, _ size: Int, write: Bool) -> UnsafeMutableRawPointer? {
    let s = addr &- Memory.sharedWindow
    if s < 1 << 32 {
      return s &+ UInt64(size) <= UInt64(sharedBytes) ? shared + Int(s) : nil
    }
    let l = addr &- Memory.localWindow
    if l < Memory.localStride * 1024 {
      let t = Int(l / Memory.localStride)
      let off = Int(l % Memory.localStride)
      return t < nthreads && off + size <= localBytes ? local + t * localBytes + off : nil
    }
    return global(addr, size, write: write)
  }

  /// Thread `t`'s device printf: in lockstep kept until its warp's run ends (`flushWarpLines`),
  /// so that each thread's lines come out together as the per-thread engine gives them.
  mutating func emitPrintf(_ text: String, thread t: Int) {
    if lockstep { warpLines.append((t, text)) } else { deliverPrintf(text) }
  }

  /// A printf's text: kept for in-order delivery, or delivered now.
  mutating func deliverPrintf(_ text: String) {
    if printed != nil { printed!.append(text) } else { printf?(text) }
  }

  /// Delivers the lines a warp's run kept, thread by thread (each thread's in order), those of
  /// threads up to `last` only: the per-thread engine never ran the ones after a faulting thread.
  mutating func flushWarpLines(upTo last: Int) {
    let lines = warpLines.enumerated().sorted { ($0.element.0, $0.offset) < ($1.element.0, $1.offset) }
    warpLines.removeAll(keepingCapacity: true)
    for (_, (t, text)) in lines where t <= last { deliverPrintf(text) }
  }

  /// Reads a NUL-terminated string at a generic address (printf formats, assert messages).
  mutating func cString(_ addr: UInt64) -> String {
    var bytes: [UInt8] = []
    var a = addr
    while bytes.count < 4096, let p = generic(a, 1, write: false) {
      let b = p.load(as: UInt8.self)
      if b == 0 { break }
      bytes.append(b)
      a += 1
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  // MARK: blocks

  /// Sets block `id`'s threads at their entry, ready to run.
  mutating func startBlock(_ id: PTXDim3) {
    ctaid = id
    for i in 0..<16 { arrivals[i] = 0 }
    memset(shared, 0, sharedBytes)
    let entry = funcs[root]
    for t in 0..<nthreads {
      let x = UInt32(t % Int(block.x))
      let y = UInt32((t / Int(block.x)) % Int(block.y))
      let z = UInt32(t / (Int(block.x) * Int(block.y)))
      threads[t] = ThreadState(fn: Int32(root), x: x, y: y, z: z)
      let r = stack + t * stackSlots
      r.update(from: entry.template, count: entry.slots)
      r[Int(Slot.localBase)] = 0
      r[Int(Slot.localWindow)] = Memory.localWindow + UInt64(t) * Memory.localStride
    }
  }

  /// Runs the current block until it finishes (true) or `executed` reaches `suspendAt` (false).
  /// A suspended thread is left ready at the instruction it had not yet run, so calling this
  /// again goes on exactly where it stopped: the ready threads are those the pass had not
  /// reached (a thread's run never readies another; only the release steps do).
  mutating func continueBlock() throws(PTXError) -> Bool {
    while true {
      if lockstep {
        for w in 0..<(nthreads + 31) / 32 {
          if try runWarp(w) || executed >= suspendAt { return false }
        }
      } else {
        for t in 0..<nthreads where threads[t].status == Status.ready {
          do { try run(t) } catch { throw self.error(error, thread: t) }
          // Still ready after its run: it stopped at a checkpoint to suspend. Threads
          // that merely parked are at rest too, so stopping between threads is safe.
          if threads[t].status == Status.ready || executed >= suspendAt { return false }
        }
      }
      var live = 0
      var atGrid = 0
      for t in 0..<nthreads where threads[t].status != Status.exited {
        live += 1
        if threads[t].status == Status.gridBarrier { atGrid += 1 }
      }
      if live == 0 { return true }
      if atGrid == live {
        gridWaiting = true
        return false
      }
      var released = releaseBarriers(live: live)
      if try releaseCollectives(activemask: false) { released = true }
      if !released, try releaseCollectives(activemask: true) { released = true }
      if !released { throw .deadlock(kernel: kernel, block: ctaid, detail: deadlockDetail()) }
    }
  }

  /// A CTA barrier releases when all live threads (or `count` threads) have arrived; exited
  /// threads count as arrived (PTX ISA §9.7.13.1 bar, and §9.7.13.8 exit).
  mutating func releaseBarriers(live: Int) -> Bool {
    var released = false
    // The barriers someone waits at, in one pass (16 passes over the block cost matmul 5 %).
    var used: UInt32 = 0
    for t in 0..<nthreads where threads[t].status == Status.barrier { used |= 1 << UInt32(threads[t].barrier & 15) }
    for id in 0..<16 where used & (1 << UInt32(id)) != 0 {
      var waiting = 0
      var count = 0
      for t in 0..<nthreads where threads[t].status == Status.barrier && threads[t].barrier == id {
        waiting += 1
        count = Int(threads[t].barrierCount)
      }
      if waiting == 0 { continue }
      let expected = count > 0 ? Swift.min(count, live + arrivals[id]) : live
      if waiting + arrivals[id] >= expected {
        // bar.red: every waiting thread brought its predicate; each gets the reduction
        // (PTX ISA §9.7.13.1: the result is the same in all threads of the barrier).
        var votes = 0
        for t in 0..<nthreads where threads[t].status == Status.barrier && threads[t].barrier == id {
          votes += Int(threads[t].barrierValue)
        }
        for t in 0..<nthreads where threads[t].status == Status.barrier && threads[t].barrier == id {
          let ins = funcs[Int(threads[t].fn)].code[Int(threads[t].pc - 1)]
          if ins.op == .barRed {
            laneRegs(t)[Int(ins.d)] =
              switch ins.mod {
              case 0: UInt64(votes)
              case 1: votes == waiting ? 1 : 0
              default: votes > 0 ? 1 : 0
              }
          }
          threads[t].status = Status.ready
        }
        arrivals[id] = 0
        released = true
      }
    }
    return released
  }

  /// Readies the threads waiting at the grid barrier (every block has arrived).
  mutating func releaseGrid() {
    gridWaiting = false
    for t in 0..<nthreads where threads[t].status == Status.gridBarrier { threads[t].status = Status.ready }
  }

  func deadlockDetail() -> String {
    var parts: [String] = []
    var shown = 0
    for t in 0..<nthreads where threads[t].status != Status.exited {
      if shown == 6 {
        parts.append("...")
        break
      }
      shown += 1
      let s = threads[t]
      let ins = funcs[Int(s.fn)].code[
        Int(s.status == Status.barrier || s.status == Status.gridBarrier ? s.pc - 1 : s.pc)]
      let what =
        s.status == Status.barrier
        ? "bar.sync \(s.barrier)" : s.status == Status.gridBarrier ? "a grid-wide sync" : "\(ins.op)"
      parts.append("thread \(dim(t)) waits at \(what) (line \(ins.line))")
    }
    return "every live thread waits and none can be released: " + parts.joined(separator: "; ")
  }

  /// Warp collectives (shfl/vote/activemask/bar.warp/redux .sync): a group of lanes parked at
  /// the same instruction runs it when every lane named in each member's mask is parked there
  /// too or has exited (PTX ISA §9.7.8.6 shfl.sync, §9.7.13.4 vote.sync).
  mutating func releaseCollectives(activemask: Bool) throws(PTXError) -> Bool {
    var released = false
    let warps = (nthreads + 31) / 32
    for w in 0..<warps {
      let lanes = Swift.min(32, nthreads - w * 32)
      var done: UInt32 = 0
      for l in 0..<lanes {
        let t = w * 32 + l
        let s = threads[t]
        guard s.status == Status.collective, done & (1 << UInt32(l)) == 0 else { continue }
        var group: UInt32 = 0
        var exited: UInt32 = 0
        for m in 0..<lanes {
          let o = threads[w * 32 + m]
          if o.status == Status.collective && o.fn == s.fn && o.pc == s.pc { group |= 1 << UInt32(m) }
          if o.status == Status.exited { exited |= 1 << UInt32(m) }
        }
        done |= group
        let existing: UInt32 = lanes == 32 ? ~0 : (1 << UInt32(lanes)) - 1
        let ins = funcs[Int(s.fn)].code[Int(s.pc)]
        if ins.op == .activemask && !activemask { continue }
        // Drop lanes whose mask names a lane that is elsewhere, until the group is stable.
        var members = group
        if ins.op != .activemask {
          while true {
            var next = members
            for m in 0..<lanes where members & (1 << UInt32(m)) != 0 {
              let mask = UInt32(
                truncatingIfNeeded: laneRegs(w * 32 + m)[
                  Int(
                    ins.op == .shfl
                      ? Int32(ins.imm) : ins.op == .vote || ins.op == .redux || ins.op == .match ? ins.b : ins.a)])
              if mask & existing & ~(members | exited) != 0 { next &= ~(1 << UInt32(m)) }
            }
            if next == members { break }
            members = next
          }
        }
        if members == 0 { continue }
        try executeCollective(ins, warp: w, lanes: lanes, members: members)
        released = true
      }
    }
    return released
  }

  func laneRegs(_ t: Int) -> UnsafeMutablePointer<UInt64> { stack + t * stackSlots + Int(threads[t].frame) }

  mutating func executeCollective(_ ins: Instr, warp w: Int, lanes: Int, members: UInt32) throws(PTXError) {
    var results = [UInt64](repeating: 0, count: 32)
    var preds = [UInt64](repeating: 0, count: 32)
    for l in 0..<lanes where members & (1 << UInt32(l)) != 0 {
      let r = laneRegs(w * 32 + l)
      switch ins.op {
      case .shfl:
        let b = UInt32(truncatingIfNeeded: r[Int(ins.b)]) & 0x1f
        let c = UInt32(truncatingIfNeeded: r[Int(ins.c)])
        let clamp = c & 0x1f
        let seg = (c >> 8) & 0x1f
        let lane = UInt32(l)
        let maxLane = (lane & seg) | (clamp & ~seg)
        let minLane = lane & seg
        var j: Int32
        var ok: Bool
        switch ins.mod {
        case 0:
          j = Int32(lane) - Int32(b)
          ok = j >= Int32(maxLane)
        case 1:
          j = Int32(lane + b)
          ok = j <= Int32(maxLane)
        case 2:
          j = Int32(lane ^ b)
          ok = j <= Int32(maxLane)
        default:
          j = Int32(minLane | (b & ~seg))
          ok = j <= Int32(maxLane)
        }
        if !ok || j >= Int32(lanes) || j < 0 { j = Int32(l) }
        results[l] = laneRegs(w * 32 + Int(j))[Int(ins.a)] & 0xffff_ffff
        preds[l] = ok ? 1 : 0
      case .vote:
        let mask = UInt32(truncatingIfNeeded: r[Int(ins.b)]) & members
        var ballot: UInt32 = 0
        for m in 0..<lanes where mask & (1 << UInt32(m)) != 0 {
          let p = (laneRegs(w * 32 + m)[Int(ins.a)] != 0) != (ins.flags & Flag.negC != 0)
          if p { ballot |= 1 << UInt32(m) }
        }
        switch ins.mod {
        case 0: results[l] = ballot == mask ? 1 : 0
        case 1: results[l] = ballot != 0 ? 1 : 0
        case 2: results[l] = ballot == 0 || ballot == mask ? 1 : 0
        default: results[l] = UInt64(ballot)
        }
      case .redux:
        let mask = UInt32(truncatingIfNeeded: r[Int(ins.b)]) & members
        var acc: UInt64? = nil
        for m in 0..<lanes where mask & (1 << UInt32(m)) != 0 {
          let v = laneRegs(w * 32 + m)[Int(ins.a)] & 0xffff_ffff
          guard let a = acc else {
            acc = v
            continue
          }
          let signed = TypeCode.kind(ins.ty) == TypeCode.s
          switch AtomicOp(rawValue: ins.mod)! {
          case .add: acc = (a &+ v) & 0xffff_ffff
          case .min: acc = signed ? (sext(v, 32) < sext(a, 32) ? v : a) : Swift.min(a, v)
          case .max: acc = signed ? (sext(v, 32) > sext(a, 32) ? v : a) : Swift.max(a, v)
          case .and: acc = a & v
          case .or: acc = a | v
          default: acc = a ^ v
          }
        }
        results[l] = acc ?? 0
      case .match:
        // match.sync (PTX ISA §9.7.13.11): .any gives the lanes of the mask whose value equals
        // this lane's; .all gives the mask when every such lane agrees (and sets the predicate).
        let mask = UInt32(truncatingIfNeeded: r[Int(ins.b)]) & members
        let mine = r[Int(ins.a)] & ins.mask
        var same: UInt32 = 0
        for m in 0..<lanes where mask & (1 << UInt32(m)) != 0 && laneRegs(w * 32 + m)[Int(ins.a)] & ins.mask == mine {
          same |= 1 << UInt32(m)
        }
        if ins.mod == 0 {
          results[l] = UInt64(same)
        } else {
          results[l] = same == mask ? UInt64(mask) : 0
          preds[l] = same == mask ? 1 : 0
        }
      case .activemask:
        results[l] = UInt64(members)
      default:
        break
      }
    }
    for l in 0..<lanes where members & (1 << UInt32(l)) != 0 {
      let t = w * 32 + l
      let r = laneRegs(t)
      if ins.op != .warpSync {
        r[Int(ins.d)] = results[l]
        if ins.op == .shfl || ins.op == .match { r[Int(ins.e)] = preds[l] }
      }
      threads[t].pc += 1
      threads[t].status = Status.ready
    }
    executed &+= UInt64(members.nonzeroBitCount)
  }
}
