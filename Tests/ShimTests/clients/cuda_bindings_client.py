"""cuda-bindings (NVIDIA's Python driver API) against this project's libcuda.so.1.

cuda.bindings.driver dlopens libcuda.so.1, takes cuGetProcAddress_v2 and
resolves every other function through it by name and CUDA version. This
script initialises, looks at the device, copies random bytes both ways, loads
a module image naming the built-in vector_add kernel, launches it and checks
the sums, and reads error names and strings. One "key value" line per fact;
any failure raises (exit status 1).
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

# A module image naming a built-in kernel; then c = a + b on the device.
module = check(driver.cuModuleLoadData(b"vgpu-module 1\nkernel vector_add\n\0"))
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

# A PTX image reaches the device, which refuses it until its PTX engine lands.
err, _ = driver.cuModuleLoadData(b".version 8.0\n.target sm_90\n\0")
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
