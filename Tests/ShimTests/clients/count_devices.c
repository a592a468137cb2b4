/* What a program finds: dlopen libcuda.so.1, cuDriverGetVersion before
 * cuInit (as CUDA 13's runtime does), cuInit, cuDeviceGetCount. Prints
 * "version <v> cuInit <result> count <n> ..."; without a device the library
 * says why on stderr, once. */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) {
    printf("dlopen failed: %s\n", dlerror());
    return 1;
  }
  int (*cuInit)(unsigned int) = (int (*)(unsigned int))dlsym(lib, "cuInit");
  int (*cuDeviceGetCount)(int *) = (int (*)(int *))dlsym(lib, "cuDeviceGetCount");
  int (*cuDeviceGet)(int *, int) = (int (*)(int *, int))dlsym(lib, "cuDeviceGet");
  int (*cuDriverGetVersion)(int *) = (int (*)(int *))dlsym(lib, "cuDriverGetVersion");
  int version = -1;
  int v = cuDriverGetVersion(&version);
  int init = cuInit(0);
  int count = -1;
  int r = cuDeviceGetCount(&count);
  int dev = -1;
  int get = cuDeviceGet(&dev, 0);
  /* Asking again says nothing more. */
  cuInit(0);
  cuDeviceGetCount(&count);
  printf("version %d (%d) cuInit %d count %d (%d) cuDeviceGet %d\n", version, v, init, count, r, get);
  return 0;
}
