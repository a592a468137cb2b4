"""numba-cuda (@cuda.jit) against this project's libcuda.so.1.

numba compiles Python to NVVM IR, NVVM (nvidia-cuda-nvcc-cu12) makes PTX, and
with no nvJitLink installed numba links through the driver's cuLink* (the
shim hands the PTX back as the "cubin"), loads it with cuLibraryLoadData and
launches with cuLaunchKernelEx; the device runs the PTX on its interpreter.
Kernels: a vector add; a block reduction with a shared array,
cuda.syncthreads and cuda.atomic.add; a 2-D kernel over a matrix. Data moves
with cuda.to_device / copy_to_host / device_array; results checked with numpy.
One "key value" line per fact; any failure raises (exit status 1).
"""
import os

# Small grids are the point here; numba would warn about occupancy on each launch.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

import numpy as np  # noqa: E402
from numba import cuda, float32, int64  # noqa: E402

name = cuda.get_current_device().name
print("gpu", name.decode() if isinstance(name, bytes) else name)


@cuda.jit
def vector_add(a, b, c):
    i = cuda.grid(1)
    if i < c.size:
        c[i] = a[i] + b[i]


rng = np.random.default_rng(7)
n = 3000
a = rng.random(n).astype(np.float32)
b = rng.random(n).astype(np.float32)
da, db = cuda.to_device(a), cuda.to_device(b)
dc = cuda.device_array_like(a)
vector_add[(n + 127) // 128, 128](da, db, dc)
c = dc.copy_to_host()
assert np.array_equal(c, a + b), f"vector_add differs at {np.flatnonzero(c != a + b)[:5]}"
print("vector_add", n)

THREADS = 128


@cuda.jit
def block_sum(values, total):
    partial = cuda.shared.array(THREADS, dtype=int64)
    tid = cuda.threadIdx.x
    i = cuda.grid(1)
    partial[tid] = values[i] if i < values.size else 0
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            partial[tid] += partial[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        cuda.atomic.add(total, 0, partial[0])


values = rng.integers(-1000, 1000, size=10_000, dtype=np.int64)
total = cuda.to_device(np.zeros(1, dtype=np.int64))
block_sum[(values.size + THREADS - 1) // THREADS, THREADS](cuda.to_device(values), total)
got = int(total.copy_to_host()[0])
assert got == int(values.sum()), f"block_sum {got} != {int(values.sum())}"
print("block_sum", got == int(values.sum()))


@cuda.jit
def scale_rows(m, factors, out):
    row, col = cuda.grid(2)
    if row < m.shape[0] and col < m.shape[1]:
        out[row, col] = m[row, col] * factors[row] + float32(1)


m = rng.random((37, 53)).astype(np.float32)
factors = rng.random(37).astype(np.float32)
dout = cuda.device_array_like(m)
scale_rows[(5, 7), (8, 8)](cuda.to_device(m), cuda.to_device(factors), dout)
expect = m * factors[:, None] + np.float32(1)
assert np.allclose(dout.copy_to_host(), expect, rtol=1e-6), "scale_rows differs"
print("scale_rows", m.shape[0], m.shape[1])
cuda.synchronize()
print("done")
