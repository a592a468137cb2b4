import NVRTC
import PTX
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// NVRTC 12.9 from `.venv` (pip `nvidia-cuda-nvrtc-cu12==12.9.86`): CUDA C++
/// compiled at test time, its PTX run here. Skipped, with the reason
/// printed, when the library is absent.
enum Compiler {
  static let nvrtc: NVRTC? = try? NVRTC.load()
  static func ptx(_ source: String) throws -> String { try nvrtc!.ptx(source, name: "test.cu") }
}

@Suite(
  .enabled(
    if: Compiler.nvrtc != nil
      || {
        print("NVRTC tests skipped: libnvrtc.so.12 not found under .venv")
        return false
      }()))
struct NVRTCTests {
  static let source = #"""
    extern "C" __global__ void vadd(const float* a, const float* b, float* c, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i < n) c[i] = a[i] + b[i];
    }
    extern "C" __global__ void reduce(const float* x, float* out, int n) {
      __shared__ float warp[32];
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      float v = i < n ? x[i] : 0.0f;
      for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
      if ((threadIdx.x & 31) == 0) warp[threadIdx.x >> 5] = v;
      __syncthreads();
      if (threadIdx.x == 0) {
        float s = 0;
        for (int k = 0; k < blockDim.x / 32; k++) s += warp[k];
        atomicAdd(out, s);
      }
    }
    extern "C" __global__ void softmaxish(const float* x, float* y, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i < n) y[i] = expf(x[i]) / (1.0f + expf(x[i]));
    }
    extern "C" __global__ void dmath(const double* x, double* y, long long n) {
      long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
      if (i < n) y[i] = pow(x[i], 1.5) + exp(x[i]) - log(x[i] + 1.0);
    }
    extern "C" __global__ void hello(int k) {
      printf("hello %d from %d %.3f %s\n", k, threadIdx.x, 1.5f * threadIdx.x, "gpu");
    }
    extern "C" __global__ void matmul(const float* A, const float* B, float* C, int n) {
      __shared__ float As[16][16];
      __shared__ float Bs[16][16];
      int tx = threadIdx.x, ty = threadIdx.y;
      int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
      float acc = 0;
      for (int t = 0; t < n; t += 16) {
        As[ty][tx] = (row < n && t + tx < n) ? A[row * n + t + tx] : 0.0f;
        Bs[ty][tx] = (t + ty < n && col < n) ? B[(t + ty) * n + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < 16; k++) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
      }
      if (row < n && col < n) C[row * n + col] = acc;
    }
    extern "C" __global__ void votes(unsigned* out) {
      unsigned lane = threadIdx.x & 31;
      unsigned b = __ballot_sync(0xffffffff, lane & 1);
      int any = __any_sync(0xffffffff, lane == 7);
      int all = __all_sync(0xffffffff, lane < 32);
      unsigned x = __shfl_xor_sync(0xffffffff, lane, 3);
      unsigned old = atomicCAS(out + 32, 0u, lane + 1);
      out[lane] = b + any + all + x * 0 + (old == 0 ? 0 : 0) + x;
    }
    """#

  @Test func compiledKernelsRun() throws {
    let ptx: String
    do { ptx = try Compiler.ptx(Self.source) } catch let e as NVRTC.Failure {
      Issue.record("NVRTC failed: \(e)")
      return
    }
    let module = try PTXModule(source: ptx)
    let mem = TestMemory()
    try mem.load(module)
    func launch(_ name: String, _ grid: PTXDim3, _ block: PTXDim3, _ args: [Any], printf: ((String) -> Void)? = nil)
      throws
    {
      let info = try module.kernel(named: name)
      _ = try module.launch(
        kernel: name, grid: grid, block: block, parameters: pack(info, args), memory: mem,
        options: PTXLaunchOptions(printf: printf))
    }
    let n = 1000
    let x = (0..<n).map { Float($0 % 13) * 0.25 }
    let y = (0..<n).map { Float($0) }
    let dx = mem.upload(x)
    let dy = mem.upload(y)
    let dz = mem.alloc(n * 4)
    try launch("vadd", PTXDim3(4), PTXDim3(256), [dx, dy, dz, Int32(n)])
    #expect(mem.download(dz, count: n, as: Float.self) == zip(x, y).map { $0 + $1 })

    let out = mem.upload([Float(0)])
    try launch("reduce", PTXDim3(4), PTXDim3(256), [dx, out, Int32(n)])
    #expect(mem.download(out, count: 1, as: Float.self)[0] == x.reduce(0, +))

    try launch("softmaxish", PTXDim3(4), PTXDim3(256), [dx, dz, Int32(n)])
    let s = mem.download(dz, count: n, as: Float.self)
    for i in 0..<n {
      let want = Float(exp(Double(x[i])) / (1 + exp(Double(x[i]))))
      #expect(abs(s[i] - want) < 1e-5, "softmaxish \(i)")
    }

    let xd = (0..<64).map { Double($0) * 0.1 + 0.05 }
    let dxd = mem.upload(xd)
    let dyd = mem.alloc(64 * 8)
    try launch("dmath", PTXDim3(1), PTXDim3(64), [dxd, dyd, Int64(64)])
    let yd = mem.download(dyd, count: 64, as: Double.self)
    for i in 0..<64 {
      let want = pow(xd[i], 1.5) + exp(xd[i]) - log(xd[i] + 1)
      #expect(abs(yd[i] - want) <= 1e-12 * abs(want), "dmath \(i): \(yd[i]) vs \(want)")
    }

    var lines: [String] = []
    try launch("hello", PTXDim3(1), PTXDim3(2), [Int32(7)]) { lines.append($0) }
    #expect(lines == ["hello 7 from 0 0.000 gpu\n", "hello 7 from 1 1.500 gpu\n"])

    let m = 20
    let a = (0..<m * m).map { Float($0 % 7) - 3 }
    let b = (0..<m * m).map { Float($0 % 5) * 0.5 }
    let da = mem.upload(a)
    let db = mem.upload(b)
    let dc = mem.alloc(m * m * 4)
    try launch("matmul", PTXDim3(2, 2), PTXDim3(16, 16), [da, db, dc, Int32(m)])
    let c = mem.download(dc, count: m * m, as: Float.self)
    for i in 0..<m {
      for j in 0..<m {
        var acc: Float = 0
        for k in 0..<m { acc = acc.addingProduct(a[i * m + k], b[k * m + j]) }
        #expect(c[i * m + j] == acc)
      }
    }

    let dv = mem.alloc(33 * 4)
    try launch("votes", PTXDim3(1), PTXDim3(32), [dv])
    let v = mem.download(dv, count: 33, as: UInt32.self)
    for lane in 0..<32 { #expect(v[lane] == 0xaaaa_aaaa &+ 2 &+ UInt32(lane ^ 3), "lane \(lane)") }
    #expect(v[32] == 1)
  }
}
