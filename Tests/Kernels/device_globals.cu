// Module globals: `scale` is read (set it with cuModuleGetGlobal / cudaMemcpyToSymbol),
// `counter` is written (read it back the same way).
__device__ float scale = 2.0f;
__device__ int counter;

extern "C" __global__ void scale_by_global(float* data, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= scale;
}

extern "C" __global__ void count_threads(int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(&counter, 1);
}
