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
  /// a loop's exit) with no control-flow analysis. Calls, returns and sync points go lane by
  /// lane through `step`, so a collective parks the lanes that arrive together and is released
  /// as the per-thread engine releases it (`releaseCollectives`).
  mutating func runWarp(_ w: Int) throws(PTXError) -> Bool {
    let t0 = w &* 32
    let lanes = Swift.min(32, nthreads &- t0)
    let stride = stackSlots
    let warpStack = stack + t0 &* stride
    var culprit = t0
    do throws(Fault) {
      while true {
        // The group: (deepest frame, lowest function index, lowest pc) among the ready lanes.
        var found = false
        var gframe: Int32 = 0
        var gfn: Int32 = 0
        var gpc: Int32 = 0
        for l in 0..<lanes {
          let s = threads[t0 &+ l]
          guard s.status == Status.ready else { continue }
          if !found || s.frame > gframe || (s.frame == gframe && (s.fn < gfn || (s.fn == gfn && s.pc < gpc))) {
            (found, gframe, gfn, gpc) = (true, s.frame, s.fn, s.pc)
          }
        }
        if !found { return false }
        var group: UInt32 = 0
        // The nearest instruction ahead where another lane of this frame waits: the group
        // stops there to take it in.
        var nextStop = Int.max
        for l in 0..<lanes {
          let s = threads[t0 &+ l]
          guard s.status == Status.ready && s.frame == gframe && s.fn == gfn else { continue }
          if s.pc == gpc { group |= 1 << UInt32(l) } else { nextStop = Swift.min(nextStop, Int(s.pc)) }
        }
        let fn = funcs[Int(gfn)]
        let code = fn.code
        let r0 = warpStack + Int(gframe)
        let count = UInt64(group.nonzeroBitCount)
        var pc = Int(gpc)
        var n: UInt64 = 0
        // Counted when the group ends, as `execute` counts a run (a fault's included).
        defer { executed &+= n }
        var limit = runLimit()
        // A lane `l`'s frame is `r0 + l * stride`: the lanes of a group share the frame offset.
        while pc < nextStop {
          let i = code[pc]
          if i.op.isStraightLine {
            n &+= count
            var m = i.guardSlot >= 0 ? guardMask(i, group, r0) : group
            while m != 0 {
              let l = m.trailingZeroBitCount
              m &= m &- 1
              let t = t0 &+ l
              let r = r0 + l &* stride
              do throws(Fault) {
                try compute(i, r, r[Int(i.a)], r[Int(i.b)], fn, threads[t], t, n)
              } catch {
                culprit = t
                throw error
              }
            }
            pc &+= 1
            continue
          }
          if i.op == .bra {
            n &+= count
            // The checkpoint counts this instruction once, as when the group's first lane reaches it.
            if n > limit, try checkpoint(n &- count &+ 1, &limit) {
              setPC(group, t0, pc)
              n &-= count  // the branch runs on resume
              return true
            }
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
          if i.op == .exit || (i.op == .ret && gframe == 0) {
            // The kernel's end for the lanes whose guard holds (PTX ISA §9.7.13.8 exit): they
            // park exited, as `execute` parks them; the others go on.
            n &+= count
            if n > limit, try checkpoint(n &- count &+ 1, &limit) {
              setPC(group, t0, pc)
              n &-= count  // the instruction runs on resume
              return true
            }
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
          // Calls, returns and sync points: one lane at a time.
          setPC(group, t0, pc)
          executed &+= n
          n = 0
          var m = group
          while m != 0 {
            let l = m.trailingZeroBitCount
            m &= m &- 1
            if executed >= suspendAt { return true }
            culprit = t0 &+ l
            try step(t0 &+ l)
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
