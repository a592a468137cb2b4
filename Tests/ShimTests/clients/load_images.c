/* Module images as CUDA programs hand them to libcuda.so.1: each argument is
 * MODE:PATH, the file read into memory of exactly its size (or named by
 * path), then loaded with
 *   data     cuModuleLoadData (a bare pointer: the driver sizes it by kind;
 *            64 KiB of zeros follow the file's bytes, see readFile)
 *   ex       cuModuleLoadDataEx with JIT options
 *   fatbin   cuModuleLoadFatBinary
 *   wrapper  cuModuleLoadData on a __fatBinC_Wrapper_t {magic 0x466243B1,
 *            version 1, data → the file's bytes, NULL} (what nvcc emits)
 *   library  cuLibraryLoadData, then cuLibraryGetKernel (libraries load at first use)
 *   file     cuModuleLoad(PATH)
 *   libfile  cuLibraryLoadFromFile(PATH), then cuLibraryGetKernel
 *   garbage  cuModuleLoadData on bytes of no known kind (PATH unused)
 * and prints "MODE <CUresult>", then "next <CUresult>" for a cuMemAlloc and
 * cuMemFree right after it: a refused image leaves the context usable. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUlib_st *CUlibrary;
typedef struct CUkern_st *CUkernel;

CUresult cuInit(unsigned);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, int);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuModuleLoad(CUmodule *, const char *);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleLoadDataEx(CUmodule *, const void *, unsigned, int *, void **);
CUresult cuModuleLoadFatBinary(CUmodule *, const void *);
CUresult cuModuleUnload(CUmodule);
CUresult cuLibraryLoadData(CUlibrary *, const void *, void *, void **, unsigned, void *, void **, unsigned);
CUresult cuLibraryLoadFromFile(CUlibrary *, const char *, void *, void **, unsigned, void *, void **, unsigned);
CUresult cuLibraryGetKernel(CUkernel *, CUlibrary, const char *);
CUresult cuLibraryUnload(CUlibrary);

static void *readFile(const char *path, size_t *size) {
  /* Regular files only: a folder opens, and its "size" made malloc fail. */
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  /* Zeros after the bytes: cuModuleLoadData and cuModuleLoadFatBinary take a
   * bare pointer, so the driver reads as far as the image's headers say (PTX
   * up to its NUL, a fat binary or ELF as far as their sizes reach) and the
   * caller's buffer must hold that. A header that promises more than the file
   * holds then meets zeros, not the end of the allocation (AddressSanitizer,
   * tools/test --sanitize address, saw the read past it: the caller's fault). */
  char *p = calloc(*size + 65536, 1);
  if (fread(p, 1, *size, f) != *size) *size = 0;
  fclose(f);
  return p;
}

/* A library's first use: its kernel (any name: the device loads the image first). */
static CUresult useLibrary(CUresult r, CUlibrary *library) {
  if (r != 0) return r;
  CUlibrary lib = *library;
  CUkernel k;
  r = cuLibraryGetKernel(&k, lib, "vector_add");
  cuLibraryUnload(lib);
  return r;
}

int main(int argc, char **argv) {
  CUcontext ctx;
  if (cuInit(0) != 0 || cuCtxCreate_v2(&ctx, 0, 0) != 0) {
    printf("no device\n");
    return 1;
  }
  for (int i = 1; i < argc; i++) {
    char *mode = argv[i], *path = strchr(argv[i], ':');
    if (!path) return 2;
    *path++ = 0;
    size_t size = 0;
    /* file and libfile hand the library the path alone. */
    int byPath = strcmp(mode, "garbage") == 0 || strcmp(mode, "file") == 0 || strcmp(mode, "libfile") == 0;
    void *bytes = byPath ? NULL : readFile(path, &size);
    CUmodule m = NULL;
    CUlibrary lib = NULL;
    CUresult r;
    if (strcmp(mode, "data") == 0) r = cuModuleLoadData(&m, bytes);
    else if (strcmp(mode, "ex") == 0) {
      int options[] = {0}; /* CU_JIT_MAX_REGISTERS */
      void *values[] = {(void *)(uintptr_t)32};
      r = cuModuleLoadDataEx(&m, bytes, 1, options, values);
    } else if (strcmp(mode, "fatbin") == 0) r = cuModuleLoadFatBinary(&m, bytes);
    else if (strcmp(mode, "wrapper") == 0) {
      struct { int magic, version; const void *data, *filenameOrFatbins; } wrapper = {0x466243B1, 1, bytes, NULL};
      r = cuModuleLoadData(&m, &wrapper);
    } else if (strcmp(mode, "library") == 0) r = useLibrary(cuLibraryLoadData(&lib, bytes, NULL, NULL, 0, NULL, NULL, 0), &lib);
    else if (strcmp(mode, "file") == 0) r = cuModuleLoad(&m, path);
    else if (strcmp(mode, "libfile") == 0)
      r = useLibrary(cuLibraryLoadFromFile(&lib, path, NULL, NULL, 0, NULL, NULL, 0), &lib);
    else if (strcmp(mode, "garbage") == 0) r = cuModuleLoadData(&m, "\x01\x02\x03\x04 not a module image");
    else return 2;
    printf("%s %d\n", mode, r);
    if (r == 0 && m) cuModuleUnload(m);
    CUdeviceptr d;
    CUresult next = cuMemAlloc_v2(&d, 4096);
    if (next == 0) next = cuMemFree_v2(d);
    printf("next %d\n", next);
    free(bytes);
  }
  return 0;
}
