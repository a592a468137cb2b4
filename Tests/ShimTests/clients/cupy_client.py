"""CuPy against this project's libcuda.so.1, its kernels compiled to PTX.

Usage: cupy_client.py [sort]. Without an argument: creation, elementwise arithmetic and ufuncs,
reductions, RawKernel, ElementwiseKernel, ReductionKernel and fancy indexing. With `sort`:
cupy.sort and argsort, which run Thrust's CUB radix sort from the fat binary CuPy ships (one
72 MB module whose only PTX is for compute_100: the device interprets it, and CUB picks its
kernels by the PTX_VERSION the device reports for them).

CuPy compiles every kernel with NVRTC; CUPY_COMPILE_WITH_PTX=1 (set by the test) makes it PTX
instead of SASS cubins, which the device's interpreter runs. It loads with cuModuleLoadData,
launches with cuLaunchKernel, and its runtime (libcudart.so.12) asks cudaStreamIsCapturing
before every copy to the host. The test also sets CUPY_ACCELERATORS to nothing: CuPy's CUB
reductions are a different kernel (see the test). Every check compares with NumPy on the same
input. One "key value" line per check; any failure raises (exit status 1).
"""
import sys

import cupy as cp
import numpy as np

rng = np.random.default_rng(3)


def same(name, got, want, exact=True):
    got = cp.asnumpy(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, NumPy {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, NumPy {want.dtype}"
    if exact:
        assert np.array_equal(got, want), f"{name}: differs from NumPy:\n{got}\n{want}"
    else:
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6), f"{name}: differs from NumPy:\n{got}\n{want}"
    print(name, got.size, flush=True)


def checks():
    # Creation: CuPy's own fill/arange/linspace/eye kernels, and copies both ways.
    same("arange", cp.arange(10, dtype=cp.float32), np.arange(10, dtype=np.float32))
    same("zeros", cp.zeros((3, 4), dtype=cp.int32), np.zeros((3, 4), dtype=np.int32))
    same("full", cp.full((5,), 7.5), np.full((5,), 7.5))
    same("linspace", cp.linspace(0, 1, 11), np.linspace(0, 1, 11), exact=False)
    same("eye", cp.eye(4, dtype=cp.float32), np.eye(4, dtype=np.float32))
    h = rng.standard_normal((64, 33)).astype(np.float32)
    d = cp.asarray(h)
    same("asarray", d, h)

    # Elementwise arithmetic, broadcasting and ufuncs.
    g = rng.standard_normal(33).astype(np.float32)
    same("arithmetic", d * 2 + cp.asarray(g) - 1, h * 2 + g - 1, exact=False)
    same("ufuncs", cp.sqrt(cp.abs(d)) + cp.exp(-d * d) + cp.sin(d), np.sqrt(np.abs(h)) + np.exp(-h * h) + np.sin(h), exact=False)
    same("maximum", cp.maximum(d, 0), np.maximum(h, 0))
    same("where", cp.where(d > 0, d, -d), np.where(h > 0, h, -h))
    ints = rng.integers(-1000, 1000, 500)
    di = cp.asarray(ints)
    same("integer", (di * 3) // 7 % 5, (ints * 3) // 7 % 5)

    # Reductions: whole arrays and along axes.
    same("sum", cp.arange(1000, dtype=cp.float64).sum(), np.arange(1000, dtype=np.float64).sum())
    same("sum-axis", d.sum(axis=0), h.sum(axis=0), exact=False)
    same("max", d.max(), h.max())
    same("max-axis", d.max(axis=1), h.max(axis=1))
    same("argmax", d.argmax(), h.argmax())
    same("argmax-axis", d.argmax(axis=0), h.argmax(axis=0))
    same("mean", di.mean(), ints.mean(), exact=False)

    # User kernels.
    twice = cp.RawKernel(r'''
    extern "C" __global__ void twice(const float *x, float *y, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i < n) y[i] = 2 * x[i];
    }''', "twice")
    n = 1000
    xh = rng.random(n, dtype=np.float32)
    x = cp.asarray(xh)
    y = cp.empty_like(x)
    twice(((n + 127) // 128,), (128,), (x, y, cp.int32(n)))
    same("raw", y, 2 * xh)

    fma1 = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y + 1", "fma1")
    same("elementwise", fma1(x, y), xh * (2 * xh) + 1, exact=False)

    l2 = cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "l2norm")
    same("reduction", l2(d, axis=1), np.sqrt((h.astype(np.float32) ** 2).sum(axis=1)), exact=False)

    # Fancy indexing: gather, boolean mask, scatter.
    idx = rng.integers(0, 64, 20)
    same("take", d[cp.asarray(idx)], h[idx])
    same("mask", d[d > 0.5], h[h > 0.5])
    s = cp.zeros(10, dtype=cp.int64)
    s[cp.asarray([1, 3, 5])] = cp.asarray([10, 30, 50])
    same("scatter", s, np.array([0, 10, 0, 30, 0, 50, 0, 0, 0, 0]))


def sorts():
    u = rng.standard_normal(2000).astype(np.float32)
    ints = rng.integers(-1000, 1000, 500)
    same("sort", cp.sort(cp.asarray(u)), np.sort(u))
    same("argsort", cp.argsort(cp.asarray(ints), kind="stable"), np.argsort(ints, kind="stable"))


if sys.argv[1:] == ["sort"]:
    sorts()
else:
    checks()
print("done", flush=True)
