// Every thread adds to an int and a float counter, raises a max, and bumps a
// counter through an atomicCAS retry loop. counters = {sum, max, casCount}.
extern "C" __global__ void atomics(int* counters, float* fsum, const int* values, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(&counters[0], values[i]);
  atomicAdd(fsum, 0.5f);
  atomicMax(&counters[1], values[i]);
  int old = counters[2], assumed;
  do {
    assumed = old;
    old = atomicCAS(&counters[2], assumed, assumed + 1);
  } while (old != assumed);
}
