"""CuPy on the vGPU, each result checked against NumPy (tools/gpu-check).

Prints one line per check ("ok NAME facts" or "fail NAME reason") and exits
0 when all pass, 1 when one fails, 3 when CuPy cannot be imported (the
caller reports SKIP). The caller sets LD_LIBRARY_PATH to the shims and
VGPU_DEVICE to the mediator's BAR, so every CUDA call here crosses the vGPU.
"""
import sys

from smoke import check, failed, finish

try:
    import numpy as np
    import cupy as cp
except Exception as e:  # ImportError, or a CUDA library cupy could not load
    print(f"import: {type(e).__name__}: {e}")
    sys.exit(3)


def device():
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{name} sm_{props['major']}{props['minor']} cupy {cp.__version__}"


def elementwise():
    a = np.arange(1 << 16, dtype=np.float32)
    b = np.linspace(-1, 1, a.size, dtype=np.float32)
    got = cp.asnumpy(cp.asarray(a) * 2.5 + cp.sin(cp.asarray(b)))
    np.testing.assert_allclose(got, a * 2.5 + np.sin(b), rtol=1e-5, atol=1e-5)
    return f"a*2.5+sin(b) over {a.size}"


def reduction():
    x = np.random.default_rng(1).standard_normal(1 << 18)
    got = float(cp.asarray(x).sum())
    want = float(x.sum())
    if abs(got - want) > 1e-9 * max(1.0, abs(x).sum()):
        raise AssertionError(f"sum {got} != numpy {want}")
    m = int(cp.asarray(x).argmax())
    if m != int(x.argmax()):
        raise AssertionError(f"argmax {m} != numpy {int(x.argmax())}")
    return f"sum and argmax over {x.size}"


def matmul():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((256, 128), dtype=np.float32)
    b = rng.standard_normal((128, 64), dtype=np.float32)
    got = cp.asnumpy(cp.matmul(cp.asarray(a), cp.asarray(b)))  # cuBLAS sgemm
    np.testing.assert_allclose(got, a @ b, rtol=1e-3, atol=1e-3)
    return "256x128 @ 128x64 float32 (cuBLAS)"


check("device", device)
check("elementwise", elementwise)
check("reduction", reduction)
check("matmul", matmul)
finish()
