/* vgpu.h — the C API of the vGPU guest backend (libvgpu.so).
 *
 * A small, synchronous API over the vGPU client: open the device, ask what it is, allocate
 * and copy device memory, load a module and launch its kernels, read the activity counters
 * and the list of processes using the device. Every call has finished on the device when it
 * returns. Build with `pkg-config --cflags --libs vgpu`.
 *
 *   vgpu_device *dev;
 *   if (vgpu_open(NULL, &dev) != VGPU_SUCCESS) {
 *     fprintf(stderr, "%s\n", vgpu_last_error_message());
 *     return 1;
 *   }
 *   vgpu_ptr p;
 *   vgpu_alloc(dev, 1 << 20, &p);
 *   vgpu_copy_to_device(dev, p, host, 1 << 20);
 *   ...
 *   vgpu_close(dev);
 *
 * Errors: every function returning vgpu_status returns VGPU_SUCCESS (0) or an error code;
 * vgpu_last_error_message() then gives the one-line explanation (what was attempted, on
 * which device, what was found, what to do). Codes ≥ 0 are the device's status values
 * (docs/PROTOCOL.md §15); codes < 0 are failures found on this side.
 *
 * Threads: a vgpu_device may be used from many threads at once. Processes: a device belongs
 * to the process that opened it; a forked child must open its own (calls on the parent's
 * handle fail with VGPU_ERROR_CLOSED). Loading libvgpu.so does nothing; the implementation
 * (libvgpucore.so, beside it) is loaded on the first call. */
#ifndef VGPU_H
#define VGPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* This header's version of the API. */
#define VGPU_API_VERSION 1

/* An open device. */
typedef struct vgpu_device vgpu_device;
/* An address in device memory, as vgpu_alloc returns it (never 0). */
typedef uint64_t vgpu_ptr;
/* A loaded module and a kernel in one: device handles, never 0. */
typedef uint64_t vgpu_module;
typedef uint64_t vgpu_function;

typedef enum vgpu_status {
  VGPU_SUCCESS = 0,
  /* The device's answers (docs/PROTOCOL.md §15). */
  VGPU_ERROR_INVALID_VALUE = 1,      /* an argument out of range */
  VGPU_ERROR_OUT_OF_MEMORY = 2,      /* no free block of device memory large enough */
  VGPU_ERROR_INVALID_HANDLE = 3,     /* a module or function handle that is not live */
  VGPU_ERROR_NOT_FOUND = 4,          /* no kernel of that name in the module */
  VGPU_ERROR_LAUNCH_FAILED = 5,      /* a kernel failed while running */
  VGPU_ERROR_DEVICE_TIMEOUT = 6,     /* the device gave up waiting */
  VGPU_ERROR_DEVICE_LOST = 7,        /* the device is stopping or stopped */
  VGPU_ERROR_NOT_SUPPORTED = 8,      /* valid, but this device does not do it */
  VGPU_ERROR_INVALID_OPCODE = 9,     /* a command the device does not know */
  VGPU_ERROR_INVALID_ADDRESS = 10,   /* a device range outside any live allocation of this process */
  VGPU_ERROR_INVALID_STAGING = 11,   /* a staging range outside the queue pair's window */
  VGPU_ERROR_NOT_READY = 12,         /* work still pending */
  VGPU_ERROR_VERSION_MISMATCH = 13,  /* the device refused this client's protocol version */
  VGPU_ERROR_PERMISSION_DENIED = 14, /* memory or a handle of another process */
  VGPU_ERROR_INVALID_IMAGE = 15,     /* a module image the device cannot read */
  VGPU_ERROR_NOT_INITIALIZED = 16,   /* a command before the handshake */
  VGPU_ERROR_INVALID_PARAMETERS = 17, /* launch parameters of the wrong size for the kernel */
  /* Found on this side. */
  VGPU_ERROR_TIMEOUT = -1,              /* no answer within the deadline (2 s of silence) */
  VGPU_ERROR_PROTOCOL_VIOLATION = -2,   /* the device broke the protocol */
  VGPU_ERROR_UNAVAILABLE = -3,          /* no device, or it cannot serve (not running, stopped) */
  VGPU_ERROR_INCOMPATIBLE_VERSION = -4, /* the device speaks another major protocol version */
  VGPU_ERROR_INVALID_ARGUMENT = -5,     /* the caller passed something unusable (NULL, 0 bytes) */
  VGPU_ERROR_UNSUPPORTED = -6,          /* not available with this device or build */
  VGPU_ERROR_CLOSED = -7,               /* the device was closed, or belongs to another process */
  VGPU_ERROR_CORE_MISSING = -8          /* libvgpucore.so could not be loaded (see stderr) */
} vgpu_status;

/* What the device says about itself. Strings are NUL-terminated. */
typedef struct vgpu_info {
  char name[64];               /* e.g. "vGPU Reference H100 80GB" */
  char uuid[48];               /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it */
  uint8_t uuid_bytes[16];      /* the same, as the 16 raw bytes */
  char pci_bus_id[16];         /* "DDDD:BB:DD.F" */
  char driver_version[32];     /* as NVML reports it, e.g. "570.124.06" */
  uint64_t memory_total;       /* bytes of device memory */
  uint32_t compute_major;      /* compute capability, e.g. 9 */
  uint32_t compute_minor;      /* e.g. 0 */
  uint32_t cuda_driver_version; /* as cuDriverGetVersion: 1000 × major + 10 × minor (12080 = 12.8) */
  uint32_t multiprocessor_count;
  uint32_t protocol_major;     /* the device's protocol version, e.g. 1.1 */
  uint32_t protocol_minor;
  uint64_t features;           /* protocol features both sides use (docs/PROTOCOL.md §19) */
  uint32_t queue_pairs;        /* queue pairs this client holds */
  uint32_t queue_pairs_on_device;
} vgpu_info;

/* Launch geometry, as CUDA's gridDim / blockDim. */
typedef struct vgpu_dim3 {
  uint32_t x, y, z;
} vgpu_dim3;

/* Which activity vgpu_statistics reports. */
typedef enum vgpu_scope {
  VGPU_SCOPE_PROCESS = 0, /* this process: every queue pair it holds (all its open devices) */
  VGPU_SCOPE_QUEUE_PAIR = 1, /* one of this client's queue pairs */
  VGPU_SCOPE_DEVICE = 2   /* the whole device, every process, since it started */
} vgpu_scope;

/* Activity counters (docs/PROTOCOL.md §16). */
typedef struct vgpu_stats {
  uint64_t bytes_allocated; /* live allocated bytes (rounded up to 256) */
  uint64_t allocations;     /* successful allocations so far */
  uint64_t launches;        /* successful kernel launches */
  uint64_t copies;          /* successful copies (not memsets) */
  uint64_t bytes_copied;
  uint64_t busy_ns;         /* device time spent executing commands */
  uint64_t commands;        /* commands executed */
  uint64_t queue_pairs;     /* queue pairs covered */
} vgpu_stats;

/* One process using the device (docs/PROTOCOL.md §16, process record). */
typedef struct vgpu_process_info {
  uint32_t pid;
  uint32_t queue_pairs;     /* queue pairs it holds */
  uint64_t bytes_allocated; /* device memory it holds */
  uint64_t launches;
  uint64_t busy_ns;         /* device time spent on its commands */
} vgpu_process_info;

/* Opens a device and handshakes with it; *out receives the handle.
 * `device`: "sim" (a simulated device in this process), "shm:PATH" (a shared-memory BAR
 * served by vgpu-mediator) or a PCI address "DDDD:BB:DD.F"; NULL or "" means the
 * VGPU_DEVICE environment variable, else the vGPU's PCI slot 0000:00:05.0.
 * Claims two of the device's queue pairs until vgpu_close. */
vgpu_status vgpu_open(const char *device, vgpu_device **out);

/* Gives the device's queue pairs back; the device frees every allocation, module and
 * function made through this handle. The handle is invalid afterwards. NULL is ignored. */
vgpu_status vgpu_close(vgpu_device *dev);

/* Fills *out with what the device says about itself (no device round trip). */
vgpu_status vgpu_get_info(vgpu_device *dev, vgpu_info *out);

/* Free and total bytes of device memory, as cuMemGetInfo. Either pointer may be NULL. */
vgpu_status vgpu_mem_info(vgpu_device *dev, uint64_t *free_bytes, uint64_t *total_bytes);

/* Allocates `bytes` (> 0) of device memory, aligned to 256 bytes; *out receives its address. */
vgpu_status vgpu_alloc(vgpu_device *dev, size_t bytes, vgpu_ptr *out);

/* Frees an allocation (its address exactly as vgpu_alloc returned it). */
vgpu_status vgpu_free(vgpu_device *dev, vgpu_ptr ptr);

/* Copies `bytes` from host memory `src` to device memory at `dst`. 0 bytes does nothing. */
vgpu_status vgpu_copy_to_device(vgpu_device *dev, vgpu_ptr dst, const void *src, size_t bytes);

/* Copies `bytes` from device memory at `src` to host memory `dst`. 0 bytes does nothing. */
vgpu_status vgpu_copy_from_device(vgpu_device *dev, void *dst, vgpu_ptr src, size_t bytes);

/* Copies `bytes` between device buffers; the ranges may overlap. */
vgpu_status vgpu_copy_device(vgpu_device *dev, vgpu_ptr dst, vgpu_ptr src, size_t bytes);

/* Sets `count` elements of `element_size` bytes (1, 2 or 4) at `dst` to the low bytes of
 * `value`, as cuMemsetD8 / D16 / D32. */
vgpu_status vgpu_memset(vgpu_device *dev, vgpu_ptr dst, uint32_t value, size_t element_size, size_t count);

/* Loads a module image of `size` bytes: PTX text, a fat binary or a fatbin wrapper's
 * data, as cuModuleLoadData takes (docs/PROTOCOL.md §18); *out receives its handle. */
vgpu_status vgpu_module_load(vgpu_device *dev, const void *image, size_t size, vgpu_module *out);

/* Unloads a module. */
vgpu_status vgpu_module_unload(vgpu_device *dev, vgpu_module module);

/* Looks up kernel `name` in a module; *out receives its handle and, if `param_size` is not
 * NULL, *param_size the size of the packed parameter buffer it takes. */
vgpu_status vgpu_module_get_function(vgpu_device *dev, vgpu_module module, const char *name, vgpu_function *out,
                                     size_t *param_size);

/* Launches a kernel and waits for it to finish. `params` is the packed parameter buffer:
 * the kernel's parameters in order, each aligned to its own size (a vgpu_ptr 8, a float or
 * uint32_t 4), the total rounded up to 8 — i.e. a C struct of them; `params_size` must be
 * the size vgpu_module_get_function gave. `shared_bytes`: dynamic shared memory. */
vgpu_status vgpu_launch(vgpu_device *dev, vgpu_function function, vgpu_dim3 grid, vgpu_dim3 block,
                        uint32_t shared_bytes, const void *params, size_t params_size);

/* Waits for all work of this handle (every call is already synchronous; this also checks
 * that the device still answers). */
vgpu_status vgpu_synchronize(vgpu_device *dev);

/* Fills *out with the activity counters of this process, one queue pair or the device. */
vgpu_status vgpu_statistics(vgpu_device *dev, vgpu_scope scope, vgpu_stats *out);

/* The processes using the device (holding its queue pairs), with their memory and
 * activity: up to `capacity` records into `out` (NULL when capacity is 0); *count receives
 * how many processes there are, which may be more than were written. Needs a protocol 1.1
 * device; a 1.0 device gives VGPU_ERROR_UNSUPPORTED. */
vgpu_status vgpu_processes(vgpu_device *dev, vgpu_process_info *out, size_t capacity, size_t *count);

/* A short, static text naming a status code ("out of device memory", "timed out", ...).
 * Never NULL. */
const char *vgpu_error_string(int status);

/* The one-line explanation of the last call that failed on this thread ("" if none has).
 * Valid until the next failing call on this thread. Never NULL. */
const char *vgpu_last_error_message(void);

#ifdef __cplusplus
}
#endif

#endif
