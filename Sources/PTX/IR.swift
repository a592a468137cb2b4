/// The lowered form the interpreter runs: one flat `Instr` array per function, every operand a
/// dense slot index into the thread's `UInt64` frame (immediates and symbol addresses live in
/// constant slots filled from a template), branch targets as instruction indices.
enum Op: UInt8 {
  // Integer ALU: values are zero-extended to `mask`; `sh` = 64 - operand width, for sign extension.
  case add, sub, mulLo, mulHiU, mulHiS, mulWideU, mulWideS, madLo, madHiU, madHiS, madWideU, madWideS
  case divU, divS, remU, remS, minU, minS, maxU, maxS, absS, neg, and, or, xor, not, cnot, shl, shrU, shrS
  case addSat, subSat, popc, clz, brev, bfeU, bfeS, bfi, prmt, mul24U, mul24S, mad24U, mad24S, shfL, shfR, bfindU,
    bfindS
  // mul24.hi / mad24.hi: bits 16..47 of the 48-bit product.
  case mul24HiU, mul24HiS, mad24HiU, mad24HiS
  // sad (§9.7.1.6): d = c + |a - b|.
  case sadU, sadS
  // Extended precision (PTX ISA §9.7.2): the carry flag lives in `Slot.carry`; `flags` says
  // whether the carry is read (`Flag.carryIn`: addc/subc) and written (`Flag.carryOut`: .cc).
  case addCarry, subCarry
  // slct (§9.7.8.2): `d = c >= 0 ? a : b` with `c` an s32 or an f32.
  case slctI, slctF
  // f32 (bits in the low half) and f64 (`flags`: ftz, sat, nanProp).
  case fadd, fsub, fmul, ffma, fdiv, fmin, fmax, fabs, fneg, frcp, fsqrt, frsqrt, fex2, flg2, fsin, fcos, ftanh,
    fcopysign
  case dadd, dsub, dmul, dfma, ddiv, dmin, dmax, dabs, dneg, drcp, dsqrt, drsqrt, dex2, dlg2, dsin, dcos, dtanh,
    dcopysign
  // f16 / bf16 (`ty`'s kind) in the low 16 bits, or two of them when `ty2` == 2 (Half.swift).
  case hadd, hsub, hmul, hfma, hneg, habs, hmin, hmax, hex2, htanh
  case testpF, testpD
  // Compare and select: `cmp` in `mod`, combine op in `ty2`, second result in `e`.
  case setpI, setpF, setpD, setpH, setpH2, selp
  case mov, movSR, pack, unpack, cvt, isspace
  // Memory: base slot `a` plus `imm`; `ty2` = element bytes, `e` = vector count, `d` or `extra[d...]`.
  case ldParam, ldKParam, ldGlobal, ldShared, ldLocal, ldGeneric
  case stParam, stGlobal, stShared, stLocal, stGeneric
  case atomGlobal, atomShared, atomGeneric
  case bra, call, ret, exit, trap, nop
  // membar/fence (PTX ISA §9.7.13.4): a host fence, since blocks run on several host threads.
  case fence
  case barSync, barArrive, warpSync, shfl, vote, activemask, redux, match
  // bar.red: `mod` 0 popc, 1 and, 2 or; `c` the predicate (negated with `Flag.negC`).
  case barRed
}

extension Op {
  /// Every op declared before `bra`: no control flow, no sync point (`BlockRunner.compute`).
  /// Compares the cases' tags, which are their declaration order as the raw values are: the
  /// `rawValue` getter was a call per instruction (callgrind: 5 host instructions each).
  @inline(__always) var isStraightLine: Bool {
    unsafeBitCast(self, to: UInt8.self) < unsafeBitCast(Op.bra, to: UInt8.self)
  }
}

/// One decoded instruction. 48 bytes, no references: the code array is plain memory.
/// `a` and `b` are always slots of the frame (Slot.zero when unused): the interpreter
/// reads both before it looks at the opcode, so an index that is not a slot (a call
/// site, a position in `extra`) goes in `imm`, and "none" is never -1.
struct Instr {
  var op: Op
  var ty: UInt8 = 0  // operand type code or atomic kind
  var ty2: UInt8 = 0  // second type, element bytes, or combine op
  var mod: UInt8 = 0  // compare op, rounding, shfl/vote mode, atomic op
  var flags: UInt8 = 0
  var sh: UInt8 = 0
  var guardNeg: Bool = false
  var guardSlot: Int32 = -1
  var d: Int32 = Slot.sink
  var a: Int32 = Slot.zero
  var b: Int32 = Slot.zero
  var c: Int32 = Slot.zero
  var e: Int32 = Slot.sink
  var mask: UInt64 = ~0
  var imm: Int64 = 0
  var line: Int32 = 0
}

/// Hidden slots at the start of every frame.
enum Slot {
  static let localBase: Int32 = 0  // local-space address of this frame's `.local` area
  static let returnPC: Int32 = 1
  static let callerFrame: Int32 = 2
  static let callerFunction: Int32 = 3
  static let callSite: Int32 = 4
  static let sink: Int32 = 5  // writes to `_` and unused results
  static let zero: Int32 = 6  // always 0
  static let localWindow: Int32 = 7  // generic address of this thread's local window
  static let carry: Int32 = 8  // CC.CF of add.cc / addc (PTX ISA §9.7.2), per frame
  static let firstFree: Int32 = 9
}

enum Flag {
  static let ftz: UInt8 = 1
  static let sat: UInt8 = 2
  static let nan: UInt8 = 4
  static let signed: UInt8 = 8
  static let negC: UInt8 = 16  // setp's combining predicate is negated; vote's source is negated
  static let wrap: UInt8 = 32  // shf.wrap
  static let generic: UInt8 = 64
  static let relu: UInt8 = 128  // f16/bf16 .relu
  // Carry ops only (they have no other flags).
  static let carryIn: UInt8 = 1
  static let carryOut: UInt8 = 2
}

/// Scalar type codes: kind in the high nibble, log2(bytes) in the low.
enum TypeCode {
  static let u: UInt8 = 0x00
  static let s: UInt8 = 0x10
  static let f: UInt8 = 0x20
  static let b: UInt8 = 0x30
  static let pred: UInt8 = 0x40
  static let bf: UInt8 = 0x50
  static func kind(_ t: UInt8) -> UInt8 { t & 0xF0 }
  static func bytes(_ t: UInt8) -> Int { 1 << Int(t & 0x0F) }
  static func bits(_ t: UInt8) -> Int { 8 << Int(t & 0x0F) }

  static func parse(_ w: Substring) -> UInt8? {
    let kinds: [Character: UInt8] = ["u": u, "s": s, "f": f, "b": b]
    if w == "pred" { return pred }
    if w == "bf16" { return bf | 1 }
    guard let k = w.first, let kind = kinds[k], let bits = Int(w.dropFirst()) else { return nil }
    switch bits {
    case 8: return kind | 0
    case 16: return kind | 1
    case 32: return kind | 2
    case 64: return kind | 3
    default: return nil
    }
  }
  static func mask(_ t: UInt8) -> UInt64 {
    if t == pred { return 1 }
    let bits = TypeCode.bits(t)
    return bits >= 64 ? ~0 : (1 << UInt64(bits)) - 1
  }
}

enum Cmp: UInt8 {
  case eq, ne, lt, le, gt, ge, lo, ls, hi, hs, equ, neu, ltu, leu, gtu, geu, num, nan
}

enum AtomicOp: UInt8 {
  case add, min, max, inc, dec, and, or, xor, exch, cas
}

enum Special: Int64 {
  case tidX, tidY, tidZ, ntidX, ntidY, ntidZ, ctaidX, ctaidY, ctaidZ, nctaidX, nctaidY, nctaidZ
  case laneid, warpid, nwarpid, lanemaskEq, lanemaskLe, lanemaskLt, lanemaskGe, lanemaskGt
  case clock, clock64, globaltimer, smid, nsmid, gridid, dynamicSmem, totalSmem, zero
  /// The grid workspace's address, high and low words (`Memory.gridWorkspace`).
  case envreg1, envreg2

  static let names: [String: Special] = [
    "%tid.x": .tidX, "%tid.y": .tidY, "%tid.z": .tidZ, "%ntid.x": .ntidX, "%ntid.y": .ntidY, "%ntid.z": .ntidZ,
    "%ctaid.x": .ctaidX, "%ctaid.y": .ctaidY, "%ctaid.z": .ctaidZ, "%nctaid.x": .nctaidX, "%nctaid.y": .nctaidY,
    "%nctaid.z": .nctaidZ, "%laneid": .laneid, "%warpid": .warpid, "%nwarpid": .nwarpid,
    "%lanemask_eq": .lanemaskEq, "%lanemask_le": .lanemaskLe, "%lanemask_lt": .lanemaskLt,
    "%lanemask_ge": .lanemaskGe, "%lanemask_gt": .lanemaskGt, "%clock": .clock, "%clock64": .clock64,
    "%globaltimer": .globaltimer, "%smid": .smid, "%nsmid": .nsmid, "%gridid": .gridid,
    "%dynamic_smem_size": .dynamicSmem, "%total_smem_size": .totalSmem,
    // PTX ISA §10.33 "%envreg<32>": driver-defined, read-only. CUDA's cooperative_groups
    // header reads the grid workspace's address from %envreg1 (high) and %envreg2 (low);
    // the other %envreg read 0.
    "%envreg1": .envreg1, "%envreg2": .envreg2,
  ]
}

/// Where a constant slot's value comes from; symbol addresses are known only at launch.
enum ConstSource {
  case value(UInt64)
  case global(Int, Int64)  // module variable index + offset
  case shared(Int, Int64, generic: Bool)  // shared symbol index + offset
}

/// A call site: argument copies into the callee's frame and result copies back.
struct CallSite {
  enum Target {
    case function(Int)
    case vprintf
    case assertfail
    /// A function of CUDA's device runtime (libcudadevrt) that the engine provides itself.
    case deviceRuntime(DeviceRuntimeFunction)
    case unsupported(String)
  }
  /// Where an argument's bytes come from: the caller's param area (byte offset) or a slot.
  enum Source {
    case param(Int)
    case slot(Int32)
  }
  var target: Target
  var args: [(source: Source, calleeOffset: Int, size: Int)]
  var results: [(calleeOffset: Int, callerOffset: Int, size: Int)]
}

/// A function after lowering.
final class LoweredFunction: @unchecked Sendable {
  let name: String
  let code: UnsafeMutablePointer<Instr>
  let count: Int
  let slots: Int  // register slots, constants included
  let frameSlots: Int  // slots plus the param area
  let paramAreaOffset: Int  // bytes from frame start
  let localBytes: Int
  let constants: [(slot: Int32, source: ConstSource)]
  let calls: [CallSite]
  let extra: UnsafeMutablePointer<Int32>  // vector operand slot lists
  let callees: [Int]
  let sharedSymbols: Set<Int>
  let registerCount: Int
  /// The function's `.maxnreg` and `.maxntid`/`.reqntid` bounds (nil: none given).
  let maxRegisters: Int?
  let maxThreads: Int?

  init(
    name: String, code: [Instr], slots: Int, paramBytes: Int, localBytes: Int,
    constants: [(slot: Int32, source: ConstSource)], calls: [CallSite], extra: [Int32],
    sharedSymbols: Set<Int>, registerCount: Int, maxRegisters: Int? = nil, maxThreads: Int? = nil
  ) {
    self.maxRegisters = maxRegisters
    self.maxThreads = maxThreads
    self.name = name
    self.count = code.count
    self.code = .allocate(capacity: max(code.count, 1))
    self.code.initialize(from: code, count: code.count)
    self.slots = slots
    self.paramAreaOffset = slots * 8
    self.frameSlots = slots + (paramBytes + 7) / 8
    self.localBytes = localBytes
    self.constants = constants
    self.calls = calls
    self.extra = .allocate(capacity: max(extra.count, 1))
    self.extra.initialize(from: extra, count: extra.count)
    var callees: [Int] = []
    for c in calls { if case .function(let f) = c.target, !callees.contains(f) { callees.append(f) } }
    self.callees = callees
    self.sharedSymbols = sharedSymbols
    self.registerCount = registerCount
  }
  deinit {
    code.deallocate()
    extra.deallocate()
  }
}
