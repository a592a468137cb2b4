"""CuPy against this project's libcuda.so.1, its kernels compiled to PTX.

CuPy compiles every kernel with NVRTC; CUPY_COMPILE_WITH_PTX=1 (set by the test) makes it PTX
instead of SASS cubins, which the device's interpreter runs. It loads with cuModuleLoadData,
launches with cuLaunchKernel, and its runtime (libcudart.so.12) asks cudaStreamIsCapturing
before every copy to the host. The test also sets CUPY_ACCELERATORS to nothing: CuPy's CUB
reductions are a different kernel (see the test). Checks: arange (CuPy's own elementwise
kernel), a RawKernel, an ElementwiseKernel and a reduction (sum). One "key value" line per
fact; any failure raises (exit status 1).
"""
import cupy as cp
import numpy as np

a = cp.arange(10, dtype=cp.float32)
assert a.get().tolist() == list(range(10)), a.get()
print("arange", a.size, flush=True)

twice = cp.RawKernel(r'''
extern "C" __global__ void twice(const float *x, float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2 * x[i];
}''', "twice")
n = 1000
x = cp.asarray(np.random.default_rng(3).random(n, dtype=np.float32))
y = cp.empty_like(x)
twice(((n + 127) // 128,), (128,), (x, y, cp.int32(n)))
assert np.array_equal(y.get(), 2 * x.get()), "RawKernel twice differs"
print("raw", n, flush=True)

fma1 = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y + 1", "fma1")
z = fma1(x, y)
assert np.allclose(z.get(), x.get() * y.get() + 1, rtol=1e-6), "ElementwiseKernel differs"
print("elementwise", n, flush=True)

total = float(cp.arange(1000, dtype=cp.float64).sum())
assert total == 499500.0, total
print("sum", int(total), flush=True)
print("done", flush=True)
