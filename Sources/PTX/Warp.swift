extension BlockRunner {
  /// Runs warp `w`'s ready lanes in lockstep until none is ready (all parked or exited), or
  /// returns true when it stopped to suspend (`suspendAt`; the lanes are left ready where
  /// they had not yet run, as `run` leaves a thread).
  ///
  /// A group is the ready lanes at the same instruction of the same frame: the deepest frame
  /// first, then the lowest pc ("min-pc" reconvergence). A straight-line instruction is decoded
  /// once and run over the group's lanes whose guard holds; a branch that splits the group, or
  /// reaching an instruction where another lane waits, ends the group and a new one is picked,
  /// so lanes that diverged meet again at the first instruction they share (an if/else's join,
  /// a loop's exit) with no control-flow analysis. Barriers and collectives park the group's
  /// lanes, so a collective takes the lanes that arrive together and is released as the
  /// per-thread engine releases it (`releaseCollectives`); calls and other returns go lane by
  /// lane through `step`.
  mutating func runWarp(_ w: Int) throws(PTXError) -> Bool {
    let t0 = w &* 32
    let lanes = Swift.min(32, nthreads &- t0)
    let stride = stackSlots
    let warpStack = stack + t0 &* stride
    var culprit = t0
    // A lane's fault waits until the lanes before it have run to where they park, exit or
    // fault themselves; the lanes after it stop. The per-thread engine runs threads in order,
    // so it reports the first faulting thread, and this reports the same one.
    var pending: Fault?
    var limitLane = lanes
    defer { if !warpLines.isEmpty { flushWarpLines(upTo: pending != nil ? t0 &+ limitLane : Int.max) } }
    do throws(Fault) {
      while true {
        // The group: (deepest frame, lowest function index, lowest pc) among the ready lanes.
        var found = false
        var gframe: Int32 = 0
        var gfn: Int32 = 0
        var gpc: Int32 = 0
        for l in 0..<limitLane {
          let s = threads[t0 &+ l]
          guard s.status == Status.ready else { continue }
          if !found || s.frame > gframe || (s.frame == gframe && (s.fn < gfn || (s.fn == gfn && s.pc < gpc))) {
            (found, gframe, gfn, gpc) = (true, s.frame, s.fn, s.pc)
          }
        }
        if !found {
          if let pending {
            culprit = t0 &+ limitLane
            throw pending
          }
          return false
        }
        var group: UInt32 = 0
        // The nearest instruction ahead where another lane of this frame waits: the group
        // stops there to take it in.
        var nextStop = Int.max
        for l in 0..<limitLane {
          let s = threads[t0 &+ l]
          guard s.status == Status.ready && s.frame == gframe && s.fn == gfn else { continue }
          if s.pc == gpc { group |= 1 << UInt32(l) } else { nextStop = Swift.min(nextStop, Int(s.pc)) }
        }
        let fp = funcs + Int(gfn)
        let code = fp.pointee.code
        let r0 = warpStack + Int(gframe)
        var count = UInt64(group.nonzeroBitCount)
        var pc = Int(gpc)
        var n: UInt64 = 0
        // Counted when the group ends, as `execute` counts a run (a fault's included).
        defer { executed &+= n }
        var limit = runLimit()
        // A lane `l`'s frame is `r0 + l * stride`: the lanes of a group share the frame offset.
        groupLoop: while pc < nextStop {
          let i = code[pc]
          if i.op.isStraightLine {
            n &+= count
            var m = i.guardSlot >= 0 ? guardMask(i, group, r0) : group
            // The hottest ops as loops over the lanes, decoded once; a lane they cannot take
            // (an access off the fast path) and the rest of the ops go through `compute`.
            if m != 0 { m = lanesFast(i, r0, t0, m) }
            while m != 0 {
              let l = m.trailingZeroBitCount
              m &= m &- 1
              let t = t0 &+ l
              let r = r0 + l &* stride
              do throws(Fault) {
                try compute(i, r, r[Int(i.a)], r[Int(i.b)], fp, t, n)
              } catch {
                culprit = t
                if case .budget = error { throw error }
                if case .cancelled = error { throw error }
                pending = error
                limitLane = l
                group &= (1 << UInt32(l)) &- 1
                count = UInt64(group.nonzeroBitCount)
                m = 0
              }
            }
            if group == 0 { break groupLoop }
            pc &+= 1
            continue
          }
          // Branches, the kernel's end and sync points run for the whole group: counted here,
          // where a checkpoint may suspend the group before the instruction (it runs on resume).
          let isBranch = i.op == .bra
          let isExit = !isBranch && (i.op == .exit || (i.op == .ret && gframe == 0))
          let isSync =
            !isBranch && !isExit
            && (i.op == .barSync || i.op == .barRed || i.op == .warpSync || i.op == .shfl || i.op == .vote
              || i.op == .activemask || i.op == .redux || i.op == .match)
          if isBranch || isExit || isSync {
            n &+= count
            // The checkpoint counts this instruction once, as when the group's first lane reaches it.
            if n > limit, try checkpoint(n &- count &+ 1, &limit) {
              setPC(group, t0, pc)
              n &-= count
              if let pending {
                culprit = t0 &+ limitLane
                throw pending
              }
              return true
            }
          }
          if isBranch {
            let taken = i.guardSlot >= 0 ? guardMask(i, group, r0) : group
            if taken == group {
              pc = Int(i.imm)
            } else if taken == 0 {
              pc &+= 1
            } else {
              // Divergence: each lane goes its way, and the next group is picked.
              var m = group
              while m != 0 {
                let l = m.trailingZeroBitCount
                m &= m &- 1
                threads[t0 &+ l].pc = Int32(taken & (1 << UInt32(l)) != 0 ? Int(i.imm) : pc &+ 1)
              }
              group = 0
              break
            }
            continue
          }
          if isExit {
            // The kernel's end for the lanes whose guard holds (PTX ISA §9.7.13.8 exit): they
            // park exited, as `execute` parks them; the others go on.
            let off = i.guardSlot >= 0 ? guardMask(i, group, r0) : group
            setPC(group, t0, off == group ? pc : pc &+ 1)
            var m = off
            while m != 0 {
              let l = m.trailingZeroBitCount
              m &= m &- 1
              threads[t0 &+ l].pc = Int32(pc)
              threads[t0 &+ l].status = Status.exited
            }
            group = 0
            break
          }
          if isSync {
            // Sync points park the lanes whose guard holds, as `execute` parks them: past a
            // barrier (bar.red with its predicate), at a collective (`releaseCollectives` runs
            // it); the others go on. One lane at a time through `step` cost matmul 3 host
            // instructions per thread-instruction.
            let on = i.guardSlot >= 0 ? guardMask(i, group, r0) : group
            setPC(group & ~on, t0, pc &+ 1)
            let barrier = i.op == .barSync || i.op == .barRed
            var m = on
            while m != 0 {
              let l = m.trailingZeroBitCount
              m &= m &- 1
              let t = t0 &+ l
              if barrier {
                let r = r0 + l &* stride
                threads[t].pc = Int32(pc &+ 1)
                threads[t].barrier = UInt8(r[Int(i.a)] & 15)
                threads[t].barrierCount = UInt32(truncatingIfNeeded: r[Int(i.b)])  // the zero slot when PTX gave no count
                threads[t].barrierValue =
                  i.op == .barRed && (r[Int(i.c)] != 0) != (i.flags & Flag.negC != 0) ? 1 : 0
                threads[t].status = Status.barrier
              } else {
                threads[t].pc = Int32(pc)
                threads[t].status = Status.collective
              }
            }
            group = 0
            break
          }
          // Calls, returns and other sync points: one lane at a time.
          setPC(group, t0, pc)
          executed &+= n
          n = 0
          var m = group
          while m != 0 {
            let l = m.trailingZeroBitCount
            m &= m &- 1
            if executed >= suspendAt {
              if let pending {
                culprit = t0 &+ limitLane
                throw pending
              }
              return true
            }
            culprit = t0 &+ l
            do throws(Fault) { try step(t0 &+ l) } catch {
              if case .budget = error { throw error }
              if case .cancelled = error { throw error }
              pending = error
              limitLane = l
              m = 0
            }
          }
          group = 0
          break
        }
        setPC(group, t0, pc)
      }
    } catch {
      throw self.error(error, thread: culprit)
    }
  }

  /// Runs straight-line instruction `i` over the lanes of `m` (frames at `r0`, `stackSlots`
  /// apart; the warp's first thread `t0`) for the ops it has a loop for, and returns the lanes
  /// it did not run, for `compute`. Nothing here faults: an access that is not aligned, in
  /// bounds and scalar stops the loop at its lane.
  @inline(__always)
  mutating func lanesFast(_ i: Instr, _ r0: UnsafeMutablePointer<UInt64>, _ t0: Int, _ m: UInt32) -> UInt32 {
    let stride = stackSlots
    let d = Int(i.d)
    let a = Int(i.a)
    let b = Int(i.b)
    let c = Int(i.c)
    let mask = i.mask
    switch i.op {
    case .add: return eachLane(m, r0, stride) { r in r[d] = (r[a] &+ r[b]) & mask }
    case .sub: return eachLane(m, r0, stride) { r in r[d] = (r[a] &- r[b]) & mask }
    case .mov: return eachLane(m, r0, stride) { r in r[d] = r[a] & mask }
    case .and: return eachLane(m, r0, stride) { r in r[d] = r[a] & r[b] & mask }
    case .or: return eachLane(m, r0, stride) { r in r[d] = (r[a] | r[b]) & mask }
    case .xor: return eachLane(m, r0, stride) { r in r[d] = (r[a] ^ r[b]) & mask }
    case .shl:
      let width = UInt64(64 - i.sh)
      return eachLane(m, r0, stride) { r in
        let s = r[b] & 0xffff_ffff
        r[d] = s >= width ? 0 : (r[a] << s) & mask
      }
    case .madLo: return eachLane(m, r0, stride) { r in r[d] = (r[a] &* r[b] &+ r[c]) & mask }
    case .mulLo: return eachLane(m, r0, stride) { r in r[d] = (r[a] &* r[b]) & mask }
    case .mulWideU:
      let um = ~UInt64(0) >> UInt64(i.sh)
      return eachLane(m, r0, stride) { r in r[d] = ((r[a] & um) &* (r[b] & um)) & mask }
    case .mulWideS:
      let sh = i.sh
      return eachLane(m, r0, stride) { r in r[d] = UInt64(bitPattern: sext(r[a], sh) &* sext(r[b], sh)) & mask }
    case .ffma where i.flags & (Flag.ftz | Flag.sat) == 0:
      return eachLane(m, r0, stride) { r in r[d] = bits(f32(r[c]).addingProduct(f32(r[a]), f32(r[b]))) }
    case .fadd where i.flags & (Flag.ftz | Flag.sat) == 0:
      return eachLane(m, r0, stride) { r in r[d] = bits(f32(r[a]) + f32(r[b])) }
    case .fmul where i.flags & (Flag.ftz | Flag.sat) == 0:
      return eachLane(m, r0, stride) { r in r[d] = bits(f32(r[a]) * f32(r[b])) }
    case .setpI where i.ty2 == 0 && i.mod <= Cmp.hs.rawValue:
      // Both operands as keys compared unsigned: a signed order is the unsigned order of the
      // sign-extended values with the sign bit flipped.
      let sh = UInt64(i.sh)
      let op = i.mod
      let signed = i.flags & Flag.signed != 0 && op >= Cmp.lt.rawValue && op <= Cmp.ge.rawValue
      let e = Int(i.e)
      return eachLane(m, r0, stride) { r in
        let x: UInt64
        let y: UInt64
        if signed {
          x = UInt64(bitPattern: Int64(bitPattern: r[a] << sh) >> Int64(sh)) ^ (1 << 63)
          y = UInt64(bitPattern: Int64(bitPattern: r[b] << sh) >> Int64(sh)) ^ (1 << 63)
        } else {
          x = (r[a] << sh) >> sh
          y = (r[b] << sh) >> sh
        }
        let v: Bool
        switch op {
        case Cmp.eq.rawValue: v = x == y
        case Cmp.ne.rawValue: v = x != y
        case Cmp.lt.rawValue, Cmp.lo.rawValue: v = x < y
        case Cmp.le.rawValue, Cmp.ls.rawValue: v = x <= y
        case Cmp.gt.rawValue, Cmp.hi.rawValue: v = x > y
        default: v = x >= y
        }
        r[d] = v ? 1 : 0
        r[e] = v ? 0 : 1
      }
    case .movSR where i.imm == Special.tidX.rawValue:
      var m = m
      while m != 0 {
        let l = m.trailingZeroBitCount
        m &= m &- 1
        (r0 + l &* stride)[d] = UInt64(threads[t0 &+ l].x) & mask
      }
      return 0
    case .movSR where i.imm >= Special.ntidX.rawValue && i.imm <= Special.nctaidZ.rawValue:
      // The block's and grid's shape and the block's index: the same for every lane.
      let v = special(Special(rawValue: i.imm)!, t0, 0) & mask
      return eachLane(m, r0, stride) { r in r[d] = v }
    case .ldKParam where i.e == 1:
      // The kernel's parameters are the same for every lane: read once.
      guard i.imm >= 0, Int(i.imm) + Int(i.ty2) <= paramBytes else { return m }
      let v = Self.loadScalar(UnsafeMutableRawPointer(mutating: params + Int(i.imm)), i)
      return eachLane(m, r0, stride) { r in r[d] = v }
    case .ldShared where i.e == 1 && i.ty2 == 4 && i.flags & Flag.signed == 0 && sharedBytes >= 4:
      let limit = UInt64(sharedBytes) &- 4
      let base = shared
      let off = UInt64(bitPattern: i.imm)
      return eachLaneUntil(m, r0, stride) { r in
        let addr = r[a] &+ off
        guard addr & 3 == 0, addr <= limit else { return false }
        r[d] = UInt64(base.load(fromByteOffset: Int(addr), as: UInt32.self)) & mask
        return true
      }
    case .stShared where i.e == 1 && i.ty2 == 4 && sharedBytes >= 4:
      let limit = UInt64(sharedBytes) &- 4
      let base = shared
      let off = UInt64(bitPattern: i.imm)
      return eachLaneUntil(m, r0, stride) { r in
        let addr = r[a] &+ off
        guard addr & 3 == 0, addr <= limit else { return false }
        base.storeBytes(of: UInt32(truncatingIfNeeded: r[d]), toByteOffset: Int(addr), as: UInt32.self)
        return true
      }
    case .ldGlobal where i.e == 1:
      let size = i.ty2
      let signed = i.flags & Flag.signed != 0
      var m = m
      while m != 0 {
        let r = r0 + m.trailingZeroBitCount &* stride
        let addr = r[a] &+ UInt64(bitPattern: i.imm)
        guard addr & (UInt64(size) &- 1) == 0, let p = global(addr, Int(size), write: false) else { break }
        m &= m &- 1
        var v = loadRelaxed(p, size)
        if signed { v = UInt64(bitPattern: sext(v, 64 - 8 * size)) }
        r[d] = v & mask
      }
      return m
    case .stGlobal where i.e == 1:
      let size = i.ty2
      var m = m
      while m != 0 {
        let r = r0 + m.trailingZeroBitCount &* stride
        let addr = r[a] &+ UInt64(bitPattern: i.imm)
        guard addr & (UInt64(size) &- 1) == 0, let p = global(addr, Int(size), write: true) else { break }
        m &= m &- 1
        storeRelaxed(p, size, r[d])
      }
      return m
    default: return m
    }
  }

  /// The lanes of `group` (frames at `r0`, `stackSlots` apart) whose guard predicate holds.
  @inline(__always) func guardMask(_ i: Instr, _ group: UInt32, _ r0: UnsafeMutablePointer<UInt64>) -> UInt32 {
    var on: UInt32 = 0
    var m = group
    let g = Int(i.guardSlot)
    while m != 0 {
      let l = m.trailingZeroBitCount
      m &= m &- 1
      if (r0[l &* stackSlots &+ g] != 0) != i.guardNeg { on |= 1 << UInt32(l) }
    }
    return on
  }

  /// Leaves the lanes of `group` (warp lanes from thread `t0`) at `pc`.
  @inline(__always) func setPC(_ group: UInt32, _ t0: Int, _ pc: Int) {
    var m = group
    while m != 0 {
      let l = m.trailingZeroBitCount
      m &= m &- 1
      threads[t0 &+ l].pc = Int32(pc)
    }
  }
}

/// Runs `body` on the frame of each lane of `m` (lane `l`'s at `r0 + l * stride`), in lane
/// order; a contiguous run of lanes (a converged warp) steps the pointer instead of decoding
/// the mask. Returns 0.
@inline(__always)
func eachLane(
  _ m: UInt32, _ r0: UnsafeMutablePointer<UInt64>, _ stride: Int, _ body: (UnsafeMutablePointer<UInt64>) -> Void
) -> UInt32 {
  if m & (m &+ (m & (0 &- m))) == 0 {
    var r = r0 + m.trailingZeroBitCount &* stride
    for _ in 0..<m.nonzeroBitCount {
      body(r)
      r += stride
    }
  } else {
    var m = m
    while m != 0 {
      body(r0 + m.trailingZeroBitCount &* stride)
      m &= m &- 1
    }
  }
  return 0
}

/// `eachLane` for a body that may decline a lane (false): stops there and returns the lanes
/// of `m` from that one on.
@inline(__always)
func eachLaneUntil(
  _ m: UInt32, _ r0: UnsafeMutablePointer<UInt64>, _ stride: Int, _ body: (UnsafeMutablePointer<UInt64>) -> Bool
) -> UInt32 {
  if m & (m &+ (m & (0 &- m))) == 0 {
    var l = m.trailingZeroBitCount
    let end = l &+ m.nonzeroBitCount
    var r = r0 + l &* stride
    while l < end {
      if !body(r) { return m & ~((1 << UInt32(l)) &- 1) }
      r += stride
      l &+= 1
    }
    return 0
  }
  var m = m
  while m != 0 {
    if !body(r0 + m.trailingZeroBitCount &* stride) { return m }
    m &= m &- 1
  }
  return 0
}
