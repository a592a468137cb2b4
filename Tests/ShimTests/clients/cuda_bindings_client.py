"""cuda-bindings (NVIDIA's Python driver API) against this project's libcuda.so.1.

cuda.bindings.driver dlopens libcuda.so.1, takes cuGetProcAddress_v2 and
resolves every other function through it by name and CUDA version. This
script initialises, looks at the device, copies random bytes both ways, loads
the PTX of Tests/Kernels/vector_add.cu (argv[1]) with cuModuleLoadData,
launches it with kernelParams and checks the sums, then the fat binary nvcc
made of it (argv[2]) launched with `extra` (the packed buffer), and reads
error names and strings. One "key value" line per fact; any failure raises
(exit status 1).
"""
import ctypes
import os
import struct
import sys

from cuda.bindings import driver


def check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RuntimeError(f"{name.decode() if name else err}")
    return rest[0] if len(rest) == 1 else rest


check(driver.cuInit(0))
print("version", check(driver.cuDriverGetVersion()))
print("count", check(driver.cuDeviceGetCount()))
dev = check(driver.cuDeviceGet(0))
print("name", check(driver.cuDeviceGetName(256, dev)).split(b"\0")[0].decode())
print("total", check(driver.cuDeviceTotalMem(dev)))
major = check(driver.cuDeviceGetAttribute(
    driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
minor = check(driver.cuDeviceGetAttribute(
    driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
print("cc", f"{major}.{minor}")
print("uuid", bytes(check(driver.cuDeviceGetUuid(dev)).bytes).hex())
# Each generation of cuCtxCreate, resolved as cuCtxCreate at 3020, 11040 and 12050.
for create in (lambda: driver.cuCtxCreate_v3(None, 0, 0, dev), lambda: driver.cuCtxCreate_v4(None, 0, dev)):
    check(driver.cuCtxDestroy(check(create())))
ctx = check(driver.cuCtxCreate(0, dev))
assert int(check(driver.cuCtxGetCurrent())) == int(ctx)
print("ctxdevice", int(check(driver.cuCtxGetDevice())))

# Copies: random bytes there and back.
size = 1 << 20
data = os.urandom(size)
dptr = check(driver.cuMemAlloc(size))
check(driver.cuMemcpyHtoD(dptr, data, size))
back = bytearray(size)
check(driver.cuMemcpyDtoH(back, dptr, size))
assert bytes(back) == data, "round trip differs"
print("roundtrip", size)
free, total = check(driver.cuMemGetInfo())
print("meminfo", free, total)

# PTX (NUL-terminated, as cuModuleLoadData takes it); then c = a + b on the device.
with open(sys.argv[1], "rb") as f:
    ptx = f.read() + b"\0"
module = check(driver.cuModuleLoadData(ptx))
function = check(driver.cuModuleGetFunction(module, b"vector_add"))
n = 4096
a = [float(i) for i in range(n)]
b = [float(2 * i + 1) for i in range(n)]
da, db, dc = (check(driver.cuMemAlloc(4 * n)) for _ in range(3))
check(driver.cuMemcpyHtoD(da, struct.pack(f"{n}f", *a), 4 * n))
check(driver.cuMemcpyHtoD(db, struct.pack(f"{n}f", *b), 4 * n))
check(driver.cuMemsetD32(dc, 0, n))
stream = check(driver.cuStreamCreate(0))
# kernelParams: an array of pointers, one to each argument.
args = [ctypes.c_uint64(int(da)), ctypes.c_uint64(int(db)), ctypes.c_uint64(int(dc)), ctypes.c_uint32(n)]
params = (ctypes.c_void_p * len(args))(*(ctypes.addressof(x) for x in args))
start, end = check(driver.cuEventCreate(0)), check(driver.cuEventCreate(0))
check(driver.cuEventRecord(start, stream))
check(driver.cuLaunchKernel(function, (n + 255) // 256, 1, 1, 256, 1, 1, 0, stream, ctypes.addressof(params), 0))
check(driver.cuEventRecord(end, stream))
check(driver.cuStreamSynchronize(stream))
ms = check(driver.cuEventElapsedTime(start, end))
assert ms >= 0, ms
out = bytearray(4 * n)
check(driver.cuMemcpyDtoH(out, dc, 4 * n))
c = struct.unpack(f"{n}f", bytes(out))
bad = [i for i in range(n) if c[i] != a[i] + b[i]]
assert not bad, f"vector_add wrong at {bad[:5]}"
print("vector_add", n)

# The fat binary nvcc made (zstd-compressed PTX beside an sm_75 cubin), launched
# with `extra`: CU_LAUNCH_PARAM_BUFFER_POINTER (1), _SIZE (2), _END (0).
with open(sys.argv[2], "rb") as f:
    fatbin = f.read()
fat_module = check(driver.cuModuleLoadData(fatbin))
fat_function = check(driver.cuModuleGetFunction(fat_module, b"vector_add"))
check(driver.cuMemsetD32(dc, 0, n))
packed = struct.pack("<QQQi4x", int(da), int(db), int(dc), n)
buffer = ctypes.create_string_buffer(packed, len(packed))
size_value = ctypes.c_size_t(len(packed))
extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(buffer), 2, ctypes.addressof(size_value), 0)
check(driver.cuLaunchKernel(fat_function, (n + 255) // 256, 1, 1, 256, 1, 1, 0, 0, 0, ctypes.addressof(extra)))
check(driver.cuCtxSynchronize())
check(driver.cuMemcpyDtoH(out, dc, 4 * n))
c = struct.unpack(f"{n}f", bytes(out))
bad = [i for i in range(n) if c[i] != a[i] + b[i]]
assert not bad, f"vector_add (fatbin, extra) wrong at {bad[:5]}"
print("fatbin_extra", n)
check(driver.cuModuleUnload(fat_module))
# Text that is not PTX: the device's error, with its line on stderr.
err, _ = driver.cuModuleLoadData(b".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n  mov.u32 %r1, ;\n}\n\0")
if err == driver.CUresult.CUDA_SUCCESS:
    err = driver.cuModuleGetFunction(_, b"k")[0]
print("ptx", driver.cuGetErrorName(err)[1].decode())
err, _ = driver.cuModuleGetFunction(module, b"no_such_kernel")
print("missing_kernel", driver.cuGetErrorName(err)[1].decode())

for e in (driver.CUresult.CUDA_ERROR_INVALID_VALUE, driver.CUresult.CUDA_ERROR_NO_DEVICE,
          driver.CUresult.CUDA_ERROR_NOT_SUPPORTED):
    _, name = driver.cuGetErrorName(e)
    _, text = driver.cuGetErrorString(e)
    print("error", int(e), name.decode(), "|", text.decode())

for x in (da, db, dc, dptr):
    check(driver.cuMemFree(x))
check(driver.cuEventDestroy(start))
check(driver.cuEventDestroy(end))
check(driver.cuStreamDestroy(stream))
check(driver.cuModuleUnload(module))
check(driver.cuCtxDestroy(ctx))
print("done")
sys.stdout.flush()
