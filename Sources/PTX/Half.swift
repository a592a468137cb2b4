#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Half-precision arithmetic and the rounding that `cvt` needs (PTX ISA §5.2.5.1 "Half
/// Precision Floating-Point Types": `.f16` is IEEE binary16, `.bf16` is the top half of an
/// f32; `.f16x2` / `.bf16x2` pack two of them in a `.b32`, element 0 in the low 16 bits).
///
/// Every result is rounded once from the exact value: sums and products of halves are
/// formed in Double (exact, or rounded to odd when a wide exponent span makes them
/// inexact), and rounding a round-to-odd Double to a format of at most 24 significand bits
/// gives the correctly rounded result, so no double rounding creeps in.

/// Rounding codes as lowered into `Instr.mod` (see `Lowering.roundings`).
enum Rounding {
  static let rn: UInt8 = 1
  static let rz: UInt8 = 2
  static let rm: UInt8 = 3
  static let rp: UInt8 = 4
  /// The direction of a code: integer-rounding codes (.rni ...) map to their plain mode.
  static func mode(_ m: UInt8) -> UInt8 { m >= 5 ? m - 4 : m == 0 ? rn : m }
}

/// `a + b` as a Double rounded to odd: exact when the sum fits, otherwise the neighbour with an
/// odd last bit on the side of the true sum (Boldo and Melquiond's round-to-odd).
@inline(__always) func sumToOdd(_ a: Double, _ b: Double) -> Double {
  let s = a + b
  guard s.isFinite else { return s }
  let bb = s - a
  let err = (a - (s - bb)) + (b - bb)  // TwoSum: a + b == s + err exactly
  if err == 0 || s.bitPattern & 1 == 1 { return s }
  return err > 0 ? s.nextUp : s.nextDown
}

/// Sign-magnitude step of a 16-bit float pattern towards +inf (`up`) or -inf.
@inline(__always) func step16(_ b: UInt16, up: Bool) -> UInt16 {
  if b & 0x7fff == 0 { return up ? 0x0001 : 0x8001 }
  return (b & 0x8000 == 0) == up ? b &+ 1 : b &- 1
}

/// Value of a `.f16` (kind f) or `.bf16` (kind bf) pattern.
@inline(__always) func halfValue(_ b: UInt64, bf: Bool) -> Double {
  let h = UInt16(truncatingIfNeeded: b)
  return bf ? Double(Float(bitPattern: UInt32(h) << 16)) : Double(Float16(bitPattern: h))
}

/// `x` rounded to `.f16` or `.bf16` with a PTX rounding mode; NaN becomes the canonical 0x7fff.
func roundHalf(_ x: Double, bf: Bool, mode: UInt8 = Rounding.rn) -> UInt16 {
  if x.isNaN { return 0x7fff }
  var h: UInt16
  if bf {
    // Round to odd into f32 first (24 bits ≥ 8 + 2), then to nearest even on the bits.
    var f = Float(x)
    if f.isFinite && Double(f) != x && f.bitPattern & 1 == 0 { f = Double(f) < x ? f.nextUp : f.nextDown }
    let u = f.bitPattern
    h = UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
  } else {
    h = Float16(x).bitPattern  // one correctly rounded step (checked in HalfTests)
  }
  let m = Rounding.mode(mode)
  if m == Rounding.rn { return h }
  let v = halfValue(UInt64(h), bf: bf)
  if v == x { return h }
  switch m {
  case Rounding.rz: return v.magnitude > x.magnitude ? step16(h, up: v < 0) : h
  case Rounding.rm: return v > x ? step16(h, up: false) : h
  default: return v < x ? step16(h, up: true) : h
  }
}

/// `x` rounded to f32 with a PTX rounding mode (`x` exact or rounded to odd).
func roundFloat(_ x: Double, mode: UInt8) -> Float {
  let f = Float(x)
  let m = Rounding.mode(mode)
  if m == Rounding.rn || x.isNaN || Double(f) == x { return f }
  switch m {
  case Rounding.rz: return Double(f).magnitude > x.magnitude ? (f < 0 ? f.nextUp : f.nextDown) : f
  case Rounding.rm: return Double(f) > x ? f.nextDown : f
  default: return Double(f) < x ? f.nextUp : f
  }
}

/// An integer's value as a Double rounded with `mode`, and rounded to odd when `odd` (for a
/// further rounding to a narrower format). Doubles hold integers below 2^53 exactly.
func integerToDouble(_ v: UInt64, negative: Bool, mode: UInt8, odd: Bool) -> Double {
  var d = Double(v)  // nearest; 2^64 when v is near UInt64.max
  let exact = v.leadingZeroBitCount + v.trailingZeroBitCount >= 11
  if !exact {
    let above = d >= 18_446_744_073_709_551_616.0 || UInt64(d) > v  // |d| > |v|
    let m = Rounding.mode(mode)
    if odd {
      if d.bitPattern & 1 == 0 { d = above ? d.nextDown : d.nextUp }
    } else if m == Rounding.rz || (m == Rounding.rm && !negative) || (m == Rounding.rp && negative) {
      if above { d = d.nextDown }  // towards zero
    } else if m != Rounding.rn {
      if !above { d = d.nextUp }  // away from zero
    }
  }
  return negative ? -d : d
}

/// One lane of a half instruction: `a`, `b`, `c` are 16-bit patterns.
@inline(__always) func halfLane(_ op: Op, _ bf: Bool, _ flags: UInt8, _ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
  let ftz = flags & Flag.ftz != 0 && !bf
  // .ftz (f16 only): subnormal inputs and results are sign-preserving zero.
  func input(_ v: UInt64) -> Double {
    let x = halfValue(v, bf: bf)
    return ftz && v & 0x7c00 == 0 ? (v & 0x8000 != 0 ? -0.0 : 0.0) : x
  }
  func output(_ x: Double) -> UInt64 {
    var h = roundHalf(x, bf: bf)
    if ftz && h & 0x7c00 == 0 { h &= 0x8000 }
    if flags & Flag.sat != 0 {
      // .sat clamps to [0.0, 1.0]; NaN becomes +0.0 (PTX ISA §9.7.4.1 add).
      let v = halfValue(UInt64(h), bf: bf)
      if v.isNaN || v <= 0 { h = 0 } else if v > 1 { h = bf ? 0x3f80 : 0x3c00 }
    }
    if flags & Flag.relu != 0 {
      // .relu clamps negative results to +0.0; NaN stays the canonical NaN (§9.7.4.4 fma).
      if h & 0x8000 != 0 && halfValue(UInt64(h), bf: bf).isNaN == false { h = 0 }
    }
    return UInt64(h)
  }
  switch op {
  case .hadd: return output(sumToOdd(input(a), input(b)))
  case .hsub: return output(sumToOdd(input(a), -input(b)))
  case .hmul: return output(input(a) * input(b))  // ≤ 22 significand bits: exact
  case .hfma: return output(sumToOdd(input(a) * input(b), input(c)))
  case .hneg: return a ^ 0x8000
  case .habs: return a & 0x7fff
  case .hmin, .hmax:
    // min/max (§9.7.4.9): a NaN operand loses to a number unless .NaN; -0 < +0.
    let x = input(a)
    let y = input(b)
    if x.isNaN || y.isNaN {
      if flags & Flag.nan != 0 || (x.isNaN && y.isNaN) { return 0x7fff }
      return output(x.isNaN ? y : x)
    }
    return output(fminmax(x, y, op == .hmax, false))
  case .hex2: return output(Double(exp2f(Float(input(a)))))
  case .htanh: return output(Double(tanhf(Float(input(a)))))
  default: return 0
  }
}

/// A half instruction on one or two lanes (`Instr.ty2` = 2 for the packed forms).
@inline(never) func halfOp(_ i: Instr, _ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
  let bf = TypeCode.kind(i.ty) == TypeCode.bf
  let lo = halfLane(i.op, bf, i.flags, a & 0xffff, b & 0xffff, c & 0xffff)
  if i.ty2 != 2 { return lo }
  let hi = halfLane(i.op, bf, i.flags, (a >> 16) & 0xffff, (b >> 16) & 0xffff, (c >> 16) & 0xffff)
  return lo | hi << 16
}
