// A struct passed by value: 4 + 4 + 8 + 8 = 24 bytes with natural alignment
// (a at 0, n at 4, b at 8, out at 16). out[i] = a * i + b for i < n.
struct Params {
  float a;
  int n;
  double b;
  float* out;
};

extern "C" __global__ void struct_param(Params p) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) p.out[i] = (float)(p.a * i + p.b);
}
