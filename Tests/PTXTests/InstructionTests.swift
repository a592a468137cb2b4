import Foundation
import NVRTC
import PTX
import Testing

/// The second half of the instruction set (issue 16): bit manipulation, 24-bit and 64-bit
/// integer arithmetic, f16/bf16 and their x2 forms, warp match/redux, clocks. CUDA C++ is
/// compiled by NVRTC at test time; each result is checked against a reference computed here.

/// Edge cases first, then a deterministic spread.
let edgeWords: [UInt32] = [
  0, 1, 2, 3, 0xffff_ffff, 0x8000_0000, 0x7fff_ffff, 0x8000_0001, 0x0000_ffff, 0xffff_0000, 0x1234_5678, 0xdead_beef,
  31, 32, 33, 63, 64, 255, 256, 0x00ff_ff00, 0xf0f0_f0f0, 0x0f0f_0f0f,
]
func words(_ n: Int, seed: UInt64) -> [UInt32] {
  var g = SplitMix(seed)
  return edgeWords + (0..<(n - edgeWords.count)).map { _ in UInt32(truncatingIfNeeded: g.next()) }
}
struct SplitMix {
  var s: UInt64
  init(_ seed: UInt64) { s = seed }
  mutating func next() -> UInt64 {
    s &+= 0x9e37_79b9_7f4a_7c15
    var z = s
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}

/// Every (x, y) of `edges` × `edges`, as two parallel arrays.
func allPairs<T>(_ edges: [T]) -> ([T], [T]) {
  (edges.flatMap { x in edges.map { _ in x } }, Array(Array(repeating: edges, count: edges.count).joined()))
}

/// Runs one kernel of `module` with 1-D geometry covering `n` threads.
func launch1D(_ module: PTXModule, _ mem: TestMemory, _ name: String, _ n: Int, _ args: [Any], block: Int = 64) throws {
  let info = try module.kernel(named: name)
  _ = try module.launch(
    kernel: name, grid: PTXDim3(UInt32((n + block - 1) / block)), block: PTXDim3(UInt32(block)),
    parameters: pack(info, args), memory: mem)
}

func reverse32(_ x: UInt32) -> UInt32 {
  var r: UInt32 = 0
  for k in 0..<32 where x & (1 << UInt32(k)) != 0 { r |= 1 << UInt32(31 - k) }
  return r
}

/// bfe per the PTX ISA pseudocode, bit by bit.
func bfeRef(_ a: UInt64, _ pos: UInt64, _ len: UInt64, bits: Int, signed: Bool) -> UInt64 {
  let msb = UInt64(bits - 1)
  let p = pos & 0xff
  let l = len & 0xff
  let sbit: UInt64 = !signed || l == 0 ? 0 : (a >> Swift.min(p + l - 1, msb)) & 1
  var d: UInt64 = 0
  for i in 0...msb {
    let bit = i < l && p + i <= msb ? (a >> (p + i)) & 1 : sbit
    d |= bit << i
  }
  return d
}

func bfiRef(_ a: UInt64, _ b: UInt64, _ pos: UInt64, _ len: UInt64, bits: Int) -> UInt64 {
  var f = b
  let p = pos & 0xff
  let l = len & 0xff
  var i: UInt64 = 0
  while i < l && p + i <= UInt64(bits - 1) {
    f = (f & ~(1 << (p + i))) | (((a >> i) & 1) << (p + i))
    i += 1
  }
  return f
}

func prmtRef(_ a: UInt32, _ b: UInt32, _ c: UInt32) -> UInt32 {
  let bytes = UInt64(b) << 32 | UInt64(a)
  var r: UInt32 = 0
  for k in 0..<4 {
    let sel = (c >> UInt32(4 * k)) & 0xf
    var byte = UInt32((bytes >> UInt64(8 * (sel & 7))) & 0xff)
    if sel & 8 != 0 { byte = byte & 0x80 != 0 ? 0xff : 0 }
    r |= byte << UInt32(8 * k)
  }
  return r
}

@Suite(.enabled(if: Compiler.nvrtc != nil))
struct IntegerInstructionTests {
  static let source = #"""
    __device__ unsigned bfe_u(unsigned a, unsigned p, unsigned l) {
      unsigned d; asm("bfe.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(p), "r"(l)); return d; }
    __device__ int bfe_s(int a, unsigned p, unsigned l) {
      int d; asm("bfe.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(p), "r"(l)); return d; }
    __device__ unsigned bfi(unsigned a, unsigned b, unsigned p, unsigned l) {
      unsigned d; asm("bfi.b32 %0, %1, %2, %3, %4;" : "=r"(d) : "r"(a), "r"(b), "r"(p), "r"(l)); return d; }
    __device__ unsigned bfind_u(unsigned a) { unsigned d; asm("bfind.u32 %0, %1;" : "=r"(d) : "r"(a)); return d; }
    __device__ unsigned bfind_s(int a) { unsigned d; asm("bfind.s32 %0, %1;" : "=r"(d) : "r"(a)); return d; }
    __device__ unsigned prmt(unsigned a, unsigned b, unsigned c) {
      unsigned d; asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c)); return d; }
    extern "C" __global__ void ints(const unsigned* a, const unsigned* b, unsigned* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      unsigned x = a[i], y = b[i];
      unsigned s = (unsigned)i;  // shift amounts 0..n-1: past 32 too
      unsigned* o = out + 20 * i;
      o[0] = __brev(x);
      o[1] = __clz((int)x);
      o[2] = __popc(x);
      o[3] = __ffs((int)x);
      o[4] = __byte_perm(x, y, y & 0x7777);
      o[5] = __funnelshift_l(x, y, s);
      o[6] = __funnelshift_r(x, y, s);
      o[7] = __funnelshift_lc(x, y, s);
      o[8] = __funnelshift_rc(x, y, s);
      o[9] = __mul24((int)x, (int)y);
      o[10] = __umul24(x, y);
      o[11] = bfe_u(x, y & 63, (y >> 8) & 63);
      o[12] = bfe_s((int)x, y & 63, (y >> 8) & 63);
      o[13] = bfi(x, y, (y >> 16) & 63, (y >> 24) & 63);
      o[14] = bfind_u(x);
      o[15] = bfind_s((int)x);
      o[16] = prmt(x, y, (y * 2654435761u) & 0xffff);
      o[17] = __usad(x, y, 7u);
      o[18] = __clz((int)y) + __popc(y);
      o[19] = __brev(y);
    }
    extern "C" __global__ void ints64(const long long* a, const long long* b, long long* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      long long x = a[i], y = b[i];
      unsigned long long ux = x, uy = y;
      long long* o = out + 10 * i;
      o[0] = y != 0 && !(x == (long long)0x8000000000000000ll && y == -1) ? x / y : 0;
      o[1] = y != 0 && !(x == (long long)0x8000000000000000ll && y == -1) ? x % y : 0;
      o[2] = uy != 0 ? ux / uy : 0;
      o[3] = uy != 0 ? ux % uy : 0;
      o[4] = __clzll(x);
      o[5] = __popcll(x);
      o[6] = __brevll(ux);
      o[7] = __ffsll(x);
      long long d;
      asm("bfe.s64 %0, %1, %2, %3;" : "=l"(d) : "l"(x), "r"((unsigned)(uy & 127)), "r"((unsigned)(uy >> 8) & 127));
      o[8] = d;
      asm("bfe.u64 %0, %1, %2, %3;" : "=l"(d) : "l"(x), "r"((unsigned)(uy & 127)), "r"((unsigned)(uy >> 8) & 127));
      o[9] = d;
    }
    """#

  @Test func bitsAndShifts() throws {
    let ptx = try Compiler.ptx(Self.source)
    for op in ["brev.b32", "clz.b32", "popc.b32", "prmt.b32", "shf.l.wrap", "shf.r.clamp", "sad.u32", "bfind.shiftamt"]
    {
      #expect(ptx.contains(op), "NVRTC no longer emits \(op)")
    }
    let module = try PTXModule(source: ptx)
    let mem = TestMemory()
    let n = 200
    let a = words(n, seed: 1)
    let b = Array(edgeWords.reversed()) + words(n, seed: 2).dropFirst(edgeWords.count)
    let da = mem.upload(a)
    let db = mem.upload(Array(b))
    let out = mem.alloc(n * 20 * 4)
    try launch1D(module, mem, "ints", n, [da, db, out, Int32(n)])
    let r = mem.download(out, count: n * 20, as: UInt32.self)
    for i in 0..<n {
      let (x, y, s) = (a[i], b[i], UInt32(i))
      let wide = UInt64(y) << 32 | UInt64(x)
      let mul24 = UInt32(
        truncatingIfNeeded: (Int64(Int32(bitPattern: x << 8)) >> 8) * (Int64(Int32(bitPattern: y << 8)) >> 8))
      var want: [UInt32] = [
        reverse32(x), UInt32(x.leadingZeroBitCount), UInt32(x.nonzeroBitCount),
        x == 0 ? 0 : UInt32(x.trailingZeroBitCount + 1), prmtRef(x, y, y & 0x7777),
        UInt32(truncatingIfNeeded: (wide << UInt64(s & 31)) >> 32), UInt32(truncatingIfNeeded: wide >> UInt64(s & 31)),
        UInt32(truncatingIfNeeded: (wide << UInt64(min(s, 32))) >> 32),
        UInt32(truncatingIfNeeded: wide >> UInt64(min(s, 32))), mul24, (x & 0xff_ffff) &* (y & 0xff_ffff),
      ]
      want.append(UInt32(bfeRef(UInt64(x), UInt64(y & 63), UInt64((y >> 8) & 63), bits: 32, signed: false)))
      want.append(UInt32(bfeRef(UInt64(x), UInt64(y & 63), UInt64((y >> 8) & 63), bits: 32, signed: true)))
      want.append(UInt32(bfiRef(UInt64(x), UInt64(y), UInt64((y >> 16) & 63), UInt64((y >> 24) & 63), bits: 32)))
      want.append(x == 0 ? 0xffff_ffff : UInt32(31 - x.leadingZeroBitCount))
      let sx = Int32(bitPattern: x) < 0 ? ~x : x
      want.append(sx == 0 ? 0xffff_ffff : UInt32(31 - sx.leadingZeroBitCount))
      want.append(prmtRef(x, y, (y &* 2_654_435_761) & 0xffff))
      want.append((x > y ? x - y : y - x) &+ 7)
      want.append(UInt32(y.leadingZeroBitCount + y.nonzeroBitCount))
      want.append(reverse32(y))
      let got = Array(r[i * 20..<i * 20 + 20])
      for k in 0..<20 { #expect(got[k] == want[k], "ints[\(k)] x=\(x) y=\(y) s=\(s)") }
    }
  }

  @Test func sixtyFourBit() throws {
    let module = try PTXModule(source: try Compiler.ptx(Self.source))
    let mem = TestMemory()
    let edges: [Int64] = [0, 1, -1, 2, -2, 7, -7, .min, .max, .min + 1, 1 << 32, -(1 << 32), 0x1_0000_0001, 3]
    var g = SplitMix(3)
    var (a, b) = allPairs(edges)
    for _ in 0..<100 {
      a.append(Int64(bitPattern: g.next()))
      b.append(Int64(bitPattern: g.next() >> (g.next() % 64)))
    }
    let n = a.count
    let out = mem.alloc(n * 10 * 8)
    try launch1D(module, mem, "ints64", n, [mem.upload(a), mem.upload(b), out, Int32(n)])
    let r = mem.download(out, count: n * 10, as: Int64.self)
    for i in 0..<n {
      let (x, y) = (a[i], b[i])
      let (ux, uy) = (UInt64(bitPattern: x), UInt64(bitPattern: y))
      let ok = y != 0 && !(x == .min && y == -1)
      var rev: UInt64 = 0
      for k in 0..<64 where ux & (1 << UInt64(k)) != 0 { rev |= 1 << UInt64(63 - k) }
      let want: [Int64] = [
        ok ? x / y : 0, ok ? x % y : 0, Int64(bitPattern: uy != 0 ? ux / uy : 0),
        Int64(bitPattern: uy != 0 ? ux % uy : 0), Int64(x.leadingZeroBitCount), Int64(x.nonzeroBitCount),
        Int64(bitPattern: rev), x == 0 ? 0 : Int64(x.trailingZeroBitCount + 1),
        Int64(bitPattern: bfeRef(ux, uy & 127, (uy >> 8) & 127, bits: 64, signed: true)),
        Int64(bitPattern: bfeRef(ux, uy & 127, (uy >> 8) & 127, bits: 64, signed: false)),
      ]
      let got = Array(r[i * 10..<i * 10 + 10])
      for k in 0..<10 { #expect(got[k] == want[k], "ints64[\(k)] x=\(x) y=\(y)") }
    }
  }
}

/// cuda_fp16.h / cuda_bf16.h from the CUDA runtime wheel next to NVRTC's (`--include-path`):
/// NVRTC 12.9 has no built-in copy of them.
enum CUDAHeaders {
  static let path: String? = {
    guard let lib = Compiler.nvrtc?.path else { return nil }
    let dir = URL(fileURLWithPath: lib).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("cuda_runtime/include").path
    return FileManager.default.fileExists(atPath: dir + "/cuda_fp16.h") ? dir : nil
  }()
}

/// A Double rounded to nearest-even bf16 by bit arithmetic on its binary64 pattern (normal
/// bf16 range only): an independent reference for the engine's f32-based rounding.
func bf16Ref(_ d: Double) -> UInt16 {
  if d.isNaN { return 0x7fff }
  if d == 0 || d.isInfinite { return (d.sign == .minus ? 0x8000 : 0) | (d.isInfinite ? 0x7f80 : 0) }
  let u = d.bitPattern
  let r = (u &+ (1 << 44) &- 1 &+ ((u >> 45) & 1)) >> 45  // sign, 11-bit exponent, 7-bit fraction
  let exp = Int((r >> 7) & 0x7ff) - 1023 + 127
  return UInt16((r >> 18) << 15 | UInt64(exp) << 7 | (r & 0x7f))
}
func bf16Value(_ h: UInt16) -> Double { Double(Float(bitPattern: UInt32(h) << 16)) }
func f16Value(_ h: UInt16) -> Double { Double(Float16(bitPattern: h)) }
/// Equal patterns, or both NaN (the engine returns the canonical NaN).
func sameHalf(_ a: UInt16, _ b: UInt16, bf: Bool) -> Bool {
  let nan = bf ? bf16Value(a).isNaN && bf16Value(b).isNaN : f16Value(a).isNaN && f16Value(b).isNaN
  return a == b || nan
}
/// IEEE minNum/maxNum as PTX min/max: a NaN loses to a number, -0 < +0.
func minMaxRef(_ x: Double, _ y: Double, max: Bool) -> Double {
  if x.isNaN { return y }
  if y.isNaN { return x }
  if x == y { return (x.sign == .minus) == max ? y : x }
  return max ? Swift.max(x, y) : Swift.min(x, y)
}

@Suite(.enabled(if: Compiler.nvrtc != nil && CUDAHeaders.path != nil))
struct HalfInstructionTests {
  static let source = #"""
    #include <cuda_fp16.h>
    #include <cuda_bf16.h>
    typedef unsigned short u16;
    template <class T> __device__ u16 bits(T v) { u16 u; memcpy(&u, &v, 2); return u; }
    // The arithmetic both formats share, in o[0...5].
    template <class T> __device__ void arith(T x, T y, T z, u16* o) {
      o[0] = bits(__hadd(x, y)); o[1] = bits(__hsub(x, y)); o[2] = bits(__hmul(x, y));
      o[3] = bits(__hfma(x, y, z)); o[4] = bits(__hmin(x, y)); o[5] = bits(__hmax(x, y));
    }
    extern "C" __global__ void halves(const u16* a, const u16* b, const u16* c, const u16* pa, const u16* pb,
                                      const u16* pc, const float* f, const double* g, u16* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      __half x = __ushort_as_half(a[i]), y = __ushort_as_half(b[i]), z = __ushort_as_half(c[i]);
      u16* o = out + 24 * i;
      arith(x, y, z, o);
      o[6] = bits(__hneg(x));
      o[7] = bits(__habs(x));
      o[8] = bits(__float2half_rn(f[i]));
      o[9] = bits(__float2half_rz(f[i]));
      o[10] = bits(__float2half_rd(f[i]));
      o[11] = bits(__float2half_ru(f[i]));
      o[12] = bits(__double2half(g[i]));
      __nv_bfloat16 p = __ushort_as_bfloat16(pa[i]), q = __ushort_as_bfloat16(pb[i]), r = __ushort_as_bfloat16(pc[i]);
      arith(p, q, r, o + 13);
      o[19] = bits(__float2bfloat16(f[i]));
      float back = __half2float(x) + __bfloat162float(p);
      memcpy(o + 20, &back, 4);
      o[22] = __hlt(x, y) + 2 * __hlt(p, q);
      o[23] = 0;
    }
    extern "C" __global__ void halves2(const unsigned* a, const unsigned* b, const unsigned* c, const unsigned* pa,
                                       const unsigned* pb, const unsigned* pc, const float* f, unsigned* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      unsigned* o = out + 8 * i;
      __half2 x, y, z;
      memcpy(&x, a + i, 4); memcpy(&y, b + i, 4); memcpy(&z, c + i, 4);
      __half2 h[4] = {__hadd2(x, y), __hmul2(x, y), __hfma2(x, y, z), __floats2half2_rn(f[2 * i], f[2 * i + 1])};
      memcpy(o, h, 16);
      __nv_bfloat162 p, q, r;
      memcpy(&p, pa + i, 4); memcpy(&q, pb + i, 4); memcpy(&r, pc + i, 4);
      __nv_bfloat162 k[4] = {__hadd2(p, q), __hmul2(p, q), __hfma2(p, q, r), __floats2bfloat162_rn(f[2 * i], f[2 * i + 1])};
      memcpy(o + 4, k, 16);
    }
    """#

  /// Halves of both formats in a modest range (so that fma's exact value fits a Double and
  /// bf16 stays normal), plus signed zeros, infinities and NaN.
  static func patterns(_ n: Int, seed: UInt64, bf: Bool) -> [UInt16] {
    let edges: [UInt16] =
      bf ? [0, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x3f80, 0xbf80] : [0, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x3c00, 0xbc00]
    var g = SplitMix(seed)
    return edges
      + (0..<(n - edges.count)).map { _ in
        let v = (Double(g.next() % 20001) - 10000) / 997.0
        return bf ? bf16Ref(v) : Float16(v).bitPattern
      }
  }

  static func compile() throws -> PTXModule {
    let ptx = try Compiler.nvrtc!.ptx(
      source, name: "halves.cu", compute: 80, options: ["--include-path=\(CUDAHeaders.path!)"])
    for op in [
      "add.f16", "fma.rn.f16", "min.f16", "fma.rn.bf16", "cvt.rn.bf16.f32", "cvt.rz.f16.f32", "mul.f16x2",
      "fma.rn.bf16x2", "cvt.rn.f16.f64", "setp.lt.f16",
    ] {
      #expect(ptx.contains(op), "NVRTC no longer emits \(op)")
    }
    return try PTXModule(source: ptx)
  }

  /// Directed roundings of an f32 to f16 from the two f16 neighbours (Float16(Float) is to nearest).
  static func f16Directed(_ f: Float) -> (rz: UInt16, rd: UInt16, ru: UInt16) {
    let h = Float16(f)
    if f.isNaN || Float(h) == f { return (h.bitPattern, h.bitPattern, h.bitPattern) }
    let (lo, hi) = Float(h) < f ? (h, h.nextUp) : (h.nextDown, h)
    return ((f < 0 ? hi : lo).bitPattern, lo.bitPattern, hi.bitPattern)
  }

  @Test func scalarHalves() throws {
    let module = try Self.compile()
    let mem = TestMemory()
    let n = 300
    let (a, b, c) = (
      Self.patterns(n, seed: 4, bf: false), Self.patterns(n, seed: 5, bf: false), Self.patterns(n, seed: 6, bf: false)
    )
    let (pa, pb, pc) = (
      Self.patterns(n, seed: 14, bf: true), Self.patterns(n, seed: 15, bf: true), Self.patterns(n, seed: 16, bf: true)
    )
    var g = SplitMix(7)
    let f: [Float] =
      [0, -0.0, 65504, 65520, 65519.99, -65520, 1e-8, -1e-8, 6e-5, .infinity, -.infinity, .nan, 1.00048828125]
      + (13..<n).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: g.next()) & 0xc7ff_ffff) }
    // Halfway cases a rounding through f32 gets wrong: 1 + 2^-11 + 2^-40 rounds up.
    let d: [Double] =
      [1 + 0x1p-11 + 0x1p-40, 1 + 0x1p-11, -(1 + 0x1p-11 + 0x1p-40), 65520, 1e-9] + (5..<n).map { Double($0) / 7 }
    let out = mem.alloc(n * 48)
    try launch1D(
      module, mem, "halves", n,
      [
        mem.upload(a), mem.upload(b), mem.upload(c), mem.upload(pa), mem.upload(pb), mem.upload(pc), mem.upload(f),
        mem.upload(d), out, Int32(n),
      ])
    let r = mem.download(out, count: n * 24, as: UInt16.self)
    #expect(r[12] == 0x3c01 && r[24 + 12] == 0x3c00, "cvt.rn.f16.f64 rounds once")
    for i in 0..<n {
      let o = Array(r[i * 24..<i * 24 + 24])
      let (x, y, z) = (f16Value(a[i]), f16Value(b[i]), f16Value(c[i]))
      let h = { (v: Double) in Float16(v).bitPattern }
      let dir = Self.f16Directed(f[i])
      let want: [UInt16] = [
        h(x + y), h(x - y), h(x * y), h(x * y + z), h(minMaxRef(x, y, max: false)), h(minMaxRef(x, y, max: true)),
        a[i] ^ 0x8000, a[i] & 0x7fff, Float16(f[i]).bitPattern, dir.rz, dir.rd, dir.ru, h(d[i]),
      ]
      for k in 0..<want.count { #expect(sameHalf(o[k], want[k], bf: false), "f16[\(k)] \(x) \(y) \(z) \(f[i])") }
      let (p, q, s) = (bf16Value(pa[i]), bf16Value(pb[i]), bf16Value(pc[i]))
      let bwant: [UInt16] = [
        bf16Ref(p + q), bf16Ref(p - q), bf16Ref(p * q), bf16Ref(p * q + s), bf16Ref(minMaxRef(p, q, max: false)),
        bf16Ref(minMaxRef(p, q, max: true)),
      ]
      for k in 0..<bwant.count {
        #expect(sameHalf(o[13 + k], bwant[k], bf: true), "bf16[\(k)] \(p) \(q) \(s)")
      }
      // f32 → bf16 to nearest even on the f32 bits (NaN: any NaN).
      let u = f[i].bitPattern
      let nearest = f[i].isNaN ? 0x7fff : UInt16((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
      #expect(sameHalf(o[19], nearest, bf: true), "cvt.rn.bf16.f32 \(f[i])")
      let back = UInt32(o[20]) | UInt32(o[21]) << 16
      let wantBack = Float(x) + Float(p)
      #expect(back == wantBack.bitPattern || (wantBack.isNaN && Float(bitPattern: back).isNaN), "cvt.f32.f16/bf16")
      #expect(o[22] == (x < y ? 1 : 0) + (p < q ? 2 : 0), "setp.lt.f16/bf16 \(x) \(y) \(p) \(q)")
    }
  }

  @Test func packedHalves() throws {
    let module = try Self.compile()
    let mem = TestMemory()
    let n = 200
    func pairs(_ s: UInt64, bf: Bool) -> [UInt32] {
      let lo = Self.patterns(n, seed: s, bf: bf)
      let hi = Self.patterns(n, seed: s + 10, bf: bf)
      return (0..<n).map { UInt32(lo[$0]) | UInt32(hi[(n - 1 - $0)]) << 16 }
    }
    let (a, b, c) = (pairs(1, bf: false), pairs(2, bf: false), pairs(3, bf: false))
    let (pa, pb, pc) = (pairs(4, bf: true), pairs(5, bf: true), pairs(6, bf: true))
    var g = SplitMix(9)
    let f = (0..<2 * n).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: g.next()) & 0xc7ff_ffff) }
    let out = mem.alloc(n * 32)
    try launch1D(
      module, mem, "halves2", n,
      [
        mem.upload(a), mem.upload(b), mem.upload(c), mem.upload(pa), mem.upload(pb), mem.upload(pc), mem.upload(f),
        out, Int32(n),
      ])
    let r = mem.download(out, count: n * 8, as: UInt32.self)
    for i in 0..<n {
      for half in 0..<2 {
        let sh = UInt32(16 * half)
        let part = { (w: UInt32) in UInt16(truncatingIfNeeded: w >> sh) }
        let (ha, hb, hc) = (part(a[i]), part(b[i]), part(c[i]))
        let lane = { (k: Int) in UInt16(truncatingIfNeeded: r[i * 8 + k] >> sh) }
        let (x, y, z) = (f16Value(ha), f16Value(hb), f16Value(hc))
        let h = { (v: Double) in Float16(v).bitPattern }
        let wantH = [h(x + y), h(x * y), h(x * y + z), Float16(f[2 * i + half]).bitPattern]
        for k in 0..<4 { #expect(sameHalf(lane(k), wantH[k], bf: false), "f16x2[\(k)] lane \(half): \(x) \(y) \(z)") }
        let (p, q, s) = (bf16Value(part(pa[i])), bf16Value(part(pb[i])), bf16Value(part(pc[i])))
        let fb = f[2 * i + half]
        let u = fb.bitPattern
        let wantB = [
          bf16Ref(p + q), bf16Ref(p * q), bf16Ref(p * q + s),
          fb.isNaN ? 0x7fff : UInt16((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16),
        ]
        for k in 0..<4 {
          #expect(sameHalf(lane(4 + k), wantB[k], bf: true), "bf16x2[\(k)] lane \(half): \(p) \(q) \(s)")
        }
      }
    }
  }
}

@Suite(.enabled(if: Compiler.nvrtc != nil))
struct WarpAndFloatInstructionTests {
  static let warpSource = #"""
    extern "C" __global__ void warps(const unsigned* v, unsigned* out, unsigned long long* times) {
      unsigned t = threadIdx.x;
      unsigned x = v[t];
      unsigned* o = out + 12 * t;
      int pred = 7;
      o[0] = __match_any_sync(0xffffffff, x);
      o[1] = __match_all_sync(0xffffffff, x & 0x100, &pred);
      o[2] = pred;
      o[3] = __match_all_sync(0xffffffff, x, &pred);
      o[4] = pred;
      o[5] = __match_any_sync(0xffffffff, (unsigned long long)x << 33);
      o[6] = __reduce_add_sync(0xffffffff, x);
      o[7] = __reduce_min_sync(0xffffffff, (int)x);
      o[8] = __reduce_max_sync(0xffffffff, x);
      o[9] = __reduce_and_sync(0xffffffff, x);
      o[10] = __reduce_or_sync(0xffffffff, x);
      o[11] = __reduce_xor_sync(0xffffffff, x);
      long long t0 = clock64();
      __nanosleep(100);
      long long t1 = clock64();
      unsigned long long g;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
      times[2 * t] = t1 - t0;
      times[2 * t + 1] = g;
    }
    """#

  @Test func matchReduxClocks() throws {
    let ptx = try Compiler.nvrtc!.ptx(Self.warpSource, name: "warps.cu", compute: 80)
    for op in [
      "match.any.sync.b32", "match.all.sync.b32", "match.any.sync.b64", "redux.sync.add", "redux.sync.min.s32",
      "nanosleep", "%clock64", "%globaltimer",
    ] {
      #expect(ptx.contains(op), "NVRTC no longer emits \(op)")
    }
    let module = try PTXModule(source: ptx)
    let mem = TestMemory()
    let v: [UInt32] = (0..<64).map { t in t < 32 ? UInt32(t % 5) * 0x0101_0000 | 0x8000_0000 : 0x100 | UInt32(t % 3) }
    let out = mem.alloc(64 * 12 * 4)
    let times = mem.alloc(64 * 16)
    let start = UInt64(Date().timeIntervalSince1970 * 1e9)
    try launch1D(module, mem, "warps", 64, [mem.upload(v), out, times], block: 64)
    let r = mem.download(out, count: 64 * 12, as: UInt32.self)
    let tm = mem.download(times, count: 128, as: UInt64.self)
    for t in 0..<64 {
      let warp = Array(v[(t / 32) * 32..<(t / 32) * 32 + 32])
      let x = v[t]
      var same: UInt32 = 0
      for (l, y) in warp.enumerated() where y == x { same |= 1 << UInt32(l) }
      let allSame = warp.allSatisfy { $0 & 0x100 == warp[0] & 0x100 }
      let allEqual = warp.allSatisfy { $0 == warp[0] }
      let want: [UInt32] = [
        same, allSame ? 0xffff_ffff : 0, allSame ? 1 : 0, allEqual ? 0xffff_ffff : 0, allEqual ? 1 : 0, same,
        warp.reduce(0, &+), UInt32(bitPattern: warp.map { Int32(bitPattern: $0) }.min()!), warp.max()!,
        warp.reduce(~0, &), warp.reduce(0, |), warp.reduce(0, ^),
      ]
      #expect(Array(r[t * 12..<t * 12 + 12]) == want, "thread \(t)")
      #expect(tm[2 * t] > 0, "clock64 moves")
      #expect(tm[2 * t + 1] >= start && tm[2 * t + 1] < start + 60_000_000_000, "globaltimer is ns since the epoch")
    }
  }

  /// __syncthreads_count/_and/_or are bar.red.popc.u32 / bar.red.and.pred / bar.red.or.pred
  /// (PTX ISA §9.7.13.1; numba's cuda.syncthreads_count/_and/_or): each thread of the block
  /// gets the reduction over every thread's predicate. Two blocks of 96 threads (3 warps),
  /// predicates from the input, so the blocks differ.
  static let barRedSource = #"""
    extern "C" __global__ void bar_red(const int* v, int* out) {
      int t = blockIdx.x * blockDim.x + threadIdx.x;
      int p = v[t];
      out[3 * t] = __syncthreads_count(p);
      out[3 * t + 1] = __syncthreads_and(p);
      out[3 * t + 2] = __syncthreads_or(!p);
    }
    """#

  @Test func barrierReductions() throws {
    let ptx = try Compiler.nvrtc!.ptx(Self.barRedSource, name: "bar_red.cu", compute: 75)
    for op in ["bar.red.popc.u32", "bar.red.and.pred", "bar.red.or.pred"] {
      #expect(ptx.contains(op), "NVRTC no longer emits \(op)")
    }
    let module = try PTXModule(source: ptx)
    let mem = TestMemory()
    // Block 0: every third thread votes yes; block 1: all do.
    let v: [Int32] = (0..<192).map { t in t < 96 ? (t % 3 == 0 ? 1 : 0) : 5 }
    let out = mem.alloc(192 * 12)
    try launch1D(module, mem, "bar_red", 192, [mem.upload(v), out], block: 96)
    let r = mem.download(out, count: 192 * 3, as: Int32.self)
    for t in 0..<192 {
      let want: [Int32] = t < 96 ? [32, 0, 1] : [96, 1, 0]
      #expect(Array(r[3 * t..<3 * t + 3]) == want, "thread \(t)")
    }
  }

  static let floatSource = #"""
    extern "C" __global__ void floats(const float* a, const float* b, float* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i >= n) return;
      out[3 * i] = copysignf(a[i], b[i]);
      out[3 * i + 1] = fminf(a[i], b[i]);
      out[3 * i + 2] = fmaxf(a[i], b[i]);
    }
    extern "C" __global__ void fast(const float* a, float* out, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i < n) out[i] = tanhf(a[i]);
    }
    """#

  @Test func copysignMinMaxTanh() throws {
    let edges: [Float] = [
      0, -0.0, 1, -1, .infinity, -.infinity, .nan, 1e-40, -1e-40, .greatestFiniteMagnitude, 20, -20,
    ]
    var (a, b) = allPairs(edges)
    var g = SplitMix(11)
    for _ in 0..<200 {
      a.append((Float(g.next() % 20000) - 10000) / 1000)
      b.append((Float(g.next() % 20000) - 10000) / 1000)
    }
    let n = a.count
    let mem = TestMemory()
    let m1 = try PTXModule(source: try Compiler.ptx(Self.floatSource))
    let out = mem.alloc(n * 12)
    try launch1D(m1, mem, "floats", n, [mem.upload(a), mem.upload(b), out, Int32(n)])
    let r = mem.download(out, count: n * 3, as: Float.self)
    for i in 0..<n {
      let want = [
        Float(sign: b[i].sign, exponent: 0, significand: 1) * a[i].magnitude,
        Float(minMaxRef(Double(a[i]), Double(b[i]), max: false)),
        Float(minMaxRef(Double(a[i]), Double(b[i]), max: true)),
      ]
      for k in 0..<3 {
        let ok = r[3 * i + k].bitPattern == want[k].bitPattern || (r[3 * i + k].isNaN && want[k].isNaN)
        #expect(ok, "floats[\(k)] \(a[i]) \(b[i]): \(r[3 * i + k]) vs \(want[k])")
      }
    }
    let fastPTX = try Compiler.nvrtc!.ptx(Self.floatSource, name: "fast.cu", compute: 75, options: ["-use_fast_math"])
    #expect(fastPTX.contains("tanh.approx.f32"))
    let m2 = try PTXModule(source: fastPTX)
    let t = mem.alloc(n * 4)
    try launch1D(m2, mem, "fast", n, [mem.upload(a), t, Int32(n)])
    let th = mem.download(t, count: n, as: Float.self)
    for i in 0..<n {
      // tanh.approx.f32: maximum relative error 2^-11 (PTX ISA §9.7.3.22); the engine is closer.
      let want = tanh(Double(a[i]))
      #expect(
        (th[i].isNaN && want.isNaN) || abs(Double(th[i]) - want) <= abs(want) * 0x1p-11 + 1e-38, "tanh \(a[i])")
    }
  }
}

/// Instructions NVRTC does not emit from plain CUDA: hand-written PTX, one thread per input.
@Suite struct HandWrittenInstructionTests {
  static let body = """
    testp.finite.f32 %p0, %fx;
    testp.infinite.f32 %p1, %fx;
    testp.number.f32 %p2, %fx;
    testp.notanumber.f32 %p3, %fx;
    testp.normal.f32 %p4, %fx;
    testp.subnormal.f32 %p5, %fx;
    selp.u32 %o0, 1, 0, %p0;
    selp.u32 %o1, 1, 0, %p1;
    selp.u32 %o2, 1, 0, %p2;
    selp.u32 %o3, 1, 0, %p3;
    selp.u32 %o4, 1, 0, %p4;
    selp.u32 %o5, 1, 0, %p5;
    slct.u32.s32 %o6, %xl, %yl, %yh;
    slct.u32.f32 %o7, %xl, %yl, %fy;
    set.lt.u32.s32 %o8, %xl, %yl;
    set.gt.f32.f32 %o9, %fx, %fy;
    bfind.shiftamt.u32 %o10, %xl;
    prmt.b32.f4e %o11, %xl, %yl, %yh;
    prmt.b32.b4e %o12, %xl, %yl, %yh;
    prmt.b32.rc8 %o13, %xl, %yl, %yh;
    prmt.b32.ecl %o14, %xl, %yl, %yh;
    prmt.b32.ecr %o15, %xl, %yl, %yh;
    prmt.b32.rc16 %o16, %xl, %yl, %yh;
    add.cc.u32 %o17, %xl, %yl;
    addc.u32 %o18, %xh, %yh;
    sub.cc.u32 %o19, %xl, %yl;
    subc.u32 %o20, %xh, %yh;
    mul24.hi.u32 %o21, %xl, %yl;
    mul24.hi.s32 %o22, %xl, %yl;
    mad24.hi.s32 %o23, %xl, %yl, %xh;
    mul24.lo.s32 %o24, %xl, %yl;
    cvt.rz.f32.f64 %g0, %dx;
    cvt.rm.f32.f64 %g1, %dx;
    cvt.rp.f32.f64 %g2, %dx;
    mov.b32 %o25, %g0;
    mov.b32 %o26, %g1;
    mov.b32 %o27, %g2;
    cvt.rn.f16x2.f32 %o28, %fx, %fy;
    cvt.rz.f16.f32 %h0, %fx;
    cvt.u32.u16 %o29, %h0;
    setp.lt.f16x2 %p6|%p7, %xl, %yl;
    selp.u32 %o30, 1, 0, %p6;
    selp.u32 %o31, 1, 0, %p7;
    sad.s32 %o32, %xl, %yl, %xh;
    mad24.lo.u32 %o33, %xl, %yl, %xh;
    mad.lo.cc.u32 %o34, %xl, %yl, %xh;
    madc.hi.u32 %o35, %xl, %yl, %yh;
    mad.hi.cc.s32 %o36, %xl, %yl, %xh;
    madc.lo.cc.u32 %o37, %xh, %yh, %yl;
    """
  static let outputs = 38

  static var source: String {
    var s =
      header + """
        .visible .entry misc(.param .u64 pin, .param .u64 pout)
        {
        	.reg .pred %p<8>;
        	.reg .b32 %o<\(outputs)>;
        	.reg .b32 %xl, %xh, %yl, %yh, %t0;
        	.reg .b64 %x, %y, %rd<6>;
        	.reg .f32 %fx, %fy, %g<3>;
        	.reg .f64 %dx;
        	.reg .b16 %h<2>;
        	ld.param.u64 %rd1, [pin];
        	ld.param.u64 %rd2, [pout];
        	mov.u32 %t0, %tid.x;
        	mul.wide.u32 %rd3, %t0, 16;
        	add.s64 %rd3, %rd1, %rd3;
        	ld.global.u64 %x, [%rd3];
        	ld.global.u64 %y, [%rd3+8];
        	mov.b64 {%xl, %xh}, %x;
        	mov.b64 {%yl, %yh}, %y;
        	mov.b32 %fx, %xl;
        	mov.b32 %fy, %yl;
        	mov.b64 %dx, %x;
        	mul.wide.u32 %rd4, %t0, \(outputs * 4);
        	add.s64 %rd4, %rd2, %rd4;

        """
    s += body
    for k in 0..<outputs { s += "\tst.global.u32 [%rd4+\(4 * k)], %o\(k);\n" }
    return s + "\tret;\n}\n"
  }

  /// The prmt mode table of the PTX ISA: for selector 0...3, the source byte of d.b3 ... d.b0.
  static let prmtTable: [[[UInt32]]] = [
    [[3, 2, 1, 0], [4, 3, 2, 1], [5, 4, 3, 2], [6, 5, 4, 3]],  // f4e
    [[5, 6, 7, 0], [6, 7, 0, 1], [7, 0, 1, 2], [0, 1, 2, 3]],  // b4e
    [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]],  // rc8
    [[3, 2, 1, 0], [3, 2, 1, 1], [3, 2, 2, 2], [3, 3, 3, 3]],  // ecl
    [[0, 0, 0, 0], [1, 1, 1, 0], [2, 2, 1, 0], [3, 2, 1, 0]],  // ecr
    [[1, 0, 1, 0], [3, 2, 3, 2], [1, 0, 1, 0], [3, 2, 3, 2]],  // rc16
  ]

  static func directed(_ d: Double) -> (rz: Float, rm: Float, rp: Float) {
    let f = Float(d)
    if d.isNaN || Double(f) == d { return (f, f, f) }
    let (lo, hi) = Double(f) < d ? (f, f.nextUp) : (f.nextDown, f)
    return (d < 0 ? hi : lo, lo, hi)
  }

  @Test func miscellaneous() throws {
    let floats: [UInt32] = [
      0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 1, 0x807f_ffff, 0x0080_0000, 0x3f80_0000, 0xbf80_0000,
      0x4049_0fdb, 0xc2f6_e979,
    ]
    let doubles: [Double] = [1.0 / 3, -1.0 / 3, 1e300, -1e300, 1e-300, 3.4028235677973366e38, 0.1, -2.5, .nan]
    var inputs: [(UInt64, UInt64)] = []
    var g = SplitMix(21)
    for (k, f) in floats.enumerated() {
      for f2 in floats { inputs.append((g.next() << 32 | UInt64(f), UInt64(floats[k % 3]) << 32 | UInt64(f2))) }
    }
    for d in doubles { inputs.append((d.bitPattern, g.next())) }
    for _ in 0..<60 { inputs.append((g.next(), g.next())) }
    inputs.append((0xffff_ffff_ffff_ffff, 1))
    inputs.append((0, 1))
    let n = inputs.count
    let mem = TestMemory()
    let input = mem.upload(inputs.flatMap { [$0.0, $0.1] })
    let out = mem.alloc(n * Self.outputs * 4)
    try run(Self.source, "misc", block: PTXDim3(UInt32(n)), args: [input, out], memory: mem)
    let r = mem.download(out, count: n * Self.outputs, as: UInt32.self)
    for (i, (x, y)) in inputs.enumerated() {
      let (xl, xh, yl, yh) = (
        UInt32(truncatingIfNeeded: x), UInt32(x >> 32), UInt32(truncatingIfNeeded: y), UInt32(y >> 32)
      )
      let (fx, fy) = (Float(bitPattern: xl), Float(bitPattern: yl))
      func b(_ c: Bool) -> UInt32 { c ? 1 : 0 }
      var want: [UInt32] = [
        b(fx.isFinite), b(fx.isInfinite), b(!fx.isNaN), b(fx.isNaN), b(fx.isNormal), b(fx.isSubnormal),
        Int32(bitPattern: yh) >= 0 ? xl : yl, fy >= 0 ? xl : yl,
        Int32(bitPattern: xl) < Int32(bitPattern: yl) ? 0xffff_ffff : 0, fx > fy ? 0x3f80_0000 : 0,
        xl == 0 ? 0xffff_ffff : UInt32(xl.leadingZeroBitCount),
      ]
      let bytes = UInt64(yl) << 32 | UInt64(xl)
      for mode in Self.prmtTable {
        let row = mode[Int(yh & 3)]
        var v: UInt32 = 0
        for (k, src) in row.enumerated() { v |= UInt32((bytes >> UInt64(8 * src)) & 0xff) << UInt32(8 * (3 - k)) }
        want.append(v)
      }
      let sum = x &+ y
      let diff = x &- y
      want += [
        UInt32(truncatingIfNeeded: sum), UInt32(sum >> 32), UInt32(truncatingIfNeeded: diff), UInt32(diff >> 32),
      ]
      let s24 = { (v: UInt32) in Int64(Int32(bitPattern: v << 8) >> 8) }
      want.append(UInt32(truncatingIfNeeded: (UInt64(xl & 0xff_ffff) * UInt64(yl & 0xff_ffff)) >> 16))
      want.append(UInt32(truncatingIfNeeded: (s24(xl) * s24(yl)) >> 16))
      want.append(UInt32(truncatingIfNeeded: (s24(xl) * s24(yl)) >> 16) &+ xh)
      want.append(UInt32(truncatingIfNeeded: s24(xl) * s24(yl)))
      let dir = Self.directed(Double(bitPattern: x))
      want += [dir.rz.bitPattern, dir.rm.bitPattern, dir.rp.bitPattern]
      want.append(UInt32(Float16(fx).bitPattern) << 16 | UInt32(Float16(fy).bitPattern))
      want.append(UInt32(HalfInstructionTests.f16Directed(fx).rz))
      let h = { (v: UInt32, k: UInt32) in Float16(bitPattern: UInt16(truncatingIfNeeded: v >> k)) }
      want += [b(h(xl, 0) < h(yl, 0)), b(h(xl, 16) < h(yl, 16))]
      want.append(UInt32(truncatingIfNeeded: abs(Int64(Int32(bitPattern: xl)) - Int64(Int32(bitPattern: yl)))) &+ xh)
      want.append((xl & 0xff_ffff) &* (yl & 0xff_ffff) &+ xh)
      // mad.cc / madc (§9.7.2.3-4): a product half plus c plus the carry in, carry out.
      let p0 = UInt64(xl) * UInt64(yl)
      let s0 = (p0 & 0xffff_ffff) + UInt64(xh)
      want.append(UInt32(truncatingIfNeeded: s0))
      want.append(UInt32(truncatingIfNeeded: (p0 >> 32) + UInt64(yh) + (s0 >> 32)))
      let ps = UInt64(bitPattern: Int64(Int32(bitPattern: xl)) * Int64(Int32(bitPattern: yl)))
      let s2 = (ps >> 32) + UInt64(xh)
      want.append(UInt32(truncatingIfNeeded: s2))
      want.append(UInt32(truncatingIfNeeded: ((UInt64(xh) * UInt64(yh)) & 0xffff_ffff) + UInt64(yl) + (s2 >> 32)))
      let got = Array(r[i * Self.outputs..<(i + 1) * Self.outputs])
      for k in 0..<Self.outputs {
        // NaN results: any NaN (the engine's are canonical).
        let same: Bool
        switch k {
        case 25, 26, 27:
          same = got[k] == want[k] || (Float(bitPattern: got[k]).isNaN && Float(bitPattern: want[k]).isNaN)
        case 28, 29:
          let halves = k == 28 ? [0, 16] : [0]
          same = halves.allSatisfy {
            sameHalf(UInt16(truncatingIfNeeded: got[k] >> $0), UInt16(truncatingIfNeeded: want[k] >> $0), bf: false)
          }
        default: same = got[k] == want[k]
        }
        #expect(same, "misc[\(k)] x=\(String(x, radix: 16)) y=\(String(y, radix: 16)): \(String(got[k], radix: 16))")
      }
    }
  }

  /// CUDA's cuda_fp16.hpp inline assembly, as numba links it for hexp10 and friends: directives
  /// without spaces (`.reg.b16`), sibling `{ }` scopes that declare the same names again, and
  /// `set.eq.f16.f16` (1.0 or 0.0 as an f16) feeding `fma.rn.f16` to patch one input's result.
  @Test func fp16HeaderInlineAssembly() throws {
    let src =
      header + """
        .visible .entry patch(.param .u64 io)
        {
        	.reg .b16 	%rs<3>;
        	.reg .b64 	%rd<2>;
        	ld.param.u64 	%rd1, [io];
        	ld.global.u16 	%rs2, [%rd1];
        	{.reg.b16         h,r;
        	 mov.b16         h, %rs2;
        	 mov.b16         r, %rs2;
        	{.reg.b16 spc, ulp, p;
        	  mov.b16 spc,0x34DEU;
        	  mov.b16 ulp,0x9800U;
        	  set.eq.f16.f16 p,h, spc;
        	  fma.rn.f16 r,p,ulp,r;
        	}
        	{.reg.b16 spc, ulp, p;
        	  mov.b16 spc,0x3C00U;
        	  mov.b16 ulp,0x1400U;
        	  set.eq.f16.f16 p,h, spc;
        	  fma.rn.f16 r,p,ulp,r;
        	}
        	  mov.b16         %rs1, r;
        	}
        	st.global.u16 	[%rd1+2], %rs1;
        	ret;
        }
        """
    // 0x34DE (about 0.277, f16 ulp 2^-12) gets 0x9800 (-2^-9, 8 ulps) added; 1.0 gets 0x1400
    // (2^-10, its one ulp), so 0x3C01; anything else stays as it is.
    for (x, want): (UInt16, UInt16) in [(0x34DE, 0x34DE - 8), (0x3C00, 0x3C01), (0x4000, 0x4000)] {
      let mem = TestMemory()
      let io = mem.upload([x, 0])
      try run(src, "patch", block: PTXDim3(1), args: [io], memory: mem)
      #expect(mem.download(io, count: 2, as: UInt16.self)[1] == want, "x = \(String(x, radix: 16))")
    }
  }

  /// mad.lo.cc / madc.hi.cc (PTX ISA §9.7.2.3-4) chained through CC.CF, as numba's 128-bit
  /// integer arithmetic emits them: (r2:r1:r0) = x·y + (w:z), checked against UInt64 arithmetic.
  @Test func multiplyAddWithCarry() throws {
    let src =
      header + """
        .visible .entry madcc(.param .u64 in, .param .u64 out)
        {
        	.reg .b32 	%r<10>;
        	.reg .b64 	%rd<6>;
        	ld.param.u64 	%rd1, [in];
        	ld.param.u64 	%rd2, [out];
        	mov.u32 	%r9, %tid.x;
        	mul.wide.u32 	%rd3, %r9, 16;
        	add.s64 	%rd4, %rd1, %rd3;
        	ld.global.v4.u32 	{%r1, %r2, %r3, %r4}, [%rd4];
        	mad.lo.cc.u32 	%r5, %r1, %r2, %r3;
        	madc.hi.cc.u32 	%r6, %r1, %r2, %r4;
        	addc.u32 	%r7, 0, 0;
        	add.s64 	%rd5, %rd2, %rd3;
        	st.global.v4.u32 	[%rd5], {%r5, %r6, %r7, %r7};
        	ret;
        }
        """
    let w = words(64, seed: 5)
    var input: [UInt32] = []
    for t in 0..<64 { input += [w[t], w[63 - t], w[(t * 7) % 64], w[(t * 13) % 64]] }
    let mem = TestMemory()
    let out = mem.alloc(64 * 16)
    try run(src, "madcc", block: PTXDim3(64), args: [mem.upload(input), out], memory: mem)
    let r = mem.download(out, count: 64 * 4, as: UInt32.self)
    for t in 0..<64 {
      let (x, y, z, hi) = (input[4 * t], input[4 * t + 1], input[4 * t + 2], input[4 * t + 3])
      let sum = (UInt64(x) * UInt64(y)).addingReportingOverflow(UInt64(hi) << 32 | UInt64(z))
      let want = [UInt32(truncatingIfNeeded: sum.partialValue), UInt32(sum.partialValue >> 32), sum.overflow ? 1 : 0]
      #expect(Array(r[4 * t..<4 * t + 3]) == want, "x=\(x) y=\(y) z=\(z) w=\(hi)")
    }
  }

  /// WARP_SZ, the predefined warp-size constant (PTX ISA §4.4.3), as numba's cuda.warpsize emits it.
  @Test func warpSizeConstant() throws {
    let src =
      header + """
        .visible .entry ws(.param .u64 out)
        {
        	.reg .b32 	%r<3>;
        	.reg .b64 	%rd<2>;
        	ld.param.u64 	%rd1, [out];
        	mov.u32 	%r1, WARP_SZ;
        	add.s32 	%r2, %r1, WARP_SZ;
        	st.global.v2.u32 	[%rd1], {%r1, %r2};
        	ret;
        }
        """
    let mem = TestMemory()
    let out = mem.alloc(8)
    try run(src, "ws", block: PTXDim3(1), args: [out], memory: mem)
    #expect(mem.download(out, count: 2, as: UInt32.self) == [32, 64])
  }

  /// `tensormap.replace` (PTX ISA "tensormap.replace", sm_90a) in its `.global`, `.shared::cta`
  /// and generic forms, with and without an ordinal, .b32 and .b64 fields: each writes its
  /// field's bytes at the engine's layout (TensorMapLayout) and nothing else; an sm_90a target
  /// loads. cp.async.bulk.tensor, which would read a tensor map, stays refused at load.
  @Test func tensorMapReplaceWritesItsField() throws {
    let src = """
      .version 8.3
      .target sm_90a
      .address_size 64
      .visible .entry tm(.param .u64 out, .param .u64 gaddr)
      {
      	.reg .pred 	%p<2>;
      	.reg .b32 	%r<8>;
      	.reg .b64 	%rd<10>;
      	.shared .align 128 .b8 smap[128];
      	ld.param.u64 	%rd1, [out];
      	ld.param.u64 	%rd2, [gaddr];
      	cvta.to.global.u64 	%rd3, %rd1;
      	tensormap.replace.tile.rank.global.b1024.b32 	[%rd3], 2;
      	tensormap.replace.tile.global_address.global.b1024.b64 	[%rd3], %rd2;
      	tensormap.replace.tile.global_stride.global.b1024.b64 	[%rd3], 3, %rd2;
      	tensormap.replace.tile.fill_mode.global.b1024.b32 	[%rd3], 1;
      	mov.u32 	%r1, smap;
      	mov.u32 	%r2, -1;
      	mov.u32 	%r3, 0;
      $ZERO:
      	add.s32 	%r4, %r1, %r3;
      	st.shared.u32 	[%r4], %r2;
      	add.s32 	%r3, %r3, 4;
      	setp.lt.u32 	%p1, %r3, 128;
      	@%p1 bra 	$ZERO;
      	mov.u32 	%r5, 7;
      	tensormap.replace.tile.box_dim.shared::cta.b1024.b32 	[%r1], 4, %r5;
      	tensormap.replace.tile.elemtype.shared::cta.b1024.b32 	[%r1], 9;
      	mov.u64 	%rd4, smap;
      	cvta.shared.u64 	%rd5, %rd4;
      	tensormap.replace.tile.swizzle_mode.b1024.b32 	[%rd5], 3;
      	tensormap.replace.tile.global_dim.b1024.b32 	[%rd5], 0, 640;
      	mov.u32 	%r3, 0;
      $COPY:
      	add.s32 	%r4, %r1, %r3;
      	ld.shared.u32 	%r6, [%r4];
      	cvt.u64.u32 	%rd6, %r3;
      	add.s64 	%rd7, %rd3, %rd6;
      	st.global.u32 	[%rd7+128], %r6;
      	add.s32 	%r3, %r3, 4;
      	setp.lt.u32 	%p1, %r3, 128;
      	@%p1 bra 	$COPY;
      	ret;
      }
      .visible .entry bulk(.param .u64 map)
      {
      	.reg .b64 	%rd<2>;
      	.shared .align 128 .b8 tile[256];
      	.shared .align 8 .b8 bar[8];
      	ld.param.u64 	%rd1, [map];
      	cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes 	[tile], [%rd1, {0}], [bar];
      	ret;
      }
      """
    let mem = TestMemory()
    let out = mem.upload([UInt8](repeating: 0xab, count: 256))
    let gaddr: UInt64 = 0x1234_5678_9abc_def0
    try run(src, "tm", block: PTXDim3(1), args: [out, gaddr], memory: mem)
    let bytes = mem.download(out, count: 256, as: UInt8.self)
    func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    // The global map: rank @0, global_address @8, global_stride[3] @80+24, fill_mode @120.
    var global = [UInt8](repeating: 0xab, count: 128)
    global.replaceSubrange(0..<4, with: le(2, 4))
    global.replaceSubrange(8..<16, with: le(gaddr, 8))
    global.replaceSubrange(104..<112, with: le(gaddr, 8))
    global.replaceSubrange(120..<124, with: le(1, 4))
    #expect(Array(bytes[0..<128]) == global)
    // The shared map (all ones first): elemtype @4, global_dim[0] @16, box_dim[4] @36+16, swizzle_mode @112.
    var shared = [UInt8](repeating: 0xff, count: 128)
    shared.replaceSubrange(4..<8, with: le(9, 4))
    shared.replaceSubrange(16..<20, with: le(640, 4))
    shared.replaceSubrange(52..<56, with: le(7, 4))
    shared.replaceSubrange(112..<116, with: le(3, 4))
    #expect(Array(bytes[128..<256]) == shared)

    let m = try PTXModule(source: src)
    #expect(throws: PTXError.self) { try m.kernel(named: "bulk") }
    do {
      _ = try m.kernel(named: "bulk")
    } catch {
      #expect(error.description.contains("unsupported PTX instruction 'cp.async.bulk.tensor"), "\(error)")
    }
    // An ordinal past the field's elements, or the wrong width, fails the load.
    for bad in [
      "tensormap.replace.tile.global_stride.global.b1024.b64 [%rd1], 4, %rd1;",
      "tensormap.replace.tile.rank.global.b1024.b64 [%rd1], %rd1;",
    ] {
      let k =
        ".version 8.3\n.target sm_90a\n.address_size 64\n"
        + ".visible .entry k(.param .u64 p)\n{\n.reg .b64 %rd<2>;\nld.param.u64 %rd1, [p];\n\(bad)\nret;\n}\n"
      #expect(throws: PTXError.self) { try PTXModule(source: k).kernel(named: "k") }
    }
  }

  /// An instruction the engine does not run fails the kernel's load (CUDA_ERROR_INVALID_PTX,
  /// naming it and its line) instead of a launch; the module's other kernels still load.
  @Test func unsupportedInstructionFailsTheLoad() throws {
    let src =
      vectorAddPTX + """

        .visible .entry video(.param .u64 p)
        {
        	.reg .b32 %r<4>;
        	mov.u32 %r1, 1;
        	vabsdiff.u32.u32.u32 %r2, %r1, %r1;
        	ret;
        }
        .visible .entry packed(.param .u64 p)
        {
        	.reg .b32 %r<4>;
        	add.s16x2 %r2, %r1, %r1;
        	ret;
        }
        """
    let m = try PTXModule(source: src)
    let line = src.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains("vabsdiff") }! + 1
    for (kernel, opcode) in [("video", "vabsdiff.u32.u32.u32"), ("packed", "add.s16x2")] {
      do {
        _ = try m.kernel(named: kernel)
        Issue.record("expected \(kernel) to fail its load")
      } catch {
        #expect(error.cudaError == 218)
        #expect(error.description.contains("unsupported PTX instruction '\(opcode)'"), "\(error)")
        if kernel == "video" { #expect(error.description.contains("line \(line)"), "\(error)") }
      }
    }
    #expect(throws: Never.self) { try m.kernel(named: "_Z6vecAddPKfS0_Pfi") }
  }
}
