// Writes far past its buffer: the launch must fail with an illegal address
// (CUDA 700), never corrupt another allocation.
extern "C" __global__ void out_of_bounds(float* buffer, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i == 0) buffer[(long long)n + (1ll << 32)] = 1.0f;
}
