// Inclusive prefix sum within one block (Hillis–Steele, double-buffered in
// shared memory). Launch one block of blockDim.x ≤ 1024 threads; n ≤ blockDim.x.
extern "C" __global__ void scan_block(const int* in, int* out, int n) {
  __shared__ int buf[2][1024];
  int t = threadIdx.x, src = 0;
  buf[0][t] = t < n ? in[t] : 0;
  __syncthreads();
  for (int offset = 1; offset < blockDim.x; offset <<= 1) {
    int dst = 1 - src;
    buf[dst][t] = buf[src][t] + (t >= offset ? buf[src][t - offset] : 0);
    __syncthreads();
    src = dst;
  }
  if (t < n) out[t] = buf[src][t];
}
