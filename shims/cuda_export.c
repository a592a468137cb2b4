/* cuGetExportTable: the private tables NVIDIA's CUDA runtime needs from the
 * driver (ids and slots in cuda_export_tables.def; docs/CUDART.md). The
 * tables are static data, as the runtime hashes their addresses; the slot
 * functions are C, with the C calling convention the runtime calls them with. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cuda_integrity.h"
#include "trampoline.h"

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUuuid_st {
  char bytes[16];
} CUuuid;

/* CUresult values (cuda.h, enum cudaError_enum). */
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_SUPPORTED 801
/* CUdevice_attribute values hashed by the integrity check. */
#define CU_DEVICE_ATTRIBUTE_PCI_BUS_ID 33
#define CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID 34
#define CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID 50

/* The driver API this file uses: libcuda.so.1's own entry points (cuda.c). */
CUresult cuDriverGetVersion(int *driverVersion);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);
CUresult cuDeviceGetAttribute(int *pi, int attrib, CUdevice dev);
CUresult cuCtxGetCurrent(CUcontext *pctx);
CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version);

static void say(const char *line) { (void)!write(2, line, strlen(line)); }

/* ---- Slot functions ---- */

/* cudart_interface slot 2: the device's primary context, not retained (as
 * ZLUDA answers it; retaining is cuDevicePrimaryCtxRetain's, which the
 * runtime also resolves). */
static CUresult et_primary_context(CUcontext *pctx, CUdevice dev) {
  static CUresult (*fn)(CUcontext *, CUdevice);
  CUresult (*f)(CUcontext *, CUdevice) = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
  if (!f) {
    f = (CUresult(*)(CUcontext *, CUdevice))vgpu_core_symbol("cudartPrimaryContext");
    if (!f) return CUDA_ERROR_NOT_INITIALIZED;
    __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
  }
  return f(pctx, dev);
}

/* cudart_interface slots 1, 6 and 8: load the fat binary an nvcc program
 * registered (__cudaRegisterFatBinary), into a module. Slots 1 and 6 get the
 * __fatBinC_Wrapper_t, slot 8 the fatbin header first and the module second
 * (ZLUDA dark_api/src/lib.rs; traced in docs/CUDART.md). All three go to the
 * one module-load path (CUDAModule.swift). */
typedef struct CUmod_st *CUmodule;
typedef CUresult (*cudart_load_fn)(int slot, CUmodule *module, const void *image, const void *a, const void *b,
                                   unsigned int c);
static CUresult cudart_load(int slot, CUmodule *module, const void *image, const void *a, const void *b,
                            unsigned int c) {
  static cudart_load_fn fn;
  cudart_load_fn f = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
  if (!f) {
    f = (cudart_load_fn)vgpu_core_symbol("cudartLoadModule");
    if (!f) return CUDA_ERROR_NOT_INITIALIZED;
    __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
  }
  return f(slot, module, image, a, b, c);
}
static CUresult et_module_from_wrapper(CUmodule *module, const void *wrapper) {
  return cudart_load(1, module, wrapper, NULL, NULL, 0);
}
static CUresult et_module_from_wrapper_ext(CUmodule *module, const void *wrapper, const void *a, const void *b,
                                           unsigned int c) {
  return cudart_load(6, module, wrapper, a, b, c);
}
static CUresult et_module_from_fatbin_ext(const void *fatbin, CUmodule *module, const void *a, const void *b,
                                          unsigned int c) {
  return cudart_load(8, module, fatbin, a, b, c);
}

/* cudart_interface slot 12: nothing to load (no PTX JIT here). */
static CUresult et_load_compilers(void) { return CUDA_SUCCESS; }

/* context_checks slot 2: no flag set for any context (what ZLUDA saw NVIDIA's driver answer). */
static CUresult et_context_check(CUcontext ctx, uint32_t *flag, const void **unused) {
  (void)ctx;
  (void)unused;
  if (flag) *flag = 0;
  return CUDA_SUCCESS;
}
/* context_checks slot 3. */
static uint32_t et_check_3(void) { return 0; }

/* callback_hooks slots 2 and 6: buffers the runtime keeps tool callbacks in.
 * The size is given in elements; the buffers hold that many 8-byte words, so
 * they are large enough whether the runtime counts bytes, 4- or 8-byte words. */
static uint64_t callback_buffer_1[1024], callback_buffer_2[14];
static void et_callback_buffer_1(void **buffer, size_t *size) {
  if (buffer) *buffer = callback_buffer_1;
  if (size) *size = sizeof callback_buffer_1 / sizeof callback_buffer_1[0];
}
static void et_callback_buffer_2(void **buffer, size_t *size) {
  if (buffer) *buffer = callback_buffer_2;
  if (size) *size = sizeof callback_buffer_2 / sizeof callback_buffer_2[0];
}

/* context_storage: (context, key) → value, in a fixed table (no allocation).
 * The runtime keeps one entry per context it uses. Entries of destroyed
 * contexts are reclaimed when the table is full; destructors are not called
 * (the runtime's state then stays valid, as its handle does). */
typedef void (*storage_destructor)(CUcontext, void *, void *);
static struct storage_entry {
  CUcontext context;
  void *key, *value;
  storage_destructor destructor;
} storage[64];
static pthread_mutex_t storage_lock = PTHREAD_MUTEX_INITIALIZER;

/* NULL means the current context; a context must be live. */
static CUresult storage_context(CUcontext *ctx) {
  if (!*ctx) {
    CUresult r = cuCtxGetCurrent(ctx);
    if (r != CUDA_SUCCESS) return r;
    if (!*ctx) return CUDA_ERROR_INVALID_CONTEXT;
  }
  unsigned int version;
  return cuCtxGetApiVersion(*ctx, &version);
}

static struct storage_entry *storage_find(CUcontext ctx, void *key) {
  for (size_t i = 0; i < sizeof storage / sizeof storage[0]; i++)
    if (storage[i].context == ctx && storage[i].key == key) return &storage[i];
  return NULL;
}

static CUresult et_storage_put(CUcontext ctx, void *key, void *value, storage_destructor destructor) {
  CUresult r = storage_context(&ctx);
  if (r != CUDA_SUCCESS) return r;
  pthread_mutex_lock(&storage_lock);
  struct storage_entry *e = storage_find(ctx, key);
  if (!e) e = storage_find(NULL, NULL);
  if (!e) {
    unsigned int version;
    for (size_t i = 0; i < sizeof storage / sizeof storage[0]; i++)
      if (cuCtxGetApiVersion(storage[i].context, &version) != CUDA_SUCCESS) storage[i] = (struct storage_entry){0};
    e = storage_find(NULL, NULL);
  }
  if (e) *e = (struct storage_entry){ctx, key, value, destructor};
  pthread_mutex_unlock(&storage_lock);
  if (!e) {
    say("vgpu: the CUDA runtime's per-context storage is full (64 entries for live contexts); "
        "answering CUDA_ERROR_OUT_OF_MEMORY: destroy unused contexts\n");
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return CUDA_SUCCESS;
}

/* Removing what is not there succeeds: the outcome is the same. */
static CUresult et_storage_remove(CUcontext ctx, void *key) {
  CUresult r = storage_context(&ctx);
  if (r != CUDA_SUCCESS) return r;
  pthread_mutex_lock(&storage_lock);
  struct storage_entry *e = storage_find(ctx, key);
  if (e) *e = (struct storage_entry){0};
  pthread_mutex_unlock(&storage_lock);
  return CUDA_SUCCESS;
}

static CUresult et_storage_get(void **value, CUcontext ctx, void *key) {
  if (!value) return CUDA_ERROR_INVALID_VALUE;
  CUresult r = storage_context(&ctx);
  if (r != CUDA_SUCCESS) return r;
  pthread_mutex_lock(&storage_lock);
  struct storage_entry *e = storage_find(ctx, key);
  if (e) *value = e->value;
  pthread_mutex_unlock(&storage_lock);
  return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

static CUresult et_integrity_check(uint32_t version, uint64_t timestamp, uint64_t out[2]);

/* ---- The tables, from cuda_export_tables.def ---- */

#define NOTHING(...)
#define ET_MAX_SLOTS 16

/* Slot counts. */
#define TABLE(name, slots, ...) enum { name##_slots = slots };                                                        \
  _Static_assert(slots <= ET_MAX_SLOTS, #name " has more slots than ET_MAX_SLOTS");
#define SIZE NOTHING
#define SLOT NOTHING
#define END NOTHING
#define REFUSE NOTHING
#define INTEGRITY_KEY NOTHING
#define INTEGRITY_FIXED NOTHING
#include "cuda_export_tables.def"
#undef TABLE

/* A function for every slot of every table, for the slots nothing fills. */
static CUresult unknown_slot(const char *table, int slot, int *said) {
  if (!__atomic_exchange_n(said, 1, __ATOMIC_RELAXED)) {
    char line[320];
    int n = snprintf(line, sizeof line,
                     "vgpu: the CUDA runtime called slot %d of the driver's private table %s, which this "
                     "virtual GPU does not implement (CUDA_ERROR_NOT_SUPPORTED); see docs/CUDART.md\n",
                     slot, table);
    if (n > 0) (void)!write(2, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
  }
  return CUDA_ERROR_NOT_SUPPORTED;
}
#define UNKNOWN(name, k)                                                                                             \
  static CUresult name##_unknown_##k(void) {                                                                         \
    static int said;                                                                                                 \
    return unknown_slot(#name, k, &said);                                                                            \
  }
#define TABLE(name, ...)                                                                                             \
  UNKNOWN(name, 0) UNKNOWN(name, 1) UNKNOWN(name, 2) UNKNOWN(name, 3) UNKNOWN(name, 4) UNKNOWN(name, 5)              \
  UNKNOWN(name, 6) UNKNOWN(name, 7) UNKNOWN(name, 8) UNKNOWN(name, 9) UNKNOWN(name, 10) UNKNOWN(name, 11)            \
  UNKNOWN(name, 12) UNKNOWN(name, 13) UNKNOWN(name, 14) UNKNOWN(name, 15)
#include "cuda_export_tables.def"
#undef TABLE
#undef SIZE
#undef SLOT
#undef END

/* The tables: unknown-slot functions, then what the file fills in (a later
 * designator overrides an earlier one, C11 6.7.9). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
#define U(name, k) [k] = (const void *)&name##_unknown_##k
#define TABLE(name, ...)                                                                                             \
  static const void *const name##_table[ET_MAX_SLOTS] = {                                                          \
      U(name, 0),  U(name, 1),  U(name, 2),  U(name, 3),  U(name, 4),  U(name, 5),  U(name, 6),  U(name, 7),         \
      U(name, 8),  U(name, 9),  U(name, 10), U(name, 11), U(name, 12), U(name, 13), U(name, 14), U(name, 15),
#define SIZE(name, slot) [slot] = (const void *)(uintptr_t)(name##_slots * sizeof(void *)),
#define SLOT(name, slot, function) [slot] = (const void *)&function,
#define END(name) };
#include "cuda_export_tables.def"
#undef TABLE
#undef SIZE
#undef SLOT
#undef END
#undef U
#pragma GCC diagnostic pop

/* Ids → tables (NULL: refused). */
static const struct export_table {
  const char *name;
  unsigned char id[16];
  const void *const *table;
} export_tables[] = {
#define TABLE(name, slots, ...) {#name, {__VA_ARGS__}, name##_table},
#define SIZE NOTHING
#define SLOT NOTHING
#define END NOTHING
#undef REFUSE
#define REFUSE(name, ...) {#name, {__VA_ARGS__}, NULL},
#include "cuda_export_tables.def"
#undef TABLE
#undef REFUSE
#define TABLE NOTHING
#define REFUSE NOTHING
};

static const uint8_t integrity_key[16] = {
#undef INTEGRITY_KEY
#define INTEGRITY_KEY(...) __VA_ARGS__
#include "cuda_export_tables.def"
#undef INTEGRITY_KEY
#define INTEGRITY_KEY NOTHING
};

static const struct integrity_fixed {
  unsigned digit;
  uint64_t value[2];
} integrity_fixed[] = {
#undef INTEGRITY_FIXED
#define INTEGRITY_FIXED(digit, lo, hi) {digit, {lo, hi}},
#include "cuda_export_tables.def"
};

/* integrity slot 1 (cuda_integrity.h): HMAC-MD2 over this driver's version,
 * the runtime's version and timestamp, this process and thread, the tables'
 * and this function's addresses, and every device's UUID and PCI location. */
static CUresult et_integrity_check(uint32_t version, uint64_t timestamp, uint64_t out[2]) {
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < sizeof integrity_fixed / sizeof integrity_fixed[0]; i++)
    if (version % 10 == integrity_fixed[i].digit) {
      out[0] = integrity_fixed[i].value[0];
      out[1] = integrity_fixed[i].value[1];
      return CUDA_SUCCESS;
    }
  int driver = 0, count = 0;
  CUresult r = cuDriverGetVersion(&driver);
  if (r == CUDA_SUCCESS) r = cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS) return r;
  struct vgpu_integrity_device devices[8];
  if (count < 0 || count > (int)(sizeof devices / sizeof devices[0])) return CUDA_ERROR_NOT_SUPPORTED;
  for (int d = 0; d < count; d++) {
    struct vgpu_integrity_device *dev = &devices[d];
    CUuuid uuid;
    if ((r = cuDeviceGetUuid(&uuid, d)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&dev->pci_domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&dev->pci_bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&dev->pci_device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d)) != CUDA_SUCCESS)
      return r;
    memcpy(dev->uuid, uuid.bytes, 16);
  }
  struct vgpu_integrity_header header = {
      .driver_version = (uint32_t)driver,
      .version = version,
      .pid = (uint32_t)getpid(),
      .thread = (uint32_t)(uintptr_t)pthread_self(),
      .cudart_table = cudart_interface_table,
      .integrity_table = integrity_table,
      .function = integrity_table[1],
      .timestamp = timestamp,
  };
  uint8_t value[16];
  vgpu_integrity_hash(integrity_key, &header, devices, count, value);
  memcpy(out, value, 16);
  return CUDA_SUCCESS;
}

/* ---- cuGetExportTable ---- */

static void say_unknown_table(const unsigned char id[16]) {
  /* Once per id, for the first few ids. */
  static unsigned char said[8][16];
  static int count;
  static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&lock);
  int known = 0;
  for (int i = 0; i < count; i++) known |= memcmp(said[i], id, 16) == 0;
  if (!known && count < 8) memcpy(said[count++], id, 16);
  pthread_mutex_unlock(&lock);
  if (known) return;
  char line[256], hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", id[i]);
  snprintf(line, sizeof line,
           "vgpu: cuGetExportTable: the caller asked for private table %s, unknown to this virtual GPU "
           "(CUDA_ERROR_INVALID_VALUE); add it to shims/cuda_export_tables.def if the caller needs it\n",
           hex);
  say(line);
}

VGPU_API CUresult cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
  if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
  *ppExportTable = NULL;
  for (size_t i = 0; i < sizeof export_tables / sizeof export_tables[0]; i++) {
    if (memcmp(export_tables[i].id, pExportTableId->bytes, 16) != 0) continue;
    if (!export_tables[i].table) return CUDA_ERROR_INVALID_VALUE;
    *ppExportTable = export_tables[i].table;
    return CUDA_SUCCESS;
  }
  say_unknown_table((const unsigned char *)pExportTableId->bytes);
  return CUDA_ERROR_INVALID_VALUE;
}
