"""A client process that uses the vGPU, for the observability tests (metrics, pcitool top).

    python busy_client.py HOLD_BYTES LAUNCHES COPY_BYTES [--busy]

Through libvgpu.so (ctypes; LD_LIBRARY_PATH reaches the shims, VGPU_DEVICE names the
device) it allocates HOLD_BYTES and keeps them, loads a small PTX kernel and launches it
LAUNCHES times, and copies COPY_BYTES to the device and back. Then it asks NVML
(nvidia-ml-py through libnvidia-ml.so.1) for the compute processes and prints one JSON
line: {"pid", "launches", "statistics": this process's counters (vgpu_statistics),
"nvml": {pid: usedGpuMemory}}. It keeps its memory until a line on standard input (or its
end); with --busy it goes on launching and copying meanwhile, so that rates are not zero.
"""
import ctypes
import json
import os
import select
import sys

import pynvml as N

PTX = b""".version 7.0
.target sm_52
.address_size 64
.visible .entry bump(.param .u64 p)
{
  .reg .b32 %r<3>;
  .reg .b64 %rd<4>;
  ld.param.u64 %rd1, [p];
  mov.u32 %r1, %tid.x;
  mul.wide.u32 %rd2, %r1, 4;
  add.s64 %rd3, %rd1, %rd2;
  ld.global.u32 %r2, [%rd3];
  add.u32 %r2, %r2, 1;
  st.global.u32 [%rd3], %r2;
  ret;
}
"""


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]


class Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "bytes_allocated", "allocations", "launches", "copies", "bytes_copied", "busy_ns", "commands",
        "queue_pairs")]


hold, launches, copy_bytes = (int(a) for a in sys.argv[1:4])
busy = "--busy" in sys.argv[4:]
vgpu = ctypes.CDLL("libvgpu.so")
vgpu.vgpu_last_error_message.restype = ctypes.c_char_p


def check(status, what):
    if status != 0:
        sys.exit(f"{what}: {status} {vgpu.vgpu_last_error_message().decode()}")


dev = ctypes.c_void_p()
check(vgpu.vgpu_open(None, ctypes.byref(dev)), "vgpu_open")
held = ctypes.c_uint64()
check(vgpu.vgpu_alloc(dev, ctypes.c_size_t(hold), ctypes.byref(held)), "vgpu_alloc")
counters = ctypes.c_uint64()
check(vgpu.vgpu_alloc(dev, ctypes.c_size_t(32 * 4), ctypes.byref(counters)), "vgpu_alloc")
check(vgpu.vgpu_memset(dev, counters, ctypes.c_uint32(0), ctypes.c_size_t(4), ctypes.c_size_t(32)), "vgpu_memset")
module = ctypes.c_uint64()
check(vgpu.vgpu_module_load(dev, PTX, ctypes.c_size_t(len(PTX)), ctypes.byref(module)), "vgpu_module_load")
function = ctypes.c_uint64()
size = ctypes.c_size_t()
check(vgpu.vgpu_module_get_function(dev, module, b"bump", ctypes.byref(function), ctypes.byref(size)), "get_function")
params = ctypes.c_uint64(counters.value)
buffer = ctypes.create_string_buffer(os.urandom(copy_bytes), copy_bytes) if copy_bytes else None
scratch = ctypes.c_uint64()
if copy_bytes:
    check(vgpu.vgpu_alloc(dev, ctypes.c_size_t(copy_bytes), ctypes.byref(scratch)), "vgpu_alloc")


def work(n):
    for _ in range(n):
        check(vgpu.vgpu_launch(dev, function, Dim3(1, 1, 1), Dim3(32, 1, 1), ctypes.c_uint32(0),
                               ctypes.byref(params), ctypes.c_size_t(8)), "vgpu_launch")
    if copy_bytes:
        check(vgpu.vgpu_copy_to_device(dev, scratch, buffer, ctypes.c_size_t(copy_bytes)), "copy_to_device")
        check(vgpu.vgpu_copy_from_device(dev, buffer, scratch, ctypes.c_size_t(copy_bytes)), "copy_from_device")


work(launches)
stats = Stats()
check(vgpu.vgpu_statistics(dev, 0, ctypes.byref(stats)), "vgpu_statistics")

N.nvmlInit()
handle = N.nvmlDeviceGetHandleByIndex(0)
nvml = {str(p.pid): p.usedGpuMemory for p in N.nvmlDeviceGetComputeRunningProcesses(handle)}
print(json.dumps({
    "pid": os.getpid(), "launches": launches,
    "statistics": {name: getattr(stats, name) for name, _ in Stats._fields_},
    "nvml": nvml,
}), flush=True)

while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.005 if busy else None)
    if ready:
        break
    work(4)
vgpu.vgpu_close(dev)
