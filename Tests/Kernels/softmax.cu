// out[r][c] = exp(in[r][c] - max_r) / sum_r: one thread per row of `cols` floats.
// expf inlines to ex2.approx with range reduction (REAL-KERNELS.md §2).
extern "C" __global__ void softmax(const float* in, float* out, int rows, int cols) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* x = in + (long long)r * cols;
  float* y = out + (long long)r * cols;
  float m = x[0];
  for (int c = 1; c < cols; ++c) m = fmaxf(m, x[c]);
  float sum = 0.0f;
  for (int c = 0; c < cols; ++c) {
    float e = expf(x[c] - m);
    y[c] = e;
    sum += e;
  }
  for (int c = 0; c < cols; ++c) y[c] /= sum;
}
