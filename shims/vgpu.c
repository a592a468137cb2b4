/* libvgpu.so: the C API of include/vgpu.h, as trampolines into libvgpucore.so
 * (Sources/VGPUCore/VGPUC*.swift, functions vgpucore_vgpu_*). Loading it runs nothing. */
#include <stddef.h>

#include "trampoline.h"
#include "vgpu.h"

/* The offsets Sources/VGPUCore/VGPUC.swift writes. */
_Static_assert(sizeof(vgpu_info) == 224, "vgpu_info");
_Static_assert(offsetof(vgpu_info, uuid) == 64 && offsetof(vgpu_info, uuid_bytes) == 112 &&
                   offsetof(vgpu_info, pci_bus_id) == 128 && offsetof(vgpu_info, driver_version) == 144 &&
                   offsetof(vgpu_info, memory_total) == 176 && offsetof(vgpu_info, compute_major) == 184 &&
                   offsetof(vgpu_info, compute_minor) == 188 && offsetof(vgpu_info, cuda_driver_version) == 192 &&
                   offsetof(vgpu_info, multiprocessor_count) == 196 && offsetof(vgpu_info, protocol_major) == 200 &&
                   offsetof(vgpu_info, protocol_minor) == 204 && offsetof(vgpu_info, features) == 208 &&
                   offsetof(vgpu_info, queue_pairs) == 216 && offsetof(vgpu_info, queue_pairs_on_device) == 220,
               "vgpu_info offsets");
/* The wire format's records, field for field (docs/PROTOCOL.md §16). */
_Static_assert(sizeof(vgpu_stats) == 64 && offsetof(vgpu_stats, busy_ns) == 40 && offsetof(vgpu_stats, queue_pairs) == 56,
               "vgpu_stats = StatisticsRecord");
_Static_assert(sizeof(vgpu_process_info) == 32 && offsetof(vgpu_process_info, queue_pairs) == 4 &&
                   offsetof(vgpu_process_info, bytes_allocated) == 8 && offsetof(vgpu_process_info, launches) == 16 &&
                   offsetof(vgpu_process_info, busy_ns) == 24,
               "vgpu_process_info = ProcessRecord");
_Static_assert(sizeof(vgpu_dim3) == 12, "vgpu_dim3");
_Static_assert(sizeof(vgpu_status) == sizeof(int), "vgpu_status is an int");

#define T(name, params, args) VGPU_TRAMPOLINE(vgpu_status, name, params, args, VGPU_ERROR_CORE_MISSING)
T(vgpu_open, (const char *device, vgpu_device **out), (device, out))
T(vgpu_close, (vgpu_device *dev), (dev))
T(vgpu_get_info, (vgpu_device *dev, vgpu_info *out), (dev, out))
T(vgpu_mem_info, (vgpu_device *dev, uint64_t *free_bytes, uint64_t *total_bytes), (dev, free_bytes, total_bytes))
T(vgpu_alloc, (vgpu_device *dev, size_t bytes, vgpu_ptr *out), (dev, bytes, out))
T(vgpu_free, (vgpu_device *dev, vgpu_ptr ptr), (dev, ptr))
T(vgpu_copy_to_device, (vgpu_device *dev, vgpu_ptr dst, const void *src, size_t bytes), (dev, dst, src, bytes))
T(vgpu_copy_from_device, (vgpu_device *dev, void *dst, vgpu_ptr src, size_t bytes), (dev, dst, src, bytes))
T(vgpu_copy_device, (vgpu_device *dev, vgpu_ptr dst, vgpu_ptr src, size_t bytes), (dev, dst, src, bytes))
T(vgpu_memset, (vgpu_device *dev, vgpu_ptr dst, uint32_t value, size_t element_size, size_t count),
  (dev, dst, value, element_size, count))
T(vgpu_module_load, (vgpu_device *dev, const void *image, size_t size, vgpu_module *out), (dev, image, size, out))
T(vgpu_module_unload, (vgpu_device *dev, vgpu_module module), (dev, module))
T(vgpu_module_get_function,
  (vgpu_device *dev, vgpu_module module, const char *name, vgpu_function *out, size_t *param_size),
  (dev, module, name, out, param_size))
T(vgpu_synchronize, (vgpu_device *dev), (dev))
T(vgpu_statistics, (vgpu_device *dev, vgpu_scope scope, vgpu_stats *out), (dev, scope, out))
T(vgpu_processes, (vgpu_device *dev, vgpu_process_info *out, size_t capacity, size_t *count),
  (dev, out, capacity, count))
#undef T

VGPU_TRAMPOLINE(const char *, vgpu_error_string, (int status), (status), "vgpu: libvgpucore.so could not be loaded")
VGPU_TRAMPOLINE(const char *, vgpu_last_error_message, (void), (),
                "libvgpucore.so could not be loaded: it must sit beside libvgpu.so (the reason is on stderr)")

/* The dimensions go to the core by address: Swift's C entry points take no C structs. */
VGPU_API vgpu_status vgpu_launch(vgpu_device *dev, vgpu_function function, vgpu_dim3 grid, vgpu_dim3 block,
                                 uint32_t shared_bytes, const void *params, size_t params_size) {
  typedef vgpu_status (*launch_fn)(vgpu_device *, vgpu_function, const vgpu_dim3 *, const vgpu_dim3 *, uint32_t,
                                   const void *, size_t);
  static launch_fn fn;
  launch_fn f = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
  if (!f) {
    f = (launch_fn)vgpu_core_symbol("vgpu_launch");
    if (!f) return VGPU_ERROR_CORE_MISSING;
    __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
  }
  return f(dev, function, &grid, &block, shared_bytes, params, params_size);
}
