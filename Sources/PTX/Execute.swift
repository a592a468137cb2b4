import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

extension BlockRunner {
  /// Runs thread `t` until it parks at a sync point or exits (the per-thread engine).
  mutating func run(_ t: Int) throws(Fault) { try execute(t, once: false) }

  /// Runs one instruction of thread `t` and leaves it ready at the next (unless it parked or
  /// exited): how the warp loop (`runWarp`) takes calls, returns and sync points, lane by lane.
  mutating func step(_ t: Int) throws(Fault) { try execute(t, once: true) }

  /// Runs thread `t`; with `once`, one instruction only. The loop keeps the frame pointer,
  /// code pointer and pc in locals; each instruction is one `switch` case over slot indices.
  @inline(__always)
  mutating func execute(_ t: Int, once: Bool) throws(Fault) {
    var st = threads[t]
    let base = stack + t * stackSlots
    var r = base + Int(st.frame)
    var fn = funcs[Int(st.fn)]
    var fp = funcs + Int(st.fn)
    var code = fn.code
    var pc = Int(st.pc)
    var pbase = UnsafeMutableRawPointer(r + fn.slots)
    var n: UInt64 = 0
    // Checked where a thread can loop (branches, calls, sync points): past
    // `limit`, either the budget is spent or it is time to report progress.
    // Both count the launch's instructions, not this thread's: a grid of many
    // short threads reports progress too.
    // Past `suspendAt` the checkpoint asks its caller to suspend the thread
    // instead (`PTXLaunch.run(until:)`): every checkpoint sits before its
    // instruction changes anything, so the thread can stop there and run
    // that instruction when it is resumed.
    var limit = runLimit()
    // No local function captures `n`, `pc` or `r`: a captured variable lives in memory, and
    // these change with every instruction (callgrind: a load and store each per instruction).
    defer { executed &+= n }

    while true {
      if once && n == 1 {
        park(t, &st, pc: pc, frame: r - base, Status.ready)
        return
      }
      let i = code[pc]
      n &+= 1
      if i.guardSlot >= 0 && (r[Int(i.guardSlot)] != 0) == i.guardNeg {
        pc &+= 1
        continue
      }
      let a = r[Int(i.a)]
      let b = r[Int(i.b)]
      // Straight-line instructions (every op before `.bra`) in one jump table; the rest below.
      if i.op.isStraightLine {
        try compute(i, r, a, b, fp, t, n)
        pc &+= 1
        continue
      }
      switch i.op {
      // Control flow (PTX ISA §9.7.13).
      case .bra:
        if n > limit, try checkpoint(n, &limit) {
          park(t, &st, pc: pc, frame: r - base, Status.ready)
          n &-= 1  // the instruction at `pc` runs on resume
          return
        }
        pc = Int(i.imm)
        continue
      case .call:
        let site = module.callSite(Int(st.fn), Int(i.imm))
        switch site.target {
        case .function(let callee):
          if n > limit, try checkpoint(n, &limit) {
            park(t, &st, pc: pc, frame: r - base, Status.ready)
            n &-= 1
            return
          }
          let cf = funcs[callee]
          let newR = r + fn.frameSlots
          let newLocal = r[Int(Slot.localBase)] + UInt64(fn.localBytes)
          guard newR + cf.frameSlots <= base + stackSlots, Int(newLocal) + cf.localBytes <= localBytes else {
            throw .launch("call stack overflow calling a function from PTX line \(i.line) (recursion too deep)")
          }
          newR.update(from: cf.template, count: cf.slots)
          newR[Int(Slot.localBase)] = newLocal
          newR[Int(Slot.returnPC)] = UInt64(pc + 1)
          newR[Int(Slot.callerFrame)] = UInt64(r - base)
          newR[Int(Slot.callerFunction)] = UInt64(st.fn)
          newR[Int(Slot.callSite)] = UInt64(i.imm)
          newR[Int(Slot.localWindow)] = r[Int(Slot.localWindow)]
          let newP = UnsafeMutableRawPointer(newR + cf.slots)
          for arg in site.args {
            switch arg.source {
            case .param(let off): (newP + arg.calleeOffset).copyMemory(from: pbase + off, byteCount: arg.size)
            case .slot(let s): (newP + arg.calleeOffset).copyMemory(from: r + Int(s), byteCount: Swift.min(arg.size, 8))
            }
          }
          st.fn = Int32(callee)
          fn = cf
          fp = funcs + callee
          code = cf.code
          r = newR
          pbase = newP
          pc = 0
          continue
        case .vprintf:
          let text = formatPrintf(format: site.argument(0, 8, r, pbase), args: site.argument(1, 8, r, pbase))
          emitPrintf(text, thread: t)
          for res in site.results {
            store(pbase + res.callerOffset, UInt8(Swift.min(res.size, 4)), UInt64(text.utf8.count))
          }
        case .assertfail:
          throw .assertion(
            cString(site.argument(0, 8, r, pbase)), cString(site.argument(1, 8, r, pbase)),
            Int(Int32(truncatingIfNeeded: site.argument(2, 4, r, pbase))), cString(site.argument(3, 8, r, pbase)))
        case .deviceRuntime(let f):
          if f == .synchronize || f == .synchronizeGrid, n > limit, try checkpoint(n, &limit) {
            park(t, &st, pc: pc, frame: r - base, Status.ready)
            n &-= 1  // the instruction at `pc` runs on resume
            return
          }
          if try deviceRuntimeCall(f, site, t, r, pbase, line: i.line) {
            // A grid-wide barrier: the thread waits past the call until every block's
            // threads have arrived (`CooperativeRun`).
            pc &+= 1
            park(t, &st, pc: pc, frame: r - base, Status.gridBarrier)
            return
          }
        case .unsupported(let name):
          throw .unsupported("call \(name)", i.line)
        }
      case .ret:
        if r == base {
          // Short threads that never branch back still count towards progress.
          if n > limit, try checkpoint(n, &limit) {
            park(t, &st, pc: pc, frame: r - base, Status.ready)
            n &-= 1
            return
          }
          park(t, &st, pc: pc, frame: r - base, Status.exited)
          return
        }
        let callerFn = Int(r[Int(Slot.callerFunction)])
        let site = module.callSite(callerFn, Int(r[Int(Slot.callSite)]))
        let callerR = base + Int(r[Int(Slot.callerFrame)])
        let cf = funcs[callerFn]
        let callerP = UnsafeMutableRawPointer(callerR + cf.slots)
        for res in site.results {
          (callerP + res.callerOffset).copyMemory(from: pbase + res.calleeOffset, byteCount: res.size)
        }
        pc = Int(r[Int(Slot.returnPC)])
        st.fn = Int32(callerFn)
        fn = cf
        fp = funcs + callerFn
        code = cf.code
        r = callerR
        pbase = callerP
        continue
      case .exit:
        if n > limit, try checkpoint(n, &limit) {
          park(t, &st, pc: pc, frame: r - base, Status.ready)
          n &-= 1  // the instruction at `pc` runs on resume
          return
        }
        park(t, &st, pc: pc, frame: r - base, Status.exited)
        return
      case .trap: throw .trap(i.line)
      case .nop: break
      case .fence: atomicMemoryFence(ordering: .sequentiallyConsistent)

      // Sync points: park (PTX ISA §9.7.13.1 bar/barrier); bar.red brings its predicate.
      case .barSync, .barRed:
        if n > limit, try checkpoint(n, &limit) {
          park(t, &st, pc: pc, frame: r - base, Status.ready)
          n &-= 1  // the instruction at `pc` runs on resume
          return
        }
        pc &+= 1
        st.barrier = UInt8(a & 15)
        st.barrierCount = UInt32(truncatingIfNeeded: b)  // the zero slot when PTX gave no count
        st.barrierValue = i.op == .barRed && (r[Int(i.c)] != 0) != (i.flags & Flag.negC != 0) ? 1 : 0
        park(t, &st, pc: pc, frame: r - base, Status.barrier)
        return
      case .barArrive:
        arrivals[Int(a & 15)] += 1
      case .warpSync, .shfl, .vote, .activemask, .redux, .match:
        if n > limit, try checkpoint(n, &limit) {
          park(t, &st, pc: pc, frame: r - base, Status.ready)
          n &-= 1  // the instruction at `pc` runs on resume
          return
        }
        park(t, &st, pc: pc, frame: r - base, Status.collective)
        return
      default: break  // `compute`'s
      }
      pc &+= 1
    }
  }

  /// One straight-line instruction (an op before `.bra`) for thread `t` whose frame is `r`:
  /// `a` and `b` are its first two operands' values, `n` the run's count so far (for
  /// `%clock`). The per-thread loop and the warp loop (`runWarp`) share it. The function
  /// comes as a pointer and the thread's state is read where used: a `FuncRT` or
  /// `ThreadState` by value was copied on the stack per instruction (callgrind: 9 host
  /// instructions of the per-thread loop's 17 over main's).
  @_transparent
  mutating func compute(
    _ i: Instr, _ r: UnsafeMutablePointer<UInt64>, _ a: UInt64, _ b: UInt64, _ fn: UnsafeMutablePointer<FuncRT>,
    _ t: Int, _ n: UInt64
  ) throws(Fault) {
    let d = Int(i.d)
    switch i.op {
    case .add: r[d] = (a &+ b) & i.mask
    case .sub: r[d] = (a &- b) & i.mask
    case .mulLo: r[d] = (a &* b) & i.mask
    case .mulHiU:
      if i.sh == 0 {
        r[d] = a.multipliedFullWidth(by: b).high
      } else {
        let m = ~UInt64(0) >> UInt64(i.sh)
        r[d] = (((a & m) &* (b & m)) >> UInt64(64 - i.sh)) & i.mask
      }
    case .mulHiS:
      if i.sh == 0 {
        r[d] = UInt64(bitPattern: Int64(bitPattern: a).multipliedFullWidth(by: Int64(bitPattern: b)).high)
      } else {
        r[d] = UInt64(bitPattern: (sext(a, i.sh) &* sext(b, i.sh)) >> Int64(64 - i.sh)) & i.mask
      }
    case .mulWideU:
      let m = ~UInt64(0) >> UInt64(i.sh)
      r[d] = ((a & m) &* (b & m)) & i.mask
    case .mulWideS: r[d] = UInt64(bitPattern: sext(a, i.sh) &* sext(b, i.sh)) & i.mask
    case .madLo: r[d] = (a &* b &+ r[Int(i.c)]) & i.mask
    case .madHiU, .madHiS:
      var hi: UInt64
      if i.sh == 0 {
        hi =
          i.op == .madHiU
          ? a.multipliedFullWidth(by: b).high
          : UInt64(bitPattern: Int64(bitPattern: a).multipliedFullWidth(by: Int64(bitPattern: b)).high)
      } else if i.op == .madHiU {
        let m = ~UInt64(0) >> UInt64(i.sh)
        hi = ((a & m) &* (b & m)) >> UInt64(64 - i.sh)
      } else {
        hi = UInt64(bitPattern: (sext(a, i.sh) &* sext(b, i.sh)) >> Int64(64 - i.sh))
      }
      r[d] = (hi &+ r[Int(i.c)]) & i.mask
    case .madWideU:
      let m = ~UInt64(0) >> UInt64(i.sh)
      r[d] = ((a & m) &* (b & m) &+ r[Int(i.c)]) & i.mask
    case .madWideS: r[d] = (UInt64(bitPattern: sext(a, i.sh) &* sext(b, i.sh)) &+ r[Int(i.c)]) & i.mask
    case .divU:
      let y = b & i.mask
      r[d] = y == 0 ? i.mask : (a & i.mask) / y
    case .divS:
      let y = sext(b, i.sh)
      r[d] = y == 0 ? i.mask : UInt64(bitPattern: sext(a, i.sh).dividedReportingOverflow(by: y).partialValue) & i.mask
    case .remU:
      let y = b & i.mask
      r[d] = y == 0 ? a & i.mask : (a & i.mask) % y
    case .remS:
      let y = sext(b, i.sh)
      r[d] =
        y == 0
        ? a & i.mask
        : UInt64(bitPattern: sext(a, i.sh).remainderReportingOverflow(dividingBy: y).partialValue) & i.mask
    case .minU: r[d] = Swift.min(a & i.mask, b & i.mask)
    case .maxU: r[d] = Swift.max(a & i.mask, b & i.mask)
    case .minS: r[d] = UInt64(bitPattern: Swift.min(sext(a, i.sh), sext(b, i.sh))) & i.mask
    case .maxS: r[d] = UInt64(bitPattern: Swift.max(sext(a, i.sh), sext(b, i.sh))) & i.mask
    case .absS:
      let x = sext(a, i.sh)
      r[d] = UInt64(bitPattern: x < 0 ? 0 &- x : x) & i.mask
    case .neg: r[d] = (0 &- a) & i.mask
    case .and: r[d] = a & b & i.mask
    case .or: r[d] = (a | b) & i.mask
    case .xor: r[d] = (a ^ b) & i.mask
    case .not: r[d] = ~a & i.mask
    case .cnot: r[d] = a & i.mask == 0 ? 1 : 0
    case .shl:
      let s = b & 0xffff_ffff
      r[d] = s >= UInt64(64 - i.sh) ? 0 : (a << s) & i.mask
    case .shrU:
      let s = b & 0xffff_ffff
      r[d] = s >= UInt64(64 - i.sh) ? 0 : (a & i.mask) >> s
    case .shrS:
      let s = Swift.min(b & 0xffff_ffff, 63)
      r[d] = UInt64(bitPattern: sext(a, i.sh) >> Int64(s)) & i.mask
    case .addSat, .subSat:
      let x = sext(a, 32)
      let y = sext(b, 32)
      let v = i.op == .addSat ? x + y : x - y
      r[d] = UInt64(bitPattern: Swift.min(Swift.max(v, Int64(Int32.min)), Int64(Int32.max))) & 0xffff_ffff
    case .popc: r[d] = UInt64((a & (~UInt64(0) >> UInt64(i.sh))).nonzeroBitCount)
    case .clz:
      let x = a & (~UInt64(0) >> UInt64(i.sh))
      r[d] = x == 0 ? UInt64(64 - i.sh) : UInt64((x << UInt64(i.sh)).leadingZeroBitCount)
    case .brev: r[d] = reverseBits(a) >> UInt64(i.sh)
    case .bfeU, .bfeS:
      // PTX ISA §9.7.1.17 bfe: bit i of d is a[pos+i] while i < len and pos+i <= msb, else
      // the sign bit a[min(pos+len-1, msb)] (0 for .u types and for len == 0).
      let width = UInt64(64 - i.sh)
      let pos = b & 0xff
      let len = r[Int(i.c)] & 0xff
      let x = a & (~UInt64(0) >> UInt64(i.sh))
      let taken = pos >= width ? 0 : Swift.min(len, width - pos)  // bits that come from a
      let takenMask: UInt64 = taken >= 64 ? ~0 : (1 << taken) - 1
      var v = pos >= width ? 0 : (x >> pos) & takenMask
      if i.op == .bfeS && len != 0 && (x >> Swift.min(pos + len - 1, width - 1)) & 1 == 1 { v |= ~takenMask }
      r[d] = v & i.mask
    case .bfi:
      let width = UInt64(64 - i.sh)
      let pos = r[Int(i.c)] & 0xff
      let len = r[Int(i.e)] & 0xff
      if len == 0 || pos >= width {
        r[d] = b & i.mask
      } else {
        let lenMask: UInt64 = len >= 64 ? ~0 : (1 << len) - 1
        let m = (lenMask << pos) & i.mask
        r[d] = ((b & ~m) | ((a << pos) & m)) & i.mask
      }
    case .prmt:
      let bytes = (b & 0xffff_ffff) << 32 | (a & 0xffff_ffff)
      let sel = r[Int(i.c)]
      if i.mod != 0 {
        r[d] = prmtMode(bytes, sel, i.mod)
        break
      }
      var v: UInt64 = 0
      for k in 0..<4 {
        let s = (sel >> UInt64(4 * k)) & 0xf
        var byte = (bytes >> ((s & 7) * 8)) & 0xff
        if s & 8 != 0 { byte = byte & 0x80 != 0 ? 0xff : 0 }
        v |= byte << UInt64(8 * k)
      }
      r[d] = v
    case .mul24U: r[d] = ((a & 0xff_ffff) &* (b & 0xff_ffff)) & i.mask
    case .mul24S: r[d] = UInt64(bitPattern: sext(a, 40) &* sext(b, 40)) & i.mask
    case .mad24U: r[d] = ((a & 0xff_ffff) &* (b & 0xff_ffff) &+ r[Int(i.c)]) & i.mask
    case .mad24S: r[d] = (UInt64(bitPattern: sext(a, 40) &* sext(b, 40)) &+ r[Int(i.c)]) & i.mask
    case .mul24HiU, .mad24HiU:
      let hi = ((a & 0xff_ffff) &* (b & 0xff_ffff)) >> 16
      r[d] = (hi &+ (i.op == .mad24HiU ? r[Int(i.c)] : 0)) & i.mask
    case .mul24HiS, .mad24HiS:
      let hi = UInt64(bitPattern: (sext(a, 40) &* sext(b, 40)) >> 16)
      r[d] = (hi &+ (i.op == .mad24HiS ? r[Int(i.c)] : 0)) & i.mask
    case .addCarry, .subCarry:
      // add.cc/addc and sub.cc/subc (PTX ISA §9.7.2): CC.CF is the carry out of an add and
      // the borrow out of a subtract, so `sub.cc; subc` chains a multi-word subtract.
      let cin = i.flags & Flag.carryIn != 0 ? r[Int(Slot.carry)] & 1 : 0
      let x = a & i.mask
      let y = b & i.mask
      let v: UInt64
      let out: Bool
      if i.op == .addCarry {
        let (s1, o1) = x.addingReportingOverflow(y)
        let (s2, o2) = s1.addingReportingOverflow(cin)
        v = s2 & i.mask
        out = i.sh == 0 ? o1 || o2 : s2 > i.mask
      } else {
        let (s1, o1) = x.subtractingReportingOverflow(y)
        let (s2, o2) = s1.subtractingReportingOverflow(cin)
        v = s2 & i.mask
        out = o1 || o2
      }
      r[d] = v
      if i.flags & Flag.carryOut != 0 { r[Int(Slot.carry)] = out ? 1 : 0 }
    case .sadU:
      let (x, y) = (a & i.mask, b & i.mask)
      r[d] = ((x > y ? x - y : y - x) &+ r[Int(i.c)]) & i.mask
    case .sadS:
      let (x, y) = (sext(a, i.sh), sext(b, i.sh))
      r[d] = ((x > y ? UInt64(bitPattern: x &- y) : UInt64(bitPattern: y &- x)) &+ r[Int(i.c)]) & i.mask
    case .slctI: r[d] = sext(r[Int(i.c)], 32) >= 0 ? a : b
    case .slctF: r[d] = fin(r[Int(i.c)], i.flags) >= 0 ? a : b
    case .shfL, .shfR:
      let c = r[Int(i.c)] & 0xffff_ffff
      let s = i.flags & Flag.wrap != 0 ? c & 31 : Swift.min(c, 32)
      let wide = (b & 0xffff_ffff) << 32 | (a & 0xffff_ffff)
      r[d] = i.op == .shfL ? ((wide << s) >> 32) & 0xffff_ffff : (wide >> s) & 0xffff_ffff
    case .bfindU, .bfindS:
      var x = a & (~UInt64(0) >> UInt64(i.sh))
      if i.op == .bfindS && sext(a, i.sh) < 0 { x = ~x & (~UInt64(0) >> UInt64(i.sh)) }
      // .shiftamt (§9.7.1.13) gives the left shift that moves that bit to the msb.
      r[d] =
        x == 0
        ? 0xffff_ffff : i.mod == 0 ? UInt64(63 - x.leadingZeroBitCount) : UInt64(x.leadingZeroBitCount - Int(i.sh))

    // f32 (PTX ISA §9.7.3); rounding modifiers other than .rn are not modelled for arithmetic.
    case .fadd: r[d] = fout(fin(a, i.flags) + fin(b, i.flags), i.flags)
    case .fsub: r[d] = fout(fin(a, i.flags) - fin(b, i.flags), i.flags)
    case .fmul: r[d] = fout(fin(a, i.flags) * fin(b, i.flags), i.flags)
    case .ffma: r[d] = fout(fin(r[Int(i.c)], i.flags).addingProduct(fin(a, i.flags), fin(b, i.flags)), i.flags)
    case .fdiv: r[d] = fout(fin(a, i.flags) / fin(b, i.flags), i.flags)
    case .fmin, .fmax:
      let v = fminmax(Double(fin(a, i.flags)), Double(fin(b, i.flags)), i.op == .fmax, i.flags & Flag.nan != 0)
      r[d] = fout(Float(v), i.flags)
    case .fabs: r[d] = fout(abs(fin(a, i.flags)), i.flags)
    case .fneg: r[d] = fout(-fin(a, i.flags), i.flags)
    case .frcp: r[d] = fout(1 / fin(a, i.flags), i.flags)
    case .fsqrt: r[d] = fout(fin(a, i.flags).squareRoot(), i.flags)
    case .frsqrt: r[d] = fout(1 / fin(a, i.flags).squareRoot(), i.flags)
    case .fex2: r[d] = fout(exp2f(fin(a, i.flags)), i.flags)
    case .flg2: r[d] = fout(log2f(fin(a, i.flags)), i.flags)
    case .fsin: r[d] = fout(sinf(fin(a, i.flags)), i.flags)
    case .fcos: r[d] = fout(cosf(fin(a, i.flags)), i.flags)
    case .ftanh: r[d] = fout(tanhf(fin(a, i.flags)), i.flags)
    case .fcopysign:
      r[d] = bits(
        Float(
          sign: f32(a).sign, exponentBitPattern: f32(b).exponentBitPattern,
          significandBitPattern: f32(b).significandBitPattern))
    case .dadd: r[d] = dout(f64(a) + f64(b), i.flags)
    case .dsub: r[d] = dout(f64(a) - f64(b), i.flags)
    case .dmul: r[d] = dout(f64(a) * f64(b), i.flags)
    case .dfma: r[d] = dout(f64(r[Int(i.c)]).addingProduct(f64(a), f64(b)), i.flags)
    case .ddiv: r[d] = dout(f64(a) / f64(b), i.flags)
    case .dmin, .dmax: r[d] = fminmax(f64(a), f64(b), i.op == .dmax, i.flags & Flag.nan != 0).bitPattern
    case .dabs: r[d] = abs(f64(a)).bitPattern
    case .dneg: r[d] = (-f64(a)).bitPattern
    case .drcp: r[d] = (1 / f64(a)).bitPattern
    case .dsqrt: r[d] = f64(a).squareRoot().bitPattern
    case .drsqrt: r[d] = (1 / f64(a).squareRoot()).bitPattern
    case .dex2: r[d] = exp2(f64(a)).bitPattern
    case .dlg2: r[d] = log2(f64(a)).bitPattern
    case .dsin: r[d] = sin(f64(a)).bitPattern
    case .dcos: r[d] = cos(f64(a)).bitPattern
    case .dtanh: r[d] = tanh(f64(a)).bitPattern
    case .dcopysign: r[d] = (f64(a).bitPattern & (1 << 63)) | (f64(b).bitPattern & ~(1 << 63))
    case .hadd, .hsub, .hmul, .hfma, .hneg, .habs, .hmin, .hmax, .hex2, .htanh: r[d] = halfOp(i, a, b, r[Int(i.c)])
    case .testpF, .testpD:
      let x = i.op == .testpF ? Double(f32(a)) : f64(a)
      let sub = i.op == .testpF ? f32(a).isSubnormal : x.isSubnormal
      let res: Bool
      switch i.mod {
      case 0: res = x.isFinite
      case 1: res = x.isInfinite
      case 2: res = !x.isNaN
      case 3: res = x.isNaN
      case 4: res = x.isNormal && !sub
      default: res = sub
      }
      r[d] = res ? 1 : 0

    case .setpI, .setpF, .setpD, .setpH:
      let c: Bool
      switch i.op {
      case .setpI: c = icompare(a, b, i.flags & Flag.signed != 0, i.sh, i.mod)
      case .setpF: c = fcompare(Double(fin(a, i.flags)), Double(fin(b, i.flags)), i.mod)
      case .setpH:
        let bf = TypeCode.kind(i.ty) == TypeCode.bf
        c = fcompare(halfValue(a, bf: bf), halfValue(b, bf: bf), i.mod)
      default: c = fcompare(f64(a), f64(b), i.mod)
      }
      if i.ty2 == 0 {
        r[d] = c ? 1 : 0
        r[Int(i.e)] = c ? 0 : 1
      } else {
        let q = (r[Int(i.c)] != 0) != (i.flags & Flag.negC != 0)
        switch i.ty2 {
        case 1:
          r[d] = c && q ? 1 : 0
          r[Int(i.e)] = !c && q ? 1 : 0
        case 2:
          r[d] = c || q ? 1 : 0
          r[Int(i.e)] = !c || q ? 1 : 0
        default:
          r[d] = c != q ? 1 : 0
          r[Int(i.e)] = !c != q ? 1 : 0
        }
      }
    case .setpH2:
      // setp.f16x2/.bf16x2 (§9.7.4.7): d from the low halves, e from the high halves.
      let bf = TypeCode.kind(i.ty) == TypeCode.bf
      let q = (r[Int(i.c)] != 0) != (i.flags & Flag.negC != 0)
      for k in stride(from: UInt64(0), through: 16, by: 16) {
        let c = fcompare(halfValue(a >> k, bf: bf), halfValue(b >> k, bf: bf), i.mod)
        r[k == 0 ? d : Int(i.e)] = (i.ty2 == 0 ? c : i.ty2 == 1 ? c && q : i.ty2 == 2 ? c || q : c != q) ? 1 : 0
      }
    case .selp: r[d] = r[Int(i.c)] != 0 ? a : b
    case .mov: r[d] = a & i.mask
    case .movSR:
      // %tid.x, the one most read (vector add's every thread), without the call.
      r[d] =
        (i.imm == Special.tidX.rawValue ? UInt64(threads[t].x) : special(Special(rawValue: i.imm) ?? .zero, t, n))
        & i.mask
    case .pack:
      let count = Int(i.b)
      let eb = UInt64(TypeCode.bits(i.ty) / count)
      let em: UInt64 = eb >= 64 ? ~0 : (1 << eb) - 1
      var v: UInt64 = 0
      for k in 0..<count { v |= (r[Int(fn.pointee.extra(Int(i.imm) + k))] & em) << (UInt64(k) * eb) }
      r[d] = v
    case .unpack:
      let count = Int(i.b)
      let eb = UInt64(TypeCode.bits(i.ty) / count)
      let em: UInt64 = eb >= 64 ? ~0 : (1 << eb) - 1
      for k in 0..<count { r[Int(fn.pointee.extra(d + k))] = (a >> (UInt64(k) * eb)) & em }
    case .cvt: r[d] = Self.convert(a, i)
    case .isspace:
      let inShared = a &- Memory.sharedWindow < 1 << 32
      let inLocal = a &- Memory.localWindow < Memory.localStride * 1024
      switch i.mod {
      case 0: r[d] = !inShared && !inLocal ? 1 : 0
      case 1: r[d] = inShared ? 1 : 0
      case 2: r[d] = inLocal ? 1 : 0
      default: r[d] = 0
      }

    // Memory (PTX ISA §9.7.9.8 ld, §9.7.9.9 st).
    case .ldKParam:
      let size = Int(i.ty2) * Int(i.e)
      guard i.imm >= 0, Int(i.imm) + size <= paramBytes else { throw .illegal(UInt64(i.imm), size, false, i.line) }
      let p = UnsafeMutableRawPointer(mutating: params + Int(i.imm))
      if i.e == 1 { r[d] = Self.loadScalar(p, i) } else { Self.loadInto(r, i, p, fn) }
    // A frame's param area follows its slots (`pbase` in `execute`).
    case .ldParam: Self.loadInto(r, i, UnsafeMutableRawPointer(r + fn.pointee.slots) + Int(i.imm), fn)
    case .stParam: Self.storeFrom(r, i, UnsafeMutableRawPointer(r + fn.pointee.slots) + Int(i.imm), fn)
    // Scalar shared and global accesses, aligned and in bounds, go straight; the rest
    // (vectors, local, generic, faults) take `access`.
    case .ldShared where i.e == 1:
      guard let addr = Self.sharedOffset(i, a, sharedBytes) else {
        try access(r, i, a, fn, t)
        break
      }
      r[d] = Self.loadScalar(shared + addr, i)
    case .stShared where i.e == 1:
      guard let addr = Self.sharedOffset(i, a, sharedBytes) else {
        try access(r, i, a, fn, t)
        break
      }
      store(shared + addr, i.ty2, r[d])
    case .ldGlobal where i.e == 1:
      let addr = a &+ UInt64(bitPattern: i.imm)
      guard addr & (UInt64(i.ty2) &- 1) == 0, let p = global(addr, Int(i.ty2), write: false) else {
        try access(r, i, a, fn, t)
        break
      }
      var v = loadRelaxed(p, i.ty2)
      if i.flags & Flag.signed != 0 { v = UInt64(bitPattern: sext(v, 64 - 8 * i.ty2)) }
      r[d] = v & i.mask
    case .stGlobal where i.e == 1:
      let addr = a &+ UInt64(bitPattern: i.imm)
      guard addr & (UInt64(i.ty2) &- 1) == 0, let p = global(addr, Int(i.ty2), write: true) else {
        try access(r, i, a, fn, t)
        break
      }
      storeRelaxed(p, i.ty2, r[d])
    case .ldGlobal, .ldGeneric, .ldShared, .ldLocal, .stGlobal, .stGeneric, .stShared, .stLocal:
      try access(r, i, a, fn, t)
    case .atomGlobal, .atomShared, .atomGeneric:
      let addr = a &+ UInt64(bitPattern: i.imm)
      let size = Int(i.ty2)
      if addr & UInt64(size - 1) != 0 { throw .misaligned(addr, size, i.line) }
      var p: UnsafeMutableRawPointer?
      var plain = true
      switch i.op {
      case .atomShared:
        p = addr < UInt64(sharedBytes) && addr &+ UInt64(size) <= UInt64(sharedBytes) ? shared + Int(addr) : nil
      case .atomGlobal:
        p = global(addr, size, write: true)
        plain = false
      default:
        p = generic(addr, size, write: true)
        plain = addr &- Memory.sharedWindow < 1 << 32 || addr &- Memory.localWindow < Memory.localStride * 1024
      }
      guard let p else { throw .illegal(addr, size, true, i.line) }
      r[d] = Self.atomic(p, i, b, r[Int(i.c)], plain: plain)
    default: break  // control flow and sync points: the callers' own switch
    }
  }

  /// Instructions a run may go before its first checkpoint: to the budget's end, the next
  /// progress report or the suspension, whichever comes first.
  @inline(__always) func runLimit() -> UInt64 {
    min(
      budgetEnd &- executed, nextProgress > executed ? nextProgress &- executed : 0,
      suspendAt > executed ? suspendAt &- executed : 0)
  }

  /// Past `limit` instructions of a run: either the budget is spent, or it is time to report
  /// progress, or (true) to suspend the thread here (`PTXLaunch.run(until:)`). Every
  /// checkpoint sits before its instruction changes anything, so the thread can stop there
  /// and run that instruction when it is resumed. Both count the launch's instructions, not
  /// this thread's: a grid of many short threads reports progress too. `n` counts this run's
  /// instructions including the one at the checkpoint, not yet run.
  @inline(never)
  mutating func checkpoint(_ n: UInt64, _ limit: inout UInt64) throws(Fault) -> Bool {
    let remaining = budgetEnd &- executed
    if n > remaining { throw .budget }
    // At least one instruction before this one must have run, so every slice makes progress.
    if executed &+ n &- 1 >= suspendAt { return true }
    if executed &+ n >= nextProgress {
      if let progress, !progress() { throw .cancelled }
      nextProgress = executed &+ n &+ progressInterval
    }
    limit = min(remaining, nextProgress &- executed, suspendAt &- executed)
    return false
  }

  /// Parks thread `t` at `pc` in the frame `frame` slots into its stack.
  @inline(__always) func park(_ t: Int, _ st: inout ThreadState, pc: Int, frame: Int, _ status: UInt8) {
    st.pc = Int32(pc)
    st.frame = Int32(frame)
    st.status = status
    threads[t] = st
  }

  /// ld/st of any space and shape (`a` the base register's value): the bounds and
  /// alignment checks, then the access, or the fault.
  @inline(never)
  mutating func access(
    _ r: UnsafeMutablePointer<UInt64>, _ i: Instr, _ a: UInt64, _ fn: UnsafeMutablePointer<FuncRT>, _ t: Int
  ) throws(Fault) {
    let addr = a &+ UInt64(bitPattern: i.imm)
    let size = Int(i.ty2) * Int(i.e)
    let isStore = i.op.rawValue >= Op.stParam.rawValue
    if addr & UInt64(size - 1) != 0 && size & (size - 1) == 0 { throw .misaligned(addr, size, i.line) }
    let p: UnsafeMutableRawPointer?
    switch i.op {
    case .ldGlobal, .stGlobal: p = global(addr, size, write: isStore)
    // `addr <` first: an address within `size` of 2^64 wraps past the sum's check.
    case .ldShared, .stShared:
      p = addr < UInt64(sharedBytes) && addr &+ UInt64(size) <= UInt64(sharedBytes) ? shared + Int(addr) : nil
    case .ldLocal, .stLocal:
      p =
        addr < UInt64(localBytes) && addr &+ UInt64(size) <= UInt64(localBytes)
        ? local + t * localBytes + Int(addr) : nil
    default: p = generic(addr, size, write: isStore)
    }
    guard let p else { throw .illegal(addr, size, isStore, i.line) }
    if isStore { Self.storeFrom(r, i, p, fn) } else { Self.loadInto(r, i, p, fn) }
  }

  /// Where a scalar `ld/st.shared` of `i` at register address `a` falls in a block's
  /// `sharedBytes`: nil when unaligned or out of bounds (the general path then faults).
  @inline(__always) static func sharedOffset(_ i: Instr, _ a: UInt64, _ sharedBytes: Int) -> Int? {
    let addr = a &+ UInt64(bitPattern: i.imm)
    let size = UInt64(i.ty2)
    guard addr & (size &- 1) == 0, addr < UInt64(sharedBytes), addr &+ size <= UInt64(sharedBytes) else { return nil }
    return Int(addr)
  }

  /// A scalar load's value, sign-extended for .s types and masked to the register.
  @inline(__always) static func loadScalar(_ p: UnsafeMutableRawPointer, _ i: Instr) -> UInt64 {
    var v = load(p, i.ty2)
    if i.flags & Flag.signed != 0 { v = UInt64(bitPattern: sext(v, 64 - 8 * i.ty2)) }
    return v & i.mask
  }

  @inline(__always) static func loadInto(
    _ r: UnsafeMutablePointer<UInt64>, _ i: Instr, _ p: UnsafeMutableRawPointer, _ fn: UnsafeMutablePointer<FuncRT>
  ) {
    if i.e == 1 {
      r[Int(i.d)] = loadScalar(p, i)
      return
    }
    for k in 0..<Int(i.e) { r[Int(fn.pointee.extra(Int(i.d) + k))] = loadScalar(p + k * Int(i.ty2), i) }
  }

  @inline(__always) static func storeFrom(
    _ r: UnsafeMutablePointer<UInt64>, _ i: Instr, _ p: UnsafeMutableRawPointer, _ fn: UnsafeMutablePointer<FuncRT>
  ) {
    if i.e == 1 {
      store(p, i.ty2, r[Int(i.d)])
      return
    }
    for k in 0..<Int(i.e) { store(p + k * Int(i.ty2), i.ty2, r[Int(fn.pointee.extra(Int(i.d) + k))]) }
  }

  /// A special register's value; `n` counts this run's instructions so far (not yet in `executed`).
  // `mutating` though it changes nothing: a non-mutating call from the mutating loop copies
  // the runner (its references retained and released), callgrind's BlockRunnerVWOc.
  mutating func special(_ s: Special, _ t: Int, _ n: UInt64) -> UInt64 {
    let lane = UInt64(t % 32)
    let st = threads[t]
    switch s {
    case .tidX: return UInt64(st.x)
    case .tidY: return UInt64(st.y)
    case .tidZ: return UInt64(st.z)
    case .ntidX: return UInt64(block.x)
    case .ntidY: return UInt64(block.y)
    case .ntidZ: return UInt64(block.z)
    case .ctaidX: return UInt64(ctaid.x)
    case .ctaidY: return UInt64(ctaid.y)
    case .ctaidZ: return UInt64(ctaid.z)
    case .nctaidX: return UInt64(grid.x)
    case .nctaidY: return UInt64(grid.y)
    case .nctaidZ: return UInt64(grid.z)
    case .laneid: return lane
    case .warpid: return UInt64(t / 32)
    case .nwarpid: return UInt64((nthreads + 31) / 32)
    case .lanemaskEq: return 1 << lane
    case .lanemaskLe: return (2 << lane) - 1
    case .lanemaskLt: return (1 << lane) - 1
    case .lanemaskGe: return 0xffff_ffff & ~((1 << lane) - 1)
    case .lanemaskGt: return 0xffff_ffff & ~((2 << lane) - 1)
    // A cycle counter that moves with every instruction, so `clock64()` deltas are positive.
    case .clock, .clock64: return executed &+ n
    case .globaltimer:
      var ts = timespec()
      clock_gettime(CLOCK_REALTIME, &ts)
      return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    case .smid, .gridid, .zero: return 0
    case .nsmid: return 1
    case .dynamicSmem: return UInt64(dynamicShared)
    case .totalSmem: return UInt64(sharedBytes)
    // The grid workspace of a cooperative launch; 0 in another, where CUDA's header traps on
    // `this_grid().sync()` as a GPU's does (its workspace pointer is null there).
    case .envreg1: return workspace == nil ? 0 : Memory.gridWorkspace >> 32
    case .envreg2: return workspace == nil ? 0 : Memory.gridWorkspace & 0xffff_ffff
    }
  }

  /// `cvt` (PTX ISA §9.7.9.21): float→int rounds as asked (default .rzi per NVRTC output) and
  /// saturates, NaN → 0; int→int with .sat clamps; f32→f32 with .rni etc. rounds to integral.
  static func convert(_ a: UInt64, _ i: Instr) -> UInt64 {
    let dk = TypeCode.kind(i.ty)
    let sk = TypeCode.kind(i.ty2)
    let dbits = TypeCode.bits(i.ty)
    let sbits = TypeCode.bits(i.ty2)
    let srcFloat = sk == TypeCode.f || sk == TypeCode.bf
    let dstFloat = dk == TypeCode.f || dk == TypeCode.bf
    func rounded(_ x: Double) -> Double {
      switch i.mod {
      case 5, 1: return x.rounded(.toNearestOrEven)
      case 7, 3: return x.rounded(.down)
      case 8, 4: return x.rounded(.up)
      default: return x.rounded(.towardZero)
      }
    }
    var x: Double
    if srcFloat {
      switch sbits {
      case 16: x = halfValue(a, bf: sk == TypeCode.bf)
      case 32: x = Double(fin(a, i.flags))
      default: x = f64(a)
      }
    } else if !dstFloat {
      // int → int with .sat (plain ones were lowered to a mask).
      let signedSrc = sk == TypeCode.s
      let v: Int64 = signedSrc ? sext(a, i.sh) : Int64(bitPattern: a & (~UInt64(0) >> UInt64(i.sh)))
      if !signedSrc && (a & (~UInt64(0) >> UInt64(i.sh))) > UInt64(Int64.max) {
        return dk == TypeCode.s ? (UInt64(1) << UInt64(dbits - 1)) - 1 : i.mask
      }
      if i.flags & Flag.sat == 0 { return UInt64(bitPattern: v) & i.mask }
      if dk == TypeCode.s {
        let hi = dbits == 64 ? Int64.max : (Int64(1) << Int64(dbits - 1)) - 1
        let lo = dbits == 64 ? Int64.min : -(Int64(1) << Int64(dbits - 1))
        return UInt64(bitPattern: Swift.min(Swift.max(v, lo), hi)) & i.mask
      }
      return v < 0 ? 0 : Swift.min(UInt64(v), i.mask)
    } else {
      // int → float, rounded as asked (.rn by default): straight to f64, or rounded to odd
      // in a Double and then once more to the narrower format.
      let v = sk == TypeCode.s ? sext(a, i.sh) : Int64(bitPattern: a & (~UInt64(0) >> UInt64(i.sh)))
      let negative = sk == TypeCode.s && v < 0
      let magnitude = negative ? 0 &- UInt64(bitPattern: v) : a & (~UInt64(0) >> UInt64(i.sh))
      x = integerToDouble(magnitude, negative: negative, mode: i.mod, odd: dbits < 64)
      if dbits == 64 { return x.bitPattern }
    }
    if dstFloat {
      if i.mod >= 5 { x = rounded(x) }
      switch dbits {
      case 16:
        var h = UInt64(roundHalf(x, bf: dk == TypeCode.bf, mode: i.mod))
        let v = halfValue(h, bf: dk == TypeCode.bf)
        // .relu (§9.7.9.21): negative results become +0, NaN stays NaN; .sat clamps to [0, 1].
        if i.flags & Flag.relu != 0 && v < 0 { h = 0 }
        if i.flags & Flag.sat != 0 { h = v.isNaN || v <= 0 ? 0 : v > 1 ? (dk == TypeCode.bf ? 0x3f80 : 0x3c00) : h }
        return h
      case 32:
        return fout(roundFloat(x, mode: i.mod), i.flags)
      default:
        return dout(x, i.flags)
      }
    }
    if x.isNaN { return 0 }
    x = rounded(x)
    if dk == TypeCode.s {
      let hi = dbits == 64 ? Double(Int64.max) : Double((Int64(1) << Int64(dbits - 1)) - 1)
      let lo = dbits == 64 ? Double(Int64.min) : -Double(Int64(1) << Int64(dbits - 1))
      if x >= hi { return UInt64(bitPattern: dbits == 64 ? Int64.max : Int64(hi)) & i.mask }
      if x <= lo { return UInt64(bitPattern: dbits == 64 ? Int64.min : Int64(lo)) & i.mask }
      return UInt64(bitPattern: Int64(x)) & i.mask
    }
    if x <= 0 { return 0 }
    if x >= Double(i.mask) { return i.mask }
    return UInt64(x) & i.mask
  }

  /// atom/red (PTX ISA §9.7.13.5): global memory uses real atomics so that blocks may later
  /// run concurrently; shared and local memory belong to one host thread and use plain RMW.
  static func atomic(_ p: UnsafeMutableRawPointer, _ i: Instr, _ b: UInt64, _ c: UInt64, plain: Bool) -> UInt64 {
    if plain {
      let old = load(p, i.ty2)
      store(p, i.ty2, Self.rmw(old, i, b, c))
      return old
    }
    if i.ty2 == 4 {
      let atom = p.assumingMemoryBound(to: Atomic<UInt32>.self)
      var old = atom.pointee.load(ordering: .relaxed)
      while true {
        let new = UInt32(truncatingIfNeeded: Self.rmw(UInt64(old), i, b, c))
        let (done, seen) = atom.pointee.compareExchange(expected: old, desired: new, ordering: .relaxed)
        if done { return UInt64(old) }
        old = seen
      }
    }
    let atom = p.assumingMemoryBound(to: Atomic<UInt64>.self)
    var old = atom.pointee.load(ordering: .relaxed)
    while true {
      let new = Self.rmw(old, i, b, c)
      let (done, seen) = atom.pointee.compareExchange(expected: old, desired: new, ordering: .relaxed)
      if done { return old }
      old = seen
    }
  }

  @inline(__always) static func rmw(_ old: UInt64, _ i: Instr, _ b: UInt64, _ c: UInt64) -> UInt64 {
    let kind = TypeCode.kind(i.ty)
    let isFloat = kind == TypeCode.f
    let wide = i.ty2 == 8
    let m = i.mask
    switch AtomicOp(rawValue: i.mod)! {
    case .add:
      if isFloat { return wide ? (f64(old) + f64(b)).bitPattern : bits(f32(old) + f32(b)) }
      return (old &+ b) & m
    case .min, .max:
      let isMax = i.mod == AtomicOp.max.rawValue
      if isFloat {
        let v = fminmax(wide ? f64(old) : Double(f32(old)), wide ? f64(b) : Double(f32(b)), isMax, false)
        return wide ? v.bitPattern : bits(Float(v))
      }
      if kind == TypeCode.s {
        let x = sext(old, i.sh)
        let y = sext(b, i.sh)
        return UInt64(bitPattern: isMax ? Swift.max(x, y) : Swift.min(x, y)) & m
      }
      return isMax ? Swift.max(old & m, b & m) : Swift.min(old & m, b & m)
    case .inc: return (old & m) >= (b & m) ? 0 : (old &+ 1) & m
    case .dec: return (old & m) == 0 || (old & m) > (b & m) ? b & m : (old &- 1) & m
    case .and: return old & b & m
    case .or: return (old | b) & m
    case .xor: return (old ^ b) & m
    case .exch: return b & m
    case .cas: return (old & m) == (b & m) ? c & m : old
    }
  }
}

/// prmt's special modes (PTX ISA §9.7.8.7): the two low bits of `sel` pick one of four
/// fixed byte patterns of the 8-byte source {b, a}; listed as source bytes for d.b0...d.b3.
func prmtMode(_ bytes: UInt64, _ sel: UInt64, _ mode: UInt8) -> UInt64 {
  let patterns: [[UInt64]] = [
    [0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6],  // .f4e: forward 4 extract
    [0, 7, 6, 5, 1, 0, 7, 6, 2, 1, 0, 7, 3, 2, 1, 0],  // .b4e: backward 4 extract
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3],  // .rc8: replicate byte
    [0, 1, 2, 3, 1, 1, 2, 3, 2, 2, 2, 3, 3, 3, 3, 3],  // .ecl: edge clamp left
    [0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 2, 2, 0, 1, 2, 3],  // .ecr: edge clamp right
    [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3],  // .rc16: replicate half
  ]
  let p = patterns[Int(mode) - 1]
  let s = Int(sel & 3) * 4
  var v: UInt64 = 0
  for k in 0..<4 { v |= ((bytes >> (p[s + k] * 8)) & 0xff) << UInt64(8 * k) }
  return v
}

extension CallSite {
  /// Argument `k` (`size` bytes) of a call to a built-in (printf, assert), or 0 when absent.
  func argument(_ k: Int, _ size: UInt8, _ r: UnsafeMutablePointer<UInt64>, _ pbase: UnsafeMutableRawPointer) -> UInt64
  {
    guard k < args.count else { return 0 }
    switch args[k].source {
    case .param(let off): return load(pbase + off, size)
    case .slot(let s): return r[Int(s)]
    }
  }
}

extension FuncRT {
  @inline(__always) func extra(_ k: Int) -> Int32 { extraPointer[k] }
}

extension PTXModule {
  func callSite(_ f: Int, _ k: Int) -> CallSite {
    guard case .success(let lf) = functions[f] else { fatalError("call from a function that failed to load") }
    return lf.calls[k]
  }
}
