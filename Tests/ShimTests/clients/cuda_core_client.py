"""cuda.core (NVIDIA's pythonic CUDA API) against this project's libcuda.so.1.

The way its documentation runs a kernel: Device() -> set_current() ->
Program(source, "c++", ProgramOptions(arch="compute_75")) compiled by NVRTC to
PTX -> ObjectCode (cuLibraryLoadData) -> get_kernel (cuLibraryGetKernel) ->
launch(stream, LaunchConfig, kernel, args...) (cuLaunchKernelEx). A vector add
and a saxpy with a scalar argument; numpy arrays copied through cuda.core
buffers; results checked here. One "key value" line per fact; any failure
raises (exit status 1).
"""
import numpy as np

from cuda.core import Device, LaunchConfig, LegacyPinnedMemoryResource, Program, ProgramOptions, launch

SOURCE = r"""
extern "C" __global__ void vector_add(const float *a, const float *b, float *c, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

template <typename T>
__global__ void saxpy(T a, const T *x, T *y, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  for (; i < n; i += gridDim.x * blockDim.x) y[i] = a * x[i] + y[i];
}
"""

dev = Device()
dev.set_current()
print("device", dev.name, f"cc {dev.compute_capability.major}.{dev.compute_capability.minor}")
stream = dev.create_stream()

program = Program(SOURCE, "c++", ProgramOptions(std="c++17", arch="compute_75"))
module = program.compile("ptx", name_expressions=("saxpy<float>", "saxpy<double>"))
print("code", module.code_type)
vector_add = module.get_kernel("vector_add")
print("params", vector_add.num_arguments,
      " ".join(f"{p.offset}:{p.size}" for p in vector_add.arguments_info))


# Host data goes through pinned buffers (LegacyPinnedMemoryResource: cuMemAllocHost), seen by
# numpy through DLPack, and Buffer.copy_from / copy_to (cuMemcpyAsync with unified addresses).
pinned = LegacyPinnedMemoryResource()


def host_view(buf, dtype):
    return np.from_dlpack(buf).view(dtype)


def to_device(array):
    staging = pinned.allocate(array.nbytes)
    host_view(staging, array.dtype)[:] = array
    buf = dev.allocate(array.nbytes, stream=stream)
    buf.copy_from(staging, stream=stream)
    stream.sync()
    staging.close()
    return buf


def from_device(buf, like):
    staging = pinned.allocate(like.nbytes)
    buf.copy_to(staging, stream=stream)
    stream.sync()
    out = host_view(staging, like.dtype).copy()
    staging.close()
    return out


rng = np.random.default_rng(1)
n = 5000
a = rng.random(n, dtype=np.float32)
b = rng.random(n, dtype=np.float32)
da, db, dc = to_device(a), to_device(b), to_device(np.zeros_like(a))
block = 128
launch(stream, LaunchConfig(grid=(n + block - 1) // block, block=block), vector_add, da, db, dc, np.uint64(n))
c = from_device(dc, a)
assert np.array_equal(c, a + b), f"vector_add differs at {np.flatnonzero(c != a + b)[:5]}"
print("vector_add", n)

for dtype, name in ((np.float32, "saxpy<float>"), (np.float64, "saxpy<double>")):
    kernel = module.get_kernel(name)
    x = rng.random(n).astype(dtype)
    y = rng.random(n).astype(dtype)
    dx, dy = to_device(x), to_device(y)
    alpha = dtype(2.5)
    launch(stream, LaunchConfig(grid=8, block=64), kernel, alpha, dx, dy, np.uint32(n))
    out = from_device(dy, y)
    assert np.allclose(out, alpha * x + y, rtol=1e-6), f"{name} differs"
    print(name, n)
    dx.close()
    dy.close()

for buf in (da, db, dc):
    buf.close()
stream.close()
print("done")
