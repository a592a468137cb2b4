/* The shim libraries (libcuda.so.1, libnvidia-ml.so.1, libvgpu.so) are C
 * trampolines: loading one runs no code at all — no constructor, no thread,
 * no file, no signal handler (the Swift runtime's own start-up work would
 * otherwise run at load). On the first call, the core, libvgpucore.so from the
 * same folder, is loaded and each entry point resolves to its vgpucore_*
 * implementation once. */
#ifndef VGPU_TRAMPOLINE_H
#define VGPU_TRAMPOLINE_H

#define VGPU_API __attribute__((visibility("default")))

/* The address of vgpucore_<name> in the core, or NULL (the reason is printed
 * on stderr once). Thread-safe; the core is loaded once per process. */
void *vgpu_core_symbol(const char *name);

/* Defines an exported function that forwards to vgpucore_<name>, returning
 * `missing` if the core or the function cannot be found. */
#define VGPU_TRAMPOLINE(ret, name, params, args, missing)                          \
  VGPU_API ret name params {                                                       \
    static ret(*fn) params;                                                        \
    ret(*f) params = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);                       \
    if (!f) {                                                                      \
      f = (ret(*) params)vgpu_core_symbol(#name);                                  \
      if (!f) return missing;                                                      \
      __atomic_store_n(&fn, f, __ATOMIC_RELEASE);                                  \
    }                                                                              \
    return f args;                                                                 \
  }

#endif
