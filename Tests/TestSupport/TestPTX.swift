/// Small hand-written PTX kernels for tests that need a real module on the
/// device, each with the C it stands for; their CPU references are in the tests.
public enum TestPTX {
  /// `fill(float* dst, float value, unsigned n)`: `dst[i] = value` and
  /// `vector_add(const float* a, const float* b, float* c, unsigned n)`:
  /// `c[i] = a[i] + b[i]`, for `i = blockIdx.x * blockDim.x + threadIdx.x < n`.
  /// Parameter layouts: fill (0, 8) (8, 4) (12, 4), 16 bytes; vector_add
  /// (0, 8) (8, 8) (16, 8) (24, 4), 28 bytes.
  public static let fillAndVectorAdd = """
    .version 7.0
    .target sm_52
    .address_size 64

    .visible .entry fill(.param .u64 dst, .param .f32 value, .param .u32 n)
    {
      .reg .pred %p<2>;
      .reg .f32 %f<2>;
      .reg .b32 %r<6>;
      .reg .b64 %rd<5>;
      ld.param.u64 %rd1, [dst];
      ld.param.f32 %f1, [value];
      ld.param.u32 %r1, [n];
      mov.u32 %r2, %ctaid.x;
      mov.u32 %r3, %ntid.x;
      mov.u32 %r4, %tid.x;
      mad.lo.s32 %r5, %r2, %r3, %r4;
      setp.ge.u32 %p1, %r5, %r1;
      @%p1 bra DONE;
      cvta.to.global.u64 %rd2, %rd1;
      mul.wide.u32 %rd3, %r5, 4;
      add.s64 %rd4, %rd2, %rd3;
      st.global.f32 [%rd4], %f1;
    DONE:
      ret;
    }

    .visible .entry vector_add(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)
    {
      .reg .pred %p<2>;
      .reg .f32 %f<4>;
      .reg .b32 %r<6>;
      .reg .b64 %rd<8>;
      ld.param.u64 %rd1, [a];
      ld.param.u64 %rd2, [b];
      ld.param.u64 %rd3, [c];
      ld.param.u32 %r1, [n];
      mov.u32 %r2, %ctaid.x;
      mov.u32 %r3, %ntid.x;
      mov.u32 %r4, %tid.x;
      mad.lo.s32 %r5, %r2, %r3, %r4;
      setp.ge.u32 %p1, %r5, %r1;
      @%p1 bra DONE;
      mul.wide.u32 %rd4, %r5, 4;
      add.s64 %rd5, %rd1, %rd4;
      add.s64 %rd6, %rd2, %rd4;
      add.s64 %rd7, %rd3, %rd4;
      ld.global.f32 %f1, [%rd5];
      ld.global.f32 %f2, [%rd6];
      add.rn.f32 %f3, %f1, %f2;
      st.global.f32 [%rd7], %f3;
    DONE:
      ret;
    }

    """

  /// `spin()`: loops for ever (a launch ends at the device's instruction budget).
  public static let spin = """
    .version 7.0
    .target sm_52
    .address_size 64

    .visible .entry spin()
    {
    LOOP:
      bra LOOP;
    }

    """

  /// The image of `fillAndVectorAdd`, as a guest sends it.
  public static var fillAndVectorAddImage: [UInt8] { Array(fillAndVectorAdd.utf8) }
}
