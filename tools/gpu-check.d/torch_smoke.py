"""PyTorch on the vGPU, each result checked against the CPU (tools/gpu-check).

Prints one line per check ("ok NAME facts" or "fail NAME reason") and exits
0 when all pass, 1 when one fails, 3 when torch cannot be imported (the
caller reports SKIP).
"""
import sys

from smoke import check, failed, finish

try:
    import torch
except Exception as e:
    print(f"import: {type(e).__name__}: {e}")
    sys.exit(3)


def device():
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} sm_{p.major}{p.minor} {p.total_memory >> 20} MiB torch {torch.__version__}"


def round_trip():
    x = torch.arange(1 << 20, dtype=torch.float32)
    y = x.to("cuda").cpu()
    if not torch.equal(x, y):
        raise AssertionError("the tensor came back different")
    return f"{x.numel()} floats to the GPU and back"


def matmul():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(256, 128, generator=g)
    b = torch.randn(128, 64, generator=g)
    got = (a.cuda() @ b.cuda()).cpu()
    torch.testing.assert_close(got, a @ b, rtol=1e-3, atol=1e-3)
    return "256x128 @ 128x64 float32"


def linear():
    torch.manual_seed(4)
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(16, 64)
    want = layer(x)
    got = layer.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    return "nn.Linear(64, 32) on 16 rows"


check("device", device)
if not failed:
    check("round-trip", round_trip)
    check("matmul", matmul)
    check("linear", linear)
finish()
