// The kernels `pcitool selftest` and vgpu-bench run, compiled to PTX by
// tools/gen-selftest-ptx into Sources/SelftestKernels/SelftestKernels.swift.
// All data is float (f32), matrices row-major. The selftest compares every
// result with a CPU reference bit for bit, so the arithmetic is spelled out
// with __fmul_rn/__fadd_rn: nvcc may not contract them into an FMA, and each
// product and sum is rounded once, as the reference rounds them.
//
// Element-wise kernels use one thread per element (any grid, `i < n` checked).

// dst[i] = value
extern "C" __global__ void fill(float* dst, float value, unsigned n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = value;
}

// c[i] = a[i] + b[i]
extern "C" __global__ void vector_add(const float* a, const float* b, float* c, unsigned n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = __fadd_rn(a[i], b[i]);
}

// y[i] = a * x[i] + y[i], the product rounded before the sum
extern "C" __global__ void saxpy(float a, const float* x, float* y, unsigned n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __fadd_rn(__fmul_rn(a, x[i]), y[i]);
}

// x[i] = x[i] * a
extern "C" __global__ void scale(float* x, float a, unsigned n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = __fmul_rn(x[i], a);
}

// out[0] = (float)(x[0] + … + x[n-1]), summed in double in a fixed order, so
// that the result does not depend on timing: launch one block whose
// blockDim.x is a power of two (at most 1024); thread t sums x[t],
// x[t + blockDim.x], … in index order, then the block adds the partial sums
// pairwise (partial[t] += partial[t + s] for s = blockDim.x/2, …, 1) and
// thread 0 stores the float. Blocks other than the first do nothing.
extern "C" __global__ void reduce_sum(const float* x, float* out, unsigned n) {
  __shared__ double partial[1024];
  if (blockIdx.x != 0 || blockIdx.y != 0 || blockIdx.z != 0) return;
  unsigned t = threadIdx.x;
  double sum = 0.0;
  for (unsigned long long i = t; i < n; i += blockDim.x) sum = __dadd_rn(sum, (double)x[i]);
  partial[t] = sum;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) partial[t] = __dadd_rn(partial[t], partial[t + s]);
    __syncthreads();
  }
  if (t == 0) out[0] = (float)partial[0];
}

// C (m×n) = A (m×k) · B (k×n): one thread per output, x the column and y the
// row of C (a 2-D grid), each output accumulated in float in k order.
extern "C" __global__ void matmul(const float* a, const float* b, float* c, unsigned m, unsigned n, unsigned k) {
  unsigned long long column = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long row = (unsigned long long)blockIdx.y * blockDim.y + threadIdx.y;
  if (row >= m || column >= n) return;
  float acc = 0.0f;
  for (unsigned long long l = 0; l < k; ++l) acc = __fadd_rn(acc, __fmul_rn(a[row * k + l], b[l * n + column]));
  c[row * n + column] = acc;
}
