// *out += sum(in[0..n)): each warp reduces with __shfl_down_sync, the warps'
// sums meet in shared memory after __syncthreads, the first warp reduces those,
// and thread 0 adds the block's partial to *out with atomicAdd.
// Launch with blockDim.x a multiple of 32, at most 1024; *out starts at 0.
extern "C" __global__ void reduce_sum(const float* in, float* out, int n) {
  __shared__ float warpSums[32];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = i < n ? in[i] : 0.0f;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warpSums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? warpSums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) atomicAdd(out, v);
  }
}
