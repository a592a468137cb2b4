// Reverses each block's slice of `data` through dynamic shared memory: launch
// with blockDim.x * sizeof(float) bytes of dynamic shared memory.
extern "C" __global__ void dynamic_shared_reverse(float* data, int n) {
  extern __shared__ float tile[];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  if (i < n) tile[t] = data[i];
  __syncthreads();
  int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - t);
  if (i < n && j < n) data[i] = tile[blockDim.x - 1 - t];
}
