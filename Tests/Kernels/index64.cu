// 64-bit index math: a grid-stride loop with size_t indices over n elements,
// and an unsigned long long element offset, so n may exceed 2^31.
extern "C" __global__ void index64_fill(unsigned char* data, size_t n, unsigned long long offset) {
  size_t stride = (size_t)blockDim.x * gridDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    unsigned long long at = offset + i;
    data[at] = (unsigned char)(at * 2654435761ull >> 24);
  }
}
