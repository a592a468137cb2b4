// Double-precision libm: exp, log, sqrt, pow and sin pull in .func helpers
// and f64 instructions (REAL-KERNELS.md §2). out has 5 doubles per input.
extern "C" __global__ void double_math(const double* in, double* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double x = in[i];
  out[5 * i] = exp(x);
  out[5 * i + 1] = log(x);
  out[5 * i + 2] = sqrt(x);
  out[5 * i + 3] = pow(x, 1.5);
  out[5 * i + 4] = sin(x);
}
