// Warp votes over pred = (in[i] > 0): per warp, the ballot mask, whether any
// lane and whether all lanes voted. out has 3 ints per warp, written by lane 0.
extern "C" __global__ void vote(const int* in, unsigned* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int pred = i < n && in[i] > 0;
  unsigned ballot = __ballot_sync(0xffffffffu, pred);
  int any = __any_sync(0xffffffffu, pred);
  int all = __all_sync(0xffffffffu, pred);
  if ((threadIdx.x & 31) == 0) {
    int w = i >> 5;
    out[3 * w] = ballot;
    out[3 * w + 1] = any;
    out[3 * w + 2] = all;
  }
}
