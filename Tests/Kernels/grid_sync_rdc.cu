// Grid-wide sync through CUDA's device runtime (compile with -rdc=true: the
// calls stay .extern .func calls, as numba-cuda's cg.this_grid().sync()).
// Each round every thread publishes a value, the grid syncs, and each thread
// reads the value of a thread in another block: wrong without a grid-wide
// barrier. CPU reference: v[i] = v[i] * 3 + published[(i + blockDim.x + 1) % n].
extern "C" __global__ void rounds(unsigned* buf, unsigned* out, int rounds) {
  unsigned long long g = cudaCGGetIntrinsicHandle(cudaCGScopeGrid);
  int n = gridDim.x * blockDim.x;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned v = i;
  for (int r = 0; r < rounds; r++) {
    buf[(r & 1) * n + i] = v;
    cudaCGSynchronize(g, 0);
    v = v * 3u + buf[(r & 1) * n + (i + blockDim.x + 1) % n];
  }
  out[i] = v;
}
