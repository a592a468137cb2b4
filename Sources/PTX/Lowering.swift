/// Turns one function's syntax into `LoweredFunction`: names to slots and offsets, opcodes with
/// their modifiers to specialised `Instr`s (PTX ISA §9.7 gives each instruction's semantics).
struct Lowering {
  enum Name {
    case reg(Int32, UInt8)
    case param(Int, kernel: Bool)  // byte offset: in the launch buffer (kernel) or the frame's param area
    case local(Int)
    case shared(Int)
  }

  let module: ModuleContext
  let function: FunctionSyntax
  var scopes: [[String: Name]] = [[:]]
  var code: [Instr] = []
  var extra: [Int32] = []
  var calls: [CallSite] = []
  var labels: [String: Int] = [:]
  var fixups: [(Int, String, Int)] = []
  var constants: [(slot: Int32, source: ConstSource)] = []
  var constantSlots: [UInt64: Int32] = [:]
  var nextSlot = Slot.firstFree
  var paramBytes = 0
  var localBytes = 0
  var sharedUsed: Set<Int> = []
  var registerCount = 0
  var line = 0
  var guardSlot: Int32 = -1
  var guardNeg = false

  init(module: ModuleContext, function: FunctionSyntax) {
    self.module = module
    self.function = function
  }

  /// The largest `%r<N>` a module may declare.
  static let maxRegisterRange = 1 << 16

  func fail(_ token: String, _ expected: String) -> PTXError {
    .parse(line: line, token: token, expected: expected)
  }

  // MARK: names

  func lookup(_ name: String) -> Name? {
    for s in scopes.reversed() { if let n = s[name] { return n } }
    return nil
  }

  mutating func declare(_ d: VariableDecl) throws(PTXError) {
    line = d.line
    switch d.space {
    case .reg:
      guard let t = TypeCode.parse(d.type.dropFirst()) else { throw fail(d.type, "a register type") }
      let n = d.rangeCount ?? 1
      // `%r<N>` from a guest: a negative N trapped here (found by Fuzz/ptx-text); a
      // huge one would declare registers for minutes. nvcc declares hundreds at most.
      guard (0...Lowering.maxRegisterRange).contains(n) else {
        throw fail("<\(n)>", "a register count of 0 to \(Lowering.maxRegisterRange)")
      }
      for i in 0..<n {
        let name = d.rangeCount == nil ? d.name : d.name + String(i)
        scopes[scopes.count - 1][name] = .reg(nextSlot, t)
        nextSlot += 1
        registerCount += 1
      }
    case .param:
      let (size, align) = Lowering.layout(d)
      paramBytes = (paramBytes + align - 1) / align * align
      scopes[scopes.count - 1][d.name] = .param(paramBytes, kernel: false)
      paramBytes += size
    case .local:
      let (size, align) = Lowering.layout(d)
      localBytes = (localBytes + align - 1) / align * align
      scopes[scopes.count - 1][d.name] = .local(localBytes)
      localBytes += size
    case .shared:
      guard let index = module.sharedIndex["\(function.name)::\(d.name)"] else {
        throw fail(d.name, "a shared variable")
      }
      scopes[scopes.count - 1][d.name] = .shared(index)
    default:
      throw fail(d.name, "a .reg, .param, .local or .shared declaration")
    }
  }

  /// Size and alignment of a variable (PTX ISA §5.4: natural alignment unless `.align`).
  static func layout(_ d: VariableDecl) -> (size: Int, align: Int) {
    let elem = (TypeCode.parse(d.type.dropFirst()).map { TypeCode.bytes($0) } ?? 1) * d.vector
    var count = 1
    for n in d.dims ?? [] { count *= n }
    if d.dims == [0] { count = 0 }
    return (elem * count, max(d.align ?? elem, 1))
  }

  mutating func constant(_ v: UInt64) -> Int32 {
    if v == 0 { return Slot.zero }
    if let s = constantSlots[v] { return s }
    let s = nextSlot
    nextSlot += 1
    constantSlots[v] = s
    constants.append((s, .value(v)))
    return s
  }

  mutating func temp() -> Int32 {
    nextSlot += 1
    return nextSlot - 1
  }

  // MARK: operands

  mutating func emit(_ i: Instr) {
    var i = i
    i.line = Int32(line)
    i.guardSlot = guardSlot
    i.guardNeg = guardNeg
    code.append(i)
  }

  /// The address of a symbol as a slot: module variables and shared variables are constants
  /// filled at launch; `.local` variables are relative to the frame's local base.
  mutating func symbolAddress(_ name: String, _ off: Int64, generic: Bool) throws(PTXError) -> Int32? {
    if let n = lookup(name) {
      switch n {
      case .shared(let i):
        sharedUsed.insert(i)
        let s = temp()
        constants.append((s, .shared(i, off, generic: generic)))
        return s
      case .local(let o):
        let t = temp()
        emit(Instr(op: .add, d: t, a: Slot.localBase, b: constant(UInt64(bitPattern: Int64(o) + off))))
        if generic { emit(Instr(op: .add, d: t, a: t, b: Slot.localWindow)) }
        return t
      case .param: throw fail(name, "a symbol whose address can be taken (.param addresses are not supported)")
      case .reg: return nil
      }
    }
    if let g = module.globalIndex[name] {
      let s = temp()
      constants.append((s, .global(g, off)))
      return s
    }
    if let i = module.sharedIndex[name] {
      sharedUsed.insert(i)
      let s = temp()
      constants.append((s, .shared(i, off, generic: generic)))
      return s
    }
    return nil
  }

  mutating func source(_ o: SyntaxOperand, _ t: UInt8) throws(PTXError) -> Int32 {
    let isFloat = TypeCode.kind(t) == TypeCode.f
    let bits = TypeCode.bits(t)
    switch o {
    case .word(let w):
      if case .reg(let s, _)? = lookup(w) { return s }
      if let sr = Special.names[w] {
        let tmp = temp()
        emit(Instr(op: .movSR, d: tmp, imm: sr.rawValue))
        return tmp
      }
      if w.hasPrefix("%envreg") { return Slot.zero }
      // WARP_SZ: the predefined constant warp size, 32 (PTX ISA §4.4.3 "Predefined
      // Identifiers"; numba's cuda.warpsize reads it).
      if w == "WARP_SZ" { return constant(32) }
      if let s = try symbolAddress(w, 0, generic: false) { return s }
      throw fail(w, "a register or symbol")
    case .symbolOffset(let w, let off):
      if let s = try symbolAddress(w, off, generic: false) { return s }
      throw fail(w, "a symbol")
    case .int(let v):
      if isFloat {
        let d = Double(Int64(bitPattern: v))
        return constant(
          bits == 64 ? d.bitPattern : bits == 32 ? UInt64(Float(d).bitPattern) : UInt64(Float16(Float(d)).bitPattern))
      }
      return constant(t == TypeCode.pred ? (v != 0 ? 1 : 0) : v & TypeCode.mask(t))
    case .f32(let b):
      if isFloat && bits == 64 { return constant(Double(Float(bitPattern: b)).bitPattern) }
      return constant(UInt64(b))
    case .f64(let b):
      if isFloat && bits == 32 { return constant(UInt64(Float(Double(bitPattern: b)).bitPattern)) }
      if !isFloat {
        // Its value, truncated, as the integer; NaN, ±inf or a value past Int64 is refused
        // (the conversion trapped: Fuzz/module-image found `0d7FF…` as an integer operand).
        guard let i = Int64(exactly: Double(bitPattern: b).rounded(.towardZero)) else {
          throw fail("\(o)", "a floating-point literal whose value fits a 64-bit integer")
        }
        return constant(UInt64(bitPattern: i) & TypeCode.mask(t))
      }
      return constant(b)
    default:
      throw fail("\(o)", "a scalar operand")
    }
  }

  func dest(_ o: SyntaxOperand) throws(PTXError) -> Int32 {
    switch o {
    case .sink: return Slot.sink
    case .word(let w):
      if case .reg(let s, _)? = lookup(w) { return s }
      throw fail(w, "a destination register")
    default: throw fail("\(o)", "a destination register")
    }
  }

  func predicate(_ name: String) throws(PTXError) -> Int32 {
    if case .reg(let s, _)? = lookup(name) { return s }
    throw fail(name, "a predicate register")
  }

  enum AddressKind {
    case register(Int32, Int64)
    case kernelParam(Int)
    case frameParam(Int)
  }

  /// `[reg+off]`, `[sym+off]`, `[imm]`. In the generic space a shared or local symbol means its generic address.
  mutating func address(_ o: SyntaxOperand, generic: Bool) throws(PTXError) -> AddressKind {
    guard case .address(let base, let off) = o else { throw fail("\(o)", "an address [..]") }
    guard let base else { return .register(Slot.zero, off) }
    switch lookup(base) {
    case .reg(let s, _)?: return .register(s, off)
    case .param(let p, let kernel)?: return kernel ? .kernelParam(p + Int(off)) : .frameParam(p + Int(off))
    case .local(let l)?:
      if generic, let s = try symbolAddress(base, off, generic: true) { return .register(s, 0) }
      return .register(Slot.localBase, Int64(l) + off)
    default:
      if let s = try symbolAddress(base, 0, generic: generic) { return .register(s, off) }
      throw fail(base, "a register or symbol in the address")
    }
  }

  /// Slots of a scalar or `{a, b, ...}` operand, stored in `extra`; returns (first index, count).
  mutating func slotList(_ o: SyntaxOperand, _ t: UInt8, isDest: Bool) throws(PTXError) -> (Int32, Int32) {
    let elems: [SyntaxOperand]
    if case .vector(let v) = o { elems = v } else { elems = [o] }
    var slots: [Int32] = []
    for e in elems { slots.append(isDest ? try dest(e) : try source(e, t)) }
    let first = Int32(extra.count)
    extra += slots
    return (first, Int32(slots.count))
  }

  // MARK: instructions

  static let floatOps: [String: (Op, Op)] = [
    "add": (.fadd, .dadd), "sub": (.fsub, .dsub), "mul": (.fmul, .dmul), "fma": (.ffma, .dfma),
    "mad": (.ffma, .dfma), "div": (.fdiv, .ddiv), "min": (.fmin, .dmin), "max": (.fmax, .dmax),
    "abs": (.fabs, .dabs), "neg": (.fneg, .dneg), "rcp": (.frcp, .drcp), "sqrt": (.fsqrt, .dsqrt),
    "rsqrt": (.frsqrt, .drsqrt), "ex2": (.fex2, .dex2), "lg2": (.flg2, .dlg2), "sin": (.fsin, .dsin),
    "cos": (.fcos, .dcos), "tanh": (.ftanh, .dtanh), "copysign": (.fcopysign, .dcopysign),
    "testp": (.testpF, .testpD),
  ]
  /// Instructions with .f16/.bf16 forms (PTX ISA §9.7.4 half precision floating-point).
  static let halfOps: [String: Op] = [
    "add": .hadd, "sub": .hsub, "mul": .hmul, "fma": .hfma, "neg": .hneg, "abs": .habs, "min": .hmin,
    "max": .hmax, "ex2": .hex2, "tanh": .htanh,
  ]
  static let cmps: [String: Cmp] = [
    "eq": .eq, "ne": .ne, "lt": .lt, "le": .le, "gt": .gt, "ge": .ge, "lo": .lo, "ls": .ls, "hi": .hi, "hs": .hs,
    "equ": .equ, "neu": .neu, "ltu": .ltu, "leu": .leu, "gtu": .gtu, "geu": .geu, "num": .num, "nan": .nan,
  ]
  static let roundings: [String: UInt8] = [
    "rn": 1, "rz": 2, "rm": 3, "rp": 4, "rni": 5, "rzi": 6, "rmi": 7, "rpi": 8, "rna": 1, "rs": 1,
  ]
  static let atomics: [String: AtomicOp] = [
    "add": .add, "min": .min, "max": .max, "inc": .inc, "dec": .dec, "and": .and, "or": .or, "xor": .xor,
    "exch": .exch, "cas": .cas,
  ]

  mutating func lower() throws(PTXError) -> LoweredFunction {
    // Formal parameters: kernel params index the launch buffer; .func params and results the frame.
    if function.isEntry {
      var off = 0
      for p in function.params {
        let (size, align) = Lowering.layout(p)
        off = (off + align - 1) / align * align
        scopes[0][p.name] = .param(off, kernel: true)
        off += size
      }
    } else {
      for p in function.returns + function.params { try declare(p) }
    }
    for st in function.body ?? [] {
      switch st {
      case .open: scopes.append([:])
      case .close: scopes.removeLast()
      case .declaration(let d): try declare(d)
      case .label(let l): labels[l] = code.count
      case .instruction(let i): try lower(i)
      }
    }
    for (index, label, l) in fixups {
      guard let target = labels[label] else {
        throw .parse(line: l, token: label, expected: "a label in this function")
      }
      code[index].imm = Int64(target)
    }
    // Falling off the end behaves as `ret` (PTX requires an explicit one; be forgiving).
    code.append(Instr(op: .ret, line: Int32(line)))
    return LoweredFunction(
      name: function.name, code: code, slots: Int(nextSlot), paramBytes: paramBytes, localBytes: localBytes,
      constants: constants, calls: calls, extra: extra, sharedSymbols: sharedUsed,
      registerCount: registerCount, maxRegisters: function.maxRegisters, maxThreads: function.maxThreads)
  }

  mutating func lower(_ ins: SyntaxInstruction) throws(PTXError) {
    line = ins.line
    guardSlot = -1
    guardNeg = ins.guardNegated
    if let g = ins.guardName { guardSlot = try predicate(g) }
    let parts = ins.opcode.split(separator: ".")
    let base = String(parts[0])
    // `.shared::cta` is the CTA's shared memory, `.shared` by another name (PTX ISA, "Shared State Space");
    // `.shared::cluster` (another CTA's) stays distinct.
    let mods = parts.dropFirst().map { $0 == "shared::cta" ? "shared" : String($0) }
    let types = mods.compactMap { TypeCode.parse(Substring($0)) }
    let t = types.last ?? TypeCode.b | 2  // f16x2 / bf16x2 are not parsed: .b32 where they are moved
    let ops = ins.operands
    let mask = TypeCode.mask(t)
    let sh = UInt8(64 - TypeCode.bits(t))
    let isFloat =
      TypeCode.kind(t) == TypeCode.f
      && !["mov", "ld", "st", "cvt", "setp", "selp", "atom", "red", "shfl", "cvta"].contains(base)
    var flags: UInt8 = 0
    if mods.contains("ftz") { flags |= Flag.ftz }
    if mods.contains("sat") { flags |= Flag.sat }
    if mods.contains("NaN") { flags |= Flag.nan }
    if TypeCode.kind(t) == TypeCode.s { flags |= Flag.signed }

    func need(_ n: Int) throws(PTXError) {
      if ops.count < n { throw .parse(line: ins.line, token: ins.opcode, expected: "\(n) operands") }
    }
    /// An instruction the engine does not run fails its function's load (so the kernel's
    /// `kernel(named:)`, CUDA's cuModuleGetFunction, reports CUDA_ERROR_INVALID_PTX naming it)
    /// rather than a launch that happens to reach it.
    func unsupported() -> PTXError {
      .unsupported(kernel: function.name, instruction: ins.opcode, line: ins.line)
    }
    // Packed and half types (PTX ISA §5.2.5.1), which `TypeCode.parse` leaves out on purpose:
    // an instruction that names one must be handled as such below, never as a .b32 default.
    let halfMod = mods.last { ["f16", "bf16", "f16x2", "bf16x2"].contains($0) }
    let packed = mods.contains { $0.hasSuffix("x2") || $0.hasSuffix("x4") }
    let halfType: UInt8 = halfMod?.hasPrefix("bf") == true ? TypeCode.bf | 1 : TypeCode.f | 1
    if mods.contains("relu") { flags |= Flag.relu }

    if let halfMod, let hop = Lowering.halfOps[base], packed == halfMod.hasSuffix("x2") {
      // add/sub/mul/fma/min/max/neg/abs/ex2/tanh on .f16, .bf16 and their x2 forms (§9.7.4).
      if mods.contains("xorsign") || mods.contains("oob")
        || (flags & Flag.relu != 0 && base != "fma"
          && base != "min" && base != "max")
      {
        throw unsupported()
      }
      try need(2)
      let operandType = packed ? TypeCode.b | 2 : halfType
      var i = Instr(op: hop, ty: halfType, ty2: packed ? 2 : 1, flags: flags & ~Flag.signed)
      i.d = try dest(ops[0])
      i.a = try source(ops[1], operandType)
      if ops.count > 2 { i.b = try source(ops[2], operandType) }
      if ops.count > 3 { i.c = try source(ops[3], operandType) }
      return emit(i)
    }
    if packed && !["mov", "ld", "st", "ldu", "cvt", "setp", "set", "selp"].contains(base) { throw unsupported() }

    if isFloat, let (f, d) = Lowering.floatOps[base] {
      let bits = TypeCode.bits(t)
      guard bits >= 32 else { throw unsupported() }
      let op = bits == 64 ? d : f
      try need(2)
      var i = Instr(op: op, ty: t, flags: flags)
      if base == "testp" {
        let classes = ["finite", "infinite", "number", "notanumber", "normal", "subnormal"]
        i.mod = UInt8(classes.firstIndex { mods.contains($0) } ?? 0)
      }
      i.d = try dest(ops[0])
      i.a = try source(ops[1], t)
      if ops.count > 2 { i.b = try source(ops[2], t) }
      if ops.count > 3 { i.c = try source(ops[3], t) }
      return emit(i)
    }

    switch base {
    case "add", "sub", "mul", "mad", "div", "rem", "min", "max", "abs", "neg", "and", "or", "xor", "not", "cnot", "shl",
      "shr", "popc", "clz", "brev", "bfe", "bfi", "prmt", "mul24", "mad24", "shf", "bfind", "addc", "subc", "sad",
      "madc":
      try need(2)
      if (base == "mad" && mods.contains("cc")) || base == "madc" {
        // mad{.lo,.hi}.cc and madc{.lo,.hi}{.cc} (PTX ISA §9.7.2.3-4, multi-word multiplies such as
        // numba's 128-bit integer division): the product's half, then an add through CC.CF.
        guard TypeCode.bits(t) >= 32, !mods.contains("wide") else { throw unsupported() }
        try need(4)
        let signed = TypeCode.kind(t) == TypeCode.s
        let hi = mods.contains("hi")
        let product = temp()
        emit(
          Instr(
            op: hi ? (signed ? .mulHiS : .mulHiU) : .mulLo, ty: t, sh: sh, d: product, a: try source(ops[1], t),
            b: try source(ops[2], t), mask: mask))
        var i = Instr(op: .addCarry, ty: t, sh: sh, mask: mask)
        i.flags = (base == "madc" ? Flag.carryIn : 0) | (mods.contains("cc") ? Flag.carryOut : 0)
        i.d = try dest(ops[0])
        i.a = product
        i.b = try source(ops[3], t)
        return emit(i)
      }
      if mods.contains("cc") || base == "addc" || base == "subc" {
        guard ["add", "sub", "addc", "subc"].contains(base), TypeCode.bits(t) >= 32, !mods.contains("sat") else {
          throw unsupported()
        }
        try need(3)
        var i = Instr(op: base.hasPrefix("add") ? .addCarry : .subCarry, ty: t, sh: sh, mask: mask)
        i.flags = (base.hasSuffix("c") ? Flag.carryIn : 0) | (mods.contains("cc") ? Flag.carryOut : 0)
        i.d = try dest(ops[0])
        i.a = try source(ops[1], t)
        i.b = try source(ops[2], t)
        return emit(i)
      }
      let signed = TypeCode.kind(t) == TypeCode.s
      var op: Op
      var m = mask
      var prmtMode: UInt8 = 0
      switch base {
      case "add": op = mods.contains("sat") ? .addSat : .add
      case "sub": op = mods.contains("sat") ? .subSat : .sub
      case "mul", "mad":
        let mad = base == "mad"
        if mods.contains("wide") {
          op = mad ? (signed ? .madWideS : .madWideU) : (signed ? .mulWideS : .mulWideU)
          m = TypeCode.bits(t) >= 32 ? ~0 : (1 << UInt64(2 * TypeCode.bits(t))) - 1
        } else if mods.contains("hi") {
          op = mad ? (signed ? .madHiS : .madHiU) : (signed ? .mulHiS : .mulHiU)
        } else {
          op = mad ? .madLo : .mulLo
        }
      case "mul24", "mad24":
        if mods.contains("sat") { throw unsupported() }
        if mods.contains("hi") {
          op = base == "mul24" ? (signed ? .mul24HiS : .mul24HiU) : (signed ? .mad24HiS : .mad24HiU)
        } else {
          op = base == "mul24" ? (signed ? .mul24S : .mul24U) : (signed ? .mad24S : .mad24U)
        }
      case "div": op = signed ? .divS : .divU
      case "rem": op = signed ? .remS : .remU
      case "min": op = signed ? .minS : .minU
      case "max": op = signed ? .maxS : .maxU
      case "abs": op = .absS
      case "neg": op = .neg
      case "and": op = .and
      case "or": op = .or
      case "xor": op = .xor
      case "not": op = .not
      case "cnot": op = .cnot
      case "shl": op = .shl
      case "shr": op = signed ? .shrS : .shrU
      case "popc": op = .popc
      case "clz": op = .clz
      case "brev": op = .brev
      case "bfe": op = signed ? .bfeS : .bfeU
      case "bfi": op = .bfi
      case "prmt":
        op = .prmt
        let modes = ["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"]
        if let k = modes.firstIndex(where: { mods.contains($0) }) { prmtMode = UInt8(k + 1) }
      case "shf": op = mods.contains("l") ? .shfL : .shfR
      case "bfind": op = signed ? .bfindS : .bfindU
      case "sad": op = signed ? .sadS : .sadU
      default: throw unsupported()
      }
      if base == "popc" || base == "clz" || base == "bfind" { m = 0xffff_ffff }
      var i = Instr(op: op, ty: t, mod: prmtMode, flags: flags, sh: sh, mask: m)
      if mods.contains("wrap") { i.flags |= Flag.wrap }
      if base == "bfind" && mods.contains("shiftamt") { i.mod = 1 }
      if ["min", "max", "add", "sub"].contains(base) && mods.contains("relu") { throw unsupported() }
      // Shift amounts, bit positions and lengths are .u32 whatever the data type.
      let u32 = TypeCode.u | 2
      let secondType = ["shl", "shr"].contains(base) ? u32 : t
      let thirdType = ["bfe", "shf"].contains(base) ? u32 : t
      i.d = try dest(ops[0])
      i.a = try source(ops[1], t)
      if ops.count > 2 { i.b = try source(ops[2], base == "bfe" ? u32 : secondType) }
      if ops.count > 3 { i.c = try source(ops[3], base == "bfi" ? u32 : thirdType) }
      if ops.count > 4 { i.e = try source(ops[4], u32) }
      return emit(i)

    case "setp", "set":
      // set (PTX ISA §9.7.6.1) is setp into a scratch predicate and a select of 1.0f or
      // 0xffffffff (by its destination type) against 0.
      try need(3)
      guard let cmp = mods.compactMap({ Lowering.cmps[$0] }).first else { throw fail(ins.opcode, "a comparison") }
      let isSet = base == "set"
      if isSet && (packed || types.count < 2) { throw unsupported() }
      let kind = TypeCode.kind(t)
      var op: Op =
        kind == TypeCode.f ? (TypeCode.bits(t) == 64 ? .setpD : TypeCode.bits(t) == 32 ? .setpF : .setpH) : .setpI
      var st = t
      if halfMod != nil {
        op = packed ? .setpH2 : .setpH
        st = halfType
        if packed && isSet { throw unsupported() }
      }
      let operandType = packed ? TypeCode.b | 2 : st
      var i = Instr(op: op, ty: st, mod: cmp.rawValue, flags: flags, sh: sh, mask: mask)
      if op == .setpH2 { i.e = Slot.sink }
      if mods.contains("and") {
        i.ty2 = 1
      } else if mods.contains("or") {
        i.ty2 = 2
      } else if mods.contains("xor") {
        i.ty2 = 3
      }
      switch ops[0] {
      case .pair(let p, let q):
        i.d = try predicate(p)
        i.e = try predicate(q)
      default: i.d = isSet ? temp() : try dest(ops[0])
      }
      i.a = try source(ops[1], operandType)
      i.b = try source(ops[2], operandType)
      if ops.count > 3 {
        switch ops[3] {
        case .not(let p):
          i.c = try predicate(p)
          i.flags |= Flag.negC
        default: i.c = try source(ops[3], TypeCode.pred)
        }
      } else if i.ty2 != 0 {
        throw fail(ins.opcode, "a combining predicate")
      }
      emit(i)
      if isSet {
        let dt = types[types.count - 2]
        // 1.0 in the destination's format (§9.7.4.6 set with an .f16/.bf16 destination, as in
        // cuda_fp16.hpp's inline assembly), all ones for an integer one.
        let one: UInt64 =
          switch (TypeCode.kind(dt), TypeCode.bits(dt)) {
          case (TypeCode.f, 16): 0x3c00
          case (TypeCode.bf, _): 0x3f80
          case (TypeCode.f, _): 0x3f80_0000
          default: 0xffff_ffff
          }
        emit(Instr(op: .selp, ty: dt, d: try dest(ops[0]), a: constant(one), b: Slot.zero, c: i.d))
      }
      return

    case "slct":
      // slct (PTX ISA §9.7.8.2): d = c >= 0 ? a : b, with c an .s32 or an .f32 (.ftz applies to c).
      try need(4)
      guard types.count >= 2 else { throw fail(ins.opcode, "two types") }
      let dt = types[types.count - 2]
      var i = Instr(op: TypeCode.kind(t) == TypeCode.f ? .slctF : .slctI, ty: dt, flags: flags)
      i.d = try dest(ops[0])
      i.a = try source(ops[1], dt)
      i.b = try source(ops[2], dt)
      i.c = try source(ops[3], t)
      return emit(i)

    case "selp":
      try need(4)
      var i = Instr(op: .selp, ty: t)
      i.d = try dest(ops[0])
      i.a = try source(ops[1], t)
      i.b = try source(ops[2], t)
      i.c = try source(ops[3], TypeCode.pred)
      return emit(i)

    case "mov":
      try need(2)
      if case .vector = ops[1] {  // pack: mov.b64 %rd, {%r1, %r2}
        let (first, count) = try slotList(ops[1], TypeCode.b | UInt8(max(0, Int(t & 0xF) - 1)), isDest: false)
        return emit(Instr(op: .pack, ty: t, d: try dest(ops[0]), b: count, imm: Int64(first)))
      }
      if case .vector = ops[0] {  // unpack: mov.b64 {%r1, %r2}, %rd
        let (first, count) = try slotList(ops[0], t, isDest: true)
        return emit(Instr(op: .unpack, ty: t, d: first, a: try source(ops[1], t), b: count))
      }
      if case .word(let w) = ops[1] {
        if let sr = Special.names[w] {
          return emit(Instr(op: .movSR, d: try dest(ops[0]), mask: mask, imm: sr.rawValue))
        }
        if case .local? = lookup(w) {  // the frame's local area: an add, done by symbolAddress
          let s = try symbolAddress(w, 0, generic: false)!
          return emit(Instr(op: .and, d: try dest(ops[0]), a: s, b: constant(~0), mask: mask))
        }
      }
      return emit(Instr(op: .mov, d: try dest(ops[0]), a: try source(ops[1], t), mask: mask))

    case "cvt":
      try need(2)
      if mods.contains("satfinite") { throw unsupported() }
      if let halfMod, halfMod.hasSuffix("x2") {
        // cvt.rn{.relu}.f16x2.f32 d, a, b (§9.7.9.21): a goes to the high half, b to the low.
        guard mods.last == "f32", ops.count >= 3 else { throw unsupported() }
        let f32 = TypeCode.f | 2
        var halves: [Int32] = []
        for o in [ops[2], ops[1]] {
          var i = Instr(op: .cvt, ty: halfType, ty2: f32, flags: flags, sh: 32, mask: 0xffff)
          i.mod = mods.compactMap { Lowering.roundings[$0] }.first ?? 0
          i.d = temp()
          i.a = try source(o, f32)
          emit(i)
          halves.append(i.d)
        }
        let first = Int32(extra.count)
        extra += halves
        return emit(Instr(op: .pack, ty: TypeCode.b | 2, d: try dest(ops[0]), b: 2, imm: Int64(first)))
      }
      if packed { throw unsupported() }
      guard types.count >= 2 else { throw fail(ins.opcode, "two types") }
      let (dt, st) = (types[types.count - 2], types[types.count - 1])
      var i = Instr(op: .cvt, ty: dt, ty2: st, flags: flags, mask: TypeCode.mask(dt))
      i.mod = mods.compactMap { Lowering.roundings[$0] }.first ?? 0
      i.sh = UInt8(64 - TypeCode.bits(st))
      i.d = try dest(ops[0])
      i.a = try source(ops[1], st)
      let intKinds = [TypeCode.u, TypeCode.s, TypeCode.b]
      if intKinds.contains(TypeCode.kind(dt)) && intKinds.contains(TypeCode.kind(st)) && flags & Flag.sat == 0
        && (TypeCode.kind(st) != TypeCode.s || TypeCode.bits(dt) <= TypeCode.bits(st))
      {
        i.op = .and  // truncation or zero extension is a mask
        i.b = constant(~0)
      }
      return emit(i)

    case "cvta":
      try need(2)
      let toSpace = mods.contains("to")
      var i = Instr(op: .mov, d: try dest(ops[0]), a: try source(ops[1], t), mask: mask)
      if mods.contains("shared") {
        i.op = toSpace ? .sub : .add
        i.b = constant(Memory.sharedWindow)
      } else if mods.contains("local") {
        i.op = toSpace ? .sub : .add
        i.b = Slot.localWindow
      } else if mods.contains("param") {
        throw unsupported()
      }
      return emit(i)

    case "isspacep":
      try need(2)
      let spaces = ["global", "shared", "local", "const", "param"]
      let s = spaces.firstIndex { mods.contains($0) } ?? 0
      return emit(Instr(op: .isspace, mod: UInt8(s), d: try dest(ops[0]), a: try source(ops[1], TypeCode.u | 3)))

    case "ld", "ldu", "st":
      try need(2)
      let isStore = base == "st"
      let generic =
        !(mods.contains("param") || mods.contains("global") || mods.contains("shared") || mods.contains("local")
        || mods.contains("const"))
      let addrOperand = isStore ? ops[0] : ops[1]
      let valOperand = isStore ? ops[1] : ops[0]
      let kind = try address(addrOperand, generic: generic)
      let (first, count) = try slotList(valOperand, t, isDest: !isStore)
      var i = Instr(op: .ldGlobal, ty: t, ty2: UInt8(TypeCode.bytes(t)), flags: flags, e: count, mask: mask)
      if t == TypeCode.pred { i.ty2 = 1 }
      // Loads into a wider register: sign-extend .s types to the register's width (PTX ISA §9.7.9.8).
      if !isStore, case .word(let w) = valOperand, case .reg(_, let rt)? = lookup(w), rt != TypeCode.pred {
        i.mask = TypeCode.mask(rt)
      }
      if count == 1 { i.d = extra[Int(first)] } else { i.d = first }
      switch kind {
      case .register(let s, let off):
        i.a = s
        i.imm = off
        if mods.contains("param") {
          throw fail(ins.opcode, "a .param symbol as the address")
        } else if mods.contains("shared") {
          i.op = isStore ? .stShared : .ldShared
        } else if mods.contains("local") {
          i.op = isStore ? .stLocal : .ldLocal
        } else if generic {
          i.op = isStore ? .stGeneric : .ldGeneric
        } else {
          i.op = isStore ? .stGlobal : .ldGlobal
        }
      case .kernelParam(let off):
        if isStore { throw fail(ins.opcode, "no stores to kernel parameters") }
        i.op = .ldKParam
        i.imm = Int64(off)
      case .frameParam(let off):
        i.op = isStore ? .stParam : .ldParam
        i.imm = Int64(off)
      }
      return emit(i)

    case "tensormap":
      // tensormap.replace.tile.field{.ss}.b1024.type [addr], {ord,} new_val (PTX ISA "tensormap.replace"):
      // the tensor-map object is opaque, so the engine defines its layout (TensorMapLayout) and
      // replaces a field as a store of the new value there. Nothing here reads a tensor map
      // (cp.async.bulk.tensor stays unsupported), so only this instruction must agree with it.
      guard mods.first == "replace", mods.contains("tile"), mods.contains("b1024") else { throw unsupported() }
      guard let field = mods.lazy.compactMap({ TensorMapLayout.fields[$0] }).first else {
        throw fail(ins.opcode, "a tensor-map field (\(TensorMapLayout.fields.keys.sorted().joined(separator: ", ")))")
      }
      guard TypeCode.bytes(t) == field.size, TypeCode.kind(t) == TypeCode.b else {
        throw fail(ins.opcode, "type .b\(field.size * 8) for this field")
      }
      try need(field.count > 1 ? 3 : 2)
      var offset = Int64(field.offset)
      if field.count > 1 {
        guard case .int(let ord) = ops[1], ord < UInt64(field.count) else {
          throw fail(ins.opcode, "an immediate ordinal in 0...\(field.count - 1)")
        }
        offset += Int64(ord) * Int64(field.size)
      }
      let generic = !(mods.contains("global") || mods.contains("shared"))
      guard case .register(let s, let off) = try address(ops[0], generic: generic) else {
        throw fail(ins.opcode, "a global or shared address")
      }
      let (first, _) = try slotList(ops[ops.count - 1], t, isDest: false)
      var i = Instr(
        op: mods.contains("shared") ? .stShared : generic ? .stGeneric : .stGlobal, ty: t,
        ty2: UInt8(field.size), e: 1, mask: mask)
      i.d = extra[Int(first)]
      i.a = s
      i.imm = off + offset
      return emit(i)

    case "atom", "red":
      let isRed = base == "red"
      try need(isRed ? 2 : 3)
      guard let aop = mods.compactMap({ Lowering.atomics[$0] }).first else {
        throw fail(ins.opcode, "an atomic operation")
      }
      if TypeCode.bytes(t) < 4 || mods.contains("v2") || mods.contains("v4") { throw unsupported() }
      let generic = !(mods.contains("global") || mods.contains("shared"))
      let kind = try address(ops[isRed ? 0 : 1], generic: generic)
      guard case .register(let s, let off) = kind else { throw fail(ins.opcode, "a global or shared address") }
      var i = Instr(op: mods.contains("shared") ? .atomShared : generic ? .atomGeneric : .atomGlobal)
      i.ty = t
      i.ty2 = UInt8(TypeCode.bytes(t))
      i.mod = aop.rawValue
      i.mask = mask
      i.sh = sh
      i.a = s
      i.imm = off
      i.d = isRed ? Slot.sink : try dest(ops[0])
      i.b = try source(ops[isRed ? 1 : 2], t)
      if aop == .cas { i.c = try source(ops[isRed ? 2 : 3], t) }
      return emit(i)

    case "bra", "brx":
      guard base == "bra", case .word(let l)? = ops.first else { throw unsupported() }
      fixups.append((code.count, l, ins.line))
      return emit(Instr(op: .bra))

    case "call":
      return try lowerCall(ins)
    case "ret":
      return emit(Instr(op: .ret))
    case "exit":
      return emit(Instr(op: .exit))
    case "trap":
      return emit(Instr(op: .trap))
    case "membar", "fence":
      // Proxy fences order other proxies (texture, async copies) the engine does not have.
      return emit(Instr(op: mods.contains("proxy") ? .nop : .fence))
    case "nanosleep", "prefetch", "prefetchu", "brkpt", "pmevent", "discard", "applypriority",
      "griddepcontrol":
      return emit(Instr(op: .nop))

    case "bar", "barrier":
      if mods.contains("warp") {  // bar.warp.sync membermask
        try need(1)
        return emit(Instr(op: .warpSync, a: try source(ops[0], TypeCode.b | 2)))
      }
      if mods.contains("red") {
        // bar.red.popc.u32 d, a{, b}, {!}c / bar.red.{and,or}.pred p, a{, b}, {!}c (PTX ISA
        // §9.7.13.1): a CTA barrier that also reduces c over the threads that arrive and gives
        // every one of them the result (numba's syncthreads_count/_and/_or).
        try need(3)
        guard let mode = ["popc", "and", "or"].firstIndex(where: { mods.contains($0) }) else {
          throw fail(ins.opcode, "a bar.red operation (.popc, .and or .or)")
        }
        var i = Instr(op: .barRed, mod: UInt8(mode))
        i.d = try dest(ops[0])
        i.a = try source(ops[1], TypeCode.u | 2)
        i.b = ops.count > 3 ? try source(ops[2], TypeCode.u | 2) : Slot.zero
        switch ops[ops.count - 1] {
        case .not(let p):
          i.c = try predicate(p)
          i.flags |= Flag.negC
        case let o: i.c = try source(o, TypeCode.pred)
        }
        return emit(i)
      }
      try need(1)
      var i = Instr(op: mods.contains("arrive") ? .barArrive : .barSync)
      i.a = try source(ops[0], TypeCode.u | 2)
      // No thread count: the zero slot (count 0 = the whole CTA), never -1: the
      // interpreter reads `r[a]` and `r[b]` of every instruction before its
      // switch, and r[-1] of thread 0 is outside the stack (AddressSanitizer).
      i.b = ops.count > 1 ? try source(ops[1], TypeCode.u | 2) : Slot.zero
      return emit(i)

    case "shfl":
      try need(4)
      let modes = ["up", "down", "bfly", "idx"]
      guard let mode = modes.firstIndex(where: { mods.contains($0) }) else { throw fail(ins.opcode, "a shfl mode") }
      var i = Instr(op: .shfl, mod: UInt8(mode))
      switch ops[0] {
      case .pair(let r, let p):
        i.d = try dest(.word(r))
        i.e = try predicate(p)
      default: i.d = try dest(ops[0])
      }
      let u32 = TypeCode.b | 2
      i.a = try source(ops[1], u32)
      i.b = try source(ops[2], u32)
      i.c = try source(ops[3], u32)
      i.imm = Int64(ops.count > 4 ? try source(ops[4], u32) : constant(0xffff_ffff))
      return emit(i)

    case "vote":
      try need(2)
      let modes = ["all", "any", "uni", "ballot"]
      guard let mode = modes.firstIndex(where: { mods.contains($0) }) else { throw fail(ins.opcode, "a vote mode") }
      var i = Instr(op: .vote, mod: UInt8(mode))
      i.d = try dest(ops[0])
      switch ops[1] {
      case .not(let p):
        i.a = try predicate(p)
        i.flags |= Flag.negC
      default: i.a = try source(ops[1], TypeCode.pred)
      }
      i.b = ops.count > 2 ? try source(ops[2], TypeCode.b | 2) : constant(0xffff_ffff)
      return emit(i)

    case "match":
      // match.any.sync / match.all.sync (PTX ISA §9.7.13.11), .b32 or .b64.
      try need(3)
      guard mods.contains("sync"), let mode = ["any", "all"].firstIndex(where: { mods.contains($0) }) else {
        throw unsupported()
      }
      var i = Instr(op: .match, ty: t, mod: UInt8(mode), mask: mask)
      switch ops[0] {
      case .pair(let r, let p):
        i.d = try dest(.word(r))
        i.e = try predicate(p)
      default: i.d = try dest(ops[0])
      }
      i.a = try source(ops[1], t)
      i.b = try source(ops[2], TypeCode.b | 2)
      return emit(i)

    case "activemask":
      try need(1)
      return emit(Instr(op: .activemask, d: try dest(ops[0])))

    case "redux":
      try need(3)
      let reduxOps: [String: AtomicOp] = ["add": .add, "min": .min, "max": .max, "and": .and, "or": .or, "xor": .xor]
      guard let aop = mods.compactMap({ reduxOps[$0] }).first, TypeCode.bits(t) == 32 else { throw unsupported() }
      var i = Instr(op: .redux, ty: t, mod: aop.rawValue, flags: flags)
      i.d = try dest(ops[0])
      i.a = try source(ops[1], t)
      i.b = try source(ops[2], TypeCode.b | 2)
      return emit(i)

    default:
      throw unsupported()
    }
  }

  /// `call[.uni] (ret, ...), name, (arg, ...) [, prototype];` (PTX ISA §9.7.13.4).
  mutating func lowerCall(_ ins: SyntaxInstruction) throws(PTXError) {
    var ops = ins.operands[...]
    var rets: [SyntaxOperand] = []
    if case .list(let r)? = ops.first {
      rets = r
      ops = ops.dropFirst()
    }
    guard case .word(let name)? = ops.first else { throw fail(ins.opcode, "a function name") }
    ops = ops.dropFirst()
    var args: [SyntaxOperand] = []
    if case .list(let a)? = ops.first { args = a }
    var site = CallSite(target: .unsupported(name), args: [], results: [])
    var calleeParams: [(Int, Int)] = []
    var calleeReturns: [(Int, Int)] = []
    if name == "vprintf" {
      site.target = .vprintf
      calleeParams = [(0, 8), (8, 8)]
      calleeReturns = [(16, 4)]
    } else if name == "__assertfail" {
      site.target = .assertfail
      calleeParams = [(0, 8), (8, 8), (16, 4), (24, 8), (32, 8)]
    } else if let f = module.functionIndex[name], module.declaredOnly.contains(name),
      let builtin = DeviceRuntimeFunction(rawValue: name)
    {
      // Declared, not defined: CUDA's device runtime, which the engine provides (DeviceRuntime.swift).
      site.target = .deviceRuntime(builtin)
      calleeParams = module.paramLayouts[f].params
      calleeReturns = module.paramLayouts[f].returns
    } else if let f = module.functionIndex[name] {
      site.target = .function(f)
      calleeParams = module.paramLayouts[f].params
      calleeReturns = module.paramLayouts[f].returns
    } else if case .reg? = lookup(name) {
      throw .unsupported(kernel: function.name, instruction: "call (indirect)", line: ins.line)
    } else {
      throw fail(name, "a declared function")
    }
    for (k, a) in args.enumerated() where k < calleeParams.count {
      let (off, size) = calleeParams[k]
      switch a {
      case .word(let w):
        if case .param(let p, false)? = lookup(w) {
          site.args.append((.param(p), off, size))
          continue
        }
        site.args.append((.slot(try source(a, size == 8 ? TypeCode.b | 3 : TypeCode.b | 2)), off, size))
      default:
        site.args.append((.slot(try source(a, size == 8 ? TypeCode.b | 3 : TypeCode.b | 2)), off, size))
      }
    }
    for (k, r) in rets.enumerated() where k < calleeReturns.count {
      guard case .word(let w) = r, case .param(let p, false)? = lookup(w) else {
        throw fail("\(r)", "a .param variable for the result")
      }
      site.results.append((calleeReturns[k].0, p, calleeReturns[k].1))
    }
    calls.append(site)
    emit(Instr(op: .call, imm: Int64(calls.count - 1)))
  }
}

/// Where `tensormap.replace` puts each field of a tensor-map object (PTX ISA, "Tensor-map":
/// a 128-byte object whose layout is opaque, defined by each implementation).
/// This engine's layout, in bytes: rank 0 (.b32), elemtype 4, global_address 8 (.b64),
/// global_dim[5] 16, box_dim[5] 36, element_stride[5] 56, interleave_layout 76,
/// global_stride[4] 80 (.b64; a rank-5 tensor has 4 strides, as cuTensorMapEncodeTiled's
/// globalStrides), swizzle_mode 112, swizzle_atomicity 116, fill_mode 120; 124–127 unused. A
/// replacement writes only its field's bytes, as given (no encoding or range checks).
enum TensorMapLayout {
  struct Field {
    var offset: Int
    /// Bytes of one element, and how many there are (ordinals 0..<count).
    var size: Int
    var count: Int
  }
  static let fields: [String: Field] = [
    "rank": Field(offset: 0, size: 4, count: 1), "elemtype": Field(offset: 4, size: 4, count: 1),
    "global_address": Field(offset: 8, size: 8, count: 1), "global_dim": Field(offset: 16, size: 4, count: 5),
    "box_dim": Field(offset: 36, size: 4, count: 5), "element_stride": Field(offset: 56, size: 4, count: 5),
    "interleave_layout": Field(offset: 76, size: 4, count: 1), "global_stride": Field(offset: 80, size: 8, count: 4),
    "swizzle_mode": Field(offset: 112, size: 4, count: 1), "swizzle_atomicity": Field(offset: 116, size: 4, count: 1),
    "fill_mode": Field(offset: 120, size: 4, count: 1),
  ]
}
